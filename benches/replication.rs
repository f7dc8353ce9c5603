//! The replication benchmark: what one shard's child costs, and how fast it drains a backlog.
//!
//! It plays the KCL MultiLangDaemon (a lean double of `multilang-protocol.md`: one JSON line per
//! message, checkpoint replies echoed with `"error":null` after a range check, `shardEnded` then
//! EOF) against the release binary, with every `processRecords` line generated before the clock
//! starts, into a real broker (tansu) and into librdkafka's mock cluster. Per run it prints
//! records/s, payload MB/s, the child's CPU per record (user+sys from `wait4`), its peak RSS
//! (`ru_maxrss`), spawn-to-initialize time, and p50/p99 of the time from writing a
//! `processRecords` line to reading its status. The clock runs from the first `processRecords`
//! to the `shardEnded` status, which the replicator sends only after every record is
//! acknowledged and SHARD_END is checkpointed; the topic is then read back from the beginning.
//!
//! In the same run it measures the ceilings: a raw rdkafka producer (a child process, with the
//! replicator's own producer properties from `Config::producer_properties`) sending the same
//! messages, and the double against a child that only answers status. The Python replicator of
//! `../shared/bench/` runs the same way when `BENCH_PYTHON_CHILD` names its runner
//! (`scripts/bench.sh` sets it up). `cargo bench --bench replication -- --help` lists the options;
//! `docs/benchmark.md` explains the figures.
//!
//! Run it through `scripts/bench.sh`. It is not part of `cargo test`.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

use kinesis_kafka_replicator::config::Config;

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const REPLICATOR_BIN: &str = env!("CARGO_BIN_EXE_kinesis-kafka-replicator");

/// GetRecords returns at most 10 MiB per call: a batch of 10,000 records of 10 KB cannot
/// happen, so the batch is capped at what one call can return.
const GETRECORDS_MAX_BYTES: usize = 10 << 20;
const SHARD_ID: &str = "shardId-000000000000";
/// 44 digits; each record appends a 12-digit counter (a 56-digit sequence number).
const SEQUENCE_PREFIX: &str = "49590338271490256608559692538361571095921575";
const ARRIVAL_BASE_MS: i64 = 1_700_000_000_000;
const PARTITION_KEYS: usize = 1000;
const PAYLOAD_POOL: usize = 64;

const ROLE_ENV: &str = "KKR_BENCH_ROLE";

fn main() {
    let code = match std::env::var(ROLE_ENV).as_deref() {
        Ok("status-child") => status_child(),
        Ok("raw-producer") => match raw_producer() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("raw producer: {e:#}");
                1
            }
        },
        _ => match bench() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("bench: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Broker {
    Tansu,
    Mock,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Tansu => "tansu",
            Broker::Mock => "mock",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// The replicator, answering as soon as the batch is queued (bounded by its window).
    Rust,
    /// The replicator with `pipeline.wait_for_ack`: answers once the batch is acknowledged.
    RustSync,
    Python,
    /// Ceiling: a plain rdkafka producer sending the same messages.
    Raw,
    /// Ceiling: the double against a child that only answers status.
    Status,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Rust,
        Kind::RustSync,
        Kind::Python,
        Kind::Raw,
        Kind::Status,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Rust => "rust",
            Kind::RustSync => "rust-sync",
            Kind::Python => "python",
            Kind::Raw => "raw-producer",
            Kind::Status => "status-only",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Rust => "Rust, pipelined",
            Kind::RustSync => "Rust, wait_for_ack",
            Kind::Python => "Python (kclpy)",
            Kind::Raw => "raw producer (ceiling)",
            Kind::Status => "double, status-only child (ceiling)",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "rust" | "pipelined" => Some(Kind::Rust),
            "rust-sync" | "sync" | "wait_for_ack" => Some(Kind::RustSync),
            "python" | "py" => Some(Kind::Python),
            "raw" | "raw-producer" => Some(Kind::Raw),
            "status" | "status-only" | "double" => Some(Kind::Status),
            _ => None,
        }
    }
}

struct Options {
    brokers: Vec<Broker>,
    sizes: Vec<usize>,
    batches: Vec<usize>,
    kinds: Vec<Kind>,
    /// Records per run for 100 B and 1 KB; larger records get proportionally fewer.
    records: usize,
    repeat: usize,
    /// Repeats of the configurations the targets are judged on (1 KB, batches of 10,000).
    target_repeat: usize,
    partitions: i32,
    /// Re-render the reports of an earlier run instead of measuring.
    from_json: Option<PathBuf>,
    publish: bool,
    quick: bool,
    python: Option<PathBuf>,
    python_note: String,
    run_timeout: Duration,
    /// librdkafka properties added to the replicator's config (and so to the raw producer).
    extra_properties: BTreeMap<String, String>,
}

const HELP: &str = "\
The replication benchmark (docs/benchmark.md). Usually run as scripts/bench.sh [OPTIONS].

OPTIONS (lists are comma-separated):
    --quick              1 KB records only, 50,000 per run (default: every size, 200,000)
    --broker LIST        tansu,mock                       (default: both)
    --size LIST          100,1000,10000 (bytes; 1KB, 10KB also accepted)
    --batch LIST         500,10000 (records per processRecords; capped at 10 MiB per batch)
    --child LIST         rust,rust-sync,python,raw,status (default: all)
    --records N          records per run for 100 B and 1 KB (10 KB runs move the same bytes)
    --repeat N           run every configuration N times and report the median by records/s
    --target-repeat N    the same for the target configurations (1 KB; batches of 10,000 and
                         the raw producer): default 3 (1 with --quick)
    --partitions N       partitions of the topic (default 4)
    --no-python          skip the Python baseline
    --publish            also write docs/benchmark.svg and the table in docs/benchmark.md
    --from-json PATH     measure nothing: re-render the table and chart of an earlier run
                         (target/bench/replication.json)
    --help

ENVIRONMENT:
    BENCH_PYTHON_CHILD       the Python replicator's runner (scripts/bench.sh sets it)
    BENCH_KAFKA_PROPERTIES   k=v pairs, space-separated: librdkafka properties for the replicator and the raw producer
    BENCH_RUN_TIMEOUT        seconds before a run is killed (default 300)
    BENCH_MAX_IN_FLIGHT_RECORDS, BENCH_MAX_IN_FLIGHT_BYTES
                             the replicator's window (default 10000 records, 8 MiB)
    BENCH_RECORD_HEADERS     false: no kinesis.* headers (records.headers), for the raw producer too
    BENCH_CHILD_LOG_LEVEL    KCL_LOG_LEVEL of the replicator (default INFO; logs in target/bench/logs)
    KKR_BIN                  the replicator binary (default: the one cargo built for the bench)
    TANSU                    the tansu binary (default: tansu on PATH)
";

fn parse_list<T>(value: &str, parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<Vec<T>> {
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse(s.trim()).ok_or_else(|| anyhow!("unknown {what} {s:?}")))
        .collect()
}

fn parse_size(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    let (digits, factor) = if let Some(d) = lower.strip_suffix("kb") {
        (d, 1000)
    } else if let Some(d) = lower.strip_suffix('k') {
        (d, 1000)
    } else if let Some(d) = lower.strip_suffix('b') {
        (d, 1)
    } else {
        (lower.as_str(), 1)
    };
    digits.parse::<usize>().ok().map(|n| n * factor)
}

