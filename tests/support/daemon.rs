//! A test double of the KCL MultiLangDaemon (2.x/3.x, plus the 1.x `shutdown` message).
//!
//! It starts the real binary on real pipes and behaves the way `multilang-protocol.md` describes
//! the Java daemon:
//!
//! - every message is one compact JSON line with explicit nulls, fields in Jackson's order
//!   (`processRecords` lines can be written in another order, see [`FieldOrder`]);
//! - the child's stdout is read by a background thread into a channel, so every wait is bounded
//!   (`timeout`, 30 s by default) instead of hanging the test;
//! - child lines are parsed the way Jackson parses them into `Message`: an empty line is skipped,
//!   non-JSON / unknown `action` / any unknown property is skipped (and recorded), another
//!   registered message type is consumed silently, a `status` for the wrong action fails the
//!   action, EOF fails the action;
//! - checkpoints follow `ShardRecordProcessorCheckpointer`: the accepted range
//!   `lastCheckpoint <= (S,N) <= largestPermitted`, numeric comparison of sequence numbers,
//!   sentinels, the no-op on an equal value, SHARD_END at shard end, no checkpointer at
//!   `initialize` / `leaseLost`; errors can be injected (a queue, or ShutdownException forever);
//! - after a successful `leaseLost`, `shardEnded` or 1.x `shutdown`, stdin is closed (EOF), as the
//!   daemon's `childProcessShutdownSequence` does; so it is after any failed action except
//!   `shutdownRequested` (`stopProcessing`).
//!
//! Everything that happens is appended to a transcript the tests assert on.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

/// How long the double waits for any single message from the child unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub const TRIM_HORIZON: &str = "TRIM_HORIZON";
pub const LATEST: &str = "LATEST";
pub const AT_TIMESTAMP: &str = "AT_TIMESTAMP";
pub const SHARD_END: &str = "SHARD_END";

pub const THROTTLING: &str = "ThrottlingException";
pub const DEPENDENCY: &str = "KinesisClientLibDependencyException";
pub const SHUTDOWN: &str = "ShutdownException";
pub const INVALID_STATE: &str = "InvalidStateException";
pub const ILLEGAL_ARGUMENT: &str = "IllegalArgumentException";

// ---------------------------------------------------------------------------------------------
// Extended sequence numbers and the checkpoint rules
// ---------------------------------------------------------------------------------------------

/// `ExtendedSequenceNumber`: a sequence number (decimal string or sentinel) and a sub-sequence
/// number. Equality is Java's `equals`: exact string and sub-sequence equality.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExtSeq {
    pub seq: String,
    pub sub: i64,
}

impl ExtSeq {
    pub fn new(seq: impl Into<String>, sub: i64) -> Self {
        ExtSeq {
            seq: seq.into(),
            sub,
        }
    }

    pub fn shard_end() -> Self {
        ExtSeq::new(SHARD_END, 0)
    }

    pub fn is_shard_end(&self) -> bool {
        self.seq == SHARD_END
    }

    /// `ExtendedSequenceNumber#compareTo`: SHARD_END is the greatest; AT_TIMESTAMP (-3),
    /// TRIM_HORIZON (-2) and LATEST (-1) are below every sequence number; sequence numbers compare
    /// as big integers, then sub-sequence numbers. `Err` (IllegalArgumentException in Java) when
    /// either side is neither digits nor a sentinel.
    pub fn compare(&self, other: &ExtSeq) -> Result<Ordering, String> {
        for s in [&self.seq, &other.seq] {
            if !is_digits(s) && !is_sentinel(s) {
                return Err(format!(
                    "Expected a sequence number or a sentinel checkpoint value but received: \
                     first={} and second={}",
                    self.seq, other.seq
                ));
            }
        }
        match (self.is_shard_end(), other.is_shard_end()) {
            (true, true) => return Ok(Ordering::Equal),
            (false, true) => return Ok(Ordering::Less),
            (true, false) => return Ok(Ordering::Greater),
            (false, false) => {}
        }
        let ordering = match (sentinel_rank(&self.seq), sentinel_rank(&other.seq)) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => compare_decimal(&self.seq, &other.seq),
        };
        Ok(ordering.then(self.sub.cmp(&other.sub)))
    }
}

impl fmt::Display for ExtSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.seq, self.sub)
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_sentinel(s: &str) -> bool {
    matches!(s, TRIM_HORIZON | LATEST | AT_TIMESTAMP | SHARD_END)
}

/// The BigInteger values Java gives the sentinels below SHARD_END.
fn sentinel_rank(s: &str) -> Option<i8> {
    match s {
        AT_TIMESTAMP => Some(-3),
        TRIM_HORIZON => Some(-2),
        LATEST => Some(-1),
        _ => None,
    }
}

