//! The positions topic (exactly-once): a compacted topic with one record per shard, keyed
//! by the shard's transactional id and written inside every transaction, that holds the
//! last Kinesis position the transaction covers. Because it commits atomically with the
//! records, a read_committed read of it says exactly which records are in Kafka, even when
//! the daemon's checkpoint (in DynamoDB) lags behind after a crash.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use log::{debug, info};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Position;
use crate::config::Config;
use crate::kafka::CheckContext;

/// Messages the broker refused for good and that went to the dead-letter topic in a
/// transaction of their own (exactly-once): each a record's position and the message's
/// place among the record's messages. The replay skips them.
pub type DeadLettered = BTreeSet<(Position, usize)>;

/// What a shard has committed.
#[derive(Debug, Default, PartialEq)]
pub struct Committed {
    /// The last record in Kafka (`None`: only dead letters were committed so far).
    pub position: Option<Position>,
    /// Dead-lettered messages after `position`.
    pub dead_lettered: DeadLettered,
}

/// One shard's last committed position, as stored (JSON, so that an operator can read it
/// with any console consumer).
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    shard_id: String,
    sequence_number: Option<String>,
    sub_sequence_number: i64,
    /// When the transaction was committed (ms since the epoch), for operators.
    committed_at_ms: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dead_lettered: Vec<StoredDeadLetter>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredDeadLetter {
    sequence_number: String,
    sub_sequence_number: i64,
    message: usize,
}

/// The value of a shard's position record: `position`, and the dead-lettered messages after
/// it.
pub fn encode(
    shard_id: &str,
    position: Option<&Position>,
    dead_lettered: &DeadLettered,
) -> Vec<u8> {
    let stored = Stored {
        shard_id: shard_id.to_owned(),
        sequence_number: position.map(|p| p.sequence_number.to_string()),
        sub_sequence_number: position.map_or(0, |p| p.sub_sequence_number),
        committed_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        dead_lettered: dead_lettered
            .iter()
            .filter(|(p, _)| position.is_none_or(|position| p > position))
            .map(|(p, message)| StoredDeadLetter {
                sequence_number: p.sequence_number.to_string(),
                sub_sequence_number: p.sub_sequence_number,
                message: *message,
            })
            .collect(),
    };
    serde_json::to_vec(&stored).unwrap_or_default()
}

fn number(sequence_number: &str) -> Result<&str> {
    if sequence_number.is_empty() || !sequence_number.bytes().all(|b| b.is_ascii_digit()) {
        bail!("sequence number {sequence_number:?} is not a number");
    }
    Ok(sequence_number)
}

fn decode(value: &[u8]) -> Result<Committed> {
    let stored: Stored = serde_json::from_slice(value)?;
    let position = match &stored.sequence_number {
        Some(s) => Some(Position::new(number(s)?, stored.sub_sequence_number)),
        None => None,
    };
    let mut dead_lettered = DeadLettered::new();
    for d in &stored.dead_lettered {
        dead_lettered.insert((
            Position::new(number(&d.sequence_number)?, d.sub_sequence_number),
            d.message,
        ));
    }
    Ok(Committed {
        position,
        dead_lettered,
    })
}

/// The client settings the producer uses (brokers, security), for the admin client and
/// the positions reader.
fn client_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in config.producer_properties() {
        // Only what a connection needs; producer-only settings would be refused.
        if key == "bootstrap.servers"
            || key == "client.id"
            || key.starts_with("security.")
            || key.starts_with("sasl.")
            || key.starts_with("ssl.")
            || key == "broker.address.family"
            || key.starts_with("socket.")
        {
            client.set(key, value);
        }
    }
    client
}

/// Runs a future of rdkafka's admin client to completion on this thread (the admin
/// client's own thread does the I/O; this processor has no async runtime).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

