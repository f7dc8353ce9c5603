//! Proves the test double itself: the checkpoint rule engine, the Jackson-like line parser, the
//! exact lines it writes, and whole conversations with a small scripted Python child.

mod support;

use std::cmp::Ordering;
use std::process::Command;
use std::time::Duration;

use kinesis_kafka_replicator::protocol::STREAMED_BATCH_PREFIX;
use serde_json::Value;
use support::daemon::*;
use support::kafka::{murmur2, murmur2_partition};

fn esn(seq: &str, sub: i64) -> ExtSeq {
    ExtSeq::new(seq, sub)
}

// ---------------------------------------------------------------------------------------------
// ExtendedSequenceNumber ordering
// ---------------------------------------------------------------------------------------------

#[test]
fn sequence_numbers_compare_numerically_not_lexicographically() {
    assert_eq!(esn("9", 0).compare(&esn("10", 0)), Ok(Ordering::Less));
    assert_eq!(esn("010", 0).compare(&esn("10", 0)), Ok(Ordering::Equal));
    assert_eq!(esn("10", 1).compare(&esn("10", 0)), Ok(Ordering::Greater));
    let a = seq_number(5);
    let b = seq_number(6);
    assert_eq!(a.len(), 56);
    assert_eq!(esn(&a, 9).compare(&esn(&b, 0)), Ok(Ordering::Less));
    // 57 digits beat 56 digits whatever the leading digit.
    let long = format!("1{}", "0".repeat(56));
    assert_eq!(esn(&a, 0).compare(&esn(&long, 0)), Ok(Ordering::Less));
}

#[test]
fn sentinels_sort_below_sequence_numbers_and_shard_end_above_everything() {
    let order = [
        esn(AT_TIMESTAMP, 0),
        esn(TRIM_HORIZON, 0),
        esn(LATEST, 0),
        esn("0", 0),
        esn(&seq_number(0), 0),
        esn(SHARD_END, 0),
    ];
    for w in order.windows(2) {
        assert_eq!(
            w[0].compare(&w[1]),
            Ok(Ordering::Less),
            "{} < {}",
            w[0],
            w[1]
        );
    }
    assert_eq!(
        esn(SHARD_END, 0).compare(&esn(SHARD_END, 5)),
        Ok(Ordering::Equal)
    );
}

#[test]
fn non_numeric_sequence_numbers_do_not_compare() {
    assert!(esn("12a", 0).compare(&esn("1", 0)).is_err());
    assert!(esn("", 0).compare(&esn("1", 0)).is_err());
    assert!(esn("1", 0).compare(&esn("-1", 0)).is_err());
    assert!(esn("1", 0).compare(&esn("shard_end", 0)).is_err());
}

// ---------------------------------------------------------------------------------------------
// Checkpoint rules
// ---------------------------------------------------------------------------------------------

fn delivered(n: usize) -> (LeaseCheckpointer, Vec<TestRecord>) {
    let mut lease = LeaseCheckpointer::new(esn(TRIM_HORIZON, 0));
    let recs = records(0, n);
    let (kept, dropped) = lease.deliver(&recs);
    assert_eq!(kept.len(), n);
    assert!(dropped.is_empty());
    (lease, recs)
}

fn stored(e: &ExtSeq) -> CheckpointOutcome {
    CheckpointOutcome::Stored(e.clone())
}

fn failed(name: &str) -> CheckpointOutcome {
    CheckpointOutcome::Failed(name.to_string())
}

