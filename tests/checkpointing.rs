//! How the processor checkpoints: where, how often, in what format, and how it handles the
//! lease table's errors (retries, giving up, ShutdownException).
//!
//! Each scenario runs through both ways the binary reads a `processRecords` line
//! (`NAME::streamed`, `NAME::read_whole`; see `both_paths!`): a checkpoint may be requested in
//! the middle of a batch read whole, never in the middle of a streamed one.

mod support;

use std::time::Duration;

use serde_json::json;
use support::config::config_with;
use support::daemon::*;
use support::kafka::*;
use support::*;

const EXIT: Duration = Duration::from_secs(20);

/// wait_for_ack, so that every batch ends with a checkpoint at its last record.
fn deterministic(
    order: FieldOrder,
    kafka: &Kafka,
    topic: &str,
    patch: serde_json::Value,
) -> Running {
    let mut config = config_with(
        &kafka.bootstrap(),
        topic,
        json!({"pipeline": {"wait_for_ack": true}}),
    );
    support::config::merge(&mut config, patch);
    start_initialized_in(order, &config)
}

fn attempts_during(r: &Running, action: &str) -> Vec<CheckpointAttempt> {
    r.checkpoint_attempts()
        .into_iter()
        .filter(|a| a.during == action)
        .collect()
}

/// Attempts made after the first `skip` ones.
fn attempts_after(r: &Running, skip: usize) -> Vec<CheckpointAttempt> {
    r.checkpoint_attempts().into_iter().skip(skip).collect()
}

fn errors(attempts: &[CheckpointAttempt]) -> Vec<Option<String>> {
    attempts
        .iter()
        .map(|a| a.outcome.error().map(str::to_string))
        .collect()
}

both_paths!(wait_for_ack_checkpoints_each_batch_at_its_last_record_before_the_status);
fn wait_for_ack_checkpoints_each_batch_at_its_last_record_before_the_status(order: FieldOrder) {
    let kafka = Kafka::start(1, "per-batch", 2);
    let mut r = deterministic(order, &kafka, "per-batch", json!({}));
    for start in [0, 100, 200] {
        let batch = records(start, 100);
        r.process_records(&batch, Some(0));
        assert_eq!(r.lease_checkpoint(), batch[99].ext_seq(), "{}", r.dump());
    }
    assert_batches_took_their_path(&r);
}

both_paths!(checkpoint_requests_use_the_exact_wire_format);
fn checkpoint_requests_use_the_exact_wire_format(order: FieldOrder) {
    let kafka = Kafka::start(1, "wire", 1);
    let mut r = deterministic(order, &kafka, "wire", json!({}));
    let batch = records(0, 3);
    r.process_records(&batch, Some(0));
    assert_eq!(
        r.received_checkpoint_lines(),
        vec![format!(
            r#"{{"action":"checkpoint","sequenceNumber":"{}","subSequenceNumber":0}}"#,
            batch[2].sequence_number
        )],
        "{}",
        r.dump()
    );
    assert_batches_took_their_path(&r);
}

both_paths!(checkpoint_throttled_three_times_then_succeeds);
fn checkpoint_throttled_three_times_then_succeeds(order: FieldOrder) {
    let kafka = Kafka::start(1, "throttled", 1);
    let mut r = deterministic(order, &kafka, "throttled", json!({}));
    r.inject_checkpoint_errors(&[THROTTLING, THROTTLING, THROTTLING]);
    let batch = records(0, 10);
    r.process_records(&batch, Some(0));
    let attempts = attempts_during(&r, "processRecords");
    assert_eq!(
        errors(&attempts),
        vec![
            Some(THROTTLING.to_string()),
            Some(THROTTLING.to_string()),
            Some(THROTTLING.to_string()),
            None
        ],
        "{}",
        r.dump()
    );
    // The same position every time, after sleep_seconds (0.05) between attempts.
    for a in &attempts {
        assert_eq!(
            a.sequence_number.as_deref(),
            Some(batch[9].sequence_number.as_str())
        );
    }
    for w in attempts.windows(2) {
        assert!(
            w[1].at.duration_since(w[0].at) >= Duration::from_millis(40),
            "retries must sleep between attempts\n{}",
            r.dump()
        );
    }
    assert_eq!(r.lease_checkpoint(), batch[9].ext_seq());
    assert_batches_took_their_path(&r);
}

