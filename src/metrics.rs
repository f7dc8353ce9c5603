//! A shard's figures, and their trip to the container's metrics server.
//!
//! The daemon starts one child per shard, so no child can own the container's scrape port:
//! `run.sh` starts one `kinesis-kafka-replicator metrics` server ([`crate::metrics_server`])
//! and passes its Unix socket to the children in [`METRICS_SOCKET_ENV`]. Each child keeps
//! its figures in atomics (an increment on the record path, nothing more) and a reporter
//! thread sends a snapshot as one JSON line a second. The server keeps the last snapshot
//! per connection and forgets it when the connection closes, so a shard's series
//! disappear when its child ends. Without the variable nothing is started at all.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use log::{debug, warn};
use serde::{Deserialize, Serialize};

use crate::checkpoint::FrontierState;

/// The metrics server's socket, set by `run.sh` when `METRICS_PORT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub const METRICS_SOCKET_ENV: &str = "KINESIS_KAFKA_REPLICATOR_METRICS_SOCKET";

/// How often a child reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Upper bounds (seconds) of the latency histograms' buckets: from a few milliseconds (a
/// record acknowledged right after it arrived) to a day (a backlog replayed).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
    86400.0,
];

/// A histogram that several threads observe into without a lock.
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = self
            .buckets
            .iter()
            .map(|b| {
                cumulative += b.load(Ordering::Relaxed);
                cumulative
            })
            .collect();
        HistogramSnapshot {
            buckets,
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram as reported: cumulative counts per bucket of [`LATENCY_BUCKETS`] (the
/// `+Inf` bucket is `count`), and the sum of the observations in seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

/// What a shard is doing, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    #[default]
    Starting,
    Processing,
    /// Waiting for Kafka: the window is full, a shard end or a shutdown waits for
    /// acknowledgements, or librdkafka's queue is full.
    WaitingForKafka,
    ShuttingDown,
    Ended,
}

/// One child's figures. Counters only grow; a child starts from zero.
#[derive(Default)]
pub struct Metrics {
    pub records_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub records_dropped: AtomicU64,
    pub records_skipped: AtomicU64,
    pub messages_dead_lettered: AtomicU64,
    pub messages_produced_again: AtomicU64,
    pub messages_copied: AtomicU64,
    /// Exactly-once: transactions committed and aborted, and records skipped at the start
    /// because an earlier owner of the shard had committed them.
    pub transactions_committed: AtomicU64,
    pub transactions_aborted: AtomicU64,
    pub records_already_in_kafka: AtomicU64,
    pub checkpoint_attempts: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Milliseconds since the epoch of the last confirmed checkpoint (0: none).
    pub last_checkpoint_unix_ms: AtomicI64,
    /// `i64::MIN`: the daemon sent null.
    pub millis_behind_latest: AtomicI64,
    /// librdkafka's queue: messages handed to it and not yet delivered or failed.
    pub producer_queue_messages: AtomicU64,
    /// From the record's arrival in Kinesis to its last message's acknowledgement.
    pub replication_latency: Histogram,
    /// From reading a `processRecords` to answering it.
    pub batch_duration: Histogram,
    waiting: AtomicBool,
    labelled: Mutex<Labelled>,
}

/// The figures that carry a label of their own, or text: rarely updated.
#[derive(Default)]
struct Labelled {
    shard: String,
    topic: String,
    state: ShardState,
    last_checkpoint: Option<String>,
    delivery_failures: BTreeMap<String, u64>,
    producer_errors: BTreeMap<String, u64>,
    checkpoint_failures: BTreeMap<String, u64>,
    broker_rtt_seconds: BTreeMap<String, f64>,
}

/// One child's report, as one JSON line on the metrics socket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub shard: String,
    pub topic: String,
    pub pid: u32,
    pub state: ShardState,
    pub records_received: u64,
    pub bytes_received: u64,
    pub messages_acknowledged: u64,
    pub records_in_flight: u64,
    pub bytes_in_flight: u64,
    pub records_dropped: u64,
    pub records_skipped: u64,
    pub messages_dead_lettered: u64,
    pub messages_produced_again: u64,
    pub messages_copied: u64,
    #[serde(default)]
    pub transactions_committed: u64,
    #[serde(default)]
    pub transactions_aborted: u64,
    #[serde(default)]
    pub records_already_in_kafka: u64,
    pub checkpoint_attempts: u64,
    pub checkpoints: u64,
    pub checkpoint_failures: BTreeMap<String, u64>,
    pub last_checkpoint: Option<String>,
    pub last_checkpoint_unix_ms: Option<i64>,
    pub millis_behind_latest: Option<i64>,
    pub delivery_failures: BTreeMap<String, u64>,
    pub producer_errors: BTreeMap<String, u64>,
    pub producer_queue_messages: u64,
    pub broker_rtt_seconds: BTreeMap<String, f64>,
    pub replication_latency: HistogramSnapshot,
    pub batch_duration: HistogramSnapshot,
    pub unix_ms: i64,
}

