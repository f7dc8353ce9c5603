//! The fleet figure: N children at once on this host, each fed like a Kinesis shard, against a
//! real broker (Apache Kafka, started by `scripts/local/kkrlocal/kafka.py`).
//!
//! Each child gets its own shard id and one `processRecords` line a second (the daemon polls
//! once a second): `--fleet-rate` bytes of 1 KB records when busy (default 1 MB/s, 1,000 records),
//! one record when idle. The children are spread over the second (child i starts i/N s later).
//! After `--fleet-warmup` seconds the window of `--fleet-seconds` opens; over it the benchmark
//! reads every child's CPU (utime+stime from /proc), and at its end RSS and threads. A consumer in
//! this process reads the topic (busy: partition 0 only, to leave the cores to the children;
//! idle: every partition) and matches each record's key (child, batch) to the time its batch was
//! written to the child: hand-off to readable in Kafka.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;

use crate::accounting::{host_jiffies, load_average, proc_cpu_seconds};
use crate::driver::{clean_command, python_command, Context};
use crate::options::Kind;
use crate::results::percentile;
use crate::support::inline::InlineDaemon;
use crate::support::protocol::{ExtSeq, TRIM_HORIZON};
use crate::support::records::{process_records_line, TestRecord};
use crate::workload::{payload_pool, PAYLOAD_POOL, SEQUENCE_PREFIX};
use crate::MANIFEST_DIR;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Busy,
    Idle,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Busy => "busy",
            Mode::Idle => "idle",
        }
    }
}

pub struct FleetOptions {
    pub sizes: Vec<usize>,
    pub seconds: u64,
    pub warmup: u64,
    /// Bytes per second per busy child.
    pub rate: usize,
    pub record_size: usize,
    pub modes: Vec<Mode>,
}

/// One configuration's figures.
#[derive(Clone, Debug, Default)]
pub struct FleetResult {
    pub kind: String,
    pub mode: String,
    pub children: usize,
    pub seconds: f64,
    pub asked_rps: f64,
    pub achieved_rps: f64,
    pub children_cores: f64,
    pub broker_cores: Option<f64>,
    pub host_cores: f64,
    pub rss_mean_mib: f64,
    pub rss_max_mib: f64,
    pub anon_mean_mib: f64,
    pub pss_mean_mib: f64,
    pub threads_mean: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub samples: usize,
    pub status_p99_ms: Option<f64>,
    pub failed: usize,
    pub error: Option<String>,
}

/// The broker: `python -m kkrlocal.kafka --serve DIR --topic ...`, stopped by closing its stdin.
pub struct KafkaServer {
    child: Child,
    stdin: Option<ChildStdin>,
    pub bootstrap: String,
    pub jvm_pid: Option<u32>,
}