both_paths!(dependency_exception_is_retried_like_throttling);
fn dependency_exception_is_retried_like_throttling(order: FieldOrder) {
    let kafka = Kafka::start(1, "dependency", 1);
    let mut r = deterministic(order, &kafka, "dependency", json!({}));
    r.inject_checkpoint_errors(&[DEPENDENCY, THROTTLING]);
    let batch = records(0, 10);
    r.process_records(&batch, Some(0));
    assert_eq!(
        errors(&attempts_during(&r, "processRecords")),
        vec![
            Some(DEPENDENCY.to_string()),
            Some(THROTTLING.to_string()),
            None
        ],
        "{}",
        r.dump()
    );
    assert_eq!(r.lease_checkpoint(), batch[9].ext_seq());
    assert_batches_took_their_path(&r);
}

both_paths!(checkpoint_gives_up_after_retries_attempts_and_keeps_processing);
fn checkpoint_gives_up_after_retries_attempts_and_keeps_processing(order: FieldOrder) {
    let kafka = Kafka::start(1, "give-up", 1);
    let mut r = deterministic(
        order,
        &kafka,
        "give-up",
        json!({"checkpoint": {"retries": 3}}),
    );
    r.inject_checkpoint_errors(&[THROTTLING, THROTTLING, THROTTLING]);
    let first = records(0, 10);
    r.process_records(&first, Some(0));
    assert_eq!(
        errors(&attempts_during(&r, "processRecords")),
        vec![Some(THROTTLING.to_string()); 3],
        "checkpoint.retries is the total number of attempts\n{}",
        r.dump()
    );
    assert!(r.checkpoints().is_empty());
    // The next batch checkpoints again, and succeeds.
    let second = records(10, 10);
    r.process_records(&second, Some(0));
    assert_eq!(r.lease_checkpoint(), second[9].ext_seq(), "{}", r.dump());
    assert_batches_took_their_path(&r);
}

both_paths!(shutdown_exception_stops_checkpointing_but_every_status_is_still_answered);
fn shutdown_exception_stops_checkpointing_but_every_status_is_still_answered(order: FieldOrder) {
    let kafka = Kafka::start(1, "shutdown-exc", 1);
    let mut r = deterministic(order, &kafka, "shutdown-exc", json!({}));
    let first = records(0, 10);
    r.process_records(&first, Some(0));
    assert_eq!(r.lease_checkpoint(), first[9].ext_seq(), "{}", r.dump());
    let before = r.checkpoint_attempts().len();

    r.shutdown_exception_forever();
    r.process_records(&records(10, 10), Some(0));
    assert_eq!(
        errors(&attempts_after(&r, before)),
        vec![Some(SHUTDOWN.to_string())],
        "one attempt, not retried\n{}",
        r.dump()
    );
    let after_failure = r.checkpoint_attempts().len();
    r.process_records(&records(20, 10), Some(0));
    r.process_records(&records(30, 10), Some(0));
    r.shutdown_requested();
    r.lease_lost();
    assert_eq!(r.wait_exit(EXIT).code(), Some(0), "{}", r.dump());
    assert!(
        attempts_after(&r, after_failure).is_empty(),
        "no checkpoint requests after ShutdownException\n{}",
        r.dump()
    );
    assert_eq!(r.lease_checkpoint(), first[9].ext_seq());
    assert_batches_took_their_path(&r);
}

