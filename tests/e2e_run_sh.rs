//! End to end through the deployment: the Python replicator's env file, unchanged, →
//! `run.sh` → `java` → our binary → a real Kafka-protocol broker (tansu).
//!
//! `java` is a stand-in (`tests/e2e/fake_java.py`) placed first on PATH: it reads the
//! kcl.properties that run.sh rendered, spawns `executableName` the way the MultiLangDaemon
//! does (split on `" +"`, no shell, inherited environment and working directory) and drives
//! each child through initialize, processRecords and shardEnded with the daemon's protocol
//! rules, checking the SHARD_END checkpoint. No JVM, Kinesis or DynamoDB is involved.
//!
//! The env file is used verbatim, SASL included (SASL_PLAINTEXT, SCRAM-SHA-512, its user and
//! password); only `KAFKA_BOOTSTRAP_SERVERS` points at the test's broker. tansu 0.6.0 cannot
//! authenticate SCRAM itself (its in-memory storage keeps no SCRAM credentials and it is
//! built without PLAIN), so it runs without authentication behind
//! `tests/e2e/scram_proxy.py`, a SASL front that performs a real SCRAM-SHA-512 exchange
//! (verifying the password) and then pipes the connection to tansu. tansu advertises the
//! proxy's address, so every client, the replicator included, has to authenticate.
//!
//! tansu must be installed (`cargo install tansu --version 0.6.0 --features dynostore
//! --locked`, or TANSU_BIN=/path/to/tansu); without it these tests fail, they never skip.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// The env file from the Python replicator's article, byte for byte.
const PYTHON_ENV_FILE: &str = "\
# Example for KCL configuration
KCL_STREAM_NAME=kafka-kinesis-replicator-test
KCL_APPLICATION_NAME=replicator-app-name
KCL_REGION=eu-west-1
KCL_INITIAL_POSITION=LATEST
KCL_LOG_LEVEL=DEBUG
KCL_AWS_CREDENTIALS_PROVIDER=DefaultCredentialsProvider

# Example for Kafka and global configuration
SLEEP_SECONDS=5
CHECKPOINT_RETRIES=5
CHECKPOINT_FREQ_SECONDS=30
KAFKA_TOPIC=kinesis_kafka_replication_test
KAFKA_BOOTSTRAP_SERVERS=bootstrap-server:9094
KAFKA_SASL_USERNAME=kafka-user
KAFKA_SASL_PASSWORD=kafka-password
KAFKA_SASL_MECHANISM=SCRAM-SHA-512
KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT
KAFKA_CLIENT_ID=replicator-client
NUMBER_OF_SHARDS=4
AWS_ACCESS_KEY_ID=example-key-id
AWS_SECRET_ACCESS_KEY=example-secret-key
AWS_SESSION_TOKEN=example-token
";

