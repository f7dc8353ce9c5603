//! Config files for the binary and the `Command` that starts it with a clean environment.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_kinesis-kafka-replicator");

/// Environment variables the binary (or librdkafka, or the logger) could read: removed from
/// every child so that the developer's shell cannot leak into a test.
const ENV_PREFIXES: &[&str] = &["KAFKA_", "KCL_", "REPLICATOR_"];
const ENV_NAMES: &[&str] = &[
    "CHECKPOINT_RETRIES",
    "CHECKPOINT_FREQ_SECONDS",
    "SLEEP_SECONDS",
    "NUMBER_OF_SHARDS",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "kkr-test-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A config file in its own temp dir (also the child's working directory).
pub struct ConfigFile {
    pub dir: TempDir,
    pub path: PathBuf,
}

impl ConfigFile {
    /// `kinesis-kafka-replicator --config PATH`, clean environment, working directory = the
    /// temp dir, `KCL_LOG_LEVEL=debug`.
    pub fn command(&self) -> Command {
        let mut command = clean_command(self.dir.path());
        command.arg("--config").arg(&self.path);
        command
    }
}

/// The binary with no arguments, a clean environment, `KCL_LOG_LEVEL=debug`, run in `cwd`.
pub fn clean_command(cwd: &Path) -> Command {
    let mut command = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if ENV_PREFIXES.iter().any(|p| name.starts_with(p)) || ENV_NAMES.contains(&name) {
            command.env_remove(name);
        }
    }
    command.env("KCL_LOG_LEVEL", "DEBUG").current_dir(cwd);
    command
}

/// The config every scenario starts from: fast checkpoints and retries for tests.
pub fn base_config(bootstrap: &str, topic: &str) -> Value {
    json!({
        "kafka": { "bootstrap_servers": bootstrap, "topic": topic },
        "checkpoint": { "freq_seconds": 0, "retries": 5, "sleep_seconds": 0.05 },
        "shutdown": { "flush_timeout_seconds": 10 }
    })
}

/// `base_config` with `patch` merged in (objects merged recursively, other values replaced).
pub fn config_with(bootstrap: &str, topic: &str, patch: Value) -> Value {
    let mut config = base_config(bootstrap, topic);
    merge(&mut config, patch);
    config
}

pub fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, patch) => *base = patch,
    }
}

/// Write `config` as JSON to `replicator.json` in a new temp dir.
pub fn write_config(config: &Value) -> ConfigFile {
    write_config_text(&serde_json::to_string_pretty(config).expect("config serializes"))
}

/// Write `text` verbatim (e.g. a template with `${VAR}` placeholders).
pub fn write_config_text(text: &str) -> ConfigFile {
    let dir = TempDir::new();
    let path = dir.path().join("replicator.json");
    std::fs::write(&path, text).expect("write config");
    ConfigFile { dir, path }
}

/// What a finished command-line run produced.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

/// Run `command` to completion with stdin closed, killing it (and failing) after `timeout`.
pub fn run(mut command: Command, timeout: std::time::Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let started = std::time::Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_thread.join().unwrap_or_default();
            panic!(
                "{command:?} did not finish within {timeout:?} (killed); stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    Output {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed,
    }
}
