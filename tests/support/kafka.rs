//! The tests' Kafka (librdkafka's mock cluster, started by [`super::broker`]) and read-back
//! assertions.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::broker::{start_mock, Cluster};
use super::daemon::{ExtSeq, TestRecord};

pub const HDR_SHARD: &str = "kinesis.shardId";
pub const HDR_SEQ: &str = "kinesis.sequenceNumber";
pub const HDR_SUB: &str = "kinesis.subSequenceNumber";
pub const HDR_ARRIVAL: &str = "kinesis.approximateArrivalTimestamp";

/// A mock cluster with one topic. Broker ids are 1..=brokers.
pub struct Kafka {
    pub cluster: Cluster,
    pub topic: String,
    pub partitions: i32,
}

impl Kafka {
    pub fn start(brokers: i32, topic: &str, partitions: i32) -> Kafka {
        Kafka {
            cluster: start_mock(brokers, topic, partitions).expect("start the mock cluster"),
            topic: topic.to_string(),
            partitions,
        }
    }

    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Make partition `p` led by broker `(p % brokers) + 1`, so that taking one broker down
    /// stalls a known set of partitions.
    pub fn spread_leaders(&self, brokers: i32) {
        for p in 0..self.partitions {
            self.cluster
                .partition_leader(&self.topic, p, Some(p % brokers + 1))
                .expect("set partition leader");
        }
    }

    /// Everything in the topic, waiting until at least `expected` messages were read.
    pub fn read(&self, expected: usize, timeout: Duration) -> Vec<ReadMessage> {
        read_topic(&self.bootstrap(), &self.topic, expected, timeout)
    }
}

/// One consumed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

impl ReadMessage {
    /// The first header called `name`, as UTF-8.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The Kinesis position from the headers.
    pub fn position(&self) -> Option<ExtSeq> {
        let seq = self.header(HDR_SEQ)?;
        let sub = self.header(HDR_SUB)?.parse().ok()?;
        Some(ExtSeq::new(seq, sub))
    }
}

/// Read `topic` from the beginning of every partition with a `BaseConsumer` (no group
/// management), until at least `expected` messages were read and then every partition was read
/// up to the high watermark it had at that moment, or `timeout` passes. Sorted by
/// (partition, offset).
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<ReadMessage> {
    let client_config = || {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap)
            .set("group.id", format!("test-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50");
        c
    };
    let consumer: BaseConsumer = client_config().create().expect("create the test consumer");
    // Watermark queries go through their own client: on the consuming one they queue behind
    // the long-polling fetches and slow consumption to a crawl.
    let watermarks: BaseConsumer = client_config().create().expect("create the test client");
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        let metadata = watermarks
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("fetch metadata");
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if count > 0 {
            break count as i32;
        }
        assert!(Instant::now() < deadline, "topic {topic} has no partitions");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("add partition");
    }
    consumer.assign(&assignment).expect("assign partitions");

    let mut out = Vec::new();
    let mut next_offset: HashMap<i32, i64> = HashMap::new();
    let mut highs: Option<Vec<i64>> = None;
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            next_offset.insert(m.partition(), m.offset() + 1);
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            out.push(ReadMessage {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
                timestamp: m.timestamp().to_millis(),
            });
        }
        if out.len() < expected {
            continue;
        }
        if highs.is_none() {
            highs = (0..partitions)
                .map(|p| {
                    watermarks
                        .fetch_watermarks(topic, p, Duration::from_secs(5))
                        .map(|(_, high)| high)
                })
                .collect::<Result<Vec<i64>, _>>()
                .ok();
        }
        if let Some(highs) = &highs {
            let caught_up = highs
                .iter()
                .enumerate()
                .all(|(p, high)| next_offset.get(&(p as i32)).copied().unwrap_or(0) >= *high);
            if caught_up {
                break;
            }
        }
    }
    out.sort_by_key(|m| (m.partition, m.offset));
    out
}

fn describe(r: &TestRecord) -> String {
    format!("{} (key {:?})", r.ext_seq(), r.partition_key)
}

