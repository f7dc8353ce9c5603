//! `run.sh`, the deployment's entry point, up to the moment it would start Java: the
//! Python replicator's env file, unchanged, → `run.sh` → what it refuses and what it shows.
//!
//! Covered here, with no JVM and no real broker:
//! - missing variables stop it before Java, naming each with its purpose (exit 2);
//! - a missing topic stops it before Java, naming the topic (exit 1), against librdkafka's
//!   in-process mock cluster (`rdkafka::mocking::MockCluster`, which has no SASL, so those
//!   tests switch the env file to `KAFKA_SECURITY_PROTOCOL=PLAINTEXT`);
//! - without jars it runs Maven and explains Maven's failure (exit 3);
//! - `--dry-run` prints the rendered daemon properties, secrets redacted, before the Kafka
//!   check, so they show also where Kafka is unreachable (the check still fails: exit 1);
//!   with Kafka reachable it also prints the Java command and exits 0;
//! - `--local` hands every other argument to `scripts/local/quickstart.sh` without
//!   checking any variable.
//!
//! `java` and `mvn` are stand-ins placed first on PATH: `java` only records that it was
//! started (none of these tests may get that far); `mvn` fails like an offline Maven.
//!
//! The real daemon, a real Apache Kafka broker and the whole pipeline (records through
//! run.sh into Kafka, SASL, a wrong password) are the end-to-end suite's, under `tests/e2e/`.

mod support;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::kafka::Kafka;

/// The env file from the Python replicator's article, byte for byte.
const PYTHON_ENV_FILE: &str = include_str!("fixtures/python-replicator.env");

/// Values that must never appear in any output or rendered file.
const SECRETS: [&str; 3] = ["kafka-password", "example-secret-key", "example-token"];

const RUN_TIMEOUT: Duration = Duration::from_secs(180);

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

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
    assert!(!scratch.java_started(), "java was started:\n{out}");
    assert_no_secrets("run.sh output", &out.all());

    // An empty value counts as missing (docker --env-file passes `VAR=` as empty).
    let mut env = python_env_for("127.0.0.1:9");
    set(&mut env, "KAFKA_SASL_PASSWORD", "");
    let out = run_sh(&scratch, &env, &[]);
    assert_eq!(out.status.code(), Some(2), "expected exit 2:\n{out}");
    assert!(out.stderr.contains("KAFKA_SASL_PASSWORD"), "{out}");
    assert!(!scratch.java_started(), "java was started:\n{out}");
}

#[test]
fn a_missing_topic_stops_run_sh_before_java_naming_the_topic() {
    let scratch = Scratch::new("missing-topic");
    // The cluster holds another topic only (the mock cluster creates none on its own).
    let kafka = Kafka::start(1, "some-other-topic", 1);
    let env = plaintext_env_for(&kafka.bootstrap());
    let topic = env_value(&env, "KAFKA_TOPIC");

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
    assert!(!scratch.java_started(), "java was started:\n{out}");
    assert_no_secrets("run.sh output", &out.all());
    assert_no_secrets_in_work_dir(&scratch);
}

#[test]
fn without_jars_run_sh_fetches_with_maven_and_explains_a_failure() {
    let scratch = Scratch::new("no-jars");
    let kafka = Kafka::start(
        1,
        &env_value(&parse_env_file(PYTHON_ENV_FILE), "KAFKA_TOPIC"),
        1,
    );
    let mut env = plaintext_env_for(&kafka.bootstrap());
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
    assert!(!scratch.java_started(), "java was started:\n{out}");
    assert_no_secrets("run.sh output", &out.all());
}

