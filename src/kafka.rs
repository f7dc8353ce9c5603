//! The Kafka side: producer setup, delivery reports, backpressure, partitioning by
//! shard, the dead-letter topic, and the topic check.
//!
//! Delivery reports are handled on the producer's polling thread ([`PolledProducer`]), which
//! only updates the [`Frontier`] or hands a message back to the session thread; it never
//! blocks. The session thread sends, and waits on the frontier when the producer's queue
//! or the in-flight window is full.

use std::cell::Cell;
use std::collections::HashMap;
use std::error::Error;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use log::{debug, error, info, warn};
use rdkafka::client::OAuthToken;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::checkpoint::{Frontier, Position, RecordId};
use crate::config::{Config, PartitionStrategy, TimestampSource};
use crate::metrics::{Metrics, METRICS_SOCKET_ENV};
use crate::msk_iam::{self, MskIam};
pub use crate::polled_producer::PolledProducer;
use crate::produce_again::{self, Delivered, ProduceAgain};
use crate::transform::{
    KafkaMessage, KinesisRecord, HEADER_ARRIVAL_TIMESTAMP, HEADER_SEQUENCE_NUMBER, HEADER_SHARD_ID,
    HEADER_SUB_SEQUENCE_NUMBER,
};

/// Headers added to a dead-lettered message.
pub const HEADER_DEAD_LETTER_ERROR: &str = "dlq.error";
pub const HEADER_DEAD_LETTER_SOURCE_TOPIC: &str = "dlq.source.topic";

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A message handed back by the delivery thread to the session, which may produce.
struct Returned {
    /// The delivery opaque: record id and generation ([`produce_again::opaque`]).
    opaque: usize,
    message: Refused,
    what: Handback,
}

enum Handback {
    /// Kafka refused it for good and a dead-letter topic is configured.
    DeadLetter { reason: String },
    /// Refused only because a batchmate was invalid: produce it again to its partition.
    Again { partition: i32, reason: String },
    /// Delivered, but maybe ahead of a batchmate produced again: copy it behind.
    Delivered { partition: i32 },
}

/// Receives delivery reports on librdkafka's thread.
pub struct DeliveryContext {
    frontier: Arc<Frontier>,
    dead_letter_topic: Option<String>,
    returned: Mutex<Vec<Returned>>,
    again: ProduceAgain,
    metrics: Arc<Metrics>,
    last_error: LastError,
    /// Makes the OAUTHBEARER tokens with KAFKA_SASL_MECHANISM=AWS_MSK_IAM.
    msk_iam: Option<MskIam>,
    /// Exactly-once: the positions topic. A failed message fails its record and nothing
    /// is produced again or dead-lettered from here: the whole transaction is aborted and
    /// replayed from the last committed position.
    positions_topic: Option<String>,
    /// Exactly-once with a dead-letter topic: the messages the broker refused for good in
    /// the open transaction, for the session to dead-letter once it is aborted.
    refused: Mutex<Vec<RefusedMessage>>,
}

/// A message the broker refused for good inside a transaction (exactly-once).
pub struct RefusedMessage {
    pub id: RecordId,
    /// Its place among its record's messages.
    pub index: usize,
    pub reason: String,
    message: Refused,
}

/// Whether a delivery error is about the message itself (what at-least-once mode
/// dead-letters), not about the transaction, the producer or a batchmate.
fn refused_for_good(code: Option<RDKafkaErrorCode>) -> bool {
    !matches!(
        code,
        Some(
            RDKafkaErrorCode::PurgeQueue
                | RDKafkaErrorCode::PurgeInflight
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::InvalidDifferentRecord
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::InvalidTransactionalState
                | RDKafkaErrorCode::InvalidProducerIdMapping
                | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::State
                | RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::OutOfOrderSequenceNumber
                | RDKafkaErrorCode::UnknownProducerId
        )
    )
}

impl ClientContext for DeliveryContext {
    // librdkafka asks again at 80% of a token's lifetime; the polling thread answers.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn Error>> {
        msk_iam::generate(self.msk_iam.as_ref())
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.producer_error(&error_kind(&error));
        self.last_error.record(&error, reason);
    }

    /// librdkafka's statistics (every `statistics.interval.ms`, set only when metrics are
    /// exported): the producer's queue and each broker's round-trip time. Read from the raw
    /// JSON, field by field: a field a newer librdkafka renames loses that figure only.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            debug!("librdkafka statistics that are not JSON");
            return;
        };
        if let Some(queued) = json["msg_cnt"].as_u64() {
            self.metrics
                .producer_queue_messages
                .store(queued, Ordering::Relaxed);
        }
        let rtts = json["brokers"]
            .as_object()
            .into_iter()
            .flat_map(|brokers| brokers.values())
            // Bootstrap and internal handles have no node id.
            .filter(|b| b["nodeid"].as_i64().is_some_and(|id| id >= 0))
            .filter_map(|b| {
                let name = b["nodename"].as_str()?.to_owned();
                let avg_micros = b["rtt"]["avg"].as_f64()?;
                Some((name, avg_micros / 1e6))
            })
            .collect();
        self.metrics.set_broker_rtts(rtts);
    }
}

