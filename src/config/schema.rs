//! The schema: every setting, its type and its default, as serde reads them from the
//! expanded template (unknown fields are refused so that a typo is named, not ignored),
//! and the durations and names the rest of the processor takes from them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::lenient::{
    boolean, count, count_usize, lenient_enum, optional_count, seconds, string_map,
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub records: RecordsConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub processing: ProcessingConfig,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default)]
    pub security_protocol: String,
    #[serde(default)]
    pub sasl_mechanism: String,
    #[serde(default)]
    pub sasl_username: String,
    #[serde(default)]
    pub sasl_password: String,
    #[serde(default)]
    pub ssl_ca_location: String,
    /// librdkafka's partitioner for keyed messages. `murmur2_random` places a key where a
    /// Java producer would; `consistent_random` (CRC32) where the Python replicator did.
    #[serde(default = "default_partitioner")]
    pub partitioner: String,
    /// Raw librdkafka properties, applied last: they override everything above.
    #[serde(default, deserialize_with = "string_map")]
    pub properties: BTreeMap<String, String>,
}

pub(super) fn default_partitioner() -> String {
    "murmur2_random".into()
}

fn default_client_id() -> String {
    "kinesis-kafka-replicator".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Minimum time between two checkpoints during `processRecords` (CHECKPOINT_FREQ_SECONDS).
    #[serde(default = "thirty", deserialize_with = "seconds")]
    pub freq_seconds: f64,
    /// Attempts for a retryable checkpoint error (CHECKPOINT_RETRIES), as in the Python
    /// replicator: 5 means up to 5 attempts.
    #[serde(default = "five_u32", deserialize_with = "count")]
    pub retries: u32,
    /// Pause between those attempts (SLEEP_SECONDS).
    #[serde(default = "five", deserialize_with = "seconds")]
    pub sleep_seconds: f64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            freq_seconds: 30.0,
            retries: 5,
            sleep_seconds: 5.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsConfig {
    /// Add the `kinesis.*` headers (shard, sequence, sub-sequence, arrival time).
    #[serde(default = "yes", deserialize_with = "boolean")]
    pub headers: bool,
    /// Which time a message carries as its Kafka timestamp.
    #[serde(default)]
    pub timestamp: TimestampSource,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            headers: true,
            timestamp: TimestampSource::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampSource {
    /// The record's approximate arrival time in Kinesis (a CloudWatch Logs event's own
    /// time): consumers see when the data happened.
    #[default]
    Arrival,
    /// The time the replicator produces it: retention and timestamp checks on the broker
    /// count from the replication, so an old backlog is neither deleted at once nor refused.
    Produce,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Answer `processRecords` only once every record of the batch is acknowledged.
    #[serde(default, deserialize_with = "boolean")]
    pub wait_for_ack: bool,
    /// Records sent to Kafka and not yet acknowledged, at most.
    #[serde(default = "default_window_records", deserialize_with = "count_usize")]
    pub max_in_flight_records: usize,
    /// Payload bytes sent to Kafka and not yet acknowledged, at most.
    #[serde(default = "default_window_bytes", deserialize_with = "count_usize")]
    pub max_in_flight_bytes: usize,
}

// Chosen by measurement (docs/benchmark.md): on 1 KB records, 8 MiB keeps a child's peak
// RSS near 45 MiB (60 MiB with 16 MiB) for about the same throughput.
fn default_window_records() -> usize {
    10_000
}

fn default_window_bytes() -> usize {
    8 << 20
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            wait_for_ack: false,
            max_in_flight_records: default_window_records(),
            max_in_flight_bytes: default_window_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long to wait for acknowledgements at `shutdownRequested` and at stdin EOF.
    #[serde(default = "ten", deserialize_with = "seconds")]
    pub flush_timeout_seconds: f64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            flush_timeout_seconds: 10.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Interval of the one-line progress summary; 0 turns it off.
    #[serde(default = "sixty", deserialize_with = "seconds")]
    pub summary_interval_seconds: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            summary_interval_seconds: 60.0,
        }
    }
}

