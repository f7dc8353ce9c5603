//! The MultiLang conversation itself: exact status lines, a clean stdout, odd or broken input
//! from the daemon, and how stdin EOF ends the process.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::config::{base_config, config_with};
use support::daemon::*;
use support::kafka::*;
use support::*;

const EXIT: Duration = Duration::from_secs(20);
const READ: Duration = Duration::from_secs(20);

fn status_line(action: &str) -> String {
    format!(r#"{{"action":"status","responseFor":"{action}"}}"#)
}

/// Every stdout line is a status or a checkpoint request; statuses are byte-exact.
fn assert_protocol_only(r: &Running) {
    for line in r.stdout_lines() {
        match parse_child_line(&line) {
            ChildLine::Status {
                response_for: Some(action),
            } => assert_eq!(line, status_line(&action), "{}", r.dump()),
            ChildLine::Checkpoint { .. } => {}
            other => panic!(
                "not a protocol line on stdout: {line:?} ({other:?})\n{}",
                r.dump()
            ),
        }
    }
    assert!(r.skipped_lines().is_empty(), "{}", r.dump());
}

#[test]
fn status_lines_are_byte_exact_for_every_action() {
    let kafka = Kafka::start(1, "status", 1);
    let mut r = start_initialized(&base_config(&kafka.bootstrap(), "status"));
    r.process_records(&records(0, 5), Some(0));
    r.shutdown_requested();
    r.lease_lost();
    assert_eq!(r.wait_exit(EXIT).code(), Some(0), "{}", r.dump());
    let statuses: Vec<String> = r
        .stdout_lines()
        .into_iter()
        .filter(|l| matches!(parse_child_line(l), ChildLine::Status { .. }))
        .collect();
    assert_eq!(
        statuses,
        [
            "initialize",
            "processRecords",
            "shutdownRequested",
            "leaseLost"
        ]
        .map(status_line)
        .to_vec(),
        "{}",
        r.dump()
    );
    assert_protocol_only(&r);

    let mut r = start_initialized(&base_config(&kafka.bootstrap(), "status"));
    r.shard_ended();
    assert!(r.wait_exit(EXIT).success(), "{}", r.dump());
    assert!(r.stdout_lines().contains(&status_line("shardEnded")));
    assert_protocol_only(&r);
}

#[test]
fn stdout_carries_only_protocol_lines_even_with_verbose_logging() {
    let kafka = Kafka::start(3, "clean-stdout", 3);
    let mut r = start_initialized(&config_with(
        &kafka.bootstrap(),
        "clean-stdout",
        json!({
            "kafka": {"properties": {"debug": "broker,topic,msg,protocol"}},
            "log": {"summary_interval_seconds": 0.2}
        }),
    ));
    let all = records(0, 2000);
    for batch in all.chunks(500) {
        r.process_records(batch, Some(0));
    }
    std::thread::sleep(Duration::from_millis(500));
    r.process_records(&[], Some(0));
    r.shard_ended();
    assert!(r.wait_exit(EXIT).success(), "{}", r.dump());
    assert_protocol_only(&r);
    assert!(!r.stderr().is_empty(), "logs go to stderr");
}

#[test]
fn log_lines_name_the_shard_once_it_is_known() {
    let kafka = Kafka::start(1, "log-shard", 1);
    let mut r = start_initialized(&base_config(&kafka.bootstrap(), "log-shard"));
    r.process_records(&records(0, 10), Some(0));
    r.shard_ended();
    assert!(r.wait_exit(EXIT).success(), "{}", r.dump());
    let stderr = r.stderr();
    let tag = format!("[{SHARD}]");
    let lines: Vec<&str> = stderr.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.contains(&tag))
        .expect("some log line names the shard");
    for line in &lines[first..] {
        assert_eq!(line.matches(&tag).count(), 1, "{line:?}\n{stderr}");
    }
}

#[test]
fn unknown_action_gets_a_warning_and_a_status() {
    let kafka = Kafka::start(1, "unknown-action", 1);
    let mut r = start_initialized(&base_config(&kafka.bootstrap(), "unknown-action"));
    let result = r.try_raw_action(
        r#"{"action":"prepareCheckpoint","sequenceNumber":"1"}"#,
        "prepareCheckpoint",
        Checkpointer::Live,
    );
    r.ok(result);
    assert!(r.stdout_lines().contains(&status_line("prepareCheckpoint")));
    // And the conversation goes on.
    let all = records(0, 5);
    r.process_records(&all, Some(0));
    r.shard_ended();
    assert!(r.wait_exit(EXIT).success(), "{}", r.dump());
    assert_delivered(&kafka.read(all.len(), READ), SHARD, &all);
    // After the exit, when stderr is complete.
    assert!(
        r.stderr()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("prepareCheckpoint")),
        "{}",
        r.dump()
    );
}