impl KafkaServer {
    pub fn start(dir: &Path, topics: &[(String, i32)], log: &Path) -> Result<KafkaServer> {
        let python = std::env::var("BENCH_KAFKA_PYTHON").unwrap_or_else(|_| {
            let venv = std::env::var("HOME")
                .map(|h| PathBuf::from(h).join(".cache/kinesis-kafka-replicator/venv/bin/python"));
            match venv {
                Ok(p) if p.exists() => p.display().to_string(),
                _ => "python3".into(),
            }
        });
        let _ = fs::remove_dir_all(dir);
        let mut command = Command::new(&python);
        command
            .current_dir(Path::new(MANIFEST_DIR).join("scripts/local"))
            .args(["-m", "kkrlocal.kafka", "--serve"])
            .arg(dir);
        for (name, partitions) in topics {
            command.arg("--topic").arg(format!("{name}:{partitions}"));
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(log)?)
            .spawn()
            .with_context(|| format!("start {python} -m kkrlocal.kafka"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut bootstrap = None;
        let mut jvm_pid = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(b) = line.strip_prefix("bootstrap=") {
                bootstrap = Some(b.to_owned());
            } else if let Some(p) = line.strip_prefix("pid=") {
                jvm_pid = p.parse().ok().filter(|p| *p > 0);
                break;
            }
        }
        let Some(bootstrap) = bootstrap else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the Kafka broker did not start (see {}): {}",
                log.display(),
                crate::driver::tail(&fs::read_to_string(log).unwrap_or_default(), 8)
            );
        };
        Ok(KafkaServer {
            child,
            stdin,
            bootstrap,
            jvm_pid,
        })
    }

    pub fn stop(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One child's `processRecords` line, rewritten in place for every batch: the batch number sits
/// in fixed-width fields of each key (`c007b000042r0999`) and sequence number.
struct Feed {
    line: Vec<u8>,
    /// Offsets of the 6 batch digits in each key and of the 8 in each sequence number.
    key_at: Vec<usize>,
    seq_at: Vec<usize>,
    records: usize,
}

fn key(child: usize, batch: usize, i: usize) -> String {
    format!("c{child:03}b{batch:06}r{i:04}")
}

fn sequence(batch: usize, i: usize) -> String {
    format!("{SEQUENCE_PREFIX}{batch:08}{i:04}")
}

impl Feed {
    fn new(child: usize, records: usize, payloads: &[Vec<u8>]) -> Feed {
        let batch: Vec<TestRecord> = (0..records)
            .map(|i| TestRecord {
                data: Some(payloads[(child + i) % PAYLOAD_POOL].clone()),
                partition_key: Some(key(child, 0, i)),
                sequence_number: sequence(0, i),
                sub_sequence_number: Some(0),
                arrival_ms: Some(1_700_000_000_000),
            })
            .collect();
        let mut line = process_records_line(&batch, Some(0)).into_bytes();
        line.push(b'\n');
        let find_all = |needle: &[u8], skip: usize| -> Vec<usize> {
            let mut at = Vec::new();
            let mut from = 0;
            while let Some(p) = line[from..].windows(needle.len()).position(|w| w == needle) {
                at.push(from + p + skip);
                from += p + needle.len();
            }
            at
        };
        let key_at = find_all(format!("\"c{child:03}b").as_bytes(), 6);
        let seq_at = find_all(format!("\"{SEQUENCE_PREFIX}").as_bytes(), 45);
        assert_eq!(key_at.len(), records, "keys in the template");
        assert_eq!(seq_at.len(), records, "sequence numbers in the template");
        Feed {
            line,
            key_at,
            seq_at,
            records,
        }
    }

    /// The line for `batch`, and its largest sequence number.
    fn set_batch(&mut self, batch: usize) -> ExtSeq {
        let six = format!("{batch:06}");
        let eight = format!("{batch:08}");
        for &at in &self.key_at {
            self.line[at..at + 6].copy_from_slice(six.as_bytes());
        }
        for &at in &self.seq_at {
            self.line[at..at + 8].copy_from_slice(eight.as_bytes());
        }
        ExtSeq::new(sequence(batch, self.records - 1), 0)
    }
}

/// When each child's batches were handed over (index: child, then batch).
type HandOffs = Arc<Vec<Mutex<Vec<Option<Instant>>>>>;

fn parse_key(key: &[u8]) -> Option<(usize, usize)> {
    let s = std::str::from_utf8(key).ok()?;
    let child = s.get(1..4)?.parse().ok()?;
    let batch = s.get(5..11)?.parse().ok()?;
    Some((child, batch))
}

/// CPU seconds of every thread of a live process, in nanoseconds (schedstat), finer than the
/// 10 ms ticks of /proc/PID/stat: an idle child costs a few ticks a minute.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let text = fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    (ns > 0)
        .then_some(ns as f64 / 1e9)
        .or_else(|| proc_cpu_seconds(pid))
}

/// VmRSS, RssAnon (what the child does not share: the binary's and libraries' pages are
/// shared by every child) and Threads, in KiB and threads.
fn rss_threads(pid: u32) -> Option<(u64, u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("RssAnon:")?, field("Threads:")?))
}

/// Pss from smaps_rollup, in KiB: the child's own pages plus its share of every page it
/// maps with others (the binary's text counts 1/N in each of N children). Summed over the
/// children it is what they take from the host together, which RSS overcounts N times.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
}