fn parse_options() -> Result<Option<Options>> {
    let mut o = Options {
        brokers: vec![Broker::Tansu, Broker::Mock],
        sizes: vec![100, 1000, 10_000],
        batches: vec![500, 10_000],
        kinds: Kind::ALL.to_vec(),
        records: 200_000,
        repeat: 1,
        target_repeat: 3,
        partitions: 4,
        from_json: None,
        publish: false,
        quick: false,
        python: None,
        python_note: String::new(),
        run_timeout: Duration::from_secs(300),
        extra_properties: BTreeMap::new(),
    };
    let mut records = None;
    let mut target_repeat = None;
    let mut sizes_given = false;
    let mut no_python = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| anyhow!("{name} needs a value"))
        };
        match name.as_str() {
            // cargo bench passes --bench to harness=false targets.
            "--bench" => {}
            "--help" | "-h" => {
                print!("{HELP}");
                return Ok(None);
            }
            "--quick" => o.quick = true,
            "--publish" => o.publish = true,
            "--no-python" => no_python = true,
            "--broker" | "--brokers" => {
                o.brokers = parse_list(
                    &value(&name)?,
                    |s| match s {
                        "tansu" => Some(Broker::Tansu),
                        "mock" => Some(Broker::Mock),
                        _ => None,
                    },
                    "broker",
                )?
            }
            "--size" | "--sizes" => {
                o.sizes = parse_list(&value(&name)?, parse_size, "size")?;
                sizes_given = true;
            }
            "--batch" | "--batches" => {
                o.batches = parse_list(&value(&name)?, |s| s.parse().ok(), "batch size")?
            }
            "--child" | "--children" => o.kinds = parse_list(&value(&name)?, Kind::parse, "child")?,
            "--records" => records = Some(value(&name)?.parse().context("--records")?),
            "--repeat" => o.repeat = value(&name)?.parse().context("--repeat")?,
            "--target-repeat" => {
                target_repeat = Some(value(&name)?.parse().context("--target-repeat")?)
            }
            "--from-json" => o.from_json = Some(PathBuf::from(value(&name)?)),
            "--partitions" => o.partitions = value(&name)?.parse().context("--partitions")?,
            other => bail!("unknown argument {other:?}; see --help"),
        }
    }
    if o.quick {
        if !sizes_given {
            o.sizes = vec![1000];
        }
        o.records = 50_000;
        o.target_repeat = 1;
    }
    if let Some(n) = records {
        o.records = n;
    }
    if let Some(n) = target_repeat {
        o.target_repeat = n;
    }
    o.target_repeat = o.target_repeat.max(o.repeat);
    if o.records == 0
        || o.repeat == 0
        || o.target_repeat == 0
        || o.partitions <= 0
        || o.sizes.contains(&0)
    {
        bail!("--records, --repeat, --partitions and sizes must be positive");
    }
    if o.batches.contains(&0) {
        bail!("batch sizes must be positive");
    }
    if let Ok(secs) = std::env::var("BENCH_RUN_TIMEOUT") {
        o.run_timeout = Duration::from_secs(secs.parse().context("BENCH_RUN_TIMEOUT")?);
    }
    if let Ok(props) = std::env::var("BENCH_KAFKA_PROPERTIES") {
        for pair in props.split_whitespace() {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("BENCH_KAFKA_PROPERTIES: {pair:?} is not k=v"))?;
            o.extra_properties
                .insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    if no_python {
        o.python_note = "skipped (--no-python)".into();
    } else if o.kinds.contains(&Kind::Python) {
        match std::env::var_os("BENCH_PYTHON_CHILD") {
            None => {
                o.python_note =
                    "skipped: BENCH_PYTHON_CHILD is not set (scripts/bench.sh sets it up)".into()
            }
            Some(path) => {
                let path = PathBuf::from(path);
                match probe_python(&path) {
                    Ok(()) => {
                        o.python_note = format!("{}", path.display());
                        o.python = Some(path);
                    }
                    Err(e) => {
                        o.python_note = format!("skipped: {} is unusable: {e:#}", path.display())
                    }
                }
            }
        }
    }
    if o.python.is_none() {
        o.kinds.retain(|k| *k != Kind::Python);
    }
    Ok(Some(o))
}

/// Starts the Python replicator with stdin at EOF: it must import, build its producer and exit 0.
fn probe_python(runner: &Path) -> Result<()> {
    let mut command = Command::new(runner);
    command
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
        .env("KAFKA_TOPIC", "probe")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("cannot start it")?;
    let mut stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            let text = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
            if status.success() {
                return Ok(());
            }
            bail!("{status}: {}", tail(&text, 5));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("it did not exit within 30 s of EOF on stdin");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

// ---------------------------------------------------------------------------------------------
// The workload: records and pre-generated processRecords lines
// ---------------------------------------------------------------------------------------------

/// Records per run: the same count for records up to 1 KB, the same bytes beyond.
fn records_for(size: usize, records: usize) -> usize {
    (records * 1000 / size.max(1000)).max(1)
}

/// The batch the double can actually send: at most what one GetRecords call returns.
fn effective_batch(batch: usize, size: usize) -> usize {
    batch
        .min(GETRECORDS_MAX_BYTES / size.max(1))
        .clamp(1, 10_000)
}

fn sequence_number(i: usize) -> String {
    format!("{SEQUENCE_PREFIX}{i:012}")
}

fn partition_key(i: usize) -> String {
    format!("pk-{}", i % PARTITION_KEYS)
}

fn arrival(i: usize) -> i64 {
    ARRIVAL_BASE_MS + (i / 10) as i64
}

/// Incompressible payloads (compression is off by default, but a broker could still care).
fn payload_pool(size: usize) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ size as u64;
    (0..PAYLOAD_POOL)
        .map(|_| {
            (0..size)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect()
        })
        .collect()
}

struct Workload {
    size: usize,
    batch: usize,
    records: usize,
    lines: Vec<Vec<u8>>,
    /// The last sequence number of each line (what `largestPermitted` becomes).
    last_sequence: Vec<String>,
    /// Records in each line.
    counts: Vec<usize>,
}

fn build_workload(size: usize, batch: usize, records: usize) -> Workload {
    let encoded: Vec<String> = payload_pool(size)
        .iter()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p))
        .collect();
    let mut lines = Vec::new();
    let mut last_sequence = Vec::new();
    let mut counts = Vec::new();
    let mut start = 0;
    while start < records {
        let end = (start + batch).min(records);
        let mut line = String::with_capacity((end - start) * (encoded[0].len() + 180) + 64);
        line.push_str(r#"{"action":"processRecords","records":["#);
        for i in start..end {
            if i > start {
                line.push(',');
            }
            let _ = write!(
                line,
                r#"{{"data":"{}","partitionKey":"{}","sequenceNumber":"{}","approximateArrivalTimestamp":{},"subSequenceNumber":0,"action":"record"}}"#,
                encoded[i % PAYLOAD_POOL],
                partition_key(i),
                sequence_number(i),
                arrival(i)
            );
        }
        let _ = writeln!(line, r#"],"millisBehindLatest":{}}}"#, (records - end) / 10);
        lines.push(line.into_bytes());
        last_sequence.push(sequence_number(end - 1));
        counts.push(end - start);
        start = end;
    }
    Workload {
        size,
        batch,
        records,
        lines,
        last_sequence,
        counts,
    }
}

// ---------------------------------------------------------------------------------------------
// Brokers
// ---------------------------------------------------------------------------------------------

/// One broker with one fresh topic, for one run.
struct BrokerInstance {
    kind: Broker,
    bootstrap: String,
    topic: String,
    partitions: i32,
    tansu: Option<std::process::Child>,
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tansu_bin() -> String {
    std::env::var("TANSU").unwrap_or_else(|_| "tansu".into())
}

fn tansu_available() -> bool {
    Command::new(tansu_bin())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl BrokerInstance {
    fn start(kind: Broker, topic: &str, partitions: i32, logs: &Path) -> Result<BrokerInstance> {
        match kind {
            Broker::Mock => {
                let cluster = MockCluster::new(1).context("start the mock cluster")?;
                cluster
                    .create_topic(topic, partitions, 1)
                    .context("create the topic on the mock cluster")?;
                let bootstrap = cluster.bootstrap_servers();
                let broker = BrokerInstance {
                    kind,
                    bootstrap,
                    topic: topic.to_owned(),
                    partitions,
                    tansu: None,
                    _mock: Some(cluster),
                };
                broker.wait_for_topic()?;
                Ok(broker)
            }
            Broker::Tansu => {
                let port = free_port()?;
                let url = format!("tcp://127.0.0.1:{port}");
                let log = File::create(logs.join("tansu.log"))?;
                let child = Command::new(tansu_bin())
                    .args([
                        "broker",
                        "--listener-url",
                        &url,
                        "--advertised-listener-url",
                        &url,
                    ])
                    .args(["--storage-engine", "memory://tansu/"])
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .context("start tansu")?;
                let broker = BrokerInstance {
                    kind,
                    bootstrap: format!("127.0.0.1:{port}"),
                    topic: topic.to_owned(),
                    partitions,
                    tansu: Some(child),
                    _mock: None,
                };
                let deadline = Instant::now() + Duration::from_secs(20);
                while TcpStream::connect(("127.0.0.1", port)).is_err() {
                    if Instant::now() > deadline {
                        bail!(
                            "tansu did not listen on {url} within 20 s (see {})",
                            logs.join("tansu.log").display()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let out = Command::new(tansu_bin())
                    .args(["topic", "create", topic, "--partitions"])
                    .arg(partitions.to_string())
                    .args(["--broker", &url])
                    .output()
                    .context("tansu topic create")?;
                if !out.status.success() {
                    bail!(
                        "tansu topic create {topic} failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                broker.wait_for_topic()?;
                Ok(broker)
            }
        }
    }

    fn wait_for_topic(&self) -> Result<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(metadata) = consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(5))
            {
                let n = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == self.topic && t.error().is_none())
                    .map_or(0, |t| t.partitions().len());
                if n as i32 == self.partitions {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "topic {} did not appear on {}",
                    self.topic,
                    self.kind.name()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// tansu's CPU seconds so far (the mock cluster runs inside this process).
    fn cpu_seconds(&self) -> Option<f64> {
        self.tansu.as_ref().and_then(|c| proc_cpu_seconds(c.id()))
    }

    /// Reads the topic from the beginning of every partition until at least `expected`
    /// messages were seen and nothing more arrives for a second. Returns the messages read plus
    /// those below the low watermarks (the mock cluster keeps only the last 5 MiB of each
    /// partition; tansu keeps everything), and the sum of the high watermarks (informational:
    /// tansu 0.6's lag behind its last batch).
    fn count(&self, expected: usize) -> Result<(u64, u64)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "kkr-bench-verify")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        let mut next = Vec::new();
        let mut high_sum = 0;
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                .with_context(|| format!("watermarks of partition {p}"))?;
            next.push(low.max(0));
            high_sum += high.max(0);
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(low.max(0)))?;
        }
        consumer.assign(&tpl)?;
        let trimmed: i64 = next.iter().sum();
        let mut read = trimmed as u64;
        let mut last_progress = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let slot = &mut next[m.partition() as usize];
                    if m.offset() >= *slot {
                        read += 1;
                        *slot = m.offset() + 1;
                    }
                    last_progress = Instant::now();
                }
                Some(Err(e)) => eprintln!("    (read back: {e})"),
                None => {}
            }
            let idle = last_progress.elapsed();
            if (read as usize >= expected && idle > Duration::from_secs(1))
                || idle > Duration::from_secs(15)
            {
                break;
            }
        }
        Ok((read, high_sum as u64))
    }

    fn stop(mut self) {
        if let Some(mut child) = self.tansu.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for BrokerInstance {
    fn drop(&mut self) {
        if let Some(child) = self.tansu.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Process accounting
// ---------------------------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a live process, from /proc.
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// VmHWM (peak resident set) of a live process, in KiB. Not `ru_maxrss` from wait4: a child
/// spawned with vfork (as std does) inherits the parent's RSS into its `ru_maxrss` at exec,
/// and this benchmark holds hundreds of MB of pre-generated lines.
fn proc_hwm_kib(pid: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
}

/// (busy, total) jiffies of the whole machine.
fn host_jiffies() -> (u64, u64) {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn self_cpu_seconds() -> f64 {
    rusage_cpu(&getrusage(libc::RUSAGE_SELF))
}

fn getrusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    usage
}

fn rusage_cpu(u: &libc::rusage) -> f64 {
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Reaps `pid` and returns its exit status and resource usage.
fn wait4(pid: u32) -> Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, not yet reaped.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if r == pid as libc::pid_t {
            return Ok((status, usage));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(anyhow!("wait4({pid}): {e}"));
        }
    }
}

fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status}")
    }
}

/// Kills `pid` when `limit` passes, unless the returned sender is dropped or used first.
fn watchdog(pid: u32, limit: Duration) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!(
                "    (run timed out after {} s: killing child {pid})",
                limit.as_secs()
            );
            // SAFETY: pid is a child of this process that has not been reaped yet (wait4
            // runs only after the driver stops, and the driver stops when this fires).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    tx
}

