"""The Python replicator's env file, as its users have it, SASL/SCRAM included.

Every variable of the article's env file is used as it is, except KAFKA_BOOTSTRAP_SERVERS,
which must point at this machine: the broker's SCRAM listener (SASL_PLAINTEXT, SCRAM-SHA-512,
kafka-user/kafka-password), the only Kafka address the replicator is given. So the stream,
the application (lease table) and the topic keep the file's names, the region is eu-west-1
(both emulators keep a namespace per region: the stream and the lease table exist only
there), the position is LATEST, the credentials are the file's fake ones through
DefaultCredentialsProvider, CHECKPOINT_FREQ_SECONDS is 30 and the daemon logs at DEBUG.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException
from conftest import PYTHON_ENV_FILE, assert_complete, parse_env_file, secrets_in, wait_until
from kkrlocal.env import RUN_SH
from kkrlocal.records import Writer, checkpoint_gaps, read_topic, reckon

FILE_ENV = parse_env_file(PYTHON_ENV_FILE)
REGION = FILE_ENV["KCL_REGION"]
SECRETS = [FILE_ENV["KAFKA_SASL_PASSWORD"], FILE_ENV["AWS_SECRET_ACCESS_KEY"], FILE_ENV["AWS_SESSION_TOKEN"]]
# A wrong password that can be searched for in the output (a bare "wrong" could be a word
# of an error message).
WRONG_PASSWORD = "wrong-password-4d1c9e"


def scram_conf(password: str) -> dict[str, str]:
    """What a Kafka client of the file's SCRAM listener needs."""
    return {
        "security.protocol": FILE_ENV["KAFKA_SECURITY_PROTOCOL"],
        "sasl.mechanism": FILE_ENV["KAFKA_SASL_MECHANISM"],
        "sasl.username": FILE_ENV["KAFKA_SASL_USERNAME"],
        "sasl.password": password,
    }



