//! The MultiLang wire protocol: reading the daemon's lines and writing ours.
//!
//! Nothing here knows what the processor does with a message. Parsing is zero-copy where
//! it can be: a `processRecords` line can be 14 MB, so record fields borrow from the line
//! buffer, which is reused from one line to the next.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};

use serde::Deserialize;

/// A message from the daemon (multilang-protocol.md §3).
#[derive(Debug)]
pub enum DaemonMessage<'a> {
    Initialize {
        shard_id: Option<Cow<'a, str>>,
        sequence_number: Option<Cow<'a, str>>,
        sub_sequence_number: Option<i64>,
    },
    ProcessRecords {
        records: Vec<Record<'a>>,
        millis_behind_latest: Option<i64>,
    },
    ShutdownRequested,
    LeaseLost,
    ShardEnded,
    /// KCL 1.x only: `TERMINATE` (shard end) or `ZOMBIE` (lease lost).
    Shutdown {
        reason: Option<Cow<'a, str>>,
    },
    /// The reply to a checkpoint request of ours.
    Checkpoint(CheckpointReply),
    /// A well-formed message with an action this processor does not know.
    Unknown {
        action: String,
    },
}

impl DaemonMessage<'_> {
    /// The action name, as `responseFor` must echo it.
    pub fn action(&self) -> &str {
        match self {
            DaemonMessage::Initialize { .. } => "initialize",
            DaemonMessage::ProcessRecords { .. } => "processRecords",
            DaemonMessage::ShutdownRequested => "shutdownRequested",
            DaemonMessage::LeaseLost => "leaseLost",
            DaemonMessage::ShardEnded => "shardEnded",
            DaemonMessage::Shutdown { .. } => "shutdown",
            DaemonMessage::Checkpoint(_) => "checkpoint",
            DaemonMessage::Unknown { action } => action,
        }
    }
}

/// One Kinesis record as the daemon sends it. Every field may be null.
#[derive(Debug, Deserialize)]
pub struct Record<'a> {
    /// Standard padded base64.
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    pub data: Option<Cow<'a, str>>,
    #[serde(
        rename = "partitionKey",
        borrow,
        default,
        deserialize_with = "borrowed_text"
    )]
    pub partition_key: Option<Cow<'a, str>>,
    #[serde(
        rename = "sequenceNumber",
        borrow,
        default,
        deserialize_with = "borrowed_text"
    )]
    pub sequence_number: Option<Cow<'a, str>>,
    #[serde(rename = "subSequenceNumber", default)]
    pub sub_sequence_number: Option<i64>,
    /// Epoch milliseconds.
    #[serde(rename = "approximateArrivalTimestamp", default)]
    pub approximate_arrival_timestamp: Option<i64>,
}

/// The daemon's answer to a checkpoint request. It echoes what we sent, not what it stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReply {
    pub sequence_number: Option<String>,
    pub sub_sequence_number: Option<i64>,
    /// The Java exception's simple class name; `None` on success.
    pub error: Option<String>,
}

/// Every field of every message type in one flat struct, so a line is parsed in one pass.
/// serde's internally tagged enums buffer the whole object first, which would copy every
/// record of a 14 MB batch. Unknown fields are ignored, as the daemon may add some.
#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(
        rename = "shardId",
        borrow,
        default,
        deserialize_with = "borrowed_text"
    )]
    shard_id: Option<Cow<'a, str>>,
    #[serde(
        rename = "sequenceNumber",
        borrow,
        default,
        deserialize_with = "borrowed_text"
    )]
    sequence_number: Option<Cow<'a, str>>,
    #[serde(rename = "subSequenceNumber", default)]
    sub_sequence_number: Option<i64>,
    #[serde(borrow, default, deserialize_with = "records_presized")]
    records: Option<Vec<Record<'a>>>,
    #[serde(rename = "millisBehindLatest", default)]
    millis_behind_latest: Option<i64>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "borrowed_text")]
    reason: Option<Cow<'a, str>>,
}

