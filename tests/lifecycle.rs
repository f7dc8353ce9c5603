//! A shard's life as the daemon drives it: initialize, batches, and each way it can end.
//!
//! Every scenario that sends `processRecords` runs twice (`both_paths!`): `NAME::streamed`,
//! with lines in the daemon's exact field order, which the binary reads record by record, and
//! `NAME::read_whole`, with the same messages in another field order, which it reads whole.
//! Each checks in the binary's DEBUG log that its batches took the path it is named after.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::daemon::*;
use support::kafka::*;
use support::*;

const EXIT: Duration = Duration::from_secs(20);
const READ: Duration = Duration::from_secs(20);

fn attempts_during(r: &Running, action: &str) -> Vec<CheckpointAttempt> {
    r.checkpoint_attempts()
        .into_iter()
        .filter(|a| a.during == action)
        .collect()
}

both_paths!(full_life_to_shard_end_checkpoints_shard_end_and_delivers_every_record_in_key_order);
fn full_life_to_shard_end_checkpoints_shard_end_and_delivers_every_record_in_key_order(
    order: FieldOrder,
) {
    let kafka = Kafka::start(3, "life", 4);
    let mut r = kafka.replicator_in(order, json!({}));
    let all = records(0, 1000);
    for batch in all.chunks(200) {
        r.process_records(batch, Some(1000));
    }
    r.ends_at_shard_end();
    // The shard-end checkpoint is requested with nulls, as the protocol requires.
    let end = attempts_during(&r, "shardEnded");
    assert!(
        end.iter()
            .any(|a| a.sequence_number.is_none() && a.sub_sequence_number.is_none()),
        "{}",
        r.dump()
    );
    assert!(r.received_checkpoint_lines().contains(
        &r#"{"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null}"#.to_string()
    ));
    assert!(attempts_during(&r, "initialize").is_empty());

    let messages = kafka.read_delivered(&all);
    assert_eq!(messages.len(), all.len(), "no duplicates in a clean run");
    assert_no_duplicates(&messages);
    assert_key_order(&messages);
    assert_checkpoints_covered(&r.checkpoints(), &all, &messages);
    assert_batches_took_their_path(&r);
}

both_paths!(records_are_partitioned_by_murmur2_of_the_partition_key);
fn records_are_partitioned_by_murmur2_of_the_partition_key(order: FieldOrder) {
    let kafka = Kafka::start(1, "murmur", 6);
    let mut r = kafka.replicator_in(order, json!({}));
    let all = records(0, 130);
    r.process_records(&all, Some(0));
    r.shard_ends();
    let messages = kafka.read_delivered(&all);
    for m in &messages {
        let key = m.key.as_deref().expect("keyed");
        assert_eq!(
            m.partition,
            murmur2_partition(key, 6),
            "key {:?} (murmur2_random, like the Java client)",
            String::from_utf8_lossy(key)
        );
    }
    assert_batches_took_their_path(&r);
}

both_paths!(lease_lost_takes_no_checkpoint_and_exits_zero_on_eof);
fn lease_lost_takes_no_checkpoint_and_exits_zero_on_eof(order: FieldOrder) {
    let kafka = Kafka::start(1, "lost", 2);
    let mut r = kafka.replicator_in(order, json!({}));
    let all = records(0, 300);
    for batch in all.chunks(100) {
        r.process_records(batch, Some(0));
    }
    r.lease_lost();
    let status = r.wait_exit(EXIT);
    assert_eq!(status.code(), Some(0), "{}", r.dump());
    assert!(attempts_during(&r, "leaseLost").is_empty(), "{}", r.dump());
    // Nothing at all after the leaseLost status, not even drained at exit.
    assert!(
        r.transcript()
            .iter()
            .all(|e| !matches!(e, Event::Drained(_))),
        "{}",
        r.dump()
    );
    let messages = kafka.read(0, Duration::from_secs(5));
    assert_checkpoints_covered(&r.checkpoints(), &all, &messages);
    assert_batches_took_their_path(&r);
}

#[test]
fn initialize_then_lease_lost_takes_no_checkpoint() {
    let kafka = Kafka::start(1, "idle", 1);
    let mut r = kafka.replicator(json!({}));
    r.lease_lost();
    assert_eq!(r.wait_exit(EXIT).code(), Some(0), "{}", r.dump());
    assert!(r.checkpoint_attempts().is_empty(), "{}", r.dump());
}

