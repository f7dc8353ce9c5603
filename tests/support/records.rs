//! Kinesis records as the daemon hands them to the child, and the `processRecords` lines that
//! carry them, in the daemon's field order or another ([`FieldOrder`]).

use base64::Engine;

use super::protocol::{json_opt_i64, json_opt_str, json_str, ExtSeq};

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
