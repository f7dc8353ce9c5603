//! The broker of each run: a fresh one with a fresh topic (started and stopped by the test
//! support's [`crate::support::broker`]), and the read-back that verifies a run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::accounting::proc_cpu_seconds;
use crate::driver::Context;
use crate::options::Kind;
use crate::results::{failed_run, RunResult};
use crate::support::broker::{Broker as BrokerInstance, BrokerKind as Broker};

/// Runs `run` against a fresh broker with a fresh topic.
pub fn with_broker(
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

/// Every record must be in the topic; more is at-least-once duplication (reported, allowed).
pub fn check_count(records: usize, (read, high): (u64, u64)) -> Result<()> {
    if (read as usize) < records {
        bail!("{records} records sent, {read} read back (high watermarks sum to {high})");
    }
    Ok(())
}

/// tansu's CPU seconds so far (the mock cluster runs inside this process).
pub fn cpu_seconds(broker: &BrokerInstance) -> Option<f64> {
    broker.pid().and_then(proc_cpu_seconds)
}

/// Reads the topic from the beginning of every partition until at least `expected`
/// messages were seen and nothing more arrives for a second. Returns the messages read plus
/// those below the low watermarks (the mock cluster keeps only the last 5 MiB of each
/// partition; tansu keeps everything), and the sum of the high watermarks (informational:
/// tansu 0.6's lag behind its last batch).
pub fn count(broker: &BrokerInstance, expected: usize) -> Result<(u64, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "kkr-bench-verify")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut next = Vec::new();
    let mut high_sum = 0;
    let mut tpl = TopicPartitionList::new();
    for p in 0..broker.partitions {
        let (low, high) = consumer
            .fetch_watermarks(&broker.topic, p, Duration::from_secs(10))
            .with_context(|| format!("watermarks of partition {p}"))?;
        next.push(low.max(0));
        high_sum += high.max(0);
        tpl.add_partition_offset(&broker.topic, p, Offset::Offset(low.max(0)))?;
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
