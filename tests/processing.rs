//! The processing stage end to end: the real binary under the daemon double, producing to
//! the mock cluster. What is pinned down: every option reaches Kafka as documented, and the
//! acknowledged frontier stays right when one Kinesis record becomes many messages, none,
//! or a dead letter — including while brokers misbehave.

mod support;

use std::io::Write as _;
use std::thread;
use std::time::Duration;

use flate2::write::GzEncoder;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::json;
use support::daemon::*;
use support::kafka::*;
use support::*;

const EXIT: Duration = Duration::from_secs(30);
const READ: Duration = Duration::from_secs(30);

fn json_record(i: u64, key: &str, payload: serde_json::Value) -> TestRecord {
    TestRecord::new(seq_number(i), key, payload.to_string().as_bytes())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

#[test]
fn topics_routed_by_a_json_field_with_a_default_for_records_without_it() {
    let kafka = Kafka::start(1, "events", 2);
    kafka.cluster.create_topic("events-order", 2, 1).unwrap();
    kafka.cluster.create_topic("events-refund", 2, 1).unwrap();
    let mut r = kafka.replicator(json!({"processing": {"topic": {"from": "field", "field": "kind", "template": "events-$0"}}}));
    let batch = vec![
        json_record(1, "a", json!({"kind": "order", "n": 1})),
        json_record(2, "a", json!({"kind": "refund", "n": 2})),
        json_record(3, "a", json!({"n": 3})),
        json_record(4, "a", json!({"kind": "order", "n": 4})),
    ];
    r.process_records(&batch, Some(0));
    r.ends_at_shard_end();
    let orders = read_topic(&kafka.bootstrap(), "events-order", 2, READ);
    let refunds = read_topic(&kafka.bootstrap(), "events-refund", 1, READ);
    let default = kafka.read(1, READ);
    assert_delivered(&orders, SHARD, &[batch[0].clone(), batch[3].clone()]);
    assert_delivered(&refunds, SHARD, &[batch[1].clone()]);
    assert_delivered(&default, SHARD, &[batch[2].clone()]);
    assert_eq!((orders.len(), refunds.len(), default.len()), (2, 1, 1));
}

#[test]
fn topics_routed_from_the_partition_key_through_a_pattern() {
    let kafka = Kafka::start(1, "fallback", 1);
    kafka.cluster.create_topic("team.billing", 1, 1).unwrap();
    let mut r = kafka.replicator(json!({"processing": {"topic": {"from": "partition_key", "pattern": "^([a-z]+)-\\d+$", "template": "team.$1"}}}));
    let batch = vec![
        TestRecord::new(seq_number(1), "billing-1", b"one"),
        TestRecord::new(seq_number(2), "NOPE", b"two"),
    ];
    r.process_records(&batch, Some(0));
    r.ends_at_shard_end();
    assert_delivered(
        &read_topic(&kafka.bootstrap(), "team.billing", 1, READ),
        SHARD,
        &batch[..1],
    );
    assert_delivered(&kafka.read(1, READ), SHARD, &batch[1..]);
}

#[test]
fn key_from_a_json_field_and_partitioning_by_shard() {
    let kafka = Kafka::start(1, "by-shard", 4);
    let mut r = kafka.replicator(json!({"processing": {
        "key": {"from": "field", "field": "user.id"},
        "partition": {"by": "shard"},
        "number_of_shards": "2"
    }}));
    let batch: Vec<TestRecord> = (0..20)
        .map(|i| json_record(i, &format!("pk-{i}"), json!({"user": {"id": i % 3}})))
        .collect();
    r.process_records(&batch, Some(0));
    r.ends_at_shard_end();
    let messages = kafka.read(batch.len(), READ);
    assert_eq!(messages.len(), batch.len());
    // shardId-000000000007 → ordinal 7 → partition 7 mod 4 = 3, whatever the key.
    assert!(messages.iter().all(|m| m.partition == 3), "{messages:?}");
    for m in &messages {
        let value: serde_json::Value = serde_json::from_slice(m.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            m.key.as_deref(),
            Some(value["user"]["id"].to_string().as_bytes())
        );
    }
    // The partition count was compared with NUMBER_OF_SHARDS and the mismatch explained.
    r.assert_stderr_contains("NUMBER_OF_SHARDS is 2 but by-shard has 4 partitions");
}

#[test]
fn filtered_out_records_count_as_done_so_the_checkpoint_passes_them() {
    let kafka = Kafka::start(1, "filtered", 2);
    let mut r = kafka.replicator(json!({
        "processing": {"filter": {"field": "type", "one_of": ["ping", "noop"], "action": "drop"}},
        "pipeline": {"wait_for_ack": true}
    }));
    let batch = vec![
        json_record(1, "k", json!({"type": "order"})),
        json_record(2, "k", json!({"type": "ping"})),
        json_record(3, "k", json!({"type": "noop"})),
    ];
    r.process_records(&batch, Some(0));
    // The last two records became no message: the checkpoint still reaches the last one.
    r.assert_last_checkpoint(&batch[2].ext_seq());
    r.ends_at_shard_end();
    let messages = kafka.read(1, READ);
    assert_eq!(messages.len(), 1);
    assert_delivered(&messages, SHARD, &batch[..1]);
}

#[test]
fn cloudwatch_logs_record_becomes_one_message_per_event_and_counts_once_all_are_acknowledged() {
    let kafka = Kafka::start(1, "logs", 3);
    let mut r = kafka.replicator(json!({"processing": {"cloudwatch_logs": {"enabled": true}}, "pipeline": {"wait_for_ack": true}}));
    let events: Vec<serde_json::Value> = (0..5)
        .map(|i| json!({"id": format!("ev{i}"), "timestamp": 1_700_000_000_000i64 + i, "message": format!("line {i}")}))
        .collect();
    let data = gzip(
        json!({"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/app", "logStream": "s-1",
               "subscriptionFilters": ["f"], "logEvents": events})
        .to_string()
        .as_bytes(),
    );
    let control = gzip(
        json!({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "", "logStream": "",
               "subscriptionFilters": [], "logEvents": [{"id": "", "timestamp": 1, "message": "CWL CONTROL MESSAGE"}]})
        .to_string()
        .as_bytes(),
    );
    let batch = vec![
        TestRecord::new(seq_number(1), "k", &data),
        TestRecord::new(seq_number(2), "k", &control),
    ];
    r.process_records(&batch, Some(0));
    r.assert_last_checkpoint(&batch[1].ext_seq());
    r.ends_at_shard_end();
    let messages = kafka.read(5, READ);
    assert_eq!(
        messages.len(),
        5,
        "one message per log event, none for the control message"
    );
    let mut values: Vec<String> = messages
        .iter()
        .map(|m| String::from_utf8(m.value.clone().unwrap()).unwrap())
        .collect();
    values.sort();
    assert_eq!(
        values,
        (0..5).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    for m in &messages {
        assert_eq!(m.key.as_deref(), Some(&b"s-1"[..]));
        assert_eq!(m.header("cloudwatch.logGroup").as_deref(), Some("/app"));
        assert_eq!(m.header("kinesis.sequenceNumber"), Some(seq_number(1)));
    }
}

#[test]
fn invalid_records_are_skipped_when_asked_and_the_checkpoint_passes_them() {
    let kafka = Kafka::start(1, "valid", 1);
    let mut r = kafka.replicator(
        json!({"processing": {"validation": {"require_json": true, "on_invalid": "skip"}},
               "pipeline": {"wait_for_ack": true}}),
    );
    let batch = vec![
        json_record(1, "k", json!({"ok": 1})),
        TestRecord::new(seq_number(2), "k", b"not json"),
    ];
    r.process_records(&batch, Some(0));
    r.assert_last_checkpoint(&batch[1].ext_seq());
    r.ends_at_shard_end();
    assert_eq!(kafka.read(1, READ).len(), 1);
    r.assert_stderr_contains(&format!(
        "skipping the invalid record at shard {SHARD} sequence number {}",
        seq_number(2)
    ));
}

#[test]
fn invalid_records_fail_by_default_and_nothing_passes_them() {
    let kafka = Kafka::start(1, "strict", 1);
    let mut r = kafka.replicator(json!({"processing": {"validation": {"require_json": true}}, "pipeline": {"wait_for_ack": true}}));
    let batch = vec![
        json_record(1, "k", json!({"ok": 1})),
        TestRecord::new(seq_number(2), "k", b"not json"),
        json_record(3, "k", json!({"ok": 3})),
    ];
    assert!(r.try_process_records(&batch, Some(0)).is_err());
    let status = r.wait_exit(EXIT);
    assert_eq!(status.code(), Some(1), "{}", r.dump());
    r.assert_last_checkpoint(&batch[0].ext_seq());
    r.assert_stderr_contains("invalid record: the payload is not JSON");
}

#[test]
fn invalid_records_go_to_the_dead_letter_topic_with_headers_naming_the_error() {
    let kafka = Kafka::start(1, "main", 1);
    kafka.cluster.create_topic("main-dlq", 1, 1).unwrap();
    let mut r = kafka.replicator(
        json!({"processing": {"validation": {"require_json": true, "on_invalid": "dead_letter"}},
               "dead_letter": {"topic": "main-dlq"}, "pipeline": {"wait_for_ack": true}}),
    );
    let batch = vec![
        TestRecord::new(seq_number(1), "k", b"broken{"),
        json_record(2, "k", json!({"ok": 2})),
    ];
    r.process_records(&batch, Some(0));
    r.assert_last_checkpoint(&batch[1].ext_seq());
    r.ends_at_shard_end();
    let dead = read_topic(&kafka.bootstrap(), "main-dlq", 1, READ);
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.value.as_deref(), Some(&b"broken{"[..]));
    assert!(d.header("dlq.error").unwrap().contains("not JSON"), "{d:?}");
    assert_eq!(d.header("dlq.source.topic").as_deref(), Some("main"));
    assert_eq!(d.header("kinesis.shardId").as_deref(), Some(SHARD));
    assert_eq!(d.header("kinesis.sequenceNumber"), Some(seq_number(1)));
    assert_eq!(d.header("kinesis.subSequenceNumber").as_deref(), Some("0"));
    assert_delivered(&kafka.read(1, READ), SHARD, &batch[1..]);
}

#[test]
fn a_record_kafka_refuses_goes_to_the_dead_letter_topic_through_a_broker_outage() {
    let kafka = Kafka::start(1, "target", 1);
    kafka.cluster.create_topic("target-dlq", 1, 1).unwrap();
    let mut r = kafka
        .replicator(json!({"dead_letter": {"topic": "target-dlq"}, "records": {"headers": false}}));
    r.process_records(&records(0, 5), Some(0));
    drive_until_checkpointed(&mut r, &records(4, 1)[0].ext_seq(), Duration::from_secs(20));
    // The broker is away for a while, then refuses the record for good: the record must
    // wait for it, go to the dead-letter topic, and only then count as done.
    kafka.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    kafka.cluster.broker_down(1).unwrap();
    let batch = records(5, 1);
    let refused = batch[0].clone();
    // Pipelined: the batch is answered once queued; later batches checkpoint what is done.
    r.process_records(&batch, Some(0));
    thread::sleep(Duration::from_secs(3));
    r.process_records(&[], Some(0));
    assert_ne!(
        r.last_checkpoint(),
        Some(refused.ext_seq()),
        "checkpointed during the outage\n{}",
        r.dump()
    );
    kafka.cluster.broker_up(1).unwrap();
    // The dead letter must be acknowledged for the checkpoint to reach the record.
    drive_until_checkpointed(&mut r, &refused.ext_seq(), Duration::from_secs(45));
    r.ends_at_shard_end();
    let dead = read_topic(&kafka.bootstrap(), "target-dlq", 1, READ);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value, refused.data);
    assert!(
        dead[0]
            .header("dlq.error")
            .unwrap()
            .contains("Broker: Message size too large"),
        "{:?}",
        dead[0]
    );
    assert_eq!(
        dead[0].header("dlq.source.topic").as_deref(),
        Some("target")
    );
    assert_eq!(
        dead[0].header("kinesis.sequenceNumber"),
        Some(refused.sequence_number.clone())
    );
    assert_eq!(kafka.read(5, READ).len(), 5);
}