/// The processing stage between Kinesis and Kafka (see the README's "Processing").
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    #[serde(default)]
    pub topic: TopicRouting,
    #[serde(default)]
    pub key: KeyConfig,
    #[serde(default)]
    pub partition: PartitionConfig,
    /// Kinesis shards of the stream (NUMBER_OF_SHARDS), compared with the partition count
    /// when partitioning by shard.
    #[serde(default, deserialize_with = "optional_count")]
    pub number_of_shards: Option<u32>,
    #[serde(default)]
    pub validation: ValidationConfig,
    #[serde(default)]
    pub filter: Option<FilterConfig>,
    #[serde(default)]
    pub decompress: Decompress,
    #[serde(default)]
    pub cloudwatch_logs: CloudWatchLogsConfig,
    #[serde(default)]
    pub envelope: Envelope,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicSource {
    /// Always `kafka.topic`.
    #[default]
    Fixed,
    /// A field of the JSON payload names the topic.
    Field,
    /// A regular expression on the partition key names the topic.
    PartitionKey,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRouting {
    #[serde(default, deserialize_with = "lenient_enum")]
    pub from: TopicSource,
    /// For `field`: a dotted path (`meta.type`) or a JSON pointer (`/meta/type`).
    #[serde(default)]
    pub field: String,
    /// For `partition_key`: a regular expression matched against the partition key.
    #[serde(default)]
    pub pattern: String,
    /// The topic made from a match: `$1`, `${name}` refer to the pattern's groups, `$0` or
    /// an empty template to the whole match (for `field`, `$0` is the field's value).
    #[serde(default)]
    pub template: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    #[default]
    PartitionKey,
    Field,
    None,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(default, deserialize_with = "lenient_enum")]
    pub from: KeySource,
    #[serde(default)]
    pub field: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionStrategy {
    /// murmur2 of the key, as the Java client does.
    #[default]
    Key,
    /// The shard's ordinal modulo the partition count: each shard in one partition.
    Shard,
    /// Always `partition.fixed`.
    Fixed,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    #[serde(default, deserialize_with = "lenient_enum")]
    pub by: PartitionStrategy,
    #[serde(default, deserialize_with = "optional_count")]
    pub fixed: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// Stop, as for a record Kafka refuses: no checkpoint passes it.
    #[default]
    Fail,
    /// Count it, log it with its shard and sequence number, and go on.
    Skip,
    /// Send it to the dead-letter topic.
    DeadLetter,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    #[serde(default, deserialize_with = "boolean")]
    pub require_json: bool,
    #[serde(default, deserialize_with = "lenient_enum")]
    pub on_invalid: OnInvalid,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterAction {
    /// Keep the records that match, drop the others.
    #[default]
    Keep,
    /// Drop the records that match, keep the others.
    Drop,
}

/// A condition on one JSON field. Exactly one of `equals`, `exists`, `one_of`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    pub field: String,
    #[serde(default, deserialize_with = "lenient_enum")]
    pub action: FilterAction,
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
    #[serde(default)]
    pub exists: Option<bool>,
    #[serde(default)]
    pub one_of: Option<Vec<serde_json::Value>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decompress {
    #[default]
    None,
    Gzip,
    /// Gunzip payloads that start with the gzip magic bytes, pass the rest unchanged.
    Auto,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogEventKey {
    #[default]
    LogStream,
    LogGroup,
    EventId,
    PartitionKey,
    None,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchLogsConfig {
    #[serde(default, deserialize_with = "boolean")]
    pub enabled: bool,
    #[serde(default, deserialize_with = "lenient_enum")]
    pub key: LogEventKey,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// The payload bytes as they are.
    #[default]
    Raw,
    /// A JSON object with the payload and the Kinesis metadata.
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Empty: no dead-letter topic.
    #[serde(default)]
    pub topic: String,
}

/// What a read_committed consumer of the topic may see of a Kinesis record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryGuarantee {
    /// Every record at least once: after a crash or a lease move, the records after the
    /// last checkpoint are written again.
    #[default]
    AtLeastOnce,
    /// Every record exactly once for read_committed consumers: one Kafka transaction per
    /// span of records, committed with the shard's position ([`crate::exactly_once`]).
    ExactlyOnce,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    #[serde(default, deserialize_with = "lenient_enum")]
    pub guarantee: DeliveryGuarantee,
    /// The KCL application name: the default transactional id prefix and positions topic
    /// derive from it, so that two applications reading the same stream never fence
    /// each other.
    #[serde(default)]
    pub application_name: String,
    /// Empty: `<application_name>-`. The shard id follows it.
    #[serde(default)]
    pub transactional_id_prefix: String,
    /// Empty: `<application_name>.positions`.
    #[serde(default)]
    pub positions_topic: String,
    /// A transaction ends after this many records...
    #[serde(default = "default_span_records", deserialize_with = "count_usize")]
    pub transaction_max_records: usize,
    /// ...or this many payload bytes...
    #[serde(default = "default_span_bytes", deserialize_with = "count_usize")]
    pub transaction_max_bytes: usize,
    /// ...or this long after its first record, whichever comes first. A batch that ends
    /// with the shard caught up commits at once.
    #[serde(default = "one", deserialize_with = "seconds")]
    pub transaction_max_seconds: f64,
}

// A commit waits for every message of the span to be acknowledged: spans well above the
// in-flight window keep that drain rare on a backlog (docs/benchmark.md).
fn default_span_records() -> usize {
    1_000_000
}

fn default_span_bytes() -> usize {
    256 << 20
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            guarantee: DeliveryGuarantee::default(),
            application_name: String::new(),
            transactional_id_prefix: String::new(),
            positions_topic: String::new(),
            transaction_max_records: default_span_records(),
            transaction_max_bytes: default_span_bytes(),
            transaction_max_seconds: one(),
        }
    }
}

fn one() -> f64 {
    1.0
}
fn thirty() -> f64 {
    30.0
}
fn five() -> f64 {
    5.0
}
fn five_u32() -> u32 {
    5
}
fn ten() -> f64 {
    10.0
}
fn sixty() -> f64 {
    60.0
}
fn yes() -> bool {
    true
}

impl Config {
    /// The dead-letter topic, if one is configured.
    pub fn dead_letter_topic(&self) -> Option<&str> {
        Some(self.dead_letter.topic.trim()).filter(|t| !t.is_empty())
    }

    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_secs_f64(self.checkpoint.freq_seconds)
    }

    pub fn checkpoint_sleep(&self) -> Duration {
        Duration::from_secs_f64(self.checkpoint.sleep_seconds)
    }

    pub fn flush_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown.flush_timeout_seconds)
    }

    pub fn exactly_once(&self) -> bool {
        self.delivery.guarantee == DeliveryGuarantee::ExactlyOnce
    }

    /// The transactional id of a shard's producer (exactly-once).
    pub fn transactional_id(&self, shard_id: &str) -> String {
        let prefix = self.delivery.transactional_id_prefix.trim();
        if prefix.is_empty() {
            format!("{}-{shard_id}", self.delivery.application_name.trim())
        } else {
            format!("{prefix}{shard_id}")
        }
    }

    /// The compacted topic that holds each shard's last committed position (exactly-once).
    pub fn positions_topic(&self) -> String {
        let topic = self.delivery.positions_topic.trim();
        if topic.is_empty() {
            format!("{}.positions", self.delivery.application_name.trim())
        } else {
            topic.to_owned()
        }
    }

    pub fn transaction_max_age(&self) -> Duration {
        Duration::from_secs_f64(self.delivery.transaction_max_seconds)
    }

    pub fn summary_interval(&self) -> Option<Duration> {
        (self.log.summary_interval_seconds > 0.0)
            .then(|| Duration::from_secs_f64(self.log.summary_interval_seconds))
    }
}
