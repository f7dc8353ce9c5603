//! What one run measured, the median of repeated runs, and their JSON form.

use serde_json::{json, Value};

use crate::accounting::load_average;
use crate::options::Kind;
use crate::support::broker::BrokerKind as Broker;

#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub broker: Option<Broker>,
    pub kind: Option<Kind>,
    pub size: usize,
    /// Records per processRecords (0 for the raw producer).
    pub batch: usize,
    pub records: usize,
    pub wall_s: f64,
    /// Records/s over the second half of the run: from the status that answered the first
    /// half of the records (raw producer: the acknowledgement of the first half) to the end.
    /// The idempotent producer's start-up (0.5 to 1 s before the first acknowledgement) is
    /// in `wall_s` but not in this.
    pub steady_rps: Option<f64>,
    pub cpu_s: f64,
    pub maxrss_kib: u64,
    pub init_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Messages read back from the topic, and the sum of its high watermarks.
    pub read_back: Option<(u64, u64)>,
    pub checkpoints: u32,
    pub broker_cpu_s: Option<f64>,
    /// Raw producer: from its creation to the first acknowledgement.
    pub first_ack_ms: Option<f64>,
    /// Busy cores of the whole machine during the run, and what was not this benchmark's.
    pub host_busy_cores: f64,
    pub other_cores: f64,
    pub load: String,
    pub error: Option<String>,
}

impl RunResult {
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.wall_s.max(1e-9)
    }
    pub fn mb_per_s(&self) -> f64 {
        (self.records * self.size) as f64 / self.wall_s.max(1e-9) / 1e6
    }
    pub fn cpu_us_per_record(&self) -> f64 {
        self.cpu_s * 1e6 / self.records.max(1) as f64
    }
    pub fn rss_mib(&self) -> f64 {
        self.maxrss_kib as f64 / 1024.0
    }
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
    pub fn verified(&self) -> String {
        if let Some(e) = &self.error {
            return format!("FAILED: {e}");
        }
        match (self.kind, self.read_back) {
            (Some(Kind::Status), _) => "n/a".into(),
            (_, Some((read, _))) if read as usize == self.records => format!("{read}"),
            (_, Some((read, _))) => format!("{read} ({} dup)", read as usize - self.records),
            (_, None) => "not read back".into(),
        }
    }
}

pub fn failed_run(
    broker: Option<Broker>,
    kind: Kind,
    size: usize,
    batch: usize,
    records: usize,
    e: anyhow::Error,
) -> RunResult {
    RunResult {
        broker,
        kind: Some(kind),
        size,
        batch,
        records,
        load: load_average(),
        error: Some(format!("{e:#}")),
        ..RunResult::default()
    }
}

pub fn median_run(mut runs: Vec<RunResult>) -> RunResult {
    let failed = runs.iter().find(|r| !r.ok()).cloned();
    runs.retain(RunResult::ok);
    if runs.is_empty() {
        return failed.expect("at least one run");
    }
    runs.sort_by(|a, b| a.records_per_s().total_cmp(&b.records_per_s()));
    runs.swap_remove(runs.len() / 2)
}

pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn result_json(r: &RunResult) -> Value {
    json!({
        "broker": r.broker.map(Broker::name),
        "child": r.kind.map(Kind::name),
        "record_bytes": r.size,
        "batch": r.batch,
        "records": r.records,
        "ok": r.ok(),
        "error": r.error,
        "wall_s": r.wall_s,
        "records_per_s": r.records_per_s(),
        "second_half_records_per_s": r.steady_rps,
        "payload_mb_per_s": r.mb_per_s(),
        "cpu_s": r.cpu_s,
        "cpu_us_per_record": r.cpu_us_per_record(),
        "peak_rss_mib": r.rss_mib(),
        "spawn_to_initialize_ms": r.init_ms,
        "process_records_p50_ms": r.p50_ms,
        "process_records_p99_ms": r.p99_ms,
        "read_back": r.read_back.map(|(n, _)| n),
        "high_watermarks": r.read_back.map(|(_, h)| h),
        "checkpoints": r.checkpoints,
        "broker_cpu_s": r.broker_cpu_s,
        "raw_first_ack_ms": r.first_ack_ms,
        "host_busy_cores": r.host_busy_cores,
        "other_cores": r.other_cores,
        "load_average": r.load,
    })
}

pub fn result_from_json(v: &Value) -> RunResult {
    let f = |k: &str| v[k].as_f64();
    let u = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
    RunResult {
        broker: match v["broker"].as_str() {
            Some("tansu") => Some(Broker::Tansu),
            Some("mock") => Some(Broker::Mock),
            Some("kafka") => Some(Broker::Kafka),
            _ => None,
        },
        kind: v["child"].as_str().and_then(Kind::parse),
        size: u("record_bytes"),
        batch: u("batch"),
        records: u("records"),
        wall_s: f("wall_s").unwrap_or(0.0),
        steady_rps: f("second_half_records_per_s"),
        cpu_s: f("cpu_s").unwrap_or(0.0),
        maxrss_kib: (f("peak_rss_mib").unwrap_or(0.0) * 1024.0).round() as u64,
        init_ms: f("spawn_to_initialize_ms"),
        p50_ms: f("process_records_p50_ms"),
        p99_ms: f("process_records_p99_ms"),
        read_back: v["read_back"]
            .as_u64()
            .map(|n| (n, v["high_watermarks"].as_u64().unwrap_or(0))),
        checkpoints: u("checkpoints") as u32,
        broker_cpu_s: f("broker_cpu_s"),
        first_ack_ms: f("raw_first_ack_ms"),
        host_busy_cores: f("host_busy_cores").unwrap_or(0.0),
        other_cores: f("other_cores").unwrap_or(0.0),
        load: v["load_average"].as_str().unwrap_or_default().to_owned(),
        error: v["error"].as_str().map(str::to_owned),
    }
}
