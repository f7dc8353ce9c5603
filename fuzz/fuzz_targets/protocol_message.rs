//! Whatever the daemon sends, the processor neither panics nor writes a broken line.
//!
//! The input is arbitrary bytes: the daemon's side of the conversation. Checked:
//! - the whole input and each of its lines through the general parser (`parse_message`)
//!   never panic, and an error prints;
//! - a whole `Session::run` over the input, read in reads of varied sizes (so a batch line
//!   is sometimes streamed, sometimes read whole), with a handler that answers every action
//!   and requests checkpoints (whose replies it reads from the same input), and fails a
//!   record now and then, ends without a panic, and every line it writes is a status or a
//!   checkpoint request that is valid JSON with exactly the protocol's fields.
#![no_main]

use std::io::Read;
use std::io::Write;

use kinesis_kafka_replicator::checkpoint::Position;
use kinesis_kafka_replicator::protocol::{parse_message, DaemonMessage, Record};
use kinesis_kafka_replicator::session::{Channel, Fatal, Handler, Session};
use kinesis_kafka_replicator_fuzz::Chunks;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Answers like the replicator: a status for each action, a checkpoint request at the end
/// of each batch (at its last record) and when the shard ends or shutdown is requested; a
/// record whose partition key is `fail` fails as a record Kafka refuses for good.
#[derive(Default)]
struct Answering {
    last: Option<Position>,
    in_batch: bool,
}

impl Handler for Answering {
    fn handle<R: Read, W: Write>(
        &mut self,
        message: DaemonMessage<'_>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        assert!(!self.in_batch);
        let action = message.action().to_owned();
        match message {
            DaemonMessage::ProcessRecords { .. }
            | DaemonMessage::Checkpoint(_)
            | DaemonMessage::Unknown { .. } => {
                panic!("the session handles {action:?} itself")
            }
            DaemonMessage::ShutdownRequested | DaemonMessage::ShardEnded => {
                channel.checkpoint(None)?;
            }
            DaemonMessage::Shutdown { reason } if reason.as_deref() == Some("TERMINATE") => {
                channel.checkpoint(None)?;
            }
            _ => {}
        }
        channel.status(&action)
    }

    fn begin_batch(&mut self, _streamed: bool) {
        assert!(!self.in_batch);
        self.in_batch = true;
        self.last = None;
    }

    fn record<R: Read, W: Write>(
        &mut self,
        record: &Record<'_>,
        _channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        assert!(self.in_batch);
        if record.partition_key.as_deref() == Some("fail") {
            // As a record Kafka refuses for good: the session reads the rest of the line
            // and ends the batch before it stops.
            return Err(Fatal::Delivery("refused".into()));
        }
        if let Some(sequence_number) = &record.sequence_number {
            self.last = Some(Position::new(
                sequence_number,
                record.sub_sequence_number.unwrap_or(0),
            ));
        }
        Ok(())
    }

    fn end_batch<R: Read, W: Write>(
        &mut self,
        _millis_behind_latest: Option<i64>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal> {
        assert!(self.in_batch);
        self.in_batch = false;
        if let Some(position) = self.last.take() {
            channel.checkpoint(Some(&position))?;
        }
        channel.status("processRecords")
    }
}

/// One line the processor wrote: exactly a status or a checkpoint request.
fn check_written(line: &[u8]) {
    let value: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
        panic!(
            "the processor wrote a line that is not JSON ({e}): {:?}",
            String::from_utf8_lossy(line)
        )
    });
    let object = value.as_object().expect("an object");
    match object.get("action").and_then(Value::as_str) {
        Some("status") => {
            assert_eq!(object.len(), 2, "{value}");
            let response_for = object["responseFor"].as_str().expect("a string");
            // Byte-exact, as the daemon matches it.
            let exact = format!(
                "{{\"action\":\"status\",\"responseFor\":{}}}",
                serde_json::to_string(response_for).unwrap()
            );
            assert_eq!(line, exact.as_bytes());
        }
        Some("checkpoint") => {
            assert_eq!(object.len(), 3, "{value}");
            assert!(object["sequenceNumber"].is_string() || object["sequenceNumber"].is_null());
            assert!(object["subSequenceNumber"].is_i64() || object["subSequenceNumber"].is_null());
        }
        _ => panic!("the processor wrote {value}"),
    }
}

fuzz_target!(|input: &[u8]| {
    if let Err(e) = parse_message(input) {
        let _ = e.to_string();
    }
    for line in input.split(|&b| b == b'\n') {
        match parse_message(line) {
            Ok(message) => {
                let _ = message.action();
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    let mut output = Vec::new();
    let mut handler = Answering::default();
    {
        let mut session = Session::new(Chunks::new(input, 1, 300), &mut output);
        let _ = session.run(&mut handler);
    }
    if !output.is_empty() {
        assert_eq!(
            output.last(),
            Some(&b'\n'),
            "a line written without its end"
        );
        output.pop();
        for line in output.split(|&b| b == b'\n') {
            check_written(line);
        }
    }
});