/// The name of a librdkafka error, for a metric label (`MessageSizeTooLarge`, ...).
fn error_kind(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("{code:?}"),
        None => "Other".to_owned(),
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (id, _) = produce_again::split_opaque(opaque);
        if self.positions_topic.is_some() {
            self.transactional_delivery(result, opaque);
            return;
        }
        let (error, message) = match result {
            Ok(message) => {
                if self.is_dead_letter_topic(message.topic()) {
                    self.metrics
                        .messages_dead_lettered
                        .fetch_add(1, Ordering::Relaxed);
                }
                match self
                    .again
                    .delivered(message.topic(), message.partition(), opaque)
                {
                    Delivered::Acknowledge => {
                        if let Some(arrival) = self.frontier.acknowledge(id) {
                            self.metrics.acknowledged_record(arrival);
                        }
                    }
                    Delivered::Ask => self.hand_back(
                        opaque,
                        message,
                        Handback::Delivered {
                            partition: message.partition(),
                        },
                    ),
                }
                return;
            }
            Err((error, message)) => (error, message),
        };
        self.metrics.delivery_failed(&error_kind(error));
        let reason = match error.rdkafka_error_code() {
            // Only at exit, when the producer is dropped: these records stay behind the
            // checkpoint and will be read again.
            Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => return,
            // Cannot happen with the timeouts configuration allows (none). Producing it
            // again would put it behind later records of its key, so it fails instead:
            // nothing passes it, and the daemon replays it in order.
            Some(RDKafkaErrorCode::MessageTimedOut) => {
                self.frontier.fail(
                    id,
                    format!(
                        "librdkafka gave up on a message to {} (message.timeout.ms)",
                        message.topic()
                    ),
                );
                return;
            }
            // A good message in a batch the broker refused for another record of it.
            Some(RDKafkaErrorCode::InvalidDifferentRecord) => {
                self.again
                    .refused_batchmate(message.topic(), message.partition(), id);
                self.hand_back(
                    opaque,
                    message,
                    Handback::Again {
                        partition: message.partition(),
                        reason: format!("{error}"),
                    },
                );
                return;
            }
            _ => format!(
                "Kafka refused the message for topic {} partition {}: {error}",
                message.topic(),
                message.partition()
            ),
        };
        if self.dead_letter_topic.is_none() || self.is_dead_letter_topic(message.topic()) {
            self.frontier.fail(id, reason);
            return;
        }
        self.hand_back(opaque, message, Handback::DeadLetter { reason });
    }
}

impl DeliveryContext {
    /// A delivery report of a transactional producer. The position record's own report is
    /// not a record's: its failure shows as the commit's.
    fn transactional_delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (id, index) = produce_again::split_opaque(opaque);
        match result {
            Ok(message) => {
                if self.positions_topic.as_deref() == Some(message.topic()) {
                    return;
                }
                if self.is_dead_letter_topic(message.topic()) {
                    self.metrics
                        .messages_dead_lettered
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let Some(arrival) = self.frontier.acknowledge(id) {
                    self.metrics.acknowledged_record(arrival);
                }
            }
            Err((error, message)) => {
                // An abort purges what is queued: those records are produced again.
                if matches!(
                    error.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
                ) || self.positions_topic.as_deref() == Some(message.topic())
                {
                    return;
                }
                self.metrics.delivery_failed(&error_kind(error));
                let reason = format!(
                    "Kafka refused the message for topic {} partition {}: {error}",
                    message.topic(),
                    message.partition()
                );
                if self.dead_letter_topic.is_some()
                    && !self.is_dead_letter_topic(message.topic())
                    && refused_for_good(error.rdkafka_error_code())
                {
                    if let Ok(mut refused) = self.refused.lock() {
                        refused.push(RefusedMessage {
                            id,
                            index,
                            reason: reason.clone(),
                            message: Refused::copy_of(message),
                        });
                    }
                }
                self.frontier.fail(id, reason);
            }
        }
    }

    /// Copies a reported message for the session thread, which produces from it.
    fn hand_back(&self, opaque: usize, message: &BorrowedMessage<'_>, what: Handback) {
        let returned = Returned {
            opaque,
            message: Refused::copy_of(message),
            what,
        };
        if let Ok(mut list) = self.returned.lock() {
            list.push(returned);
        }
        self.frontier.wake();
    }
}

/// The last error librdkafka reported for the client as a whole (a refused password, all
/// brokers down), so that a stalled producer or a failed check can say why.
#[derive(Default)]
struct LastError(Mutex<Option<ClientError>>);

struct ClientError {
    authentication: bool,
    reason: String,
}

impl LastError {
    fn record(&self, error: &KafkaError, reason: &str) {
        // librdkafka has already logged it through `log`.
        debug!(target: "librdkafka", "{error}: {reason}");
        let authentication = error.rdkafka_error_code() == Some(RDKafkaErrorCode::Authentication);
        if let Ok(mut last) = self.0.lock() {
            // A refused password is the cause of every "all brokers are down" that follows
            // it (librdkafka drops the connection and reports that next): keep the cause.
            let keep_cause = !authentication && last.as_ref().is_some_and(|l| l.authentication);
            if !keep_cause {
                *last = Some(ClientError {
                    authentication,
                    reason: reason.to_owned(),
                });
            }
        }
    }

    fn get(&self) -> Option<String> {
        self.0
            .lock()
            .ok()
            .and_then(|last| last.as_ref().map(|l| l.reason.clone()))
    }

    /// The broker's refusal of the SASL credentials, if that is what happened.
    fn authentication(&self) -> Option<String> {
        self.0.lock().ok().and_then(|last| {
            last.as_ref()
                .filter(|l| l.authentication)
                .map(|l| l.reason.clone())
        })
    }
}

/// librdkafka's own lines go through `log`, so they reach stderr with the shard tag.
fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => error!(target: "librdkafka", "{fac}: {message}"),
        RDKafkaLogLevel::Warning => warn!(target: "librdkafka", "{fac}: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            info!(target: "librdkafka", "{fac}: {message}")
        }
        RDKafkaLogLevel::Debug => debug!(target: "librdkafka", "{fac}: {message}"),
    }
}

impl DeliveryContext {
    fn is_dead_letter_topic(&self, topic: &str) -> bool {
        self.dead_letter_topic.as_deref() == Some(topic)
    }
}

/// A message that could not be queued, for a reason that retrying will not fix.
#[derive(Debug)]
pub struct SendError(pub String);

/// The producer, with what it needs to address and account for every message.
pub struct KafkaSink {
    producer: PolledProducer<DeliveryContext>,
    frontier: Arc<Frontier>,
    default_topic: String,
    kinesis_headers: bool,
    /// The record's arrival time as the message timestamp (else the produce time).
    arrival_timestamps: bool,
    by_shard: bool,
    shard_id: String,
    /// The shard's ordinal (the number in `shardId-000000000007`), for partitioning by shard.
    shard_ordinal: u64,
    /// Partition counts of the topics written to, for partitioning by shard.
    partition_counts: HashMap<String, i32>,
    /// Times each record was produced again for a refused batchmate, while any
    /// partition is watched ([`produce_again`]).
    attempts: HashMap<RecordId, u32>,
    /// Exactly-once: what a shard's transactional producer is made from, and whether a
    /// transaction is open.
    transactions: Option<Transactions>,
}

