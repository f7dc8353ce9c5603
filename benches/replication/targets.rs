//! The targets the replicator is judged on (1 KB records, batches of 10,000), and the ratios to
//! the Python replicator.

use crate::options::Kind;
use crate::report::{size_label, thousands};
use crate::results::RunResult;
use crate::support::broker::BrokerKind as Broker;

pub struct Target {
    pub broker: Broker,
    pub kind: Kind,
    pub what: &'static str,
    pub rust: String,
    pub reference: String,
    pub ratio: String,
    pub pass: Option<bool>,
}

pub fn find(
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
pub fn targets(results: &[RunResult]) -> Vec<Target> {
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

pub fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "n/a",
    }
}

pub fn targets_text(targets: &[Target]) -> Vec<String> {
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
pub fn python_ratios(results: &[RunResult]) -> Vec<String> {
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