/// Values that must never appear in any output or rendered file.
const SECRETS: [&str; 3] = ["kafka-password", "example-secret-key", "example-token"];

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[test]
fn python_env_file_through_run_sh_lands_every_record_in_kafka_and_ends_shards() {
    let started = Instant::now();
    let scratch = Scratch::new("replicate");
    let broker = Broker::start(&scratch);
    let env = python_env(&broker);
    let topic = env_value(&env, "KAFKA_TOPIC");
    let partitions: i32 = env_value(&env, "NUMBER_OF_SHARDS").parse().unwrap();
    broker.create_topic(&topic, partitions);
    broker.assert_requires_authentication();
    let shards = test_shards();
    scratch.write_records(&shards);

    // --dry-run renders and checks, prints the properties, and starts nothing.
    let dry = run_sh(&scratch, &env, &["--dry-run"]);
    assert!(dry.status.success(), "run.sh --dry-run failed:\n{dry}");
    for expected in [
        "streamName = kafka-kinesis-replicator-test",
        "applicationName = replicator-app-name",
        "regionName = eu-west-1",
        "callProcessRecordsEvenForEmptyRecordList = true",
        "shutdownGraceMillis = ",
        "retrievalMode = ",
        "metricsLevel = ",
        "-Dfile.encoding=UTF-8",
    ] {
        assert!(
            dry.stdout.contains(expected),
            "--dry-run output lacks {expected:?}:\n{dry}"
        );
    }
    assert!(
        !scratch.transcript().exists(),
        "--dry-run started java:\n{dry}"
    );
    assert_no_secrets("run.sh --dry-run output", &dry.all());

    // The real start: run.sh execs the stand-in java, which runs every shard to its end.
    let run_started = Instant::now();
    let run = run_sh(&scratch, &env, &[]);
    let run_time = run_started.elapsed();
    let transcript = scratch.read_transcript();
    assert!(
        run.status.success(),
        "run.sh (through the stand-in daemon) failed:\n{run}\ntranscript failures: {}",
        transcript["failures"]
    );
    assert_eq!(transcript["result"], "ok", "{transcript:#}");

    check_daemon_view(&transcript, &scratch);

    // Every record in Kafka, once, with its key; same key, same partition, in order.
    let expected: usize = shards.iter().map(|s| s.records().count()).sum();
    let messages = read_topic(
        &broker,
        &topic,
        partitions,
        expected,
        Duration::from_secs(30),
    );
    check_kafka(&shards, &messages);

    // The replicator authenticated with the env file's SCRAM-SHA-512 credentials.
    let sasl = broker.sasl_log();
    assert!(
        sasl.contains("authenticated kafka-user with SCRAM-SHA-512"),
        "{sasl}"
    );
    assert!(!sasl.contains("failed"), "a SASL exchange failed:\n{sasl}");

    // No secret anywhere: outputs, transcript (with the children's stderr), rendered files.
    assert_no_secrets("run.sh output", &run.all());
    assert_no_secrets(
        "transcript",
        &fs::read_to_string(scratch.transcript()).unwrap(),
    );
    for file in fs::read_dir(scratch.path("work")).unwrap() {
        let path = file.unwrap().path();
        let text = fs::read_to_string(&path).unwrap_or_default();
        assert_no_secrets(&path.display().to_string(), &text);
    }
    eprintln!(
        "e2e: {expected} records through run.sh into tansu; run.sh run {:.1} s, test {:.1} s",
        run_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn missing_variables_stop_run_sh_before_java_with_a_clear_message() {
    let scratch = Scratch::new("missing");
    let mut env = python_env_for("127.0.0.1:9");
    env.retain(|(k, _)| !matches!(k.as_str(), "KCL_STREAM_NAME" | "KAFKA_TOPIC"));
    let out = run_sh(&scratch, &env, &[]);
    assert_eq!(out.status.code(), Some(2), "expected exit 2:\n{out}");
    for (name, purpose) in [
        ("KCL_STREAM_NAME", "Kinesis data stream"),
        ("KAFKA_TOPIC", "Kafka topic"),
    ] {
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{name} is not named:\n{out}"));
        assert!(
            line.contains(purpose),
            "{name} is named without its purpose: {line}"
        );
    }
    assert!(
        !out.stderr.contains("KCL_APPLICATION_NAME"),
        "a variable that is set was reported missing:\n{out}"
    );
    assert!(!scratch.transcript().exists(), "java was started:\n{out}");
    assert_no_secrets("run.sh output", &out.all());

    // An empty value counts as missing (docker --env-file passes `VAR=` as empty).
    let mut env = python_env_for("127.0.0.1:9");
    set(&mut env, "KAFKA_SASL_PASSWORD", "");
    let out = run_sh(&scratch, &env, &[]);
    assert_eq!(out.status.code(), Some(2), "expected exit 2:\n{out}");
    assert!(out.stderr.contains("KAFKA_SASL_PASSWORD"), "{out}");
    assert!(!scratch.transcript().exists(), "java was started:\n{out}");
}

#[test]
fn bad_kafka_settings_stop_run_sh_before_java() {
    let scratch = Scratch::new("bad-kafka");
    let broker = Broker::start(&scratch);
    let env = python_env(&broker);
    let topic = env_value(&env, "KAFKA_TOPIC");

    // The topic does not exist (tansu does not create topics on first use).
    let out = run_sh(&scratch, &env, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "missing topic: expected exit 1:\n{out}"
    );
    assert!(
        out.all().contains(&topic),
        "the missing topic is not named:\n{out}"
    );
    assert!(out.stderr.contains("the daemon was not started"), "{out}");
    assert!(!scratch.transcript().exists(), "java was started:\n{out}");
    assert_no_secrets("run.sh output", &out.all());

    // A wrong password: the SCRAM exchange fails, and so does run.sh.
    broker.create_topic(&topic, 1);
    let mut env = env;
    set(&mut env, "KAFKA_SASL_PASSWORD", "not-the-password");
    let out = run_sh(&scratch, &env, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "wrong password: expected exit 1:\n{out}"
    );
    assert!(out.stderr.contains("the daemon was not started"), "{out}");
    // The processor passes on librdkafka's reason, not only a transport failure.
    assert!(
        out.stderr.to_lowercase().contains("authentication"),
        "the reason (authentication) is not named:\n{out}"
    );
    assert!(!scratch.transcript().exists(), "java was started:\n{out}");
    assert!(
        !out.all().contains("not-the-password"),
        "the password was printed:\n{out}"
    );
    assert!(
        broker
            .sasl_log()
            .contains("authentication failed for kafka-user"),
        "{}",
        broker.sasl_log()
    );
}

#[test]
fn without_jars_run_sh_fetches_with_maven_and_explains_a_failure() {
    let scratch = Scratch::new("no-jars");
    let broker = Broker::start(&scratch);
    let mut env = python_env(&broker);
    broker.create_topic(&env_value(&env, "KAFKA_TOPIC"), 1);
    let empty = scratch.path("empty-jars");
    fs::create_dir_all(&empty).unwrap();
    set(&mut env, "KCL_JARS_DIR", empty.to_str().unwrap());
    // A Maven that fails the way an offline one does (the real one would try the network).
    scratch.write_executable(
        "bin/mvn",
        "#!/bin/sh\n\
         echo \"mvn $*\" > \"$(dirname \"$0\")/../mvn-args\"\n\
         echo '[ERROR] Plugin org.apache.maven.plugins:maven-dependency-plugin:3.8.1 or one of \
         its dependencies could not be resolved: Could not transfer artifact from/to central: \
         repo.maven.apache.org: Name or service not known -> [Help 1]'\n\
         exit 1\n",
    );
    let out = run_sh(&scratch, &env, &[]);
    assert_eq!(out.status.code(), Some(3), "expected exit 3:\n{out}");
    assert!(
        out.stderr.contains("Maven could not fetch the KCL jars"),
        "{out}"
    );
    assert!(out.stderr.contains("Name or service not known"), "{out}");
    assert!(out.stderr.contains("KCL_JARS_DIR"), "{out}");
    let args = fs::read_to_string(scratch.path("mvn-args")).expect("mvn was not run");
    assert!(args.contains("jars/pom.xml"), "{args}");
    assert!(
        args.contains(&format!("-Djars.outputDirectory={}", empty.display())),
        "{args}"
    );
    assert!(!scratch.transcript().exists(), "java was started:\n{out}");
}

// ------------------------------------------------------------------------------------------
// What the stand-in daemon saw
// ------------------------------------------------------------------------------------------

fn check_daemon_view(transcript: &Value, scratch: &Scratch) {
    let jvm: Vec<&str> = strings(&transcript["jvm_options"]);
    assert!(
        jvm.contains(&"-Dfile.encoding=UTF-8"),
        "JVM options: {jvm:?}"
    );
    assert_eq!(transcript["charset"], "utf-8");
    assert_eq!(
        transcript["main_class"],
        "software.amazon.kinesis.multilang.MultiLangDaemon"
    );
    assert_eq!(
        transcript["classpath"],
        format!("{}/*", scratch.path("jars").display()),
        "the classpath is not KCL_JARS_DIR/*"
    );
    assert!(
        transcript["log_configuration"].is_string(),
        "no -l logback.xml given"
    );

    let props = transcript["properties"].as_object().expect("properties");
    let prop = |key: &str| props.get(key).and_then(Value::as_str).unwrap_or_default();
    for (key, value) in [
        ("streamName", "kafka-kinesis-replicator-test"),
        ("applicationName", "replicator-app-name"),
        ("regionName", "eu-west-1"),
        ("initialPositionInStream", "LATEST"),
        ("AwsCredentialsProvider", "DefaultCredentialsProvider"),
        ("callProcessRecordsEvenForEmptyRecordList", "true"),
    ] {
        assert_eq!(prop(key), value, "kcl.properties {key}");
    }
    assert!(prop("shutdownGraceMillis").parse::<u64>().unwrap_or(0) > 0);
    assert!(["POLLING", "FANOUT"].contains(&prop("retrievalMode")));
    assert!(!prop("metricsLevel").is_empty());
    for (key, value) in props {
        assert!(
            !value.as_str().unwrap_or_default().trim().is_empty(),
            "kcl.properties has an empty {key}"
        );
    }
    let argv = strings(&transcript["executable_argv"]);
    assert_eq!(argv.len(), 3, "executableName split into {argv:?}");
    assert_eq!(
        Path::new(argv[0]),
        binary(),
        "executableName does not run our binary"
    );
    assert_eq!(argv[1], "--config");
    assert!(argv[2].ends_with("config/replicator.template"), "{argv:?}");

    let shards = transcript["shards"].as_object().expect("shards");
    assert_eq!(shards.len(), 2);
    for (id, shard) in shards {
        assert_eq!(shard["final_checkpoint"], "SHARD_END", "{id}: {shard:#}");
        assert_eq!(shard["exit_code"], 0, "{id}");
        let warnings = shard["warnings"].as_array().unwrap();
        assert!(
            warnings.is_empty(),
            "{id}: lines the daemon would skip: {warnings:?}"
        );
        for c in shard["checkpoints"].as_array().unwrap() {
            assert!(c["error"].is_null(), "{id}: a checkpoint was refused: {c}");
        }
        // The empty batch was delivered (callProcessRecordsEvenForEmptyRecordList) and answered.
        let empty_batches = shard["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["to_child"].as_str())
            .filter(|l| l.contains("\"records\":[]"))
            .count();
        let expected_empty = usize::from(id == "shardId-000000000000");
        assert_eq!(
            empty_batches, expected_empty,
            "{id}: empty batches delivered"
        );
    }
}

// ------------------------------------------------------------------------------------------
// What Kafka holds
// ------------------------------------------------------------------------------------------

fn check_kafka(shards: &[TestShard], messages: &[ReadMessage]) {
    let mut by_value: HashMap<&[u8], Vec<&ReadMessage>> = HashMap::new();
    for m in messages {
        by_value.entry(m.value.as_slice()).or_default().push(m);
    }
    let mut partition_of_key: HashMap<&str, i32> = HashMap::new();
    let mut last_offset_of_key: HashMap<&str, i64> = HashMap::new();
    for shard in shards {
        for r in shard.records() {
            let found = by_value
                .get(r.data.as_slice())
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert_eq!(
                found.len(),
                1,
                "record {}/{} of {} ({:?}) is in Kafka {} times",
                r.seq,
                r.sub,
                shard.id,
                r.key,
                found.len()
            );
            let m = found[0];
            assert_eq!(
                m.key.as_deref(),
                Some(r.key.as_bytes()),
                "record {}/{}: wrong key (a non-ASCII key turned into '?' means the daemon ran without -Dfile.encoding=UTF-8)",
                r.seq,
                r.sub
            );
            if let Some(shard_header) = m.header("kinesis.shardId") {
                assert_eq!(shard_header, shard.id);
                assert_eq!(
                    m.header("kinesis.sequenceNumber").as_deref(),
                    Some(r.seq.as_str())
                );
            }
            let partition = *partition_of_key.entry(&r.key).or_insert(m.partition);
            assert_eq!(
                m.partition, partition,
                "key {:?} is spread over partitions",
                r.key
            );
            if let Some(previous) = last_offset_of_key.insert(&r.key, m.offset) {
                assert!(
                    m.offset > previous,
                    "key {:?} is out of Kinesis order",
                    r.key
                );
            }
        }
    }
    let expected: usize = shards.iter().map(|s| s.records().count()).sum();
    assert_eq!(
        messages.len(),
        expected,
        "unexpected extra messages in the topic"
    );
}

#[derive(Debug)]
struct ReadMessage {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

impl ReadMessage {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads every partition from the beginning (tansu skips records when a fetch starts in the
/// middle of a stored batch) until `expected` messages arrived and the partitions are drained.
fn read_topic(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<ReadMessage> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", "e2e-run-sh-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("create the reader");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(ReadMessage {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
                quiet_since = Instant::now();
            }
            Some(Err(e)) => eprintln!("e2e reader: {e}"),
            None if out.len() >= expected && quiet_since.elapsed() > Duration::from_secs(2) => {
                break
            }
            None => {}
        }
    }
    assert!(
        out.len() >= expected,
        "read {} of {expected} messages from {topic} within {timeout:?}",
        out.len()
    );
    out.sort_by_key(|m| (m.partition, m.offset));
    out
}

// ------------------------------------------------------------------------------------------
// Test data: two shards, with non-ASCII keys, binary and empty payloads, a de-aggregated
// record (same sequence number, sub-sequence 0 and 1) and an empty batch.
// ------------------------------------------------------------------------------------------

struct TestRecord {
    key: String,
    seq: String,
    sub: i64,
    data: Vec<u8>,
}

struct TestShard {
    id: String,
    batches: Vec<Vec<TestRecord>>,
}

impl TestShard {
    fn records(&self) -> impl Iterator<Item = &TestRecord> {
        self.batches.iter().flatten()
    }
}

fn test_shards() -> Vec<TestShard> {
    // (key, sub-sequence count) per record; keys are shard-specific, as Kinesis hashes them.
    let shard = |n: u64, keys: &[&[(&str, i64)]]| {
        let id = format!("shardId-{n:012}");
        let mut counter = 0;
        let batches = keys
            .iter()
            .map(|batch| {
                let mut records = Vec::new();
                for &(key, subs) in batch.iter() {
                    counter += 1;
                    let seq =
                        format!("4959033827149025660855969253836157109592157598913{n}{counter:06}");
                    for sub in 0..subs {
                        let mut data = format!("{id}|{seq}|{sub}|").into_bytes();
                        match counter % 3 {
                            0 => data.extend_from_slice(&[0x00, 0xff, 0xfe, 0x80]),
                            1 => data.extend_from_slice("payload é ✓".as_bytes()),
                            _ => {}
                        }
                        records.push(TestRecord {
                            key: key.to_string(),
                            seq: seq.clone(),
                            sub,
                            data,
                        });
                    }
                }
                records
            })
            .collect();
        TestShard { id, batches }
    };
    vec![
        shard(
            0,
            &[
                &[
                    ("user-1", 1),
                    ("clé-ü", 1),
                    ("日本語キー", 1),
                    ("user-1", 1),
                    ("clé-ü", 1),
                ],
                &[],
                &[
                    ("user-1", 2),
                    ("日本語キー", 1),
                    ("user-1", 1),
                    ("clé-ü", 1),
                    ("user-7", 1),
                ],
            ],
        ),
        shard(
            1,
            &[
                &[
                    ("order-42", 1),
                    ("Ωmega", 1),
                    ("order-42", 1),
                    ("order-43", 1),
                ],
                &[("Ωmega", 1), ("order-42", 3), ("order-43", 1)],
            ],
        ),
    ]
}

fn records_json(shards: &[TestShard]) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut arrival = 1_700_000_000_000_i64;
    let shards: Vec<Value> = shards
        .iter()
        .map(|s| {
            let batches: Vec<Value> = s
                .batches
                .iter()
                .map(|batch| {
                    let records: Vec<Value> = batch
                        .iter()
                        .map(|r| {
                            arrival += 7;
                            json!({
                                "data": b64.encode(&r.data),
                                "partitionKey": r.key,
                                "sequenceNumber": r.seq,
                                "approximateArrivalTimestamp": arrival,
                                "subSequenceNumber": r.sub,
                            })
                        })
                        .collect();
                    json!({ "records": records, "millisBehindLatest": 0 })
                })
                .collect();
            json!({ "shardId": s.id, "batches": batches })
        })
        .collect();
    json!({ "shards": shards })
}

// ------------------------------------------------------------------------------------------
// The environment
// ------------------------------------------------------------------------------------------

/// `docker run --env-file` semantics: one VAR=VALUE per line, no quoting, '#' comments.
fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("VAR=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn python_env(broker: &Broker) -> Vec<(String, String)> {
    python_env_for(&broker.bootstrap())
}

/// The env file as it is, pointed at `bootstrap`.
fn python_env_for(bootstrap: &str) -> Vec<(String, String)> {
    let mut env = parse_env_file(PYTHON_ENV_FILE);
    set(&mut env, "KAFKA_BOOTSTRAP_SERVERS", bootstrap);
    env
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

fn env_value(env: &[(String, String)], key: &str) -> String {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap()
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kinesis-kafka-replicator"))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct RunOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl RunOutput {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for RunOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs run.sh with exactly `env` plus the test's plumbing, from the scratch directory.
fn run_sh(scratch: &Scratch, env: &[(String, String)], args: &[&str]) -> RunOutput {
    let path = format!(
        "{}:{}",
        scratch.path("bin").display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let mut cmd = Command::new(repo().join("run.sh"));
    cmd.args(args)
        .env_clear()
        .env("PATH", path)
        // A non-UTF-8 locale: only -Dfile.encoding=UTF-8 keeps non-ASCII keys intact.
        .env("LC_ALL", "C")
        .env("REPLICATOR_BIN", binary())
        .env("KCL_JARS_DIR", scratch.path("jars"))
        .env("REPLICATOR_WORK_DIR", scratch.path("work"))
        .env("E2E_RECORDS", scratch.path("records.json"))
        .env("E2E_TRANSCRIPT", scratch.transcript())
        .env("E2E_ACTION_TIMEOUT", "60")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(scratch.path(""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start run.sh");
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "run.sh did not finish within {RUN_TIMEOUT:?}\n--- stderr ---\n{}",
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    RunOutput {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn assert_no_secrets(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} contains the secret {secret:?}:\n{text}"
        );
    }
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

// ------------------------------------------------------------------------------------------
// Scratch directory: bin/java (the stand-in), jars/ (a dummy jar), work/, records, transcript
// ------------------------------------------------------------------------------------------

struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("kkr-e2e-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("jars")).unwrap();
        // The stand-in only checks that KCL_JARS_DIR has jars; run.sh then skips Maven.
        fs::write(
            dir.join("jars/amazon-kinesis-client-multilang-3.1.3.jar"),
            b"",
        )
        .unwrap();
        let scratch = Scratch { dir };
        let script = repo().join("tests/e2e/fake_java.py");
        scratch.write_executable(
            "bin/java",
            &format!(
                "#!/bin/sh\nexec '{}' '{}' \"$@\"\n",
                python3().display(),
                script.display()
            ),
        );
        scratch
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    fn transcript(&self) -> PathBuf {
        self.path("transcript.json")
    }

    fn read_transcript(&self) -> Value {
        let text = fs::read_to_string(self.transcript()).expect("the stand-in java never started");
        serde_json::from_str(&text).expect("transcript JSON")
    }

    fn write_records(&self, shards: &[TestShard]) {
        fs::write(self.path("records.json"), records_json(shards).to_string()).unwrap();
    }

    fn write_executable(&self, relative: &str, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(relative);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("e2e: kept {} for inspection", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The real interpreter (not a pyenv shim, which needs more of the environment).
fn python3() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed for the stand-in daemon (tests/e2e/fake_java.py)");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

// ------------------------------------------------------------------------------------------
// The broker: tansu (in memory, on a free loopback port) behind the SCRAM proxy; both are
// killed on drop, also when a test panics.
// ------------------------------------------------------------------------------------------

const INSTALL_TANSU: &str =
    "tansu is not installed: these tests need a real Kafka-protocol broker.\n\
     Install it with: cargo install tansu --version 0.6.0 --features dynostore --locked\n\
     (about 10 minutes; .ci/run does this), or set TANSU_BIN=/path/to/tansu";

struct Broker {
    tansu: Child,
    proxy: Child,
    tansu_port: u16,
    proxy_port: u16,
    user: String,
    password: String,
    mechanism: String,
    proxy_log: PathBuf,
    tansu_log: PathBuf,
}

fn tansu_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("tansu"))
            .find(|p| p.is_file())
    });
    let in_cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin/tansu"))
        .filter(|p| p.is_file());
    on_path
        .or(in_cargo_home)
        .unwrap_or_else(|| panic!("{INSTALL_TANSU}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    /// Starts the SCRAM front with the env file's credentials, then tansu behind it.
    fn start(scratch: &Scratch) -> Broker {
        // A port picked by binding to :0 can be taken by another test before tansu binds it;
        // tansu then exits, and a fresh port is tried.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Broker::try_start(scratch, free_port()) {
                Ok(broker) => return broker,
                Err(e) => last_error = e,
            }
        }
        panic!("tansu did not start:\n{last_error}");
    }

    fn try_start(scratch: &Scratch, tansu_port: u16) -> Result<Broker, String> {
        let tansu_bin = tansu_binary();
        let env = parse_env_file(PYTHON_ENV_FILE);
        let user = env_value(&env, "KAFKA_SASL_USERNAME");
        let password = env_value(&env, "KAFKA_SASL_PASSWORD");
        let mechanism = env_value(&env, "KAFKA_SASL_MECHANISM");

        let proxy_log = scratch.path("scram-proxy.log");
        let mut proxy = Command::new(python3())
            .arg(repo().join("tests/e2e/scram_proxy.py"))
            .args(["--upstream", &format!("127.0.0.1:{tansu_port}")])
            .args(["--user", &user, "--mechanism", &mechanism])
            .args(["--password-env", "E2E_SCRAM_PASSWORD"])
            .env("E2E_SCRAM_PASSWORD", &password)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&proxy_log).unwrap())
            .spawn()
            .expect("start tests/e2e/scram_proxy.py");
        let mut first_line = String::new();
        let _ = BufReader::new(proxy.stdout.take().unwrap()).read_line(&mut first_line);
        let Some(proxy_port) = first_line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
        else {
            let _ = proxy.kill();
            let _ = proxy.wait();
            panic!(
                "the SCRAM proxy did not start: {first_line:?}\n{}",
                fs::read_to_string(&proxy_log).unwrap_or_default()
            );
        };

        let listener = format!("tcp://127.0.0.1:{tansu_port}");
        let advertised = format!("tcp://127.0.0.1:{proxy_port}");
        let tansu_log = scratch.path("tansu.log");
        let tansu = match Command::new(&tansu_bin)
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&tansu_log).unwrap())
            .stderr(Stdio::from(
                fs::File::options().append(true).open(&tansu_log).unwrap(),
            ))
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                let _ = proxy.kill();
                let _ = proxy.wait();
                panic!(
                    "cannot start {} ({e}).\n{INSTALL_TANSU}",
                    tansu_bin.display()
                );
            }
        };
        let mut broker = Broker {
            tansu,
            proxy,
            tansu_port,
            proxy_port,
            user,
            password,
            mechanism,
            proxy_log,
            tansu_log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", tansu_port)).is_err() {
            if let Some(status) = broker.tansu.try_wait().unwrap() {
                return Err(format!(
                    "tansu exited with {status}:\n{}",
                    fs::read_to_string(&broker.tansu_log).unwrap_or_default()
                ));
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {tansu_port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    /// What clients connect to: the SCRAM front.
    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.proxy_port)
    }

    /// A client with the env file's SASL settings.
    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap())
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanism", &self.mechanism)
            .set("sasl.username", &self.user)
            .set("sasl.password", &self.password);
        config
    }

    /// tansu does not create topics on first use. Created on tansu itself, behind the proxy.
    fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(tansu_binary())
            .args([
                "topic",
                "create",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.tansu_port)])
            .output()
            .expect("run tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A client without SASL is turned away at the advertised address.
    fn assert_requires_authentication(&self) {
        let out = Command::new(tansu_binary())
            .args([
                "topic",
                "create",
                "unauthenticated-probe",
                "--partitions",
                "1",
            ])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.proxy_port)])
            .output()
            .expect("run tansu topic create");
        assert!(
            !out.status.success(),
            "the broker accepted a client without SASL"
        );
    }

    /// The proxy's log: one line per SASL exchange, with the outcome.
    fn sasl_log(&self) -> String {
        fs::read_to_string(&self.proxy_log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for child in [&mut self.tansu, &mut self.proxy] {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "e2e: tansu log {}, SCRAM proxy log {}",
                self.tansu_log.display(),
                self.proxy_log.display()
            );
        }
    }
}
