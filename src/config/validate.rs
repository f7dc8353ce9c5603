//! Validation (what a loaded configuration must satisfy, each refusal naming the setting
//! and the variable to fix) and redaction (the configuration as `--check-config` shows it,
//! every secret replaced).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Result};

use super::schema::{Config, KeySource, OnInvalid, PartitionStrategy, TopicSource};

/// What a secret is shown as.
pub(super) const REDACTED: &str = "********";

/// The security protocols librdkafka knows, as written in `KAFKA_SECURITY_PROTOCOL`.
const SECURITY_PROTOCOLS: [&str; 4] = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];
const SASL_MECHANISMS: [&str; 4] = [
    "PLAIN",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    crate::msk_iam::MECHANISM,
];
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

impl Config {
    pub(super) fn validate(&self) -> Result<()> {
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
            if self.msk_iam() {
                // Signed with the AWS credentials: no user name, no password.
            } else if k.sasl_username.is_empty() || k.sasl_password.is_empty() {
                bail!("{protocol} with {mechanism} needs a user name and a password; set KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD");
            }
        }
        if self.sasl_mechanism() == crate::msk_iam::MECHANISM && !protocol.starts_with("SASL_") {
            bail!("KAFKA_SASL_MECHANISM={} needs KAFKA_SECURITY_PROTOCOL=SASL_SSL (MSK's IAM listener, port 9098), not {protocol}", crate::msk_iam::MECHANISM);
        }
        if !k.ssl_ca_location.is_empty() && !Path::new(&k.ssl_ca_location).is_file() {
            bail!(
                "kafka.ssl_ca_location {} is not a readable file; check KAFKA_SSL_CA_LOCATION",
                k.ssl_ca_location
            );
        }
        for (key, value) in &k.properties {
            let finite = value.trim().parse::<u64>().map_or(true, |ms| ms > 0);
            // In a transaction, a message librdkafka gives up on aborts the whole span, which
            // is produced again from the last committed position: order holds.
            if DELIVERY_TIMEOUTS.contains(&key.as_str()) && finite && !self.exactly_once() {
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
        self.validate_delivery()?;
        self.validate_processing()
    }

    fn validate_delivery(&self) -> Result<()> {
        if !self.exactly_once() {
            return Ok(());
        }
        let d = &self.delivery;
        if d.application_name.trim().is_empty()
            && (d.transactional_id_prefix.trim().is_empty() || d.positions_topic.trim().is_empty())
        {
            bail!("DELIVERY_GUARANTEE=exactly_once names each shard's transactional id and the positions topic after the KCL application; set KCL_APPLICATION_NAME (or both KAFKA_TRANSACTIONAL_ID_PREFIX and KAFKA_POSITIONS_TOPIC)");
        }
        if d.transaction_max_records == 0 || d.transaction_max_bytes == 0 {
            bail!("delivery.transaction_max_records and delivery.transaction_max_bytes must be at least 1; check TRANSACTION_MAX_RECORDS and TRANSACTION_MAX_BYTES");
        }
        let timeout_ms = self
            .kafka
            .properties
            .get("transaction.timeout.ms")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(60_000.0);
        if d.transaction_max_seconds <= 0.0 || d.transaction_max_seconds * 1000.0 * 2.0 > timeout_ms
        {
            bail!(
                "delivery.transaction_max_seconds is {} but must be above 0 and at most half of transaction.timeout.ms ({} ms): the broker aborts a transaction older than that; set TRANSACTION_MAX_SECONDS lower",
                d.transaction_max_seconds, timeout_ms
            );
        }
        if self.positions_topic() == self.kafka.topic.trim()
            || self.dead_letter_topic() == Some(self.positions_topic().as_str())
        {
            bail!("the positions topic {} is also the target or dead-letter topic; set KAFKA_POSITIONS_TOPIC to a topic of its own", self.positions_topic());
        }
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use crate::config::tests::env;
    use crate::config::Config;

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
                r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t","sasl_mechanism":"AWS_MSK_IAM"}}"#,
                "AWS_MSK_IAM needs KAFKA_SECURITY_PROTOCOL=SASL_SSL",
            ),
            (
                r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t","security_protocol":"SASL_SSL","sasl_mechanism":"OAUTH"}}"#,
                "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, AWS_MSK_IAM",
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
