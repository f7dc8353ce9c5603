//! Kinesis record → Kafka messages: the types a processing stage works with, the
//! [`Transform`] trait for custom stages, and the stage pipeline.
//!
//! A record becomes zero or more messages. It counts as delivered (and so may be
//! checkpointed) only when every one of its messages is acknowledged; a record that
//! becomes no message is done at once.

use std::borrow::Cow;
use std::fmt;

/// Header names of the Kinesis metadata added to every message (unless turned off).
pub const HEADER_SHARD_ID: &str = "kinesis.shardId";
pub const HEADER_SEQUENCE_NUMBER: &str = "kinesis.sequenceNumber";
pub const HEADER_SUB_SEQUENCE_NUMBER: &str = "kinesis.subSequenceNumber";
pub const HEADER_ARRIVAL_TIMESTAMP: &str = "kinesis.approximateArrivalTimestamp";

/// A decoded Kinesis record, as a processing stage sees it.
#[derive(Debug, Clone, Copy)]
pub struct KinesisRecord<'a> {
    pub shard_id: &'a str,
    /// The decoded payload; `None` when the daemon sent `"data":null`.
    pub data: Option<&'a [u8]>,
    pub partition_key: Option<&'a str>,
    pub sequence_number: Option<&'a str>,
    pub sub_sequence_number: i64,
    /// Epoch milliseconds.
    pub approximate_arrival_timestamp: Option<i64>,
}

/// One message for Kafka. Fields borrow from the record where they can.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaMessage<'a> {
    /// `None`: the configured `kafka.topic`.
    pub topic: Option<Cow<'a, str>>,
    pub key: Option<Cow<'a, [u8]>>,
    pub value: Option<Cow<'a, [u8]>>,
    /// `None`: the configured partitioning (murmur2 of the key, or by shard).
    pub partition: Option<i32>,
    /// Epoch milliseconds; `None`: the producer's clock.
    pub timestamp: Option<i64>,
    /// Headers in addition to the `kinesis.*` ones.
    pub headers: Vec<(Cow<'a, str>, Cow<'a, [u8]>)>,
}

impl<'a> KafkaMessage<'a> {
    /// The plain copy of a record: its payload, keyed by its partition key, stamped with
    /// its arrival time, to the configured topic.
    pub fn from_record(record: &KinesisRecord<'a>) -> Self {
        KafkaMessage {
            topic: None,
            key: record.partition_key.map(|k| Cow::Borrowed(k.as_bytes())),
            value: record.data.map(Cow::Borrowed),
            partition: None,
            timestamp: record.approximate_arrival_timestamp,
            headers: Vec::new(),
        }
    }
}

/// Why a stage rejected a record. What happens next is `processing.validation.on_invalid`:
/// stop, skip the record, or send it to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformError(pub String);

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TransformError {}

/// A processing stage: one record in; zero or more Kafka messages, or an error, out.
///
/// `messages` holds what the stages before this one made of `record`: for the first
/// stage, the plain copy ([`KafkaMessage::from_record`]). A stage edits, adds or removes
/// messages; clearing the list drops the record (it is then done, and may be
/// checkpointed). Messages may borrow from `record`.
///
/// ```
/// use std::borrow::Cow;
/// use kinesis_kafka_replicator::transform::{KafkaMessage, KinesisRecord, Transform, TransformError};
///
/// /// Upper-cases every payload.
/// struct Shout;
///
/// impl Transform for Shout {
///     fn transform<'a>(
///         &mut self,
///         _record: &KinesisRecord<'a>,
///         messages: &mut Vec<KafkaMessage<'a>>,
///     ) -> Result<(), TransformError> {
///         for message in messages.iter_mut() {
///             if let Some(value) = &message.value {
///                 message.value = Some(Cow::Owned(value.to_ascii_uppercase()));
///             }
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Transform: Send {
    fn transform<'a>(
        &mut self,
        record: &KinesisRecord<'a>,
        messages: &mut Vec<KafkaMessage<'a>>,
    ) -> Result<(), TransformError>;
}

/// Where a custom transform goes relative to the configured processing stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The custom transform replaces the configured stage (which is then not run).
    Replace,
    /// The custom transform runs on what the configured stage produced.
    After,
}

/// The stages a record goes through, in order.
#[derive(Default)]
pub struct Pipeline {
    stages: Vec<Box<dyn Transform>>,
}

impl Pipeline {
    pub fn new(stages: Vec<Box<dyn Transform>>) -> Self {
        Pipeline { stages }
    }

    /// Fills `messages` (which must be empty) with the messages for `record`.
    pub fn apply<'a>(
        &mut self,
        record: &KinesisRecord<'a>,
        messages: &mut Vec<KafkaMessage<'a>>,
    ) -> Result<(), TransformError> {
        messages.push(KafkaMessage::from_record(record));
        for stage in &mut self.stages {
            stage.transform(record, messages)?;
        }
        Ok(())
    }
}

/// Empties a vector of messages and gives its allocation a new lifetime, so one buffer
/// serves every record (the standard library collects in place for same-layout types).
pub fn recycle<'b>(mut messages: Vec<KafkaMessage<'_>>) -> Vec<KafkaMessage<'b>> {
    messages.clear();
    messages
        .into_iter()
        .map(|_| KafkaMessage::default())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct DropOdd;

    impl Transform for DropOdd {
        fn transform<'a>(
            &mut self,
            record: &KinesisRecord<'a>,
            messages: &mut Vec<KafkaMessage<'a>>,
        ) -> Result<(), TransformError> {
            if record.sub_sequence_number % 2 == 1 {
                messages.clear();
            }
            Ok(())
        }
    }

    fn record(sub: i64) -> KinesisRecord<'static> {
        KinesisRecord {
            shard_id: "shardId-000000000001",
            data: Some(b"payload"),
            partition_key: Some("k"),
            sequence_number: Some("1"),
            sub_sequence_number: sub,
            approximate_arrival_timestamp: Some(5),
        }
    }

    #[test]
    fn the_default_message_borrows_the_record() {
        let mut pipeline = Pipeline::default();
        let mut messages = Vec::new();
        pipeline.apply(&record(0), &mut messages).unwrap();
        assert_eq!(messages.len(), 1);
        assert!(matches!(messages[0].value, Some(Cow::Borrowed(b"payload"))));
        assert_eq!(messages[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(messages[0].timestamp, Some(5));
    }

    #[test]
    fn stages_can_drop_records() {
        let mut pipeline = Pipeline::new(vec![Box::new(DropOdd)]);
        let mut messages = Vec::new();
        pipeline.apply(&record(1), &mut messages).unwrap();
        assert!(messages.is_empty());
        let mut messages = recycle(messages);
        pipeline.apply(&record(2), &mut messages).unwrap();
        assert_eq!(messages.len(), 1);
    }

    #[test]
    fn recycling_keeps_the_allocation() {
        let mut messages = Vec::with_capacity(8);
        messages.push(KafkaMessage::from_record(&record(0)));
        let capacity = messages.capacity();
        let recycled: Vec<KafkaMessage<'static>> = recycle(messages);
        assert!(recycled.is_empty());
        assert_eq!(recycled.capacity(), capacity);
    }
}