both_paths!(shutdown_requested_checkpoints_the_acknowledged_frontier_and_lease_lost_none);
fn shutdown_requested_checkpoints_the_acknowledged_frontier_and_lease_lost_none(order: FieldOrder) {
    let kafka = Kafka::start(3, "graceful", 3);
    let mut r = kafka.replicator_in(order, json!({}));
    let all = records(0, 500);
    for batch in all.chunks(250) {
        r.process_records(batch, Some(0));
    }
    r.shutdown_requested();
    let during = attempts_during(&r, "shutdownRequested");
    assert!(
        during.iter().any(|a| a.outcome.error().is_none()),
        "a checkpoint during shutdownRequested\n{}",
        r.dump()
    );
    // Kafka is healthy: after the bounded flush everything is acknowledged.
    assert_eq!(
        r.lease_checkpoint(),
        all.last().unwrap().ext_seq(),
        "{}",
        r.dump()
    );
    r.lease_lost();
    assert_eq!(r.wait_exit(EXIT).code(), Some(0), "{}", r.dump());
    assert!(attempts_during(&r, "leaseLost").is_empty(), "{}", r.dump());
    let messages = kafka.read_delivered(&all);
    assert_checkpoints_covered(&r.checkpoints(), &all, &messages);
    assert_batches_took_their_path(&r);
}

both_paths!(resumes_from_a_numeric_lease_checkpoint);
fn resumes_from_a_numeric_lease_checkpoint(order: FieldOrder) {
    let kafka = Kafka::start(1, "resume", 2);
    let mut r = kafka.replicator_uninitialized(order, json!({"pipeline": {"wait_for_ack": true}}));
    let start_at = seq_number(99);
    r.initialize(SHARD, &start_at);
    let all = records(100, 50);
    r.process_records(&all, Some(0));
    assert_eq!(r.lease_checkpoint(), all[49].ext_seq(), "{}", r.dump());
    r.ends_at_shard_end();
    kafka.read_delivered(&all);
    assert_batches_took_their_path(&r);
}

#[test]
fn shard_end_with_no_records_checkpoints_shard_end() {
    let kafka = Kafka::start(1, "empty-shard", 1);
    let mut r = kafka.replicator(json!({}));
    r.ends_at_shard_end();
}

both_paths!(kcl1_shutdown_terminate_checkpoints_shard_end);
fn kcl1_shutdown_terminate_checkpoints_shard_end(order: FieldOrder) {
    let kafka = Kafka::start(1, "v1-terminate", 2);
    let mut r = kafka.replicator_in(order, json!({}));
    let all = records(0, 100);
    r.process_records(&all, Some(0));
    r.shutdown_v1(ShutdownReason::Terminate);
    assert!(r.wait_exit(EXIT).success(), "{}", r.dump());
    r.assert_last_checkpoint(&ExtSeq::shard_end());
    kafka.read_delivered(&all);
    assert_batches_took_their_path(&r);
}

both_paths!(kcl1_shutdown_zombie_answers_status_and_exits_zero);
fn kcl1_shutdown_zombie_answers_status_and_exits_zero(order: FieldOrder) {
    let kafka = Kafka::start(1, "v1-zombie", 2);
    let mut r = kafka.replicator_in(order, json!({}));
    let all = records(0, 100);
    r.process_records(&all, Some(0));
    r.shutdown_v1(ShutdownReason::Zombie);
    assert_eq!(r.wait_exit(EXIT).code(), Some(0), "{}", r.dump());
    // Any checkpoint attempted during ZOMBIE fails at the lease table; none may be stored.
    assert!(
        attempts_during(&r, "shutdown")
            .iter()
            .all(|a| !matches!(a.outcome, CheckpointOutcome::Stored(_))),
        "{}",
        r.dump()
    );
    assert_batches_took_their_path(&r);
}

both_paths!(a_batch_of_ten_thousand_records_is_delivered_and_checkpointed);
fn a_batch_of_ten_thousand_records_is_delivered_and_checkpointed(order: FieldOrder) {
    let kafka = Kafka::start(3, "big-batch", 4);
    let mut r = kafka.replicator_uninitialized(order, json!({"pipeline": {"wait_for_ack": true}}));
    r.initialize(SHARD, TRIM_HORIZON);
    let all = records(0, 10_000);
    let started = Instant::now();
    r.process_records(&all, Some(0));
    assert_eq!(r.lease_checkpoint(), all[9_999].ext_seq(), "{}", r.dump());
    r.shard_ends();
    assert!(started.elapsed() < Duration::from_secs(60));
    let messages = kafka.read(all.len(), Duration::from_secs(60));
    assert_delivered(&messages, SHARD, &all);
    assert_key_order(&messages);
    assert_batches_took_their_path(&r);
}