/// A nullable string that borrows from the line when it has no escapes. serde borrows a
/// `Cow<str>` field only when it is not nested, so `Option<Cow<str>>` needs this.
fn borrowed_text<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'a>>::deserialize(deserializer)?.map(|t| t.0))
}

thread_local! {
    /// The length of the previous batch. Batches of a shard are alike in size, so the next
    /// one's vector starts at that capacity instead of doubling its way up (and copying)
    /// from zero: a measurable share of the parse for batches of 10,000 records.
    static LAST_BATCH_LEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn records_presized<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Record<'a>>>, D::Error> {
    struct Records<'a>(std::marker::PhantomData<&'a ()>);

    impl<'de: 'a, 'a> serde::de::Visitor<'de> for Records<'a> {
        type Value = Option<Vec<Record<'a>>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of records or null")
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }

        fn visit_seq<S: serde::de::SeqAccess<'de>>(
            self,
            mut seq: S,
        ) -> Result<Self::Value, S::Error> {
            let mut records = Vec::with_capacity(LAST_BATCH_LEN.get().min(10_000));
            while let Some(record) = seq.next_element()? {
                records.push(record);
            }
            LAST_BATCH_LEN.set(records.len());
            Ok(Some(records))
        }
    }

    deserializer.deserialize_option(Records(std::marker::PhantomData))
}

/// Why a line from the daemon could not be understood.
#[derive(Debug)]
pub struct ParseError(String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// Parses one line (without its line terminator).
pub fn parse_message(line: &[u8]) -> Result<DaemonMessage<'_>, ParseError> {
    let raw: RawMessage<'_> = serde_json::from_slice(line)
        .map_err(|e| ParseError(format!("not a MultiLang message ({e}): {}", excerpt(line))))?;
    Ok(match raw.action.as_ref() {
        "initialize" => DaemonMessage::Initialize {
            shard_id: raw.shard_id,
            sequence_number: raw.sequence_number,
            sub_sequence_number: raw.sub_sequence_number,
        },
        "processRecords" => DaemonMessage::ProcessRecords {
            // A null or absent list is an empty batch: nothing to replicate, and the
            // daemon still waits for a status.
            records: raw.records.unwrap_or_default(),
            millis_behind_latest: raw.millis_behind_latest,
        },
        "shutdownRequested" => DaemonMessage::ShutdownRequested,
        "leaseLost" => DaemonMessage::LeaseLost,
        "shardEnded" => DaemonMessage::ShardEnded,
        "shutdown" => DaemonMessage::Shutdown { reason: raw.reason },
        "checkpoint" => DaemonMessage::Checkpoint(CheckpointReply {
            sequence_number: raw.sequence_number.map(Cow::into_owned),
            sub_sequence_number: raw.sub_sequence_number,
            error: raw.error.map(Cow::into_owned),
        }),
        other => DaemonMessage::Unknown {
            action: other.to_owned(),
        },
    })
}

/// The start of a line, for error messages: enough to recognise it, never 14 MB.
fn excerpt(line: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&line[..line.len().min(MAX)]);
    if line.len() > MAX {
        format!("{text}... ({} bytes)", line.len())
    } else {
        text.into_owned()
    }
}

/// What reading the next line produced.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadLine {
    /// A complete line is in the buffer (terminator removed).
    Line,
    /// The daemon closed stdin between two lines: the normal end of a child.
    Eof,
    /// The daemon closed stdin in the middle of a line: it died while writing.
    EofInsideLine { bytes: usize },
}

/// Reads the daemon's lines into a caller's buffer, which the caller reuses, so steady
/// state allocates nothing per line. Lines may be of any length.
pub struct LineReader<R> {
    input: BufReader<R>,
}

impl<R: Read> LineReader<R> {
    pub fn new(input: R) -> Self {
        LineReader {
            // Large batches arrive as one line of megabytes; a big buffer means fewer reads.
            input: BufReader::with_capacity(1 << 20, input),
        }
    }

