//! The daemon double without threads or a transcript, for the benchmark.
//!
//! It writes to and reads from the child's pipes on the caller's thread, so that it costs little
//! more than the `write` and `read` calls (the benchmark measures its ceiling against a child
//! that only answers status). What it says and how it reacts are [`super::protocol`]'s, as for
//! [`super::daemon::Daemon`]: the same lines, the same parsing of the child's, the same
//! checkpoint rules. What it lacks is the transcript and the bounded waits (the benchmark's
//! watchdog kills a child that hangs).

use std::io::Write;
use std::process::{Child, ChildStdin, ChildStdout};

use super::protocol::{
    initialize_line, ActionError, Checkpointer, ExtSeq, JavaLines, LeaseCheckpointer, Reaction,
};

pub struct InlineDaemon {
    stdin: Option<ChildStdin>,
    stdout: JavaLines<ChildStdout>,
    pub lease: LeaseCheckpointer,
    /// Checkpoint requests served, and how many of them failed.
    pub checkpoints: u32,
    pub rejected: u32,
    /// Lines skipped or consumed silently.
    pub skipped_lines: u32,
}

impl InlineDaemon {
    /// Takes over the piped stdin and stdout of `child`.
    pub fn new(child: &mut Child) -> InlineDaemon {
        InlineDaemon {
            stdin: child.stdin.take(),
            stdout: JavaLines::new(child.stdout.take().expect("piped stdout")),
            lease: LeaseCheckpointer::new(ExtSeq::new(super::protocol::TRIM_HORIZON, 0)),
            checkpoints: 0,
            rejected: 0,
            skipped_lines: 0,
        }
    }

    /// `initialize` for `shard_id` at the lease checkpoint `seq` (sub-sequence 0).
    pub fn initialize(&mut self, shard_id: &str, seq: &str) -> Result<(), ActionError> {
        self.lease = LeaseCheckpointer::new(ExtSeq::new(seq, 0));
        let mut line = initialize_line(shard_id, Some(seq), Some(0)).into_bytes();
        line.push(b'\n');
        self.action("initialize", &line, Checkpointer::Absent)
    }

    /// A `processRecords` line written beforehand (newline included) whose largest record is
    /// `largest`.
    pub fn process_records(&mut self, line: &[u8], largest: &ExtSeq) -> Result<(), ActionError> {
        self.lease.permit(largest.clone());
        self.action("processRecords", line, Checkpointer::Live)
    }

    /// `shardEnded`: the child may checkpoint SHARD_END before its status.
    pub fn shard_ended(&mut self) -> Result<(), ActionError> {
        self.lease.begin_shard_end();
        self.action(
            "shardEnded",
            b"{\"action\":\"shardEnded\"}\n",
            Checkpointer::Live,
        )
    }

    /// The lease checkpoint is SHARD_END.
    pub fn checkpointed_shard_end(&self) -> bool {
        self.lease.last.is_shard_end()
    }

    /// EOF on the child's stdin, as the daemon's `childProcessShutdownSequence` does; then its
    /// stdout is read to the end.
    pub fn close(&mut self) {
        drop(self.stdin.take());
        while let Ok(Some(_)) = self.stdout.next_line() {}
    }

    /// Writes `line` and reads the child's stdout until the status for `action`, serving
    /// checkpoint requests on the way.
    fn action(
        &mut self,
        action: &str,
        line: &[u8],
        checkpointer: Checkpointer,
    ) -> Result<(), ActionError> {
        self.write(line).map_err(|error| ActionError::WriteFailed {
            action: action.to_string(),
            error,
        })?;
        loop {
            let line = match self.stdout.next_line() {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => {
                    return Err(ActionError::Eof {
                        action: action.to_string(),
                    })
                }
            };
            match self.lease.react(action, checkpointer, &line) {
                Reaction::Skipped(_) | Reaction::Ignored(_) => self.skipped_lines += 1,
                Reaction::Status(Ok(())) => return Ok(()),
                Reaction::Status(Err(response_for)) => {
                    return Err(ActionError::StatusMismatch {
                        action: action.to_string(),
                        response_for,
                    })
                }
                Reaction::Checkpoint { outcome, reply, .. } => {
                    self.checkpoints += 1;
                    if outcome.error().is_some() {
                        self.rejected += 1;
                    }
                    let mut reply = reply.into_bytes();
                    reply.push(b'\n');
                    self.write(&reply)
                        .map_err(|error| ActionError::CheckpointReplyFailed {
                            action: action.to_string(),
                            error,
                        })?;
                }
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let stdin = self.stdin.as_mut().ok_or("stdin was closed")?;
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .map_err(|e| e.to_string())
    }
}
