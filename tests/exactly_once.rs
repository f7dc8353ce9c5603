//! Exactly-once against librdkafka's mock cluster, where transaction faults can be injected:
//! a coordinator that is busy or moving, a produce error that dooms a transaction, and a
//! second owner that fences the first. The end-to-end proofs against the real broker and the
//! real daemon are in tests/e2e/test_exactly_once*.py.
//!
//! The mock keeps no transaction markers (its read_committed reads everything), so these
//! tests check what the child does (commits, aborts, checkpoints, exits), not what a
//! read_committed consumer would see.

mod support;

use std::time::Duration;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::{json, Value};
use support::daemon::*;
use support::kafka::*;
use support::scenario::EXIT;

const APPLICATION: &str = "app";

/// A mock cluster with the topic and the positions topic.
fn kafka(topic: &str) -> Kafka {
    let kafka = Kafka::start(1, topic, 1);
    kafka
        .cluster
        .create_topic(&format!("{APPLICATION}.positions"), 1, 1)
        .expect("positions topic");
    kafka
}

fn exactly_once(extra: Value) -> Value {
    let mut delivery = json!({"guarantee": "exactly_once", "application_name": APPLICATION});
    support::config::merge(&mut delivery, extra);
    json!({"delivery": delivery, "checkpoint": {"freq_seconds": "0"}})
}

#[test]
fn each_caught_up_batch_is_committed_and_checkpointed_and_shard_end_follows_the_last_commit() {
    let kafka = kafka("eos-commits");
    let mut r = kafka.replicator(exactly_once(json!({})));
    let all = records(0, 300);
    for batch in all.chunks(100) {
        r.process_records(batch, Some(0));
        // Caught up (millisBehindLatest 0): the batch's transaction commits at its end,
        // and its position is the checkpoint.
        assert_eq!(r.lease_checkpoint(), batch[99].ext_seq(), "{}", r.dump());
    }
    r.ends_at_shard_end();
    let messages = kafka.read_delivered(&all);
    assert_no_duplicates(&messages);
    assert_key_order(&messages);
    r.assert_stderr_contains("exactly-once: transactional id app-shardId-000000000007");
}

#[test]
fn a_batch_behind_the_tip_stays_in_the_open_transaction_and_is_not_checkpointed() {
    let kafka = kafka("eos-behind");
    let mut r = kafka.replicator(exactly_once(json!({"transaction_max_seconds": 20})));
    let first = records(0, 100);
    r.process_records(&first, Some(0));
    assert_eq!(r.lease_checkpoint(), first[99].ext_seq());
    // 10 minutes behind: the span grows rather than committing per batch.
    let second = records(100, 100);
    r.process_records(&second, Some(600_000));
    let third = records(200, 100);
    r.process_records(&third, Some(600_000));
    kafka.read(300, Duration::from_secs(30));
    assert_eq!(
        r.lease_checkpoint(),
        first[99].ext_seq(),
        "acknowledged but uncommitted records were checkpointed\n{}",
        r.dump()
    );
    // At shutdown the open span is committed, then checkpointed.
    r.shutdown_requested();
    assert_eq!(r.lease_checkpoint(), third[99].ext_seq(), "{}", r.dump());
}

#[test]
fn a_busy_or_moving_coordinator_delays_the_commit_but_loses_nothing() {
    let kafka = kafka("eos-coordinator");
    kafka.cluster.request_errors(
        RDKafkaApiKey::EndTxn,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
        ],
    );
    kafka.cluster.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS],
    );
    let mut r = kafka.replicator(exactly_once(json!({})));
    r.timeout = Duration::from_secs(60);
    let all = records(0, 200);
    for batch in all.chunks(100) {
        r.process_records(batch, Some(0));
    }
    assert_eq!(r.lease_checkpoint(), all[199].ext_seq(), "{}", r.dump());
    r.ends_at_shard_end();
    let messages = kafka.read_delivered(&all);
    assert_no_duplicates(&messages);
}

#[test]
fn a_produce_error_aborts_the_transaction_and_the_child_exits_at_the_committed_position() {
    let kafka = kafka("eos-abort");
    let mut r = kafka.replicator(exactly_once(json!({})));
    let first = records(0, 100);
    r.process_records(&first, Some(0));
    assert_eq!(r.lease_checkpoint(), first[99].ext_seq());
    // A permanent produce error: the broker refuses the batch, the transaction is doomed.
    kafka.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD],
    );
    let second = records(100, 100);
    let result = r.try_process_records(&second, Some(0));
    assert!(
        matches!(result, Err(ActionError::Eof { .. })),
        "the doomed batch was answered: {result:?}\n{}",
        r.dump()
    );
    assert_eq!(r.wait_exit(EXIT).code(), Some(1), "{}", r.dump());
    // Checkpointed no further than the committed position: the replay starts after it.
    assert_eq!(r.lease_checkpoint(), first[99].ext_seq(), "{}", r.dump());
    r.assert_stderr_contains("was aborted");
    r.assert_stderr_contains("exiting so that the daemon replays");
}

/// The mock gives every InitProducerId a new producer id, so a second owner does not fence
/// the first there (test_exactly_once.py shows it on the real broker): the broker's answer
/// to a fenced producer is injected instead.
#[test]
fn a_fenced_producer_exits_without_checkpointing_again() {
    let kafka = kafka("eos-fenced");
    let mut r = kafka.replicator(exactly_once(json!({"transaction_max_seconds": 20})));
    let committed = records(0, 100);
    r.process_records(&committed, Some(0));
    assert_eq!(r.lease_checkpoint(), committed[99].ext_seq());
    r.process_records(&records(100, 100), Some(600_000));
    kafka.cluster.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED],
    );
    // Caught up: the span commits at the end of this batch, and the broker says fenced.
    let result = r.try_process_records(&records(200, 100), Some(0));
    assert!(
        matches!(result, Err(ActionError::Eof { .. })),
        "the fenced child answered: {result:?}\n{}",
        r.dump()
    );
    assert_eq!(r.wait_exit(EXIT).code(), Some(1), "{}", r.dump());
    r.assert_stderr_contains("exiting without a checkpoint");
    assert_eq!(
        r.checkpoints().last(),
        Some(&committed[99].ext_seq()),
        "the fenced child checkpointed after it was fenced\n{}",
        r.dump()
    );
}
