//! The set-up and the endings that scenarios share, so that each test shows only what it is
//! about: the binary started against a [`Kafka`] with a config patch, and the usual checks at
//! the end of a shard.

use std::time::Duration;

use serde_json::Value;

use super::config::config_with;
use super::daemon::{ExtSeq, FieldOrder, TestRecord};
use super::kafka::{assert_delivered, Kafka, ReadMessage};
use super::{start_in, start_initialized_in, Running, SHARD};

/// How long a scenario waits for the binary to exit.
pub const EXIT: Duration = Duration::from_secs(30);
/// How long a scenario waits for the records it reads back.
pub const READ: Duration = Duration::from_secs(30);

impl Kafka {
    /// The binary's config for this Kafka's topic: the base config with `patch` merged in
    /// (`json!({})` for none).
    pub fn config(&self, patch: Value) -> Value {
        config_with(&self.bootstrap(), &self.topic, patch)
    }

    /// The binary configured by `patch` for this topic, initialized for `SHARD` from
    /// TRIM_HORIZON.
    pub fn replicator(&self, patch: Value) -> Running {
        self.replicator_in(FieldOrder::Daemon, patch)
    }

    /// [`Kafka::replicator`], with `processRecords` lines in `order`.
    pub fn replicator_in(&self, order: FieldOrder, patch: Value) -> Running {
        start_initialized_in(order, &self.config(patch))
    }

    /// The topic, read until it holds at least `records`; asserts that each of them was
    /// delivered from `SHARD` (see [`assert_delivered`]).
    pub fn read_delivered(&self, records: &[TestRecord]) -> Vec<ReadMessage> {
        let messages = self.read(records.len(), READ);
        assert_delivered(&messages, SHARD, records);
        messages
    }

    /// The binary configured by `patch` for this topic, not initialized yet.
    pub fn replicator_uninitialized(&self, order: FieldOrder, patch: Value) -> Running {
        start_in(order, &self.config(patch))
    }
}

impl Running {
    /// `shardEnded`, then the binary exits 0.
    pub fn shard_ends(&mut self) {
        self.shard_ended();
        let status = self.wait_exit(EXIT);
        assert!(status.success(), "exit {status:?}\n{}", self.dump());
    }

    /// [`Running::shard_ends`], having checkpointed SHARD_END.
    pub fn ends_at_shard_end(&mut self) {
        self.shard_ends();
        self.assert_last_checkpoint(&ExtSeq::shard_end());
    }

    /// The last checkpoint stored is `expected`.
    pub fn assert_last_checkpoint(&self, expected: &ExtSeq) {
        assert_eq!(
            self.last_checkpoint().as_ref(),
            Some(expected),
            "{}",
            self.dump()
        );
    }

    /// The binary's stderr so far contains `needle`.
    pub fn assert_stderr_contains(&self, needle: &str) {
        let stderr = self.stderr();
        assert!(stderr.contains(needle), "{stderr}");
    }
}
