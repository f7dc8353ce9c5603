//! The protocol as the KCL MultiLangDaemon (2.x/3.x, plus the 1.x `shutdown` message) speaks it,
//! following `multilang-protocol.md`; the one place both daemon doubles ([`super::daemon`] for the
//! tests, [`super::inline`] for the benchmark) take it from:
//!
//! - extended sequence numbers and the checkpoint rules of `ShardRecordProcessorCheckpointer`
//!   ([`LeaseCheckpointer`]): the accepted range `lastCheckpoint <= (S,N) <= largestPermitted`,
//!   numeric comparison of sequence numbers, sentinels, the no-op on an equal value, SHARD_END at
//!   shard end, no checkpointer at `initialize` / `leaseLost`, injected lease-table errors;
//! - the daemon's lines to the child, each one compact JSON line with explicit nulls, fields in
//!   Jackson's order (`processRecords` lines are in [`super::records`]);
//! - the child's lines, read the way `BufferedReader.readLine` splits them ([`JavaLines`]) and
//!   parsed the way Jackson parses them into `Message` ([`parse_child_line`]);
//! - what the daemon does with each of them while it waits for a status ([`LeaseCheckpointer::react`]).

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use serde_json::Value;

use super::records::TestRecord;

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
            self.permit(esn);
            kept.push(record.clone());
        }
        (kept, dropped)
    }

    /// Raise `largestPermitted` to `delivered` when it is larger: the part of [`Self::deliver`]
    /// for a batch whose records the caller did not keep (the benchmark's pre-written lines).
    pub fn permit(&mut self, delivered: ExtSeq) {
        if self.largest_permitted.compare(&delivered).expect("valid") == Ordering::Less {
            self.largest_permitted = delivered;
        }
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

pub(super) fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

pub(super) fn json_opt_str(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_str)
}

pub(super) fn json_opt_i64(n: Option<i64>) -> String {
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

/// What the daemon does with one line of the child's stdout while it waits for the status of an
/// action (`MultiLangProtocol#waitForStatusMessage`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reaction {
    /// Skipped ("Skipping unexpected line on STDOUT", or an empty line): the reason.
    Skipped(String),
    /// Parsed as another registered message type (its action): consumed silently.
    Ignored(String),
    /// The status that ends the wait: `Ok` when it answers the action, else the `responseFor`
    /// it carried.
    Status(Result<(), Option<String>>),
    /// A checkpoint request, served: what the child sent (after coercion), the outcome, and the
    /// reply to write back (one line, without its newline).
    Checkpoint {
        sequence_number: Option<String>,
        sub_sequence_number: Option<i64>,
        outcome: CheckpointOutcome,
        reply: String,
    },
}

impl LeaseCheckpointer {
    /// The daemon's reaction to `line` while it waits for `action`'s status, checkpoints served
    /// by `checkpointer`.
    pub fn react(&mut self, action: &str, checkpointer: Checkpointer, line: &str) -> Reaction {
        match parse_child_line(line) {
            ChildLine::Empty => Reaction::Skipped("empty line".to_string()),
            ChildLine::Unparseable(reason) => Reaction::Skipped(reason),
            ChildLine::Other(other) => Reaction::Ignored(other),
            ChildLine::Status { response_for } => {
                if response_for.as_deref() == Some(action) {
                    Reaction::Status(Ok(()))
                } else {
                    Reaction::Status(Err(response_for))
                }
            }
            ChildLine::Checkpoint {
                sequence_number,
                sub_sequence_number,
            } => {
                let outcome = self.checkpoint(
                    checkpointer,
                    sequence_number.as_deref(),
                    sub_sequence_number,
                );
                let reply = checkpoint_reply_line(
                    sequence_number.as_deref(),
                    sub_sequence_number,
                    outcome.error(),
                );
                Reaction::Checkpoint {
                    sequence_number,
                    sub_sequence_number,
                    outcome,
                    reply,
                }
            }
        }
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
// Reading the child's stdout
// ---------------------------------------------------------------------------------------------

/// The child's stdout in lines, split the way `BufferedReader.readLine` splits them: a line ends
/// at `\n`, `\r\n` or `\r` (and is returned as soon as its terminator arrives); a last line
/// without a terminator is still a line. Bytes are decoded as UTF-8.
pub struct JavaLines<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    /// The previous terminator was `\r`: a `\n` right after it belongs to it.
    skip_lf: bool,
}

impl<R: Read> JavaLines<R> {
    pub fn new(stdout: R) -> Self {
        JavaLines {
            reader: BufReader::with_capacity(1 << 16, stdout),
            line: Vec::new(),
            skip_lf: false,
        }
    }

    /// The next line, `Ok(None)` at EOF.
    pub fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            let chunk = match self.reader.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(self.take_line()));
            }
            let mut used = 0;
            let mut ended = false;
            for &b in chunk {
                used += 1;
                if self.skip_lf {
                    self.skip_lf = false;
                    if b == b'\n' {
                        continue;
                    }
                }
                if b == b'\n' || b == b'\r' {
                    self.skip_lf = b == b'\r';
                    ended = true;
                    break;
                }
                self.line.push(b);
            }
            self.reader.consume(used);
            if ended {
                return Ok(Some(self.take_line()));
            }
        }
    }

    fn take_line(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        text
    }
}

// ---------------------------------------------------------------------------------------------
// Failed actions
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
