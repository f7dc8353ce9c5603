//! The configured processing stage: decompression, CloudWatch Logs unpacking, validation,
//! filtering, topic routing, key choice, fixed partitions and the JSON envelope.
//!
//! Everything here is configuration (`processing` in the config file). Partitioning by
//! shard is not here but in the producer, which knows the partition counts.

use std::borrow::Cow;
use std::io::Read;

use anyhow::Result;
use base64::Engine as _;
use flate2::read::GzDecoder;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{
    Config, Decompress, Envelope, FilterAction, FilterConfig, KeySource, LogEventKey,
    PartitionStrategy, TopicSource,
};
use crate::transform::{KafkaMessage, KinesisRecord, Transform, TransformError};

/// Headers of messages unpacked from a CloudWatch Logs subscription record.
pub const HEADER_LOG_GROUP: &str = "cloudwatch.logGroup";
pub const HEADER_LOG_STREAM: &str = "cloudwatch.logStream";
pub const HEADER_OWNER: &str = "cloudwatch.owner";
pub const HEADER_EVENT_ID: &str = "cloudwatch.eventId";

/// A larger decompressed payload is refused: a few KB of gzip can expand to gigabytes.
const MAX_DECOMPRESSED: u64 = 64 << 20;

enum TopicRule {
    Fixed,
    Field { path: String, template: String },
    PartitionKey { pattern: Regex, template: String },
}

pub struct ConfiguredStage {
    topic: TopicRule,
    key: KeySource,
    key_field: String,
    fixed_partition: Option<i32>,
    require_json: bool,
    filter: Option<FilterConfig>,
    decompress: Decompress,
    cloudwatch_key: Option<LogEventKey>,
    envelope: Envelope,
}

impl ConfiguredStage {
    /// The stage for `config`, or `None` when nothing is configured: records are then
    /// copied as they are, with no work per record beyond the copy.
    pub fn from_config(config: &Config) -> Result<Option<ConfiguredStage>> {
        let p = &config.processing;
        let topic = match p.topic.from {
            TopicSource::Fixed => TopicRule::Fixed,
            TopicSource::Field => TopicRule::Field {
                path: p.topic.field.trim().to_owned(),
                template: p.topic.template.clone(),
            },
            TopicSource::PartitionKey => TopicRule::PartitionKey {
                pattern: Regex::new(&p.topic.pattern)?,
                template: p.topic.template.clone(),
            },
        };
        let stage = ConfiguredStage {
            topic,
            key: p.key.from,
            key_field: p.key.field.trim().to_owned(),
            fixed_partition: match p.partition.by {
                PartitionStrategy::Fixed => p.partition.fixed.map(|n| n as i32),
                _ => None,
            },
            require_json: p.validation.require_json,
            filter: p.filter.clone(),
            decompress: p.decompress,
            cloudwatch_key: p.cloudwatch_logs.enabled.then_some(p.cloudwatch_logs.key),
            envelope: p.envelope,
        };
        let is_plain_copy = matches!(stage.topic, TopicRule::Fixed)
            && stage.key == KeySource::PartitionKey
            && stage.fixed_partition.is_none()
            && !stage.require_json
            && stage.filter.is_none()
            && stage.decompress == Decompress::None
            && stage.cloudwatch_key.is_none()
            && stage.envelope == Envelope::Raw;
        Ok((!is_plain_copy).then_some(stage))
    }

    fn needs_json(&self) -> bool {
        self.require_json
            || self.filter.is_some()
            || matches!(self.topic, TopicRule::Field { .. })
            || self.key == KeySource::Field
            || self.envelope == Envelope::Json
    }

