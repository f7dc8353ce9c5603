//! The container's metrics server (`kinesis-kafka-replicator metrics`): one per container,
//! started by `run.sh` next to the daemon when `METRICS_PORT` (or an OTLP endpoint) is set.
//!
//! Children report to it over a Unix socket ([`crate::metrics`]): one JSON snapshot line a
//! second per connection. It keeps the last snapshot of each connection and forgets it when
//! the connection closes, so an ended shard's series disappear. It serves:
//! - `GET /metrics`: every live shard's series in the Prometheus text format;
//! - `GET /healthz`: 200 while the daemon (the process it watches) is alive, else 503;
//! - `GET /status`: a JSON view of the shards this container holds;
//!
//! and pushes the same figures to an OpenTelemetry collector ([`crate::otlp`]) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. It exits when the daemon does.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use log::{debug, info, warn};
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use serde::Serialize;

use crate::metrics::{HistogramSnapshot, ShardState, Snapshot, LATENCY_BUCKETS};

/// A snapshot line longer than this is not a snapshot: the connection is dropped.
const MAX_LINE: usize = 1 << 20;

/// What the server listens on and watches.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The Unix socket the children report to.
    pub socket: PathBuf,
    /// The HTTP address (`METRICS_PORT`); `None`: no HTTP endpoint (OTLP only).
    pub listen: Option<String>,
    /// The daemon's pid: `/healthz` reports it, and the server exits when it is gone.
    pub watch_pid: Option<i32>,
    pub otlp: Option<crate::otlp::OtlpConfig>,
}

/// The last report of every connected child.
#[derive(Default)]
pub struct Shards {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    snapshot: Snapshot,
    /// Records per second between the last two reports.
    records_per_second: f64,
}

impl Shards {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn report(&self, connection: u64, snapshot: Snapshot) {
        let mut live = self.live();
        let records_per_second = live.get(&connection).map_or(0.0, |previous| {
            let seconds = (snapshot.unix_ms - previous.snapshot.unix_ms) as f64 / 1000.0;
            if seconds > 0.0 {
                snapshot
                    .records_received
                    .saturating_sub(previous.snapshot.records_received) as f64
                    / seconds
            } else {
                previous.records_per_second
            }
        });
        live.insert(
            connection,
            Entry {
                snapshot,
                records_per_second,
            },
        );
    }

    fn gone(&self, connection: u64) {
        self.live().remove(&connection);
    }

    /// The live snapshots, ordered by shard.
    pub fn snapshots(&self) -> Vec<(Snapshot, f64)> {
        let mut all: Vec<_> = self
            .live()
            .values()
            .map(|e| (e.snapshot.clone(), e.records_per_second))
            .collect();
        all.sort_by(|a, b| a.0.shard.cmp(&b.0.shard).then(a.0.pid.cmp(&b.0.pid)));
        all
    }
}

/// Runs the server until the watched daemon is gone. Returns the exit code.
pub fn run(config: ServerConfig) -> i32 {
    match serve(config) {
        Ok(()) => crate::EXIT_OK,
        Err(e) => {
            log::error!("metrics server: {e:#}");
            crate::EXIT_FAILURE
        }
    }
}

fn serve(config: ServerConfig) -> Result<()> {
    let shards = Arc::new(Shards::default());
    let listener = bind_socket(&config.socket)?;
    let http = match &config.listen {
        Some(address) => Some(tiny_http::Server::http(address.as_str()).map_err(|e| {
            anyhow!("cannot listen on {address} ({e}); set METRICS_PORT to a free port")
        })?),
        None => None,
    };
    info!(
        "metrics server: children report to {}{}{}",
        config.socket.display(),
        config
            .listen
            .as_ref()
            .map(|a| format!("; Prometheus on http://{a}/metrics, /healthz, /status"))
            .unwrap_or_default(),
        config
            .otlp
            .as_ref()
            .map(|o| format!("; OTLP to {}", o.url))
            .unwrap_or_default()
    );
    {
        let shards = shards.clone();
        std::thread::Builder::new()
            .name("metrics-socket".into())
            .spawn(move || accept(listener, &shards))
            .context("cannot start the socket thread")?;
    }
    if let Some(http) = http {
        let shards = shards.clone();
        let watch_pid = config.watch_pid;
        std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                for request in http.incoming_requests() {
                    respond(request, &shards, watch_pid);
                }
            })
            .context("cannot start the HTTP thread")?;
    }
    if let Some(otlp) = config.otlp.clone() {
        let shards = shards.clone();
        std::thread::Builder::new()
            .name("metrics-otlp".into())
            .spawn(move || crate::otlp::push_forever(&otlp, &shards))
            .context("cannot start the OTLP thread")?;
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(pid) = config.watch_pid {
            if !alive(pid) {
                info!("metrics server: the daemon (pid {pid}) is gone; exiting");
                if let Some(otlp) = &config.otlp {
                    crate::otlp::push_once(otlp, &shards);
                }
                let _ = std::fs::remove_file(&config.socket);
                return Ok(());
            }
        }
    }
}

