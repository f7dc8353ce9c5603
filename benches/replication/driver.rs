//! The driver: one child under the daemon double (the test support's
//! [`crate::support::inline::InlineDaemon`]), from `initialize` to EOF, measured.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::json;

use crate::accounting::*;
use crate::broker::{check_count, count, cpu_seconds};
use crate::options::{Kind, Options};
use crate::results::{percentile, RunResult};
use crate::support::broker::Broker as BrokerInstance;
use crate::support::inline::InlineDaemon;
use crate::support::protocol::TRIM_HORIZON;
use crate::workload::{Workload, SHARD_ID};
use crate::ROLE_ENV;

pub struct Context {
    pub options: Options,
    pub logs: PathBuf,
    pub replicator: PathBuf,
    pub run_counter: usize,
}

impl Context {
    pub fn topic(&mut self) -> String {
        self.run_counter += 1;
        format!("bench-{}-{}", std::process::id(), self.run_counter)
    }

    pub fn replicator_config(&self, broker: &BrokerInstance, kind: Kind) -> Result<PathBuf> {
        let wait_for_ack = kind == Kind::RustSync;
        let mut config = json!({
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
        if kind == Kind::RustEos {
            // Its own application per run: a fresh transactional id and positions topic.
            config["delivery"] = json!({
                "guarantee": "exactly_once",
                "application_name": format!("app-{}", broker.topic),
            });
        }
        let path = self.logs.join(format!(
            "replicator-{}-{}.json",
            broker.kind.name(),
            kind.name()
        ));
        fs::write(&path, serde_json::to_string_pretty(&config)?)?;
        Ok(path)
    }
}

pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A command with the benchmark's environment: nothing from the developer's shell that the
/// replicator, librdkafka or the Python replicator would read.
/// The Python replicator of ../shared/bench/, writing to `topic` at `bootstrap`.
pub fn python_command(ctx: &Context, bootstrap: &str, topic: &str) -> Result<Command> {
    let runner = ctx
        .options
        .python
        .clone()
        .ok_or_else(|| anyhow!("no Python"))?;
    let mut c = clean_command(&runner);
    c.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_TOPIC", topic)
        .env("LOG_LEVEL", "INFO");
    Ok(c)
}

pub fn clean_command(program: &Path) -> Command {
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
pub fn drive(
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

pub fn drive_inner(
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
        Kind::Rust | Kind::RustSync | Kind::RustEos => {
            let broker = broker.ok_or_else(|| anyhow!("no broker"))?;
            let config = ctx.replicator_config(broker, kind)?;
            let mut c = clean_command(&ctx.replicator);
            let level = std::env::var("BENCH_CHILD_LOG_LEVEL").unwrap_or_else(|_| "INFO".into());
            c.arg("--config").arg(config).env("KCL_LOG_LEVEL", level);
            c
        }
        Kind::Python => {
            let broker = broker.ok_or_else(|| anyhow!("no broker"))?;
            let mut c = python_command(ctx, &broker.bootstrap, &broker.topic)?;
            c.env("CHECKPOINT_FREQ_SECONDS", "1");
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
    let broker0 = broker.and_then(cpu_seconds);

    let spawned = Instant::now();
    let mut child = command.spawn().with_context(|| format!("spawn {kind:?}"))?;
    let pid = child.id();
    let cancel = watchdog(pid, ctx.options.run_timeout);
    let mut double = InlineDaemon::new(&mut child);
    let conversation = (|| -> Result<(f64, Vec<f64>, Option<f64>)> {
        double.initialize(SHARD_ID, TRIM_HORIZON)?;
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
            let t0 = Instant::now();
            double.process_records(line, last)?;
            let now = Instant::now();
            latencies.push((now - t0).as_secs_f64() * 1e3);
            answered += count;
            if half.is_none() && answered * 2 >= workload.records {
                half = Some((answered, now));
            }
        }
        double.shard_ended()?;
        let end = Instant::now();
        let steady = half
            .filter(|(n, _)| *n < workload.records)
            .map(|(n, t)| (workload.records - n) as f64 / (end - t).as_secs_f64().max(1e-9));
        Ok(((end - start).as_secs_f64(), latencies, steady))
    })();
    // The peak so far, while the child is still alive (the exit itself allocates nothing).
    let hwm = proc_hwm_kib(&pid.to_string());
    // EOF, as the daemon's childProcessShutdownSequence does; then drain stdout and reap.
    double.close();
    let (status, usage) = wait4(pid)?;
    drop(cancel);
    let (busy1, total1) = host_jiffies();
    let self1 = self_cpu_seconds();
    let broker1 = broker.and_then(cpu_seconds);

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
    if kind != Kind::Status && !double.checkpointed_shard_end() {
        bail!("no SHARD_END checkpoint at shardEnded");
    }
    if let Some(broker) = broker {
        let counted = count(broker, workload.records)?;
        result.read_back = Some(counted);
        check_count(workload.records, counted)?;
    }
    Ok(())
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}
