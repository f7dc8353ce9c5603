//! The processor's configuration: `${VAR}` expansion, the schema, validation, redaction,
//! and the librdkafka properties derived from it.
//!
//! The file is JSON with `${VAR}` and `${VAR:-default}` placeholders, expanded here from
//! the environment (not by envsubst), JSON-escaped, so a password containing `"` or `\`
//! stays a valid JSON string and no rendered copy with secrets needs to exist on disk.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Where the configuration is read from when neither `--config` nor `$REPLICATOR_CONFIG`
/// is given: relative to the working directory (run.sh passes an absolute `--config`).
pub const DEFAULT_CONFIG_PATH: &str = "replicator.template";
/// Overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_PATH_ENV: &str = "REPLICATOR_CONFIG";

const REDACTED: &str = "********";

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

fn default_partitioner() -> String {
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

/// An enum written in any case, with `-` or `_`, and empty meaning the default (so that
/// `${VAR:-}` in a template means "not set").
fn lenient_enum<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let text = String::deserialize(d)?;
    let normal = text.trim().to_ascii_lowercase().replace('-', "_");
    if normal.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_value(serde_json::Value::String(normal))
        .map_err(|e| de::Error::custom(format!("{text:?}: {e}")))
}

fn optional_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let text = match Option::<Scalar>::deserialize(d)? {
        None => return Ok(None),
        Some(Scalar::Number(n)) if n >= 0.0 && n.fract() == 0.0 && n <= u32::MAX as f64 => {
            return Ok(Some(n as u32))
        }
        Some(Scalar::Number(n)) => n.to_string(),
        Some(Scalar::Text(s)) => s,
        Some(Scalar::Bool(b)) => b.to_string(),
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim()
        .parse::<u32>()
        .map(Some)
        .map_err(|_| de::Error::custom(format!("expected a whole number, found {text:?}")))
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

/// A JSON number or a string holding one: templates quote their placeholders so that the
/// template itself stays valid JSON.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Number(f64),
    Text(String),
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = match Scalar::deserialize(d)? {
        Scalar::Number(n) => n,
        Scalar::Text(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| de::Error::custom(format!("expected a number of seconds, found {s:?}")))?,
        Scalar::Bool(b) => {
            return Err(de::Error::custom(format!(
                "expected a number of seconds, found {b}"
            )))
        }
    };
    if !value.is_finite() || !(0.0..=1e9).contains(&value) {
        return Err(de::Error::custom(format!(
            "expected a number of seconds between 0 and 1e9, found {value}"
        )));
    }
    Ok(value)
}

fn count_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = match Scalar::deserialize(d)? {
        Scalar::Number(n) if n >= 0.0 && n.fract() == 0.0 && n < 1e18 => return Ok(n as u64),
        Scalar::Number(n) => n.to_string(),
        Scalar::Text(s) => s,
        Scalar::Bool(b) => b.to_string(),
    };
    text.trim()
        .parse::<u64>()
        .map_err(|_| de::Error::custom(format!("expected a whole number, found {text:?}")))
}

fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = count_u64(d)?;
    u32::try_from(n).map_err(|_| de::Error::custom(format!("{n} is too large")))
}

fn count_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = count_u64(d)?;
    usize::try_from(n).map_err(|_| de::Error::custom(format!("{n} is too large")))
}

fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Scalar::deserialize(d)? {
        Scalar::Bool(b) => Ok(b),
        Scalar::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(de::Error::custom(format!(
                "expected true or false, found {s:?}"
            ))),
        },
        Scalar::Number(n) => Err(de::Error::custom(format!(
            "expected true or false, found {n}"
        ))),
    }
}

/// librdkafka properties are strings; accept numbers and booleans too, as people write them.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, serde_json::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(de::Error::custom(format!(
                        "kafka.properties.{k}: expected a string, found {other}"
                    )))
                }
            };
            Ok((k, v))
        })
        .collect()
}

/// The security protocols librdkafka knows, as written in `KAFKA_SECURITY_PROTOCOL`.
const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];
const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
/// librdkafka settings that make it give up on a message after a while (`delivery.timeout.ms`
/// is an alias of `message.timeout.ms`); only 0, never, is accepted.
const DELIVERY_TIMEOUTS: [&str; 2] = ["message.timeout.ms", "delivery.timeout.ms"];

/// Property names whose values are never printed.
fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("token")
        || key.ends_with(".pem")
        || key == "sasl.oauthbearer.config"
}