// ---------------------------------------------------------------------------------------------
// The daemon double
// ---------------------------------------------------------------------------------------------

/// Numeric comparison of decimal strings of any length.
fn compare_decimal(a: &str, b: &str) -> CmpOrdering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Checkpointer {
    /// initialize: the daemon has none (InvalidStateException).
    Absent,
    Live,
    ShardEnd,
}

struct Double {
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    line: String,
    /// Last checkpoint stored (sequence number, sub-sequence number).
    last: Option<(String, i64)>,
    /// largestPermitted: the last record delivered.
    largest: Option<String>,
    checkpoints: u32,
    rejected: u32,
    shard_end: bool,
    skipped_lines: u32,
}

impl Double {
    fn send(&mut self, line: &[u8]) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("stdin closed"))?;
        stdin
            .write_all(line)
            .and_then(|()| stdin.flush())
            .context("writing to the child's stdin")
    }

    /// Reads until the status for `action`, answering checkpoint requests on the way.
    fn await_status(&mut self, action: &str, checkpointer: Checkpointer) -> Result<()> {
        loop {
            self.line.clear();
            let n = self
                .stdout
                .read_line(&mut self.line)
                .context("reading the child's stdout")?;
            if n == 0 {
                bail!("the child closed stdout (exited?) while the double waited for the {action} status");
            }
            let text = self.line.trim();
            if text.is_empty() {
                continue;
            }
            let Ok(message) = serde_json::from_str::<Value>(text) else {
                self.skipped_lines += 1;
                continue;
            };
            match message.get("action").and_then(Value::as_str) {
                Some("status") => {
                    let responds = message.get("responseFor").and_then(Value::as_str);
                    if responds != Some(action) {
                        bail!("status for {responds:?} while waiting for {action}");
                    }
                    return Ok(());
                }
                Some("checkpoint") => self.checkpoint(&message, checkpointer)?,
                _ => self.skipped_lines += 1,
            }
        }
    }

    /// The checkpoint rules of `ShardRecordProcessorCheckpointer`, reduced to what this
    /// workload can meet; the reply echoes the request.
    fn checkpoint(&mut self, request: &Value, checkpointer: Checkpointer) -> Result<()> {
        let seq = request
            .get("sequenceNumber")
            .cloned()
            .unwrap_or(Value::Null);
        let sub = request
            .get("subSequenceNumber")
            .cloned()
            .unwrap_or(Value::Null);
        let error: Option<&str> = match (checkpointer, seq.as_str()) {
            (Checkpointer::Absent, _) => Some("InvalidStateException"),
            (Checkpointer::ShardEnd, None) => {
                self.shard_end = true;
                None
            }
            // checkpoint() during processRecords: everything delivered so far.
            (Checkpointer::Live, None) => {
                self.last = self.largest.clone().map(|s| (s, 0));
                None
            }
            (_, Some(s)) => {
                let n = sub.as_i64().unwrap_or(0);
                let above_last = self.last.as_ref().is_none_or(|(ls, ln)| {
                    compare_decimal(ls, s).then(ln.cmp(&n)) != CmpOrdering::Greater
                });
                let below_largest = self
                    .largest
                    .as_ref()
                    .is_some_and(|l| compare_decimal(s, l) != CmpOrdering::Greater);
                if s.bytes().all(|b| b.is_ascii_digit()) && above_last && below_largest {
                    self.last = Some((s.to_owned(), n));
                    None
                } else {
                    Some("IllegalArgumentException")
                }
            }
        };
        self.checkpoints += 1;
        if error.is_some() {
            self.rejected += 1;
        }
        let reply = format!(
            "{{\"action\":\"checkpoint\",\"sequenceNumber\":{seq},\"subSequenceNumber\":{sub},\"error\":{}}}\n",
            error.map_or("null".to_owned(), |e| format!("\"{e}\""))
        );
        self.send(reply.as_bytes())
    }
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct RunResult {
    broker: Option<Broker>,
    kind: Option<Kind>,
    size: usize,
    /// Records per processRecords (0 for the raw producer).
    batch: usize,
    records: usize,
    wall_s: f64,
    /// Records/s over the second half of the run: from the status that answered the first
    /// half of the records (raw producer: the acknowledgement of the first half) to the end.
    /// The idempotent producer's start-up (0.5 to 1 s before the first acknowledgement) is
    /// in `wall_s` but not in this.
    steady_rps: Option<f64>,
    cpu_s: f64,
    maxrss_kib: u64,
    init_ms: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Messages read back from the topic, and the sum of its high watermarks.
    read_back: Option<(u64, u64)>,
    checkpoints: u32,
    broker_cpu_s: Option<f64>,
    /// Raw producer: from its creation to the first acknowledgement.
    first_ack_ms: Option<f64>,
    /// Busy cores of the whole machine during the run, and what was not this benchmark's.
    host_busy_cores: f64,
    other_cores: f64,
    load: String,
    error: Option<String>,
}