#[test]
fn dry_run_prints_the_redacted_properties_even_when_kafka_is_unreachable_and_still_fails_the_check()
{
    let scratch = Scratch::new("dry-run-no-kafka");
    // The env file as it is (SASL included), pointed at a port nobody listens on.
    let mut env = python_env_for(&format!("127.0.0.1:{}", closed_port()));
    // Provider arguments (here a role to assume) are redacted in what is printed.
    set(
        &mut env,
        "KCL_AWS_CREDENTIALS_PROVIDER",
        "StsAssumeRoleCredentialsProvider|arn:aws:iam::123456789012:role/kinesis-reader|replicator",
    );

    let out = run_sh(&scratch, &env, &["--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "unreachable Kafka: expected exit 1 from the Kafka check:\n{out}"
    );
    // The same message as without --dry-run.
    assert!(
        out.stderr
            .contains("the processor could not reach Kafka or the topic"),
        "{out}"
    );
    assert!(out.stderr.contains("the daemon was not started"), "{out}");

    // The properties, rendered and redacted, on stdout all the same.
    for expected in [
        "streamName = kafka-kinesis-replicator-test",
        "applicationName = replicator-app-name",
        "regionName = eu-west-1",
        "initialPositionInStream = LATEST",
        "callProcessRecordsEvenForEmptyRecordList = true",
        "AwsCredentialsProvider = StsAssumeRoleCredentialsProvider|<redacted>",
        "shutdownGraceMillis = ",
        "retrievalMode = ",
        "metricsLevel = ",
    ] {
        assert!(
            out.stdout.contains(expected),
            "--dry-run output lacks {expected:?}:\n{out}"
        );
    }
    assert!(
        !out.all().contains("role/kinesis-reader"),
        "the provider's arguments were printed:\n{out}"
    );
    // Printed before the check ran: first on stdout, before the configuration that the
    // processor's --check-config prints (a JSON object) when it starts.
    assert!(
        out.stdout.starts_with("# Dry run: rendered "),
        "something came before the properties:\n{out}"
    );
    let check_printed_at = out.stdout.find('{').unwrap_or(out.stdout.len());
    assert!(
        out.stdout.find("streamName = ").unwrap() < check_printed_at,
        "the properties came after the Kafka check:\n{out}"
    );
    assert!(
        !out.stdout.contains("The daemon would run"),
        "a failed check printed the Java command:\n{out}"
    );
    assert!(!scratch.java_started(), "--dry-run started java:\n{out}");
    assert_no_secrets("run.sh --dry-run output", &out.all());
    assert_no_secrets_in_work_dir(&scratch);
}

#[test]
fn dry_run_with_kafka_reachable_prints_properties_and_the_java_command_and_starts_nothing() {
    let scratch = Scratch::new("dry-run");
    let kafka = Kafka::start(
        1,
        &env_value(&parse_env_file(PYTHON_ENV_FILE), "KAFKA_TOPIC"),
        4,
    );
    let mut env = plaintext_env_for(&kafka.bootstrap());
    // A secret system property in JAVA_OPTS is redacted on the printed command line.
    set(
        &mut env,
        "JAVA_OPTS",
        "-Xmx512m -Djavax.net.ssl.trustStorePassword=example-truststore-password",
    );

    let out = run_sh(&scratch, &env, &["--dry-run"]);
    assert!(out.status.success(), "run.sh --dry-run failed:\n{out}");
    // The daemon starts our binary with the template beside run.sh.
    let executable = format!(
        "executableName = {} --config {}",
        binary().display(),
        repo().join("replicator.template").display()
    );
    for expected in [
        "streamName = kafka-kinesis-replicator-test",
        "applicationName = replicator-app-name",
        "regionName = eu-west-1",
        "AwsCredentialsProvider = DefaultCredentialsProvider",
        "callProcessRecordsEvenForEmptyRecordList = true",
        "shutdownGraceMillis = ",
        executable.as_str(),
        "The daemon would run",
        "-Dfile.encoding=UTF-8",
        "-Xmx512m",
        "-Djavax.net.ssl.trustStorePassword=<redacted>",
        "software.amazon.kinesis.multilang.MultiLangDaemon",
    ] {
        assert!(
            out.stdout.contains(expected),
            "--dry-run output lacks {expected:?}:\n{out}"
        );
    }
    // The properties come before the Java command.
    assert!(
        out.stdout.find("streamName = ").unwrap()
            < out.stdout.find("The daemon would run").unwrap(),
        "{out}"
    );
    assert!(!scratch.java_started(), "--dry-run started java:\n{out}");
    assert!(
        !out.all().contains("example-truststore-password"),
        "a JAVA_OPTS secret was printed:\n{out}"
    );
    assert_no_secrets("run.sh --dry-run output", &out.all());
    assert_no_secrets_in_work_dir(&scratch);
}

#[test]
fn local_hands_every_other_argument_to_the_quickstart_without_checking_variables() {
    // A copy of run.sh beside a stand-in quickstart, so that the real one is not started.
    let scratch = Scratch::new("local");
    let copy = scratch.path("checkout");
    fs::create_dir_all(copy.join("scripts/local")).unwrap();
    fs::copy(repo().join("run.sh"), copy.join("run.sh")).unwrap();
    fs::write(
        copy.join("scripts/local/quickstart.sh"),
        "printf 'quickstart got:'; printf ' [%s]' \"$@\"; printf '\\n'; exit 7\n",
    )
    .unwrap();

    // No variable at all: --local needs none.
    let out = run_in(
        Command::new("bash")
            .arg(copy.join("run.sh"))
            .args(["--for", "30", "--local", "--help"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default()),
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "the quickstart's exit code:\n{out}"
    );
    assert_eq!(
        out.stdout.trim(),
        "quickstart got: [--for] [30] [--help]",
        "{out}"
    );
    assert!(!out.stderr.contains("missing"), "{out}");

    // run.sh's own help names the entry point.
    let help = run_in(Command::new(repo().join("run.sh")).arg("--help"));
    assert!(help.status.success(), "{help}");
    assert!(help.stdout.contains("--local"), "{help}");
    assert!(help.stdout.contains("--for"), "{help}");
    assert!(
        help.stdout.contains("replicator.template")
            || help.stdout.contains("kcl.properties.template"),
        "{help}"
    );
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

/// The env file as it is, pointed at `bootstrap`.
fn python_env_for(bootstrap: &str) -> Vec<(String, String)> {
    let mut env = parse_env_file(PYTHON_ENV_FILE);
    set(&mut env, "KAFKA_BOOTSTRAP_SERVERS", bootstrap);
    env
}

/// The env file pointed at the mock cluster, which speaks no SASL. The SASL variables stay
/// set (and unused), so their values are still there to leak if redaction failed.
fn plaintext_env_for(bootstrap: &str) -> Vec<(String, String)> {
    let mut env = python_env_for(bootstrap);
    set(&mut env, "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT");
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

/// A loopback port that was free a moment ago, closed again: connections to it are refused.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    run_in(
        Command::new(repo().join("run.sh"))
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("REPLICATOR_BIN", binary())
            .env("KCL_JARS_DIR", scratch.path("jars"))
            .env("REPLICATOR_WORK_DIR", scratch.path("work"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(scratch.path("")),
    )
}

/// Runs `cmd` to its end (at most `RUN_TIMEOUT`), collecting its output.
fn run_in(cmd: &mut Command) -> RunOutput {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start run.sh");
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

/// Nothing run.sh rendered holds a secret.
fn assert_no_secrets_in_work_dir(scratch: &Scratch) {
    let Ok(files) = fs::read_dir(scratch.path("work")) else {
        return;
    };
    for file in files {
        let path = file.unwrap().path();
        let text = fs::read_to_string(&path).unwrap_or_default();
        assert_no_secrets(&path.display().to_string(), &text);
    }
}

// ------------------------------------------------------------------------------------------
// Scratch directory: bin/java (a tripwire), jars/ (a dummy jar), work/
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
        // run.sh only checks that KCL_JARS_DIR has jars; it then skips Maven.
        fs::write(
            dir.join("jars/amazon-kinesis-client-multilang-3.1.3.jar"),
            b"",
        )
        .unwrap();
        let scratch = Scratch { dir };
        // `java` records that it was started, and fails: no test here may get that far.
        scratch.write_executable(
            "bin/java",
            "#!/bin/sh\necho \"java $*\" > \"$(dirname \"$0\")/../java-started\"\nexit 97\n",
        );
        scratch
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    fn java_started(&self) -> bool {
        self.path("java-started").exists()
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
