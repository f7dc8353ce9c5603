//! kinesis-kafka-replicator: a KCL MultiLangDaemon record processor that copies one
//! Kinesis shard into Kafka and never checkpoints past a record Kafka has not acknowledged.
//!
//! The flow: [`session`] reads the daemon's messages ([`protocol`]) and hands each to the
//! [`replicator::Replicator`], which maps records to messages ([`transform`]), produces
//! them ([`kafka`]), and checkpoints the acknowledged frontier ([`checkpoint`]).

pub mod aws_credentials;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod exactly_once;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod metrics_server;
pub mod msk_iam;
pub mod otlp;
pub mod polled_producer;
pub mod positions;
pub mod processing;
pub mod produce_again;
pub mod protocol;
pub mod replicator;
pub mod session;
pub mod transform;

use std::io::Read;
use std::os::fd::RawFd;
use std::sync::Arc;

use log::{error, info, warn};

use crate::checkpoint::Frontier;
use crate::config::Config;
use crate::kafka::KafkaSink;
use crate::metrics::{Metrics, Reporter, ShardState};
use crate::processing::ConfiguredStage;
use crate::replicator::Replicator;
use crate::session::{End, Fatal, Session};
use crate::transform::{Pipeline, Placement, Transform};

/// Exit code: stdin closed between messages, everything handled.
pub const EXIT_OK: i32 = 0;
/// Exit code: the processor stopped on purpose (a record Kafka refuses, a protocol
/// violation); the daemon restarts from the last checkpoint.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code: bad command line or configuration.
pub const EXIT_CONFIG: i32 = 2;

/// Runs the processor as a MultiLang child on `input` (the daemon's messages) and
/// `output` (the protocol channel) until stdin closes. Returns the exit code.
/// `input_fd`, the descriptor `input` reads, lets waits for Kafka notice the daemon
/// closing it.
pub fn run_child<R: Read>(
    config: Config,
    custom: Option<(Box<dyn Transform>, Placement)>,
    input: R,
    input_fd: Option<RawFd>,
    output: std::fs::File,
) -> i32 {
    let pipeline = match build_pipeline(&config, custom) {
        Ok(pipeline) => pipeline,
        Err(e) => {
            error!("invalid processing configuration: {e:#}");
            return EXIT_CONFIG;
        }
    };
    let frontier = Arc::new(Frontier::new());
    let metrics = Arc::new(Metrics::new());
    let sink = match KafkaSink::with_metrics(&config, frontier.clone(), metrics.clone()) {
        Ok(sink) => sink,
        Err(e) => {
            error!("{e:#}");
            return EXIT_CONFIG;
        }
    };
    // Only when run.sh started a metrics server (METRICS_PORT, OTLP).
    let reporter = {
        let frontier = frontier.clone();
        let metrics = metrics.clone();
        Reporter::start(move || metrics.snapshot(&frontier.state()))
    };
    let mut replicator = Replicator::new(config, frontier, sink, pipeline);
    let mut session = Session::new(input, output);
    if let Some(fd) = input_fd {
        session = session.watching_hangup(fd);
    }
    let code = match session.run(&mut replicator) {
        End::Eof => {
            info!("stdin closed; exiting");
            replicator.finish(true);
            EXIT_OK
        }
        End::Fatal(Fatal::DaemonGone(why)) => {
            warn!("{why}");
            replicator.finish(false);
            EXIT_OK
        }
        End::Fatal(fatal) => {
            error!("{fatal}");
            replicator.finish(false);
            EXIT_FAILURE
        }
    };
    metrics.set_state(ShardState::Ended);
    if let Some(reporter) = reporter {
        reporter.stop();
    }
    code
}

/// The stages a record goes through: the configured one (when anything is configured)
/// and the custom transform, in place of it or after it.
pub fn build_pipeline(
    config: &Config,
    custom: Option<(Box<dyn Transform>, Placement)>,
) -> anyhow::Result<Pipeline> {
    let configured = ConfiguredStage::from_config(config)?;
    let mut stages: Vec<Box<dyn Transform>> = Vec::new();
    match custom {
        Some((transform, Placement::Replace)) => stages.push(transform),
        Some((transform, Placement::After)) => {
            if let Some(stage) = configured {
                stages.push(Box::new(stage));
            }
            stages.push(transform);
        }
        None => {
            if let Some(stage) = configured {
                stages.push(Box::new(stage));
            }
        }
    }
    Ok(Pipeline::new(stages))
}
