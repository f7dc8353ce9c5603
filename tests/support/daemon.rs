//! The tests' double of the KCL MultiLangDaemon (2.x/3.x, plus the 1.x `shutdown` message).
//!
//! It starts the real binary on real pipes and speaks [`super::protocol`] to it, the way
//! `multilang-protocol.md` describes the Java daemon (the benchmark's [`super::inline`] double
//! speaks the same, on its own thread). What this one adds for the tests:
//!
//! - `processRecords` lines can be written in another field order, see [`FieldOrder`];
//! - the child's stdout is read by a background thread into a channel, so every wait is bounded
//!   (`timeout`, 30 s by default) instead of hanging the test;
//! - lease-table errors can be injected (a queue, or ShutdownException forever);
//! - after a successful `leaseLost`, `shardEnded` or 1.x `shutdown`, stdin is closed (EOF), as the
//!   daemon's `childProcessShutdownSequence` does; so it is after any failed action except
//!   `shutdownRequested` (`stopProcessing`).
//!
//! Everything that happens is appended to a transcript the tests assert on.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use super::protocol::*;
pub use super::records::*;

/// How long the double waits for any single message from the child unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

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
            match self.lease.react(action, checkpointer, &line) {
                Reaction::Skipped(reason) => self.transcript.push(Event::Skipped { line, reason }),
                Reaction::Ignored(other) => self.transcript.push(Event::Ignored {
                    line,
                    action: other,
                }),
                Reaction::Status(Ok(())) => return Ok(()),
                Reaction::Status(Err(response_for)) => {
                    return Err(ActionError::StatusMismatch {
                        action: action.to_string(),
                        response_for,
                    })
                }
                Reaction::Checkpoint {
                    sequence_number,
                    sub_sequence_number,
                    outcome,
                    reply,
                } => {
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

/// Sends the child's stdout lines (see [`JavaLines`]) to the double, then `Eof` or `Error`.
fn stdout_reader(stdout: impl Read, lines: Sender<StdoutItem>) {
    let mut reader = JavaLines::new(stdout);
    loop {
        let item = match reader.next_line() {
            Ok(Some(line)) => StdoutItem::Line(line),
            Ok(None) => StdoutItem::Eof,
            Err(e) => StdoutItem::Error(e.to_string()),
        };
        let last = !matches!(item, StdoutItem::Line(_));
        if lines.send(item).is_err() || last {
            return;
        }
    }
}