both_paths!(shutdown_requested_checkpoint_is_retried_when_throttled);
fn shutdown_requested_checkpoint_is_retried_when_throttled(order: FieldOrder) {
    let kafka = Kafka::start(1, "sr-throttled", 1);
    let mut r = start_initialized_in(
        order,
        &support::config::base_config(&kafka.bootstrap(), "sr-throttled"),
    );
    let all = records(0, 50);
    r.process_records(&all, Some(0));
    r.inject_checkpoint_errors(&[THROTTLING, THROTTLING]);
    let before = r.checkpoint_attempts().len();
    r.shutdown_requested();
    let attempts = attempts_after(&r, before);
    assert_eq!(
        errors(&attempts).last(),
        Some(&None),
        "the last attempt succeeds\n{}",
        r.dump()
    );
    assert_eq!(r.lease_checkpoint(), all[49].ext_seq(), "{}", r.dump());
    r.lease_lost();
    assert_eq!(r.wait_exit(EXIT).code(), Some(0), "{}", r.dump());
    assert_batches_took_their_path(&r);
}

both_paths!(shard_end_checkpoint_is_retried_past_the_retry_limit_until_it_succeeds);
fn shard_end_checkpoint_is_retried_past_the_retry_limit_until_it_succeeds(order: FieldOrder) {
    let kafka = Kafka::start(1, "end-retry", 1);
    let mut r = deterministic(
        order,
        &kafka,
        "end-retry",
        json!({"checkpoint": {"retries": 2}}),
    );
    r.process_records(&records(0, 10), Some(0));
    r.inject_checkpoint_errors(&[
        THROTTLING, DEPENDENCY, THROTTLING, THROTTLING, DEPENDENCY, THROTTLING,
    ]);
    r.shard_ended();
    assert!(r.wait_exit(EXIT).success(), "{}", r.dump());
    let attempts = attempts_during(&r, "shardEnded");
    assert_eq!(attempts.len(), 7, "{}", r.dump());
    assert_eq!(r.last_checkpoint(), Some(ExtSeq::shard_end()));
    assert_batches_took_their_path(&r);
}

both_paths!(freq_seconds_limits_checkpoints_during_process_records);
fn freq_seconds_limits_checkpoints_during_process_records(order: FieldOrder) {
    let kafka = Kafka::start(1, "freq", 1);
    let mut r = deterministic(
        order,
        &kafka,
        "freq",
        json!({"checkpoint": {"freq_seconds": 3600}}),
    );
    let all = records(0, 100);
    for batch in all.chunks(20) {
        r.process_records(batch, Some(0));
    }
    assert!(
        attempts_during(&r, "processRecords").len() <= 1,
        "at most one checkpoint per hour\n{}",
        r.dump()
    );
    // shutdownRequested checkpoints regardless of the interval.
    r.shutdown_requested();
    assert_eq!(r.lease_checkpoint(), all[99].ext_seq(), "{}", r.dump());
    r.lease_lost();
    assert_eq!(r.wait_exit(EXIT).code(), Some(0));
    assert_batches_took_their_path(&r);
}

both_paths!(pipelined_checkpoints_move_forward_only_and_are_always_in_range);
fn pipelined_checkpoints_move_forward_only_and_are_always_in_range(order: FieldOrder) {
    let kafka = Kafka::start(3, "pipelined", 4);
    kafka
        .cluster
        .broker_round_trip_time(-1, Duration::from_millis(50))
        .expect("rtt");
    let mut r = start_initialized_in(
        order,
        &support::config::base_config(&kafka.bootstrap(), "pipelined"),
    );
    let all = records(0, 2000);
    for batch in all.chunks(100) {
        r.process_records(batch, Some(0));
    }
    // Later processRecords (empty ones here) checkpoint the acknowledged frontier.
    drive_until_checkpointed(&mut r, &all[1999].ext_seq(), Duration::from_secs(15));
    r.shard_ended();
    assert!(r.wait_exit(EXIT).success(), "{}", r.dump());
    for a in r.checkpoint_attempts() {
        assert_eq!(a.outcome.error(), None, "{a:?}\n{}", r.dump());
    }
    let stored = r.checkpoints();
    assert!(stored.len() >= 2, "{}", r.dump());
    for w in stored.windows(2) {
        assert_eq!(
            w[0].compare(&w[1]),
            Ok(std::cmp::Ordering::Less),
            "{}",
            r.dump()
        );
    }
    let messages = kafka.read(all.len(), Duration::from_secs(20));
    assert_delivered(&messages, SHARD, &all);
    assert_checkpoints_covered(&stored, &all, &messages);
    assert_batches_took_their_path(&r);
}

