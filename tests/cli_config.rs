//! The command line and the configuration: --version, --help, --check-config, the template's
//! `${VAR}` expansion, redaction of secrets, and refusing bad configuration with exit 2.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::config::*;
use support::daemon::*;
use support::kafka::*;
use support::*;

const RUN: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(20);

/// The repository's own template, which run.sh renders.
fn repo_template() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("replicator.template");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_config(config: &ConfigFile) -> Output {
    let mut command = config.command();
    command.arg("--check-config");
    run(command, RUN)
}

/// The first JSON object printed on stdout (the redacted configuration).
fn printed_config(out: &Output) -> Value {
    let start = out
        .stdout
        .find('{')
        .unwrap_or_else(|| panic!("no JSON on stdout: {out:?}"));
    serde_json::Deserializer::from_str(&out.stdout[start..])
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("stdout does not start a JSON object: {out:?}"))
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

#[test]
fn version_prints_the_package_version() {
    let dir = TempDir::new();
    let mut command = clean_command(dir.path());
    command.arg("--version");
    let out = run(command, RUN);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")), "{out:?}");
    assert!(out.stdout.contains("kinesis-kafka-replicator"), "{out:?}");
}

#[test]
fn help_describes_every_option() {
    let dir = TempDir::new();
    let mut command = clean_command(dir.path());
    command.arg("--help");
    let out = run(command, RUN);
    assert_eq!(out.code, Some(0), "{out:?}");
    for option in [
        "--config",
        "--check-config",
        "--version",
        "--help",
        "REPLICATOR_CONFIG",
    ] {
        assert!(
            out.stdout.contains(option),
            "--help must mention {option}: {out:?}"
        );
    }
}

#[test]
fn unknown_argument_is_a_usage_error() {
    let dir = TempDir::new();
    let mut command = clean_command(dir.path());
    command.arg("--frobnicate");
    let out = run(command, RUN);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("--frobnicate"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn check_config_against_a_running_cluster_succeeds() {
    let kafka = Kafka::start(3, "checked", 4);
    let config = write_config(&base_config(&kafka.bootstrap(), "checked"));
    let out = check_config(&config);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        printed_config(&out)["kafka"]["topic"],
        json!("checked"),
        "{out:?}"
    );
}

#[test]
fn check_config_with_no_broker_listening_exits_1_within_15_seconds() {
    let port = closed_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let config = write_config(&base_config(&bootstrap, "nowhere"));
    let out = check_config(&config);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.elapsed < Duration::from_secs(15),
        "took {:?}",
        out.elapsed
    );
    assert!(
        out.stderr.contains(&bootstrap),
        "the message names the bootstrap servers: {out:?}"
    );
}

#[test]
fn check_config_with_a_missing_topic_exits_1_naming_it() {
    let kafka = Kafka::start(1, "present", 1);
    let config = write_config(&base_config(&kafka.bootstrap(), "absent-topic"));
    let out = check_config(&config);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("absent-topic"), "{out:?}");
}