/// Makes sure the positions topic exists: creates it (compacted, one partition) when it is
/// missing and the broker allows it. With `check_policy` (`--check-config`), also refuses
/// an existing topic that is not compacted. Errors say what to do.
pub fn ensure_topic(config: &Config, timeout: Duration, check_policy: bool) -> Result<()> {
    let topic = config.positions_topic();
    let admin: AdminClient<CheckContext> = client_config(config)
        .create_with_context(CheckContext::for_config(config)?)
        .context("cannot create a Kafka admin client for the positions topic")?;
    // All topics, not this one: a metadata request naming a missing topic makes brokers
    // with auto.create.topics.enable (Apache Kafka's default) create it, not compacted.
    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|e| anyhow!("cannot read the metadata of the positions topic {topic}: {e}"))?;
    let brokers = metadata.brokers().len().max(1);
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    let options = AdminOptions::new().request_timeout(Some(timeout));
    if !exists {
        let replication = brokers.min(3) as i32;
        let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(replication))
            .set("cleanup.policy", "compact")
            // Compaction never touches the active segment: roll it hourly so that each
            // shard's old positions are cleaned away within hours, not after a week.
            .set("segment.ms", "3600000");
        let results = block_on(admin.create_topics([&new], &options))
            .map_err(|e| anyhow!("cannot create the positions topic {topic}: {e}"))?;
        for result in results {
            match result {
                Ok(_) => info!(
                    "created the positions topic {topic} (compacted, 1 partition, replication factor {replication})"
                ),
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => bail!(
                    "the positions topic {topic} is missing and could not be created ({code:?}); create it with cleanup.policy=compact, or set KAFKA_POSITIONS_TOPIC to a compacted topic this producer may write"
                ),
            }
        }
        return Ok(());
    }
    if !check_policy {
        return Ok(());
    }
    let described = block_on(admin.describe_configs([&ResourceSpecifier::Topic(&topic)], &options));
    let policy = match described {
        Ok(results) => results
            .into_iter()
            .filter_map(Result::ok)
            .flat_map(|resource| resource.entries)
            .find(|entry| entry.name == "cleanup.policy")
            .and_then(|entry| entry.value),
        Err(e) => {
            debug!("cannot describe the positions topic {topic}: {e}");
            None
        }
    };
    match policy {
        Some(policy) if !policy.contains("compact") => bail!(
            "the positions topic {topic} has cleanup.policy={policy}: deletion would lose the position of a shard that has been quiet for longer than its retention; set it to compact (kafka-configs --alter --add-config cleanup.policy=compact) or use another KAFKA_POSITIONS_TOPIC"
        ),
        _ => Ok(()),
    }
}

