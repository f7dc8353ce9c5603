//! Starts and stops a broker with one fresh topic: librdkafka's mock cluster inside this process,
//! or tansu as a child process on loopback. The tests' [`super::kafka::Kafka`] is a mock cluster
//! started here; the benchmark starts either.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub type Cluster = MockCluster<'static, DefaultProducerContext>;

/// A mock cluster of `brokers` brokers (ids 1..=brokers) holding `topic`, each partition on up
/// to three of them.
pub fn start_mock(brokers: i32, topic: &str, partitions: i32) -> Result<Cluster> {
    let cluster = MockCluster::new(brokers).context("start the mock cluster")?;
    cluster
        .create_topic(topic, partitions, brokers.min(3))
        .context("create the topic on the mock cluster")?;
    Ok(cluster)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BrokerKind {
    /// tansu (`--storage-engine memory://`), a separate process on loopback.
    Tansu,
    /// librdkafka's mock cluster (one broker), inside this process.
    Mock,
    /// Apache Kafka started by the caller (the benchmark's `kkrlocal.kafka` server).
    Kafka,
}

impl BrokerKind {
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Tansu => "tansu",
            BrokerKind::Mock => "mock",
            BrokerKind::Kafka => "kafka",
        }
    }
}

/// The tansu binary: `$TANSU`, else `tansu` on PATH.
pub fn tansu_bin() -> String {
    std::env::var("TANSU").unwrap_or_else(|_| "tansu".into())
}

pub fn tansu_available() -> bool {
    Command::new(tansu_bin())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// One broker with one topic, up until it is stopped or dropped.
pub struct Broker {
    pub kind: BrokerKind,
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    tansu: Option<Child>,
    _mock: Option<Cluster>,
    /// The JVM of a broker started by the caller, for its CPU time.
    external_pid: Option<u32>,
}

impl Broker {
    /// `kind` with `topic`, once the topic's metadata shows all its partitions. tansu logs to
    /// `logs/tansu.log`.
    pub fn start(kind: BrokerKind, topic: &str, partitions: i32, logs: &Path) -> Result<Broker> {
        let broker = match kind {
            BrokerKind::Mock => {
                let cluster = start_mock(1, topic, partitions)?;
                Broker {
                    kind,
                    bootstrap: cluster.bootstrap_servers(),
                    topic: topic.to_owned(),
                    partitions,
                    tansu: None,
                    _mock: Some(cluster),
                    external_pid: None,
                }
            }
            BrokerKind::Tansu => start_tansu(topic, partitions, logs)?,
            BrokerKind::Kafka => bail!("Apache Kafka is started by the caller: Broker::external"),
        };
        broker.wait_for_topic()?;
        Ok(broker)
    }

    /// A topic on Apache Kafka that the caller started (and stops), whose JVM is `pid`.
    pub fn external(bootstrap: &str, topic: &str, partitions: i32, pid: Option<u32>) -> Broker {
        Broker {
            kind: BrokerKind::Kafka,
            bootstrap: bootstrap.to_owned(),
            topic: topic.to_owned(),
            partitions,
            tansu: None,
            _mock: None,
            external_pid: pid,
        }
    }

    /// The broker's pid (the mock cluster runs inside this process).
    pub fn pid(&self) -> Option<u32> {
        self.tansu.as_ref().map(Child::id).or(self.external_pid)
    }

    fn wait_for_topic(&self) -> Result<()> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(metadata) = consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(5))
            {
                let n = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == self.topic && t.error().is_none())
                    .map_or(0, |t| t.partitions().len());
                if n as i32 == self.partitions {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "topic {} did not appear on {}",
                    self.topic,
                    self.kind.name()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.tansu.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_tansu(topic: &str, partitions: i32, logs: &Path) -> Result<Broker> {
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let log = File::create(logs.join("tansu.log"))?;
    let child = Command::new(tansu_bin())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start tansu")?;
    let broker = Broker {
        kind: BrokerKind::Tansu,
        bootstrap: format!("127.0.0.1:{port}"),
        topic: topic.to_owned(),
        partitions,
        tansu: Some(child),
        _mock: None,
        external_pid: None,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "tansu did not listen on {url} within 20 s (see {})",
                logs.join("tansu.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(tansu_bin())
        .args(["topic", "create", topic, "--partitions"])
        .arg(partitions.to_string())
        .args(["--broker", &url])
        .output()
        .context("tansu topic create")?;
    if !out.status.success() {
        bail!(
            "tansu topic create {topic} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(broker)
}