/// Numeric comparison of two non-negative decimal strings of any length (56-digit sequence
/// numbers do not fit in any machine integer): strip leading zeros, then length, then bytes.
pub fn compare_decimal(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Whose checkpointer a checkpoint request meets (depends on the action being waited on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpointer {
    /// `initialize` and `leaseLost`: the daemon passes null, the reply is InvalidStateException.
    Absent,
    /// `processRecords`, `shutdownRequested`, `shardEnded`, 1.x TERMINATE.
    Live,
    /// 1.x `shutdown` ZOMBIE: a real checkpointer whose lease is gone; writes fail with
    /// ShutdownException at the lease table.
    Zombie,
}

/// The result of one checkpoint request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// Written to the lease table (the value written, SHARD_END if converted).
    Stored(ExtSeq),
    /// Equal to the last checkpoint: success, nothing written.
    NoOp,
    /// Failed with this exception's simple class name.
    Failed(String),
}

impl CheckpointOutcome {
    pub fn error(&self) -> Option<&str> {
        match self {
            CheckpointOutcome::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// The lease's checkpoint state, as `ShardRecordProcessorCheckpointer` keeps it, plus the
/// injected lease-table failures.
#[derive(Clone, Debug)]
pub struct LeaseCheckpointer {
    /// `lastCheckpointValue`: starts as the lease checkpoint sent in `initialize`.
    pub last: ExtSeq,
    /// `largestPermittedCheckpointValue`.
    pub largest_permitted: ExtSeq,
    /// `sequenceNumberAtShardEnd`: set when the shard ends.
    pub at_shard_end: Option<ExtSeq>,
    /// Errors returned by the next lease-table writes, one per write, nothing stored.
    pub injected: VecDeque<String>,
    /// Every lease-table write fails with ShutdownException (the lease was taken away).
    pub shutdown_forever: bool,
}

impl LeaseCheckpointer {
    pub fn new(initial: ExtSeq) -> Self {
        LeaseCheckpointer {
            last: initial.clone(),
            largest_permitted: initial,
            at_shard_end: None,
            injected: VecDeque::new(),
            shutdown_forever: false,
        }
    }

    /// `ProcessTask#filterAndGetMaxExtendedSequenceNumber`: drop records at or below the last
    /// checkpoint and raise `largestPermitted` to the largest delivered record (before the batch
    /// is written to the child). Returns the records the child will see.
    pub fn deliver(&mut self, records: &[TestRecord]) -> (Vec<TestRecord>, Vec<TestRecord>) {
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for record in records {
            let esn = record.ext_seq();
            let at_or_below_checkpoint = esn
                .compare(&self.last)
                .unwrap_or_else(|e| panic!("the daemon cannot deliver record {esn}: {e}"))
                != Ordering::Greater;
            if at_or_below_checkpoint {
                dropped.push(record.clone());
                continue;
            }
            if self.largest_permitted.compare(&esn).expect("valid") == Ordering::Less {
                self.largest_permitted = esn;
            }
            kept.push(record.clone());
        }
        (kept, dropped)
    }

    /// `ShutdownTask` at shard end: remember the last delivered position and permit SHARD_END.
    pub fn begin_shard_end(&mut self) {
        self.at_shard_end = Some(self.largest_permitted.clone());
        self.largest_permitted = ExtSeq::shard_end();
    }

    /// `MultiLangProtocol#checkpoint` + `ShardRecordProcessorCheckpointer#checkpoint`.
    /// `seq`/`sub` are the values the child sent (after Jackson's coercion).
    pub fn checkpoint(
        &mut self,
        checkpointer: Checkpointer,
        seq: Option<&str>,
        sub: Option<i64>,
    ) -> CheckpointOutcome {
        if checkpointer == Checkpointer::Absent {
            return CheckpointOutcome::Failed(INVALID_STATE.to_string());
        }
        let target = match seq {
            // checkpoint(): the largest permitted position, the sub-sequence number is ignored.
            None => self.largest_permitted.clone(),
            // checkpoint(S) is checkpoint(S, 0).
            Some(s) => {
                let n = sub.unwrap_or(0);
                if n < 0 {
                    return CheckpointOutcome::Failed(ILLEGAL_ARGUMENT.to_string());
                }
                let candidate = ExtSeq::new(s, n);
                let lower = self.last.compare(&candidate);
                let upper = candidate.compare(&self.largest_permitted);
                match (lower, upper) {
                    (Ok(l), Ok(u)) if l != Ordering::Greater && u != Ordering::Greater => candidate,
                    _ => return CheckpointOutcome::Failed(ILLEGAL_ARGUMENT.to_string()),
                }
            }
        };
        self.advance_position(checkpointer, target)
    }

    /// `advancePosition`: convert the last delivered position to SHARD_END at shard end; skip
    /// the write when the requested value equals the last checkpoint (Java `equals`, i.e. the
    /// requested value, not the converted one); otherwise write to the lease table.
    fn advance_position(
        &mut self,
        checkpointer: Checkpointer,
        target: ExtSeq,
    ) -> CheckpointOutcome {
        let to_record = match &self.at_shard_end {
            Some(end) if *end == target => ExtSeq::shard_end(),
            _ => target.clone(),
        };
        if target == self.last {
            return CheckpointOutcome::NoOp;
        }
        // The lease-table write.
        if checkpointer == Checkpointer::Zombie || self.shutdown_forever {
            return CheckpointOutcome::Failed(SHUTDOWN.to_string());
        }
        if let Some(error) = self.injected.pop_front() {
            return CheckpointOutcome::Failed(error);
        }
        self.last = to_record.clone();
        CheckpointOutcome::Stored(to_record)
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// One Kinesis record as the daemon hands it to the child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRecord {
    pub data: Option<Vec<u8>>,
    pub partition_key: Option<String>,
    pub sequence_number: String,
    pub sub_sequence_number: Option<i64>,
    pub arrival_ms: Option<i64>,
}

impl TestRecord {
    pub fn new(sequence_number: impl Into<String>, key: &str, data: &[u8]) -> Self {
        TestRecord {
            data: Some(data.to_vec()),
            partition_key: Some(key.to_string()),
            sequence_number: sequence_number.into(),
            sub_sequence_number: Some(0),
            arrival_ms: Some(1_700_000_000_000),
        }
    }

    /// Record number `i` of a generated stream: 56-digit increasing sequence number, one of 13
    /// keys, a payload naming it, an arrival time.
    pub fn generated(i: u64) -> Self {
        TestRecord {
            data: Some(format!("payload-{i}").into_bytes()),
            partition_key: Some(format!("pk-{}", i % 13)),
            sequence_number: seq_number(i),
            sub_sequence_number: Some(0),
            arrival_ms: Some(1_700_000_000_000 + i as i64),
        }
    }

    pub fn ext_seq(&self) -> ExtSeq {
        ExtSeq::new(
            self.sequence_number.clone(),
            self.sub_sequence_number.unwrap_or(0),
        )
    }

    /// `JsonFriendlyRecord` as Jackson writes it.
    pub fn to_json(&self) -> String {
        self.to_json_in(FieldOrder::Daemon)
    }

    /// The record's JSON object with its fields in `order` (same values, explicit nulls).
    pub fn to_json_in(&self, order: FieldOrder) -> String {
        let data = json_opt_str(
            self.data
                .as_ref()
                .map(|d| base64::engine::general_purpose::STANDARD.encode(d))
                .as_deref(),
        );
        let mut fields = [
            ("data", data),
            ("partitionKey", json_opt_str(self.partition_key.as_deref())),
            ("sequenceNumber", json_str(&self.sequence_number)),
            ("approximateArrivalTimestamp", json_opt_i64(self.arrival_ms)),
            ("subSequenceNumber", json_opt_i64(self.sub_sequence_number)),
            ("action", json_str("record")),
        ];
        if order.reverses_records() {
            fields.reverse();
        }
        json_object(&fields)
    }
}

/// How the double writes a `processRecords` line.
///
/// The daemon (Jackson) always writes its fields in one order, and the binary recognises that
/// order by the line's first bytes (`STREAMED_BATCH_PREFIX`) and reads the batch record by
/// record. Any other order is the same message to a JSON reader, and the binary must read such
/// a line whole and parse it. Every order writes the same values with the same explicit nulls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FieldOrder {
    /// Jackson's order, exactly as the daemon writes it (the streamed path):
    /// `{"action":"processRecords","records":[{"data":..,"partitionKey":..,"sequenceNumber":..,
    /// "approximateArrivalTimestamp":..,"subSequenceNumber":..,"action":"record"}],
    /// "millisBehindLatest":N}`.
    #[default]
    Daemon,
    /// `millisBehindLatest` before `records`, records as the daemon writes them (read whole):
    /// `{"action":"processRecords","millisBehindLatest":N,"records":[...]}`.
    MillisFirst,
    /// Every object's fields in reverse, the records' own fields too (read whole):
    /// `{"millisBehindLatest":N,"records":[{"action":"record",...,"data":..}],
    /// "action":"processRecords"}`.
    Reversed,
}

impl FieldOrder {
    pub const ALL: [FieldOrder; 3] = [
        FieldOrder::Daemon,
        FieldOrder::MillisFirst,
        FieldOrder::Reversed,
    ];

    /// Whether the binary reads a line in this order record by record (it starts with the
    /// daemon's exact prefix) rather than whole.
    pub fn is_streamed(self) -> bool {
        self == FieldOrder::Daemon
    }

    fn reverses_records(self) -> bool {
        self == FieldOrder::Reversed
    }
}

/// `{"k":v,...}` from already-serialized values, in the order given.
fn json_object(fields: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_str(key));
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    out
}

const SEQ_PREFIX: &str = "4959033827149025660855969253836157109592";
const SEQ_BASE: u64 = 1_575_989_136_588_898;

/// The `i`-th sequence number of a generated shard: 56 decimal digits, strictly increasing, not
/// consecutive (real sequence numbers are not).
pub fn seq_number(i: u64) -> String {
    let s = format!("{SEQ_PREFIX}{:016}", SEQ_BASE + i * 1_000);
    debug_assert_eq!(s.len(), 56);
    s
}

/// `n` generated records starting at record number `start`.
pub fn records(start: u64, n: usize) -> Vec<TestRecord> {
    (start..start + n as u64)
        .map(TestRecord::generated)
        .collect()
}

/// KPL-style sub-records: `n` records sharing sequence number `seq_number(i)`,
/// sub-sequence numbers 0..n.
pub fn aggregated(i: u64, n: i64) -> Vec<TestRecord> {
    (0..n)
        .map(|sub| TestRecord {
            data: Some(format!("payload-{i}-{sub}").into_bytes()),
            partition_key: Some(format!("agg-{sub}")),
            sequence_number: seq_number(i),
            sub_sequence_number: Some(sub),
            arrival_ms: Some(1_700_000_000_000 + i as i64),
        })
        .collect()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn json_opt_str(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_str)
}

fn json_opt_i64(n: Option<i64>) -> String {
    n.map_or_else(|| "null".to_string(), |n| n.to_string())
}

// ---------------------------------------------------------------------------------------------
// Daemon -> child messages
// ---------------------------------------------------------------------------------------------

pub fn initialize_line(shard_id: &str, seq: Option<&str>, sub: Option<i64>) -> String {
    format!(
        r#"{{"action":"initialize","shardId":{},"sequenceNumber":{},"subSequenceNumber":{}}}"#,
        json_str(shard_id),
        json_opt_str(seq),
        json_opt_i64(sub)
    )
}

/// A `processRecords` line exactly as the daemon writes it.
pub fn process_records_line(records: &[TestRecord], millis_behind: Option<i64>) -> String {
    process_records_line_in(FieldOrder::Daemon, records, millis_behind)
}

/// A `processRecords` line with its fields (and its records' fields) in `order`.
pub fn process_records_line_in(
    order: FieldOrder,
    records: &[TestRecord],
    millis_behind: Option<i64>,
) -> String {
    let mut list = String::from("[");
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        list.push_str(&record.to_json_in(order));
    }
    list.push(']');
    let action = ("action", json_str("processRecords"));
    let records = ("records", list);
    let millis = ("millisBehindLatest", json_opt_i64(millis_behind));
    match order {
        FieldOrder::Daemon => json_object(&[action, records, millis]),
        FieldOrder::MillisFirst => json_object(&[action, millis, records]),
        FieldOrder::Reversed => json_object(&[millis, records, action]),
    }
}

pub fn checkpoint_reply_line(seq: Option<&str>, sub: Option<i64>, error: Option<&str>) -> String {
    format!(
        r#"{{"action":"checkpoint","sequenceNumber":{},"subSequenceNumber":{},"error":{}}}"#,
        json_opt_str(seq),
        json_opt_i64(sub),
        json_opt_str(error)
    )
}

// ---------------------------------------------------------------------------------------------
// Child -> daemon lines, parsed like Jackson's readValue(line, Message.class)
// ---------------------------------------------------------------------------------------------

/// What the daemon makes of one line of the child's stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildLine {
    /// An exactly empty line: skipped silently.
    Empty,
    /// Does not parse as a `Message` ("Skipping unexpected line on STDOUT"); the reason.
    Unparseable(String),
    Status {
        response_for: Option<String>,
    },
    Checkpoint {
        sequence_number: Option<String>,
        sub_sequence_number: Option<i64>,
    },
    /// Parses as another registered message type: consumed silently.
    Other(String),
}

pub fn parse_child_line(line: &str) -> ChildLine {
    if line.is_empty() {
        return ChildLine::Empty;
    }
    // The first JSON value; whitespace around it and trailing garbage after it are tolerated.
    let mut values = serde_json::Deserializer::from_str(line).into_iter::<Value>();
    let value = match values.next() {
        Some(Ok(value)) => value,
        Some(Err(e)) => return ChildLine::Unparseable(format!("not JSON: {e}")),
        None => return ChildLine::Unparseable("no JSON value".to_string()),
    };
    let Value::Object(map) = value else {
        return ChildLine::Unparseable("not a JSON object".to_string());
    };
    let action = match map.get("action") {
        Some(Value::String(action)) => action.clone(),
        Some(other) => return ChildLine::Unparseable(format!("bad type id {other}")),
        None => return ChildLine::Unparseable("missing \"action\"".to_string()),
    };
    let known: &[&str] = match action.as_str() {
        "status" => &["responseFor"],
        "checkpoint" => &["sequenceNumber", "subSequenceNumber", "error"],
        "initialize" => &["shardId", "sequenceNumber", "subSequenceNumber"],
        "processRecords" => &["records", "millisBehindLatest"],
        "shutdown" => &["reason"],
        "shutdownRequested" | "leaseLost" | "shardEnded" => &[],
        other => return ChildLine::Unparseable(format!("unknown action {other:?}")),
    };
    if let Some(unknown) = map
        .keys()
        .find(|k| k.as_str() != "action" && !known.contains(&k.as_str()))
    {
        return ChildLine::Unparseable(format!("unknown property {unknown:?}"));
    }
    match action.as_str() {
        "status" => match coerce_string(map.get("responseFor")) {
            Ok(response_for) => ChildLine::Status { response_for },
            Err(e) => ChildLine::Unparseable(e),
        },
        "checkpoint" => {
            let seq = coerce_string(map.get("sequenceNumber"));
            let sub = coerce_long(map.get("subSequenceNumber"));
            let error = coerce_string(map.get("error"));
            match (seq, sub, error) {
                (Ok(sequence_number), Ok(sub_sequence_number), Ok(_)) => ChildLine::Checkpoint {
                    sequence_number,
                    sub_sequence_number,
                },
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => ChildLine::Unparseable(e),
            }
        }
        _ => ChildLine::Other(action),
    }
}

/// A `String` property: scalars are coerced, objects and arrays fail.
fn coerce_string(value: Option<&Value>) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(other) => Err(format!("cannot read a String from {other}")),
    }
}

