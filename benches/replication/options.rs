//! The command line: which brokers, record sizes, batches and children, and how often.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::driver::tail;
use crate::fleet::{FleetOptions, Mode};
use crate::support::broker::BrokerKind as Broker;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The replicator, answering as soon as the batch is queued (bounded by its window).
    Rust,
    /// The replicator with `pipeline.wait_for_ack`: answers once the batch is acknowledged.
    RustSync,
    /// The replicator with `DELIVERY_GUARANTEE=exactly_once` (`--guarantees`).
    RustEos,
    Python,
    /// Ceiling: a plain rdkafka producer sending the same messages.
    Raw,
    /// Ceiling: the double against a child that only answers status.
    Status,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Rust,
        Kind::RustSync,
        Kind::Python,
        Kind::Raw,
        Kind::Status,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Rust => "rust",
            Kind::RustSync => "rust-sync",
            Kind::RustEos => "rust-eos",
            Kind::Python => "python",
            Kind::Raw => "raw-producer",
            Kind::Status => "status-only",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Rust => "Rust, pipelined",
            Kind::RustSync => "Rust, wait_for_ack",
            Kind::RustEos => "Rust, exactly-once",
            Kind::Python => "Python (kclpy)",
            Kind::Raw => "raw producer (ceiling)",
            Kind::Status => "double, status-only child (ceiling)",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "rust" | "pipelined" => Some(Kind::Rust),
            "rust-sync" | "sync" | "wait_for_ack" => Some(Kind::RustSync),
            "rust-eos" | "eos" | "exactly_once" => Some(Kind::RustEos),
            "python" | "py" => Some(Kind::Python),
            "raw" | "raw-producer" => Some(Kind::Raw),
            "status" | "status-only" | "double" => Some(Kind::Status),
            _ => None,
        }
    }
}

pub struct Options {
    pub brokers: Vec<Broker>,
    pub sizes: Vec<usize>,
    pub batches: Vec<usize>,
    pub kinds: Vec<Kind>,
    /// Records per run for 100 B and 1 KB; larger records get proportionally fewer.
    pub records: usize,
    pub repeat: usize,
    /// Repeats of the configurations the targets are judged on (1 KB, batches of 10,000).
    pub target_repeat: usize,
    pub partitions: i32,
    /// Re-render the reports of an earlier run instead of measuring.
    pub from_json: Option<PathBuf>,
    pub publish: bool,
    pub quick: bool,
    pub python: Option<PathBuf>,
    pub python_note: String,
    pub run_timeout: Duration,
    /// librdkafka properties added to the replicator's config (and so to the raw producer).
    pub extra_properties: BTreeMap<String, String>,
    /// The fleet figure instead of the backlog runs (`--fleet`).
    pub fleet: Option<FleetOptions>,
    /// At-least-once beside exactly-once on Apache Kafka instead (`--guarantees`).
    pub guarantees: bool,
}

pub const HELP: &str = "\
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
    --fleet [LIST]       the fleet figure instead of the backlog runs: LIST children at once
                         (default 8,32,64) against Apache Kafka (scripts/local/kkrlocal), each
                         fed one processRecords line a second, busy and idle; Rust and Python
    --guarantees         at-least-once beside exactly-once instead of the backlog runs: 1 KB
                         records, batches of 10,000 (or --batch), against Apache Kafka
                         (scripts/local/kkrlocal), alternating, --target-repeat times each
    --fleet-seconds N    measured seconds per configuration (default 30)
    --fleet-warmup N     seconds before the window opens (default 5)
    --fleet-rate BYTES   bytes per second per busy child (default 1000000)
    --fleet-load LIST    busy,idle (default both)
    --help

ENVIRONMENT:
    BENCH_PYTHON_CHILD       the Python replicator's runner (scripts/bench.sh sets it)
    BENCH_KAFKA_PROPERTIES   k=v pairs, space-separated: librdkafka properties for the replicator and the raw producer
    BENCH_RUN_TIMEOUT        seconds before a run is killed (default 300)
    BENCH_MAX_IN_FLIGHT_RECORDS, BENCH_MAX_IN_FLIGHT_BYTES
                             the replicator's window (default 10000 records, 8 MiB)
    BENCH_RECORD_HEADERS     false: no kinesis.* headers (records.headers), for the raw producer too
    BENCH_CHILD_LOG_LEVEL    KCL_LOG_LEVEL of the replicator (default INFO; logs in target/bench/logs)
    BENCH_KAFKA_PYTHON       the Python that runs kkrlocal.kafka for --fleet (default: the local
                             stack's venv, ~/.cache/kinesis-kafka-replicator/venv, else python3)
    KKR_BIN                  the replicator binary (default: the one cargo built for the bench)
    TANSU                    the tansu binary (default: tansu on PATH)
";

pub fn parse_list<T>(value: &str, parse: impl Fn(&str) -> Option<T>, what: &str) -> Result<Vec<T>> {
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse(s.trim()).ok_or_else(|| anyhow!("unknown {what} {s:?}")))
        .collect()
}

pub fn parse_size(s: &str) -> Option<usize> {
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

pub fn parse_options() -> Result<Option<Options>> {
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
        fleet: None,
        guarantees: false,
    };
    let mut fleet_sizes: Option<Vec<usize>> = None;
    let mut fleet_seconds = 30;
    let mut fleet_warmup = 5;
    let mut fleet_rate = 1_000_000;
    let mut fleet_modes = vec![Mode::Busy, Mode::Idle];
    let mut records = None;
    let mut target_repeat = None;
    let mut sizes_given = false;
    let mut no_python = false;
    let mut args = std::env::args().skip(1).peekable();
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
            "--guarantees" => o.guarantees = true,
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
            "--fleet" => {
                let list = match inline.clone() {
                    Some(v) => Some(v),
                    None if args
                        .peek()
                        .is_some_and(|a| a.starts_with(|c: char| c.is_ascii_digit())) =>
                    {
                        args.next()
                    }
                    None => None,
                };
                fleet_sizes = Some(match list {
                    Some(v) => parse_list(&v, |s| s.parse().ok(), "fleet size")?,
                    None => vec![8, 32, 64],
                });
            }
            "--fleet-seconds" => {
                fleet_seconds = value(&name)?.parse().context("--fleet-seconds")?
            }
            "--fleet-warmup" => fleet_warmup = value(&name)?.parse().context("--fleet-warmup")?,
            "--fleet-rate" => {
                fleet_rate = parse_size(&value(&name)?).ok_or_else(|| anyhow!("--fleet-rate"))?
            }
            "--fleet-load" => {
                fleet_modes = parse_list(
                    &value(&name)?,
                    |s| match s {
                        "busy" => Some(Mode::Busy),
                        "idle" => Some(Mode::Idle),
                        _ => None,
                    },
                    "fleet load",
                )?
            }
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
    if let Some(sizes) = fleet_sizes {
        if sizes.contains(&0) || sizes.iter().any(|n| *n > 999) || fleet_seconds == 0 {
            bail!("--fleet sizes must be 1 to 999 children, --fleet-seconds positive");
        }
        o.fleet = Some(FleetOptions {
            sizes,
            seconds: fleet_seconds,
            warmup: fleet_warmup,
            rate: fleet_rate,
            record_size: 1000,
            modes: fleet_modes,
        });
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
pub fn probe_python(runner: &Path) -> Result<()> {
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