struct Transactions {
    config: Box<Config>,
    open: Cell<bool>,
    /// The position record is in the open transaction (a commit is being retried).
    position_written: Cell<bool>,
}

impl Transactions {
    /// The open transaction was committed or aborted.
    fn ended(&self) {
        self.open.set(false);
        self.position_written.set(false);
    }
}

/// How a transactional call failed, as the session acts on it.
#[derive(Debug)]
pub enum TxnError {
    /// The producer can do nothing more: another producer with the same transactional id
    /// (the shard's next owner) fenced it, or another fatal error.
    Fatal(String),
    /// The open transaction must be aborted.
    Abort(String),
    /// The same call may be made again (a timeout, a coordinator moving).
    Retry(String),
}

impl std::fmt::Display for TxnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TxnError::Fatal(m) | TxnError::Abort(m) | TxnError::Retry(m) => f.write_str(m),
        }
    }
}

fn txn_error(what: &str, error: KafkaError) -> TxnError {
    let message = format!("{what}: {error}");
    match &error {
        KafkaError::Transaction(e) if e.is_fatal() => TxnError::Fatal(message),
        KafkaError::Transaction(e) if e.txn_requires_abort() => TxnError::Abort(message),
        KafkaError::Transaction(e) if e.is_retriable() => TxnError::Retry(message),
        // The flush before a commit timed out: the commit may be tried again.
        KafkaError::Flush(_) => TxnError::Retry(message),
        _ => TxnError::Abort(message),
    }
}

/// A producer (with its polling thread) whose delivery reports update `frontier`:
/// transactional when `transactional_id` is given.
fn new_producer(
    config: &Config,
    frontier: &Arc<Frontier>,
    metrics: &Arc<Metrics>,
    transactional_id: Option<&str>,
) -> Result<PolledProducer<DeliveryContext>> {
    let context = DeliveryContext {
        frontier: frontier.clone(),
        dead_letter_topic: config.dead_letter_topic().map(str::to_owned),
        returned: Mutex::new(Vec::new()),
        again: ProduceAgain::default(),
        metrics: metrics.clone(),
        last_error: LastError::default(),
        msk_iam: msk_iam::for_config(config)?,
        positions_topic: transactional_id.map(|_| config.positions_topic()),
        refused: Mutex::new(Vec::new()),
    };
    let mut client = client_config(config);
    if let Some(id) = transactional_id {
        client.set("transactional.id", id);
    }
    // The queue depth and broker round-trip times, when metrics are exported.
    if std::env::var_os(METRICS_SOCKET_ENV).is_some_and(|p| !p.is_empty())
        && client.get("statistics.interval.ms").is_none()
    {
        client.set("statistics.interval.ms", "5000");
    }
    let producer: BaseProducer<DeliveryContext> = client
        .create_with_context(context)
        .map_err(|e| anyhow!("cannot create the Kafka producer: {e}; check kafka.properties in the configuration"))?;
    PolledProducer::new(producer)
        .map_err(|e| anyhow!("cannot start the producer's polling thread: {e}"))
}

impl KafkaSink {
    pub fn new(config: &Config, frontier: Arc<Frontier>) -> Result<KafkaSink> {
        Self::with_metrics(config, frontier, Arc::new(Metrics::new()))
    }

    /// [`Self::new`], counting into `metrics`.
    pub fn with_metrics(
        config: &Config,
        frontier: Arc<Frontier>,
        metrics: Arc<Metrics>,
    ) -> Result<KafkaSink> {
        let producer = new_producer(config, &frontier, &metrics, None)?;
        warm_up(&producer, config.kafka.topic.trim());
        Ok(KafkaSink {
            producer,
            frontier,
            default_topic: config.kafka.topic.trim().to_owned(),
            kinesis_headers: config.records.headers,
            arrival_timestamps: config.records.timestamp == TimestampSource::Arrival,
            by_shard: config.processing.partition.by == PartitionStrategy::Shard,
            shard_id: String::new(),
            shard_ordinal: 0,
            partition_counts: HashMap::new(),
            attempts: HashMap::new(),
            transactions: config.exactly_once().then(|| Transactions {
                config: Box::new(config.clone()),
                open: Cell::new(false),
                position_written: Cell::new(false),
            }),
        })
    }

    /// Called once the shard is known. With partitioning by shard, looks up the target
    /// topic's partition count and says how shards map onto partitions.
    pub fn set_shard(&mut self, shard_id: &str, number_of_shards: Option<u32>) {
        self.shard_id = shard_id.to_owned();
        self.shard_ordinal = shard_ordinal(shard_id);
        if !self.by_shard {
            return;
        }
        let topic = self.default_topic.clone();
        match self.partition_count(&topic) {
            Ok(Some(partitions)) => {
                let partition = self.shard_ordinal % partitions as u64;
                info!("partitioning by shard: {shard_id} writes to partition {partition} of the {partitions} of {topic}");
                match number_of_shards {
                    Some(shards) if shards as i64 > partitions as i64 => warn!(
                        "NUMBER_OF_SHARDS is {shards} but {topic} has {partitions} partitions: several shards share a partition (shard ordinal modulo {partitions}); each shard's order is still kept"
                    ),
                    Some(shards) if (shards as i64) < partitions as i64 => warn!(
                        "NUMBER_OF_SHARDS is {shards} but {topic} has {partitions} partitions: some partitions get no records (child shards after resharding have higher ordinals and use them)"
                    ),
                    _ => {}
                }
            }
            Ok(None) => warn!("partitioning by shard: {topic} has no partitions (does it exist?); it is looked up again at the first record"),
            Err(e) => warn!("partitioning by shard: cannot read the partition count of {topic} yet ({e}); the first record waits for it"),
        }
    }