/// A `Long` property: integers, floats (truncated) and numeric strings are accepted.
fn coerce_long(value: Option<&Value>) -> Result<Option<i64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(f) = n.as_f64().filter(|f| f.abs() < 9.2e18) {
                Ok(Some(f.trunc() as i64))
            } else {
                Err(format!("{n} does not fit a Long"))
            }
        }
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("cannot read a Long from {s:?}")),
        Some(other) => Err(format!("cannot read a Long from {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The transcript
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionError {
    /// No message from the child within the timeout (the real daemon would halt the JVM if
    /// `timeoutInSeconds` were set, or wait forever).
    Timeout { action: String, waited: Duration },
    /// The child's stdout ended before the status.
    Eof { action: String },
    /// A status for another action, or with a null `responseFor`.
    StatusMismatch {
        action: String,
        response_for: Option<String>,
    },
    /// Writing the action's message to the child's stdin failed.
    WriteFailed { action: String, error: String },
    /// Writing a checkpoint reply failed.
    CheckpointReplyFailed { action: String, error: String },
}

impl fmt::Display for ActionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionError::Timeout { action, waited } => {
                write!(f, "{action}: no message from the child within {waited:?}")
            }
            ActionError::Eof { action } => write!(f, "{action}: child stdout ended (EOF)"),
            ActionError::StatusMismatch {
                action,
                response_for,
            } => write!(f, "{action}: status responseFor {response_for:?}"),
            ActionError::WriteFailed { action, error } => {
                write!(f, "{action}: writing to child stdin failed: {error}")
            }
            ActionError::CheckpointReplyFailed { action, error } => {
                write!(f, "{action}: writing a checkpoint reply failed: {error}")
            }
        }
    }
}