#[test]
fn checkpoint_must_lie_between_last_checkpoint_and_largest_delivered() {
    let (mut lease, recs) = delivered(3);
    let live = Checkpointer::Live;
    let r = |i: usize| recs[i].ext_seq();
    assert_eq!(lease.largest_permitted, r(2));
    assert_eq!(
        lease.checkpoint(live, Some(&r(1).seq), Some(0)),
        stored(&r(1))
    );
    // Below the last checkpoint.
    assert_eq!(
        lease.checkpoint(live, Some(&r(0).seq), Some(0)),
        failed(ILLEGAL_ARGUMENT)
    );
    // Equal to it: a successful no-op.
    assert_eq!(
        lease.checkpoint(live, Some(&r(1).seq), Some(0)),
        CheckpointOutcome::NoOp
    );
    // Not delivered yet.
    let next = seq_number(3);
    assert_eq!(
        lease.checkpoint(live, Some(&next), Some(0)),
        failed(ILLEGAL_ARGUMENT)
    );
    assert_eq!(
        lease.checkpoint(live, Some(&r(2).seq), Some(1)),
        failed(ILLEGAL_ARGUMENT)
    );
    // Malformed.
    assert_eq!(
        lease.checkpoint(live, Some("abc"), Some(0)),
        failed(ILLEGAL_ARGUMENT)
    );
    assert_eq!(
        lease.checkpoint(live, Some(&r(2).seq), Some(-1)),
        failed(ILLEGAL_ARGUMENT)
    );
    // A missing sub-sequence number means 0.
    assert_eq!(lease.checkpoint(live, Some(&r(2).seq), None), stored(&r(2)));
    assert_eq!(lease.last, r(2));
    // Nothing above changed the stored value except the two successes.
    assert_eq!(lease.checkpoint(live, None, None), CheckpointOutcome::NoOp);
}

#[test]
fn null_sequence_number_checkpoints_the_largest_delivered_position() {
    let (mut lease, recs) = delivered(4);
    assert_eq!(
        lease.checkpoint(Checkpointer::Live, None, Some(99)),
        stored(&recs[3].ext_seq())
    );
}

#[test]
fn initialize_and_lease_lost_have_no_checkpointer() {
    let (mut lease, recs) = delivered(2);
    lease.injected.push_back(THROTTLING.to_string());
    assert_eq!(
        lease.checkpoint(
            Checkpointer::Absent,
            Some(&recs[0].sequence_number),
            Some(0)
        ),
        failed(INVALID_STATE)
    );
    assert_eq!(
        lease.checkpoint(Checkpointer::Absent, None, None),
        failed(INVALID_STATE)
    );
    // The injected error was not consumed: no lease-table write happened.
    assert_eq!(lease.injected.len(), 1);
}

#[test]
fn injected_errors_are_consumed_one_per_write_and_store_nothing() {
    let (mut lease, recs) = delivered(2);
    lease
        .injected
        .extend([THROTTLING, DEPENDENCY, THROTTLING].map(String::from));
    let target = recs[1].ext_seq();
    for expected in [THROTTLING, DEPENDENCY, THROTTLING] {
        assert_eq!(
            lease.checkpoint(Checkpointer::Live, Some(&target.seq), Some(0)),
            failed(expected)
        );
        assert_eq!(lease.last, esn(TRIM_HORIZON, 0));
    }
    assert_eq!(
        lease.checkpoint(Checkpointer::Live, Some(&target.seq), Some(0)),
        stored(&target)
    );
}

#[test]
fn range_errors_take_precedence_over_injected_errors() {
    let (mut lease, _) = delivered(2);
    lease.injected.push_back(THROTTLING.to_string());
    assert_eq!(
        lease.checkpoint(Checkpointer::Live, Some(&seq_number(10)), Some(0)),
        failed(ILLEGAL_ARGUMENT)
    );
    assert_eq!(lease.injected.len(), 1);
}

#[test]
fn shutdown_exception_forever_fails_every_write() {
    let (mut lease, recs) = delivered(3);
    lease.shutdown_forever = true;
    for r in &recs {
        assert_eq!(
            lease.checkpoint(Checkpointer::Live, Some(&r.sequence_number), Some(0)),
            failed(SHUTDOWN)
        );
    }
    assert_eq!(
        lease.checkpoint(Checkpointer::Live, None, None),
        failed(SHUTDOWN)
    );
}