impl RunResult {
    fn records_per_s(&self) -> f64 {
        self.records as f64 / self.wall_s.max(1e-9)
    }
    fn mb_per_s(&self) -> f64 {
        (self.records * self.size) as f64 / self.wall_s.max(1e-9) / 1e6
    }
    fn cpu_us_per_record(&self) -> f64 {
        self.cpu_s * 1e6 / self.records.max(1) as f64
    }
    fn rss_mib(&self) -> f64 {
        self.maxrss_kib as f64 / 1024.0
    }
    fn ok(&self) -> bool {
        self.error.is_none()
    }
    fn verified(&self) -> String {
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

struct Context {
    options: Options,
    logs: PathBuf,
    replicator: PathBuf,
    run_counter: usize,
}

impl Context {
    fn topic(&mut self) -> String {
        self.run_counter += 1;
        format!("bench-{}-{}", std::process::id(), self.run_counter)
    }

    fn replicator_config(&self, broker: &BrokerInstance, wait_for_ack: bool) -> Result<PathBuf> {
        let config = json!({
            "kafka": {
                "bootstrap_servers": broker.bootstrap,
                "topic": broker.topic,
                "properties": self.options.extra_properties,
            },
            "checkpoint": { "freq_seconds": 1 },
            "records": { "headers": std::env::var("BENCH_RECORD_HEADERS").map_or(true, |v| v != "false" && v != "0") },
            "pipeline": {
                "wait_for_ack": wait_for_ack,
                "max_in_flight_records": env_number("BENCH_MAX_IN_FLIGHT_RECORDS", 10000),
                "max_in_flight_bytes": env_number("BENCH_MAX_IN_FLIGHT_BYTES", 8388608)
            },
            "log": { "summary_interval_seconds": 0 }
        });
        let path = self.logs.join(format!(
            "replicator-{}-{}.json",
            broker.kind.name(),
            if wait_for_ack { "sync" } else { "pipelined" }
        ));
        fs::write(&path, serde_json::to_string_pretty(&config)?)?;
        Ok(path)
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A command with the benchmark's environment: nothing from the developer's shell that the
/// replicator, librdkafka or the Python replicator would read.
fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("KAFKA_")
            || name.starts_with("KCL_")
            || name.starts_with("REPLICATOR_")
            || matches!(
                name,
                "RUST_LOG"
                    | "CHECKPOINT_FREQ_SECONDS"
                    | "CHECKPOINT_RETRIES"
                    | "SLEEP_SECONDS"
                    | "LOG_LEVEL"
            )
        {
            command.env_remove(name);
        }
    }
    command
}

/// Drives one child through initialize, every batch, shardEnded and EOF.
fn drive(
    ctx: &mut Context,
    kind: Kind,
    workload: &Workload,
    broker: Option<&BrokerInstance>,
) -> RunResult {
    let mut result = RunResult {
        broker: broker.map(|b| b.kind),
        kind: Some(kind),
        size: workload.size,
        batch: workload.batch,
        records: workload.records,
        load: load_average(),
        ..RunResult::default()
    };
    if let Err(e) = drive_inner(ctx, kind, workload, broker, &mut result) {
        result.error = Some(format!("{e:#}"));
    }
    result
}

fn drive_inner(
    ctx: &mut Context,
    kind: Kind,
    workload: &Workload,
    broker: Option<&BrokerInstance>,
    result: &mut RunResult,
) -> Result<()> {
    let log_name = format!(
        "{}-{}-{}-{}.log",
        kind.name(),
        broker.map_or("none", |b| b.kind.name()),
        workload.size,
        workload.batch
    );
    let log_path = ctx.logs.join(&log_name);
    let mut command = match kind {
        Kind::Rust | Kind::RustSync => {
            let broker = broker.ok_or_else(|| anyhow!("no broker"))?;
            let config = ctx.replicator_config(broker, kind == Kind::RustSync)?;
            let mut c = clean_command(&ctx.replicator);
            let level = std::env::var("BENCH_CHILD_LOG_LEVEL").unwrap_or_else(|_| "INFO".into());
            c.arg("--config").arg(config).env("KCL_LOG_LEVEL", level);
            c
        }
        Kind::Python => {
            let broker = broker.ok_or_else(|| anyhow!("no broker"))?;
            let runner = ctx
                .options
                .python
                .clone()
                .ok_or_else(|| anyhow!("no Python"))?;
            let mut c = clean_command(&runner);
            c.env("KAFKA_BOOTSTRAP_SERVERS", &broker.bootstrap)
                .env("KAFKA_TOPIC", &broker.topic)
                .env("CHECKPOINT_FREQ_SECONDS", "1")
                .env("LOG_LEVEL", "INFO");
            c
        }
        Kind::Status => {
            let mut c = clean_command(&std::env::current_exe()?);
            c.env(ROLE_ENV, "status-child");
            c
        }
        Kind::Raw => bail!("the raw producer is not driven by the double"),
    };
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(File::create(&log_path)?);

    let (busy0, total0) = host_jiffies();
    let self0 = self_cpu_seconds();
    let broker0 = broker.and_then(BrokerInstance::cpu_seconds);

    let spawned = Instant::now();
    let mut child = command.spawn().with_context(|| format!("spawn {kind:?}"))?;
    let pid = child.id();
    let cancel = watchdog(pid, ctx.options.run_timeout);
    let mut double = Double {
        stdin: child.stdin.take(),
        stdout: BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped")),
        line: String::with_capacity(512),
        last: None,
        largest: None,
        checkpoints: 0,
        rejected: 0,
        shard_end: false,
        skipped_lines: 0,
    };
    let conversation = (|| -> Result<(f64, Vec<f64>, Option<f64>)> {
        double.send(
            format!(
                "{{\"action\":\"initialize\",\"shardId\":\"{SHARD_ID}\",\"sequenceNumber\":\"TRIM_HORIZON\",\"subSequenceNumber\":0}}\n"
            )
            .as_bytes(),
        )?;
        double.await_status("initialize", Checkpointer::Absent)?;
        result.init_ms = Some(spawned.elapsed().as_secs_f64() * 1e3);

        let mut latencies = Vec::with_capacity(workload.lines.len());
        // When the first half of the records had been answered: the second half's rate is
        // past the producer's start-up (see RunResult::steady_rps).
        let mut half: Option<(usize, Instant)> = None;
        let mut answered = 0;
        let start = Instant::now();
        for ((line, last), count) in workload
            .lines
            .iter()
            .zip(&workload.last_sequence)
            .zip(&workload.counts)
        {
            double.largest = Some(last.clone());
            let t0 = Instant::now();
            double.send(line)?;
            double.await_status("processRecords", Checkpointer::Live)?;
            let now = Instant::now();
            latencies.push((now - t0).as_secs_f64() * 1e3);
            answered += count;
            if half.is_none() && answered * 2 >= workload.records {
                half = Some((answered, now));
            }
        }
        double.send(b"{\"action\":\"shardEnded\"}\n")?;
        double.await_status("shardEnded", Checkpointer::ShardEnd)?;
        let end = Instant::now();
        let steady = half
            .filter(|(n, _)| *n < workload.records)
            .map(|(n, t)| (workload.records - n) as f64 / (end - t).as_secs_f64().max(1e-9));
        Ok(((end - start).as_secs_f64(), latencies, steady))
    })();
    // The peak so far, while the child is still alive (the exit itself allocates nothing).
    let hwm = proc_hwm_kib(&pid.to_string());
    // EOF, as the daemon's childProcessShutdownSequence does; then drain stdout and reap.
    drop(double.stdin.take());
    let mut rest = Vec::new();
    let _ = double.stdout.read_to_end(&mut rest);
    let (status, usage) = wait4(pid)?;
    drop(cancel);
    let (busy1, total1) = host_jiffies();
    let self1 = self_cpu_seconds();
    let broker1 = broker.and_then(BrokerInstance::cpu_seconds);

    result.cpu_s = rusage_cpu(&usage);
    result.maxrss_kib = hwm.unwrap_or(0);
    result.checkpoints = double.checkpoints;
    let stderr_tail = || tail(&fs::read_to_string(&log_path).unwrap_or_default(), 6);
    let (wall, mut latencies, steady) = match conversation {
        Ok(ok) => ok,
        Err(e) => bail!(
            "{e:#} ({}; stderr {}: {})",
            describe_status(status),
            log_path.display(),
            stderr_tail()
        ),
    };
    result.wall_s = wall;
    result.steady_rps = steady;
    latencies.sort_by(f64::total_cmp);
    result.p50_ms = percentile(&latencies, 0.50);
    result.p99_ms = percentile(&latencies, 0.99);
    if let (Some(b0), Some(b1)) = (broker0, broker1) {
        result.broker_cpu_s = Some(b1 - b0);
    }
    let wall_ticks = (total1 - total0).max(1) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy_cores = (busy1 - busy0) as f64 / wall_ticks * cores;
    let elapsed = (total1 - total0) as f64 / clock_ticks() / cores;
    let ours = result.cpu_s + (self1 - self0) + result.broker_cpu_s.unwrap_or(0.0);
    result.host_busy_cores = busy_cores;
    result.other_cores = (busy_cores - ours / elapsed.max(1e-9)).max(0.0);

    if status != 0 {
        bail!(
            "the child ended with {} after shardEnded (stderr {}: {})",
            describe_status(status),
            log_path.display(),
            stderr_tail()
        );
    }
    if double.rejected > 0 {
        bail!("{} checkpoint requests out of range", double.rejected);
    }
    if kind != Kind::Status && !double.shard_end {
        bail!("no SHARD_END checkpoint at shardEnded");
    }
    if let Some(broker) = broker {
        let counted = broker.count(workload.records)?;
        result.read_back = Some(counted);
        check_count(workload.records, counted)?;
    }
    Ok(())
}

/// Every record must be in the topic; more is at-least-once duplication (reported, allowed).
fn check_count(records: usize, (read, high): (u64, u64)) -> Result<()> {
    if (read as usize) < records {
        bail!("{records} records sent, {read} read back (high watermarks sum to {high})");
    }
    Ok(())
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Runs the raw producer as a child process on `broker` and reads its report.
fn run_raw(ctx: &mut Context, broker: &BrokerInstance, size: usize, records: usize) -> RunResult {
    let mut result = RunResult {
        broker: Some(broker.kind),
        kind: Some(Kind::Raw),
        size,
        batch: 0,
        records,
        load: load_average(),
        ..RunResult::default()
    };
    let attempt = (|| -> Result<()> {
        // The replicator's own config, so that the producer properties are the same.
        let config = ctx.replicator_config(broker, false)?;
        let log_path = ctx
            .logs
            .join(format!("raw-producer-{}-{size}.log", broker.kind.name()));
        let broker0 = broker.cpu_seconds();
        let self0 = self_cpu_seconds();
        let child = clean_command(&std::env::current_exe()?)
            .env(ROLE_ENV, "raw-producer")
            .env("KKR_RAW_CONFIG", &config)
            .env("KKR_RAW_SIZE", size.to_string())
            .env("KKR_RAW_RECORDS", records.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log_path)?)
            .spawn()?;
        let pid = child.id();
        let cancel = watchdog(pid, ctx.options.run_timeout);
        let mut out = String::new();
        let _ = child.stdout.expect("piped").read_to_string(&mut out);
        let (status, _) = wait4(pid)?;
        drop(cancel);
        let broker1 = broker.cpu_seconds();
        let self1 = self_cpu_seconds();
        if status != 0 {
            bail!(
                "raw producer: {} ({})",
                describe_status(status),
                tail(&fs::read_to_string(&log_path).unwrap_or_default(), 4)
            );
        }
        let report: Value = serde_json::from_str(out.trim()).context("raw producer report")?;
        result.wall_s = report["elapsed_s"].as_f64().unwrap_or(0.0);
        result.cpu_s = report["cpu_s"].as_f64().unwrap_or(0.0);
        result.maxrss_kib = report["vm_hwm_kib"].as_u64().unwrap_or(0);
        result.first_ack_ms = report["first_ack_ms"].as_f64();
        result.steady_rps = report["steady_rps"].as_f64();
        if let (Some(b0), Some(b1)) = (broker0, broker1) {
            result.broker_cpu_s = Some(b1 - b0);
        }
        // The machine's load while the producer's clock ran (it measures that itself; the
        // broker and this process are idle during its warm-up).
        result.host_busy_cores = report["host_busy_cores"].as_f64().unwrap_or(0.0);
        let ours = result.cpu_s + (self1 - self0) + result.broker_cpu_s.unwrap_or(0.0);
        result.other_cores = (result.host_busy_cores - ours / result.wall_s.max(1e-9)).max(0.0);
        let failed = report["failed"].as_u64().unwrap_or(0);
        if failed > 0 {
            bail!("{failed} messages failed");
        }
        let counted = broker.count(records)?;
        result.read_back = Some(counted);
        check_count(records, counted)?;
        Ok(())
    })();
    if let Err(e) = attempt {
        result.error = Some(format!("{e:#}"));
    }
    result
}

// ---------------------------------------------------------------------------------------------
// The ceilings' processes
// ---------------------------------------------------------------------------------------------

/// A child that only answers status: the double's own ceiling.
fn status_child() -> i32 {
    let stdin = std::io::stdin();
    let mut input = BufReader::with_capacity(1 << 20, stdin.lock());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut line = Vec::with_capacity(16 << 20);
    loop {
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(_) => return 1,
        }
        // {"action":"NAME",...
        let head = &line[..line.len().min(64)];
        let Some(start) = head.windows(10).position(|w| w == b"\"action\":\"") else {
            continue;
        };
        let name = &head[start + 10..];
        let Some(end) = name.iter().position(|&b| b == b'"') else {
            continue;
        };
        let name = &name[..end];
        if name == b"checkpoint" {
            continue;
        }
        let ok = out
            .write_all(b"{\"action\":\"status\",\"responseFor\":\"")
            .and_then(|()| out.write_all(name))
            .and_then(|()| out.write_all(b"\"}\n"))
            .and_then(|()| out.flush());
        if ok.is_err() {
            return 1;
        }
    }
}

const RAW_WARM_UP: Duration = Duration::from_millis(1500);

struct Counting {
    delivered: AtomicU64,
    failed: AtomicU64,
    created: Instant,
    /// Nanoseconds from the producer's creation to the first acknowledgement.
    first_ack_ns: AtomicU64,
    /// ... and to the acknowledgement of `half` messages.
    half: u64,
    half_ns: AtomicU64,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                let before = self.delivered.fetch_add(1, Ordering::Relaxed);
                if before == 0 {
                    let ns = self.created.elapsed().as_nanos() as u64;
                    self.first_ack_ns.store(ns, Ordering::Relaxed);
                }
                if before + 1 == self.half {
                    let ns = self.created.elapsed().as_nanos() as u64;
                    self.half_ns.store(ns, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The raw producer: the replicator's producer properties, the same messages (key, payload,
/// timestamp, the four kinesis.* headers). Their bytes are generated before the clock starts;
/// the librdkafka calls that make a message of them (header set, produce) are inside it.
fn raw_producer() -> Result<()> {
    // librdkafka's log lines (e.g. with BENCH_KAFKA_PROPERTIES=debug=eos) go to the run's log.
    let _ =
        env_logger::Builder::from_env(env_logger::Env::new().filter_or("KKR_BENCH_LOG", "warn"))
            .format_timestamp_millis()
            .try_init();
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let config = Config::load(Path::new(&var("KKR_RAW_CONFIG")?))?;
    let size: usize = var("KKR_RAW_SIZE")?.parse()?;
    let records: usize = var("KKR_RAW_RECORDS")?.parse()?;
    let topic = config.kafka.topic.clone();
    let with_headers = config.records.headers;
    let payloads = payload_pool(size);
    let keys: Vec<String> = (0..records).map(partition_key).collect();
    // The header values are pre-formatted; the header sets themselves are built in the
    // loop, as the replicator builds them for every message.
    let sequences: Vec<String> = (0..records).map(sequence_number).collect();
    let arrivals: Vec<String> = (0..records).map(|i| arrival(i).to_string()).collect();

    // A warm producer is the ceiling: it gets its connections and its producer id (librdkafka
    // acquires one on a 500 ms timer, so a cold idempotent producer's first acknowledgement
    // comes 0.02 to 1 s after its creation, depending on when it first produces) before the
    // clock starts. The replicator pays its own start-up inside its clock.
    let cpu0 = self_cpu_seconds();
    let mut client = ClientConfig::new();
    for (k, v) in config.producer_properties() {
        client.set(k, v);
    }
    let producer: ThreadedProducer<Counting> = client.create_with_context(Counting {
        delivered: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        created: Instant::now(),
        first_ack_ns: AtomicU64::new(0),
        half: records.div_ceil(2) as u64,
        half_ns: AtomicU64::new(0),
    })?;
    std::thread::sleep(RAW_WARM_UP);
    let (busy0, total0) = host_jiffies();
    let start = Instant::now();
    for i in 0..records {
        let mut record = BaseRecord::<str, [u8], ()>::to(&topic)
            .key(keys[i].as_str())
            .payload(&payloads[i % PAYLOAD_POOL][..])
            .timestamp(arrival(i));
        if with_headers {
            record = record.headers(
                OwnedHeaders::new_with_capacity(4)
                    .insert(Header {
                        key: "kinesis.shardId",
                        value: Some(SHARD_ID),
                    })
                    .insert(Header {
                        key: "kinesis.sequenceNumber",
                        value: Some(&sequences[i]),
                    })
                    .insert(Header {
                        key: "kinesis.subSequenceNumber",
                        value: Some("0"),
                    })
                    .insert(Header {
                        key: "kinesis.approximateArrivalTimestamp",
                        value: Some(&arrivals[i]),
                    }),
            );
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("send: {e}"),
            }
        }
    }
    producer.flush(Timeout::Never)?;
    let context = producer.context();
    while context.delivered.load(Ordering::Relaxed) + context.failed.load(Ordering::Relaxed)
        < records as u64
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = self_cpu_seconds() - cpu0;
    let (busy1, total1) = host_jiffies();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let host_busy_cores = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * cores;
    let since_created = context.created.elapsed().as_secs_f64();
    let half_s = context.half_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let steady = (records - records.div_ceil(2)) as f64 / (since_created - half_s).max(1e-9);
    println!(
        "{}",
        json!({
            "elapsed_s": elapsed,
            "cpu_s": cpu,
            "delivered": context.delivered.load(Ordering::Relaxed),
            "failed": context.failed.load(Ordering::Relaxed),
            "vm_hwm_kib": proc_hwm_kib("self"),
            "first_ack_ms": context.first_ack_ns.load(Ordering::Relaxed) as f64 / 1e6
                - RAW_WARM_UP.as_secs_f64() * 1e3,
            "steady_rps": steady,
            "host_busy_cores": host_busy_cores,
        })
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

fn size_label(size: usize) -> String {
    match size {
        s if s >= 1000 && s % 1000 == 0 => format!("{} KB", s / 1000),
        s => format!("{s} B"),
    }
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

fn thousands(n: f64) -> String {
    let n = n.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

const COLUMNS: [&str; 16] = [
    "broker",
    "child",
    "size",
    "batch",
    "records",
    "records/s",
    "2nd half rec/s",
    "MB/s",
    "CPU µs/rec",
    "peak RSS MiB",
    "init ms",
    "p50 ms",
    "p99 ms",
    "in topic",
    "host busy",
    "others",
];

fn row(r: &RunResult) -> Vec<String> {
    let ok = r.ok();
    let num = |v: String| if ok { v } else { "-".into() };
    vec![
        r.broker.map_or("-", Broker::name).into(),
        r.kind.map_or("?", Kind::name).into(),
        size_label(r.size),
        if r.batch == 0 {
            "-".into()
        } else {
            r.batch.to_string()
        },
        r.records.to_string(),
        num(thousands(r.records_per_s())),
        num(r.steady_rps.map_or("-".into(), thousands)),
        num(format!("{:.1}", r.mb_per_s())),
        if r.cpu_s > 0.0 {
            format!("{:.2}", r.cpu_us_per_record())
        } else {
            "-".into()
        },
        if r.maxrss_kib > 0 {
            format!("{:.1}", r.rss_mib())
        } else {
            "-".into()
        },
        fmt_opt(r.init_ms, 1),
        fmt_opt(r.p50_ms, 1),
        fmt_opt(r.p99_ms, 1),
        r.verified(),
        format!("{:.2}", r.host_busy_cores),
        format!("{:.2}", r.other_cores),
    ]
}

const WIDTHS: [usize; 16] = [6, 12, 6, 6, 7, 10, 14, 7, 10, 12, 7, 7, 7, 9, 9, 6];

fn print_header() {
    let cells: Vec<String> = COLUMNS
        .iter()
        .zip(WIDTHS)
        .map(|(c, w)| format!("{c:>w$}"))
        .collect();
    println!("{}", cells.join(" "));
}

fn print_row(r: &RunResult) {
    let cells: Vec<String> = row(r)
        .iter()
        .zip(WIDTHS)
        .map(|(c, w)| format!("{c:>w$}"))
        .collect();
    println!("{}", cells.join(" "));
    if let Some(e) = &r.error {
        println!("       ^ {e}");
    }
    let _ = std::io::stdout().flush();
}

fn median_run(mut runs: Vec<RunResult>) -> RunResult {
    let failed = runs.iter().find(|r| !r.ok()).cloned();
    runs.retain(RunResult::ok);
    if runs.is_empty() {
        return failed.expect("at least one run");
    }
    runs.sort_by(|a, b| a.records_per_s().total_cmp(&b.records_per_s()));
    runs.swap_remove(runs.len() / 2)
}

fn bench() -> Result<()> {
    let Some(options) = parse_options()? else {
        return Ok(());
    };
    if let Some(path) = &options.from_json {
        return rerender(path, options.publish);
    }
    let out_dir = Path::new(MANIFEST_DIR).join("target").join("bench");
    let logs = out_dir.join("logs");
    fs::create_dir_all(&logs)?;
    let replicator =
        std::env::var_os("KKR_BIN").map_or_else(|| PathBuf::from(REPLICATOR_BIN), PathBuf::from);
    if !replicator.exists() {
        bail!(
            "the replicator binary {} does not exist",
            replicator.display()
        );
    }
    let mut brokers = options.brokers.clone();
    let mut notes = Vec::new();
    if brokers.contains(&Broker::Tansu) && !tansu_available() {
        notes.push("tansu: not found on PATH; tansu rows skipped".to_owned());
        brokers.retain(|b| *b != Broker::Tansu);
    }
    let machine = machine_description();
    let commit = git_description();
    println!("# kinesis-kafka-replicator replication benchmark");
    println!("machine: {machine}");
    println!("commit: {commit}; binary: {}", replicator.display());
    println!("load average at start: {}", load_average());
    println!("Python baseline: {}", options.python_note);
    for n in &notes {
        println!("{n}");
    }
    println!(
        "records per run: {} (100 B, 1 KB), {} (10 KB); topic partitions: {}; repeats: {} ({} for the target configurations)",
        records_for(1000, options.records),
        records_for(10_000, options.records),
        options.partitions,
        options.repeat,
        options.target_repeat
    );
    println!();
    print_header();

    let started = Instant::now();
    let mut ctx = Context {
        options,
        logs,
        replicator,
        run_counter: 0,
    };
    let mut results: Vec<RunResult> = Vec::new();
    let mut all_runs: Vec<RunResult> = Vec::new();
    let sizes = ctx.options.sizes.clone();
    let batches = ctx.options.batches.clone();
    let kinds = ctx.options.kinds.clone();
    // Runs one configuration as often as asked; prints and keeps the median.
    let mut measure = |ctx: &mut Context,
                       size: usize,
                       batch: usize,
                       run: &mut dyn FnMut(&mut Context) -> RunResult| {
        let target = size == 1000 && (batch == 0 || batch == 10_000);
        let times = if target {
            ctx.options.target_repeat
        } else {
            ctx.options.repeat
        };
        let mut runs = Vec::new();
        for _ in 0..times {
            let r = run(ctx);
            all_runs.push(r.clone());
            runs.push(r);
        }
        let r = median_run(runs);
        print_row(&r);
        results.push(r);
    };
    for &size in &sizes {
        let records = records_for(size, ctx.options.records);
        // The raw producer does not depend on the batch size: once per broker and size.
        if kinds.contains(&Kind::Raw) {
            for &broker in &brokers {
                measure(&mut ctx, size, 0, &mut |ctx| {
                    with_broker(ctx, broker, Kind::Raw, size, 0, records, |ctx, instance| {
                        run_raw(ctx, instance, size, records)
                    })
                });
            }
        }
        let mut seen_batches = Vec::new();
        for &batch in &batches {
            let batch = effective_batch(batch, size);
            if seen_batches.contains(&batch) {
                continue;
            }
            seen_batches.push(batch);
            let workload = build_workload(size, batch, records);
            if kinds.contains(&Kind::Status) {
                measure(&mut ctx, size, batch, &mut |ctx| {
                    drive(ctx, Kind::Status, &workload, None)
                });
            }
            for &broker in &brokers {
                for &kind in &[Kind::Rust, Kind::RustSync, Kind::Python] {
                    if kinds.contains(&kind) {
                        measure(&mut ctx, size, batch, &mut |ctx| {
                            with_broker(ctx, broker, kind, size, batch, records, |ctx, instance| {
                                drive(ctx, kind, &workload, Some(instance))
                            })
                        });
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    println!();
    println!(
        "finished in {:.0} s; load average at end: {}",
        elapsed.as_secs_f64(),
        load_average()
    );

    println!();
    for line in targets_text(&targets(&results)) {
        println!("{line}");
    }
    let ratios = python_ratios(&results);
    if !ratios.is_empty() {
        println!();
        for line in &ratios {
            println!("{line}");
        }
    }

    let header = RunHeader {
        machine,
        commit,
        date: utc_now(),
        python: ctx.options.python_note.clone(),
        records: ctx.options.records,
        partitions: ctx.options.partitions,
        repeat: ctx.options.repeat,
        target_repeat: ctx.options.target_repeat,
        elapsed_s: elapsed.as_secs_f64(),
        notes,
    };
    fs::write(
        out_dir.join("replication.json"),
        serde_json::to_string_pretty(&json!({
            "header": header.to_json(),
            "results": results.iter().map(result_json).collect::<Vec<_>>(),
            "all_runs": all_runs.iter().map(result_json).collect::<Vec<_>>(),
        }))?,
    )?;
    render(&out_dir, &header, &results, ctx.options.publish)
}

/// Writes the markdown table and the chart (and copies them into docs/ when publishing).
fn render(
    out_dir: &Path,
    header: &RunHeader,
    results: &[RunResult],
    publish_docs: bool,
) -> Result<()> {
    let targets = targets(results);
    let ratios = python_ratios(results);
    let markdown = markdown(header, results, &targets, &ratios);
    let svg = chart_svg(results);
    fs::write(out_dir.join("replication.md"), &markdown)?;
    fs::write(out_dir.join("replication.svg"), &svg)?;
    println!();
    println!("wrote {}/replication.{{md,svg,json}}", out_dir.display());
    if publish_docs {
        publish(&markdown, &svg)?;
    }
    Ok(())
}

/// Re-renders the reports of an earlier run.
fn rerender(path: &Path, publish_docs: bool) -> Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let saved: Value = serde_json::from_str(&text)?;
    let header = RunHeader::from_json(&saved["header"]);
    let results: Vec<RunResult> = saved["results"]
        .as_array()
        .ok_or_else(|| anyhow!("{} has no results", path.display()))?
        .iter()
        .map(result_from_json)
        .collect();
    let out_dir = Path::new(MANIFEST_DIR).join("target").join("bench");
    fs::create_dir_all(&out_dir)?;
    print_header();
    for r in &results {
        print_row(r);
    }
    println!();
    for line in targets_text(&targets(&results)) {
        println!("{line}");
    }
    render(&out_dir, &header, &results, publish_docs)
}

/// Runs `run` against a fresh broker with a fresh topic.
fn with_broker(
    ctx: &mut Context,
    broker: Broker,
    kind: Kind,
    size: usize,
    batch: usize,
    records: usize,
    run: impl FnOnce(&mut Context, &BrokerInstance) -> RunResult,
) -> RunResult {
    let topic = ctx.topic();
    match BrokerInstance::start(broker, &topic, ctx.options.partitions, &ctx.logs) {
        Ok(instance) => {
            let r = run(ctx, &instance);
            instance.stop();
            r
        }
        Err(e) => failed_run(Some(broker), kind, size, batch, records, e),
    }
}

fn failed_run(
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

fn result_json(r: &RunResult) -> Value {
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

fn result_from_json(v: &Value) -> RunResult {
    let f = |k: &str| v[k].as_f64();
    let u = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
    RunResult {
        broker: match v["broker"].as_str() {
            Some("tansu") => Some(Broker::Tansu),
            Some("mock") => Some(Broker::Mock),
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

fn machine_description() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(String::new(), |kib| {
            format!(", {:.0} GiB RAM", kib / 1048576.0)
        });
    format!("{cores} cores ({model}){mem}")
}

fn git_description() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(MANIFEST_DIR)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--", "src", "Cargo.toml"]).is_some_and(|s| !s.is_empty());
    if dirty {
        format!("{head} + uncommitted changes in src/ or Cargo.toml")
    } else {
        head
    }
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60
    )
}

// ---------------------------------------------------------------------------------------------
// Targets (item 4 of the issue) and ratios
// ---------------------------------------------------------------------------------------------

struct Target {
    broker: Broker,
    kind: Kind,
    what: &'static str,
    rust: String,
    reference: String,
    ratio: String,
    pass: Option<bool>,
}

fn find(
    results: &[RunResult],
    broker: Option<Broker>,
    kind: Kind,
    size: usize,
    batch: Option<usize>,
) -> Option<&RunResult> {
    results.iter().find(|r| {
        r.ok()
            && r.kind == Some(kind)
            && r.size == size
            && (broker.is_none() || r.broker == broker)
            && batch.is_none_or(|b| r.batch == b)
    })
}

/// The targets, on 1 KB records with batches of 10,000, per broker, for both modes.
fn targets(results: &[RunResult]) -> Vec<Target> {
    let mut out = Vec::new();
    for broker in [Broker::Tansu, Broker::Mock] {
        for kind in [Kind::Rust, Kind::RustSync] {
            let Some(rust) = find(results, Some(broker), kind, 1000, Some(10_000)) else {
                continue;
            };
            let raw = find(results, Some(broker), Kind::Raw, 1000, None);
            let py = find(results, Some(broker), Kind::Python, 1000, Some(10_000));
            let mut push =
                |what, rust_v: String, reference: Option<String>, ratio: Option<(String, bool)>| {
                    out.push(Target {
                        broker,
                        kind,
                        what,
                        rust: rust_v,
                        reference: reference.unwrap_or_else(|| "not measured".into()),
                        ratio: ratio.as_ref().map_or("-".into(), |(r, _)| r.clone()),
                        pass: ratio.map(|(_, p)| p),
                    });
                };
            let rps = rust.records_per_s();
            let cpu = rust.cpu_us_per_record();
            push(
                "records/s ≥ 70% of the raw producer's",
                thousands(rps),
                raw.map(|r| thousands(r.records_per_s())),
                raw.map(|r| {
                    let q = rps / r.records_per_s();
                    (format!("{:.0}%", q * 100.0), q >= 0.70)
                }),
            );
            push(
                "CPU/record ≤ raw producer's + 1.5 µs",
                format!("{cpu:.2} µs"),
                raw.map(|r| format!("{:.2} µs", r.cpu_us_per_record())),
                raw.map(|r| {
                    let d = cpu - r.cpu_us_per_record();
                    (format!("{d:+.2} µs"), d <= 1.5)
                }),
            );
            push(
                "records/s ≥ 3× Python's",
                thousands(rps),
                py.map(|p| thousands(p.records_per_s())),
                py.map(|p| {
                    let q = rps / p.records_per_s();
                    (format!("{q:.1}×"), q >= 3.0)
                }),
            );
            push(
                "CPU/record ≤ 1/3 of Python's",
                format!("{cpu:.2} µs"),
                py.map(|p| format!("{:.2} µs", p.cpu_us_per_record())),
                py.map(|p| {
                    let q = cpu / p.cpu_us_per_record();
                    (format!("1/{:.1}", 1.0 / q), q <= 1.0 / 3.0)
                }),
            );
            push(
                "peak RSS ≤ 1/5 of Python's",
                format!("{:.1} MiB", rust.rss_mib()),
                py.map(|p| format!("{:.1} MiB", p.rss_mib())),
                py.map(|p| {
                    let q = rust.rss_mib() / p.rss_mib();
                    (format!("1/{:.1}", 1.0 / q), q <= 0.2)
                }),
            );
            let init = rust.init_ms.unwrap_or(f64::NAN);
            push(
                "spawn-to-initialize ≤ 10 ms",
                format!("{init:.1} ms"),
                Some("10 ms".into()),
                Some((format!("{:.0}%", init / 10.0 * 100.0), init <= 10.0)),
            );
        }
    }
    out
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "n/a",
    }
}

fn targets_text(targets: &[Target]) -> Vec<String> {
    let mut lines = vec!["Targets (1 KB records, batches of 10,000):".to_owned()];
    for t in targets {
        lines.push(format!(
            "  {:<5} {:<10} {:<40} {:>12} vs {:>14}  {:>9}  {}",
            t.broker.name(),
            t.kind.name(),
            t.what,
            t.rust,
            t.reference,
            t.ratio,
            verdict(t.pass)
        ));
    }
    if targets.is_empty() {
        lines.push("  (no 1 KB / 10,000 runs of the replicator in this run)".into());
    }
    lines
}

/// Rust (pipelined) against Python, every size and batch.
fn python_ratios(results: &[RunResult]) -> Vec<String> {
    let mut lines = Vec::new();
    for r in results
        .iter()
        .filter(|r| r.ok() && r.kind == Some(Kind::Rust))
    {
        let Some(p) = find(results, r.broker, Kind::Python, r.size, Some(r.batch)) else {
            continue;
        };
        if lines.is_empty() {
            lines.push("Rust (pipelined) / Python:".to_owned());
        }
        lines.push(format!(
            "  {:<5} {:>5} batch {:>5}: records/s {:>5.1}×, CPU/record 1/{:.1}, peak RSS 1/{:.1}, spawn-to-initialize 1/{:.0}",
            r.broker.map_or("-", Broker::name),
            size_label(r.size),
            r.batch,
            r.records_per_s() / p.records_per_s(),
            p.cpu_us_per_record() / r.cpu_us_per_record(),
            p.rss_mib() / r.rss_mib(),
            p.init_ms.unwrap_or(0.0) / r.init_ms.unwrap_or(f64::NAN)
        ));
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// Reports: markdown, chart, docs/
// ---------------------------------------------------------------------------------------------

struct RunHeader {
    machine: String,
    commit: String,
    date: String,
    python: String,
    records: usize,
    partitions: i32,
    repeat: usize,
    target_repeat: usize,
    elapsed_s: f64,
    notes: Vec<String>,
}

impl RunHeader {
    fn to_json(&self) -> Value {
        json!({
            "machine": self.machine,
            "commit": self.commit,
            "date": self.date,
            "python": self.python,
            "records": self.records,
            "partitions": self.partitions,
            "repeat": self.repeat,
            "target_repeat": self.target_repeat,
            "elapsed_s": self.elapsed_s,
            "notes": self.notes,
        })
    }

    fn from_json(v: &Value) -> RunHeader {
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let count = |k: &str| v[k].as_u64().unwrap_or(1) as usize;
        RunHeader {
            machine: text("machine"),
            commit: text("commit"),
            date: text("date"),
            python: text("python"),
            records: count("records"),
            partitions: v["partitions"].as_i64().unwrap_or(0) as i32,
            repeat: count("repeat"),
            target_repeat: count("target_repeat"),
            elapsed_s: v["elapsed_s"].as_f64().unwrap_or(0.0),
            notes: v["notes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

fn markdown(h: &RunHeader, results: &[RunResult], targets: &[Target], ratios: &[String]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Run of {} on {}, commit {}; {:.0} s in all. Python baseline: {}. {} records per run \
         (100 B and 1 KB), {} (10 KB); {} partitions; {}.",
        h.date,
        h.machine,
        h.commit,
        h.elapsed_s,
        h.python,
        thousands(records_for(1000, h.records) as f64),
        thousands(records_for(10_000, h.records) as f64),
        h.partitions,
        match (h.repeat, h.target_repeat) {
            (1, 1) => "one run per row".to_owned(),
            (1, t) => format!(
                "one run per row, except the target rows (1 KB; batches of 10,000; raw producer): median of {t} by records/s"
            ),
            (r, t) if r == t => format!("median of {r} runs per row by records/s"),
            (r, t) => format!("median of {r} runs per row ({t} for the target rows) by records/s"),
        }
    );
    for n in &h.notes {
        let _ = writeln!(md, "\n{n}");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "| {} |", COLUMNS.join(" | "));
    let _ = writeln!(
        md,
        "|{}",
        COLUMNS
            .iter()
            .enumerate()
            .map(|(i, _)| if i < 3 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for r in results {
        let cells = row(r);
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Targets, on 1 KB records with batches of 10,000, measured in this run:"
    );
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "| broker | mode | target | replicator | reference | ratio | verdict |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---|");
    for t in targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            t.broker.name(),
            t.kind.name(),
            t.what,
            t.rust,
            t.reference,
            t.ratio,
            verdict(t.pass)
        );
    }
    if !ratios.is_empty() {
        let _ = writeln!(md);
        let _ = writeln!(md, "```");
        for l in ratios {
            let _ = writeln!(md, "{l}");
        }
        let _ = writeln!(md, "```");
    }
    md
}

const BEGIN_MARK: &str = "<!-- BEGIN scripts/bench.sh output -->";
const END_MARK: &str = "<!-- END scripts/bench.sh output -->";

fn publish(markdown: &str, svg: &str) -> Result<()> {
    let docs = Path::new(MANIFEST_DIR).join("docs");
    fs::create_dir_all(&docs)?;
    fs::write(docs.join("benchmark.svg"), svg)?;
    println!("wrote {}", docs.join("benchmark.svg").display());
    let doc_path = docs.join("benchmark.md");
    let doc = fs::read_to_string(&doc_path).unwrap_or_default();
    match (doc.find(BEGIN_MARK), doc.find(END_MARK)) {
        (Some(b), Some(e)) if b < e => {
            let updated = format!("{}{BEGIN_MARK}\n{markdown}{}", &doc[..b], &doc[e..]);
            fs::write(&doc_path, updated)?;
            println!("updated the results in {}", doc_path.display());
        }
        _ => println!(
            "{} has no {BEGIN_MARK} … {END_MARK} section: the table was not copied there",
            doc_path.display()
        ),
    }
    Ok(())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Axis labels: 1, 2, 5, 10, ... 1k, 2k, 5k, ... 1M.
fn tick_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else if v >= 1.0 {
        format!("{v}")
    } else {
        format!("{v:.2}")
    }
}

fn compact(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Grouped bars on a log scale: records/s (top) and CPU µs per record (bottom) by record size,
/// one column per broker, for the largest batch of each size.
fn chart_svg(results: &[RunResult]) -> String {
    let series: [(Kind, &str); 5] = [
        (Kind::Rust, "#d95f02"),
        (Kind::RustSync, "#fdb863"),
        (Kind::Python, "#3b75af"),
        (Kind::Raw, "#7f7f7f"),
        (Kind::Status, "#66a61e"),
    ];
    let mut sizes: Vec<usize> = results.iter().map(|r| r.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let brokers: Vec<Broker> = [Broker::Tansu, Broker::Mock]
        .into_iter()
        .filter(|b| results.iter().any(|r| r.broker == Some(*b)))
        .collect();
    // The largest batch each size was run with.
    let batch_for = |size: usize| {
        results
            .iter()
            .filter(|r| r.size == size && r.batch > 0)
            .map(|r| r.batch)
            .max()
            .unwrap_or(0)
    };
    let value = |broker: Broker, kind: Kind, size: usize, cpu: bool| -> Option<f64> {
        let b = if kind == Kind::Status {
            None
        } else {
            Some(broker)
        };
        let batch = if kind == Kind::Raw {
            None
        } else {
            Some(batch_for(size))
        };
        let r = find(results, b, kind, size, batch)?;
        if cpu {
            (kind != Kind::Status).then(|| r.cpu_us_per_record())
        } else {
            Some(r.records_per_s())
        }
    };
    let present: Vec<(Kind, &str)> = series
        .iter()
        .copied()
        .filter(|(k, _)| results.iter().any(|r| r.ok() && r.kind == Some(*k)))
        .collect();

    let panel_w = 470.0;
    let panel_h = 250.0;
    let margin_l = 70.0;
    let top = 92.0;
    let gap_y = 70.0;
    let cols = brokers.len().max(1) as f64;
    let width = margin_l + cols * (panel_w + 40.0) + 10.0;
    let height = top + 2.0 * (panel_h + gap_y) + 10.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Arial, Helvetica, sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" font-size="17" font-weight="bold">kinesis-kafka-replicator: one shard's child, by record size (largest batch per size)</text>"#,
        margin_l - 50.0
    );
    // Legend.
    let mut lx = margin_l - 50.0;
    for (kind, color) in &present {
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.0}" y="40" width="14" height="14" fill="{color}"/><text x="{:.0}" y="52" font-size="12">{}</text>"#,
            lx + 19.0,
            xml_escape(kind.label())
        );
        lx += 30.0 + kind.label().len() as f64 * 6.6;
    }
    let batches: Vec<String> = sizes
        .iter()
        .map(|&s| format!("{}: {}", size_label(s), batch_for(s)))
        .collect();
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="74" font-size="11" fill="#444">records per processRecords: {}. Log scales. The status-only ceiling needs no broker.</text>"##,
        margin_l - 50.0,
        xml_escape(&batches.join(", "))
    );

    for (col, &broker) in brokers.iter().enumerate() {
        for (row_i, cpu) in [false, true].into_iter().enumerate() {
            let x0 = margin_l + col as f64 * (panel_w + 40.0);
            let y0 = top + row_i as f64 * (panel_h + gap_y) + 20.0;
            let values: Vec<f64> = sizes
                .iter()
                .flat_map(|&s| {
                    present
                        .iter()
                        .filter_map(move |(k, _)| value(broker, *k, s, cpu))
                })
                .filter(|v| *v > 0.0)
                .collect();
            let title = if cpu {
                format!(
                    "{}: child CPU µs per record (user+sys), lower is better",
                    broker.name()
                )
            } else {
                format!("{}: records/s, higher is better", broker.name())
            };
            let _ = writeln!(
                svg,
                r#"<text x="{x0:.0}" y="{:.0}" font-size="13" font-weight="bold">{}</text>"#,
                y0 - 8.0,
                xml_escape(&title)
            );
            if values.is_empty() {
                continue;
            }
            let lo = values
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
                .log10()
                .floor();
            let hi = values
                .iter()
                .copied()
                .fold(0.0, f64::max)
                .log10()
                .ceil()
                .max(lo + 1.0);
            let y_of = |v: f64| y0 + panel_h - (v.log10() - lo) / (hi - lo) * panel_h;
            // Grid: every decade, with 2× and 5× lines.
            let mut decade = lo;
            while decade <= hi {
                for m in [1.0, 2.0, 5.0] {
                    let v = 10f64.powi(decade as i32) * m;
                    if v.log10() > hi + 1e-9 {
                        break;
                    }
                    let y = y_of(v);
                    let stroke = if m == 1.0 { "#bbb" } else { "#e5e5e5" };
                    let _ = writeln!(
                        svg,
                        r#"<line x1="{x0:.0}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="{stroke}"/>"#,
                        x0 + panel_w
                    );
                    let _ = writeln!(
                        svg,
                        r##"<text x="{:.0}" y="{:.1}" font-size="10" text-anchor="end" fill="#555">{}</text>"##,
                        x0 - 5.0,
                        y + 3.5,
                        tick_label(v)
                    );
                }
                decade += 1.0;
            }
            let _ = writeln!(
                svg,
                r##"<line x1="{x0:.0}" x2="{:.0}" y1="{:.0}" y2="{:.0}" stroke="#333"/>"##,
                x0 + panel_w,
                y0 + panel_h,
                y0 + panel_h
            );
            let group_w = panel_w / sizes.len() as f64;
            let bars = present
                .iter()
                .filter(|(k, _)| !(cpu && *k == Kind::Status))
                .count()
                .max(1) as f64;
            let bar_w = (group_w * 0.8 / bars).min(34.0);
            for (gi, &size) in sizes.iter().enumerate() {
                let gx = x0 + gi as f64 * group_w;
                let mut bx = gx + (group_w - bar_w * bars) / 2.0;
                for (kind, color) in &present {
                    if cpu && *kind == Kind::Status {
                        continue;
                    }
                    if let Some(v) = value(broker, *kind, size, cpu).filter(|v| *v > 0.0) {
                        let y = y_of(v);
                        let _ = writeln!(
                            svg,
                            r#"<rect x="{bx:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: {}</title></rect>"#,
                            bar_w - 2.0,
                            y0 + panel_h - y,
                            xml_escape(kind.label()),
                            compact(v)
                        );
                        let _ = writeln!(
                            svg,
                            r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                            bx + (bar_w - 2.0) / 2.0,
                            y - 3.0,
                            compact(v)
                        );
                    }
                    bx += bar_w;
                }
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.0}" font-size="12" text-anchor="middle">{}</text>"#,
                    gx + group_w / 2.0,
                    y0 + panel_h + 17.0,
                    size_label(size)
                );
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}
