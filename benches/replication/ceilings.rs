//! The ceilings: a raw rdkafka producer sending the same messages (the best a producer does on
//! this broker), and a child that only answers status (the best the double does).

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use serde_json::{json, Value};

use kinesis_kafka_replicator::config::Config;

use crate::accounting::*;
use crate::broker::{check_count, count, cpu_seconds};
use crate::driver::{clean_command, tail, Context};
use crate::options::Kind;
use crate::results::RunResult;
use crate::support::broker::Broker as BrokerInstance;
use crate::workload::*;
use crate::ROLE_ENV;

/// Runs the raw producer as a child process on `broker` and reads its report.
pub fn run_raw(
    ctx: &mut Context,
    broker: &BrokerInstance,
    size: usize,
    records: usize,
) -> RunResult {
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
        let config = ctx.replicator_config(broker, Kind::Rust)?;
        let log_path = ctx
            .logs
            .join(format!("raw-producer-{}-{size}.log", broker.kind.name()));
        let broker0 = cpu_seconds(broker);
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
        let broker1 = cpu_seconds(broker);
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
        let counted = count(broker, records)?;
        result.read_back = Some(counted);
        check_count(records, counted)?;
        Ok(())
    })();
    if let Err(e) = attempt {
        result.error = Some(format!("{e:#}"));
    }
    result
}

/// A child that only answers status: the double's own ceiling.
pub fn status_child() -> i32 {
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

pub const RAW_WARM_UP: Duration = Duration::from_millis(1500);

pub struct Counting {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub created: Instant,
    /// Nanoseconds from the producer's creation to the first acknowledgement.
    pub first_ack_ns: AtomicU64,
    /// ... and to the acknowledgement of `half` messages.
    pub half: u64,
    pub half_ns: AtomicU64,
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
pub fn raw_producer() -> Result<()> {
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
