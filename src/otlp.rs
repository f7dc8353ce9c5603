//! OTLP push: the metrics server sends every live shard's figures to an OpenTelemetry
//! collector, on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._METRICS_ENDPOINT`) is set,
//! following the OpenTelemetry environment conventions.
//!
//! OTLP over HTTP with the JSON encoding, which every OTLP/HTTP receiver accepts on the same
//! port (4318) and path (`/v1/metrics`) as protobuf: no protobuf or gRPC stack, and the
//! HTTP client is the one the MSK IAM credentials already use. gRPC endpoints are refused
//! with a line that says to use the collector's HTTP port.

use std::time::Duration;

use log::{debug, info, warn};
use serde_json::{json, Value as Json};

use crate::metrics_server::{points, MetricUnit, Shards, Value};

/// Where and how to push.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The full URL of the metrics endpoint (`.../v1/metrics`).
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
    pub resource: Vec<(String, String)>,
}

impl OtlpConfig {
    /// From the OpenTelemetry variables; `Ok(None)` when no endpoint is set.
    pub fn from_env() -> Result<Option<OtlpConfig>, String> {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpConfig>, String> {
        let url = match (
            lookup("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
            lookup("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            // The signal-specific variable is the URL itself.
            (Some(url), _) => url.trim().to_owned(),
            (None, Some(base)) => format!("{}/v1/metrics", base.trim().trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT {url:?} must start with http:// or https:// (the collector's OTLP/HTTP receiver, port 4318 by default)"
            ));
        }
        let protocol = lookup("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
            .or_else(|| lookup("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/json".into());
        match protocol.trim() {
            "http/json" | "http/protobuf" => {}
            "grpc" => {
                return Err(
                    "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported: point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's OTLP/HTTP receiver (port 4318) and unset the protocol or set http/json"
                        .into(),
                )
            }
            other => return Err(format!("OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is unknown; use http/json")),
        }
        let headers = pairs(
            &lookup("OTEL_EXPORTER_OTLP_METRICS_HEADERS")
                .or_else(|| lookup("OTEL_EXPORTER_OTLP_HEADERS"))
                .unwrap_or_default(),
        );
        let millis = |name: &str, default: u64| -> Result<Duration, String> {
            match lookup(name) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
                    .ok_or_else(|| {
                        format!("{name}={v:?} must be a number of milliseconds above 0")
                    }),
            }
        };
        let mut resource = pairs(&lookup("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default());
        let service =
            lookup("OTEL_SERVICE_NAME").unwrap_or_else(|| "kinesis-kafka-replicator".into());
        resource.retain(|(k, _)| k != "service.name");
        resource.insert(0, ("service.name".into(), service));
        Ok(Some(OtlpConfig {
            url,
            headers,
            interval: millis("OTEL_METRIC_EXPORT_INTERVAL", 60_000)?,
            timeout: millis("OTEL_METRIC_EXPORT_TIMEOUT", 30_000)?,
            resource,
        }))
    }
}

/// `k1=v1,k2=v2` (values may be percent-encoded, as the convention allows).
fn pairs(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), percent_decode(v.trim())))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pushes every `interval` until the process ends.
pub fn push_forever(config: &OtlpConfig, shards: &Shards) {
    let mut failing = false;
    loop {
        std::thread::sleep(config.interval);
        match push(config, shards) {
            Ok(()) if failing => {
                failing = false;
                info!("OTLP export to {} works again", config.url);
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                warn!(
                    "OTLP export to {} failed: {e}; retrying every {} s",
                    config.url,
                    config.interval.as_secs()
                );
            }
            Err(e) => debug!("OTLP export: {e}"),
        }
    }
}

/// One last push (at exit), errors logged.
pub fn push_once(config: &OtlpConfig, shards: &Shards) {
    if let Err(e) = push(config, shards) {
        warn!("OTLP export to {} failed: {e}", config.url);
    }
}

fn push(config: &OtlpConfig, shards: &Shards) -> Result<(), String> {
    let body = request_body(config, &shards.snapshots(), crate::metrics::unix_ms());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .build()
        .into();
    let mut request = agent
        .post(&config.url)
        .header("Content-Type", "application/json");
    for (k, v) in &config.headers {
        request = request.header(k.as_str(), v.as_str());
    }
    request
        .send(body.to_string())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The `ExportMetricsServiceRequest` in OTLP's JSON encoding: cumulative sums for the
/// counters, gauges, explicit-bucket histograms.
pub fn request_body(
    config: &OtlpConfig,
    snapshots: &[(crate::metrics::Snapshot, f64)],
    now_ms: i64,
) -> Json {
    let now = (now_ms as i128 * 1_000_000).to_string();
    let attributes = |labels: &[(String, String)]| -> Vec<Json> {
        labels
            .iter()
            .map(|(k, v)| json!({"key": k, "value": {"stringValue": v}}))
            .collect()
    };
    let mut metrics: Vec<(String, Json)> = Vec::new();
    for point in points(snapshots, true) {
        let name = match point.unit {
            Some(MetricUnit::Seconds) if !point.name.ends_with("_seconds") => {
                format!("{}_seconds", point.name)
            }
            Some(MetricUnit::Bytes) => format!("{}_bytes", point.name),
            _ => point.name.to_owned(),
        };
        let unit = match point.unit {
            Some(MetricUnit::Seconds) => "s",
            Some(MetricUnit::Bytes) => "By",
            None => "1",
        };
        let attrs = attributes(&point.labels);
        let (kind, data_point) = match &point.value {
            Value::Counter(v) => (
                "sum",
                json!({"attributes": attrs, "timeUnixNano": now, "asInt": v.to_string()}),
            ),
            Value::Gauge(v) => (
                "gauge",
                json!({"attributes": attrs, "timeUnixNano": now, "asDouble": v}),
            ),
            Value::Histogram(h) => {
                let mut counts = Vec::with_capacity(h.buckets.len() + 1);
                let mut previous = 0;
                for cumulative in &h.buckets {
                    counts.push(cumulative.saturating_sub(previous).to_string());
                    previous = *cumulative;
                }
                counts.push(h.count.saturating_sub(previous).to_string());
                (
                    "histogram",
                    json!({
                        "attributes": attrs,
                        "timeUnixNano": now,
                        "count": h.count.to_string(),
                        "sum": h.sum,
                        "bucketCounts": counts,
                        "explicitBounds": crate::metrics::LATENCY_BUCKETS,
                    }),
                )
            }
        };
        match metrics.iter_mut().find(|(n, _)| *n == name) {
            Some((_, metric)) => {
                if let Some(points) = metric[kind]["dataPoints"].as_array_mut() {
                    points.push(data_point);
                }
            }
            None => {
                let data = match kind {
                    "sum" => {
                        json!({"aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [data_point]})
                    }
                    "histogram" => json!({"aggregationTemporality": 2, "dataPoints": [data_point]}),
                    _ => json!({"dataPoints": [data_point]}),
                };
                let metric =
                    json!({"name": name, "description": point.help, "unit": unit, kind: data});
                metrics.push((name, metric));
            }
        }
    }
    json!({
        "resourceMetrics": [{
            "resource": {"attributes": attributes(&config.resource)},
            "scopeMetrics": [{
                "scope": {"name": "kinesis-kafka-replicator", "version": env!("CARGO_PKG_VERSION")},
                "metrics": metrics.into_iter().map(|(_, m)| m).collect::<Vec<_>>(),
            }],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<OtlpConfig>, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OtlpConfig::from_lookup(move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_opentelemetry_variables_are_followed() {
        assert!(config(&[]).unwrap().is_none());
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=abc%20def,x=1"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(c.url, "http://collector:4318/v1/metrics");
        assert_eq!(c.headers[0], ("api-key".into(), "abc def".into()));
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(
            c.resource[0],
            ("service.name".into(), "kinesis-kafka-replicator".into())
        );
        let c = config(&[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "https://x/custom")])
            .unwrap()
            .unwrap();
        assert_eq!(c.url, "https://x/custom");
        let grpc = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(grpc.unwrap_err().contains("4318"));
        assert!(config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).is_err());
        assert!(config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon")
        ])
        .is_err());
    }
}
