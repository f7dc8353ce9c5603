//! The command line: arguments, configuration, exit codes. A custom binary calls
//! [`main`] with its own transform and gets the same command line.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, Config};
use crate::transform::{Placement, Transform};
use crate::{kafka, logging, protocol, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};

const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

fn usage() -> String {
    format!(
        "\
kinesis-kafka-replicator {version}
A KCL MultiLangDaemon record processor that copies a Kinesis shard into Kafka,
checkpointing only records that Kafka has acknowledged.

USAGE:
    kinesis-kafka-replicator [--config PATH]     run as the daemon's child (stdin/stdout)
    kinesis-kafka-replicator --check-config [--config PATH]
    kinesis-kafka-replicator metrics --socket PATH [--listen HOST:PORT] [--watch-pid PID]
    kinesis-kafka-replicator --version | --help

OPTIONS:
    --config PATH     the JSON configuration; ${{VAR}} and ${{VAR:-default}} are expanded
                      from the environment. Default: ${env} if set, else {default}
                      in the working directory
    --check-config    validate the configuration, print it with secrets redacted, connect
                      to Kafka (at most {timeout} s) and check that the topic exists.
                      Exit 0 when all is well, 1 when Kafka or the topic is not right,
                      2 when the configuration is invalid.
    --version         print the version
    metrics           the container's metrics server (run.sh starts it when METRICS_PORT
                      or OTEL_EXPORTER_OTLP_ENDPOINT is set): children report to the
                      socket; it serves /metrics, /healthz and /status on --listen, pushes
                      OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, and exits when the
                      process --watch-pid (the daemon) is gone
    --help            print this help

Normally the KCL MultiLangDaemon starts this program (executableName in kcl.properties);
run.sh sets that up. Logs go to stderr; stdout carries only the MultiLang protocol.
Log level: RUST_LOG, else KCL_LOG_LEVEL (DEBUG, INFO, WARN, ERROR), else INFO.
",
        version = env!("CARGO_PKG_VERSION"),
        env = config::CONFIG_PATH_ENV,
        default = config::DEFAULT_CONFIG_PATH,
        timeout = CHECK_TIMEOUT.as_secs()
    )
}

enum Mode {
    Child,
    Metrics(Vec<String>),
    CheckConfig,
    Version,
    Help,
}

struct Args {
    mode: Mode,
    config: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        mode: Mode::Child,
        config: None,
    };
    let mut it = std::env::args_os().skip(1).peekable();
    if it.peek().and_then(|a| a.to_str()) == Some("metrics") {
        let rest: Option<Vec<String>> = it.skip(1).map(|a| a.into_string().ok()).collect();
        args.mode = Mode::Metrics(rest.ok_or("a non-UTF-8 argument to metrics")?);
        return Ok(args);
    }
    while let Some(arg) = it.next() {
        let Some(text) = arg.to_str() else {
            return Err(format!("unexpected argument {arg:?}"));
        };
        match text {
            "--config" | "-c" => match it.next() {
                Some(path) => args.config = Some(PathBuf::from(path)),
                None => return Err("--config needs a path".into()),
            },
            _ if text.starts_with("--config=") => {
                args.config = Some(PathBuf::from(&text["--config=".len()..]))
            }
            "--check-config" => args.mode = Mode::CheckConfig,
            "--version" | "-V" => args.mode = Mode::Version,
            "--help" | "-h" => args.mode = Mode::Help,
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(args)
}

/// Runs the command line and exits. `custom` adds a transform to the processing stage:
/// in place of the configured stage, or after it.
pub fn main(custom: Option<(Box<dyn Transform>, Placement)>) -> ! {
    let code = match parse_args() {
        Err(e) => {
            eprintln!("error: {e}; see kinesis-kafka-replicator --help");
            EXIT_CONFIG
        }
        Ok(Args {
            mode: Mode::Help, ..
        }) => print_out(&usage()),
        Ok(Args {
            mode: Mode::Version,
            ..
        }) => print_out(&format!(
            "kinesis-kafka-replicator {}\n",
            env!("CARGO_PKG_VERSION")
        )),
        Ok(Args {
            mode: Mode::CheckConfig,
            config,
        }) => check_config(config),
        Ok(Args {
            mode: Mode::Child,
            config,
        }) => child(config, custom),
        Ok(Args {
            mode: Mode::Metrics(args),
            ..
        }) => metrics(&args),
    };
    std::process::exit(code);
}

/// Writes the output of a command-line mode (never in child mode, where stdout is the
/// protocol's).
fn print_out(text: &str) -> i32 {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(_) => EXIT_FAILURE,
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, i32> {
    let path = config::resolve_path(path);
    Config::load(&path).map_err(|e| {
        log::error!("{e:#}");
        EXIT_CONFIG
    })
}

fn check_config(path: Option<PathBuf>) -> i32 {
    logging::init();
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let shown = serde_json::to_string_pretty(&config.redacted()).unwrap_or_default();
    if print_out(&format!("{shown}\n")) != EXIT_OK {
        return EXIT_FAILURE;
    }
    let mut topics = vec![config.kafka.topic.trim()];
    topics.extend(config.dead_letter_topic());
    for topic in topics {
        match kafka::check_topic(&config, topic, CHECK_TIMEOUT) {
            Ok(found) => log::info!(
                "topic {topic} has {} partitions on {} brokers at {}",
                found.partitions,
                found.brokers,
                config.kafka.bootstrap_servers
            ),
            Err(e) => {
                log::error!("{e:#}");
                return EXIT_FAILURE;
            }
        }
    }
    if config.exactly_once() {
        // Created here, once, rather than by every shard's child at its start.
        match crate::positions::ensure_topic(&config, CHECK_TIMEOUT, true) {
            Ok(()) => log::info!(
                "exactly-once: positions topic {} is ready; transactional ids {}",
                config.positions_topic(),
                config.transactional_id("<shard id>")
            ),
            Err(e) => {
                log::error!("{e:#}");
                return EXIT_FAILURE;
            }
        }
    }
    log::info!("configuration OK");
    EXIT_OK
}

fn metrics(args: &[String]) -> i32 {
    logging::init();
    logging::set_shard("metrics-server");
    match crate::metrics_server::config_from_args(args) {
        Ok(config) => crate::metrics_server::run(config),
        Err(e) => {
            log::error!("metrics: {e}; see kinesis-kafka-replicator --help");
            EXIT_CONFIG
        }
    }
}

fn child(path: Option<PathBuf>, custom: Option<(Box<dyn Transform>, Placement)>) -> i32 {
    logging::init();
    // Before anything else can write to stdout: from here on only protocol lines reach it.
    let output = match protocol::claim_stdout() {
        Ok(file) => file,
        Err(e) => {
            log::error!("cannot set up the protocol channel on stdout: {e}");
            return EXIT_FAILURE;
        }
    };
    // Ctrl-C reaches the whole process group; the daemon ends children by closing stdin.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let config = match load(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::run_child(
        config,
        custom,
        std::io::stdin().lock(),
        Some(libc::STDIN_FILENO),
        output,
    )
}