/// Every record is in `messages`, found by its shard/sequence/sub-sequence headers, with the
/// right value, key, timestamp and headers.
pub fn assert_delivered(messages: &[ReadMessage], shard: &str, records: &[TestRecord]) {
    let by_position: HashMap<ExtSeq, &ReadMessage> = messages
        .iter()
        .filter(|m| m.header(HDR_SHARD).as_deref() == Some(shard))
        .filter_map(|m| m.position().map(|p| (p, m)))
        .collect();
    let mut missing = Vec::new();
    for record in records {
        let Some(m) = by_position.get(&record.ext_seq()) else {
            missing.push(describe(record));
            continue;
        };
        assert_eq!(m.value, record.data, "value of {}", describe(record));
        assert_eq!(
            m.key,
            record.partition_key.as_ref().map(|k| k.as_bytes().to_vec()),
            "key of {}",
            describe(record)
        );
        if let Some(arrival) = record.arrival_ms {
            assert_eq!(
                m.timestamp,
                Some(arrival),
                "timestamp of {}",
                describe(record)
            );
        }
        assert_eq!(
            m.header(HDR_ARRIVAL),
            record.arrival_ms.map(|a| a.to_string()),
            "{HDR_ARRIVAL} header of {}",
            describe(record)
        );
    }
    assert!(
        missing.is_empty(),
        "{} of {} records missing from Kafka ({} messages read), first: {:?}",
        missing.len(),
        records.len(),
        messages.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Every record is in `messages`, found by value (for runs with `records.headers: false`).
pub fn assert_delivered_by_value(messages: &[ReadMessage], records: &[TestRecord]) {
    let values: HashSet<Option<&[u8]>> = messages.iter().map(|m| m.value.as_deref()).collect();
    let missing: Vec<String> = records
        .iter()
        .filter(|r| !values.contains(&r.data.as_deref()))
        .map(describe)
        .collect();
    assert!(
        missing.is_empty(),
        "{} records missing from Kafka, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Per key: one partition, and the Kinesis order is kept (in offset order, each position seen
/// for the first time is greater than every position seen before; replays of earlier positions
/// are tolerated, reordering is not).
pub fn assert_key_order(messages: &[ReadMessage]) {
    let mut by_key: BTreeMap<Vec<u8>, Vec<&ReadMessage>> = BTreeMap::new();
    for m in messages {
        if let Some(key) = &m.key {
            by_key.entry(key.clone()).or_default().push(m);
        }
    }
    for (key, mut ms) in by_key {
        let partitions: HashSet<i32> = ms.iter().map(|m| m.partition).collect();
        assert_eq!(
            partitions.len(),
            1,
            "key {:?} spread over partitions {partitions:?}",
            String::from_utf8_lossy(&key)
        );
        ms.sort_by_key(|m| m.offset);
        let mut seen: HashSet<ExtSeq> = HashSet::new();
        let mut highest: Option<ExtSeq> = None;
        for m in ms {
            let position = m.position().expect("position headers");
            if !seen.insert(position.clone()) {
                continue;
            }
            if let Some(h) = &highest {
                assert_eq!(
                    h.compare(&position),
                    Ok(std::cmp::Ordering::Less),
                    "key {:?}: {position} at offset {} after {h}",
                    String::from_utf8_lossy(&key),
                    m.offset
                );
            }
            highest = Some(position);
        }
    }
}

/// No Kinesis position appears twice.
pub fn assert_no_duplicates(messages: &[ReadMessage]) {
    let mut seen = HashSet::new();
    let dups: Vec<String> = messages
        .iter()
        .filter_map(|m| m.position())
        .filter(|p| !seen.insert(p.clone()))
        .map(|p| p.to_string())
        .collect();
    assert!(
        dups.is_empty(),
        "{} duplicates, first: {:?}",
        dups.len(),
        &dups[..dups.len().min(10)]
    );
}

/// No checkpoint passes a record missing from Kafka: for each stored checkpoint, every record
/// at or below it (all of them for SHARD_END) is in `messages`.
pub fn assert_checkpoints_covered(
    checkpoints: &[ExtSeq],
    records: &[TestRecord],
    messages: &[ReadMessage],
) {
    let delivered: HashSet<ExtSeq> = messages.iter().filter_map(|m| m.position()).collect();
    for checkpoint in checkpoints {
        for record in records {
            let position = record.ext_seq();
            let covered =
                position.compare(checkpoint).expect("comparable") != std::cmp::Ordering::Greater;
            assert!(
                !covered || delivered.contains(&position),
                "checkpoint {checkpoint} passes {} which is not in Kafka",
                describe(record)
            );
        }
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`, which librdkafka's `murmur2` partitioners
/// reproduce).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition the Java client (and librdkafka's `murmur2_random`) picks for a key.
pub fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32
}
