//! The workload: records like a Kinesis shard's, and every `processRecords` line written
//! before the clock starts.

use crate::support::protocol::ExtSeq;
use crate::support::records::{process_records_line, TestRecord};

/// GetRecords returns at most 10 MiB per call: a batch of 10,000 records of 10 KB cannot
/// happen, so the batch is capped at what one call can return.
pub const GETRECORDS_MAX_BYTES: usize = 10 << 20;

pub const SHARD_ID: &str = "shardId-000000000000";

/// 44 digits; each record appends a 12-digit counter (a 56-digit sequence number).
pub const SEQUENCE_PREFIX: &str = "49590338271490256608559692538361571095921575";

pub const ARRIVAL_BASE_MS: i64 = 1_700_000_000_000;

pub const PARTITION_KEYS: usize = 1000;

pub const PAYLOAD_POOL: usize = 64;

/// Records per run: the same count for records up to 1 KB, the same bytes beyond.
pub fn records_for(size: usize, records: usize) -> usize {
    (records * 1000 / size.max(1000)).max(1)
}

/// The batch the double can actually send: at most what one GetRecords call returns.
pub fn effective_batch(batch: usize, size: usize) -> usize {
    batch
        .min(GETRECORDS_MAX_BYTES / size.max(1))
        .clamp(1, 10_000)
}

pub fn sequence_number(i: usize) -> String {
    format!("{SEQUENCE_PREFIX}{i:012}")
}

pub fn partition_key(i: usize) -> String {
    format!("pk-{}", i % PARTITION_KEYS)
}

pub fn arrival(i: usize) -> i64 {
    ARRIVAL_BASE_MS + (i / 10) as i64
}

/// Incompressible payloads (compression is off by default, but a broker could still care).
pub fn payload_pool(size: usize) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ size as u64;
    (0..PAYLOAD_POOL)
        .map(|_| {
            (0..size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect()
        })
        .collect()
}

pub struct Workload {
    pub size: usize,
    pub batch: usize,
    pub records: usize,
    /// Every `processRecords` line, newline included, exactly as the daemon writes it.
    pub lines: Vec<Vec<u8>>,
    /// The last record of each line (what `largestPermitted` becomes).
    pub last_sequence: Vec<ExtSeq>,
    /// Records in each line.
    pub counts: Vec<usize>,
}

/// Record `i` of the workload.
fn record(i: usize, payloads: &[Vec<u8>]) -> TestRecord {
    TestRecord {
        data: Some(payloads[i % PAYLOAD_POOL].clone()),
        partition_key: Some(partition_key(i)),
        sequence_number: sequence_number(i),
        sub_sequence_number: Some(0),
        arrival_ms: Some(arrival(i)),
    }
}

pub fn build_workload(size: usize, batch: usize, records: usize) -> Workload {
    let payloads = payload_pool(size);
    let mut lines = Vec::new();
    let mut last_sequence = Vec::new();
    let mut counts = Vec::new();
    let mut start = 0;
    while start < records {
        let end = (start + batch).min(records);
        let batch: Vec<TestRecord> = (start..end).map(|i| record(i, &payloads)).collect();
        let millis_behind = ((records - end) / 10) as i64;
        let mut line = process_records_line(&batch, Some(millis_behind)).into_bytes();
        line.push(b'\n');
        lines.push(line);
        last_sequence.push(batch[batch.len() - 1].ext_seq());
        counts.push(end - start);
        start = end;
    }
    Workload {
        size,
        batch,
        records,
        lines,
        last_sequence,
        counts,
    }
}
