//! The report: the table as it runs, then markdown, JSON and the chart in target/bench/, and in
//! docs/ when publishing.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _, Result};
use serde_json::{json, Value};

use crate::chart::chart_svg;
use crate::options::Kind;
use crate::results::{result_from_json, RunResult};
use crate::support::broker::BrokerKind as Broker;
use crate::targets::{python_ratios, targets, targets_text, verdict, Target};
use crate::workload::records_for;
use crate::MANIFEST_DIR;

pub fn size_label(size: usize) -> String {
    match size {
        s if s >= 1000 && s % 1000 == 0 => format!("{} KB", s / 1000),
        s => format!("{s} B"),
    }
}

pub fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

pub fn thousands(n: f64) -> String {
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

pub const COLUMNS: [&str; 16] = [
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

pub fn row(r: &RunResult) -> Vec<String> {
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

pub const WIDTHS: [usize; 16] = [6, 12, 6, 6, 7, 10, 14, 7, 10, 12, 7, 7, 7, 9, 9, 6];

pub fn print_header() {
    let cells: Vec<String> = COLUMNS
        .iter()
        .zip(WIDTHS)
        .map(|(c, w)| format!("{c:>w$}"))
        .collect();
    println!("{}", cells.join(" "));
}

pub fn print_row(r: &RunResult) {
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

/// Writes the markdown table and the chart (and copies them into docs/ when publishing).
pub fn render(
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
pub fn rerender(path: &Path, publish_docs: bool) -> Result<()> {
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

pub fn machine_description() -> String {
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

pub fn git_description() -> String {
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

pub fn utc_now() -> String {
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

pub struct RunHeader {
    pub machine: String,
    pub commit: String,
    pub date: String,
    pub python: String,
    pub records: usize,
    pub partitions: i32,
    pub repeat: usize,
    pub target_repeat: usize,
    pub elapsed_s: f64,
    pub notes: Vec<String>,
}

impl RunHeader {
    pub fn to_json(&self) -> Value {
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

    pub fn from_json(v: &Value) -> RunHeader {
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

pub fn markdown(
    h: &RunHeader,
    results: &[RunResult],
    targets: &[Target],
    ratios: &[String],
) -> String {
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

pub const BEGIN_MARK: &str = "<!-- BEGIN scripts/bench.sh output -->";

pub const END_MARK: &str = "<!-- END scripts/bench.sh output -->";

pub fn publish(markdown: &str, svg: &str) -> Result<()> {
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
