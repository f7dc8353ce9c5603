//! `--guarantees`: at-least-once beside exactly-once, in the same run, on the same broker
//! (Apache Kafka, started once by `scripts/local/kkrlocal`; a transaction costs what its
//! coordinator costs, so neither the mock cluster nor tansu would say much). 1 KB records in
//! batches of 10,000, drained as a backlog; the two alternate so that the machine's drift
//! hits both. Prints records/s, CPU per record and p99 of the batch latency for each, and
//! the ratio; writes target/bench/guarantees.json.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::driver::{drive, Context};
use crate::fleet::KafkaServer;
use crate::options::Kind;
use crate::report::{print_header, print_row, utc_now};
use crate::results::{median_run, result_json, RunResult};
use crate::support::broker::Broker;
use crate::workload::{build_workload, effective_batch};
use crate::MANIFEST_DIR;

const SIZE: usize = 1000;
const KINDS: [Kind; 2] = [Kind::Rust, Kind::RustEos];

pub fn run(ctx: &mut Context, out_dir: &Path, machine: &str, commit: &str) -> Result<()> {
    let repeat = ctx.options.target_repeat.max(1);
    let partitions = ctx.options.partitions;
    let records = ctx.options.records;
    let batch = effective_batch(
        ctx.options.batches.iter().copied().max().unwrap_or(10_000),
        SIZE,
    );
    let runs: Vec<(usize, Kind, String)> = (0..repeat)
        .flat_map(|i| KINDS.map(|kind| (i, kind, format!("guarantees-{}-{i}", kind.name()))))
        .collect();
    let topics: Vec<(String, i32)> = runs
        .iter()
        .map(|(_, _, t)| (t.clone(), partitions))
        .collect();
    let dir = Path::new(MANIFEST_DIR).join("target/bench/guarantees-kafka");
    let server = KafkaServer::start(&dir, &topics, &ctx.logs.join("guarantees-kafka.log"))?;
    println!("# kinesis-kafka-replicator: at-least-once beside exactly-once");
    println!("machine: {machine}");
    println!("commit: {commit}; binary: {}", ctx.replicator.display());
    println!(
        "broker: Apache Kafka (kkrlocal.kafka) at {}; {records} records of {SIZE} B in batches of {batch}, {partitions} partitions; {repeat} runs each, alternating",
        server.bootstrap
    );
    println!();
    print_header();
    let workload = build_workload(SIZE, batch, records);
    let mut all: Vec<RunResult> = Vec::new();
    for (_, kind, topic) in &runs {
        let broker = Broker::external(&server.bootstrap, topic, partitions, server.jvm_pid);
        let r = drive(ctx, *kind, &workload, Some(&broker));
        print_row(&r);
        all.push(r);
        std::thread::sleep(Duration::from_secs(2));
    }
    server.stop();
    let medians: Vec<RunResult> = KINDS
        .iter()
        .map(|kind| {
            median_run(
                all.iter()
                    .filter(|r| r.kind == Some(*kind))
                    .cloned()
                    .collect(),
            )
        })
        .collect();
    println!();
    println!("medians (by records/s):");
    for r in &medians {
        print_row(r);
    }
    let (alo, eos) = (&medians[0], &medians[1]);
    if alo.ok() && eos.ok() {
        println!();
        println!(
            "exactly-once: {:.0}% of the at-least-once rate ({:.0} against {:.0} records/s; target at least 80%), {:.2} against {:.2} µs CPU per record, p99 batch latency {:.1} against {:.1} ms",
            100.0 * eos.records_per_s() / alo.records_per_s().max(1e-9),
            eos.records_per_s(),
            alo.records_per_s(),
            eos.cpu_us_per_record(),
            alo.cpu_us_per_record(),
            eos.p99_ms.unwrap_or(f64::NAN),
            alo.p99_ms.unwrap_or(f64::NAN)
        );
    }
    fs::write(
        out_dir.join("guarantees.json"),
        serde_json::to_string_pretty(&json!({
            "machine": machine,
            "commit": commit,
            "date": utc_now(),
            "medians": medians.iter().map(result_json).collect::<Vec<_>>(),
            "all_runs": all.iter().map(result_json).collect::<Vec<_>>(),
        }))?,
    )?;
    Ok(())
}
