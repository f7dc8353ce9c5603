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