both_paths!(empty_batches_with_null_millis_behind_latest_are_answered);
fn empty_batches_with_null_millis_behind_latest_are_answered(order: FieldOrder) {
    let kafka = Kafka::start(1, "empty", 1);
    let mut r = kafka.replicator_in(order, json!({}));
    r.process_records(&[], None);
    let all = records(0, 10);
    r.process_records(&all, None);
    for _ in 0..5 {
        r.process_records(&[], None);
    }
    r.ends_at_shard_end();
    kafka.read_delivered(&all);
    assert_batches_took_their_path(&r);
}

both_paths!(non_ascii_partition_keys_become_the_exact_utf8_key_bytes);
fn non_ascii_partition_keys_become_the_exact_utf8_key_bytes(order: FieldOrder) {
    let kafka = Kafka::start(1, "utf8", 3);
    let mut r = kafka.replicator_in(order, json!({}));
    let keys = [
        "ключ-🔑",
        "日本語キー",
        "emoji-😀-\u{2028}",
        "quote\"back\\slash",
        "tab\tnewline\n",
    ];
    let all: Vec<TestRecord> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| TestRecord::new(seq_number(i as u64), k, format!("v{i}").as_bytes()))
        .collect();
    r.process_records(&all, Some(0));
    r.shard_ends();
    let messages = kafka.read_delivered(&all);
    let m = messages
        .iter()
        .find(|m| m.value.as_deref() == Some(b"v0".as_slice()))
        .expect("first record");
    assert_eq!(m.key.as_deref(), Some("ключ-🔑".as_bytes()));
    assert_batches_took_their_path(&r);
}

both_paths!(null_data_null_key_empty_data_and_binary_data_are_kept_as_they_are);
fn null_data_null_key_empty_data_and_binary_data_are_kept_as_they_are(order: FieldOrder) {
    let kafka = Kafka::start(1, "odd-records", 2);
    let mut r = kafka.replicator_in(order, json!({}));
    let all = vec![
        TestRecord {
            data: None,
            partition_key: Some("k1".into()),
            sequence_number: seq_number(0),
            sub_sequence_number: Some(0),
            arrival_ms: Some(1_700_000_000_001),
        },
        TestRecord {
            data: Some(b"no key".to_vec()),
            partition_key: None,
            sequence_number: seq_number(1),
            sub_sequence_number: Some(0),
            arrival_ms: Some(1_700_000_000_002),
        },
        TestRecord {
            data: Some(Vec::new()),
            partition_key: Some("k3".into()),
            sequence_number: seq_number(2),
            sub_sequence_number: Some(0),
            arrival_ms: Some(1_700_000_000_003),
        },
        TestRecord {
            data: Some((0..=255u8).collect()),
            partition_key: Some("k4".into()),
            sequence_number: seq_number(3),
            sub_sequence_number: Some(0),
            arrival_ms: Some(1_700_000_000_004),
        },
    ];
    r.process_records(&all, Some(0));
    r.ends_at_shard_end();
    kafka.read_delivered(&all);
    assert_batches_took_their_path(&r);
}

both_paths!(null_arrival_timestamp_omits_the_arrival_header);
fn null_arrival_timestamp_omits_the_arrival_header(order: FieldOrder) {
    let kafka = Kafka::start(1, "no-arrival", 1);
    let mut r = kafka.replicator_in(order, json!({}));
    let mut record = TestRecord::generated(0);
    record.arrival_ms = None;
    r.process_records(std::slice::from_ref(&record), Some(0));
    r.shard_ends();
    let messages = kafka.read(1, READ);
    assert_delivered(&messages, SHARD, std::slice::from_ref(&record));
    assert_eq!(messages[0].header(HDR_ARRIVAL), None);
    assert_eq!(messages[0].header(HDR_SUB).as_deref(), Some("0"));
    assert_batches_took_their_path(&r);
}

both_paths!(produce_time_stamps_messages_with_the_replication_time_and_keeps_the_arrival_header);
fn produce_time_stamps_messages_with_the_replication_time_and_keeps_the_arrival_header(
    order: FieldOrder,
) {
    let kafka = Kafka::start(1, "produce-time", 1);
    let mut r = kafka.replicator_in(order, json!({"records": {"timestamp": "produce"}}));
    let old = TestRecord::generated(0);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    r.process_records(std::slice::from_ref(&old), Some(0));
    r.shard_ends();
    let messages = kafka.read(1, READ);
    let stamped = messages[0].timestamp.expect("a timestamp");
    assert!(
        stamped >= before && Some(stamped) != old.arrival_ms,
        "timestamp {stamped}: not the produce time (run began at {before}, arrival {:?})",
        old.arrival_ms
    );
    assert_eq!(
        messages[0].header(HDR_ARRIVAL),
        old.arrival_ms.map(|a| a.to_string())
    );
    assert_batches_took_their_path(&r);
}