/// Replaces every `${NAME}`, `${NAME:-default}` (unset or empty → default) and
/// `${NAME-default}` (unset → default) with the value from `lookup`, escaped for a JSON
/// string; `$${` stands for a literal `${`. Missing variables are all reported at once,
/// each with its line.
pub fn expand(template: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut missing = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            // `$${` is a literal `${` (a regex group reference in a topic template, say).
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let line = template[..template.len() - rest.len() + start]
            .lines()
            .count()
            .max(1);
        let Some(end) = after.find('}') else {
            bail!("line {line}: `${{` without a closing `}}`");
        };
        let body = &after[..end];
        let (name, default, empty_is_unset) = if let Some(i) = body.find(":-") {
            (&body[..i], Some(&body[i + 2..]), true)
        } else if let Some(i) = body.find('-') {
            (&body[..i], Some(&body[i + 1..]), false)
        } else {
            (body, None, false)
        };
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            bail!("line {line}: `${{{body}}}` is not a valid placeholder; use ${{NAME}} or ${{NAME:-default}}");
        }
        let value = match lookup(name) {
            Some(v) if !(empty_is_unset && v.is_empty()) => Some(v),
            _ => default.map(str::to_owned),
        };
        match value {
            Some(v) => push_json_escaped(&mut out, &v),
            None => missing.push(format!("{name} (line {line})")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if !missing.is_empty() {
        bail!(
            "environment variable{} not set: {}; set {} or give a default as ${{NAME:-default}}",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            if missing.len() > 1 { "them" } else { "it" }
        );
    }
    Ok(out)
}

/// Escapes `value` as the inside of a JSON string.
fn push_json_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

/// A configuration problem, for the user: one line that names the setting.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The configuration path: `--config`, else `$REPLICATOR_CONFIG`, else the default.
pub fn resolve_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

impl Config {
    /// Reads, expands (from the process environment), parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let template = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read the configuration file {}: {e}; pass --config PATH or set {CONFIG_PATH_ENV}",
                path.display()
            ))
        })?;
        Self::from_template(&template, |name| std::env::var(name).ok())
            .map_err(|e| anyhow!(ConfigError(format!("{}: {e:#}", path.display()))))
    }

    pub fn from_template(
        template: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config> {
        let json = expand(template, lookup)?;
        let mut deserializer = serde_json::Deserializer::from_str(&json);
        let config: Config = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let hint = if inner.to_string().starts_with("unknown field") {
                " (a typo? the README's configuration reference lists every setting)"
            } else {
                ""
            };
            if path.is_empty() || path == "." {
                anyhow!("{inner}{hint}")
            } else {
                anyhow!("{path}: {inner}{hint}")
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let k = &self.kafka;
        if k.bootstrap_servers.trim().is_empty() {
            bail!("kafka.bootstrap_servers is empty; set KAFKA_BOOTSTRAP_SERVERS to host:port[,host:port]");
        }
        if k.topic.trim().is_empty() {
            bail!("kafka.topic is empty; set KAFKA_TOPIC to the target topic");
        }
        let protocol = self.security_protocol();
        if !SECURITY_PROTOCOLS.contains(&protocol.as_str()) {
            bail!(
                "kafka.security_protocol {:?} is not one of {}; check KAFKA_SECURITY_PROTOCOL",
                k.security_protocol,
                SECURITY_PROTOCOLS.join(", ")
            );
        }
        if protocol.starts_with("SASL_") {
            let mechanism = self.sasl_mechanism();
            if mechanism.is_empty() {
                bail!("kafka.sasl_mechanism is empty but {protocol} needs one; set KAFKA_SASL_MECHANISM to {}", SASL_MECHANISMS.join(", "));
            }
            if !SASL_MECHANISMS.contains(&mechanism.as_str()) {
                bail!(
                    "kafka.sasl_mechanism {:?} is not one of {}; check KAFKA_SASL_MECHANISM",
                    k.sasl_mechanism,
                    SASL_MECHANISMS.join(", ")
                );
            }
            if k.sasl_username.is_empty() || k.sasl_password.is_empty() {
                bail!("{protocol} with {mechanism} needs a user name and a password; set KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD");
            }
        }
        if !k.ssl_ca_location.is_empty() && !Path::new(&k.ssl_ca_location).is_file() {
            bail!(
                "kafka.ssl_ca_location {} is not a readable file; check KAFKA_SSL_CA_LOCATION",
                k.ssl_ca_location
            );
        }
        for (key, value) in &k.properties {
            let finite = value.trim().parse::<u64>().map_or(true, |ms| ms > 0);
            if DELIVERY_TIMEOUTS.contains(&key.as_str()) && finite {
                bail!(
                    "kafka.properties {key} = {value} is refused: a finite delivery timeout makes librdkafka give up on messages while Kafka is unreachable, and producing them again would put them behind later records of their key; remove it (the replicator never gives up on a message and holds the shard until Kafka is back)"
                );
            }
        }
        if self.checkpoint.retries == 0 {
            bail!(
                "checkpoint.retries is 0; set CHECKPOINT_RETRIES to 1 or more (it counts attempts)"
            );
        }
        if self.pipeline.max_in_flight_records == 0 || self.pipeline.max_in_flight_bytes == 0 {
            bail!("pipeline.max_in_flight_records and pipeline.max_in_flight_bytes must be at least 1");
        }
        self.validate_processing()
    }

    fn validate_processing(&self) -> Result<()> {
        let p = &self.processing;
        match p.topic.from {
            TopicSource::Field if p.topic.field.trim().is_empty() => {
                bail!("processing.topic.from is \"field\" but processing.topic.field is empty; name the JSON field that holds the topic")
            }
            TopicSource::PartitionKey => {
                if p.topic.pattern.is_empty() {
                    bail!("processing.topic.from is \"partition_key\" but processing.topic.pattern is empty; give a regular expression such as ^([a-z]+)-")
                }
                regex::Regex::new(&p.topic.pattern).map_err(|e| {
                    anyhow!("processing.topic.pattern is not a valid regular expression: {e}")
                })?;
            }
            _ => {}
        }
        if p.key.from == KeySource::Field && p.key.field.trim().is_empty() {
            bail!("processing.key.from is \"field\" but processing.key.field is empty; name the JSON field that holds the key");
        }
        if p.partition.by == PartitionStrategy::Fixed && p.partition.fixed.is_none() {
            bail!("processing.partition.by is \"fixed\" but processing.partition.fixed is not set; give the partition number");
        }
        if let Some(filter) = &p.filter {
            if filter.field.trim().is_empty() {
                bail!("processing.filter.field is empty; name the JSON field to test");
            }
            let conditions = [
                filter.equals.is_some(),
                filter.exists.is_some(),
                filter.one_of.is_some(),
            ];
            if conditions.iter().filter(|c| **c).count() != 1 {
                bail!("processing.filter needs exactly one of equals, exists, one_of");
            }
        }
        let dead_letter = self.dead_letter.topic.trim();
        if p.validation.on_invalid == OnInvalid::DeadLetter && dead_letter.is_empty() {
            bail!("processing.validation.on_invalid is \"dead_letter\" but dead_letter.topic is empty; set KAFKA_DEAD_LETTER_TOPIC");
        }
        if !dead_letter.is_empty() && dead_letter == self.kafka.topic.trim() {
            bail!("dead_letter.topic is the target topic {dead_letter}; choose another topic for records that cannot be delivered");
        }
        Ok(())
    }

    /// The dead-letter topic, if one is configured.
    pub fn dead_letter_topic(&self) -> Option<&str> {
        Some(self.dead_letter.topic.trim()).filter(|t| !t.is_empty())
    }

    fn security_protocol(&self) -> String {
        let p = self.kafka.security_protocol.trim().to_ascii_uppercase();
        if p.is_empty() {
            "PLAINTEXT".into()
        } else {
            p
        }
    }

    fn partitioner(&self) -> String {
        let p = self.kafka.partitioner.trim();
        if p.is_empty() {
            default_partitioner()
        } else {
            p.to_owned()
        }
    }

    fn sasl_mechanism(&self) -> String {
        self.kafka.sasl_mechanism.trim().to_ascii_uppercase()
    }

    /// The librdkafka properties of the producer, in the order they are applied.
    ///
    /// Safe defaults first (acks=all, idempotence, the Java client's partitioner, no
    /// delivery timeout), then the named settings, then `kafka.properties`.
    pub fn producer_properties(&self) -> Vec<(String, String)> {
        let k = &self.kafka;
        let mut props: Vec<(String, String)> = vec![
            (
                "bootstrap.servers".into(),
                k.bootstrap_servers.trim().into(),
            ),
            ("client.id".into(), k.client_id.clone()),
            ("acks".into(), "all".into()),
            ("enable.idempotence".into(), "true".into()),
            // By default the Java client's hashing: a key lands in the same partition as it
            // would from a Java producer.
            ("partitioner".into(), self.partitioner()),
            // 0 = never give up on a message: a broker outage of any length is ridden out
            // with backpressure instead of failing records after librdkafka's 300 s default.
            ("message.timeout.ms".into(), "0".into()),
            ("linger.ms".into(), "5".into()),
        ];
        let protocol = self.security_protocol();
        if protocol != "PLAINTEXT" {
            props.push(("security.protocol".into(), protocol.to_ascii_lowercase()));
        }
        let mechanism = self.sasl_mechanism();
        if protocol.starts_with("SASL_") && !mechanism.is_empty() {
            props.push(("sasl.mechanism".into(), mechanism));
            props.push(("sasl.username".into(), k.sasl_username.clone()));
            props.push(("sasl.password".into(), k.sasl_password.clone()));
        }
        if !k.ssl_ca_location.is_empty() {
            props.push(("ssl.ca.location".into(), k.ssl_ca_location.clone()));
        }
        for (key, value) in &k.properties {
            props.retain(|(existing, _)| existing != key);
            props.push((key.clone(), value.clone()));
        }
        props
    }

    /// The effective configuration with every secret replaced, for `--check-config`.
    pub fn redacted(&self) -> serde_json::Value {
        let mut copy = self.clone();
        if !copy.kafka.sasl_password.is_empty() {
            copy.kafka.sasl_password = REDACTED.into();
        }
        for (key, value) in copy.kafka.properties.iter_mut() {
            if is_secret_property(key) {
                *value = REDACTED.into();
            }
        }
        let mut json = serde_json::to_value(copy).unwrap_or(serde_json::Value::Null);
        let producer: BTreeMap<String, String> = self
            .producer_properties()
            .into_iter()
            .map(|(k, v)| {
                let v = if is_secret_property(&k) {
                    REDACTED.into()
                } else {
                    v
                };
                (k, v)
            })
            .collect();
        if let Some(obj) = json.as_object_mut() {
            obj.insert(
                "effective_librdkafka_properties".into(),
                serde_json::to_value(producer).unwrap_or_default(),
            );
        }
        json
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

    pub fn summary_interval(&self) -> Option<Duration> {
        (self.log.summary_interval_seconds > 0.0)
            .then(|| Duration::from_secs_f64(self.log.summary_interval_seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    const TEMPLATE: &str = include_str!("../replicator.template");

    #[test]
    fn expansion_escapes_values_for_json() {
        let out = expand(r#"{"p":"${P}"}"#, env(&[("P", "a\"b\\c\n")])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["p"], "a\"b\\c\n");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let lookup = env(&[("EMPTY", "")]);
        assert_eq!(expand("${X:-d}", &lookup).unwrap(), "d");
        assert_eq!(expand("${EMPTY:-d}", &lookup).unwrap(), "d");
        assert_eq!(expand("${EMPTY-d}", &lookup).unwrap(), "");
        assert_eq!(expand("${X-}", &lookup).unwrap(), "");
        assert_eq!(
            expand("no placeholders $X {}", &lookup).unwrap(),
            "no placeholders $X {}"
        );
    }

    #[test]
    fn every_missing_variable_is_named_with_its_line() {
        let err = expand("{\n\"a\":\"${A}\",\n\"b\":\"${B}\"}", env(&[])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("A (line 2)"), "{msg}");
        assert!(msg.contains("B (line 3)"), "{msg}");
    }

    #[test]
    fn the_shipped_template_reads_the_python_replicators_variables() {
        let config = Config::from_template(
            TEMPLATE,
            env(&[
                ("KAFKA_BOOTSTRAP_SERVERS", "b1:9094,b2:9094"),
                ("KAFKA_TOPIC", "t"),
                ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
                ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
                ("KAFKA_SASL_USERNAME", "user"),
                ("KAFKA_SASL_PASSWORD", "p\"w\\d"),
                ("KAFKA_CLIENT_ID", "replicator-client"),
                ("CHECKPOINT_FREQ_SECONDS", "30"),
                ("CHECKPOINT_RETRIES", "7"),
                ("SLEEP_SECONDS", "2"),
                ("NUMBER_OF_SHARDS", "4"),
                ("KAFKA_DEAD_LETTER_TOPIC", "t-dlq"),
            ]),
        )
        .unwrap();
        assert_eq!(config.processing.number_of_shards, Some(4));
        assert_eq!(config.dead_letter_topic(), Some("t-dlq"));
        assert_eq!(config.kafka.sasl_password, "p\"w\\d");
        assert_eq!(config.checkpoint.retries, 7);
        assert_eq!(config.checkpoint.sleep_seconds, 2.0);
        let props = config.producer_properties();
        let get = |k: &str| props.iter().find(|(p, _)| p == k).map(|(_, v)| v.as_str());
        assert_eq!(get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(get("client.id"), Some("replicator-client"));
        assert_eq!(get("acks"), Some("all"));
        assert_eq!(get("partitioner"), Some("murmur2_random"));
        let python_placement = Config::from_template(
            TEMPLATE,
            env(&[
                ("KAFKA_BOOTSTRAP_SERVERS", "b:9092"),
                ("KAFKA_TOPIC", "t"),
                ("KAFKA_PARTITIONER", "consistent_random"),
            ]),
        )
        .unwrap();
        assert!(python_placement
            .producer_properties()
            .contains(&("partitioner".into(), "consistent_random".into())));
        let shown = config.redacted().to_string();
        assert!(!shown.contains("p\\\"w"), "{shown}");
        assert!(shown.contains(REDACTED));
    }

    #[test]
    fn the_shipped_template_needs_only_broker_and_topic() {
        let config = Config::from_template(
            TEMPLATE,
            env(&[("KAFKA_BOOTSTRAP_SERVERS", "b:9092"), ("KAFKA_TOPIC", "t")]),
        )
        .unwrap();
        assert_eq!(config.checkpoint.freq_seconds, 30.0);
        assert_eq!(config.checkpoint.retries, 5);
        assert!(config.records.headers);
        assert_eq!(config.processing.number_of_shards, None);
        assert_eq!(config.dead_letter_topic(), None);
        let err = Config::from_template(TEMPLATE, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("KAFKA_BOOTSTRAP_SERVERS") && err.contains("KAFKA_TOPIC"),
            "{err}"
        );
    }

    #[test]
    fn an_infinite_delivery_timeout_may_be_spelled_out() {
        let config = Config::from_template(
            r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t","properties":{"message.timeout.ms":"0","delivery.timeout.ms":0}}}"#,
            env(&[]),
        )
        .unwrap();
        assert!(config
            .producer_properties()
            .contains(&("message.timeout.ms".into(), "0".into())));
    }

    #[test]
    fn raw_properties_override_and_secrets_are_redacted() {
        let config = Config::from_template(
            r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t","properties":{"linger.ms":20,"ssl.key.password":"s3cret","acks":"1"}}}"#,
            env(&[]),
        )
        .unwrap();
        let props = config.producer_properties();
        assert!(props.contains(&("linger.ms".into(), "20".into())));
        assert!(props.contains(&("acks".into(), "1".into())));
        assert_eq!(props.iter().filter(|(k, _)| k == "linger.ms").count(), 1);
        assert!(!config.redacted().to_string().contains("s3cret"));
    }

    #[test]
    fn bad_settings_are_named() {
        let cases = [
            (
                r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t","properties":{"message.timeout.ms":"30000"}}}"#,
                "message.timeout.ms = 30000 is refused",
            ),
            (
                r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t","properties":{"delivery.timeout.ms":120000}}}"#,
                "delivery.timeout.ms = 120000 is refused",
            ),
            (
                r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t","securityprotocol":"SSL"}}"#,
                "securityprotocol",
            ),
            (
                r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t","security_protocol":"TLS"}}"#,
                "KAFKA_SECURITY_PROTOCOL",
            ),
            (
                r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t","security_protocol":"SASL_SSL","sasl_mechanism":"PLAIN"}}"#,
                "KAFKA_SASL_USERNAME",
            ),
            (
                r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t"},"checkpoint":{"retries":"five"}}"#,
                "whole number",
            ),
            (
                r#"{"kafka":{"bootstrap_servers":"b:1","topic":""}}"#,
                "KAFKA_TOPIC",
            ),
        ];
        for (json, needle) in cases {
            let err = format!("{:#}", Config::from_template(json, env(&[])).unwrap_err());
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