impl Metrics {
    pub fn new() -> Self {
        let metrics = Metrics::default();
        metrics
            .millis_behind_latest
            .store(i64::MIN, Ordering::Relaxed);
        metrics
    }

    fn labelled(&self) -> std::sync::MutexGuard<'_, Labelled> {
        // Every update is a field write or a map increment: consistent after a panic.
        self.labelled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_shard(&self, shard: &str, topic: &str) {
        let mut l = self.labelled();
        l.shard = shard.to_owned();
        l.topic = topic.to_owned();
        if l.state == ShardState::Starting {
            l.state = ShardState::Processing;
        }
    }

    pub fn set_state(&self, state: ShardState) {
        self.labelled().state = state;
    }

    /// While set, the shard reports [`ShardState::WaitingForKafka`].
    pub fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Relaxed);
    }

    pub fn checkpointed(&self, position: String) {
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.last_checkpoint_unix_ms
            .store(unix_ms(), Ordering::Relaxed);
        self.labelled().last_checkpoint = Some(position);
    }

    pub fn checkpoint_failed(&self, error: &str) {
        *self
            .labelled()
            .checkpoint_failures
            .entry(error.to_owned())
            .or_default() += 1;
    }

    /// A message Kafka refused (`kind`: librdkafka's error name).
    pub fn delivery_failed(&self, kind: &str) {
        *self
            .labelled()
            .delivery_failures
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    /// An error librdkafka reported for the client as a whole (brokers down, a refused
    /// password).
    pub fn producer_error(&self, kind: &str) {
        *self
            .labelled()
            .producer_errors
            .entry(kind.to_owned())
            .or_default() += 1;
    }

    pub fn set_broker_rtts(&self, rtts: BTreeMap<String, f64>) {
        self.labelled().broker_rtt_seconds = rtts;
    }

    /// A record's last message was acknowledged; `arrival_ms` is when it reached Kinesis.
    pub fn acknowledged_record(&self, arrival_ms: Option<i64>) {
        if let Some(arrival) = arrival_ms {
            let age_ms = coarse_unix_ms() - arrival;
            self.replication_latency.observe(age_ms as f64 / 1000.0);
        }
    }

    pub fn snapshot(&self, frontier: &FrontierState) -> Snapshot {
        let l = self.labelled();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let millis = self.millis_behind_latest.load(Ordering::Relaxed);
        let last_ms = self.last_checkpoint_unix_ms.load(Ordering::Relaxed);
        let state = if l.state == ShardState::Processing && self.waiting.load(Ordering::Relaxed) {
            ShardState::WaitingForKafka
        } else {
            l.state
        };
        Snapshot {
            shard: l.shard.clone(),
            topic: l.topic.clone(),
            pid: std::process::id(),
            state,
            records_received: get(&self.records_received),
            bytes_received: get(&self.bytes_received),
            messages_acknowledged: frontier.acknowledged_messages,
            records_in_flight: frontier.in_flight_records as u64,
            bytes_in_flight: frontier.in_flight_bytes as u64,
            records_dropped: get(&self.records_dropped),
            records_skipped: get(&self.records_skipped),
            messages_dead_lettered: get(&self.messages_dead_lettered),
            messages_produced_again: get(&self.messages_produced_again),
            messages_copied: get(&self.messages_copied),
            transactions_committed: get(&self.transactions_committed),
            transactions_aborted: get(&self.transactions_aborted),
            records_already_in_kafka: get(&self.records_already_in_kafka),
            checkpoint_attempts: get(&self.checkpoint_attempts),
            checkpoints: get(&self.checkpoints),
            checkpoint_failures: l.checkpoint_failures.clone(),
            last_checkpoint: l.last_checkpoint.clone(),
            last_checkpoint_unix_ms: (last_ms != 0).then_some(last_ms),
            millis_behind_latest: (millis != i64::MIN).then_some(millis),
            delivery_failures: l.delivery_failures.clone(),
            producer_errors: l.producer_errors.clone(),
            producer_queue_messages: get(&self.producer_queue_messages),
            broker_rtt_seconds: l.broker_rtt_seconds.clone(),
            replication_latency: self.replication_latency.snapshot(),
            batch_duration: self.batch_duration.snapshot(),
            unix_ms: unix_ms(),
        }
    }
}

/// Milliseconds since the epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the epoch from the coarse clock (a few ms of resolution, a few
/// nanoseconds to read): it runs once per acknowledged record.
fn coarse_unix_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call has no other precondition.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
        ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    } else {
        unix_ms()
    }
}