#[test]
fn zombie_checkpointer_fails_writes_with_shutdown_exception() {
    let (mut lease, _) = delivered(3);
    assert_eq!(
        lease.checkpoint(Checkpointer::Zombie, None, None),
        failed(SHUTDOWN)
    );
    assert_eq!(
        lease.checkpoint(Checkpointer::Zombie, Some(&seq_number(9)), Some(0)),
        failed(ILLEGAL_ARGUMENT)
    );
    // Equal to the last checkpoint: no write, so no failure.
    assert_eq!(
        lease.checkpoint(Checkpointer::Zombie, Some(TRIM_HORIZON), Some(0)),
        CheckpointOutcome::NoOp
    );
}

#[test]
fn shard_end_permits_shard_end_and_converts_the_last_delivered_position() {
    let (mut lease, recs) = delivered(3);
    lease.begin_shard_end();
    assert_eq!(lease.largest_permitted, ExtSeq::shard_end());
    assert_eq!(
        lease.checkpoint(Checkpointer::Live, None, None),
        stored(&ExtSeq::shard_end())
    );
    assert_eq!(
        lease.checkpoint(Checkpointer::Live, None, None),
        CheckpointOutcome::NoOp
    );

    let (mut lease, _) = delivered(3);
    lease.begin_shard_end();
    assert_eq!(
        lease.checkpoint(Checkpointer::Live, Some(&recs[2].sequence_number), Some(0)),
        stored(&ExtSeq::shard_end())
    );

    // An earlier position is stored as it is.
    let (mut lease, _) = delivered(3);
    lease.begin_shard_end();
    assert_eq!(
        lease.checkpoint(Checkpointer::Live, Some(&recs[1].sequence_number), Some(0)),
        stored(&recs[1].ext_seq())
    );
}

#[test]
fn shard_end_with_no_records_delivered_checkpoints_shard_end() {
    let mut lease = LeaseCheckpointer::new(esn(&seq_number(7), 0));
    lease.begin_shard_end();
    assert_eq!(
        lease.checkpoint(Checkpointer::Live, None, None),
        stored(&ExtSeq::shard_end())
    );
}

#[test]
fn records_at_or_below_the_checkpoint_are_not_delivered() {
    let mut lease = LeaseCheckpointer::new(esn(&seq_number(5), 0));
    let (kept, dropped) = lease.deliver(&records(3, 5));
    assert_eq!(dropped.len(), 3);
    assert_eq!(
        kept.first().map(|r| r.sequence_number.clone()),
        Some(seq_number(6))
    );
    assert_eq!(lease.largest_permitted, TestRecord::generated(7).ext_seq());
}

// ---------------------------------------------------------------------------------------------
// Parsing child lines the way Jackson does
// ---------------------------------------------------------------------------------------------