    /// Reads the next line into `buf`, without its terminator (`\n` or `\r\n`).
    pub fn read_line(&mut self, buf: &mut Vec<u8>) -> io::Result<ReadLine> {
        buf.clear();
        let n = self.input.read_until(b'\n', buf)?;
        if n == 0 {
            return Ok(ReadLine::Eof);
        }
        if buf.last() != Some(&b'\n') {
            return Ok(ReadLine::EofInsideLine { bytes: n });
        }
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        Ok(ReadLine::Line)
    }

    /// Whether the next line starts with `prefix`, without consuming anything. Answers
    /// false (so the caller reads the line whole) in the rare case where fewer bytes than
    /// the prefix are buffered and those match: a buffered reader cannot read more
    /// without consuming.
    pub fn next_starts_with(&mut self, prefix: &[u8]) -> io::Result<bool> {
        let available = self.input.fill_buf()?;
        Ok(available.len() >= prefix.len() && available.starts_with(prefix))
    }

    pub fn consume(&mut self, n: usize) {
        self.input.consume(n);
    }

    /// For the fuzz targets (`fuzz/`) only, not part of the API: what has not been consumed
    /// yet, as the bytes already read into the buffer and the input itself.
    #[doc(hidden)]
    pub fn unconsumed(&self) -> (&[u8], &R) {
        (self.input.buffer(), self.input.get_ref())
    }

    /// Reads the next object of a JSON array whose opening `[` is already consumed, into
    /// `buf`; skips the commas and white space between objects, and consumes the closing
    /// `]`. Objects are delimited by tracking strings, escapes and nesting, which is all
    /// JSON needs for that; the object itself is parsed by the caller.
    pub fn next_array_object(&mut self, buf: &mut Vec<u8>) -> io::Result<ArrayItem> {
        buf.clear();
        // Between elements.
        loop {
            let available = self.input.fill_buf()?;
            let Some(&byte) = available.first() else {
                return Ok(ArrayItem::Eof);
            };
            match byte {
                b' ' | b'\t' | b'\r' | b',' => self.input.consume(1),
                b']' => {
                    self.input.consume(1);
                    return Ok(ArrayItem::End);
                }
                b'{' => break,
                other => return Ok(ArrayItem::Unexpected(other)),
            }
        }
        // The object, possibly across several buffer fills. Inside strings (nearly all of
        // a record: its base64 data) the scan jumps from quote or backslash to the next.
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        loop {
            let available = self.input.fill_buf()?;
            if available.is_empty() {
                return Ok(ArrayItem::Eof);
            }
            let mut i = 0;
            let mut end = None;
            while i < available.len() {
                if escaped {
                    if available[i] == b'\n' {
                        return Ok(ArrayItem::Unexpected(b'\n'));
                    }
                    escaped = false;
                    i += 1;
                    continue;
                }
                if in_string {
                    match memchr::memchr3(b'"', b'\\', b'\n', &available[i..]) {
                        None => i = available.len(),
                        Some(offset) => {
                            let at = i + offset;
                            match available[at] {
                                b'\\' => escaped = true,
                                b'"' => in_string = false,
                                _ => return Ok(ArrayItem::Unexpected(b'\n')),
                            }
                            i = at + 1;
                        }
                    }
                    continue;
                }
                match available[i] {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    // A line end inside an object: the line is cut short.
                    b'\n' => return Ok(ArrayItem::Unexpected(b'\n')),
                    _ => {}
                }
                i += 1;
            }
            let taken = end.unwrap_or(available.len());
            buf.extend_from_slice(&available[..taken]);
            self.input.consume(taken);
            if end.is_some() {
                return Ok(ArrayItem::Object);
            }
        }
    }
}

/// What [`LineReader::next_array_object`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ArrayItem {
    /// An object is in the buffer.
    Object,
    /// The array's closing `]` (consumed).
    End,
    /// stdin closed inside the array.
    Eof,
    /// A byte that cannot come next in an array of objects.
    Unexpected(u8),
}

