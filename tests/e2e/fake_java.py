#!/usr/bin/env python3
"""A stand-in for `java ... software.amazon.kinesis.multilang.MultiLangDaemon`.

The run.sh end-to-end test (tests/e2e_run_sh.rs) puts this script first on PATH as `java`,
so that run.sh's final `exec java ...` lands here instead of in a JVM. It does what the
real daemon does with run.sh's output, following /work/shared/docs/multilang-protocol.md:

  * parses the java command line (JVM options, -cp, main class, --properties-file, -l);
  * reads kcl.properties like java.util.Properties (ISO-8859-1, escapes, continuations)
    and refuses to start without the keys the daemon needs;
  * spawns one child per shard from `executableName` exactly as the daemon does: split on
    the regex " +", no shell, inheriting this process's working directory and environment;
  * talks to each child with the JVM's default charset: UTF-8 only when -Dfile.encoding
    says so or the locale is UTF-8 (Java 17 rules), so a missing -Dfile.encoding turns
    non-ASCII partition keys into '?' here too;
  * drives initialize, processRecords (batches from the JSON file named by E2E_RECORDS;
    empty batches only when callProcessRecordsEvenForEmptyRecordList = true) and
    shardEnded, answering checkpoints with the daemon's range rules and error names, and
    requires the shard-end checkpoint (SHARD_END) like ShutdownTask does;
  * parses child stdout like the daemon's Jackson reader (empty lines skipped silently;
    unparseable lines, unknown actions and unknown properties skipped with a log line)
    and fails the whole "daemon" on a mismatched status, a dead child, or a child that
    does not exit after its stdin is closed.

It is minimal where the real daemon is distributed: no Kinesis, no leases, no retries of
failed tasks, and a bounded wait (E2E_ACTION_TIMEOUT seconds, default 60) where the daemon
waits forever. It writes everything it saw to the JSON file named by E2E_TRANSCRIPT (first
a start marker, then the full transcript) and exits 0 only if every shard ended with a
SHARD_END checkpoint and the child exited 0.
"""

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time

MAIN_CLASS = "software.amazon.kinesis.multilang.MultiLangDaemon"
SENTINELS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
SHARD_END = "SHARD_END"
EOF = object()


def log(level, message):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    sys.stderr.write(f"{stamp} {level:5} [fake-java] {message}\n")
    sys.stderr.flush()


def die(message):
    """What the JVM does on a startup error: a message on stderr and exit 1."""
    log("ERROR", message)
    sys.exit(1)


# --------------------------------------------------------------------------------------
# Command line and properties
# --------------------------------------------------------------------------------------


def parse_command_line(argv):
    jvm_options, classpath, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-cp", "-classpath", "--class-path"):
            if i + 1 >= len(argv):
                die(f"{arg} requires class path specification")
            classpath = argv[i + 1]
            i += 2
        elif arg.startswith("-"):
            jvm_options.append(arg)
            i += 1
        else:
            break
    if i >= len(argv):
        die("no main class given")
    main_class, rest = argv[i], argv[i + 1 :]
    if main_class != MAIN_CLASS:
        die(f"Could not find or load main class {main_class}")
    properties_file, log_configuration, positional, j = None, None, [], 0
    while j < len(rest):
        if rest[j] in ("-p", "--properties-file") and j + 1 < len(rest):
            properties_file = rest[j + 1]
            j += 2
        elif rest[j] in ("-l", "--log-configuration") and j + 1 < len(rest):
            log_configuration = rest[j + 1]
            j += 2
        else:
            positional.append(rest[j])
            j += 1
    if len(positional) > 1:
        die("Expected a single argument, but found multiple arguments.")
    if positional and properties_file is None:
        properties_file = positional[0]
    if not properties_file:
        die("Properties file missing, please provide a properties file")
    return {
        "jvm_options": jvm_options,
        "classpath": classpath,
        "main_class": main_class,
        "properties_file": properties_file,
        "log_configuration": log_configuration,
    }


def check_classpath(classpath):
    """The JVM expands `dir/*` to the jars in dir; without any, the main class is missing."""
    if not classpath:
        die(f"Could not find or load main class {MAIN_CLASS} (no -cp)")
    jars = []
    for entry in classpath.split(os.pathsep):
        if entry.endswith("/*"):
            directory = entry[:-2]
            if os.path.isdir(directory):
                jars += [f for f in os.listdir(directory) if f.endswith((".jar", ".JAR"))]
        elif os.path.exists(entry):
            jars.append(entry)
    if not jars:
        die(f"Could not find or load main class {MAIN_CLASS} (no jars in {classpath})")
    return jars