both_paths!(non_retryable_checkpoint_errors_are_not_retried_and_processing_goes_on);
fn non_retryable_checkpoint_errors_are_not_retried_and_processing_goes_on(order: FieldOrder) {
    let kafka = Kafka::start(1, "non-retryable", 1);
    let mut r = deterministic(order, &kafka, "non-retryable", json!({}));
    for (i, error) in [ILLEGAL_ARGUMENT, INVALID_STATE].into_iter().enumerate() {
        let before = r.checkpoint_attempts().len();
        r.inject_checkpoint_errors(&[error]);
        r.process_records(&records(i as u64 * 10, 10), Some(0));
        assert_eq!(
            errors(&attempts_after(&r, before)),
            vec![Some(error.to_string())],
            "{error}: one attempt, not retried\n{}",
            r.dump()
        );
    }
    let last = records(20, 10);
    r.process_records(&last, Some(0));
    assert_eq!(r.lease_checkpoint(), last[9].ext_seq(), "{}", r.dump());
    r.shard_ended();
    assert!(r.wait_exit(EXIT).success(), "{}", r.dump());
    assert_batches_took_their_path(&r);
}

both_paths!(a_failure_in_the_middle_of_a_batch_checkpoints_up_to_it_on_either_path);
/// A record Kafka refuses for good, found in the middle of a batch while the binary waits for
/// room in a small window: the records before it are checkpointed, nothing after it, and the
/// batch is not answered. Streamed, the checkpoint waits until the rest of the line is read;
/// read whole, it may be requested at once.
fn a_failure_in_the_middle_of_a_batch_checkpoints_up_to_it_on_either_path(order: FieldOrder) {
    let kafka = Kafka::start(1, "mid-batch", 2);
    let mut r = start_initialized_in(
        order,
        &config_with(
            &kafka.bootstrap(),
            "mid-batch",
            json!({
                "pipeline": {"max_in_flight_records": 3},
                "kafka": {"properties": {"message.max.bytes": "10000"}}
            }),
        ),
    );
    let mut batch = records(0, 60);
    batch[20].data = Some(vec![b'x'; 20_000]);
    let big = batch[20].clone();
    let result = r.try_process_records(&batch, Some(0));
    assert!(
        matches!(result, Err(ActionError::Eof { .. })),
        "no status for the failed batch: {result:?}\n{}",
        r.dump()
    );
    assert_eq!(r.wait_exit(EXIT).code(), Some(1), "{}", r.dump());
    assert!(
        r.stderr()
            .lines()
            .any(|l| l.contains(SHARD) && l.contains(&big.sequence_number)),
        "{}",
        r.stderr()
    );
    assert_eq!(
        r.lease_checkpoint(),
        batch[19].ext_seq(),
        "the records before the failed one are checkpointed\n{}",
        r.dump()
    );
    for a in r.checkpoint_attempts() {
        assert_eq!(a.outcome.error(), None, "{a:?}\n{}", r.dump());
    }
    // The failed batch was never answered, so only the batch read whole says how it was read
    // (it is logged before its records are handled); a streamed one is logged at its end.
    let expected = if order.is_streamed() {
        vec![]
    } else {
        vec![(60, false)]
    };
    assert_eq!(batches_logged(&r.stderr()), expected, "{}", r.dump());
}