    /// The partition of this shard in `topic` (`None`: the default topic). Waits while Kafka
    /// cannot say how many partitions the topic has: falling back to the key's partition
    /// would break the shard's order, and waiting holds the shard (backpressure). `None`
    /// only when the broker answers that the topic does not exist: producing to it then
    /// fails as for any unknown topic.
    fn shard_partition(&mut self, topic: Option<&str>) -> Option<i32> {
        let name = topic.unwrap_or(&self.default_topic).to_owned();
        let started = Instant::now();
        let count = loop {
            match self.partition_count(&name) {
                Ok(count) => break count?,
                Err(e) => warn!(
                    "partitioning by shard: cannot read the partition count of {name} ({e}); holding the shard's records for {} s so far, until Kafka answers",
                    started.elapsed().as_secs()
                ),
            }
        };
        Some((self.shard_ordinal % count as u64) as i32)
    }

    /// The topic's partition count: `Ok(None)` when the broker says the topic does not
    /// exist (or has no partitions yet), `Err` when Kafka did not answer within
    /// METADATA_TIMEOUT.
    fn partition_count(&mut self, topic: &str) -> Result<Option<i32>, KafkaError> {
        if let Some(count) = self.partition_counts.get(topic) {
            return Ok(Some(*count));
        }
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0);
        if let Some(count) = count {
            self.partition_counts.insert(topic.to_owned(), count);
        }
        Ok(count)
    }

    /// Queues one message of record `id`. When librdkafka's queue is full, waits for room:
    /// a record is never dropped to keep up. A message Kafka refuses at once goes to the
    /// dead-letter topic when there is one.
    /// `index`: the message's place among its record's messages (exactly-once names a
    /// dead-lettered message by its record's position and this).
    pub fn send(
        &mut self,
        id: RecordId,
        index: usize,
        record: &KinesisRecord<'_>,
        message: KafkaMessage<'_>,
    ) -> Result<(), SendError> {
        let partition = match message.partition {
            None if self.by_shard => self.shard_partition(message.topic.as_deref()),
            partition => partition,
        };
        let topic = message.topic.as_deref().unwrap_or(&self.default_topic);
        let mut headers = self.kinesis_headers.then(|| kinesis_headers(record));
        for (name, value) in &message.headers {
            headers = Some(headers.unwrap_or_default().insert(Header {
                key: name,
                value: Some(value.as_ref()),
            }));
        }
        let outgoing = Outgoing {
            topic,
            key: message.key.as_deref(),
            value: message.value.as_deref(),
            partition,
            // None: librdkafka stamps the produce time.
            timestamp: message.timestamp.filter(|_| self.arrival_timestamps),
            headers,
        };
        match self.enqueue(id, index, outgoing) {
            Ok(()) => Ok(()),
            Err((reason, returned)) => {
                let position = self.frontier.position(id);
                self.dead_letter_or_fail(id, index, returned, reason, position.as_ref())
            }
        }
    }

    /// Sends a record that the processing stage rejected to the dead-letter topic.
    pub fn dead_letter(
        &mut self,
        id: RecordId,
        record: &KinesisRecord<'_>,
        reason: &str,
    ) -> Result<(), SendError> {
        let Some(dead_letter_topic) = self.producer.context().dead_letter_topic.clone() else {
            return Err(SendError(format!("no dead-letter topic for: {reason}")));
        };
        let headers = dead_letter_headers(kinesis_headers(record), reason, &self.default_topic);
        let outgoing = Outgoing {
            topic: &dead_letter_topic,
            key: record.partition_key.map(str::as_bytes),
            value: record.data,
            partition: None,
            timestamp: record.approximate_arrival_timestamp,
            headers: Some(headers),
        };
        self.enqueue(id, 0, outgoing).map_err(|(reason, _)| {
            SendError(format!("the dead-letter topic refused it too: {reason}"))
        })
    }

    /// Sends a message Kafka refused to the dead-letter topic, or fails its record.
    fn dead_letter_or_fail(
        &mut self,
        id: RecordId,
        index: usize,
        refused: Refused,
        reason: String,
        position: Option<&Position>,
    ) -> Result<(), SendError> {
        let dead_letter_topic = self.producer.context().dead_letter_topic.clone();
        let Some(dead_letter_topic) = dead_letter_topic.filter(|t| *t != refused.topic) else {
            return Err(SendError(reason));
        };
        let mut headers = refused.headers.unwrap_or_default();
        if !self.kinesis_headers {
            // The dead-letter message always says where it came from.
            headers = headers.insert(Header {
                key: HEADER_SHARD_ID,
                value: Some(self.shard_id.as_str()),
            });
            if let Some(position) = position {
                headers = headers
                    .insert(Header {
                        key: HEADER_SEQUENCE_NUMBER,
                        value: Some(&*position.sequence_number),
                    })
                    .insert(Header {
                        key: HEADER_SUB_SEQUENCE_NUMBER,
                        value: Some(position.sub_sequence_number.to_string().as_str()),
                    });
            }
        }
        let headers = dead_letter_headers(headers, &reason, &refused.topic);
        warn!(
            "dead-lettering a message of {}: {reason}",
            position.map_or("a record without sequence number".to_owned(), |p| p
                .to_string())
        );
        let outgoing = Outgoing {
            topic: &dead_letter_topic,
            key: refused.key.as_deref(),
            value: refused.value.as_deref(),
            partition: None,
            timestamp: refused.timestamp,
            headers: Some(headers),
        };
        self.enqueue(id, index, outgoing).map_err(|(dead_letter_reason, _)| {
            SendError(format!(
                "{reason}; the dead-letter topic {dead_letter_topic} refused it too: {dead_letter_reason}"
            ))
        })
    }

    /// Hands one message to librdkafka, waiting while its queue is full.
    fn enqueue(
        &self,
        id: RecordId,
        index: usize,
        message: Outgoing<'_>,
    ) -> Result<(), (String, Refused)> {
        // Exactly-once never produces again: the opaque's upper bits carry the message's
        // index instead of a generation, for a refused message to be named.
        let generation = if self.transactions.is_some() {
            index
        } else {
            self.producer.context().again.generation()
        };
        self.enqueue_stamped(produce_again::opaque(id, generation), message)
    }

    /// [`Self::enqueue`] with the delivery opaque given.
    fn enqueue_stamped(
        &self,
        opaque: usize,
        message: Outgoing<'_>,
    ) -> Result<(), (String, Refused)> {
        let (id, _) = produce_again::split_opaque(opaque);
        if let Err(reason) = self.begin_transaction() {
            // The session finds the failure and ends the transaction.
            self.frontier.fail(id, reason);
            return Ok(());
        }
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(message.topic, opaque);
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
        let mut waiting_since: Option<Instant> = None;
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    if waiting_since.is_some() {
                        self.producer.context().metrics.set_waiting(false);
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    if waiting_since.is_none() {
                        self.producer.context().metrics.set_waiting(true);
                    }
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(30) {
                        warn!("librdkafka's queue has been full for 30 s; still waiting for Kafka to acknowledge");
                        waiting_since = Some(Instant::now());
                    }
                    // The shard stops at an earlier record that failed for good: this one
                    // will be read again after it. Waiting on for room would hold the
                    // child for as long as Kafka is down, and spin (the wait below returns
                    // at once once a failure is recorded).
                    if self.frontier.failure().is_some() {
                        self.producer.context().metrics.set_waiting(false);
                        self.frontier.fail(
                            id,
                            "not queued: the shard stops at an earlier record".to_owned(),
                        );
                        return Ok(());
                    }
                    // librdkafka's own queue (far larger than the window) is full: give
                    // its delivery reports a moment to free room.
                    let acknowledged = self.frontier.state().acknowledged_messages;
                    self.frontier.wait_until(Duration::from_millis(10), |s| {
                        s.acknowledged_messages != acknowledged
                    });
                }
                Err((error, returned)) => {
                    if waiting_since.is_some() {
                        self.producer.context().metrics.set_waiting(false);
                    }
                    let reason = format!(
                        "Kafka refused the message for topic {} before sending it: {error}",
                        returned.topic
                    );
                    return Err((
                        reason,
                        Refused {
                            topic: returned.topic.to_owned(),
                            key: returned.key.map(<[u8]>::to_vec),
                            value: returned.payload.map(<[u8]>::to_vec),
                            timestamp: returned.timestamp,
                            headers: returned.headers,
                        },
                    ));
                }
            }
        }
    }

    /// Produces what the delivery thread handed back: batchmates of a refused record again,
    /// the copies that keep their partition's order, and messages Kafka refused for good
    /// to the dead-letter topic. What cannot be sent fails its record in the frontier,
    /// where the session finds it.
    pub fn handle_returned(&mut self) {
        let returned = match self.producer.context().returned.lock() {
            Ok(mut list) => std::mem::take(&mut *list),
            Err(_) => return,
        };
        for r in returned {
            let (id, _) = produce_again::split_opaque(r.opaque);
            match r.what {
                Handback::DeadLetter { reason } => {
                    let position = self.frontier.position(id);
                    if let Err(e) =
                        self.dead_letter_or_fail(id, 0, r.message, reason, position.as_ref())
                    {
                        self.frontier.fail(id, e.0);
                    }
                }
                Handback::Again { partition, reason } => {
                    self.produce_again(id, partition, r.message, &reason)
                }
                Handback::Delivered { partition } => {
                    let again = &self.producer.context().again;
                    if again.copy(&r.message.topic, partition, r.opaque) {
                        let stamp = produce_again::opaque(id, again.generation());
                        self.producer
                            .context()
                            .metrics
                            .messages_copied
                            .fetch_add(1, Ordering::Relaxed);
                        self.send_again(stamp, partition, r.message);
                    } else {
                        if let Some(arrival) = self.frontier.acknowledge(id) {
                            self.producer.context().metrics.acknowledged_record(arrival);
                        }
                    }
                }
            }
        }
        let (first_unresolved, _) = self.frontier.id_range();
        if self
            .producer
            .context()
            .again
            .close_settled(first_unresolved)
            == 0
        {
            self.attempts.clear();
        }
    }

    /// Produces again a message refused because a batchmate was invalid, to the partition
    /// it was refused from, in a new generation: whatever was queued to that partition
    /// before it is copied behind it as it is reported delivered.
    fn produce_again(&mut self, id: RecordId, partition: i32, message: Refused, reason: &str) {
        let attempts = self.attempts.entry(id).or_insert(0);
        *attempts += 1;
        if *attempts > produce_again::MAX_ATTEMPTS {
            self.producer
                .context()
                .again
                .given_up(&message.topic, partition);
            self.frontier.fail(
                id,
                format!(
                    "Kafka refused the message for topic {} partition {partition} {} times, each time because another record of its batch was invalid: {reason}",
                    message.topic,
                    produce_again::MAX_ATTEMPTS
                ),
            );
            return;
        }
        let (_, next_id) = self.frontier.id_range();
        let generation =
            self.producer
                .context()
                .again
                .producing_again(&message.topic, partition, id, next_id);
        let metrics = &self.producer.context().metrics;
        let produced_again = metrics
            .messages_produced_again
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if produced_again.is_power_of_two() {
            warn!(
                "producing again a message of {} to {} partition {partition}: the broker refused its batch for another record in it ({reason}); {} so far, and {} copies of later messages of such partitions to keep each key's last copy in order",
                self.frontier
                    .position(id)
                    .map_or("a record without sequence number".to_owned(), |p| p.to_string()),
                message.topic,
                produced_again,
                metrics.messages_copied.load(Ordering::Relaxed)
            );
        }
        self.send_again(produce_again::opaque(id, generation), partition, message);
    }

    /// Queues a message again, as it was, to the partition it went to.
    fn send_again(&mut self, opaque: usize, partition: i32, message: Refused) {
        let (id, _) = produce_again::split_opaque(opaque);
        let outgoing = Outgoing {
            topic: &message.topic,
            key: message.key.as_deref(),
            value: message.value.as_deref(),
            partition: Some(partition),
            timestamp: message.timestamp,
            headers: message.headers,
        };
        if let Err((reason, _)) = self.enqueue_stamped(opaque, outgoing) {
            self.frontier.fail(id, reason);
        }
    }

    /// A fatal producer error (the idempotent producer lost its sequence state, say) is
    /// raised once and for good, and purges the queue: those messages are neither
    /// acknowledged nor refused, so every wait for them would last forever. Failing the
    /// oldest record in flight checkpoints up to it and ends the child; the daemon replays
    /// the rest with a new producer. Cheap (an atomic read): every wait calls it.
    pub fn check_fatal(&self) {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            self.frontier.fail_in_flight(format!(
                "the Kafka producer hit a fatal error and can deliver nothing more ({code:?}: {reason})"
            ));
        }
    }

    pub fn dead_lettered(&self) -> u64 {
        self.producer
            .context()
            .metrics
            .messages_dead_lettered
            .load(Ordering::Relaxed)
    }

    /// Messages produced again for a refused batchmate, and copies made behind them.
    pub fn produced_again(&self) -> (u64, u64) {
        let metrics = &self.producer.context().metrics;
        (
            metrics.messages_produced_again.load(Ordering::Relaxed),
            metrics.messages_copied.load(Ordering::Relaxed),
        )
    }

    /// The figures this sink counts into (shared with the session and the reporter).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.producer.context().metrics
    }

    pub fn last_client_error(&self) -> Option<String> {
        self.producer.context().last_error.get()
    }

    /// Exactly-once: replaces the producer with the shard's transactional one and
    /// initializes it, which fences every earlier producer of the shard (a child of a
    /// daemon that lost the lease and has not noticed yet) and ends its open transaction.
    pub fn start_transactions(
        &mut self,
        transactional_id: &str,
        timeout: Duration,
    ) -> Result<(), TxnError> {
        let Some(transactions) = &self.transactions else {
            return Ok(());
        };
        if self.producer.context().positions_topic.is_none() {
            let metrics = self.producer.context().metrics.clone();
            self.producer = new_producer(
                &transactions.config,
                &self.frontier,
                &metrics,
                Some(transactional_id),
            )
            .map_err(|e| TxnError::Fatal(format!("{e:#}")))?;
        }
        self.producer
            .init_transactions(timeout)
            .map_err(|e| txn_error("initializing the transactional producer", e))
    }

    /// Opens a transaction unless one is open (no broker call: librdkafka registers the
    /// partitions as they are written).
    fn begin_transaction(&self) -> Result<(), String> {
        let Some(transactions) = &self.transactions else {
            return Ok(());
        };
        if transactions.open.get() || self.producer.context().positions_topic.is_none() {
            return Ok(());
        }
        self.producer
            .begin_transaction()
            .map_err(|e| format!("cannot begin a Kafka transaction: {e}"))?;
        transactions.open.set(true);
        Ok(())
    }

    /// Writes the shard's position record (`key`, `value`) into the open transaction and
    /// commits it: librdkafka first waits for every message of it to be acknowledged.
    /// A `Retry` may be followed by the same call.
    /// `None`: no record of the shard has a position yet, so there is none to write.
    pub fn commit(
        &mut self,
        key: &str,
        value: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<(), TxnError> {
        let Some(transactions) = &self.transactions else {
            return Ok(());
        };
        let topic = transactions.config.positions_topic();
        self.begin_transaction().map_err(TxnError::Abort)?;
        // Once written, the position is in the open transaction: a retried commit must
        // not write it twice.
        if let Some(value) = value.filter(|_| !transactions.position_written.get()) {
            let record = BaseRecord::<str, [u8], usize>::with_opaque_to(&topic, usize::MAX)
                .key(key)
                .payload(value);
            self.producer
                .send(record)
                .map_err(|(e, _)| txn_error(&format!("cannot write the position to {topic}"), e))?;
            transactions.position_written.set(true);
        }
        self.producer
            .commit_transaction(timeout)
            .map_err(|e| txn_error("committing the transaction", e))?;
        transactions.ended();
        Ok(())
    }

    /// Aborts the open transaction, if any: its messages are never read by read_committed
    /// consumers.
    pub fn abort(&mut self, timeout: Duration) -> Result<(), TxnError> {
        let Some(transactions) = &self.transactions else {
            return Ok(());
        };
        if !transactions.open.get() {
            return Ok(());
        }
        self.producer
            .abort_transaction(timeout)
            .map_err(|e| txn_error("aborting the transaction", e))?;
        transactions.ended();
        Ok(())
    }

    /// Exactly-once: the messages the broker refused for good in the open transaction (kept
    /// only with a dead-letter topic).
    pub fn take_refused(&self) -> Vec<RefusedMessage> {
        self.producer
            .context()
            .refused
            .lock()
            .map(|mut refused| std::mem::take(&mut *refused))
            .unwrap_or_default()
    }

    /// Exactly-once, after the transaction that held them was aborted: writes the refused
    /// messages to the dead-letter topic in a transaction of their own, committed with the
    /// shard's position record (`value`, which names them, so that the replay skips them).
    pub fn dead_letter_in_transaction(
        &mut self,
        refused: Vec<RefusedMessage>,
        key: &str,
        value: &[u8],
        timeout: Duration,
    ) -> Result<(), TxnError> {
        for r in refused {
            let position = self.frontier.position(r.id);
            self.dead_letter_or_fail(r.id, r.index, r.message, r.reason, position.as_ref())
                .map_err(|e| TxnError::Abort(e.0))?;
        }
        let mut attempts = 0;
        loop {
            match self.commit(key, Some(value), timeout) {
                Err(TxnError::Retry(_)) if attempts < 5 => attempts += 1,
                other => return other,
            }
        }
    }

    /// Whether a transaction is open (exactly-once).
    pub fn in_transaction(&self) -> bool {
        self.transactions.as_ref().is_some_and(|t| t.open.get())
    }

    /// The producer's fatal error, if it hit one (exactly-once: fenced by the next owner).
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Gives librdkafka a bounded time to deliver what is queued, producing meanwhile
    /// what the delivery thread hands back (batchmates of a refused record and their
    /// copies, dead letters), so that the checkpoint can reach them.
    pub fn flush(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.handle_returned();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let flushed = self.producer.flush(left.min(Duration::from_millis(100)));
            let nothing_returned = self
                .producer
                .context()
                .returned
                .lock()
                .map_or(true, |list| list.is_empty());
            if flushed.is_ok() && nothing_returned {
                return;
            }
        }
    }
}