#[test]
fn password_with_quote_and_backslash_is_expanded_from_the_environment_and_redacted() {
    let kafka = Kafka::start(1, "secret", 1);
    let password = r#"pa"ss\word"#;
    let client_id = r#"client "quoted" \ id"#;
    let config = write_config_text(&repo_template());
    // The settings of the Python replicator's example env file.
    let env = |command: &mut std::process::Command| {
        command
            .env("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap())
            .env("KAFKA_TOPIC", "secret")
            .env("KAFKA_CLIENT_ID", client_id)
            .env("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
            .env("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
            .env("KAFKA_SASL_USERNAME", "alice")
            .env("KAFKA_SASL_PASSWORD", password);
    };
    let leaked = |text: &str| {
        ["pa\"ss", r#"pa\"ss"#, "ss\\word"]
            .iter()
            .any(|l| text.contains(l))
    };

    let mut command = config.command();
    command.arg("--check-config");
    env(&mut command);
    let out = run(command, RUN);
    // The mock broker has no SASL, so the connection check itself may fail (1); the
    // configuration is valid (not 2).
    assert_ne!(out.code, Some(2), "a valid configuration: {out:?}");
    let shown = printed_config(&out);
    assert_eq!(shown["kafka"]["client_id"], json!(client_id), "{out:?}");
    assert_eq!(shown["kafka"]["sasl_username"], json!("alice"), "{out:?}");
    assert_eq!(
        shown["kafka"]["sasl_mechanism"],
        json!("SCRAM-SHA-512"),
        "{out:?}"
    );
    assert!(
        shown["kafka"]["sasl_password"].is_string()
            && shown["kafka"]["sasl_password"] != json!(password),
        "shown, but redacted: {out:?}"
    );
    assert!(!leaked(&out.stdout), "password on stdout: {out:?}");
    assert!(!leaked(&out.stderr), "password on stderr: {out:?}");

    // Child mode with the same template starts, answers, exits 0 on EOF, and never logs the
    // secret (debug log level).
    let mut command = config.command();
    env(&mut command);
    let mut d = Daemon::spawn(command);
    d.initialize(SHARD, TRIM_HORIZON);
    d.lease_lost();
    assert_eq!(d.wait_exit(EXIT).code(), Some(0), "{}", d.dump());
    assert!(!leaked(&d.stderr()), "{}", d.dump());
}

#[test]
fn the_repository_template_works_with_only_bootstrap_and_topic_set() {
    let kafka = Kafka::start(1, "templated", 2);
    let config = write_config_text(&repo_template());
    let mut command = config.command();
    command
        .arg("--check-config")
        .env("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap())
        .env("KAFKA_TOPIC", "templated");
    let out = run(command, RUN);
    assert_eq!(out.code, Some(0), "{out:?}");
    let shown = printed_config(&out);
    assert_eq!(
        shown["kafka"]["client_id"],
        json!("kinesis-kafka-replicator")
    );
}

#[test]
fn undefined_placeholder_without_default_is_a_configuration_error_naming_it() {
    let config = write_config_text(&repo_template());
    let mut command = config.command();
    command
        .arg("--check-config")
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9");
    let out = run(command, RUN);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("KAFKA_TOPIC"), "{out:?}");
}

#[test]
fn placeholder_default_is_used_when_the_variable_is_unset() {
    let kafka = Kafka::start(1, "fallback-topic", 1);
    let config = write_config_text(&format!(
        r#"{{"kafka": {{"bootstrap_servers": "{}", "topic": "${{KAFKA_TOPIC:-fallback-topic}}"}}}}"#,
        kafka.bootstrap()
    ));
    let out = check_config(&config);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        printed_config(&out)["kafka"]["topic"],
        json!("fallback-topic")
    );
}

#[test]
fn numbers_and_booleans_may_be_given_as_strings() {
    let kafka = Kafka::start(1, "strings", 1);
    let config = write_config(&config_with(
        &kafka.bootstrap(),
        "strings",
        json!({
            "checkpoint": {"freq_seconds": "0", "retries": "3", "sleep_seconds": "0.05"},
            "records": {"headers": "false"},
            "pipeline": {"wait_for_ack": "true", "max_in_flight_records": "100", "max_in_flight_bytes": "1048576"},
            "shutdown": {"flush_timeout_seconds": "2"},
            "log": {"summary_interval_seconds": "60"}
        }),
    ));
    let out = check_config(&config);
    assert_eq!(out.code, Some(0), "{out:?}");
    // And they take effect: headers off, wait_for_ack on.
    let mut d = Daemon::spawn(config.command());
    d.initialize(SHARD, TRIM_HORIZON);
    let all = records(0, 10);
    d.process_records(&all, Some(0));
    assert_eq!(d.lease_checkpoint(), all[9].ext_seq(), "{}", d.dump());
    d.shard_ended();
    assert!(d.wait_exit(EXIT).success(), "{}", d.dump());
    let messages = kafka.read(all.len(), Duration::from_secs(20));
    assert_delivered_by_value(&messages, &all);
    assert!(messages.iter().all(|m| m.headers.is_empty()));
}

#[test]
fn unknown_config_key_is_a_configuration_error_naming_it() {
    let config = write_config(&config_with(
        "127.0.0.1:9",
        "t",
        json!({"checkpoint": {"frequency_seconds": 5}}),
    ));
    let out = check_config(&config);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("frequency_seconds"), "{out:?}");

    // In child mode too, before any protocol line.
    let mut d = Daemon::spawn(config.command());
    let status = d.wait_exit(EXIT);
    assert_eq!(status.code(), Some(2), "{}", d.dump());
    assert!(d.stdout_lines().is_empty(), "{}", d.dump());
    assert!(d.stderr().contains("frequency_seconds"), "{}", d.dump());
}

#[test]
fn missing_topic_setting_is_a_configuration_error() {
    let config = write_config(&json!({"kafka": {"bootstrap_servers": "127.0.0.1:9"}}));
    let out = check_config(&config);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("topic"), "{out:?}");
}

#[test]
fn malformed_number_is_a_configuration_error_naming_the_setting() {
    let config = write_config(&config_with(
        "127.0.0.1:9",
        "t",
        json!({"checkpoint": {"sleep_seconds": "soon"}}),
    ));
    let out = check_config(&config);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("sleep_seconds"), "{out:?}");
}

#[test]
fn missing_config_file_is_a_configuration_error_naming_the_path() {
    let dir = TempDir::new();
    let path = dir.path().join("does-not-exist.json");
    let mut command = clean_command(dir.path());
    command.arg("--check-config").arg("--config").arg(&path);
    let out = run(command, RUN);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("does-not-exist.json"), "{out:?}");
}

#[test]
fn config_path_defaults_to_replicator_config_env_then_the_working_directory_template() {
    let kafka = Kafka::start(1, "from-env-path", 1);
    kafka
        .cluster
        .create_topic("from-working-directory", 1, 1)
        .expect("create the second topic");
    let config = write_config(&base_config(&kafka.bootstrap(), "from-env-path"));
    // The working directory holds a replicator.template of its own.
    let cwd = TempDir::new();
    std::fs::write(
        cwd.path().join("replicator.template"),
        serde_json::to_string(&base_config(&kafka.bootstrap(), "from-working-directory"))
            .expect("json"),
    )
    .expect("write");

    // $REPLICATOR_CONFIG wins over the working directory's template.
    let mut command = clean_command(cwd.path());
    command
        .arg("--check-config")
        .env("REPLICATOR_CONFIG", &config.path);
    let out = run(command, RUN);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        printed_config(&out)["kafka"]["topic"],
        json!("from-env-path")
    );

    // No --config, no REPLICATOR_CONFIG: replicator.template in the working directory.
    let mut command = clean_command(cwd.path());
    command.arg("--check-config");
    let out = run(command, RUN);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        printed_config(&out)["kafka"]["topic"],
        json!("from-working-directory")
    );
}