def unescape(text):
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 >= len(text):
            out.append(c)
            i += 1
            continue
        n = text[i + 1]
        if n == "u" and i + 6 <= len(text):
            out.append(chr(int(text[i + 2 : i + 6], 16)))
            i += 6
            continue
        out.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(n, n))
        i += 2
    return "".join(out)


def load_properties(path):
    """java.util.Properties.load(InputStream): ISO-8859-1, '#'/'!' comments, continuation
    lines, key ends at the first unescaped '=', ':' or whitespace. Later keys win."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("iso-8859-1")
    except OSError as e:
        die(f"Error while reading properties file: {e}")
    physical = re.split(r"\r\n|\r|\n", text)
    props, i = {}, 0
    while i < len(physical):
        line = physical[i].lstrip(" \t\f")
        i += 1
        if not line or line[0] in "#!":
            continue
        while True:
            trailing = len(line) - len(line.rstrip("\\"))
            if trailing % 2 == 1 and i < len(physical):
                line = line[:-1] + physical[i].lstrip(" \t\f")
                i += 1
            else:
                break
        key_end, j = len(line), 0
        while j < len(line):
            if line[j] == "\\":
                j += 2
                continue
            if line[j] in "=: \t\f":
                key_end = j
                break
            j += 1
        key, rest = line[:key_end], line[key_end:].lstrip(" \t\f")
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(" \t\f")
        props[unescape(key)] = unescape(rest)
    return props


def check_properties(props):
    """The keys MultiLangDaemonConfig and KinesisClientLibConfigurator insist on."""
    for key in ("executableName", "applicationName"):
        if not props.get(key, "").strip():
            die(f"Property {key} must be set (IllegalArgumentException)")
    if not (props.get("streamName", "").strip() or props.get("streamArn", "").strip()):
        die("Stream name or stream ARN must be specified (IllegalArgumentException)")
    if not any(k.lower() == "awscredentialsprovider" and v.strip() for k, v in props.items()):
        die("Property AwsCredentialsProvider is missing.")


def split_executable(executable):
    """String.split(" +"): split on runs of spaces only, trailing empty strings removed."""
    parts = re.split(" +", executable)
    while parts and parts[-1] == "":
        parts.pop()
    return parts


def default_charset(jvm_options):
    """Java 17: -Dfile.encoding wins; otherwise the locale (LC_ALL, LC_CTYPE, LANG); a
    locale without UTF-8 (C, POSIX, unset) means US-ASCII, where unmappable characters
    are written as '?'."""
    for option in jvm_options:
        if option.startswith("-Dfile.encoding="):
            name = option.split("=", 1)[1]
            return "utf-8" if name.replace("-", "").lower() == "utf8" else name.lower()
    for var in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = os.environ.get(var)
        if value:
            return "utf-8" if re.search(r"utf-?8", value, re.I) else "ascii"
    return "ascii"


# --------------------------------------------------------------------------------------
# Sequence numbers (ExtendedSequenceNumber ordering)
# --------------------------------------------------------------------------------------


def ext_key(seq, sub):
    """Sentinels sort below every record and SHARD_END above; then (seq, sub)."""
    if seq in SENTINELS:
        return (0, 0, 0)
    if seq == SHARD_END:
        return (2, 0, 0)
    return (1, int(seq), sub or 0)


def show(position):
    seq, sub = position
    return seq if seq in SENTINELS or seq == SHARD_END else f"{seq}/{sub}"


# --------------------------------------------------------------------------------------
# One child per shard
# --------------------------------------------------------------------------------------


class DaemonFailure(Exception):
    """What makes the real daemon call System.exit(1) (or halt on a timeout)."""


class Shard:
    def __init__(self, spec, argv, charset, call_empty, timeout, transcript, lock):
        self.shard_id = spec["shardId"]
        self.batches = spec["batches"]
        self.argv = argv
        self.charset = charset
        self.call_empty = call_empty
        self.timeout = timeout
        self.lock = lock
        self.record = {
            "messages": [],
            "checkpoints": [],
            "stderr": [],
            "warnings": [],
            "final_checkpoint": None,
            "exit_code": None,
            "error": None,
        }
        transcript["shards"][self.shard_id] = self.record
        self.lines = queue.Queue()
        self.last_checkpoint = ("TRIM_HORIZON", 0)
        self.largest_permitted = ("TRIM_HORIZON", 0)
        self.last_delivered = None

    # -- plumbing -------------------------------------------------------------------

    def start(self):
        try:
            # No cwd, no env: the child inherits both, as from ProcessBuilder.start().
            self.child = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as e:
            raise DaemonFailure(f"could not start {self.argv!r}: {e}")
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self.stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self.stderr_thread.start()

    def _read_stdout(self):
        for raw in self.child.stdout:
            line = raw.decode(self.charset, errors="replace")
            self.lines.put(line[:-2] if line.endswith("\r\n") else line.rstrip("\n"))
        self.lines.put(EOF)

    def _drain_stderr(self):
        # DrainChildSTDERRTask: every line is logged at ERROR and kept.
        for raw in self.child.stderr:
            line = raw.decode(self.charset, errors="replace").rstrip("\r\n")
            with self.lock:
                self.record["stderr"].append(line)
            log("ERROR", f"Received error line from subprocess [{line}] for shard {self.shard_id}")

    def send(self, message):
        line = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        self.record["messages"].append({"to_child": line})
        try:
            self.child.stdin.write((line + "\n").encode(self.charset, errors="replace"))
            self.child.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise DaemonFailure(f"{self.shard_id}: writing to the child failed: {e}")

    def next_message(self, action):
        """The next message the daemon's Jackson reader would accept, or a failure."""
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise DaemonFailure(
                    f"{self.shard_id}: no message from the child for {self.timeout} s during {action}"
                )
            if line is EOF:
                raise DaemonFailure(f"{self.shard_id}: the child closed stdout during {action}")
            self.record["messages"].append({"from_child": line})
            if line == "":
                continue
            message = parse_child_line(line)
            if isinstance(message, str):
                self.record["warnings"].append(f"{message}: {line}")
                log("INFO", f"{self.shard_id}: Skipping unexpected line on STDOUT ({message}): {line}")
                continue
            return message

    # -- the conversation --------------------------------------------------------------

    def run(self):
        self.start()
        self.send(
            {"action": "initialize", "shardId": self.shard_id,
             "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0}
        )
        self.wait_for_status("initialize", checkpointer=None)
        for batch in self.batches:
            records = batch["records"]
            if not records and not self.call_empty:
                continue
            for r in records:
                position = (r["sequenceNumber"], r.get("subSequenceNumber") or 0)
                if ext_key(*position) > ext_key(*self.largest_permitted):
                    self.largest_permitted = position
                self.last_delivered = self.largest_permitted
            self.send(
                {"action": "processRecords",
                 "records": [dict(r, action="record") for r in records],
                 "millisBehindLatest": batch.get("millisBehindLatest", 0)}
            )
            self.wait_for_status("processRecords", checkpointer="records")
        self.send({"action": "shardEnded"})
        self.wait_for_status("shardEnded", checkpointer="shard_end")
        self.finish()

    def wait_for_status(self, action, checkpointer):
        while True:
            message = self.next_message(action)
            kind = message["action"]
            if kind == "checkpoint":
                self.checkpoint(message, checkpointer)
            elif kind == "status":
                if message.get("responseFor") != action:
                    raise DaemonFailure(
                        f"{self.shard_id}: status responseFor {message.get('responseFor')!r} "
                        f"while waiting for {action!r}"
                    )
                return
            # Any other message type parses and is dropped without a log line.

    def checkpoint(self, message, checkpointer):
        seq = message.get("sequenceNumber")
        sub = message.get("subSequenceNumber")
        error = None
        if checkpointer is None:
            error = "InvalidStateException"
        elif seq is None:
            target = (SHARD_END, 0) if checkpointer == "shard_end" else self.largest_permitted
            error = self.advance(target)
        elif not isinstance(seq, str) or not seq.isdigit() or (sub is not None and (not isinstance(sub, int) or sub < 0)):
            error = "IllegalArgumentException"
        else:
            target = (seq, sub or 0)
            if checkpointer == "shard_end" and self.last_delivered is not None and \
                    ext_key(*target) == ext_key(*self.last_delivered):
                target = (SHARD_END, 0)
            limit = (SHARD_END, 0) if checkpointer == "shard_end" else self.largest_permitted
            if ext_key(*target) > ext_key(*limit):
                error = "IllegalArgumentException"
            else:
                error = self.advance(target)
        self.record["checkpoints"].append(
            {"sequenceNumber": seq, "subSequenceNumber": sub, "error": error,
             "stored": show(self.last_checkpoint)}
        )
        self.send({"action": "checkpoint", "sequenceNumber": seq,
                   "subSequenceNumber": sub, "error": error})

    def advance(self, target):
        if ext_key(*target) < ext_key(*self.last_checkpoint):
            return "IllegalArgumentException"
        self.last_checkpoint = target
        return None

    def finish(self):
        """childProcessShutdownSequence: close stdin, drain stdout, wait for the exit."""
        try:
            self.child.stdin.close()
        except OSError:
            pass
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is EOF:
                break
            self.record["messages"].append({"from_child_after_end": line})
        try:
            code = self.child.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            self.child.kill()
            raise DaemonFailure(f"{self.shard_id}: the child did not exit after its stdin was closed")
        self.stderr_thread.join(timeout=5)
        self.record["exit_code"] = code
        self.record["final_checkpoint"] = show(self.last_checkpoint)
        if self.last_checkpoint[0] != SHARD_END:
            raise DaemonFailure(f"{self.shard_id}: Application didn't checkpoint at end of shard")
        if code != 0:
            raise DaemonFailure(f"{self.shard_id}: the child exited with {code}")

    def kill(self):
        child = getattr(self, "child", None)
        if child is not None and child.poll() is None:
            child.kill()


ALLOWED = {
    "status": {"action", "responseFor"},
    "checkpoint": {"action", "sequenceNumber", "subSequenceNumber", "error"},
}
OTHER_TYPES = {"initialize", "processRecords", "shutdown", "shutdownRequested", "leaseLost", "shardEnded"}


def parse_child_line(line):
    """Jackson's readValue(line, Message.class): a dict for an accepted message, or a
    string saying why the line was skipped."""
    try:
        value, _ = json.JSONDecoder().raw_decode(line.strip())
    except ValueError:
        return "not JSON"
    if not isinstance(value, dict) or "action" not in value:
        return "no action"
    action = value["action"]
    if action in ALLOWED:
        unknown = set(value) - ALLOWED[action]
        if unknown:
            return f"unknown properties {sorted(unknown)}"
        return value
    if action in OTHER_TYPES:
        return value
    return f"unknown action {action!r}"


# --------------------------------------------------------------------------------------


def write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def main():
    transcript_path = os.environ.get("E2E_TRANSCRIPT")
    records_path = os.environ.get("E2E_RECORDS")
    if not transcript_path or not records_path:
        die("E2E_TRANSCRIPT and E2E_RECORDS must name the transcript and records files")
    write_json(transcript_path, {"started": True, "argv": sys.argv})
    timeout = float(os.environ.get("E2E_ACTION_TIMEOUT", "60"))

    command = parse_command_line(sys.argv[1:])
    jars = check_classpath(command["classpath"])
    if command["log_configuration"] and not os.path.isfile(command["log_configuration"]):
        die(f"Error while loading log configuration: {command['log_configuration']} not found")
    props = load_properties(command["properties_file"])
    check_properties(props)
    argv = split_executable(props["executableName"])
    charset = default_charset(command["jvm_options"])
    call_empty = props.get("callProcessRecordsEvenForEmptyRecordList", "").strip().lower() == "true"
    with open(records_path, encoding="utf-8") as f:
        shards = json.load(f)["shards"]

    transcript = dict(command, argv=sys.argv, jars=jars, properties=props,
                      executable_argv=argv, charset=charset, cwd=os.getcwd(), shards={},
                      result=None, failures=[])
    lock = threading.Lock()
    workers = [Shard(spec, argv, charset, call_empty, timeout, transcript, lock) for spec in shards]
    log("INFO", f"starting {len(workers)} shard(s) with {argv!r}, charset {charset}")

    failures = []

    def run(worker):
        try:
            worker.run()
        except DaemonFailure as e:
            with lock:
                failures.append(str(e))
                worker.record["error"] = str(e)
        except Exception as e:  # a bug here must fail the test, not hang it
            with lock:
                failures.append(f"{worker.shard_id}: stand-in error {e!r}")

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for worker in workers:
        worker.kill()

    transcript["failures"] = failures
    transcript["result"] = "failed" if failures else "ok"
    write_json(transcript_path, transcript)
    if failures:
        for failure in failures:
            log("ERROR", failure)
        sys.exit(1)
    log("INFO", "every shard ended with a SHARD_END checkpoint")


if __name__ == "__main__":
    main()