/// The last committed position of the shard whose producer is `transactional_id`, read
/// with read_committed isolation. Call it after the producer's `init_transactions`: that
/// fenced the previous owner and ended its open transaction, so nothing read here can
/// still change. Reads each partition backwards in growing windows from its end, so a
/// busy topic costs a short read.
pub fn read(config: &Config, transactional_id: &str, timeout: Duration) -> Result<Committed> {
    let topic = config.positions_topic();
    let deadline = Instant::now() + timeout;
    let mut client = client_config(config);
    client
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // librdkafka assigns partitions only within a group; nothing is ever committed.
        .set("group.id", format!("{transactional_id}.positions-reader"));
    let consumer: BaseConsumer<CheckContext> = client
        .create_with_context(CheckContext::for_config(config)?)
        .context("cannot create a Kafka consumer to read the positions topic")?;
    let metadata = consumer
        .fetch_metadata(Some(&topic), timeout)
        .map_err(|e| anyhow!("cannot read the metadata of the positions topic {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("the positions topic {topic} does not exist; run.sh's --check-config creates it, or create it compacted");
    }
    // Positions only grow; the greatest one found is the last one written.
    let mut last: Option<Committed> = None;
    for partition in partitions {
        let left = deadline.saturating_duration_since(Instant::now());
        // With read_committed, the high offset is the last stable offset.
        let (low, end) = consumer
            .fetch_watermarks(&topic, partition, left)
            .map_err(|e| {
                anyhow!("cannot read the offsets of {topic} partition {partition}: {e}")
            })?;
        let mut stop = end;
        let mut window = 1_000i64;
        while stop > low {
            let start = (stop - window).max(low);
            if let Some(found) = read_range(
                &consumer,
                &topic,
                partition,
                start,
                stop,
                transactional_id,
                deadline,
            )? {
                if last.as_ref().is_none_or(|l| found.position > l.position) {
                    last = Some(found);
                }
                break;
            }
            stop = start;
            window = window.saturating_mul(4);
        }
    }
    Ok(last.unwrap_or_default())
}

/// The last value for `key` among offsets `start..stop` of one partition.
fn read_range(
    consumer: &BaseConsumer<CheckContext>,
    topic: &str,
    partition: i32,
    start: i64,
    stop: i64,
    key: &str,
    deadline: Instant,
) -> Result<Option<Committed>> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(|e| anyhow!("cannot assign {topic} partition {partition}: {e}"))?;
    consumer
        .assign(&assignment)
        .map_err(|e| anyhow!("cannot assign {topic} partition {partition}: {e}"))?;
    let mut found = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("reading the positions topic {topic} partition {partition} took too long (offsets {start} to {stop}); is the broker healthy?");
        }
        match consumer.poll(left.min(Duration::from_millis(500))) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(found),
            Some(Err(e)) => {
                bail!("cannot read the positions topic {topic} partition {partition}: {e}")
            }
            Some(Ok(message)) => {
                if message.key() == Some(key.as_bytes()) {
                    if let Some(value) = message.payload() {
                        found = Some(decode(value).with_context(|| {
                            format!(
                                "the position of {key} at {topic} partition {partition} offset {} cannot be read",
                                message.offset()
                            )
                        })?);
                    }
                }
                if message.offset() + 1 >= stop {
                    return Ok(found);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_reads_back_as_written_with_the_dead_letters_after_it() {
        let position = Position::new(
            "49590338271490256608559692538361571095921575989136588898",
            3,
        );
        let after = Position::new(
            "49590338271490256608559692538361571095921575989136588899",
            0,
        );
        let dead: DeadLettered = [(Position::new("40", 0), 0), (after.clone(), 2)]
            .into_iter()
            .collect();
        let value = encode("shardId-000000000001", Some(&position), &dead);
        let committed = decode(&value).unwrap();
        assert_eq!(committed.position, Some(position.clone()));
        assert_eq!(
            committed.dead_lettered.into_iter().collect::<Vec<_>>(),
            vec![(after, 2)],
            "dead letters at or before the position are dropped"
        );
        let text = String::from_utf8(value).unwrap();
        assert!(
            text.contains("\"shard_id\":\"shardId-000000000001\""),
            "{text}"
        );
        let nothing_yet = decode(&encode("s", None, &dead)).unwrap();
        assert_eq!(nothing_yet.position, None);
        assert_eq!(nothing_yet.dead_lettered, dead);
        assert!(decode(br#"{"shard_id":"s","sequence_number":"x1","sub_sequence_number":0,"committed_at_ms":0}"#).is_err());
    }

    #[test]
    fn block_on_waits_for_a_future_woken_from_another_thread() {
        /// Pending until a thread it starts at the first poll has slept, then 7.
        struct Later(
            Option<std::thread::JoinHandle<()>>,
            Arc<std::sync::atomic::AtomicBool>,
        );
        impl Future for Later {
            type Output = u32;
            fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
                if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                    return Poll::Ready(7);
                }
                if self.0.is_none() {
                    let (done, waker) = (self.1.clone(), cx.waker().clone());
                    self.0 = Some(std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(50));
                        done.store(true, std::sync::atomic::Ordering::SeqCst);
                        waker.wake();
                    }));
                }
                Poll::Pending
            }
        }
        let started = Instant::now();
        assert_eq!(block_on(Later(None, Default::default())), 7);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
