//! Kinesis record → Kafka message: topic, key, partition, timestamp and headers.

use rdkafka::message::{Header, OwnedHeaders};

use crate::kafka::OutgoingMessage;

/// Header names of the Kinesis metadata added to every message (unless turned off).
pub const HEADER_SHARD_ID: &str = "kinesis.shardId";
pub const HEADER_SEQUENCE_NUMBER: &str = "kinesis.sequenceNumber";
pub const HEADER_SUB_SEQUENCE_NUMBER: &str = "kinesis.subSequenceNumber";
pub const HEADER_ARRIVAL_TIMESTAMP: &str = "kinesis.approximateArrivalTimestamp";

/// A decoded Kinesis record, as the processing stage sees it.
#[derive(Debug, Clone, Copy)]
pub struct KinesisRecord<'a> {
    pub shard_id: &'a str,
    /// The decoded payload; `None` when the daemon sent `"data":null`.
    pub data: Option<&'a [u8]>,
    pub partition_key: Option<&'a str>,
    pub sequence_number: Option<&'a str>,
    pub sub_sequence_number: i64,
    /// Epoch milliseconds.
    pub approximate_arrival_timestamp: Option<i64>,
}

/// The metadata headers of a record.
pub fn kinesis_headers(record: &KinesisRecord<'_>) -> OwnedHeaders {
    let mut digits = itoa_buffer();
    let mut headers = OwnedHeaders::new_with_capacity(4).insert(Header {
        key: HEADER_SHARD_ID,
        value: Some(record.shard_id),
    });
    if let Some(sequence_number) = record.sequence_number {
        headers = headers.insert(Header {
            key: HEADER_SEQUENCE_NUMBER,
            value: Some(sequence_number),
        });
    }
    headers = headers.insert(Header {
        key: HEADER_SUB_SEQUENCE_NUMBER,
        value: Some(format_i64(&mut digits, record.sub_sequence_number)),
    });
    if let Some(arrival) = record.approximate_arrival_timestamp {
        headers = headers.insert(Header {
            key: HEADER_ARRIVAL_TIMESTAMP,
            value: Some(format_i64(&mut digits, arrival)),
        });
    }
    headers
}

/// The default mapping: one message per record, to the configured topic, keyed by the
/// partition key, stamped with the arrival time, the payload unchanged.
pub fn replicate<'a>(
    record: &KinesisRecord<'a>,
    topic: &'a str,
    with_headers: bool,
) -> OutgoingMessage<'a> {
    OutgoingMessage {
        topic,
        key: record.partition_key.map(str::as_bytes),
        value: record.data,
        partition: None,
        timestamp: record.approximate_arrival_timestamp,
        headers: with_headers.then(|| kinesis_headers(record)),
    }
}

/// Formats integers without allocating (headers are built for every record).
fn itoa_buffer() -> [u8; 20] {
    [0; 20]
}

fn format_i64(buf: &mut [u8; 20], value: i64) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 20 bytes hold every i64 including its sign, so this write cannot fail.
    let _ = write!(cursor, "{value}");
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn headers_carry_the_kinesis_metadata() {
        let record = KinesisRecord {
            shard_id: "shardId-000000000001",
            data: Some(b"x"),
            partition_key: Some("k"),
            sequence_number: Some("49590338271490256608559692538361571095921575989136588898"),
            sub_sequence_number: 3,
            approximate_arrival_timestamp: Some(-1700000000123),
        };
        let headers = kinesis_headers(&record);
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                (HEADER_SHARD_ID.into(), "shardId-000000000001".into()),
                (
                    HEADER_SEQUENCE_NUMBER.into(),
                    "49590338271490256608559692538361571095921575989136588898".into()
                ),
                (HEADER_SUB_SEQUENCE_NUMBER.into(), "3".into()),
                (HEADER_ARRIVAL_TIMESTAMP.into(), "-1700000000123".into()),
            ]
        );
    }
}
