"""Migration from the Python replicator: same application name, same lease table.

The Python replicator (../shared/bench/kclpy_replicator.py: amazon-kclpy + confluent-kafka,
the baseline reconstructed from the article) runs first, as the MultiLang child of a daemon
started through run.sh, and checkpoints part of the stream. It is stopped (SIGTERM, as
`docker stop` does), and our replicator starts under the same application name: it must go
on from the Python one's checkpoints, neither from TRIM_HORIZON nor past anything.

amazon-kclpy is pure Python (its setup.py only fetches jars), so an unpacked sdist on
PYTHONPATH is enough: KCLPY_DIR when set (CI), else amazon-kclpy==3.1.3 fetched once with pip
into the cache. The python is this one (sys.executable: confluent-kafka and boto3).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from conftest import REPO, assert_complete, wait_until
from kkrlocal.env import CACHE
from kkrlocal.records import count_topic, read_topic, reckon

BENCH = REPO.parent / "shared" / "bench"
KCLPY_VERSION = "3.1.3"  # the KCL it was made for is the daemon's: 3.1.3
SEQUENCE = "kinesis.sequenceNumber"
SHARD = "kinesis.shardId"


def kclpy_dir() -> Path:
    """An unpacked amazon_kclpy sdist: KCLPY_DIR, or one fetched once into the cache. Fails
    loudly (never skips) when it cannot be had."""
    given = os.environ.get("KCLPY_DIR")
    if given:
        path = Path(given)
        if not (path / "amazon_kclpy" / "kcl.py").is_file():
            raise RuntimeError(f"KCLPY_DIR={given} is not an unpacked amazon_kclpy sdist (no amazon_kclpy/kcl.py in it)")
        return path
    cache = CACHE / "kclpy"
    target = cache / f"amazon_kclpy-{KCLPY_VERSION}"
    if (target / "amazon_kclpy" / "kcl.py").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"amazon-kclpy=={KCLPY_VERSION}", "-d", str(staging)]
        proc = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        sdists = list(staging.glob("amazon_kclpy-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise RuntimeError(
                f"cannot fetch amazon-kclpy {KCLPY_VERSION} (`{' '.join(cmd)}` exited {proc.returncode}); "
                f"set KCLPY_DIR to an unpacked amazon_kclpy sdist instead:\n{(proc.stdout + proc.stderr)[-3000:]}"
            )
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(staging, filter="data")
        unpacked = staging / f"amazon_kclpy-{KCLPY_VERSION}"
        if not (unpacked / "amazon_kclpy" / "kcl.py").is_file():
            raise RuntimeError(f"{sdists[0]} holds no amazon_kclpy-{KCLPY_VERSION}/amazon_kclpy/kcl.py")
        try:
            unpacked.rename(target)
        except OSError:  # a concurrent fetch put its copy there first
            if not (target / "amazon_kclpy" / "kcl.py").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def python_replicator_executable(workdir: Path) -> Path:
    """run.sh asks its processor for --version and runs --check-config before it starts the
    daemon; the Python replicator has neither (it would read the MultiLang protocol from an
    empty stdin). This wrapper answers those two and otherwise becomes the Python replicator,
    so run.sh renders the same properties with executableName = the Python replicator."""
    script = BENCH / "run-kclpy-replicator.sh"
    assert script.is_file(), f"no {script}"
    wrapper = workdir / "kclpy-replicator"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# The Python replicator as run.sh's processor (written by tests/e2e/test_migration.py).\n"
        'case "${1:-}" in\n'
        '    --version) echo "kclpy_replicator.py (amazon-kclpy + confluent-kafka)"; exit 0 ;;\n'
        "    --check-config) exit 0 ;;\n"
        "esac\n"
        f"exec /bin/sh {script}\n"
    )
    wrapper.chmod(0o755)
    return wrapper



def test_migration_from_the_python_replicator_resumes_from_its_checkpoints(scenario):
    stack = scenario.stack
    kclpy = kclpy_dir()
    scenario.setup(shards=4, partitions=4)
    workdir = stack.workdir / f"migration-{scenario.application}"
    workdir.mkdir(parents=True, exist_ok=True)
    wrapper = python_replicator_executable(workdir)

    # Records flow all along: before, during and after the switch.
    writer = scenario.writer(rate=80).start()
    try:
        python = scenario.replicator(
            env={"REPLICATOR_BIN": str(wrapper), "KCLPY_DIR": str(kclpy), "PYTHON": sys.executable, "SLEEP_SECONDS": "1"},
            name=f"kclpy-{scenario.application}",
        )
        stack.wait_for_leases(scenario.application, shards=4, timeout=180)

        def python_checkpointed_every_shard():
            leases = stack.moto.leases(scenario.application)
            return len(leases) == 4 and all((lease["checkpoint"] or "").isdigit() for lease in leases.values()) and leases

        wait_until("the Python replicator checkpointing every shard", python_checkpointed_every_shard, timeout=180)
        time.sleep(8)  # a few more of its checkpoints (CHECKPOINT_FREQ_SECONDS=2)
        children = python.children()
        assert len(children) == 4 and all("kclpy_replicator.py" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") for pid in children), children
        python_owners = {lease["owner"] for lease in stack.moto.leases(scenario.application).values()}

        python_exit = python.terminate(timeout=90)
        assert python_exit is not None, "the Python replicator's daemon did not stop within 90 s of SIGTERM"
        python_leases = stack.moto.leases(scenario.application)
        assert all((lease["checkpoint"] or "").isdigit() for lease in python_leases.values()), python_leases
        python_checkpoint = {shard: int(lease["checkpoint"]) for shard, lease in python_leases.items()}
        puts_so_far = list(writer.puts)
        python_checkpointed = sum(1 for p in puts_so_far if int(p.sequence) <= python_checkpoint[p.shard])
        python_in_kafka = count_topic(stack.kafka.bootstrap, scenario.topic)

        # Ours, under the same application name. The Python replicator partitioned keys with
        # librdkafka's default (consistent_random); ours keeps that mapping as
        # docs/deployment.md advises, so each key stays in one partition across the switch.
        ours = scenario.replicator(env={"KAFKA_PARTITIONER": "consistent_random"})

        def ours_hold_every_lease():
            leases = stack.moto.leases(scenario.application)
            return len(leases) == 4 and all(lease["owner"] and lease["owner"] not in python_owners for lease in leases.values())

        wait_until("our replicator holding every lease", ours_hold_every_lease, timeout=180)
        time.sleep(15)  # ours on the live stream too
    finally:
        writer.stop()
    assert not writer.errors, writer.errors

    messages = read_topic(stack.kafka.bootstrap, scenario.topic, until_count=writer.count, timeout=240)
    report = reckon(writer, messages)
    report.seconds = round(time.monotonic() - scenario.started, 1)
    gaps = scenario.wait_checkpointed(writer, timeout=90)

    # The Python replicator's messages carry no headers; ours carry kinesis.* headers.
    by_python = [m for m in messages if SEQUENCE not in m[2]]
    by_ours = [m for m in messages if SEQUENCE in m[2]]
    first_of_ours: dict[str, int] = {}
    for _, _, headers in by_ours:
        seq = int(headers[SEQUENCE])
        first_of_ours[headers[SHARD]] = min(seq, first_of_ours.get(headers[SHARD], seq))
    resumed_at_or_before_checkpoint = {shard: (seq, python_checkpoint[shard]) for shard, seq in first_of_ours.items() if seq <= python_checkpoint[shard]}
    partitions_of_key: dict[str, set[int]] = defaultdict(set)
    for partition, payload, _ in messages:
        partitions_of_key[payload["k"]].add(partition)
    keys_moved = sorted(k for k, parts in partitions_of_key.items() if len(parts) > 1)

    scenario.record(
        report,
        shards=4,
        kclpy=kclpy.name,
        python_exit=python_exit,
        python_in_kafka=len(by_python),
        python_checkpointed=python_checkpointed,
        ours_in_kafka=len(by_ours),
        keys_in_two_partitions=len(keys_moved),
    )

    assert len(by_python) == python_in_kafka > 0, "the Python replicator wrote after it stopped, or nothing at all"
    assert python_checkpointed > 0 and len(by_ours) > 0
    assert_complete(report, max_duplicates=None)
    # Ours did not start from TRIM_HORIZON: it replays fewer records than the Python one had
    # checkpointed (at most what it delivered past its last checkpoint), and every shard's
    # first record from ours comes after the Python one's checkpoint.
    assert report.duplicates < python_checkpointed, f"{report.line()}; the Python replicator had checkpointed {python_checkpointed}"
    assert not resumed_at_or_before_checkpoint, f"shard -> (first sequence from ours, Python's checkpoint): {resumed_at_or_before_checkpoint}"
    assert sorted(first_of_ours) == sorted(python_checkpoint), (first_of_ours, python_checkpoint)
    assert not keys_moved, f"keys in more than one partition with KAFKA_PARTITIONER=consistent_random: {keys_moved}"
    assert not gaps, gaps
    assert ours.alive() and len(ours.children()) == 4
