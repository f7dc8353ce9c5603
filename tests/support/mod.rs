//! Test support shared by the integration tests.
//!
//! - [`protocol`]: the protocol as the KCL MultiLangDaemon speaks it (`multilang-protocol.md`:
//!   framing, Jackson-like parsing, checkpoint rules, errors); [`records`]: the records it hands
//!   over and the `processRecords` lines that carry them.
//! - [`daemon`]: the tests' double of the daemon, which drives the real binary on pipes with
//!   bounded waits and a transcript; [`inline`]: the same protocol on the caller's thread, for the
//!   benchmark (`benches/replication/main.rs` includes this module).
//! - [`broker`]: starts and stops a broker (librdkafka's mock cluster, or tansu) with one topic.
//! - [`kafka`]: the tests' Kafka (a mock cluster) and read-back assertions.
//! - [`config`]: config files for the binary and the `Command` that starts it.
//! - [`scenario`]: the set-up and endings the scenario tests share.
//!
//! Each test file (and the benchmark) uses only part of this, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod broker;
pub mod config;
pub mod daemon;
pub mod inline;
pub mod kafka;
pub mod protocol;
pub mod records;
pub mod scenario;

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The shard id the scenarios use.
pub const SHARD: &str = "shardId-000000000007";

/// The binary running under the daemon double, with its config dir kept alive.
pub struct Running {
    pub daemon: daemon::Daemon,
    pub config: config::ConfigFile,
}

impl Deref for Running {
    type Target = daemon::Daemon;
    fn deref(&self) -> &daemon::Daemon {
        &self.daemon
    }
}

impl DerefMut for Running {
    fn deref_mut(&mut self) -> &mut daemon::Daemon {
        &mut self.daemon
    }
}

/// Start the binary with `config` under the daemon double.
pub fn start(config: &Value) -> Running {
    start_in(daemon::FieldOrder::Daemon, config)
}

/// Start the binary with `config` under a daemon double that writes `processRecords` lines
/// in `order`.
pub fn start_in(order: daemon::FieldOrder, config: &Value) -> Running {
    let config = config::write_config(config);
    let daemon = daemon::Daemon::spawn(config.command()).with_field_order(order);
    Running { daemon, config }
}

/// Start the binary and initialize it for `SHARD` from TRIM_HORIZON.
pub fn start_initialized(config: &Value) -> Running {
    start_initialized_in(daemon::FieldOrder::Daemon, config)
}

/// `start_in`, then initialize for `SHARD` from TRIM_HORIZON.
pub fn start_initialized_in(order: daemon::FieldOrder, config: &Value) -> Running {
    let mut running = start_in(order, config);
    running.initialize(SHARD, daemon::TRIM_HORIZON);
    running
}

/// Runs a scenario once per way the binary reads a `processRecords` line. For each
/// `scenario`, a function `fn scenario(order: FieldOrder)` next to the invocation, it makes
/// the tests `scenario::streamed` (the daemon's field order, read record by record) and
/// `scenario::read_whole` (`FieldOrder::Reversed`, read whole), so that a failure names the
/// path.
#[macro_export]
macro_rules! both_paths {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[test]
            fn streamed() {
                super::$scenario($crate::support::daemon::FieldOrder::Daemon)
            }

            #[test]
            fn read_whole() {
                super::$scenario($crate::support::daemon::FieldOrder::Reversed)
            }
        }
    )+};
}

/// How the binary read each `processRecords` line, from its DEBUG log ("action processRecords
/// (N records, streamed)" or "(N records, read whole)"): the record count, and whether streamed.
/// A streamed batch is logged at its end, so one that failed midway is not logged; a batch read
/// whole is logged before its records are handled.
pub fn batches_logged(stderr: &str) -> Vec<(usize, bool)> {
    stderr
        .lines()
        .filter_map(|line| {
            line.split_once("action processRecords (")
                .map(|(_, rest)| rest)
        })
        .map(|rest| {
            let parsed = rest.split_once(" records, ").and_then(|(n, how)| {
                let streamed = match how.trim_end().strip_suffix(')')? {
                    "streamed" => true,
                    "read whole" => false,
                    _ => return None,
                };
                Some((n.parse().ok()?, streamed))
            });
            parsed.unwrap_or_else(|| panic!("unrecognised processRecords log line: {rest:?}"))
        })
        .collect()
}

/// The record counts of the `processRecords` lines the double sent and the child answered,
/// in order.
pub fn batches_answered(r: &daemon::Daemon) -> Vec<usize> {
    let mut sent = None;
    let mut answered = Vec::new();
    for event in r.transcript() {
        match event {
            daemon::Event::Sent(line) => {
                let value: Value = match serde_json::from_str(line) {
                    Ok(value) => value,
                    Err(_) => continue,
                };
                if value["action"] == "processRecords" {
                    sent = value["records"].as_array().map(Vec::len);
                }
            }
            daemon::Event::Action { action, result } if action == "processRecords" => {
                if let (Some(n), Ok(())) = (sent.take(), result) {
                    answered.push(n);
                }
            }
            _ => {}
        }
    }
    answered
}

/// Asserts that the binary read every `processRecords` line the way the double's field
/// order calls for (record by record for the daemon's order, whole for any other), and that
/// it logged each answered batch with its record count. At least one batch must have been
/// answered. Waits up to 5 s for stderr to catch up.
pub fn assert_batches_took_their_path(r: &daemon::Daemon) {
    let answered = batches_answered(r);
    assert!(
        !answered.is_empty(),
        "no processRecords was answered\n{}",
        r.dump()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut logged = batches_logged(&r.stderr());
    while logged.len() < answered.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        logged = batches_logged(&r.stderr());
    }
    let streamed = r.field_order.is_streamed();
    let path = if streamed { "streamed" } else { "read whole" };
    assert!(
        logged.iter().all(|&(_, s)| s == streamed),
        "{:?} lines must all be {path}, the binary logged {logged:?}\n{}",
        r.field_order,
        r.dump()
    );
    let counts: Vec<usize> = logged.iter().map(|&(n, _)| n).collect();
    assert!(
        counts.starts_with(&answered),
        "answered batches of {answered:?} records, the binary logged {logged:?}\n{}",
        r.dump()
    );
}

/// Send empty batches every 250 ms until the lease checkpoint reaches `target` (the pipelined
/// mode checkpoints the acknowledged frontier at a later processRecords). Fails after `within`.
pub fn drive_until_checkpointed(r: &mut Running, target: &daemon::ExtSeq, within: Duration) {
    let deadline = Instant::now() + within;
    while r.lease_checkpoint() != *target {
        assert!(
            Instant::now() < deadline,
            "checkpoint did not reach {target} within {within:?}\n{}",
            r.dump()
        );
        std::thread::sleep(Duration::from_millis(250));
        r.process_records(&[], Some(0));
    }
}