both_paths!(aggregated_sub_records_are_delivered_and_checkpointed_with_their_sub_sequence_numbers);
fn aggregated_sub_records_are_delivered_and_checkpointed_with_their_sub_sequence_numbers(
    order: FieldOrder,
) {
    let kafka = Kafka::start(1, "kpl", 3);
    let mut r = kafka.replicator_uninitialized(order, json!({"pipeline": {"wait_for_ack": true}}));
    r.initialize(SHARD, TRIM_HORIZON);
    let first = aggregated(0, 4);
    let second = aggregated(1, 3);
    r.process_records(&first, Some(0));
    assert_eq!(
        r.lease_checkpoint(),
        ExtSeq::new(seq_number(0), 3),
        "{}",
        r.dump()
    );
    r.process_records(&second[..2], Some(0));
    assert_eq!(
        r.lease_checkpoint(),
        ExtSeq::new(seq_number(1), 1),
        "{}",
        r.dump()
    );
    assert!(r.received_checkpoint_lines().contains(&format!(
        r#"{{"action":"checkpoint","sequenceNumber":"{}","subSequenceNumber":1}}"#,
        seq_number(1)
    )));
    r.process_records(&second[2..], Some(0));
    r.shard_ends();
    let all: Vec<TestRecord> = first.into_iter().chain(second).collect();
    kafka.read_delivered(&all);
    assert_batches_took_their_path(&r);
}

both_paths!(headers_can_be_turned_off);
fn headers_can_be_turned_off(order: FieldOrder) {
    let kafka = Kafka::start(1, "no-headers", 1);
    let mut r = kafka.replicator_in(order, json!({"records": {"headers": false}}));
    let all = records(0, 20);
    r.process_records(&all, Some(0));
    r.shard_ends();
    let messages = kafka.read(all.len(), READ);
    assert_delivered_by_value(&messages, &all);
    assert!(messages.iter().all(|m| m.headers.is_empty()));
    assert_batches_took_their_path(&r);
}

both_paths!(a_fourteen_megabyte_process_records_line_is_read_whole);
fn a_fourteen_megabyte_process_records_line_is_read_whole(order: FieldOrder) {
    let kafka = Kafka::start(1, "huge-line", 4);
    let mut r = kafka.replicator_uninitialized(order, json!({"pipeline": {"wait_for_ack": true}}));
    r.timeout = Duration::from_secs(120);
    r.initialize(SHARD, TRIM_HORIZON);
    let mut all = records(0, 10_000);
    for (i, record) in all.iter_mut().enumerate() {
        let mut data = vec![b'a' + (i % 26) as u8; 1024];
        data[..8].copy_from_slice(&(i as u64).to_be_bytes());
        record.data = Some(data);
    }
    let line_len = process_records_line_in(order, &all, Some(0)).len();
    assert!(line_len > 13_000_000, "{line_len}");
    r.process_records(&all, Some(0));
    assert_eq!(r.lease_checkpoint(), all[9_999].ext_seq(), "{}", r.dump());
    r.shard_ended();
    assert!(
        r.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        r.dump()
    );
    let messages = kafka.read(all.len(), Duration::from_secs(60));
    assert_delivered(&messages, SHARD, &all);
    assert_batches_took_their_path(&r);
}

#[test]
fn each_field_order_takes_its_path_and_delivers_the_same_records() {
    for order in FieldOrder::ALL {
        let kafka = Kafka::start(1, "orders", 2);
        let mut r = kafka.replicator_in(order, json!({}));
        let all = records(0, 10);
        r.process_records(&all, Some(5));
        r.process_records(&[], None);
        r.shard_ended();
        assert!(r.wait_exit(EXIT).success(), "{order:?}\n{}", r.dump());
        assert_eq!(
            batches_logged(&r.stderr()),
            vec![(10, order.is_streamed()), (0, order.is_streamed())],
            "{order:?}\n{}",
            r.dump()
        );
        assert_eq!(r.last_checkpoint(), Some(ExtSeq::shard_end()), "{order:?}");
        kafka.read_delivered(&all);
    }
}