#[test]
fn malformed_line_from_the_daemon_exits_1_with_one_error_line_and_no_checkpoint_past_unacked() {
    let kafka = Kafka::start(1, "malformed", 2);
    let mut r = start_initialized(&base_config(&kafka.bootstrap(), "malformed"));
    let all = records(0, 200);
    r.process_records(&all, Some(0));
    r.send_raw(r#"{"action":"processRecords","records":[{"data":"#)
        .expect("write");
    let status = r.wait_exit(EXIT);
    assert_eq!(status.code(), Some(1), "{}", r.dump());
    let errors: Vec<String> = r
        .stderr()
        .lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::to_string)
        .collect();
    assert_eq!(errors.len(), 1, "exactly one ERROR line\n{}", r.dump());
    let messages = kafka.read(0, Duration::from_secs(5));
    assert_checkpoints_covered(&r.checkpoints(), &all, &messages);
}

#[test]
fn invalid_base64_data_is_a_protocol_violation() {
    let kafka = Kafka::start(1, "bad-base64", 1);
    let mut r = start_initialized(&base_config(&kafka.bootstrap(), "bad-base64"));
    let line = format!(
        r#"{{"action":"processRecords","records":[{{"data":"***not base64***","partitionKey":"k","sequenceNumber":"{}","approximateArrivalTimestamp":1,"subSequenceNumber":0,"action":"record"}}],"millisBehindLatest":0}}"#,
        seq_number(0)
    );
    let result = r.try_raw_action(&line, "processRecords", Checkpointer::Live);
    assert!(
        matches!(result, Err(ActionError::Eof { .. })),
        "{result:?}\n{}",
        r.dump()
    );
    assert_eq!(r.wait_exit(EXIT).code(), Some(1), "{}", r.dump());
    assert!(r.checkpoints().is_empty());
}

#[test]
fn stdin_closed_in_the_middle_of_a_line_exits_1() {
    let kafka = Kafka::start(1, "eof-mid-line", 1);
    let mut r = start_initialized(&base_config(&kafka.bootstrap(), "eof-mid-line"));
    let line = process_records_line(&records(0, 20), Some(0));
    r.send_bytes(&line.as_bytes()[..line.len() / 2])
        .expect("write");
    r.close_stdin();
    let status = r.wait_exit(EXIT);
    assert_eq!(status.code(), Some(1), "{}", r.dump());
    assert!(r.checkpoints().is_empty());
}

#[test]
fn stdin_closed_between_messages_flushes_and_exits_0_promptly() {
    let kafka = Kafka::start(1, "eof-between", 2);
    let mut r = start_initialized(&base_config(&kafka.bootstrap(), "eof-between"));
    let all = records(0, 500);
    r.process_records(&all, Some(0));
    r.close_stdin();
    let started = Instant::now();
    let status = r.wait_exit(EXIT);
    assert_eq!(status.code(), Some(0), "{}", r.dump());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // Nothing answered after EOF; the records were flushed to Kafka.
    assert_delivered(&kafka.read(all.len(), READ), SHARD, &all);
}

#[test]
fn stdin_closed_before_initialize_exits_0() {
    let kafka = Kafka::start(1, "eof-first", 1);
    let mut r = start(&base_config(&kafka.bootstrap(), "eof-first"));
    r.close_stdin();
    assert_eq!(r.wait_exit(EXIT).code(), Some(0), "{}", r.dump());
    assert!(r.stdout_lines().is_empty(), "{}", r.dump());
}

#[test]
fn initialize_with_a_sentinel_and_a_null_sub_sequence_number_is_accepted() {
    let kafka = Kafka::start(1, "latest", 1);
    let mut r = start(&base_config(&kafka.bootstrap(), "latest"));
    let result = r.try_initialize(SHARD, Some(LATEST), None);
    r.ok(result);
    let all = records(0, 10);
    r.process_records(&all, None);
    r.shard_ended();
    assert!(r.wait_exit(EXIT).success(), "{}", r.dump());
    assert_eq!(r.last_checkpoint(), Some(ExtSeq::shard_end()));
}

#[test]
fn exit_on_eof_after_shutdown_requested_and_lease_lost_is_prompt() {
    let kafka = Kafka::start(1, "prompt", 1);
    let mut r = start_initialized(&base_config(&kafka.bootstrap(), "prompt"));
    r.process_records(&records(0, 50), Some(0));
    r.shutdown_requested();
    r.lease_lost();
    let started = Instant::now();
    assert_eq!(r.wait_exit(EXIT).code(), Some(0), "{}", r.dump());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// KCL 3.x sends shutdownRequested during normal operation (graceful lease handoff): it means
/// "checkpoint now", not "exit".
#[test]
fn shutdown_requested_means_checkpoint_now_and_processing_can_go_on() {
    let kafka = Kafka::start(1, "handoff", 1);
    let mut r = start_initialized(&base_config(&kafka.bootstrap(), "handoff"));
    let first = records(0, 20);
    r.process_records(&first, Some(0));
    r.shutdown_requested();
    assert_eq!(r.lease_checkpoint(), first[19].ext_seq(), "{}", r.dump());
    assert!(r.is_running());
    let second = records(20, 20);
    r.process_records(&second, Some(0));
    r.shutdown_requested();
    assert_eq!(r.lease_checkpoint(), second[19].ext_seq(), "{}", r.dump());
    r.shard_ended();
    assert!(r.wait_exit(EXIT).success(), "{}", r.dump());
    assert_eq!(r.last_checkpoint(), Some(ExtSeq::shard_end()));
}