    /// Builds the message for one payload (the record's, or one log event's).
    fn emit<'a>(
        &self,
        record: &KinesisRecord<'a>,
        payload: Cow<'a, [u8]>,
        mut message: KafkaMessage<'a>,
        messages: &mut Vec<KafkaMessage<'a>>,
    ) -> Result<(), TransformError> {
        let json = if self.needs_json() {
            match serde_json::from_slice::<Value>(&payload) {
                Ok(value) => Some(value),
                Err(e) if self.require_json || self.filter.is_some() => {
                    return Err(TransformError(format!("the payload is not JSON: {e}")))
                }
                Err(_) => None,
            }
        } else {
            None
        };
        if let (Some(filter), Some(json)) = (&self.filter, &json) {
            if !keeps(filter, json) {
                return Ok(());
            }
        }
        match &self.topic {
            TopicRule::Fixed => {}
            TopicRule::Field { path, template } => {
                if let Some(name) = json
                    .as_ref()
                    .and_then(|j| field(j, path))
                    .and_then(scalar_text)
                {
                    let topic = if template.is_empty() {
                        name
                    } else {
                        template.replace("$0", &name)
                    };
                    if !topic.is_empty() {
                        message.topic = Some(Cow::Owned(topic));
                    }
                }
            }
            TopicRule::PartitionKey { pattern, template } => {
                if let Some(caps) = record.partition_key.and_then(|k| pattern.captures(k)) {
                    let topic = if template.is_empty() {
                        caps.get(1)
                            .or_else(|| caps.get(0))
                            .map_or("", |m| m.as_str())
                            .to_owned()
                    } else {
                        let mut out = String::new();
                        caps.expand(template, &mut out);
                        out
                    };
                    if !topic.is_empty() {
                        message.topic = Some(Cow::Owned(topic));
                    }
                }
            }
        }
        match self.key {
            KeySource::PartitionKey => {}
            KeySource::None => message.key = None,
            KeySource::Field => {
                // A record without the field keeps its partition key, so that its order
                // relative to the records of the same Kinesis key is still kept.
                if let Some(key) = json
                    .as_ref()
                    .and_then(|j| field(j, &self.key_field))
                    .and_then(scalar_text)
                {
                    message.key = Some(Cow::Owned(key.into_bytes()));
                }
            }
        }
        if self.fixed_partition.is_some() {
            message.partition = self.fixed_partition;
        }
        message.value = Some(match self.envelope {
            Envelope::Raw => payload,
            Envelope::Json => Cow::Owned(envelope(record, &payload, json)),
        });
        messages.push(message);
        Ok(())
    }

    fn unpack_cloudwatch_logs<'a>(
        &self,
        record: &KinesisRecord<'a>,
        payload: &[u8],
        key: LogEventKey,
        messages: &mut Vec<KafkaMessage<'a>>,
    ) -> Result<(), TransformError> {
        let envelope: LogsEnvelope = serde_json::from_slice(payload).map_err(|e| {
            TransformError(format!("not a CloudWatch Logs subscription record: {e}"))
        })?;
        if envelope.message_type == "CONTROL_MESSAGE" {
            return Ok(());
        }
        if envelope.message_type != "DATA_MESSAGE" {
            return Err(TransformError(format!(
                "CloudWatch Logs record of unknown messageType {:?}",
                envelope.message_type
            )));
        }
        for event in envelope.log_events {
            let mut headers: Vec<(Cow<'a, str>, Cow<'a, [u8]>)> = Vec::with_capacity(4);
            let text = |s: &Option<String>| Cow::Owned(s.clone().unwrap_or_default().into_bytes());
            headers.push((HEADER_LOG_GROUP.into(), text(&envelope.log_group)));
            headers.push((HEADER_LOG_STREAM.into(), text(&envelope.log_stream)));
            headers.push((HEADER_OWNER.into(), text(&envelope.owner)));
            headers.push((HEADER_EVENT_ID.into(), text(&event.id)));
            let key: Option<Cow<'a, [u8]>> = match key {
                LogEventKey::LogStream => Some(text(&envelope.log_stream)),
                LogEventKey::LogGroup => Some(text(&envelope.log_group)),
                LogEventKey::EventId => Some(text(&event.id)),
                LogEventKey::PartitionKey => {
                    record.partition_key.map(|k| Cow::Borrowed(k.as_bytes()))
                }
                LogEventKey::None => None,
            };
            let message = KafkaMessage {
                topic: None,
                key,
                value: None,
                partition: None,
                timestamp: event.timestamp.or(record.approximate_arrival_timestamp),
                headers,
            };
            // emit() leaves this key in place unless `key.from` asks for none or a field.
            self.emit(
                record,
                Cow::Owned(event.message.into_bytes()),
                message,
                messages,
            )?;
        }
        Ok(())
    }
}