/// Sends the child's snapshots to the metrics server until stopped; stopping sends a
/// last one (so the server sees the final state) and closes the connection.
pub struct Reporter {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    /// Starts reporting to the socket in [`METRICS_SOCKET_ENV`], if set. `snapshot` is
    /// called on the reporter thread once per [`REPORT_INTERVAL`].
    pub fn start(snapshot: impl Fn() -> Snapshot + Send + 'static) -> Option<Reporter> {
        let path = std::env::var_os(METRICS_SOCKET_ENV).filter(|p| !p.is_empty())?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || report(&path, &snapshot, &stopping));
        match thread {
            Ok(thread) => Some(Reporter {
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                warn!("no metrics reporter thread ({e}); this shard's metrics are not exported");
                None
            }
        }
    }

    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let (lock, wake) = &*self.stop;
        if let Ok(mut stopped) = lock.lock() {
            *stopped = true;
        }
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn report(path: &std::ffi::OsStr, snapshot: &dyn Fn() -> Snapshot, stop: &(Mutex<bool>, Condvar)) {
    let mut connection: Option<UnixStream> = None;
    let mut last_attempt: Option<Instant> = None;
    let mut warned = false;
    loop {
        let stopped = {
            let (lock, wake) = stop;
            let Ok(guard) = lock.lock() else { return };
            let (guard, _) = match wake.wait_timeout_while(guard, REPORT_INTERVAL, |s| !*s) {
                Ok(r) => r,
                Err(_) => return,
            };
            *guard
        };
        if connection.is_none() && last_attempt.is_none_or(|t| t.elapsed() >= RECONNECT_INTERVAL) {
            last_attempt = Some(Instant::now());
            match UnixStream::connect(path) {
                Ok(stream) => {
                    // A stuck server must not stall the child: a write waits at most this.
                    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                    connection = Some(stream);
                }
                Err(e) if !warned => {
                    warned = true;
                    warn!(
                        "cannot reach the metrics server at {} ({e}); retrying every {} s",
                        std::path::Path::new(path).display(),
                        RECONNECT_INTERVAL.as_secs()
                    );
                }
                Err(e) => debug!("metrics server: {e}"),
            }
        }
        if let Some(stream) = connection.as_mut() {
            let line = serde_json::to_vec(&snapshot()).map(|mut line| {
                line.push(b'\n');
                line
            });
            if let Ok(line) = line {
                if let Err(e) = stream.write_all(&line) {
                    debug!("metrics server: {e}; reconnecting");
                    connection = None;
                }
            }
        }
        if stopped {
            return;
        }
    }
}

const RECONNECT_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::default();
        for s in [0.001, 0.02, 0.02, 4.0, 100_000.0] {
            h.observe(s);
        }
        let snap = h.snapshot();
        assert_eq!(snap.count, 5);
        assert_eq!(snap.buckets[0], 1); // <= 5 ms
        assert_eq!(snap.buckets[2], 3); // <= 25 ms
        assert_eq!(snap.buckets[9], 4); // <= 5 s
        assert_eq!(*snap.buckets.last().unwrap(), 4); // the day-long bucket; +Inf is count
        assert!((snap.sum - 100_004.041).abs() < 1e-3, "{}", snap.sum);
    }

    #[test]
    fn a_snapshot_says_what_the_shard_is_doing() {
        let m = Metrics::new();
        let idle = FrontierState {
            in_flight_records: 0,
            in_flight_bytes: 0,
            acknowledged_messages: 0,
        };
        assert_eq!(m.snapshot(&idle).state, ShardState::Starting);
        assert_eq!(m.snapshot(&idle).millis_behind_latest, None);
        m.set_shard("shardId-000000000001", "t");
        m.set_waiting(true);
        let s = m.snapshot(&FrontierState {
            in_flight_records: 3,
            in_flight_bytes: 30,
            acknowledged_messages: 7,
        });
        assert_eq!(s.state, ShardState::WaitingForKafka);
        assert_eq!((s.records_in_flight, s.bytes_in_flight), (3, 30));
        assert_eq!(s.messages_acknowledged, 7);
        m.set_waiting(false);
        m.checkpointed("4959/0".into());
        m.checkpoint_failed("ThrottlingException");
        m.delivery_failed("MsgSizeTooLarge");
        let s = m.snapshot(&idle);
        assert_eq!(s.state, ShardState::Processing);
        assert_eq!(s.checkpoints, 1);
        assert_eq!(s.last_checkpoint.as_deref(), Some("4959/0"));
        assert!(s.last_checkpoint_unix_ms.is_some());
        assert_eq!(s.checkpoint_failures["ThrottlingException"], 1);
        assert_eq!(s.delivery_failures["MsgSizeTooLarge"], 1);
        // The line the server reads back.
        let line = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&line).unwrap(), s);
    }
}
