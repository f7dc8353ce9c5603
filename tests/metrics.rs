//! The metrics: the real binary under the daemon double reports to the real metrics server
//! (`kinesis-kafka-replicator metrics`) over its Unix socket, as `run.sh` wires them; the
//! test scrapes `/metrics`, `/status` and `/healthz` over HTTP on loopback, and receives the
//! OTLP push with a small HTTP receiver of its own.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kinesis_kafka_replicator::metrics::METRICS_SOCKET_ENV;
use serde_json::json;
use support::config::{config_with, write_config, TempDir};
use support::daemon::*;
use support::kafka::*;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_kinesis-kafka-replicator");

/// The metrics server as run.sh starts it, stopped (killed) when dropped.
struct Server {
    child: Child,
    socket: std::path::PathBuf,
    port: Option<u16>,
    _dir: TempDir,
}

impl Server {
    fn start(http: bool, env: &[(&str, String)]) -> Server {
        let dir = TempDir::new();
        let socket = dir.path().join("metrics.sock");
        let port = http.then(free_port);
        let mut command = Command::new(BIN);
        command
            .arg("metrics")
            .arg("--socket")
            .arg(&socket)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(port) = port {
            command.arg("--listen").arg(format!("127.0.0.1:{port}"));
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start the metrics server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the metrics server made no socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            socket,
            port,
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let port = self.port.expect("an HTTP server");
        http_get(port, path)
    }

    /// Scrapes until `check` holds for the body, or panics with the last one.
    fn scrape_until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = self.get("/metrics");
            assert_eq!(status, 200);
            if check(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{what}; last scrape:\n{body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

/// The value of the series `name{labels}` in a Prometheus text.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn labels(shard: &str) -> String {
    format!(r#"{{shard="{shard}",topic="metrics"}}"#)
}

/// The binary under the daemon double, reporting to `server`.
fn start_child(server: &Server, kafka: &Kafka) -> Running {
    // librdkafka's statistics (5 s by default when exported) often enough for a test.
    let config = write_config(&config_with(
        &kafka.bootstrap(),
        "metrics",
        json!({"kafka": {"properties": {"statistics.interval.ms": "100"}}}),
    ));
    let mut command = config.command();
    command.env(METRICS_SOCKET_ENV, &server.socket);
    let daemon = Daemon::spawn(command);
    Running { daemon, config }
}

/// Records that reached Kinesis a second ago.
fn fresh_records(start: u64, n: usize) -> Vec<TestRecord> {
    let arrived = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        - 1_000;
    let mut all = records(start, n);
    for r in &mut all {
        r.arrival_ms = Some(arrived);
    }
    all
}

#[test]
fn the_endpoint_counts_what_each_live_shard_did_and_forgets_an_ended_one() {
    let kafka = Kafka::start(1, "metrics", 2);
    let server = Server::start(true, &[]);
    let (status, body) = server.get("/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let mut a = start_child(&server, &kafka);
    a.initialize("shardId-000000000001", TRIM_HORIZON);
    let mut b = start_child(&server, &kafka);
    b.initialize("shardId-000000000002", TRIM_HORIZON);
    for batch in fresh_records(0, 300).chunks(100) {
        a.process_records(batch, Some(2500));
    }
    b.process_records(&fresh_records(1000, 50), Some(0));
    kafka.read(350, Duration::from_secs(20));

    let la = labels("shardId-000000000001");
    let lb = labels("shardId-000000000002");
    let text = server.scrape_until("both shards' records acknowledged", |t| {
        value(t, &format!("kkr_messages_acknowledged_total{la}")) == Some(300.0)
            && value(t, &format!("kkr_messages_acknowledged_total{lb}")) == Some(50.0)
            && value(t, &format!("kkr_replication_latency_seconds_count{la}")) == Some(300.0)
    });
    assert_eq!(value(&text, "kkr_shards"), Some(2.0), "{text}");
    assert_eq!(value(&text, "kkr_daemon_up"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, &format!("kkr_records_received_total{la}")),
        Some(300.0),
        "{text}"
    );
    assert_eq!(
        value(&text, &format!("kkr_records_received_total{lb}")),
        Some(50.0)
    );
    let bytes: usize = fresh_records(0, 300)
        .iter()
        .map(|r| r.data.as_ref().map_or(0, Vec::len))
        .sum();
    assert_eq!(
        value(&text, &format!("kkr_received_bytes_total{la}")),
        Some(bytes as f64),
        "{text}"
    );
    assert_eq!(
        value(&text, &format!("kkr_millis_behind_latest{la}")),
        Some(2500.0)
    );
    assert_eq!(
        value(&text, &format!("kkr_batch_duration_seconds_count{la}")),
        Some(3.0),
        "one observation per batch answered"
    );
    // Every record arrived a second before it was sent: none is acknowledged sooner, and
    // on loopback all within a few seconds.
    let le = |bound: &str| {
        value(
            &text,
            &format!(
                r#"kkr_replication_latency_seconds_bucket{{le="{bound}",shard="shardId-000000000001",topic="metrics"}}"#
            ),
        )
    };
    assert_eq!(le("0.5"), Some(0.0), "{text}");
    assert_eq!(le("10.0"), Some(300.0), "{text}");
    assert_eq!(
        value(&text, &format!("kkr_records_in_flight{la}")),
        Some(0.0)
    );
    // librdkafka's statistics: a round-trip time per broker.
    let text = server.scrape_until("a broker round-trip time", |t| {
        t.lines().any(|l| {
            l.starts_with(
                r#"kkr_broker_rtt_seconds{shard="shardId-000000000001",topic="metrics",broker=""#,
            )
        })
    });
    assert!(text.contains("kkr_producer_queue_messages{"), "{text}");

    let (status, body) = server.get("/status");
    assert_eq!(status, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["daemon_alive"], true);
    let shards: Vec<&str> = status["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .filter_map(|s| s["shard"].as_str())
        .collect();
    assert_eq!(shards, ["shardId-000000000001", "shardId-000000000002"]);
    assert_eq!(status["shards"][0]["state"], "processing", "{body}");
    assert_eq!(status["shards"][0]["millis_behind_latest"], 2500);

    // Shard 2 ends: its series go with its child.
    b.shard_ended();
    assert!(
        b.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        b.dump()
    );
    let text = server.scrape_until("the ended shard's series gone", |t| {
        value(t, &format!("kkr_records_received_total{lb}")).is_none()
    });
    assert_eq!(value(&text, "kkr_shards"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, &format!("kkr_records_received_total{la}")),
        Some(300.0)
    );
    a.shard_ended();
    assert!(
        a.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        a.dump()
    );
    let text = server.scrape_until("no shard left", |t| value(t, "kkr_shards") == Some(0.0));
    assert!(!text.contains("shardId-000000000001"), "{text}");
}

#[test]
fn the_server_pushes_otlp_to_the_collector() {
    // A collector's OTLP/HTTP receiver: takes every POST, hands its path and body over.
    let receiver = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = receiver.local_addr().expect("addr").port();
    let (posts, received) = mpsc::channel::<(String, String)>();
    std::thread::spawn(move || {
        for stream in receiver.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_owned();
            let _ = posts.send((path, String::from_utf8_lossy(&body).into_owned()));
        }
    });
    let kafka = Kafka::start(1, "metrics", 1);
    let server = Server::start(
        false,
        &[
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{port}"),
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300".into()),
            ("OTEL_SERVICE_NAME", "replicator-under-test".into()),
        ],
    );
    let mut child = start_child(&server, &kafka);
    child.initialize("shardId-000000000003", TRIM_HORIZON);
    child.process_records(&fresh_records(0, 40), Some(0));
    kafka.read(40, Duration::from_secs(20));

    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (path, body) = received
            .recv_timeout(left)
            .expect("an OTLP push with the shard's acknowledged records");
        assert_eq!(path, "/v1/metrics");
        let json: serde_json::Value = serde_json::from_str(&body).expect("OTLP JSON");
        let acknowledged = metric(&json, "kkr_messages_acknowledged").and_then(|m| {
            m["sum"]["dataPoints"][0]["asInt"]
                .as_str()
                .map(str::to_owned)
        });
        if acknowledged.as_deref() == Some("40") {
            break json;
        }
    };
    let resource = &body["resourceMetrics"][0]["resource"]["attributes"][0];
    assert_eq!(resource["key"], "service.name");
    assert_eq!(resource["value"]["stringValue"], "replicator-under-test");
    let received = metric(&body, "kkr_records_received").expect("records received");
    assert_eq!(received["sum"]["isMonotonic"], true);
    let point = &received["sum"]["dataPoints"][0];
    assert_eq!(point["asInt"], "40");
    assert!(point["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .any(|a| a["key"] == "shard" && a["value"]["stringValue"] == "shardId-000000000003"));
    let latency = metric(&body, "kkr_replication_latency_seconds").expect("latency");
    assert_eq!(latency["histogram"]["dataPoints"][0]["count"], "40");
    child.shard_ended();
    assert!(child.wait_exit(Duration::from_secs(20)).success());
}

fn metric<'a>(body: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

#[test]
fn the_server_refuses_a_grpc_endpoint_with_a_line_that_says_what_to_do() {
    let dir = TempDir::new();
    let output = Command::new(BIN)
        .args(["metrics", "--socket"])
        .arg(dir.path().join("s.sock"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("4318"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
