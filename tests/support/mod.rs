//! Test support shared by the integration tests.
//!
//! - [`daemon`]: a test double of the KCL MultiLangDaemon that drives the real binary on pipes and
//!   follows `multilang-protocol.md` (framing, Jackson-like parsing, checkpoint rules, errors).
//! - [`kafka`]: an in-process Kafka (`rdkafka::mocking::MockCluster`) and read-back assertions.
//! - [`config`]: config files for the binary and the `Command` that starts it.
//!
//! Each test file uses only part of this, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod config;
pub mod daemon;
pub mod kafka;

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
    let config = config::write_config(config);
    let daemon = daemon::Daemon::spawn(config.command());
    Running { daemon, config }
}

/// Start the binary and initialize it for `SHARD` from TRIM_HORIZON.
pub fn start_initialized(config: &Value) -> Running {
    let mut running = start(config);
    running.initialize(SHARD, daemon::TRIM_HORIZON);
    running
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
