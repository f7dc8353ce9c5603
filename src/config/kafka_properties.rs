//! The librdkafka properties of the producer: safe defaults, the named settings, then the
//! raw `kafka.properties`.

use super::schema::{default_partitioner, Config};

impl Config {
    pub(super) fn security_protocol(&self) -> String {
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

    pub(super) fn sasl_mechanism(&self) -> String {
        self.kafka.sasl_mechanism.trim().to_ascii_uppercase()
    }

    /// Amazon MSK IAM authentication (`KAFKA_SASL_MECHANISM=AWS_MSK_IAM` over `SASL_*`):
    /// librdkafka's OAUTHBEARER with tokens from [`crate::msk_iam`].
    pub fn msk_iam(&self) -> bool {
        self.security_protocol().starts_with("SASL_")
            && self.sasl_mechanism() == crate::msk_iam::MECHANISM
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
            ("linger.ms".into(), "5".into()),
        ];
        if !self.exactly_once() {
            // 0 = never give up on a message: a broker outage of any length is ridden out
            // with backpressure instead of failing records after librdkafka's 300 s default.
            // A transactional producer gives up at transaction.timeout.ms instead (librdkafka
            // refuses more): the span is aborted and produced again in order.
            props.push(("message.timeout.ms".into(), "0".into()));
        }
        let protocol = self.security_protocol();
        if protocol != "PLAINTEXT" {
            props.push(("security.protocol".into(), protocol.to_ascii_lowercase()));
        }
        let mechanism = self.sasl_mechanism();
        if self.msk_iam() {
            // The token comes from the client context's refresh callback.
            props.push(("sasl.mechanism".into(), "OAUTHBEARER".into()));
        } else if protocol.starts_with("SASL_") && !mechanism.is_empty() {
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
}

#[cfg(test)]
mod tests {
    use crate::config::tests::env;
    use crate::config::Config;

    #[test]
    fn aws_msk_iam_is_oauthbearer_without_user_or_password() {
        let config = Config::from_template(
            r#"{"kafka":{"bootstrap_servers":"b-1.c.x.c2.kafka.eu-west-1.amazonaws.com:9098","topic":"t","security_protocol":"SASL_SSL","sasl_mechanism":"aws_msk_iam","sasl_username":"ignored","sasl_password":"ignored"}}"#,
            env(&[]),
        )
        .unwrap();
        assert!(config.msk_iam());
        let props = config.producer_properties();
        assert!(props.contains(&("security.protocol".into(), "sasl_ssl".into())));
        assert!(props.contains(&("sasl.mechanism".into(), "OAUTHBEARER".into())));
        assert!(!props
            .iter()
            .any(|(k, _)| k.starts_with("sasl.username") || k.starts_with("sasl.password")));
        let plain = Config::from_template(
            r#"{"kafka":{"bootstrap_servers":"b:1","topic":"t","sasl_mechanism":"PLAIN"}}"#,
            env(&[]),
        )
        .unwrap();
        assert!(!plain.msk_iam());
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
}