/// A message as handed to librdkafka.
struct Outgoing<'a> {
    topic: &'a str,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    partition: Option<i32>,
    timestamp: Option<i64>,
    headers: Option<OwnedHeaders>,
}

/// The headers of a dead-lettered message: its own, plus why and where it was going.
fn dead_letter_headers(headers: OwnedHeaders, reason: &str, source_topic: &str) -> OwnedHeaders {
    headers
        .insert(Header {
            key: HEADER_DEAD_LETTER_ERROR,
            value: Some(reason),
        })
        .insert(Header {
            key: HEADER_DEAD_LETTER_SOURCE_TOPIC,
            value: Some(source_topic),
        })
}

/// A message librdkafka would not take, with what is needed to send it elsewhere.
struct Refused {
    topic: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: Option<i64>,
    headers: Option<OwnedHeaders>,
}

impl Refused {
    /// A reported message, copied out of librdkafka's buffer.
    fn copy_of(message: &BorrowedMessage<'_>) -> Refused {
        Refused {
            topic: message.topic().to_owned(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            timestamp: message.timestamp().to_millis(),
            headers: message.headers().map(|h| h.detach()),
        }
    }
}

/// Asks for the topic's metadata in the background, at once, twice. An idempotent
/// producer acquires its producer id when a metadata response arrives from a broker that
/// is up, or else on a 500 ms timer. The first response comes from the bootstrap
/// connection, which is dropped as soon as the real broker ids are known; the second comes
/// from a real broker. Without this the first batch waits about a second for its first
/// acknowledgement.
fn warm_up(producer: &PolledProducer<DeliveryContext>, topic: &str) {
    let producer = producer.clone();
    let topic = topic.to_owned();
    let spawned = std::thread::Builder::new()
        .name("kafka-warm-up".into())
        .spawn(move || {
            for _ in 0..2 {
                if let Err(e) = producer
                    .client()
                    .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                {
                    debug!("early metadata request for {topic}: {e}");
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        debug!("no warm-up thread: {e}");
    }
}

/// The number at the end of a shard id (`shardId-000000000007` → 7); other ids hash.
pub fn shard_ordinal(shard_id: &str) -> u64 {
    let digits: String = shard_id
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse::<u64>().unwrap_or_else(|_| {
        // FNV-1a: stable across runs and versions, unlike the std hasher.
        shard_id.bytes().fold(0xcbf29ce484222325, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        })
    })
}

/// The metadata headers of a record.
pub fn kinesis_headers(record: &KinesisRecord<'_>) -> OwnedHeaders {
    let mut digits = [0u8; 20];
    let mut headers = OwnedHeaders::new_with_capacity(4).insert(Header {
        key: HEADER_SHARD_ID,
        value: Some(record.shard_id),
    });
    if let Some(sequence_number) = record.sequence_number {
        headers = headers.insert(Header {
            key: HEADER_SEQUENCE_NUMBER,
            value: Some(sequence_number),
        });
    }
    headers = headers.insert(Header {
        key: HEADER_SUB_SEQUENCE_NUMBER,
        value: Some(format_i64(&mut digits, record.sub_sequence_number)),
    });
    if let Some(arrival) = record.approximate_arrival_timestamp {
        headers = headers.insert(Header {
            key: HEADER_ARRIVAL_TIMESTAMP,
            value: Some(format_i64(&mut digits, arrival)),
        });
    }
    headers
}

/// Formats an integer without allocating (headers are built for every record).
fn format_i64(buf: &mut [u8; 20], value: i64) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 20 bytes hold every i64 including its sign, so this write cannot fail.
    let _ = write!(cursor, "{value}");
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).unwrap_or("0")
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

/// Connects within `timeout` and checks that `topic` exists, without creating it (a
/// metadata request for one topic can auto-create it on some brokers, so all topics are
/// listed instead).
pub fn check_topic(config: &Config, topic: &str, timeout: Duration) -> Result<TopicCheck> {
    let producer: BaseProducer<CheckContext> = client_config(config)
        .create_with_context(CheckContext {
            last_error: LastError::default(),
            msk_iam: msk_iam::for_config(config)?,
        })
        .context("cannot create a Kafka client; check kafka.properties")?;
    // The first OAUTHBEARER token (AWS_MSK_IAM), before connecting.
    producer.poll(Duration::ZERO);
    let servers = &config.kafka.bootstrap_servers;
    // In short attempts, polling in between: librdkafka's error events (a refused
    // password, say) only reach the context when the client is polled.
    let deadline = Instant::now() + timeout;
    let metadata = loop {
        let attempt = producer
            .client()
            .fetch_metadata(None, Duration::from_secs(1).min(timeout));
        producer.poll(Duration::ZERO);
        // Wrong credentials never fix themselves: say so at once, not after the timeout
        // as "cannot reach Kafka".
        if let Some(reason) = producer.context().last_error.authentication() {
            if let Some(msk_iam) = &producer.context().msk_iam {
                return Err(anyhow!(msk_iam.authentication_failed(servers, &reason)));
            }
            return Err(anyhow!(
                "Kafka at {servers} refused the SASL credentials ({reason}); check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
            ));
        }
        match attempt {
            Err(_) if Instant::now() < deadline => continue,
            other => break other,
        }
    };
    let metadata = metadata.map_err(|e| {
        // librdkafka's own error says more than the timeout.
        let cause = producer
            .context()
            .last_error
            .get()
            .map(|last| format!("; librdkafka: {last}"))
            .unwrap_or_default();
        anyhow!(
            "cannot reach Kafka at {servers} within {} s ({e}{cause}); check KAFKA_BOOTSTRAP_SERVERS, the network and the security settings",
            timeout.as_secs()
        )
    })?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty());
    match found {
        Some(t) => Ok(TopicCheck {
            brokers: metadata.brokers().len(),
            partitions: t.partitions().len(),
        }),
        None => Err(anyhow!(
            "topic {topic} does not exist on {servers}; create it (the replicator never creates topics) or fix the setting that names it"
        )),
    }
}

/// The client of `--check-config` and of the positions topic: it keeps librdkafka's last
/// error to explain a failure, and signs MSK IAM tokens.
pub struct CheckContext {
    last_error: LastError,
    msk_iam: Option<MskIam>,
}

impl CheckContext {
    pub fn for_config(config: &Config) -> Result<CheckContext> {
        Ok(CheckContext {
            last_error: LastError::default(),
            msk_iam: msk_iam::for_config(config)?,
        })
    }
}

impl rdkafka::consumer::ConsumerContext for CheckContext {}

impl ClientContext for CheckContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(&self, _: Option<&str>) -> Result<OAuthToken, Box<dyn Error>> {
        msk_iam::generate(self.msk_iam.as_ref())
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_librdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.last_error.record(&error, reason);
    }
}

