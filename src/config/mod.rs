//! The processor's configuration: `${VAR}` expansion, the schema, validation, redaction,
//! and the librdkafka properties derived from it.
//!
//! The file is JSON with `${VAR}` and `${VAR:-default}` placeholders, expanded here from
//! the environment (not by envsubst), JSON-escaped, so a password containing `"` or `\`
//! stays a valid JSON string and no rendered copy with secrets needs to exist on disk.
//!
//! One room each: `schema` (the settings, their types and defaults), `lenient` (how a
//! setting's value is read from a template, where placeholders are quoted), `expand` (the
//! `${VAR}` expansion), `validate` (what a loaded configuration must satisfy, and its
//! redacted form), `kafka_properties` (the producer's librdkafka properties). Here: where
//! the file is found, loading it through those steps, and the public names, re-exported.

mod expand;
mod kafka_properties;
mod lenient;
mod schema;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

pub use expand::expand;
pub use schema::{
    CheckpointConfig, CloudWatchLogsConfig, Config, DeadLetterConfig, Decompress, DeliveryConfig,
    DeliveryGuarantee, Envelope, FilterAction, FilterConfig, KafkaConfig, KeyConfig, KeySource,
    LogConfig, LogEventKey, OnInvalid, PartitionConfig, PartitionStrategy, PipelineConfig,
    ProcessingConfig, RecordsConfig, ShutdownConfig, TimestampSource, TopicRouting, TopicSource,
    ValidationConfig,
};

/// Where the configuration is read from when neither `--config` nor `$REPLICATOR_CONFIG`
/// is given: relative to the working directory (run.sh passes an absolute `--config`).
pub const DEFAULT_CONFIG_PATH: &str = "replicator.template";
/// Overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_PATH_ENV: &str = "REPLICATOR_CONFIG";

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
}

#[cfg(test)]
mod tests {
    use super::validate::REDACTED;
    use super::*;

    /// The environment of a test: these pairs and nothing else (the submodules' tests use
    /// it too).
    pub(super) fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    const TEMPLATE: &str = include_str!("../../replicator.template");

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
}