impl std::error::Error for ActionError {}

/// One checkpoint request and what the double did with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointAttempt {
    /// The action being waited on when the request was read.
    pub during: String,
    /// As the child sent them (after coercion); the reply echoes these.
    pub sequence_number: Option<String>,
    pub sub_sequence_number: Option<i64>,
    pub outcome: CheckpointOutcome,
    pub at: Instant,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A line written to the child's stdin (without the newline).
    Sent(String),
    /// Bytes written raw (no newline added).
    SentRaw(Vec<u8>),
    /// Records the daemon filtered out because they are at or below the last checkpoint.
    Filtered(Vec<ExtSeq>),
    /// A line read from the child's stdout while waiting on an action.
    Received(String),
    /// That line was skipped (`ChildLine::Unparseable` or `Empty`).
    Skipped {
        line: String,
        reason: String,
    },
    /// That line parsed as another message type and was consumed silently.
    Ignored {
        line: String,
        action: String,
    },
    Checkpoint(CheckpointAttempt),
    /// An action ended.
    Action {
        action: String,
        result: Result<(), ActionError>,
    },
    StdinClosed,
    /// A line read from the child's stdout after the conversation ended (drained at exit).
    Drained(String),
}

// ---------------------------------------------------------------------------------------------
// The daemon double
// ---------------------------------------------------------------------------------------------