/// The start of every `processRecords` line the daemon writes (Jackson writes `action`
/// first, then the fields in declaration order). A line that starts this way is read
/// record by record instead of whole: a batch can be 14 MB, and holding it whole would
/// double a child's memory.
pub const STREAMED_BATCH_PREFIX: &[u8] = b"{\"action\":\"processRecords\",\"records\":[";

/// Parses one record (an element of a streamed batch).
pub fn parse_record(bytes: &[u8]) -> Result<Record<'_>, ParseError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ParseError(format!("not a record ({e}): {}", excerpt(bytes))))
}

/// Parses what follows a streamed batch's records (`,"millisBehindLatest":N}` and any
/// other fields) as the whole message would be parsed, with the records left out.
pub fn parse_batch_tail(tail: &[u8], scratch: &mut Vec<u8>) -> Result<Option<i64>, ParseError> {
    scratch.clear();
    scratch.extend_from_slice(STREAMED_BATCH_PREFIX);
    scratch.push(b']');
    scratch.extend_from_slice(tail);
    match parse_message(scratch)? {
        DaemonMessage::ProcessRecords {
            millis_behind_latest,
            ..
        } => Ok(millis_behind_latest),
        other => Err(ParseError(format!(
            "a processRecords line that parses as {:?}",
            other.action()
        ))),
    }
}

/// Writes protocol lines. Each line is flushed at once: the daemon is waiting for it.
pub struct ProtocolWriter<W: Write> {
    out: W,
    line: Vec<u8>,
}

impl<W: Write> ProtocolWriter<W> {
    pub fn new(out: W) -> Self {
        ProtocolWriter {
            out,
            line: Vec::with_capacity(256),
        }
    }

    /// `{"action":"status","responseFor":"<action>"}`, exactly: the daemon ignores a status
    /// line with any other field and would wait forever.
    pub fn status(&mut self, response_for: &str) -> io::Result<()> {
        self.line.clear();
        self.line
            .extend_from_slice(b"{\"action\":\"status\",\"responseFor\":");
        serde_json::to_writer(&mut self.line, response_for)?;
        self.line.extend_from_slice(b"}\n");
        self.send()
    }

    /// A checkpoint request. `None` asks for the largest permitted position, which is
    /// SHARD_END during `shardEnded`.
    pub fn checkpoint(&mut self, position: Option<(&str, i64)>) -> io::Result<()> {
        self.line.clear();
        self.line
            .extend_from_slice(b"{\"action\":\"checkpoint\",\"sequenceNumber\":");
        match position {
            Some((sequence_number, sub_sequence_number)) => {
                serde_json::to_writer(&mut self.line, sequence_number)?;
                self.line.extend_from_slice(b",\"subSequenceNumber\":");
                serde_json::to_writer(&mut self.line, &sub_sequence_number)?;
            }
            None => self
                .line
                .extend_from_slice(b"null,\"subSequenceNumber\":null"),
        }
        self.line.extend_from_slice(b"}\n");
        self.send()
    }

    fn send(&mut self) -> io::Result<()> {
        self.out.write_all(&self.line)?;
        self.out.flush()
    }
}