fn bind_socket(path: &Path) -> Result<UnixListener> {
    // A socket file left by an earlier server (a container restarted in place).
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).with_context(|| {
        format!(
            "cannot listen on the socket {} (is another metrics server running?)",
            path.display()
        )
    })
}

fn accept(listener: UnixListener, shards: &Arc<Shards>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let connection = shards.next.fetch_add(1, Ordering::Relaxed);
        let shards = shards.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-child".into())
            .spawn(move || {
                read_reports(stream, connection, &shards);
                shards.gone(connection);
            });
        if let Err(e) = spawned {
            warn!("metrics server: cannot follow a child ({e})");
        }
    }
}

fn read_reports(stream: UnixStream, connection: u64, shards: &Shards) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return,
            Ok(_) if line.last() != Some(&b'\n') => {
                warn!("metrics server: a child sent a line over {MAX_LINE} bytes; dropping it");
                return;
            }
            Ok(_) => match serde_json::from_slice::<Snapshot>(&line) {
                Ok(snapshot) => shards.report(connection, snapshot),
                Err(e) => debug!("metrics server: not a snapshot ({e})"),
            },
            Err(e) => {
                debug!("metrics server: {e}");
                return;
            }
        }
    }
}

/// Whether process `pid` exists.
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn respond(request: tiny_http::Request, shards: &Shards, watch_pid: Option<i32>) {
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let daemon_alive = watch_pid.is_none_or(alive);
    let (status, content_type, body) = match (request.method(), path.as_str()) {
        (tiny_http::Method::Get, "/metrics") => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            prometheus_text(&shards.snapshots(), daemon_alive),
        ),
        (tiny_http::Method::Get, "/healthz") if daemon_alive => {
            (200, "text/plain", "ok\n".to_owned())
        }
        (tiny_http::Method::Get, "/healthz") => (
            503,
            "text/plain",
            "the MultiLangDaemon is not running\n".to_owned(),
        ),
        (tiny_http::Method::Get, "/status") => (
            200,
            "application/json",
            status_json(&shards.snapshots(), daemon_alive),
        ),
        _ => (
            404,
            "text/plain",
            "not found: GET /metrics, /healthz or /status\n".to_owned(),
        ),
    };
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    if let Ok(header) = tiny_http::Header::from_bytes("Content-Type", content_type) {
        response = response.with_header(header);
    }
    if let Err(e) = request.respond(response) {
        debug!("metrics server: {e}");
    }
}

/// `/status`: what each shard is doing, as Kafka Connect's REST status does for its tasks.
#[derive(Serialize)]
struct Status {
    daemon_alive: bool,
    shards: Vec<ShardStatus>,
}

#[derive(Serialize)]
struct ShardStatus {
    shard: String,
    topic: String,
    pid: u32,
    state: ShardState,
    millis_behind_latest: Option<i64>,
    last_checkpoint: Option<String>,
    seconds_since_checkpoint: Option<f64>,
    records_in_flight: u64,
    records_per_second: f64,
    records_received: u64,
    messages_acknowledged: u64,
}