enum WriterCmd {
    Write(Vec<u8>, Sender<Result<(), String>>),
    Close,
}

enum StdoutItem {
    Line(String),
    Eof,
    Error(String),
}

/// The 1.x `shutdown` reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    Terminate,
    Zombie,
}

pub struct Daemon {
    child: Child,
    writer: Option<Sender<WriterCmd>>,
    stdout: Receiver<StdoutItem>,
    stdout_ended: bool,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_done: Receiver<()>,
    stderr_ended: bool,
    exit: Option<ExitStatus>,
    /// Bound on every wait for a message from the child.
    pub timeout: Duration,
    /// How `processRecords` lines are written (the daemon's order unless told otherwise).
    pub field_order: FieldOrder,
    pub shard_id: Option<String>,
    pub lease: LeaseCheckpointer,
    transcript: Vec<Event>,
    started: Instant,
}

impl Daemon {
    /// Start the child with piped stdin/stdout/stderr (as `ProcessBuilder` does).
    pub fn spawn(mut command: Command) -> Daemon {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");

        let (writer_tx, writer_rx) = mpsc::channel::<WriterCmd>();
        thread::Builder::new()
            .name("daemon-stdin".into())
            .spawn(move || stdin_writer(stdin, writer_rx))
            .expect("spawn stdin writer");

        let (stdout_tx, stdout_rx) = mpsc::channel::<StdoutItem>();
        thread::Builder::new()
            .name("daemon-stdout".into())
            .spawn(move || stdout_reader(stdout, stdout_tx))
            .expect("spawn stdout reader");

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (stderr_done_tx, stderr_done_rx) = mpsc::channel();
        let sink = Arc::clone(&stderr);
        thread::Builder::new()
            .name("daemon-stderr".into())
            .spawn(move || {
                let mut pipe = stderr_pipe;
                let mut buf = [0u8; 8192];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => sink
                            .lock()
                            .expect("stderr lock")
                            .extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stderr_done_tx.send(());
            })
            .expect("spawn stderr reader");

        Daemon {
            child,
            writer: Some(writer_tx),
            stdout: stdout_rx,
            stdout_ended: false,
            stderr,
            stderr_done: stderr_done_rx,
            stderr_ended: false,
            exit: None,
            timeout: DEFAULT_TIMEOUT,
            field_order: FieldOrder::Daemon,
            shard_id: None,
            lease: LeaseCheckpointer::new(ExtSeq::new(TRIM_HORIZON, 0)),
            transcript: Vec::new(),
            started: Instant::now(),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Daemon {
        self.timeout = timeout;
        self
    }

    /// Write `processRecords` lines with their fields in `order`.
    pub fn with_field_order(mut self, order: FieldOrder) -> Daemon {
        self.field_order = order;
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    // ----- fault injection --------------------------------------------------------------------

    /// The next lease-table writes fail with these errors, one per write, nothing stored.
    pub fn inject_checkpoint_errors(&mut self, errors: &[&str]) {
        self.lease
            .injected
            .extend(errors.iter().map(|e| e.to_string()));
    }

    /// From now on every lease-table write fails with ShutdownException.
    pub fn shutdown_exception_forever(&mut self) {
        self.lease.shutdown_forever = true;
    }

    // ----- actions (Result) -----------------------------------------------------------------

    pub fn try_initialize(
        &mut self,
        shard_id: &str,
        seq: Option<&str>,
        sub: Option<i64>,
    ) -> Result<(), ActionError> {
        self.shard_id = Some(shard_id.to_string());
        // InitializeTask: both the last checkpoint and the largest permitted value start at the
        // lease's checkpoint. Injected failures configured before survive.
        let initial = ExtSeq::new(seq.unwrap_or(TRIM_HORIZON), sub.unwrap_or(0));
        let mut lease = LeaseCheckpointer::new(initial);
        lease.injected = std::mem::take(&mut self.lease.injected);
        lease.shutdown_forever = self.lease.shutdown_forever;
        self.lease = lease;
        let line = initialize_line(shard_id, seq, sub);
        self.run_action("initialize", line, Checkpointer::Absent)
    }

    pub fn try_process_records(
        &mut self,
        records: &[TestRecord],
        millis_behind: Option<i64>,
    ) -> Result<(), ActionError> {
        let (kept, dropped) = self.lease.deliver(records);
        if !dropped.is_empty() {
            self.transcript.push(Event::Filtered(
                dropped.iter().map(TestRecord::ext_seq).collect(),
            ));
        }
        let line = process_records_line_in(self.field_order, &kept, millis_behind);
        self.run_action("processRecords", line, Checkpointer::Live)
    }

    pub fn try_shutdown_requested(&mut self) -> Result<(), ActionError> {
        self.run_action(
            "shutdownRequested",
            r#"{"action":"shutdownRequested"}"#.to_string(),
            Checkpointer::Live,
        )
    }

    /// On success stdin is closed, as the daemon does.
    pub fn try_lease_lost(&mut self) -> Result<(), ActionError> {
        let result = self.run_action(
            "leaseLost",
            r#"{"action":"leaseLost"}"#.to_string(),
            Checkpointer::Absent,
        );
        if result.is_ok() {
            self.close_stdin();
        }
        result
    }

    /// On success stdin is closed, as the daemon does.
    pub fn try_shard_ended(&mut self) -> Result<(), ActionError> {
        self.lease.begin_shard_end();
        let result = self.run_action(
            "shardEnded",
            r#"{"action":"shardEnded"}"#.to_string(),
            Checkpointer::Live,
        );
        if result.is_ok() {
            self.close_stdin();
        }
        result
    }

    /// KCL 1.x `{"action":"shutdown","reason":...}`. On success stdin is closed.
    pub fn try_shutdown_v1(&mut self, reason: ShutdownReason) -> Result<(), ActionError> {
        let (name, checkpointer) = match reason {
            ShutdownReason::Terminate => {
                self.lease.begin_shard_end();
                ("TERMINATE", Checkpointer::Live)
            }
            ShutdownReason::Zombie => ("ZOMBIE", Checkpointer::Zombie),
        };
        let line = format!(r#"{{"action":"shutdown","reason":"{name}"}}"#);
        let result = self.run_action("shutdown", line, checkpointer);
        if result.is_ok() {
            self.close_stdin();
        }
        result
    }

    /// Send an arbitrary line as an action and wait for a status with `responseFor` equal to
    /// `response_for`, serving checkpoints with `checkpointer` meanwhile.
    pub fn try_raw_action(
        &mut self,
        line: &str,
        response_for: &str,
        checkpointer: Checkpointer,
    ) -> Result<(), ActionError> {
        self.run_action(response_for, line.to_string(), checkpointer)
    }

    // ----- actions (panicking with the transcript) ----------------------------------------------

    pub fn initialize(&mut self, shard_id: &str, seq: &str) {
        let r = self.try_initialize(shard_id, Some(seq), Some(0));
        self.ok(r);
    }

    pub fn process_records(&mut self, records: &[TestRecord], millis_behind: Option<i64>) {
        let r = self.try_process_records(records, millis_behind);
        self.ok(r);
    }

    pub fn shutdown_requested(&mut self) {
        let r = self.try_shutdown_requested();
        self.ok(r);
    }

    pub fn lease_lost(&mut self) {
        let r = self.try_lease_lost();
        self.ok(r);
    }

    pub fn shard_ended(&mut self) {
        let r = self.try_shard_ended();
        self.ok(r);
    }

    pub fn shutdown_v1(&mut self, reason: ShutdownReason) {
        let r = self.try_shutdown_v1(reason);
        self.ok(r);
    }

    /// Panic with the transcript and the child's stderr unless `result` is Ok.
    pub fn ok<T>(&self, result: Result<T, ActionError>) -> T {
        match result {
            Ok(v) => v,
            Err(e) => panic!("action failed: {e}\n{}", self.dump()),
        }
    }

    // ----- raw I/O ------------------------------------------------------------------------------

    /// Write `line` and a newline to the child's stdin, without waiting for anything.
    pub fn send_raw(&mut self, line: &str) -> Result<(), String> {
        self.transcript.push(Event::Sent(line.to_string()));
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.write_sync(bytes)
    }

    /// Write bytes as they are (e.g. half a line).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.transcript.push(Event::SentRaw(bytes.to_vec()));
        self.write_sync(bytes.to_vec())
    }

    /// Close the child's stdin (EOF). Idempotent.
    pub fn close_stdin(&mut self) {
        if let Some(writer) = self.writer.take() {
            // The writer thread drops the pipe after finishing queued writes.
            let _ = writer.send(WriterCmd::Close);
            self.transcript.push(Event::StdinClosed);
        }
    }

    /// Read the next child stdout line, waiting at most `timeout`; `None` on EOF or timeout.
    /// Recorded as `Received`. Useful to observe output between actions.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        if self.stdout_ended {
            return None;
        }
        match self.stdout.recv_timeout(timeout) {
            Ok(StdoutItem::Line(line)) => {
                self.transcript.push(Event::Received(line.clone()));
                Some(line)
            }
            Ok(StdoutItem::Eof)
            | Ok(StdoutItem::Error(_))
            | Err(RecvTimeoutError::Disconnected) => {
                self.stdout_ended = true;
                None
            }
            Err(RecvTimeoutError::Timeout) => None,
        }
    }

    fn write_async(&mut self, bytes: Vec<u8>) -> Receiver<Result<(), String>> {
        let (tx, rx) = mpsc::channel();
        match &self.writer {
            Some(writer) => {
                if writer.send(WriterCmd::Write(bytes, tx.clone())).is_err() {
                    let _ = tx.send(Err("stdin writer thread is gone".to_string()));
                }
            }
            None => {
                let _ = tx.send(Err("stdin was closed".to_string()));
            }
        }
        rx
    }

    fn write_sync(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        let rx = self.write_async(bytes);
        match rx.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(_) => Err(format!("write did not complete within {:?}", self.timeout)),
        }
    }