#[test]
fn when_the_dead_letter_topic_refuses_too_no_checkpoint_passes_the_record() {
    let kafka = Kafka::start(1, "big", 1);
    kafka.cluster.create_topic("big-dlq", 1, 1).unwrap();
    // Over the producer's limit: both the target and the dead-letter topic refuse it.
    let mut r = kafka.replicator(
        json!({"dead_letter": {"topic": "big-dlq"}, "pipeline": {"wait_for_ack": true},
               "kafka": {"properties": {"message.max.bytes": "10000"}}}),
    );
    let mut batch = records(0, 3);
    batch[1].data = Some(vec![b'x'; 50_000]);
    assert!(r.try_process_records(&batch, Some(0)).is_err());
    assert_eq!(r.wait_exit(EXIT).code(), Some(1), "{}", r.dump());
    r.assert_last_checkpoint(&batch[0].ext_seq());
    r.assert_stderr_contains("the dead-letter topic big-dlq refused it too");
}

#[test]
fn json_envelope_carries_the_kinesis_metadata_in_the_value() {
    let kafka = Kafka::start(1, "wrapped", 1);
    let mut r = kafka
        .replicator(json!({"processing": {"envelope": "json"}, "records": {"headers": false}}));
    let batch = vec![
        json_record(1, "k", json!({"a": 1})),
        TestRecord::new(seq_number(2), "k", &[0xff]),
    ];
    r.process_records(&batch, Some(0));
    r.ends_at_shard_end();
    let messages = kafka.read(2, READ);
    assert!(messages.iter().all(|m| m.headers.is_empty()));
    let values: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| serde_json::from_slice(m.value.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(values[0]["data"], json!({"a": 1}));
    assert_eq!(values[0]["shardId"], SHARD);
    assert_eq!(values[0]["sequenceNumber"], seq_number(1));
    assert_eq!(values[1]["dataBase64"], "/w==");
}

#[test]
fn gzip_payloads_are_decoded_when_detected() {
    let kafka = Kafka::start(1, "gz", 1);
    let mut r = kafka.replicator(json!({"processing": {"decompress": "auto"}}));
    let batch = vec![
        TestRecord::new(seq_number(1), "k", &gzip(b"zipped")),
        TestRecord::new(seq_number(2), "k", b"plain"),
    ];
    r.process_records(&batch, Some(0));
    r.ends_at_shard_end();
    let values: Vec<Vec<u8>> = kafka
        .read(2, READ)
        .into_iter()
        .filter_map(|m| m.value)
        .collect();
    assert_eq!(values, vec![b"zipped".to_vec(), b"plain".to_vec()]);
}