pub fn status_json(snapshots: &[(Snapshot, f64)], daemon_alive: bool) -> String {
    let now = crate::metrics::unix_ms();
    let status = Status {
        daemon_alive,
        shards: snapshots
            .iter()
            .map(|(s, rate)| ShardStatus {
                shard: s.shard.clone(),
                topic: s.topic.clone(),
                pid: s.pid,
                state: s.state,
                millis_behind_latest: s.millis_behind_latest,
                last_checkpoint: s.last_checkpoint.clone(),
                seconds_since_checkpoint: s
                    .last_checkpoint_unix_ms
                    .map(|t| (now - t).max(0) as f64 / 1000.0),
                records_in_flight: s.records_in_flight,
                records_per_second: (rate * 10.0).round() / 10.0,
                records_received: s.records_received,
                messages_acknowledged: s.messages_acknowledged,
            })
            .collect(),
    };
    serde_json::to_string_pretty(&status).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// A histogram whose buckets are already counted (by the child).
#[derive(Debug, Default)]
struct Reported(Mutex<HistogramSnapshot>);

impl TypedMetric for Reported {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Reported {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The encoder wants each bucket's own count; the child reports cumulative ones.
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        let mut previous = 0;
        for (bound, cumulative) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            buckets.push((*bound, cumulative.saturating_sub(previous)));
            previous = *cumulative;
        }
        buckets.push((f64::INFINITY, h.count.saturating_sub(previous)));
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            h.sum, h.count, &buckets, None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The unit a metric's name ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricUnit {
    Seconds,
    Bytes,
}

/// One value of one series, as both exports see it.
#[derive(Debug, Clone)]
pub enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(HistogramSnapshot),
}

/// One series: every metric is listed once, here, for the Prometheus text and for OTLP.
#[derive(Debug, Clone)]
pub struct Point {
    /// Without the unit and `_total` suffixes the Prometheus text adds.
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<MetricUnit>,
    pub labels: Labels,
    pub value: Value,
}

