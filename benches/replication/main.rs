//! The replication benchmark: what one shard's child costs, and how fast it drains a backlog.
//!
//! It plays the KCL MultiLangDaemon (the tests' double of `multilang-protocol.md`, in its inline
//! form: `initialize`, one JSON line per `processRecords`, checkpoints served by the daemon's
//! rules, `shardEnded` then EOF) against the release binary, with every `processRecords` line generated before the clock
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
//! With `--fleet` it measures something else: many children at once, each fed at a shard's
//! steady rate, against Apache Kafka ([`fleet`]).
//!
//! Run it through `scripts/bench.sh`. It is not part of `cargo test`.
//!
//! The rooms: [`options`] (the command line), [`workload`] (records and lines), [`broker`] (a fresh
//! broker per run, and the read-back), [`driver`] (one child under the double, measured with
//! [`accounting`]), [`ceilings`] (the raw producer and the status-only child), [`results`],
//! [`targets`], [`report`] and [`chart`]; [`fleet`] and [`guarantees`] are the other two modes.
//! This file runs the configurations in turn.

// The daemon double and the broker are the tests' own (tests/support/): one place that speaks the
// protocol the way the Java daemon does, and one that starts and stops a broker.
#[path = "../../tests/support/mod.rs"]
mod support;

mod accounting;
mod broker;
mod ceilings;
mod chart;
mod driver;
mod fleet;
mod guarantees;
mod options;
mod report;
mod results;
mod targets;
mod workload;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use serde_json::json;

use crate::accounting::load_average;
use crate::broker::with_broker;
use crate::ceilings::{raw_producer, run_raw, status_child};
use crate::driver::{drive, Context};
use crate::options::{parse_options, Kind};
use crate::report::*;
use crate::results::{median_run, result_json, RunResult};
use crate::support::broker::{tansu_available, BrokerKind as Broker};
use crate::targets::{python_ratios, targets, targets_text};
use crate::workload::{build_workload, effective_batch, records_for};

pub const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

pub const REPLICATOR_BIN: &str = env!("CARGO_BIN_EXE_kinesis-kafka-replicator");

pub const ROLE_ENV: &str = "KKR_BENCH_ROLE";

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

pub fn bench() -> Result<()> {
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
    if ctx_fleet(&options) {
        return run_fleet_mode(options, logs, replicator, &out_dir, &machine, &commit);
    }
    if options.guarantees {
        let mut ctx = Context {
            options,
            logs,
            replicator,
            run_counter: 0,
        };
        return guarantees::run(&mut ctx, &out_dir, &machine, &commit);
    }
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

fn ctx_fleet(options: &options::Options) -> bool {
    options.fleet.is_some()
}

/// `--fleet`: N children at once against Apache Kafka; prints the table, writes
/// target/bench/fleet.json and target/bench/fleet.md.
fn run_fleet_mode(
    options: options::Options,
    logs: PathBuf,
    replicator: PathBuf,
    out_dir: &Path,
    machine: &str,
    commit: &str,
) -> Result<()> {
    println!("# kinesis-kafka-replicator fleet benchmark");
    println!("machine: {machine}");
    println!("commit: {commit}; binary: {}", replicator.display());
    println!("load average at start: {}", load_average());
    println!("Python baseline: {}", options.python_note);
    let mut ctx = Context {
        options,
        logs,
        replicator,
        run_counter: 0,
    };
    let fleet_options = ctx
        .options
        .fleet
        .take()
        .ok_or_else(|| anyhow::anyhow!("no fleet options"))?;
    let started = Instant::now();
    let results = fleet::run_fleet(&mut ctx, &fleet_options)?;
    println!();
    println!(
        "finished in {:.0} s; load average at end: {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    let mut md = String::new();
    md.push_str(&format!(
        "<!-- {} · {machine} · {commit} · {} s per configuration -->\n",
        utc_now(),
        fleet_options.seconds
    ));
    for r in &results {
        md.push_str(&fleet::fleet_row(r));
        md.push('\n');
    }
    fs::write(out_dir.join("fleet.md"), md)?;
    fs::write(
        out_dir.join("fleet.json"),
        serde_json::to_string_pretty(&json!({
            "machine": machine,
            "commit": commit,
            "date": utc_now(),
            "binary": ctx.replicator.display().to_string(),
            "python": ctx.options.python_note,
            "seconds": fleet_options.seconds,
            "warmup": fleet_options.warmup,
            "rate": fleet_options.rate,
            "results": results.iter().map(fleet::fleet_json).collect::<Vec<_>>(),
        }))?,
    )?;
    Ok(())
}