#[test]
fn child_lines_parse_like_jackson() {
    use ChildLine::*;
    let status = |r: &str| Status {
        response_for: Some(r.to_string()),
    };
    assert_eq!(parse_child_line(""), Empty);
    assert_eq!(
        parse_child_line(r#"{"action":"status","responseFor":"initialize"}"#),
        status("initialize")
    );
    assert_eq!(
        parse_child_line(r#"  {"responseFor":"x","action":"status"}  trailing"#),
        status("x")
    );
    assert_eq!(
        parse_child_line(r#"{"action":"status"}"#),
        Status { response_for: None }
    );
    assert_eq!(
        parse_child_line(r#"{"action":"checkpoint","sequenceNumber":"12","subSequenceNumber":3}"#),
        Checkpoint {
            sequence_number: Some("12".into()),
            sub_sequence_number: Some(3)
        }
    );
    assert_eq!(
        parse_child_line(r#"{"action":"checkpoint","sequenceNumber":null,"error":null}"#),
        Checkpoint {
            sequence_number: None,
            sub_sequence_number: None
        }
    );
    assert_eq!(
        parse_child_line(r#"{"action":"checkpoint","sequenceNumber":12,"subSequenceNumber":"4"}"#),
        Checkpoint {
            sequence_number: Some("12".into()),
            sub_sequence_number: Some(4)
        }
    );
    assert_eq!(
        parse_child_line(r#"{"action":"initialize"}"#),
        Other("initialize".into())
    );
    for skipped in [
        " ",
        "hello",
        "[1,2]",
        r#"{"responseFor":"initialize"}"#,
        r#"{"action":"Status","responseFor":"initialize"}"#,
        r#"{"action":"status","responseFor":"initialize","extra":1}"#,
        r#"{"action":"checkpoint","sequenceNumber":"1","subSequenceNumber":"x"}"#,
        r#"{"action":"checkpoint","sequenceNumber":{},"subSequenceNumber":0}"#,
        r#"{"action":"leaseLost","x":null}"#,
        r#"{"action":"status","responseFor":"initial"#,
    ] {
        assert!(
            matches!(parse_child_line(skipped), Unparseable(_)),
            "{skipped:?} must be skipped, got {:?}",
            parse_child_line(skipped)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The lines the double writes
// ---------------------------------------------------------------------------------------------

#[test]
fn messages_are_written_as_jackson_writes_them() {
    assert_eq!(
        initialize_line("shardId-000000000000", Some(TRIM_HORIZON), Some(0)),
        r#"{"action":"initialize","shardId":"shardId-000000000000","sequenceNumber":"TRIM_HORIZON","subSequenceNumber":0}"#
    );
    let recs = vec![
        TestRecord {
            data: Some(b"hello".to_vec()),
            partition_key: Some("pk-1".into()),
            sequence_number: "49590338271490256608559692538361571095921575989136588898".into(),
            sub_sequence_number: Some(0),
            arrival_ms: Some(1_700_000_000_123),
        },
        TestRecord {
            data: Some(Vec::new()),
            partition_key: Some("pk2".into()),
            sequence_number: "49590338271490256608559692538361571095921575989136588899".into(),
            sub_sequence_number: Some(2),
            arrival_ms: None,
        },
        TestRecord {
            data: None,
            partition_key: Some("ключ-🔑\"\\".into()),
            sequence_number: "5".into(),
            sub_sequence_number: Some(0),
            arrival_ms: Some(1),
        },
    ];
    assert_eq!(
        process_records_line(&recs, Some(42)),
        concat!(
            r#"{"action":"processRecords","records":["#,
            r#"{"data":"aGVsbG8=","partitionKey":"pk-1","sequenceNumber":"49590338271490256608559692538361571095921575989136588898","approximateArrivalTimestamp":1700000000123,"subSequenceNumber":0,"action":"record"},"#,
            r#"{"data":"","partitionKey":"pk2","sequenceNumber":"49590338271490256608559692538361571095921575989136588899","approximateArrivalTimestamp":null,"subSequenceNumber":2,"action":"record"},"#,
            r#"{"data":null,"partitionKey":"ключ-🔑\"\\","sequenceNumber":"5","approximateArrivalTimestamp":1,"subSequenceNumber":0,"action":"record"}"#,
            r#"],"millisBehindLatest":42}"#
        )
    );
    assert_eq!(
        process_records_line(&[], None),
        r#"{"action":"processRecords","records":[],"millisBehindLatest":null}"#
    );
    assert_eq!(
        checkpoint_reply_line(Some("99"), None, Some(ILLEGAL_ARGUMENT)),
        r#"{"action":"checkpoint","sequenceNumber":"99","subSequenceNumber":null,"error":"IllegalArgumentException"}"#
    );
    assert_eq!(
        checkpoint_reply_line(None, None, None),
        r#"{"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null,"error":null}"#
    );
}

/// Records with every field a line can carry, nulls included.
fn odd_records() -> Vec<TestRecord> {
    vec![
        TestRecord::generated(0),
        TestRecord {
            data: Some(Vec::new()),
            partition_key: None,
            sequence_number: seq_number(1),
            sub_sequence_number: Some(2),
            arrival_ms: None,
        },
        TestRecord {
            data: None,
            partition_key: Some("ключ-🔑\"\\".into()),
            sequence_number: seq_number(2),
            sub_sequence_number: None,
            arrival_ms: Some(1),
        },
    ]
}

#[test]
fn other_field_orders_are_the_same_message_without_the_streamed_prefix() {
    let odd = odd_records();
    for recs in [&odd[..], &[][..]] {
        for millis in [Some(42), None] {
            let daemon = process_records_line(recs, millis);
            assert_eq!(
                process_records_line_in(FieldOrder::Daemon, recs, millis),
                daemon
            );
            let expected: Value = serde_json::from_str(&daemon).expect("JSON");
            for order in FieldOrder::ALL {
                let line = process_records_line_in(order, recs, millis);
                let value: Value = serde_json::from_str(&line).expect("JSON");
                // Same fields, same values, the same explicit nulls: only the order differs.
                assert_eq!(value, expected, "{order:?}: {line}");
                assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
                assert_eq!(
                    line.as_bytes().starts_with(STREAMED_BATCH_PREFIX),
                    order.is_streamed(),
                    "{order:?}: {line}"
                );
                if order != FieldOrder::Daemon {
                    assert_ne!(line, daemon, "{order:?}");
                }
            }
        }
    }
    assert_eq!(FieldOrder::default(), FieldOrder::Daemon);
    assert_eq!(
        process_records_line_in(FieldOrder::MillisFirst, &[], None),
        r#"{"action":"processRecords","millisBehindLatest":null,"records":[]}"#
    );
    let record = TestRecord {
        data: Some(b"hello".to_vec()),
        partition_key: Some("pk-1".into()),
        sequence_number: "5".into(),
        sub_sequence_number: Some(0),
        arrival_ms: None,
    };
    assert_eq!(
        process_records_line_in(FieldOrder::Reversed, &[record], Some(7)),
        concat!(
            r#"{"millisBehindLatest":7,"records":["#,
            r#"{"action":"record","subSequenceNumber":0,"approximateArrivalTimestamp":null,"sequenceNumber":"5","partitionKey":"pk-1","data":"aGVsbG8="}"#,
            r#"],"action":"processRecords"}"#
        )
    );
}

#[test]
fn generated_sequence_numbers_are_56_digits_and_increasing() {
    let recs = records(0, 1000);
    for w in recs.windows(2) {
        assert_eq!(w[0].sequence_number.len(), 56);
        assert_eq!(w[0].ext_seq().compare(&w[1].ext_seq()), Ok(Ordering::Less));
    }
}

#[test]
fn murmur2_matches_the_java_client() {
    // Vectors from Kafka's UtilsTest#testMurmur2.
    let cases: &[(&[u8], i32)] = &[
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58897971,
        ),
        (b"abc", 479470107),
    ];
    for (data, expected) in cases {
        assert_eq!(
            murmur2(data) as i32,
            *expected,
            "{}",
            String::from_utf8_lossy(data)
        );
    }
    assert!((0..12).contains(&murmur2_partition(b"pk-1", 12)));
}

// ---------------------------------------------------------------------------------------------
// Whole conversations with a scripted child
// ---------------------------------------------------------------------------------------------

/// A small, correct MultiLang child. It echoes every line it receives to stderr ("GOT ...") and
/// every checkpoint reply ("REPLY ..."). `MODE` changes one behaviour for a test.
const CHILD: &str = r#"
import json, sys
mode = sys.argv[1]
def out(s):
    sys.stdout.write(s)
    sys.stdout.flush()
def send(obj):
    out(json.dumps(obj, separators=(",", ":")) + "\n")
def status(action):
    send({"action": "status", "responseFor": action})
def checkpoint(seq, sub):
    send({"action": "checkpoint", "sequenceNumber": seq, "subSequenceNumber": sub})
    reply = sys.stdin.readline()
    sys.stderr.write("REPLY " + reply)
    sys.stderr.flush()
    return json.loads(reply)
last = None
while True:
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    sys.stderr.write("GOT " + line)
    sys.stderr.flush()
    msg = json.loads(line)
    action = msg["action"]
    if action == "initialize":
        if mode == "checkpoint_at_initialize":
            checkpoint(None, None)
        status("initialize")
    elif action == "processRecords":
        if mode == "exit_in_records":
            sys.exit(3)
        if mode == "noise":
            out("\n")
            out("not json\n")
            out('{"action":"status","responseFor":"processRecords","extra":1}\n')
            out('{"action":"initialize"}\n')
            out("   \n")
        if msg["records"]:
            last = msg["records"][-1]
        if mode == "too_far":
            checkpoint("9" * 60, 0)
        if last is not None:
            if mode == "crlf":
                out('{"action":"checkpoint","sequenceNumber":"%s","subSequenceNumber":%d}\r\n'
                    % (last["sequenceNumber"], last["subSequenceNumber"]))
                sys.stderr.write("REPLY " + sys.stdin.readline())
                out('{"action":"status","responseFor":"processRecords"}\r')
                continue
            checkpoint(last["sequenceNumber"], last["subSequenceNumber"])
        if mode == "mismatch":
            status("initialize")
        else:
            status("processRecords")
    elif action in ("shardEnded", "shutdownRequested", "shutdown"):
        checkpoint(None, None)
        status(action)
    else:
        status(action)
"#;

fn child(mode: &str) -> Daemon {
    let mut command = Command::new("python3");
    command.arg("-c").arg(CHILD).arg(mode);
    Daemon::spawn(command).with_timeout(Duration::from_secs(10))
}

/// The child's stderr lines starting with `prefix`, once there are at least `n` of them
/// (stderr is read by its own thread and may lag behind stdout); at most 5 s.
fn stderr_lines(d: &Daemon, prefix: &str, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<String> = d
            .stderr()
            .lines()
            .filter_map(|l| l.strip_prefix(prefix).map(str::to_string))
            .collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn scripted_child_full_life_to_shard_end() {
    let mut d = child("good");
    let shard = "shardId-000000000001";
    d.initialize(shard, TRIM_HORIZON);
    let batch1 = records(0, 3);
    let batch2 = records(3, 2);
    d.process_records(&batch1, Some(10));
    d.process_records(&batch2, None);
    d.shard_ended();
    let status = d.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{}", d.dump());
    assert_eq!(
        d.checkpoints(),
        vec![
            batch1[2].ext_seq(),
            batch2[1].ext_seq(),
            ExtSeq::shard_end()
        ]
    );
    let got = stderr_lines(&d, "GOT ", 4);
    assert_eq!(got[0], initialize_line(shard, Some(TRIM_HORIZON), Some(0)));
    assert_eq!(got[1], process_records_line(&batch1, Some(10)));
    assert_eq!(got[3], r#"{"action":"shardEnded"}"#);
    let replies = stderr_lines(&d, "REPLY ", 1);
    assert_eq!(
        replies[0],
        checkpoint_reply_line(Some(&batch1[2].sequence_number), Some(0), None)
    );
    assert_eq!(replies[2], checkpoint_reply_line(None, None, None));
}

#[test]
fn scripted_child_gets_process_records_in_the_field_order_it_is_told() {
    for order in FieldOrder::ALL {
        let mut d = child("good").with_field_order(order);
        d.initialize("shardId-000000000001", TRIM_HORIZON);
        let batch = odd_records();
        d.process_records(&batch, Some(3));
        d.process_records(&[], None);
        d.shard_ended();
        assert!(
            d.wait_exit(Duration::from_secs(10)).success(),
            "{}",
            d.dump()
        );
        let got = stderr_lines(&d, "GOT ", 4);
        assert_eq!(got[1], process_records_line_in(order, &batch, Some(3)));
        assert_eq!(got[2], process_records_line_in(order, &[], None));
        assert_eq!(
            d.checkpoints(),
            vec![batch[2].ext_seq(), ExtSeq::shard_end()],
            "{order:?}"
        );
    }
}

#[test]
fn scripted_child_checkpoint_at_initialize_gets_invalid_state() {
    let mut d = child("checkpoint_at_initialize");
    d.initialize("shardId-000000000001", TRIM_HORIZON);
    assert_eq!(
        stderr_lines(&d, "REPLY ", 1),
        vec![checkpoint_reply_line(None, None, Some(INVALID_STATE))]
    );
    assert!(d.checkpoints().is_empty());
    d.lease_lost();
    assert!(d.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn scripted_child_checkpoint_past_delivered_gets_illegal_argument() {
    let mut d = child("too_far");
    d.initialize("shardId-000000000001", TRIM_HORIZON);
    let batch = records(0, 2);
    d.process_records(&batch, Some(0));
    let replies = stderr_lines(&d, "REPLY ", 1);
    assert_eq!(
        replies[0],
        checkpoint_reply_line(Some(&"9".repeat(60)), Some(0), Some(ILLEGAL_ARGUMENT))
    );
    assert_eq!(d.checkpoints(), vec![batch[1].ext_seq()]);
}

#[test]
fn scripted_child_noise_lines_are_skipped_and_recorded() {
    let mut d = child("noise");
    d.initialize("shardId-000000000001", TRIM_HORIZON);
    d.process_records(&records(0, 1), Some(0));
    let skipped: Vec<String> = d.skipped_lines().into_iter().map(|(l, _)| l).collect();
    assert_eq!(
        skipped,
        vec![
            "".to_string(),
            "not json".to_string(),
            r#"{"action":"status","responseFor":"processRecords","extra":1}"#.to_string(),
            "   ".to_string(),
        ]
    );
    assert!(d
        .transcript()
        .iter()
        .any(|e| matches!(e, Event::Ignored { action, .. } if action == "initialize")));
}

#[test]
fn scripted_child_crlf_and_cr_terminate_lines() {
    let mut d = child("crlf");
    d.initialize("shardId-000000000001", TRIM_HORIZON);
    let batch = records(0, 1);
    d.process_records(&batch, Some(0));
    assert_eq!(d.checkpoints(), vec![batch[0].ext_seq()]);
}

#[test]
fn scripted_child_status_for_the_wrong_action_fails_the_action() {
    let mut d = child("mismatch");
    d.initialize("shardId-000000000001", TRIM_HORIZON);
    let result = d.try_process_records(&records(0, 1), Some(0));
    assert_eq!(
        result,
        Err(ActionError::StatusMismatch {
            action: "processRecords".into(),
            response_for: Some("initialize".into())
        })
    );
}

#[test]
fn scripted_child_exit_fails_the_action_with_eof() {
    let mut d = child("exit_in_records");
    d.initialize("shardId-000000000001", TRIM_HORIZON);
    let result = d.try_process_records(&records(0, 1), Some(0));
    assert_eq!(
        result,
        Err(ActionError::Eof {
            action: "processRecords".into()
        })
    );
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(3));
}

#[test]
fn scripted_child_injected_errors_are_replied() {
    let mut d = child("good");
    d.initialize("shardId-000000000001", TRIM_HORIZON);
    d.inject_checkpoint_errors(&[THROTTLING]);
    let batch = records(0, 2);
    d.process_records(&batch, Some(0));
    assert_eq!(
        stderr_lines(&d, "REPLY ", 1),
        vec![checkpoint_reply_line(
            Some(&batch[1].sequence_number),
            Some(0),
            Some(THROTTLING)
        )]
    );
    assert!(d.checkpoints().is_empty());
    d.shutdown_exception_forever();
    d.shutdown_requested();
    assert_eq!(
        stderr_lines(&d, "REPLY ", 2)[1],
        checkpoint_reply_line(None, None, Some(SHUTDOWN))
    );
}

#[test]
fn scripted_child_v1_terminate_and_zombie() {
    let mut d = child("good");
    d.initialize("shardId-000000000001", TRIM_HORIZON);
    d.process_records(&records(0, 2), Some(0));
    d.shutdown_v1(ShutdownReason::Terminate);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(d.last_checkpoint(), Some(ExtSeq::shard_end()));
    assert_eq!(
        stderr_lines(&d, "GOT ", 3)[2],
        r#"{"action":"shutdown","reason":"TERMINATE"}"#
    );

    // ZOMBIE: the checkpoint reaches the lease table and fails there, unless it is a no-op.
    let mut d = child("good");
    d.initialize("shardId-000000000001", TRIM_HORIZON);
    d.inject_checkpoint_errors(&[THROTTLING]);
    d.process_records(&records(0, 2), Some(0));
    d.shutdown_v1(ShutdownReason::Zombie);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(
        stderr_lines(&d, "REPLY ", 2)[1],
        checkpoint_reply_line(None, None, Some(SHUTDOWN))
    );
    assert!(d.checkpoints().is_empty());

    let mut d = child("good");
    d.initialize("shardId-000000000001", TRIM_HORIZON);
    d.process_records(&records(0, 2), Some(0));
    d.shutdown_v1(ShutdownReason::Zombie);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(
        stderr_lines(&d, "REPLY ", 2)[1],
        checkpoint_reply_line(None, None, None)
    );
}

#[test]
fn silent_child_times_out_instead_of_hanging() {
    let mut d = Daemon::spawn({
        let mut c = Command::new("sleep");
        c.arg("30");
        c
    })
    .with_timeout(Duration::from_millis(300));
    let result = d.try_initialize("shardId-000000000001", Some(TRIM_HORIZON), Some(0));
    assert!(
        matches!(result, Err(ActionError::Timeout { .. })),
        "{result:?}"
    );
    // Drop kills it.
}

// ---------------------------------------------------------------------------------------------
// An independent child: amazon_kclpy's sample application (opt-in)
// ---------------------------------------------------------------------------------------------

/// `KCLPY_DIR` = an unpacked amazon_kclpy sdist (e.g. `pip download amazon_kclpy==3.2.0
/// --no-deps --no-binary :all:`; its setup.py cannot install here, it downloads jars).
/// `.ci/run` sets it up. Without it the test fails in CI (`CI` set) and says loudly that it
/// skipped elsewhere.
fn kclpy_sample() -> Option<Daemon> {
    let Some(dir) = std::env::var_os("KCLPY_DIR") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "KCLPY_DIR is not set: in CI this test must run; .ci/run downloads amazon_kclpy and sets it"
        );
        eprintln!("SKIPPED: KCLPY_DIR not set (see .ci/run for how to set it up)");
        return None;
    };
    let dir = std::path::PathBuf::from(dir);
    let mut command = Command::new("python3");
    command
        .arg(dir.join("samples/sample_kclpy_app.py"))
        .env("PYTHONPATH", &dir);
    Some(Daemon::spawn(command).with_timeout(Duration::from_secs(10)))
}

#[test]
fn kclpy_sample_app_lives_to_shard_end_under_the_double() {
    let Some(mut d) = kclpy_sample() else {
        return;
    };
    d.initialize("shardId-000000000003", TRIM_HORIZON);
    // (kclpy itself cannot take a null approximateArrivalTimestamp: int(None).)
    let batch = records(0, 5);
    d.process_records(&batch, None);
    // The sample checkpoints its largest record on the first batch.
    assert_eq!(d.lease_checkpoint(), batch[4].ext_seq(), "{}", d.dump());
    d.process_records(&records(5, 3), Some(7));
    d.process_records(&[], Some(0));
    d.shard_ended();
    assert!(
        d.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        d.dump()
    );
    assert_eq!(
        d.last_checkpoint(),
        Some(ExtSeq::shard_end()),
        "{}",
        d.dump()
    );
    // kclpy frames each line as "\n" + json + "\n": the empty lines are skipped, nothing else.
    assert!(
        d.skipped_lines().iter().all(|(line, _)| line.is_empty()),
        "{}",
        d.dump()
    );
}

#[test]
fn kclpy_sample_app_shutdown_requested_then_lease_lost_under_the_double() {
    let Some(mut d) = kclpy_sample() else {
        return;
    };
    d.initialize("shardId-000000000003", &seq_number(1));
    let batch = records(2, 4);
    d.inject_checkpoint_errors(&[SHUTDOWN]);
    d.process_records(&batch, Some(0));
    assert!(d.checkpoints().is_empty());
    d.shutdown_requested();
    assert_eq!(d.lease_checkpoint(), batch[3].ext_seq(), "{}", d.dump());
    d.lease_lost();
    assert!(
        d.wait_exit(Duration::from_secs(10)).success(),
        "{}",
        d.dump()
    );
}