/// Every series of the live shards.
pub fn points(snapshots: &[(Snapshot, f64)], daemon_alive: bool) -> Vec<Point> {
    let mut out = Vec::new();
    let mut push = |name, help, unit, labels: &Labels, value| {
        out.push(Point {
            name,
            help,
            unit,
            labels: labels.clone(),
            value,
        })
    };
    push(
        "kkr_daemon_up",
        "1 while the MultiLangDaemon runs",
        None,
        &Vec::new(),
        Value::Gauge(if daemon_alive { 1.0 } else { 0.0 }),
    );
    push(
        "kkr_shards",
        "Shard processors (children) reporting",
        None,
        &Vec::new(),
        Value::Gauge(snapshots.len() as f64),
    );
    let now = crate::metrics::unix_ms();
    for (s, _) in snapshots {
        let base: Labels = vec![
            ("shard".into(), s.shard.clone()),
            ("topic".into(), s.topic.clone()),
        ];
        let with = |key: &str, value: &str| {
            let mut labels = base.clone();
            labels.push((key.to_owned(), value.to_owned()));
            labels
        };
        use MetricUnit::{Bytes, Seconds};
        use Value::{Counter as C, Gauge as G, Histogram as H};
        push(
            "kkr_records_received",
            "Kinesis records received from the daemon",
            None,
            &base,
            C(s.records_received),
        );
        push(
            "kkr_received",
            "Payload bytes of the records received",
            Some(Bytes),
            &base,
            C(s.bytes_received),
        );
        push(
            "kkr_messages_acknowledged",
            "Kafka messages acknowledged by the brokers (acks=all)",
            None,
            &base,
            C(s.messages_acknowledged),
        );
        push(
            "kkr_records_in_flight",
            "Records produced and not yet acknowledged",
            None,
            &base,
            G(s.records_in_flight as f64),
        );
        push(
            "kkr_in_flight",
            "Payload bytes of the records in flight",
            Some(Bytes),
            &base,
            G(s.bytes_in_flight as f64),
        );
        push(
            "kkr_records_dropped",
            "Records the processing stage filtered out",
            None,
            &base,
            C(s.records_dropped),
        );
        push(
            "kkr_transactions_committed",
            "Exactly-once: Kafka transactions committed",
            None,
            &base,
            C(s.transactions_committed),
        );
        push(
            "kkr_transactions_aborted",
            "Exactly-once: Kafka transactions aborted (the child then exits for the daemon to replay)",
            None,
            &base,
            C(s.transactions_aborted),
        );
        push(
            "kkr_records_already_in_kafka",
            "Exactly-once: records skipped at the start because an earlier owner of the shard committed them",
            None,
            &base,
            C(s.records_already_in_kafka),
        );
        push(
            "kkr_records_skipped",
            "Invalid records skipped (on_invalid: skip)",
            None,
            &base,
            C(s.records_skipped),
        );
        push(
            "kkr_messages_dead_lettered",
            "Messages written to the dead-letter topic",
            None,
            &base,
            C(s.messages_dead_lettered),
        );
        push(
            "kkr_messages_produced_again",
            "Messages produced again because the broker refused their batch for another record",
            None,
            &base,
            C(s.messages_produced_again),
        );
        push(
            "kkr_messages_copied",
            "Later messages copied behind those produced again, to keep each key's order",
            None,
            &base,
            C(s.messages_copied),
        );
        for (kind, n) in &s.delivery_failures {
            push(
                "kkr_delivery_failures",
                "Messages Kafka refused, by librdkafka error",
                None,
                &with("error", kind),
                C(*n),
            );
        }
        for (kind, n) in &s.producer_errors {
            push(
                "kkr_producer_errors",
                "Errors librdkafka reported for the producer as a whole, by error",
                None,
                &with("error", kind),
                C(*n),
            );
        }
        push(
            "kkr_checkpoint_attempts",
            "Checkpoints asked of the daemon",
            None,
            &base,
            C(s.checkpoint_attempts),
        );
        push(
            "kkr_checkpoints",
            "Checkpoints the daemon confirmed",
            None,
            &base,
            C(s.checkpoints),
        );
        for (error, n) in &s.checkpoint_failures {
            push(
                "kkr_checkpoint_failures",
                "Checkpoints the daemon refused, by exception",
                None,
                &with("error", error),
                C(*n),
            );
        }
        if let Some(t) = s.last_checkpoint_unix_ms {
            push(
                "kkr_since_last_checkpoint",
                "Seconds since the last confirmed checkpoint",
                Some(Seconds),
                &base,
                G((now - t).max(0) as f64 / 1000.0),
            );
        }
        if let Some(m) = s.millis_behind_latest {
            push("kkr_millis_behind_latest", "How far behind the shard's tip the last batch was (the daemon's MillisBehindLatest)", None, &base, G(m as f64));
        }
        let waiting = if s.state == ShardState::WaitingForKafka {
            1.0
        } else {
            0.0
        };
        push(
            "kkr_waiting_for_kafka",
            "1 while the shard waits for Kafka (window full, queue full, shard end, shutdown)",
            None,
            &base,
            G(waiting),
        );
        push(
            "kkr_producer_queue_messages",
            "Messages in librdkafka's queue (its statistics, every 5 s)",
            None,
            &base,
            G(s.producer_queue_messages as f64),
        );
        for (broker, rtt) in &s.broker_rtt_seconds {
            push(
                "kkr_broker_rtt",
                "Average round-trip time to each broker (librdkafka statistics)",
                Some(Seconds),
                &with("broker", broker),
                G(*rtt),
            );
        }
        push(
            "kkr_replication_latency",
            "From a record's arrival in Kinesis to Kafka's acknowledgement of its last message",
            Some(Seconds),
            &base,
            H(s.replication_latency.clone()),
        );
        push(
            "kkr_batch_duration",
            "From reading a processRecords to answering it",
            Some(Seconds),
            &base,
            H(s.batch_duration.clone()),
        );
    }
    out
}

/// The Prometheus text (OpenMetrics) of every live shard.
pub fn prometheus_text(snapshots: &[(Snapshot, f64)], daemon_alive: bool) -> String {
    // One family per metric name, in the order of first appearance.
    let mut counters: Vec<(&Point, Family<Labels, Counter>)> = Vec::new();
    let mut gauges: Vec<(&Point, Family<Labels, FloatGauge>)> = Vec::new();
    let mut histograms: Vec<(&Point, Family<Labels, Reported>)> = Vec::new();
    let all = points(snapshots, daemon_alive);
    for point in &all {
        match &point.value {
            Value::Counter(v) => {
                let family = family_of(&mut counters, point);
                family.get_or_create(&point.labels).inc_by(*v);
            }
            Value::Gauge(v) => {
                let family = family_of(&mut gauges, point);
                family.get_or_create(&point.labels).set(*v);
            }
            Value::Histogram(h) => {
                let family = family_of(&mut histograms, point);
                *family
                    .get_or_create(&point.labels)
                    .0
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = h.clone();
            }
        }
    }
    let mut registry = Registry::default();
    for (point, family) in counters {
        register(&mut registry, point, family);
    }
    for (point, family) in gauges {
        register(&mut registry, point, family);
    }
    for (point, family) in histograms {
        register(&mut registry, point, family);
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        warn!("metrics server: cannot encode the metrics ({e})");
    }
    text
}