def files_with_secrets(root: Path, secrets: list[str]) -> dict[str, list[str]]:
    """Every file under `root` that holds one of `secrets`: path -> the secrets found."""
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        hits = secrets_in(path.read_bytes().decode("latin-1"), secrets)
        if hits:
            found[str(path)] = hits
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_python_env_file_verbatim_with_scram(scenario):
    stack = scenario.stack
    env = {**FILE_ENV, "KAFKA_BOOTSTRAP_SERVERS": stack.kafka.sasl_bootstrap}
    assert [k for k in FILE_ENV if FILE_ENV[k] != env[k]] == ["KAFKA_BOOTSTRAP_SERVERS"]
    stream, application, topic = env["KCL_STREAM_NAME"], env["KCL_APPLICATION_NAME"], env["KAFKA_TOPIC"]
    shards = int(env["NUMBER_OF_SHARDS"])

    stack.kafka.create_topic(topic, 4)
    stack.kinesis.create_stream(stream, shards, region=REGION)
    kinesis = stack.kinesis.client_for(REGION)

    # Records put before the daemon took its leases: KCL_INITIAL_POSITION=LATEST skips them
    # (and proves the file's LATEST won over the harness's TRIM_HORIZON default).
    before = Writer(kinesis, stream, rate=0, prefix="before")
    before.put_now(40)

    replicator = stack.replicator(stream=stream, application=application, topic=topic, env=env)
    # The file's values, not the harness's defaults, are what run.sh gets.
    assert {k: replicator.env[k] for k in env} == env
    stack.wait_for_leases(application, shards=shards, timeout=180, region=REGION)
    # The daemon starts a shard's child only after its LATEST iterator is taken (KCL's
    # InitializeTask starts the record fetcher, then calls initialize), so once every shard
    # has its child, every record put from now on is read.
    wait_until("a child per shard", lambda: len(replicator.children()) == shards, timeout=120)
    time.sleep(1)

    writer = Writer(kinesis, stream, rate=100).start(seconds=20)
    writer.wait(90)
    assert not writer.running and not writer.errors, writer.errors

    # Read through the SCRAM listener, with the file's credentials.
    messages = read_topic(stack.kafka.sasl_bootstrap, topic, until_count=writer.count, timeout=240, conf=scram_conf(env["KAFKA_SASL_PASSWORD"]))
    counted = [m for m in messages if m[1]["k"].startswith("key-")]
    before_in_kafka = [m for m in messages if m[1]["k"].startswith("before-")]
    report = reckon(writer, counted)
    report.seconds = round(time.monotonic() - scenario.started, 1)

    # The listener the replicator was given refuses a wrong password: what reached the topic
    # through it was authenticated by SCRAM.
    probe = Consumer({"bootstrap.servers": stack.kafka.sasl_bootstrap, "group.id": "kkr-probe", "log_level": 0, **scram_conf(WRONG_PASSWORD)})
    try:
        refused = False
        try:
            probe.list_topics(topic, timeout=15)
        except KafkaException:
            refused = True
    finally:
        probe.close()

    # CHECKPOINT_FREQ_SECONDS=30 from the file: the last checkpoints come within ~30 s.
    def checkpointed():
        return not checkpoint_gaps(writer, stack.moto.leases(application, REGION))

    try:
        wait_until("checkpoints at the last records", checkpointed, timeout=120, interval=2)
        gaps = {}
    except TimeoutError:
        gaps = checkpoint_gaps(writer, stack.moto.leases(application, REGION))

    # No secret on any command line (the daemon's, the children's: executableName).
    pids = [replicator.service.pid, *replicator.children()]
    cmdlines_with_secrets = {pid: secrets_in(cmdline(pid), SECRETS) for pid in pids if secrets_in(cmdline(pid), SECRETS)}
    children = len(replicator.children())

    # A dry run with the same variables: the rendered properties and the Java command, shown.
    dry_dir = replicator.workdir / "dry-run"
    dry = subprocess.run(
        ["bash", str(RUN_SH), "--dry-run"],
        env={**os.environ, **replicator.env, "REPLICATOR_WORK_DIR": str(dry_dir)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stdout + dry.stderr

    exit_code = replicator.terminate(timeout=90)
    log = replicator.log()

    # The same env with a wrong password: run.sh stops at --check-config, before Java.
    bad_dir = replicator.workdir.parent / f"{replicator.name}-wrong-password"
    started = time.monotonic()
    bad = subprocess.run(
        ["bash", str(RUN_SH)],
        env={**os.environ, **replicator.env, "KAFKA_SASL_PASSWORD": WRONG_PASSWORD, "REPLICATOR_WORK_DIR": str(bad_dir)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    bad_seconds = round(time.monotonic() - started, 1)
    bad_output = bad.stdout + bad.stderr
    print(f"\n--- run.sh with a wrong password: exit {bad.returncode} after {bad_seconds} s ---\n{bad_output}", file=sys.stderr)
    auth_errors = [line for line in bad_output.splitlines() if " ERROR " in line and "authentication failed" in line.lower()]
    # The processor's own closing line (what a reader looks at first), which names the last
    # error librdkafka reported.
    summary = next((line for line in reversed(bad_output.splitlines()) if line.strip() and not line.startswith("run.sh:")), "")

    scenario.record(
        report,
        shards=shards,
        region=REGION,
        put_before_leases=before.count,
        before_leases_in_kafka=len(before_in_kafka),
        children=children,
        daemon_exit=exit_code,
        wrong_password_exit=bad.returncode,
        wrong_password_seconds=bad_seconds,
        wrong_password_error_lines=len(auth_errors),
        wrong_password_summary_names_authentication="authentication" in summary.lower(),
    )

    assert_complete(report)
    assert not before_in_kafka, f"{len(before_in_kafka)} records put before the leases were replicated: KCL_INITIAL_POSITION=LATEST was not honoured"
    assert refused, "the SCRAM listener accepted a wrong password: it proves nothing about authentication"
    assert not gaps, gaps
    assert children == shards
    assert "MultiLangDaemon" in log and f"regionName = {REGION}" in (replicator.workdir / "kcl.properties").read_text()
    # The processor's --check-config printed the producer it runs: SCRAM over SASL_PLAINTEXT
    # to the SCRAM listener, the password shown redacted.
    for shown in (f'"bootstrap.servers": "{stack.kafka.sasl_bootstrap}"', '"security.protocol": "sasl_plaintext"', '"sasl.mechanism": "SCRAM-SHA-512"', '"sasl.username": "kafka-user"'):
        assert shown in log, f"{shown} not in the --check-config output"

    # No secret anywhere: the daemon log (run.sh's stdout and stderr, the daemon's, every
    # child's stderr), every file of REPLICATOR_WORK_DIR (kcl.properties, logback.xml, the
    # dry run's), the dry run's output, the command lines.
    assert not secrets_in(log, SECRETS), f"secrets in {replicator.log_path}: {secrets_in(log, SECRETS)}"
    assert not files_with_secrets(replicator.workdir, SECRETS), files_with_secrets(replicator.workdir, SECRETS)
    assert not secrets_in(dry.stdout + dry.stderr, SECRETS), secrets_in(dry.stdout + dry.stderr, SECRETS)
    assert not cmdlines_with_secrets, cmdlines_with_secrets

    # Wrong password: exit 1 (the Kafka check), authentication named, no JVM, no secret.
    assert bad.returncode == 1, f"run.sh exited {bad.returncode}:\n{bad_output}"
    assert auth_errors, f"no ERROR line saying authentication failed:\n{bad_output}"
    # The check's own verdict names the cause and what to fix, at once (not after its
    # 10 s timeout as "cannot reach Kafka").
    assert "refused the SASL credentials" in summary and "KAFKA_SASL_PASSWORD" in summary, summary
    assert bad_seconds < 8, f"the wrong password took {bad_seconds:.1f} s to be reported"
    assert "MultiLangDaemon" not in bad_output and "software.amazon.kinesis" not in bad_output, bad_output
    assert not secrets_in(bad_output, [*SECRETS, WRONG_PASSWORD]), bad_output
    assert not files_with_secrets(bad_dir, [*SECRETS, WRONG_PASSWORD])
