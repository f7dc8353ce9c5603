"""Exactly-once through the real pipeline: the real KCL daemon through run.sh with
DELIVERY_GUARANTEE=exactly_once, our release binary as its children, kinesis-local, moto and
the real Apache Kafka. What at-least-once writes twice after a crash or a lease move, a
read_committed consumer must find once: 0 missing, 0 duplicates, per-key order.

The reshard runs in test_resharding.py, parametrized over both guarantees."""

from __future__ import annotations

import os
import re
import signal
import time

from conftest import assert_complete, wait_until
from test_restarts import LEADER_LOCK_SECONDS, SHARDS, in_kafka, wait_owned_by, worker_id

from kkrlocal.records import read_topic, reckon

EXACTLY_ONCE = {"DELIVERY_GUARANTEE": "exactly_once"}
READ_COMMITTED = {"isolation.level": "read_committed"}


def already_in_kafka(replicator) -> int:
    """Records the daemon's children skipped because an earlier owner committed them, from
    each shard's last summary line."""
    last = {}
    for shard, count in re.findall(r"\[(shardId-\d+)\] .*already_in_kafka=(\d+)", replicator.log()):
        last[shard] = int(count)
    return sum(last.values())


def test_a_crashed_container_is_replayed_without_a_duplicate(scenario):
    """The daemon and all its children are SIGKILLed mid-stream (a container killed for
    memory, a lost host): open transactions are left behind, and the lease checkpoints are
    far behind the commits (CHECKPOINT_FREQ_SECONDS=600, so TRIM_HORIZON). The next daemon's
    children fence the dead ones, read each shard's committed position and skip what it
    covers. At-least-once would write every record of the first run again."""
    rate = 100
    scenario.setup(shards=SHARDS, partitions=4)
    writer = scenario.writer(rate=rate).start()
    env = {**EXACTLY_ONCE, "CHECKPOINT_FREQ_SECONDS": "600"}
    first = scenario.replicator(env=env)
    first_worker = worker_id(first)
    scenario.stack.wait_for_leases(scenario.application, SHARDS, timeout=240)
    wait_until("records in Kafka", lambda: in_kafka(scenario) >= 1000, 180)
    time.sleep(2.3)

    children = first.children()
    assert len(children) == SHARDS, children
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    first.kill()
    in_kafka_at_crash = in_kafka(scenario)
    leases_at_crash = scenario.stack.moto.leases(scenario.application)

    second = scenario.replicator(env=env)
    second_worker = worker_id(second)
    wait_owned_by(scenario, {second_worker}, timeout=LEADER_LOCK_SECONDS + 90)
    time.sleep(5)
    writer.stop()
    assert not writer.errors, writer.errors
    wait_until("every record readable", lambda: len(read_topic(scenario.stack.kafka.bootstrap, scenario.topic, timeout=30, conf=READ_COMMITTED)) >= writer.count, 180, interval=3)
    report = scenario.read(writer, conf=READ_COMMITTED)
    uncommitted = reckon(writer, read_topic(scenario.stack.kafka.bootstrap, scenario.topic, timeout=60))
    # Stopped, each child logs its summary line at exit: the count of what it skipped.
    second.stop()
    skipped = already_in_kafka(second)
    scenario.record(
        report,
        guarantee="exactly_once",
        shards=SHARDS,
        rate=rate,
        in_kafka_at_crash=in_kafka_at_crash,
        checkpoints_at_crash=sorted({lease["checkpoint"] for lease in leases_at_crash.values()}),
        skipped_as_already_in_kafka=skipped,
        read_uncommitted_duplicates=uncommitted.duplicates,
        first_worker=first_worker,
        second_worker=second_worker,
    )
    assert all(lease["checkpoint"] == "TRIM_HORIZON" for lease in leases_at_crash.values()), leases_at_crash
    assert_complete(report, max_duplicates=0)
    # The replay really happened: at-least-once would have written these again. The offsets
    # in Kafka at the crash also count commit markers (one per transaction, a few a second)
    # and the open transactions the crash aborted (under a second of records per shard).
    assert skipped >= in_kafka_at_crash * 0.85, (skipped, in_kafka_at_crash)


def test_leases_handed_to_a_second_daemon_are_replicated_without_a_duplicate(scenario):
    """A second daemon joins and the KCL hands it half the leases (shutdownRequested on the
    old owner: it commits and checkpoints, then the new owner starts after it)."""
    rate = 200
    scenario.setup(shards=SHARDS, partitions=4)
    writer = scenario.writer(rate=rate).start()
    first = scenario.replicator(env=EXACTLY_ONCE)
    worker_id(first)
    scenario.stack.wait_for_leases(scenario.application, SHARDS, timeout=240)
    wait_until("records in Kafka", lambda: in_kafka(scenario) >= 1000, 180)

    second = scenario.replicator(env=EXACTLY_ONCE)
    second_worker = worker_id(second)
    leases = scenario.stack.wait_for_leases(scenario.application, SHARDS, owners=2, timeout=240)
    moved = sorted(shard for shard, lease in leases.items() if lease["owner"] == second_worker)
    time.sleep(8)
    writer.stop()
    assert not writer.errors, writer.errors
    report = scenario.read(writer, conf=READ_COMMITTED)
    scenario.record(report, guarantee="exactly_once", shards=SHARDS, rate=rate, leases_moved=len(moved))
    assert moved, "no lease moved to the second daemon"
    assert_complete(report, max_duplicates=0)
    assert first.alive() and second.alive()