impl Transform for ConfiguredStage {
    fn transform<'a>(
        &mut self,
        record: &KinesisRecord<'a>,
        messages: &mut Vec<KafkaMessage<'a>>,
    ) -> Result<(), TransformError> {
        // The first stage: it builds the messages from the record itself.
        let template = messages
            .pop()
            .unwrap_or_else(|| KafkaMessage::from_record(record));
        messages.clear();
        let raw = record.data.unwrap_or_default();
        if let Some(key) = self.cloudwatch_key {
            // Subscription records are always gzip.
            let payload = gunzip_if_compressed(raw)?;
            return self.unpack_cloudwatch_logs(record, &payload, key, messages);
        }
        let payload: Cow<'a, [u8]> = match self.decompress {
            Decompress::None => match record.data {
                Some(data) => Cow::Borrowed(data),
                None => Cow::Borrowed(&[]),
            },
            Decompress::Gzip => Cow::Owned(gunzip(raw)?),
            Decompress::Auto => match record.data {
                Some(data) if is_gzip(data) => Cow::Owned(gunzip(data)?),
                Some(data) => Cow::Borrowed(data),
                None => Cow::Borrowed(&[]),
            },
        };
        self.emit(record, payload, template, messages)
    }
}

#[derive(Deserialize)]
struct LogsEnvelope {
    #[serde(rename = "messageType")]
    message_type: String,
    #[serde(default)]
    owner: Option<String>,
    #[serde(rename = "logGroup", default)]
    log_group: Option<String>,
    #[serde(rename = "logStream", default)]
    log_stream: Option<String>,
    #[serde(rename = "logEvents", default)]
    log_events: Vec<LogEvent>,
}

#[derive(Deserialize)]
struct LogEvent {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    timestamp: Option<i64>,
    #[serde(default)]
    message: String,
}

fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>, TransformError> {
    let mut out = Vec::with_capacity(data.len() * 4);
    GzDecoder::new(data)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| TransformError(format!("the payload is not valid gzip: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(TransformError(format!(
            "the payload decompresses to more than {} MiB",
            MAX_DECOMPRESSED >> 20
        )));
    }
    Ok(out)
}

fn gunzip_if_compressed(data: &[u8]) -> Result<Cow<'_, [u8]>, TransformError> {
    if is_gzip(data) {
        gunzip(data).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(data))
    }
}