    // ----- the conversation -----------------------------------------------------------------------

    fn run_action(
        &mut self,
        action: &str,
        line: String,
        checkpointer: Checkpointer,
    ) -> Result<(), ActionError> {
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        self.transcript.push(Event::Sent(line));
        // The write is submitted asynchronously and stdout is read meanwhile; the write's
        // outcome is checked after the status (MultiLangProtocol#waitForStatusMessage).
        let write = self.write_async(bytes);
        let mut result = self.wait_for_status(action, checkpointer);
        if result.is_ok() {
            result = match write.recv_timeout(self.timeout) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(ActionError::WriteFailed {
                    action: action.to_string(),
                    error,
                }),
                Err(_) => Err(ActionError::WriteFailed {
                    action: action.to_string(),
                    error: format!("write did not complete within {:?}", self.timeout),
                }),
            };
        }
        self.transcript.push(Event::Action {
            action: action.to_string(),
            result: result.clone(),
        });
        // MultiLangShardRecordProcessor#stopProcessing: a failed action (except
        // shutdownRequested, which is only logged) closes the child's stdin before the daemon
        // exits.
        if result.is_err() && action != "shutdownRequested" {
            self.close_stdin();
        }
        result
    }

    fn wait_for_status(
        &mut self,
        action: &str,
        checkpointer: Checkpointer,
    ) -> Result<(), ActionError> {
        loop {
            if self.stdout_ended {
                return Err(ActionError::Eof {
                    action: action.to_string(),
                });
            }
            let line = match self.stdout.recv_timeout(self.timeout) {
                Ok(StdoutItem::Line(line)) => line,
                Ok(StdoutItem::Eof)
                | Ok(StdoutItem::Error(_))
                | Err(RecvTimeoutError::Disconnected) => {
                    self.stdout_ended = true;
                    return Err(ActionError::Eof {
                        action: action.to_string(),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ActionError::Timeout {
                        action: action.to_string(),
                        waited: self.timeout,
                    })
                }
            };
            self.transcript.push(Event::Received(line.clone()));
            match parse_child_line(&line) {
                ChildLine::Empty => self.transcript.push(Event::Skipped {
                    line,
                    reason: "empty line".to_string(),
                }),
                ChildLine::Unparseable(reason) => {
                    self.transcript.push(Event::Skipped { line, reason })
                }
                ChildLine::Other(other) => self.transcript.push(Event::Ignored {
                    line,
                    action: other,
                }),
                ChildLine::Status { response_for } => {
                    return if response_for.as_deref() == Some(action) {
                        Ok(())
                    } else {
                        Err(ActionError::StatusMismatch {
                            action: action.to_string(),
                            response_for,
                        })
                    };
                }
                ChildLine::Checkpoint {
                    sequence_number,
                    sub_sequence_number,
                } => {
                    let outcome = self.lease.checkpoint(
                        checkpointer,
                        sequence_number.as_deref(),
                        sub_sequence_number,
                    );
                    let reply = checkpoint_reply_line(
                        sequence_number.as_deref(),
                        sub_sequence_number,
                        outcome.error(),
                    );
                    self.transcript.push(Event::Checkpoint(CheckpointAttempt {
                        during: action.to_string(),
                        sequence_number,
                        sub_sequence_number,
                        outcome,
                        at: Instant::now(),
                    }));
                    self.transcript.push(Event::Sent(reply.clone()));
                    let mut bytes = reply.into_bytes();
                    bytes.push(b'\n');
                    if let Err(error) = self.write_sync(bytes) {
                        return Err(ActionError::CheckpointReplyFailed {
                            action: action.to_string(),
                            error,
                        });
                    }
                }
            }
        }
    }

    // ----- exit -------------------------------------------------------------------------------------

    /// Wait for the child to exit. On timeout the child is killed and the test fails.
    /// Afterwards the rest of stdout is drained into the transcript (`Drained`) and stderr is
    /// collected completely.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(timeout) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the child did not exit within {timeout:?} (killed)\n{}",
                    self.dump()
                );
            }
        }
    }

    /// Like `wait_exit` but `None` on timeout (the child keeps running).
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exit {
            return Some(status);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    self.finish_streams();
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => return None,
                Err(e) => panic!("waiting for the child failed: {e}"),
            }
        }
    }

    /// The child is still running (has not exited).
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    fn finish_streams(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stdout_ended {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(StdoutItem::Line(line)) => self.transcript.push(Event::Drained(line)),
                _ => self.stdout_ended = true,
            }
        }
        if !self.stderr_ended {
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = self.stderr_done.recv_timeout(left);
            self.stderr_ended = true;
        }
    }

    /// Kill the child now (e.g. to simulate a crash); returns its status.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait after kill");
        self.exit = Some(status);
        self.finish_streams();
        status
    }

    // ----- observations ---------------------------------------------------------------------------

    pub fn transcript(&self) -> &[Event] {
        &self.transcript
    }

    /// Every checkpoint request, in order.
    pub fn checkpoint_attempts(&self) -> Vec<CheckpointAttempt> {
        self.transcript
            .iter()
            .filter_map(|e| match e {
                Event::Checkpoint(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    /// The values actually written to the lease table, in order.
    pub fn checkpoints(&self) -> Vec<ExtSeq> {
        self.checkpoint_attempts()
            .into_iter()
            .filter_map(|a| match a.outcome {
                CheckpointOutcome::Stored(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    /// The last value written to the lease table by this child, if any.
    pub fn last_checkpoint(&self) -> Option<ExtSeq> {
        self.checkpoints().pop()
    }

    /// The lease's checkpoint now (the initialize value if nothing was written).
    pub fn lease_checkpoint(&self) -> ExtSeq {
        self.lease.last.clone()
    }

    /// Lines read from the child's stdout, during actions and drained at exit, in order.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.transcript
            .iter()
            .filter_map(|e| match e {
                Event::Received(l) | Event::Drained(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    /// Received lines that are checkpoint requests, exactly as the child wrote them.
    pub fn received_checkpoint_lines(&self) -> Vec<String> {
        self.stdout_lines()
            .into_iter()
            .filter(|l| matches!(parse_child_line(l), ChildLine::Checkpoint { .. }))
            .collect()
    }

    /// Lines the daemon skipped as unparseable (including empty lines), with the reason.
    pub fn skipped_lines(&self) -> Vec<(String, String)> {
        self.transcript
            .iter()
            .filter_map(|e| match e {
                Event::Skipped { line, reason } => Some((line.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// Results of the actions, in order.
    pub fn action_results(&self) -> Vec<(String, Result<(), ActionError>)> {
        self.transcript
            .iter()
            .filter_map(|e| match e {
                Event::Action { action, result } => Some((action.clone(), result.clone())),
                _ => None,
            })
            .collect()
    }

    /// The child's stderr so far (complete after `wait_exit`).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("stderr lock")).into_owned()
    }

    /// Wait until the child's stderr contains `needle` (true), or the timeout passes (false).
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The transcript and stderr, for failure messages (long lines shortened).
    pub fn dump(&self) -> String {
        fn short(s: &str) -> String {
            const MAX: usize = 300;
            if s.len() <= MAX {
                s.to_string()
            } else {
                let mut end = MAX;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}... ({} bytes)", &s[..end], s.len())
            }
        }
        let mut out = String::from("--- transcript ---\n");
        for event in &self.transcript {
            let line = match event {
                Event::Sent(l) => format!("-> {}", short(l)),
                Event::SentRaw(b) => format!("-> (raw) {}", short(&String::from_utf8_lossy(b))),
                Event::Filtered(v) => {
                    format!("   filtered {} records at/below checkpoint", v.len())
                }
                Event::Received(l) => format!("<- {}", short(l)),
                Event::Skipped { reason, .. } => format!("   skipped: {reason}"),
                Event::Ignored { action, .. } => format!("   ignored ({action} message)"),
                Event::Checkpoint(a) => format!(
                    "   checkpoint {:?}/{:?} during {}: {:?}",
                    a.sequence_number, a.sub_sequence_number, a.during, a.outcome
                ),
                Event::Action { action, result } => format!("== {action}: {result:?}"),
                Event::StdinClosed => "-> (stdin closed)".to_string(),
                Event::Drained(l) => format!("<- (drained) {}", short(l)),
            };
            out.push_str(&line);
            out.push('\n');
        }
        let stderr = self.stderr();
        let lines: Vec<&str> = stderr.lines().collect();
        let skip = lines.len().saturating_sub(200);
        out.push_str(&format!(
            "--- child stderr ({} lines, last {} shown; {:?} since start) ---\n",
            lines.len(),
            lines.len() - skip,
            self.started.elapsed()
        ));
        for line in &lines[skip..] {
            out.push_str(&short(line));
            out.push('\n');
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exit.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

fn stdin_writer(mut stdin: ChildStdin, commands: Receiver<WriterCmd>) {
    let mut failed: Option<String> = None;
    for command in commands {
        match command {
            WriterCmd::Write(bytes, done) => {
                let result = match &failed {
                    Some(e) => Err(e.clone()),
                    None => stdin
                        .write_all(&bytes)
                        .and_then(|_| stdin.flush())
                        .map_err(|e| {
                            let e = e.to_string();
                            failed = Some(e.clone());
                            e
                        }),
                };
                let _ = done.send(result);
            }
            WriterCmd::Close => break,
        }
    }
    drop(stdin);
}

/// `BufferedReader.readLine` semantics: a line ends at `\n`, `\r\n` or `\r` (and is
/// delivered as soon as its terminator arrives); a last line without a terminator is still a
/// line. Bytes are decoded as UTF-8.
fn stdout_reader(stdout: impl Read, lines: Sender<StdoutItem>) {
    let mut reader = BufReader::with_capacity(1 << 16, stdout);
    let mut line: Vec<u8> = Vec::new();
    // The previous terminator was `\r`: a `\n` right after it belongs to it.
    let mut skip_lf = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = lines.send(StdoutItem::Error(e.to_string()));
                return;
            }
        };
        if chunk.is_empty() {
            if !line.is_empty() {
                let _ = lines.send(StdoutItem::Line(
                    String::from_utf8_lossy(&line).into_owned(),
                ));
            }
            let _ = lines.send(StdoutItem::Eof);
            return;
        }
        let mut used = 0;
        for &b in chunk {
            used += 1;
            if skip_lf {
                skip_lf = false;
                if b == b'\n' {
                    continue;
                }
            }
            if b == b'\n' || b == b'\r' {
                skip_lf = b == b'\r';
                let text = String::from_utf8_lossy(&line).into_owned();
                line.clear();
                if lines.send(StdoutItem::Line(text)).is_err() {
                    return;
                }
            } else {
                line.push(b);
            }
        }
        reader.consume(used);
    }
}
