//! The chart (SVG): records/s and CPU per record by record size, per broker.

use std::fmt::Write as _;

use crate::options::Kind;
use crate::report::size_label;
use crate::results::RunResult;
use crate::support::broker::BrokerKind as Broker;
use crate::targets::find;

pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Axis labels: 1, 2, 5, 10, ... 1k, 2k, 5k, ... 1M.
pub fn tick_label(v: f64) -> String {
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

pub fn compact(v: f64) -> String {
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
pub fn chart_svg(results: &[RunResult]) -> String {
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
