//! A `processRecords` line read two ways must come out the same.
//!
//! The input is a line starting with `STREAMED_BATCH_PREFIX` (prepended when it does not),
//! up to its first `\n`, and whatever follows. It is read:
//! - record by record, exactly as `Session::stream_batch` does (`next_array_object`,
//!   `parse_record`, then `read_line` and `parse_batch_tail`), once in a single read and
//!   once in reads of varied sizes (every record boundary at every buffer offset);
//! - whole, as `Session::run` parses any other line (`parse_message`).
//!
//! Checked: nothing panics; when both accept the line, they yield the same records with the
//! same fields and the same `millisBehindLatest`; the streamed reader never consumes a byte
//! past the line's `\n` (what it leaves unconsumed is exactly what followed the line when it
//! accepts it, and never less than that when it refuses it).
#![no_main]

use kinesis_kafka_replicator::protocol::{
    parse_batch_tail, parse_message, parse_record, ArrayItem, DaemonMessage, LineReader, ReadLine,
    Record, STREAMED_BATCH_PREFIX,
};
use kinesis_kafka_replicator_fuzz::Chunks;
use libfuzzer_sys::fuzz_target;

/// A record's fields, owned, comparable.
type Fields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

#[derive(Debug, PartialEq)]
struct Batch {
    records: Vec<Fields>,
    millis_behind_latest: Option<i64>,
}

fn fields(r: &Record<'_>) -> Fields {
    (
        r.data.as_deref().map(str::to_owned),
        r.partition_key.as_deref().map(str::to_owned),
        r.sequence_number.as_deref().map(str::to_owned),
        r.sub_sequence_number,
        r.approximate_arrival_timestamp,
    )
}

/// The whole-line path: the line as `read_line` hands it over (terminator removed).
fn whole(line: &[u8]) -> Option<Batch> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match parse_message(line) {
        Ok(DaemonMessage::ProcessRecords {
            records,
            millis_behind_latest,
        }) => Some(Batch {
            records: records.iter().map(fields).collect(),
            millis_behind_latest,
        }),
        // The line starts with `{"action":"processRecords"`: no other action can come out.
        Ok(other) => panic!("a processRecords line parsed as {:?}", other.action()),
        Err(_) => None,
    }
}

/// The streamed path, step by step as `Session::stream_batch`; with what the reader has
/// left unconsumed when it stops.
fn streamed(chunks: Chunks<'_>) -> (Result<Batch, String>, Vec<u8>) {
    let mut reader = LineReader::new(chunks);
    assert!(
        reader.next_starts_with(STREAMED_BATCH_PREFIX).unwrap(),
        "the first read holds the prefix"
    );
    reader.consume(STREAMED_BATCH_PREFIX.len());
    let mut buf = Vec::new();
    let mut records = Vec::new();
    let result = loop {
        match reader.next_array_object(&mut buf).unwrap() {
            ArrayItem::Object => match parse_record(&buf) {
                Ok(record) => records.push(fields(&record)),
                Err(e) => break Err(e.to_string()),
            },
            ArrayItem::End => break Ok(()),
            other => break Err(format!("{other:?}")),
        }
    };
    let result = result.and_then(|()| match reader.read_line(&mut buf).unwrap() {
        ReadLine::Line => {
            let mut scratch = Vec::new();
            parse_batch_tail(&buf, &mut scratch)
                .map(|millis_behind_latest| Batch {
                    records,
                    millis_behind_latest,
                })
                .map_err(|e| e.to_string())
        }
        other => Err(format!("{other:?}")),
    });
    let (buffered, input) = reader.unconsumed();
    let mut left = buffered.to_vec();
    left.extend_from_slice(input.rest());
    (result, left)
}

fuzz_target!(|input: &[u8]| {
    let data = if input.starts_with(STREAMED_BATCH_PREFIX) {
        input.to_vec()
    } else {
        [STREAMED_BATCH_PREFIX, input].concat()
    };
    let (line, after) = match memchr::memchr(b'\n', &data) {
        Some(end) => (&data[..end], &data[end + 1..]),
        None => (&data[..], &[][..]),
    };
    let whole = whole(line);
    for chunks in [
        Chunks::whole(&data),
        Chunks::new(&data, STREAMED_BATCH_PREFIX.len(), 300),
    ] {
        let (streamed, left) = streamed(chunks);
        assert!(
            left.len() >= after.len(),
            "the streamed reader read {} bytes past the end of the line ({streamed:?})",
            after.len() - left.len()
        );
        assert_eq!(&data[data.len() - left.len()..], &left[..]);
        if let Ok(batch) = &streamed {
            assert_eq!(
                left, after,
                "the streamed reader stopped short of the line's end"
            );
            if let Some(whole) = &whole {
                assert_eq!(batch, whole, "streamed and whole-line parsing disagree");
            }
        }
    }
});
