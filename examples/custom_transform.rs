//! A custom replicator built on the library: the stock command line, configuration and
//! processing stage, plus a transform of its own that runs after the configured stage.
//!
//! This one masks the `email` field of JSON payloads and tags what it touched. Build it
//! with `cargo build --release --example custom_transform` and point `executableName` at
//! `target/release/examples/custom_transform` instead of the stock binary.

use std::borrow::Cow;

use kinesis_kafka_replicator::cli;
use kinesis_kafka_replicator::transform::{
    KafkaMessage, KinesisRecord, Placement, Transform, TransformError,
};
use serde_json::Value;

struct MaskEmails;

impl Transform for MaskEmails {
    fn transform<'a>(
        &mut self,
        _record: &KinesisRecord<'a>,
        messages: &mut Vec<KafkaMessage<'a>>,
    ) -> Result<(), TransformError> {
        for message in messages.iter_mut() {
            let Some(value) = message.value.as_deref() else {
                continue;
            };
            // Not JSON, or no email: leave the message as it is.
            let Ok(mut json) = serde_json::from_slice::<Value>(value) else {
                continue;
            };
            let Some(email) = json.get_mut("email") else {
                continue;
            };
            *email = Value::String("***".into());
            let masked = serde_json::to_vec(&json)
                .map_err(|e| TransformError(format!("cannot re-encode the payload: {e}")))?;
            message.value = Some(Cow::Owned(masked));
            message
                .headers
                .push((Cow::Borrowed("masked"), Cow::Borrowed(b"email")));
        }
        Ok(())
    }
}

fn main() {
    cli::main(Some((Box::new(MaskEmails), Placement::After)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_email_field_only() {
        let record = KinesisRecord {
            shard_id: "shardId-000000000000",
            data: Some(br#"{"email":"a@b.c","n":1}"#),
            partition_key: Some("k"),
            sequence_number: Some("1"),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: None,
        };
        let mut messages = vec![KafkaMessage::from_record(&record)];
        MaskEmails.transform(&record, &mut messages).unwrap();
        let json: Value = serde_json::from_slice(messages[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(json["email"], "***");
        assert_eq!(json["n"], 1);
        assert_eq!(messages[0].headers.len(), 1);
    }
}
