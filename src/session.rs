//! The conversation with the daemon: the read loop, dispatch, status replies, and the
//! checkpoint exchange.
//!
//! The daemon reads our stdout only while it waits for an answer, and answers a checkpoint
//! request before anything else, so the exchange is strictly synchronous: write a request,
//! read exactly the reply.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::RawFd;

use log::{debug, warn};

use crate::checkpoint::Position;
use crate::protocol::{
    parse_batch_tail, parse_message, parse_record, ArrayItem, DaemonMessage, LineReader,
    ProtocolWriter, ReadLine, Record, STREAMED_BATCH_PREFIX,
};

/// Why the processor must stop now. Each variant carries the one line that says so.
#[derive(Debug)]
pub enum Fatal {
    /// The daemon sent something this processor cannot trust (or stopped mid-line).
    Protocol(String),
    /// A record can never be delivered; nothing after it may be checkpointed.
    Delivery(String),
    /// stdin or stdout failed: the daemon is gone.
    Io(String),
    /// The daemon closed stdin while this child waited for Kafka inside an action: it is
    /// gone (it never closes stdin before the action is answered), so waiting on is useless.
    DaemonGone(String),
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fatal::Protocol(m) | Fatal::Delivery(m) | Fatal::Io(m) | Fatal::DaemonGone(m) => {
                f.write_str(m)
            }
        }
    }
}

fn io_fatal(what: &str, e: io::Error) -> Fatal {
    Fatal::Io(format!(
        "{what} failed ({e}); the daemon has gone away, exiting"
    ))
}

/// What a checkpoint request came back with.
#[derive(Debug, PartialEq, Eq)]
pub enum CheckpointResult {
    Done,
    /// The exception name the daemon reported.
    Failed(String),
}

/// The daemon's end of the pipes, as seen from a handler: it can answer and checkpoint.
pub struct Channel<R, W: Write> {
    reader: LineReader<R>,
    writer: ProtocolWriter<W>,
    reply: Vec<u8>,
    /// The file descriptor `reader` reads (stdin), to notice the daemon closing it while
    /// this child waits for Kafka and reads nothing.
    hangup_fd: Option<RawFd>,
}

impl<R: Read, W: Write> Channel<R, W> {
    /// Whether the daemon has closed its end of stdin. A zero-timeout poll: cheap enough
    /// for every slice of a wait, and it consumes nothing.
    pub fn daemon_gone(&self) -> bool {
        let Some(fd) = self.hangup_fd else {
            return false;
        };
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call; a zero timeout.
        let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
        ready > 0 && pollfd.revents & (libc::POLLHUP | libc::POLLERR) != 0
    }

    pub fn status(&mut self, response_for: &str) -> Result<(), Fatal> {
        self.writer
            .status(response_for)
            .map_err(|e| io_fatal("writing a status to the daemon", e))
    }

    /// Sends one checkpoint request and reads its reply. `None` checkpoints the largest
    /// permitted position (SHARD_END at shard end).
    pub fn checkpoint(&mut self, position: Option<&Position>) -> Result<CheckpointResult, Fatal> {
        self.writer
            .checkpoint(position.map(|p| (&*p.sequence_number, p.sub_sequence_number)))
            .map_err(|e| io_fatal("writing a checkpoint request to the daemon", e))?;
        loop {
            match self
                .reader
                .read_line(&mut self.reply)
                .map_err(|e| io_fatal("reading the checkpoint reply", e))?
            {
                ReadLine::Line if self.reply.is_empty() => continue,
                ReadLine::Line => {}
                ReadLine::Eof | ReadLine::EofInsideLine { .. } => {
                    return Err(Fatal::Io(
                        "the daemon closed stdin while a checkpoint was pending; exiting".into(),
                    ))
                }
            }
            return match parse_message(&self.reply) {
                Ok(DaemonMessage::Checkpoint(reply)) => Ok(match reply.error {
                    None => CheckpointResult::Done,
                    Some(error) => CheckpointResult::Failed(error),
                }),
                Ok(other) => Err(Fatal::Protocol(format!(
                    "the daemon sent {:?} where the reply to a checkpoint request belongs; exiting so that it restarts the shard from its last checkpoint",
                    other.action()
                ))),
                Err(e) => Err(Fatal::Protocol(format!(
                    "unreadable checkpoint reply from the daemon: {e}"
                ))),
            };
        }
    }
}