/// Takes stdout away from everything but the protocol.
///
/// The protocol gets a private duplicate of file descriptor 1, and descriptor 1 itself is
/// pointed at stderr. After this, whatever else writes to "stdout" (librdkafka, a panic
/// message, a stray print in a dependency) lands on stderr, where the daemon logs it,
/// instead of corrupting the conversation.
pub fn claim_stdout() -> io::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain descriptor calls on 0-2, checked for errors; the new descriptor is
    // owned by the returned File and by nothing else.
    unsafe {
        let protocol_fd = libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, 3);
        if protocol_fd < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) < 0 {
            let err = io::Error::last_os_error();
            libc::close(protocol_fd);
            return Err(err);
        }
        Ok(File::from_raw_fd(protocol_fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initialize_with_sentinel_and_nulls() {
        let msg = parse_message(
            br#"{"action":"initialize","shardId":"shardId-000000000007","sequenceNumber":"TRIM_HORIZON","subSequenceNumber":null}"#,
        )
        .unwrap();
        match msg {
            DaemonMessage::Initialize {
                shard_id,
                sequence_number,
                sub_sequence_number,
            } => {
                assert_eq!(shard_id.as_deref(), Some("shardId-000000000007"));
                assert_eq!(sequence_number.as_deref(), Some("TRIM_HORIZON"));
                assert_eq!(sub_sequence_number, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_records_borrowing_from_the_line() {
        let line = br#"{"action":"processRecords","records":[{"data":"aGVsbG8=","partitionKey":"pk-1","sequenceNumber":"49590338271490256608559692538361571095921575989136588898","approximateArrivalTimestamp":1700000000123,"subSequenceNumber":0,"action":"record"},{"data":null,"partitionKey":null,"sequenceNumber":"49590338271490256608559692538361571095921575989136588899","approximateArrivalTimestamp":null,"subSequenceNumber":null,"action":"record","extra":[1,2]}],"millisBehindLatest":null,"unknownField":true}"#;
        let DaemonMessage::ProcessRecords {
            records,
            millis_behind_latest,
        } = parse_message(line).unwrap()
        else {
            panic!("not processRecords")
        };
        assert_eq!(millis_behind_latest, None);
        assert_eq!(records.len(), 2);
        assert!(matches!(records[0].data, Some(Cow::Borrowed("aGVsbG8="))));
        assert_eq!(
            records[0].approximate_arrival_timestamp,
            Some(1700000000123)
        );
        assert_eq!(records[1].data, None);
        assert_eq!(records[1].partition_key, None);
        assert_eq!(records[1].sub_sequence_number, None);
    }

    #[test]
    fn escaped_partition_keys_are_unescaped() {
        let line = "{\"action\":\"processRecords\",\"records\":[{\"data\":\"\",\"partitionKey\":\"a\\\"b\\\\c ключ\",\"sequenceNumber\":\"1\",\"subSequenceNumber\":0}],\"millisBehindLatest\":0}";
        let DaemonMessage::ProcessRecords { records, .. } = parse_message(line.as_bytes()).unwrap()
        else {
            panic!("not processRecords")
        };
        assert_eq!(records[0].partition_key.as_deref(), Some("a\"b\\c ключ"));
    }

    #[test]
    fn checkpoint_reply_keeps_the_error_name() {
        let msg = parse_message(br#"{"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null,"error":"InvalidStateException"}"#).unwrap();
        assert_eq!(
            match msg {
                DaemonMessage::Checkpoint(reply) => reply,
                other => panic!("unexpected {other:?}"),
            },
            CheckpointReply {
                sequence_number: None,
                sub_sequence_number: None,
                error: Some("InvalidStateException".into())
            }
        );
    }

    #[test]
    fn kcl1_shutdown_and_unknown_actions() {
        let msg = parse_message(br#"{"action":"shutdown","reason":"TERMINATE"}"#).unwrap();
        assert!(matches!(msg, DaemonMessage::Shutdown { reason: Some(r) } if r == "TERMINATE"));
        let msg = parse_message(br#"{"action":"somethingNew","x":1}"#).unwrap();
        assert_eq!(msg.action(), "somethingNew");
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in [
            &b"not json"[..],
            b"{}",
            b"{\"action\":7}",
            b"{\"action\":\"processRecords\",\"records\":{}}",
            b"",
        ] {
            assert!(
                parse_message(line).is_err(),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn reader_distinguishes_eof_between_and_inside_lines() {
        let mut buf = Vec::new();
        let mut reader = LineReader::new(&b"{\"a\":1}\r\n\nlast"[..]);
        assert_eq!(reader.read_line(&mut buf).unwrap(), ReadLine::Line);
        assert_eq!(buf, b"{\"a\":1}");
        assert_eq!(reader.read_line(&mut buf).unwrap(), ReadLine::Line);
        assert_eq!(buf, b"");
        assert_eq!(
            reader.read_line(&mut buf).unwrap(),
            ReadLine::EofInsideLine { bytes: 4 }
        );
        let mut reader = LineReader::new(&b"x\n"[..]);
        assert_eq!(reader.read_line(&mut buf).unwrap(), ReadLine::Line);
        assert_eq!(reader.read_line(&mut buf).unwrap(), ReadLine::Eof);
    }

    /// A reader that returns at most `chunk` bytes per read: every buffer boundary.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn stream(line: &[u8], chunk: usize) -> (Vec<String>, Result<Option<i64>, String>) {
        let mut reader = LineReader {
            input: BufReader::with_capacity(chunk.max(1), Trickle { data: line, chunk }),
        };
        let mut buf = Vec::new();
        let mut keys = Vec::new();
        // With a tiny buffer the prefix check may say no: then consume it by hand.
        let mut prefix = vec![0u8; STREAMED_BATCH_PREFIX.len()];
        reader.input.read_exact(&mut prefix).unwrap();
        assert_eq!(prefix, STREAMED_BATCH_PREFIX);
        loop {
            match reader.next_array_object(&mut buf).unwrap() {
                ArrayItem::Object => {
                    let record = parse_record(&buf).unwrap();
                    keys.push(record.partition_key.unwrap().into_owned());
                }
                ArrayItem::End => break,
                other => return (keys, Err(format!("{other:?}"))),
            }
        }
        assert_eq!(reader.read_line(&mut buf).unwrap(), ReadLine::Line);
        let mut scratch = Vec::new();
        let tail = parse_batch_tail(&buf, &mut scratch).map_err(|e| e.to_string());
        (keys, tail)
    }

    #[test]
    fn a_streamed_batch_yields_every_record_whatever_the_read_sizes() {
        let line = concat!(
            r#"{"action":"processRecords","records":["#,
            r#"{"data":"aGk=","partitionKey":"brace } and [ in a key","sequenceNumber":"1","subSequenceNumber":0,"action":"record"},"#,
            r#"{"data":"","partitionKey":"quote \" backslash \\ end\\","sequenceNumber":"2","subSequenceNumber":0,"action":"record","extra":{"nested":[1,{"a":"}"}]}},"#,
            r#"{"data":null,"partitionKey":"ключ 🔑","sequenceNumber":"3","subSequenceNumber":null,"action":"record"}"#,
            r#"],"millisBehindLatest":42}"#,
            "
"
        );
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let (keys, tail) = stream(line.as_bytes(), chunk);
            assert_eq!(
                keys,
                vec![
                    "brace } and [ in a key",
                    "quote \" backslash \\ end\\",
                    "ключ 🔑"
                ],
                "chunk {chunk}"
            );
            assert_eq!(tail, Ok(Some(42)), "chunk {chunk}");
        }
    }

    /// Streamed and whole-line parsing agree on random batches whose keys are full of what
    /// the boundary scan must get right (quotes, backslashes, braces, brackets, non-ASCII,
    /// control characters), at every read size.
    #[test]
    fn streamed_and_whole_line_parsing_agree_on_random_batches() {
        const ALPHABET: [&str; 12] = [
            "a", "\"", "\\", "{", "}", "[", "]", ",", ":", "é", "🔑", "\n",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for round in 0..40 {
            let count = next(30) as usize;
            let records: Vec<serde_json::Value> = (0..count)
                .map(|i| {
                    let key: String = (0..next(12)).map(|_| ALPHABET[next(12) as usize]).collect();
                    serde_json::json!({
                        "data": if next(5) == 0 { serde_json::Value::Null } else { "aGVsbG8=".into() },
                        "partitionKey": key,
                        "sequenceNumber": format!("{}", 1000 + i),
                        "approximateArrivalTimestamp": 1_700_000_000_000u64 + i as u64,
                        "subSequenceNumber": next(3),
                        "action": "record",
                    })
                })
                .collect();
            // In the daemon's field order (serde_json's own map would sort the keys).
            let mut line = STREAMED_BATCH_PREFIX.to_vec();
            for (i, record) in records.iter().enumerate() {
                if i > 0 {
                    line.push(b',');
                }
                line.extend(serde_json::to_vec(record).unwrap());
            }
            line.extend(format!("],\"millisBehindLatest\":{round}}}").bytes());
            let whole: Vec<Option<String>> = match parse_message(&line).unwrap() {
                DaemonMessage::ProcessRecords { records, .. } => records
                    .iter()
                    .map(|r| r.partition_key.as_deref().map(str::to_owned))
                    .collect(),
                other => panic!("{other:?}"),
            };
            line.push(b'\n');
            for chunk in [1, 5, 17, 256] {
                let (streamed, tail) = stream(&line, chunk);
                let streamed: Vec<Option<String>> = streamed.into_iter().map(Some).collect();
                assert_eq!(streamed, whole, "round {round}, chunk {chunk}");
                assert_eq!(tail, Ok(Some(round)), "round {round}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn a_streamed_batch_cut_short_or_malformed_is_reported() {
        let cut = br#"{"action":"processRecords","records":[{"data":"aGk=","partitionKey":"k""#;
        assert_eq!(stream(cut, 5).1, Err("Eof".into()));
        let bad = b"{\"action\":\"processRecords\",\"records\":[7]}\n";
        assert_eq!(stream(bad, 5).1, Err("Unexpected(55)".into()));
        let empty = b"{\"action\":\"processRecords\",\"records\":[],\"millisBehindLatest\":null}\n";
        assert_eq!(stream(empty, 3), (vec![], Ok(None)));
    }

    /// Found by the protocol_batch fuzz target: a raw newline inside a string (which Jackson
    /// never writes) made the reader run past the end of the line, into the next messages or,
    /// on a pipe, into a wait for bytes the daemon never sends.
    #[test]
    fn a_raw_newline_inside_a_string_ends_the_streamed_batch_as_malformed() {
        for line in [
            &b"{\"action\":\"processRecords\",\"records\":[{\"\n8\n"[..],
            &b"{\"action\":\"processRecords\",\"records\":[{\"k\\\n\"}]}\n{}\n"[..],
        ] {
            for chunk in [1, 3, 64] {
                assert_eq!(
                    stream(line, chunk).1,
                    Err("Unexpected(10)".into()),
                    "{line:?}"
                );
            }
        }
    }

    #[test]
    fn the_prefix_check_does_not_consume() {
        let line = b"{\"action\":\"processRecords\",\"records\":[],\"millisBehindLatest\":1}\n";
        let mut reader = LineReader::new(&line[..]);
        assert!(reader.next_starts_with(STREAMED_BATCH_PREFIX).unwrap());
        let mut buf = Vec::new();
        assert_eq!(reader.read_line(&mut buf).unwrap(), ReadLine::Line);
        assert_eq!(buf, &line[..line.len() - 1]);
        let mut other = LineReader::new(&b"{\"action\":\"leaseLost\"}\n"[..]);
        assert!(!other.next_starts_with(STREAMED_BATCH_PREFIX).unwrap());
    }

    #[test]
    fn writes_exact_status_and_checkpoint_lines() {
        let mut out = Vec::new();
        let mut writer = ProtocolWriter::new(&mut out);
        writer.status("processRecords").unwrap();
        writer
            .checkpoint(Some((
                "49590338271490256608559692538361571095921575989136588899",
                2,
            )))
            .unwrap();
        writer.checkpoint(None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"action\":\"status\",\"responseFor\":\"processRecords\"}\n\
             {\"action\":\"checkpoint\",\"sequenceNumber\":\"49590338271490256608559692538361571095921575989136588899\",\"subSequenceNumber\":2}\n\
             {\"action\":\"checkpoint\",\"sequenceNumber\":null,\"subSequenceNumber\":null}\n"
        );
    }
}