impl ProducerContext for CheckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    /// A sink for shard 1 on a one-broker mock cluster with topic `t`, and `properties`
    /// (a JSON object's inside) in `kafka.properties`.
    fn sink_on_mock(
        properties: &str,
    ) -> (
        MockCluster<'static, DefaultProducerContext>,
        Arc<Frontier>,
        KafkaSink,
    ) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let config = Config::from_template(
            &format!(
                r#"{{"kafka":{{"bootstrap_servers":"{}","topic":"t","properties":{{{properties}}}}}}}"#,
                cluster.bootstrap_servers()
            ),
            |_| None,
        )
        .unwrap();
        let frontier = Arc::new(Frontier::new());
        let mut sink = KafkaSink::new(&config, frontier.clone()).unwrap();
        sink.set_shard("shardId-000000000001", None);
        (cluster, frontier, sink)
    }

    #[test]
    fn a_fatal_producer_error_fails_the_oldest_record_in_flight_instead_of_waiting_forever() {
        let (cluster, frontier, mut sink) = sink_on_mock("");
        // Kafka unreachable: the records stay queued, as when the error strikes.
        cluster.broker_down(1).unwrap();
        let sequence = |i: u64| format!("4959{i:052}");
        let sequences: Vec<String> = (0..5).map(sequence).collect();
        for seq in &sequences {
            let record = KinesisRecord {
                shard_id: "shardId-000000000001",
                data: Some(b"payload"),
                partition_key: Some("k"),
                sequence_number: Some(seq),
                sub_sequence_number: 0,
                approximate_arrival_timestamp: None,
            };
            let id = frontier.track(Some(Position::new(seq, 0)), 1, 7);
            let message = KafkaMessage::from_record(&record);
            assert!(sink.send(id, 0, &record, message).is_ok());
        }
        // librdkafka raises it on purpose, as it would on losing the sequence state.
        let reason = std::ffi::CString::new("test: sequence state lost").unwrap();
        // SAFETY: the client pointer is valid while `sink` lives; the reason is a C string.
        let raised = unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                sink.producer.client().native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            )
        };
        assert_eq!(
            raised,
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while frontier.failure().is_none() && Instant::now() < deadline {
            // What every wait for Kafka does between slices.
            sink.check_fatal();
            std::thread::sleep(Duration::from_millis(20));
        }
        let failure = frontier
            .failure()
            .expect("the fatal error surfaced as a failure");
        assert_eq!(failure.position, Some(Position::new(&sequences[0], 0)));
        assert!(failure.reason.contains("fatal error"), "{}", failure.reason);
        assert_eq!(frontier.frontier(), None, "nothing was acknowledged");
    }

    #[test]
    fn a_full_queue_does_not_hold_a_record_once_an_earlier_one_failed() {
        let (cluster, frontier, mut sink) = sink_on_mock(r#""queue.buffering.max.messages":"1""#);
        // Kafka unreachable: the first message fills librdkafka's queue for good.
        cluster.broker_down(1).unwrap();
        let record = KinesisRecord {
            shard_id: "shardId-000000000001",
            data: Some(b"payload"),
            partition_key: Some("k"),
            sequence_number: None,
            sub_sequence_number: 0,
            approximate_arrival_timestamp: None,
        };
        let first = frontier.track(Some(Position::new("1", 0)), 1, 7);
        assert!(sink
            .send(first, 0, &record, KafkaMessage::from_record(&record))
            .is_ok());
        // The shard stops at the first record (say Kafka refused it for good): waiting for
        // room for the next one would last as long as Kafka is down, and spin.
        frontier.fail(first, "refused".to_owned());
        let second = frontier.track(Some(Position::new("2", 0)), 1, 7);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let sent = sink.send(second, 0, &record, KafkaMessage::from_record(&record));
                let _ = done.send(sent.is_ok());
            });
            let returned = finished.recv_timeout(Duration::from_secs(5));
            // Let the sender go either way, so that a failing test ends.
            if returned.is_err() {
                cluster.broker_up(1).unwrap();
            }
            assert_eq!(
                returned,
                Ok(true),
                "send waited on a full queue after a failure"
            );
        });
        assert_eq!(frontier.frontier(), None);
    }

    #[test]
    fn shard_ordinals() {
        assert_eq!(shard_ordinal("shardId-000000000007"), 7);
        assert_eq!(shard_ordinal("shardId-000000000120"), 120);
        assert_eq!(shard_ordinal("odd"), shard_ordinal("odd"));
        assert_ne!(shard_ordinal("odd"), shard_ordinal("other"));
    }

    #[test]
    fn headers_carry_the_kinesis_metadata() {
        let record = KinesisRecord {
            shard_id: "shardId-000000000001",
            data: Some(b"x"),
            partition_key: Some("k"),
            sequence_number: Some("49590338271490256608559692538361571095921575989136588898"),
            sub_sequence_number: 3,
            approximate_arrival_timestamp: Some(-1700000000123),
        };
        let headers = kinesis_headers(&record);
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                (HEADER_SHARD_ID.into(), "shardId-000000000001".into()),
                (
                    HEADER_SEQUENCE_NUMBER.into(),
                    "49590338271490256608559692538361571095921575989136588898".into()
                ),
                (HEADER_SUB_SEQUENCE_NUMBER.into(), "3".into()),
                (HEADER_ARRIVAL_TIMESTAMP.into(), "-1700000000123".into()),
            ]
        );
    }
}