/// A field by dotted path (`a.b.0.c`) or JSON pointer (`/a/b/0/c`).
pub fn field<'v>(json: &'v Value, path: &str) -> Option<&'v Value> {
    if path.starts_with('/') {
        return json.pointer(path);
    }
    path.split('.').try_fold(json, |value, part| match value {
        Value::Object(map) => map.get(part),
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// A scalar as text: strings as they are, numbers and booleans as written; null,
/// objects and arrays have no text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether the filter keeps a record whose payload is `json`.
fn keeps(filter: &FilterConfig, json: &Value) -> bool {
    let value = field(json, &filter.field);
    let matches = if let Some(expected) = &filter.equals {
        value == Some(expected)
    } else if let Some(exists) = filter.exists {
        value.is_some_and(|v| !v.is_null()) == exists
    } else if let Some(options) = &filter.one_of {
        value.is_some_and(|v| options.contains(v))
    } else {
        true
    };
    matches == (filter.action == FilterAction::Keep)
}

/// The JSON envelope: the payload with the Kinesis metadata, for consumers that cannot
/// read headers. A JSON payload is embedded as `data`; any other as base64 in `dataBase64`.
fn envelope(record: &KinesisRecord<'_>, payload: &[u8], json: Option<Value>) -> Vec<u8> {
    let mut object = serde_json::Map::new();
    object.insert("shardId".into(), record.shard_id.into());
    object.insert("partitionKey".into(), record.partition_key.into());
    object.insert("sequenceNumber".into(), record.sequence_number.into());
    object.insert(
        "subSequenceNumber".into(),
        record.sub_sequence_number.into(),
    );
    object.insert(
        "approximateArrivalTimestamp".into(),
        record.approximate_arrival_timestamp.into(),
    );
    match json {
        Some(json) => {
            object.insert("data".into(), json);
        }
        None => {
            object.insert(
                "dataBase64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(payload)
                    .into(),
            );
        }
    }
    serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::Pipeline;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn config(processing: &str) -> Config {
        Config::from_template(
            &format!(
                r#"{{"kafka":{{"bootstrap_servers":"b:1","topic":"main"}},"dead_letter":{{"topic":"dlq"}},"processing":{processing}}}"#
            ),
            |_| None,
        )
        .unwrap()
    }

    fn record<'a>(data: &'a [u8], key: &'a str) -> KinesisRecord<'a> {
        KinesisRecord {
            shard_id: "shardId-000000000003",
            data: Some(data),
            partition_key: Some(key),
            sequence_number: Some("42"),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: Some(1000),
        }
    }

    fn run<'a>(
        processing: &str,
        record: &KinesisRecord<'a>,
    ) -> Result<Vec<KafkaMessage<'a>>, TransformError> {
        let stage = ConfiguredStage::from_config(&config(processing))
            .unwrap()
            .expect("a configured stage");
        let mut pipeline = Pipeline::new(vec![Box::new(stage)]);
        let mut messages = Vec::new();
        pipeline.apply(record, &mut messages).map(|()| messages)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn text(bytes: &Option<Cow<'_, [u8]>>) -> String {
        String::from_utf8(bytes.as_deref().unwrap_or_default().to_vec()).unwrap()
    }

    #[test]
    fn nothing_configured_means_no_stage() {
        assert!(ConfiguredStage::from_config(&config("{}"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn topic_from_a_json_field_with_template_and_fallback() {
        let p = r#"{"topic":{"from":"field","field":"meta.kind","template":"events-$0"}}"#;
        let m = run(p, &record(br#"{"meta":{"kind":"order"}}"#, "k")).unwrap();
        assert_eq!(m[0].topic.as_deref(), Some("events-order"));
        let m = run(p, &record(br#"{"other":1}"#, "k")).unwrap();
        assert_eq!(m[0].topic, None, "missing field: the default topic");
        let m = run(p, &record(b"not json", "k")).unwrap();
        assert_eq!(m[0].topic, None, "not JSON: the default topic");
    }

    #[test]
    fn topic_from_the_partition_key_through_a_pattern() {
        let p = r#"{"topic":{"from":"partition_key","pattern":"^(?P<team>[a-z]+)-","template":"team.$${team}"}}"#;
        let m = run(p, &record(b"x", "billing-123")).unwrap();
        assert_eq!(m[0].topic.as_deref(), Some("team.billing"));
        let m = run(p, &record(b"x", "123")).unwrap();
        assert_eq!(m[0].topic, None);
        let p = r#"{"topic":{"from":"partition_key","pattern":"^([a-z]+)-"}}"#;
        let m = run(p, &record(b"x", "billing-123")).unwrap();
        assert_eq!(m[0].topic.as_deref(), Some("billing"));
    }

    #[test]
    fn key_from_a_field_or_none() {
        let m = run(
            r#"{"key":{"from":"field","field":"/id"}}"#,
            &record(br#"{"id":17}"#, "pk"),
        )
        .unwrap();
        assert_eq!(text(&m[0].key), "17");
        let m = run(
            r#"{"key":{"from":"field","field":"id"}}"#,
            &record(br#"{}"#, "pk"),
        )
        .unwrap();
        assert_eq!(
            text(&m[0].key),
            "pk",
            "missing field keeps the partition key"
        );
        let m = run(r#"{"key":{"from":"none"}}"#, &record(b"x", "pk")).unwrap();
        assert_eq!(m[0].key, None);
    }

    #[test]
    fn fixed_partition() {
        let m = run(
            r#"{"partition":{"by":"fixed","fixed":"2"}}"#,
            &record(b"x", "pk"),
        )
        .unwrap();
        assert_eq!(m[0].partition, Some(2));
    }

    #[test]
    fn filters_keep_or_drop() {
        let keep_orders = r#"{"filter":{"field":"type","equals":"order"}}"#;
        assert_eq!(
            run(keep_orders, &record(br#"{"type":"order"}"#, "k"))
                .unwrap()
                .len(),
            1
        );
        assert!(run(keep_orders, &record(br#"{"type":"ping"}"#, "k"))
            .unwrap()
            .is_empty());
        let drop_pings = r#"{"filter":{"field":"type","one_of":["ping","noop"],"action":"drop"}}"#;
        assert!(run(drop_pings, &record(br#"{"type":"noop"}"#, "k"))
            .unwrap()
            .is_empty());
        assert_eq!(
            run(drop_pings, &record(br#"{"type":"order"}"#, "k"))
                .unwrap()
                .len(),
            1
        );
        let has_user = r#"{"filter":{"field":"user.id","exists":true}}"#;
        assert_eq!(
            run(has_user, &record(br#"{"user":{"id":1}}"#, "k"))
                .unwrap()
                .len(),
            1
        );
        assert!(run(has_user, &record(br#"{"user":{}}"#, "k"))
            .unwrap()
            .is_empty());
        assert!(
            run(has_user, &record(b"plain text", "k")).is_err(),
            "a filter needs JSON"
        );
    }

    #[test]
    fn require_json_rejects_other_payloads() {
        let p = r#"{"validation":{"require_json":true,"on_invalid":"skip"}}"#;
        assert!(run(p, &record(br#"{"a":1}"#, "k")).is_ok());
        let err = run(p, &record(b"{broken", "k")).unwrap_err();
        assert!(err.0.contains("not JSON"), "{err}");
    }

    #[test]
    fn gzip_on_request_or_detected() {
        let zipped = gzip(b"hello");
        let m = run(r#"{"decompress":"gzip"}"#, &record(&zipped, "k")).unwrap();
        assert_eq!(text(&m[0].value), "hello");
        let m = run(r#"{"decompress":"auto"}"#, &record(&zipped, "k")).unwrap();
        assert_eq!(text(&m[0].value), "hello");
        let m = run(r#"{"decompress":"auto"}"#, &record(b"plain", "k")).unwrap();
        assert_eq!(text(&m[0].value), "plain");
        assert!(run(r#"{"decompress":"gzip"}"#, &record(b"plain", "k")).is_err());
    }

    #[test]
    fn cloudwatch_logs_become_one_message_per_event() {
        let envelope = br#"{"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"/aws/lambda/f","logStream":"2026/11/25/[$LATEST]abc","subscriptionFilters":["all"],"logEvents":[{"id":"e1","timestamp":1700000000001,"message":"first"},{"id":"e2","timestamp":1700000000002,"message":"{\"level\":\"info\"}"}]}"#;
        let zipped = gzip(envelope);
        let m = run(
            r#"{"cloudwatch_logs":{"enabled":true}}"#,
            &record(&zipped, "k"),
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(text(&m[0].value), "first");
        assert_eq!(text(&m[1].value), "{\"level\":\"info\"}");
        assert_eq!(text(&m[0].key), "2026/11/25/[$LATEST]abc");
        assert_eq!(m[1].timestamp, Some(1700000000002));
        let header = |m: &KafkaMessage<'_>, name: &str| {
            m.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8(v.to_vec()).unwrap())
        };
        assert_eq!(
            header(&m[0], HEADER_LOG_GROUP).as_deref(),
            Some("/aws/lambda/f")
        );
        assert_eq!(header(&m[1], HEADER_EVENT_ID).as_deref(), Some("e2"));
        let m = run(
            r#"{"cloudwatch_logs":{"enabled":true,"key":"event_id"}}"#,
            &record(&zipped, "k"),
        )
        .unwrap();
        assert_eq!(text(&m[1].key), "e2");
        let control = gzip(br#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE: Checking health of destination Kinesis stream."}]}"#);
        assert!(run(
            r#"{"cloudwatch_logs":{"enabled":true}}"#,
            &record(&control, "k")
        )
        .unwrap()
        .is_empty());
        assert!(run(
            r#"{"cloudwatch_logs":{"enabled":true}}"#,
            &record(b"not logs", "k")
        )
        .is_err());
    }

    #[test]
    fn json_envelope_embeds_json_and_base64s_the_rest() {
        let m = run(r#"{"envelope":"json"}"#, &record(br#"{"a":1}"#, "k")).unwrap();
        let v: Value = serde_json::from_slice(m[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(v["shardId"], "shardId-000000000003");
        assert_eq!(v["sequenceNumber"], "42");
        assert_eq!(v["partitionKey"], "k");
        assert_eq!(v["approximateArrivalTimestamp"], 1000);
        let m = run(r#"{"envelope":"json"}"#, &record(&[0xff, 0x00], "k")).unwrap();
        let v: Value = serde_json::from_slice(m[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(v["dataBase64"], "/wA=");
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let bad = [
            r#"{"topic":{"from":"field"}}"#,
            r#"{"topic":{"from":"partition_key","pattern":"("}}"#,
            r#"{"partition":{"by":"fixed"}}"#,
            r#"{"filter":{"field":"a","equals":1,"exists":true}}"#,
            r#"{"topic":{"from":"sideways"}}"#,
        ];
        for p in bad {
            let json = format!(
                r#"{{"kafka":{{"bootstrap_servers":"b:1","topic":"main"}},"processing":{p}}}"#
            );
            assert!(Config::from_template(&json, |_| None).is_err(), "{p}");
        }
        let no_dlq = r#"{"kafka":{"bootstrap_servers":"b:1","topic":"main"},"processing":{"validation":{"on_invalid":"dead_letter"}}}"#;
        let err = Config::from_template(no_dlq, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("KAFKA_DEAD_LETTER_TOPIC"), "{err}");
    }
}