fn family_of<'a, 'p, M: Default>(
    families: &'a mut Vec<(&'p Point, Family<Labels, M>)>,
    point: &'p Point,
) -> &'a Family<Labels, M> {
    let index = match families.iter().position(|(p, _)| p.name == point.name) {
        Some(i) => i,
        None => {
            families.push((point, Family::default()));
            families.len() - 1
        }
    };
    &families[index].1
}

fn register<M>(registry: &mut Registry, point: &Point, family: M)
where
    M: prometheus_client::registry::Metric,
{
    match point.unit {
        Some(MetricUnit::Seconds) => {
            registry.register_with_unit(point.name, point.help, Unit::Seconds, family)
        }
        Some(MetricUnit::Bytes) => {
            registry.register_with_unit(point.name, point.help, Unit::Bytes, family)
        }
        None => registry.register(point.name, point.help, family),
    }
}

/// The command line of `kinesis-kafka-replicator metrics`.
pub fn config_from_args(args: &[String]) -> Result<ServerConfig, String> {
    let mut socket = None;
    let mut listen = None;
    let mut watch_pid = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--listen" => listen = Some(value("--listen")?),
            "--watch-pid" => {
                let text = value("--watch-pid")?;
                watch_pid = Some(
                    text.parse::<i32>()
                        .map_err(|_| format!("--watch-pid {text:?} is not a pid"))?,
                );
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let socket = socket.ok_or("--socket is required")?;
    let otlp = crate::otlp::OtlpConfig::from_env()?;
    if listen.is_none() && otlp.is_none() {
        return Err(
            "nothing to serve: give --listen HOST:PORT (METRICS_PORT) or set OTEL_EXPORTER_OTLP_ENDPOINT"
                .into(),
        );
    }
    Ok(ServerConfig {
        socket,
        listen,
        watch_pid,
        otlp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(shard: &str) -> Snapshot {
        Snapshot {
            shard: shard.into(),
            topic: "t".into(),
            pid: 42,
            state: ShardState::Processing,
            records_received: 10,
            messages_acknowledged: 9,
            millis_behind_latest: Some(1500),
            replication_latency: HistogramSnapshot {
                buckets: vec![1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3],
                count: 4,
                sum: 12.5,
            },
            ..Snapshot::default()
        }
    }

    #[test]
    fn the_text_format_has_every_shard_with_its_labels() {
        let text = prometheus_text(
            &[(snapshot("shardId-1"), 0.0), (snapshot("shardId-2"), 0.0)],
            true,
        );
        assert!(text.contains("kkr_daemon_up 1"), "{text}");
        assert!(text.contains("kkr_shards 2"), "{text}");
        assert!(
            text.contains(r#"kkr_records_received_total{shard="shardId-1",topic="t"} 10"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kkr_millis_behind_latest{shard="shardId-2",topic="t"} 1500"#),
            "{text}"
        );
        // Cumulative buckets, +Inf equal to the count.
        assert!(
            text.contains(
                r#"kkr_replication_latency_seconds_bucket{le="0.01",shard="shardId-1",topic="t"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"kkr_replication_latency_seconds_bucket{le="+Inf",shard="shardId-1",topic="t"} 4"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"kkr_replication_latency_seconds_count{shard="shardId-1",topic="t"} 4"#
            ),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn a_closed_connection_takes_its_shard_away() {
        let shards = Shards::default();
        shards.report(1, snapshot("a"));
        shards.report(2, snapshot("b"));
        let mut later = snapshot("a");
        later.records_received = 30;
        later.unix_ms = 2000;
        let mut first = snapshot("a");
        first.unix_ms = 1000;
        shards.report(1, first);
        shards.report(1, later);
        let all = shards.snapshots();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].1, 20.0, "records per second between two reports");
        shards.gone(1);
        let all = shards.snapshots();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0.shard, "b");
        let status: serde_json::Value = serde_json::from_str(&status_json(&all, false)).unwrap();
        assert_eq!(status["daemon_alive"], false);
        assert_eq!(status["shards"][0]["shard"], "b");
        assert_eq!(status["shards"][0]["state"], "processing");
    }
}