/// How the conversation ended.
#[derive(Debug)]
pub enum End {
    /// stdin closed between two messages: the normal end.
    Eof,
    Fatal(Fatal),
}

/// What the processor does with each message. `Replicator` is the real one.
///
/// A `processRecords` batch arrives as `begin_batch`, one `record` per record, and
/// `end_batch` (which answers it); every other message through `handle`.
pub trait Handler {
    fn handle<R: Read, W: Write>(
        &mut self,
        message: DaemonMessage<'_>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal>;

    /// `streamed`: the batch is being read record by record, so until `end_batch` no
    /// checkpoint may be requested (its reply would queue behind the rest of the line).
    fn begin_batch(&mut self, streamed: bool);

    fn record<R: Read, W: Write>(
        &mut self,
        record: &Record<'_>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal>;

    fn end_batch<R: Read, W: Write>(
        &mut self,
        millis_behind_latest: Option<i64>,
        channel: &mut Channel<R, W>,
    ) -> Result<(), Fatal>;
}

fn unreadable(e: impl fmt::Display) -> Fatal {
    Fatal::Protocol(format!(
        "unreadable message from the daemon, {e}; exiting without answering so that the daemon restarts the shard from its last checkpoint"
    ))
}

fn cut_short(bytes: usize) -> Fatal {
    Fatal::Protocol(format!(
        "stdin closed in the middle of a message ({bytes} bytes without a line end): the daemon stopped while writing; nothing of that message was answered"
    ))
}

/// Reads the daemon's messages and hands each to `handler` until stdin closes or a
/// handler fails.
pub struct Session<R, W: Write> {
    /// The current action's line (or, for a streamed batch, the current record). Kept apart
    /// from the channel so that a message can borrow from it while its handler reads
    /// checkpoint replies through the channel.
    line: Vec<u8>,
    /// Where the end of a streamed batch is put back together to be parsed.
    scratch: Vec<u8>,
    channel: Channel<R, W>,
}

impl<R: Read, W: Write> Session<R, W> {
    pub fn new(input: R, output: W) -> Self {
        Session {
            line: Vec::with_capacity(1 << 16),
            scratch: Vec::with_capacity(256),
            channel: Channel {
                reader: LineReader::new(input),
                writer: ProtocolWriter::new(output),
                reply: Vec::with_capacity(256),
                hangup_fd: None,
            },
        }
    }

    /// Watches `fd`, the descriptor `input` reads, for the daemon closing it during waits.
    pub fn watching_hangup(mut self, fd: RawFd) -> Self {
        self.channel.hangup_fd = Some(fd);
        self
    }

    pub fn run(&mut self, handler: &mut impl Handler) -> End {
        loop {
            match self.channel.reader.next_starts_with(STREAMED_BATCH_PREFIX) {
                Ok(true) => match self.stream_batch(handler) {
                    Ok(()) => continue,
                    Err(fatal) => return End::Fatal(fatal),
                },
                Ok(false) => {}
                Err(e) => return End::Fatal(io_fatal("reading stdin", e)),
            }
            match self.channel.reader.read_line(&mut self.line) {
                Ok(ReadLine::Line) => {}
                Ok(ReadLine::Eof) => return End::Eof,
                Ok(ReadLine::EofInsideLine { bytes }) => return End::Fatal(cut_short(bytes)),
                Err(e) => return End::Fatal(io_fatal("reading stdin", e)),
            }
            // The daemon never sends empty lines, but its reader skips them too.
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message = match parse_message(&self.line) {
                Ok(message) => message,
                Err(e) => return End::Fatal(unreadable(e)),
            };
            let result = match message {
                DaemonMessage::Checkpoint(reply) => {
                    // A reply with no request pending: nothing waits for it, so drop it.
                    warn!("ignoring a checkpoint reply that answers no request: {reply:?}");
                    Ok(())
                }
                DaemonMessage::Unknown { action } => {
                    // A newer daemon may add actions. Answering keeps the shard alive, and
                    // doing nothing else cannot lose a record: nothing is checkpointed.
                    warn!("unknown action {action:?} from the daemon; answering its status and doing nothing else");
                    self.channel.status(&action)
                }
                DaemonMessage::ProcessRecords {
                    records,
                    millis_behind_latest,
                } => {
                    debug!(
                        "action processRecords ({} records, read whole)",
                        records.len()
                    );
                    handler.begin_batch(false);
                    records
                        .iter()
                        .try_for_each(|record| handler.record(record, &mut self.channel))
                        .and_then(|()| handler.end_batch(millis_behind_latest, &mut self.channel))
                }
                other => {
                    debug!("action {}", other.action());
                    handler.handle(other, &mut self.channel)
                }
            };
            if let Err(fatal) = result {
                return End::Fatal(fatal);
            }
        }
    }

    /// A record Kafka refuses for good was found in the middle of a streamed batch. Reads
    /// the rest of the line (the daemon answers nothing before it), then lets the handler
    /// end the batch, which checkpoints up to the failed record and reports it.
    fn fail_mid_batch(&mut self, handler: &mut impl Handler, fatal: Fatal) -> Fatal {
        if !matches!(fatal, Fatal::Delivery(_)) {
            return fatal;
        }
        match self.channel.reader.read_line(&mut self.line) {
            Ok(ReadLine::Line) => match handler.end_batch(None, &mut self.channel) {
                Err(reported) => reported,
                Ok(()) => fatal,
            },
            _ => fatal,
        }
    }

    /// Reads a `processRecords` line record by record, handing each to `handler` as soon
    /// as it is read: memory stays at one record, whatever the batch.
    fn stream_batch(&mut self, handler: &mut impl Handler) -> Result<(), Fatal> {
        self.channel.reader.consume(STREAMED_BATCH_PREFIX.len());
        let mut bytes = STREAMED_BATCH_PREFIX.len();
        let mut count = 0usize;
        handler.begin_batch(true);
        loop {
            match self
                .channel
                .reader
                .next_array_object(&mut self.line)
                .map_err(|e| io_fatal("reading stdin", e))?
            {
                ArrayItem::Object => {
                    bytes += self.line.len();
                    count += 1;
                    let record = parse_record(&self.line).map_err(unreadable)?;
                    if let Err(fatal) = handler.record(&record, &mut self.channel) {
                        return Err(self.fail_mid_batch(handler, fatal));
                    }
                }
                ArrayItem::End => break,
                ArrayItem::Eof => return Err(cut_short(bytes + self.line.len())),
                ArrayItem::Unexpected(byte) => {
                    return Err(unreadable(format!(
                        "byte {:?} where a record or the end of the records belongs",
                        char::from(byte)
                    )))
                }
            }
        }
        match self
            .channel
            .reader
            .read_line(&mut self.line)
            .map_err(|e| io_fatal("reading stdin", e))?
        {
            ReadLine::Line => {}
            ReadLine::Eof | ReadLine::EofInsideLine { .. } => {
                return Err(cut_short(bytes + self.line.len()))
            }
        }
        let millis_behind_latest =
            parse_batch_tail(&self.line, &mut self.scratch).map_err(unreadable)?;
        debug!("action processRecords ({count} records, streamed)");
        handler.end_batch(millis_behind_latest, &mut self.channel)
    }
}
