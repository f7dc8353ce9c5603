//! Logs on stderr, every line tagged with the shard once it is known.
//!
//! The daemon logs each stderr line of a child at ERROR level with no shard of its own,
//! so the tag is what tells the shards of a host apart.

use std::io::Write;
use std::sync::OnceLock;

static SHARD: OnceLock<String> = OnceLock::new();

/// Tags every later log line with `shard_id`. Only the first call counts: a child
/// process serves one shard for its whole life.
pub fn set_shard(shard_id: &str) {
    let _ = SHARD.set(shard_id.to_owned());
}

/// The level comes from `RUST_LOG` when set (full env_logger syntax), else from
/// `KCL_LOG_LEVEL` (the Python replicator's variable: DEBUG, INFO, WARN, ERROR), else INFO.
pub fn init() {
    let mut builder = env_logger::Builder::new();
    builder.target(env_logger::Target::Stderr);
    match std::env::var("RUST_LOG") {
        Ok(filters) if !filters.trim().is_empty() => {
            builder.parse_filters(&filters);
        }
        _ => {
            let level = std::env::var("KCL_LOG_LEVEL").unwrap_or_default();
            builder.filter_level(parse_level(&level));
        }
    }
    builder.format(|buf, record| {
        let shard = SHARD.get().map(String::as_str).unwrap_or("-");
        let source = if record.target() == "librdkafka" {
            "librdkafka: "
        } else {
            ""
        };
        writeln!(
            buf,
            "{} {:<5} [{shard}] {source}{}",
            buf.timestamp_millis(),
            record.level(),
            record.args()
        )
    });
    // A second init (tests, embedding) keeps the first logger.
    let _ = builder.try_init();
}

fn parse_level(level: &str) -> log::LevelFilter {
    match level.trim().to_ascii_uppercase().as_str() {
        "TRACE" | "ALL" => log::LevelFilter::Trace,
        "DEBUG" => log::LevelFilter::Debug,
        "WARN" | "WARNING" => log::LevelFilter::Warn,
        "ERROR" | "FATAL" | "CRITICAL" => log::LevelFilter::Error,
        "OFF" => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    }
}
