//! The Kafka side: producer setup, delivery reports, backpressure, and the topic check.
//!
//! Delivery reports are handled on librdkafka's polling thread (`ThreadedProducer`), which
//! only updates the [`Frontier`]; it never blocks. The session thread sends, and waits on
//! the frontier when the producer's queue or the in-flight window is full.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use log::{debug, error, warn};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::checkpoint::{Frontier, RecordId};
use crate::config::Config;

/// A message ready to be produced. It borrows everything it can from the daemon's line.
pub struct OutgoingMessage<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// `None`: the partitioner chooses (murmur2 of the key).
    pub partition: Option<i32>,
    /// Epoch milliseconds; `None`: the producer's clock.
    pub timestamp: Option<i64>,
    pub headers: Option<OwnedHeaders>,
}

/// A message that librdkafka gave up on (only when the user set a finite
/// `message.timeout.ms`): it is produced again, so a long outage loses nothing.
struct Resend {
    id: RecordId,
    topic: String,
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: Option<i64>,
    headers: Option<OwnedHeaders>,
}

/// Receives delivery reports on librdkafka's thread.
pub struct DeliveryContext {
    frontier: Arc<Frontier>,
    resends: Mutex<Vec<Resend>>,
    /// The last error librdkafka reported for the client as a whole (e.g. authentication),
    /// so that a stalled producer or `--check-config` can say why.
    last_client_error: Mutex<Option<String>>,
}

impl DeliveryContext {
    fn last_client_error(&self) -> Option<String> {
        self.last_client_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        // librdkafka's own lines go through `log`, so they reach stderr with the shard tag.
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", "{fac}: {log_message}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "{fac}: {log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                log::info!(target: "librdkafka", "{fac}: {log_message}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", "{fac}: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(target: "librdkafka", "{error}: {reason}");
        if let Ok(mut last) = self.last_client_error.lock() {
            *last = Some(format!("{error}: {reason}"));
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, id: usize) {
        let (error, message) = match result {
            Ok(_) => {
                self.frontier.acknowledge(id);
                return;
            }
            Err((error, message)) => (error, message),
        };
        match error.rdkafka_error_code() {
            // Only at exit, when the producer is dropped: these records stay behind the
            // checkpoint and will be read again.
            Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => {}
            Some(RDKafkaErrorCode::MessageTimedOut) => {
                warn!(
                    "a message to {} timed out after message.timeout.ms; producing it again",
                    message.topic()
                );
                let resend = Resend {
                    id,
                    topic: message.topic().to_owned(),
                    partition: None,
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    timestamp: message.timestamp().to_millis(),
                    headers: message.headers().map(|h| h.detach()),
                };
                if let Ok(mut resends) = self.resends.lock() {
                    resends.push(resend);
                }
                self.frontier.wake();
            }
            _ => self.frontier.fail(
                id,
                format!(
                    "Kafka refused the message for topic {} partition {}: {error}",
                    message.topic(),
                    message.partition()
                ),
            ),
        }
    }
}

/// The producer with its frontier.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryContext>,
    frontier: Arc<Frontier>,
}

/// A record that could not even be queued, for a reason that retrying will not fix.
#[derive(Debug)]
pub struct SendError(pub String);

impl KafkaSink {
    pub fn new(config: &Config, frontier: Arc<Frontier>) -> Result<KafkaSink> {
        let context = DeliveryContext {
            frontier: frontier.clone(),
            resends: Mutex::new(Vec::new()),
            last_client_error: Mutex::new(None),
        };
        let producer: ThreadedProducer<DeliveryContext> = client_config(config)
            .create_with_context(context)
            .map_err(|e| anyhow!("cannot create the Kafka producer: {e}; check kafka.properties in the configuration"))?;
        Ok(KafkaSink { producer, frontier })
    }

    /// Queues one message of record `id`. When librdkafka's queue is full, waits for room:
    /// a record is never dropped to keep up.
    pub fn send(&self, id: RecordId, message: OutgoingMessage<'_>) -> Result<(), SendError> {
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(message.topic, id);
        if let Some(key) = message.key {
            record = record.key(key);
        }
        if let Some(value) = message.value {
            record = record.payload(value);
        }
        if let Some(partition) = message.partition {
            record = record.partition(partition);
        }
        if let Some(timestamp) = message.timestamp {
            record = record.timestamp(timestamp);
        }
        if let Some(headers) = message.headers {
            record = record.headers(headers);
        }
        let mut waited_since: Option<Instant> = None;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    let since = *waited_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(30) {
                        warn!("librdkafka's queue has been full for 30 s; still waiting for Kafka to acknowledge");
                        waited_since = Some(Instant::now());
                    }
                    let acknowledged = self.frontier.state().acknowledged_messages;
                    self.frontier.wait_until(Duration::from_millis(50), |s| {
                        s.acknowledged_messages != acknowledged
                    });
                }
                Err((error, _)) => {
                    return Err(SendError(format!(
                        "Kafka refused the message for topic {} before sending it: {error}",
                        message.topic
                    )))
                }
            }
        }
    }

    /// Produces again the messages that librdkafka timed out.
    pub fn resend_timed_out(&self) -> Result<(), SendError> {
        let resends = match self.producer.context().resends.lock() {
            Ok(mut resends) => std::mem::take(&mut *resends),
            Err(_) => return Ok(()),
        };
        for r in resends {
            self.send(
                r.id,
                OutgoingMessage {
                    topic: &r.topic,
                    key: r.key.as_deref(),
                    value: r.value.as_deref(),
                    partition: r.partition,
                    timestamp: r.timestamp,
                    headers: r.headers,
                },
            )?;
        }
        Ok(())
    }

    pub fn last_client_error(&self) -> Option<String> {
        self.producer.context().last_client_error()
    }

    /// Gives librdkafka a bounded time to deliver what is queued (at exit).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            debug!("flush: {e}");
        }
    }
}

fn client_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in config.producer_properties() {
        client.set(key, value);
    }
    client.set_log_level(
        if log::log_enabled!(target: "librdkafka", log::Level::Debug) {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Info
        },
    );
    client
}

/// What `--check-config` found on the broker.
pub struct TopicCheck {
    pub brokers: usize,
    pub partitions: usize,
}

/// Connects within `timeout` and checks that the topic exists, without creating it (a
/// metadata request for one topic can auto-create it on some brokers, so all topics are
/// listed instead).
pub fn check_topic(config: &Config, timeout: Duration) -> Result<TopicCheck> {
    let producer: BaseProducer = client_config(config)
        .create()
        .context("cannot create a Kafka client; check kafka.properties")?;
    let servers = &config.kafka.bootstrap_servers;
    let metadata = producer.client().fetch_metadata(None, timeout).map_err(|e| {
        anyhow!(
            "cannot reach Kafka at {servers} within {} s ({e}); check KAFKA_BOOTSTRAP_SERVERS, the network and the security settings",
            timeout.as_secs()
        )
    })?;
    let topic = &config.kafka.topic;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic.as_str())
        .filter(|t| t.error().is_none() && !t.partitions().is_empty());
    match found {
        Some(t) => Ok(TopicCheck {
            brokers: metadata.brokers().len(),
            partitions: t.partitions().len(),
        }),
        None => Err(anyhow!(
            "topic {topic} does not exist on {servers}; create it (the replicator never creates topics) or fix KAFKA_TOPIC"
        )),
    }
}

/// Reads a header value as UTF-8, for logs and tests.
pub fn header_str<H: Headers>(headers: &H, name: &str) -> Option<String> {
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}