/// Runs every configuration: for each N, each mode, each kind (Rust, then Python).
pub fn run_fleet(ctx: &mut Context, fleet: &FleetOptions) -> Result<Vec<FleetResult>> {
    let kinds: Vec<Kind> = [Kind::Rust, Kind::Python]
        .into_iter()
        .filter(|k| ctx.options.kinds.contains(k))
        .collect();
    let partitions = ctx.options.partitions;
    let mut configs = Vec::new();
    for &n in &fleet.sizes {
        for &mode in &fleet.modes {
            for &kind in &kinds {
                let topic = format!("fleet-{}-{}-{n}", kind.name(), mode.name());
                configs.push((n, mode, kind, topic));
            }
        }
    }
    let topics: Vec<(String, i32)> = configs
        .iter()
        .map(|(_, _, _, t)| (t.clone(), partitions))
        .collect();
    let dir = Path::new(MANIFEST_DIR).join("target/bench/fleet-kafka");
    let server = KafkaServer::start(&dir, &topics, &ctx.logs.join("fleet-kafka.log"))?;
    println!(
        "broker: Apache Kafka (kkrlocal.kafka) at {}, {} topics of {partitions} partitions",
        server.bootstrap,
        topics.len()
    );
    println!(
        "per child: one processRecords line a second; busy: {} B/s of {} B records; idle: 1 record/s; {} s warm-up, {} s measured",
        fleet.rate, fleet.record_size, fleet.warmup, fleet.seconds
    );
    println!();
    print_fleet_header();
    let payloads = payload_pool(fleet.record_size);
    let mut results = Vec::new();
    for (n, mode, kind, topic) in configs {
        let r = match run_one(ctx, fleet, &server, &payloads, n, mode, kind, &topic) {
            Ok(r) => r,
            Err(e) => FleetResult {
                kind: kind.name().into(),
                mode: mode.name().into(),
                children: n,
                error: Some(format!("{e:#}")),
                ..FleetResult::default()
            },
        };
        print_fleet_row(&r);
        results.push(r);
        // Let the broker settle between configurations.
        std::thread::sleep(Duration::from_secs(2));
    }
    server.stop();
    Ok(results)
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    ctx: &mut Context,
    fleet: &FleetOptions,
    server: &KafkaServer,
    payloads: &[Vec<u8>],
    n: usize,
    mode: Mode,
    kind: Kind,
    topic: &str,
) -> Result<FleetResult> {
    let per_batch = match mode {
        Mode::Busy => (fleet.rate / fleet.record_size).max(1),
        Mode::Idle => 1,
    };
    let config_path = ctx.logs.join(format!("fleet-{topic}.json"));
    fs::write(
        &config_path,
        serde_json::to_string_pretty(&json!({
            "kafka": {
                "bootstrap_servers": server.bootstrap,
                "topic": topic,
                "properties": ctx.options.extra_properties,
            },
            "log": { "summary_interval_seconds": 0 }
        }))?,
    )?;
    let level = std::env::var("BENCH_CHILD_LOG_LEVEL").unwrap_or_else(|_| "INFO".into());

    // The consumer, assigned before any child starts.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &server.bootstrap)
        .set("group.id", "kkr-bench-fleet")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let read_partitions: Vec<i32> = match mode {
        Mode::Busy => vec![0],
        Mode::Idle => (0..ctx.options.partitions).collect(),
    };
    for &p in &read_partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;

    let total_batches = (fleet.warmup + fleet.seconds + 2) as usize;
    let handoffs: HandOffs = Arc::new(
        (0..n)
            .map(|_| Mutex::new(vec![None; total_batches + 1]))
            .collect(),
    );

    // Spawn every child, then initialize them all in parallel.
    let mut children = Vec::new();
    for i in 0..n {
        let log = ctx.logs.join(format!("fleet-{topic}-{i}.log"));
        let mut command = match kind {
            Kind::Rust => {
                let mut c = clean_command(&ctx.replicator);
                c.arg("--config")
                    .arg(&config_path)
                    .env("KCL_LOG_LEVEL", &level);
                c
            }
            Kind::Python => python_command(ctx, &server.bootstrap, topic)?,
            other => bail!("{other:?} has no fleet"),
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?);
        children.push(
            command
                .spawn()
                .with_context(|| format!("spawn child {i}"))?,
        );
    }
    let pids: Vec<u32> = children.iter().map(Child::id).collect();

    let stop_consumer = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let window: Arc<Mutex<Option<(Instant, Instant)>>> = Arc::new(Mutex::new(None));
    let consumer_thread = {
        let stop = stop_consumer.clone();
        let handoffs = handoffs.clone();
        let latencies = latencies.clone();
        let window = window.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let now = Instant::now();
                let Some((child, batch)) = m.key().and_then(parse_key) else {
                    continue;
                };
                let handed = handoffs
                    .get(child)
                    .and_then(|h| h.lock().ok().and_then(|v| v.get(batch).copied().flatten()));
                let Some(handed) = handed else { continue };
                let in_window = window
                    .lock()
                    .ok()
                    .and_then(|w| *w)
                    .is_some_and(|(from, to)| handed >= from && handed < to);
                if in_window {
                    if let Ok(mut l) = latencies.lock() {
                        l.push((now - handed).as_secs_f64() * 1e3);
                    }
                }
            }
        })
    };

    // Two rendezvous: every child initialized; then the schedule is set.
    let barrier = Arc::new(Barrier::new(n + 1));
    let go = Arc::new(Barrier::new(n + 1));
    let start_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let handed_in_window = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let status_ms = Arc::new(Mutex::new(Vec::<f64>::new()));
    let mut threads = Vec::new();
    for (i, mut child) in children.into_iter().enumerate() {
        let barrier = barrier.clone();
        let go = go.clone();
        let start_at = start_at.clone();
        let handoffs = handoffs.clone();
        let window = window.clone();
        let handed_in_window = handed_in_window.clone();
        let failed = failed.clone();
        let status_ms = status_ms.clone();
        let mut feed = Feed::new(i, per_batch, payloads);
        let phase = Duration::from_secs_f64(i as f64 / n as f64);
        threads.push(std::thread::spawn(move || {
            let mut double = InlineDaemon::new(&mut child);
            let shard = format!("shardId-{i:012}");
            let init = double.initialize(&shard, TRIM_HORIZON);
            barrier.wait();
            go.wait();
            let start = start_at.lock().ok().and_then(|s| *s);
            let ok = init.is_ok();
            if let (true, Some(start)) = (ok, start) {
                for batch in 0..total_batches {
                    let at = start + phase + Duration::from_secs(batch as u64);
                    let now = Instant::now();
                    if at > now {
                        std::thread::sleep(at - now);
                    }
                    let (from, to) = match window.lock().ok().and_then(|w| *w) {
                        Some(w) => w,
                        None => break,
                    };
                    if Instant::now() >= to + Duration::from_secs(1) {
                        break;
                    }
                    let largest = feed.set_batch(batch);
                    let handed = Instant::now();
                    if let Ok(mut h) = handoffs[i].lock() {
                        h[batch] = Some(handed);
                    }
                    if double.process_records(&feed.line, &largest).is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    if handed >= from && handed < to {
                        handed_in_window.fetch_add(feed.records as u64, Ordering::Relaxed);
                        if let Ok(mut s) = status_ms.lock() {
                            s.push(handed.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                }
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            double.close();
            let _ = child.wait();
        }));
    }
    barrier.wait();
    // Initialized: the schedule starts now; the window after the warm-up.
    let start = Instant::now();
    let from = start + Duration::from_secs(fleet.warmup);
    let to = from + Duration::from_secs(fleet.seconds);
    if let Ok(mut s) = start_at.lock() {
        *s = Some(start);
    }
    if let Ok(mut w) = window.lock() {
        *w = Some((from, to));
    }
    go.wait();
    std::thread::sleep(from.saturating_duration_since(Instant::now()));
    let cpu0: Vec<Option<f64>> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let broker0 = server.jvm_pid.and_then(proc_cpu_seconds);
    let (busy0, total0) = host_jiffies();
    let t0 = Instant::now();
    std::thread::sleep(to.saturating_duration_since(Instant::now()));
    let cpu1: Vec<Option<f64>> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let broker1 = server.jvm_pid.and_then(proc_cpu_seconds);
    let (busy1, total1) = host_jiffies();
    let elapsed = t0.elapsed().as_secs_f64();
    let mem: Vec<(u64, u64, u64)> = pids.iter().filter_map(|p| rss_threads(*p)).collect();
    let pss: Vec<f64> = pids
        .iter()
        .filter_map(|p| pss_kib(*p))
        .map(|k| k as f64 / 1024.0)
        .collect();
    for t in threads {
        let _ = t.join();
    }
    // Records handed over at the end of the window may still be on their way.
    std::thread::sleep(Duration::from_secs(2));
    stop_consumer.store(true, Ordering::Relaxed);
    let _ = consumer_thread.join();

    let cpu: f64 = cpu0
        .iter()
        .zip(&cpu1)
        .filter_map(|(a, b)| Some((*b)? - (*a)?))
        .sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    let mut st = status_ms.lock().map(|l| l.clone()).unwrap_or_default();
    st.sort_by(f64::total_cmp);
    let rss: Vec<f64> = mem.iter().map(|(r, _, _)| *r as f64 / 1024.0).collect();
    let anon: Vec<f64> = mem.iter().map(|(_, a, _)| *a as f64 / 1024.0).collect();
    let failed = failed.load(Ordering::Relaxed) as usize;
    Ok(FleetResult {
        kind: kind.name().into(),
        mode: mode.name().into(),
        children: n,
        seconds: elapsed,
        asked_rps: (n * per_batch) as f64,
        achieved_rps: handed_in_window.load(Ordering::Relaxed) as f64 / fleet.seconds as f64,
        children_cores: cpu / elapsed,
        broker_cores: match (broker0, broker1) {
            (Some(a), Some(b)) => Some((b - a) / elapsed),
            _ => None,
        },
        host_cores: (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * cores,
        rss_mean_mib: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
        rss_max_mib: rss.iter().copied().fold(0.0, f64::max),
        anon_mean_mib: anon.iter().sum::<f64>() / anon.len().max(1) as f64,
        pss_mean_mib: pss.iter().sum::<f64>() / pss.len().max(1) as f64,
        threads_mean: mem.iter().map(|(_, _, t)| *t as f64).sum::<f64>() / mem.len().max(1) as f64,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        samples: lat.len(),
        status_p99_ms: percentile(&st, 0.99),
        failed,
        error: (failed > 0).then(|| {
            format!(
                "{failed} of {n} children failed (logs in target/bench/logs/fleet-{topic}-*.log)"
            )
        }),
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

pub fn print_fleet_header() {
    println!(
        "| child | load | N | records/s asked | achieved | CPU, all children (cores) | per child (ms/s) | broker (cores) | host busy (cores) | RSS mean / max (MiB) | private (RssAnon) mean (MiB) | PSS mean (MiB) | threads | hand-off to readable p50 / p99 (ms) | status p99 (ms) |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
}

pub fn fleet_row(r: &FleetResult) -> String {
    if let Some(e) = &r.error {
        if r.seconds == 0.0 {
            return format!("| {} | {} | {} | failed: {e} |", r.kind, r.mode, r.children);
        }
    }
    format!(
        "| {} | {} | {} | {:.0} | {:.0} | {:.3} | {:.2} | {} | {:.2} | {:.1} / {:.1} | {:.1} | {:.1} | {:.0} | {} / {} | {} |{}",
        r.kind,
        r.mode,
        r.children,
        r.asked_rps,
        r.achieved_rps,
        r.children_cores,
        r.children_cores * 1e3 / r.children.max(1) as f64,
        opt(r.broker_cores, 2),
        r.host_cores,
        r.rss_mean_mib,
        r.rss_max_mib,
        r.anon_mean_mib,
        r.pss_mean_mib,
        r.threads_mean,
        opt(r.p50_ms, 1),
        opt(r.p99_ms, 1),
        opt(r.status_p99_ms, 1),
        r.error.as_deref().map_or(String::new(), |e| format!(" {e}")),
    )
}

pub fn print_fleet_row(r: &FleetResult) {
    println!("{}", fleet_row(r));
}

pub fn fleet_json(r: &FleetResult) -> serde_json::Value {
    json!({
        "kind": r.kind, "mode": r.mode, "children": r.children, "seconds": r.seconds,
        "asked_rps": r.asked_rps, "achieved_rps": r.achieved_rps,
        "children_cores": r.children_cores, "broker_cores": r.broker_cores,
        "host_cores": r.host_cores, "rss_mean_mib": r.rss_mean_mib, "rss_max_mib": r.rss_max_mib, "anon_mean_mib": r.anon_mean_mib, "pss_mean_mib": r.pss_mean_mib,
        "threads_mean": r.threads_mean, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
        "latency_samples": r.samples, "status_p99_ms": r.status_p99_ms,
        "failed": r.failed, "error": r.error, "load_average_after": load_average(),
    })
}
