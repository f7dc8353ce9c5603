"""Daemons that stop and start while records flow: a crash (SIGKILL), `docker stop` (SIGTERM),
and a second daemon joining a running application. The real KCL daemon through run.sh, our
release binary as its children, and the emulators (see conftest.py).

What the README promises and these tests hold the pipeline to:
- no loss and per-key order, whatever happens to the daemon;
- duplicates only for records after the last checkpoint (at-least-once). For each restart
  the tests measure exactly which records were exposed (in Kafka, past the lease's
  checkpoint, when the old daemon and all its children were gone), assert that precisely
  those came twice, and bound that count by an explicit figure.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest
from conftest import assert_complete, wait_until

from kkrlocal.records import count_topic, read_topic
from kkrlocal.replicator import FAST_KCL, wait_all_exit

SHARDS = 4
# The binary's defaults (README, "Environment variables of the processor").
MAX_IN_FLIGHT_RECORDS = 10000
FLUSH_TIMEOUT_SECONDS = 10
# What conftest's Scenario.replicator() sets for every daemon unless a test says otherwise.
CHECKPOINT_FREQ_SECONDS = 2
# How far a lease's checkpoint may trail the records already in Kafka, beyond
# CHECKPOINT_FREQ_SECONDS, on a caught-up shard: the processor checkpoints only when a
# processRecords arrives (every idleTimeBetweenReadsInMillis=250 ms plus a GetRecords round
# trip), it checkpoints the acknowledged frontier (so the batch just queued is not in it),
# and the checkpoint itself is a round trip through the daemon to DynamoDB. A second each,
# doubled for a 2-core machine shared with other stacks: 4 s.
CHECKPOINT_LAG_MARGIN_SECONDS = 4
SHUTDOWN_GRACE_SECONDS = int(FAST_KCL["shutdownGraceMillis"]) / 1000
FAILOVER_SECONDS = int(FAST_KCL["failoverTimeMillis"]) / 1000
# KCL 3.x assigns leases only from its leader, elected with a DynamoDB lock whose lease is a
# fixed 2 minutes (DynamoDBLockBasedLeaderDecider.DEFAULT_LEASE_DURATION_MILLIS, no property).
# A SIGKILLed leader never releases it: a new worker first sees the lock, waits 2 minutes of
# it unchanged, and re-checks only every heartbeat (30 s) while not leader.
LEADER_LOCK_SECONDS = 120 + 30


# -- helpers ------------------------------------------------------------------------------------



def worker_id(replicator, timeout: float = 120) -> str:
    """The KCL worker id of a daemon, from the line the daemon logs at start."""
    found = wait_until(
        f"{replicator.name} logs its worker id",
        lambda: re.search(r"Using workerId: (\S+)", replicator.log()),
        timeout,
    )
    return found.group(1)


def in_kafka(scenario) -> int:
    return count_topic(scenario.stack.kafka.bootstrap, scenario.topic)


def wait_replicating(scenario, writer, timeout: float = 240) -> None:
    """Until every lease has an owner and a checkpoint past TRIM_HORIZON (the processors
    run and checkpoint), and Kafka is less than two seconds of records behind the writer."""
    stack = scenario.stack
    stack.wait_for_leases(scenario.application, SHARDS, timeout=timeout)

    def caught_up() -> bool:
        leases = stack.moto.leases(scenario.application)
        checkpointed = all(lease["checkpoint"] not in (None, "TRIM_HORIZON", "LATEST") for lease in leases.values())
        return checkpointed and in_kafka(scenario) >= writer.count - 2 * writer.rate

    wait_until("leases checkpointed and Kafka caught up with the writer", caught_up, timeout)


def wait_owned_by(scenario, owners: set[str], timeout: float) -> dict[str, dict]:
    """Until every lease is owned by one of `owners`."""

    def owned():
        leases = scenario.stack.moto.leases(scenario.application)
        if len(leases) >= SHARDS and all(lease["owner"] in owners for lease in leases.values()):
            return leases
        return None

    return wait_until(f"every lease owned by {owners}", owned, timeout)


def exposed_records(scenario, writer, leases: dict[str, dict]) -> dict[str, int]:
    """Per shard, the records already in Kafka but past the lease's checkpoint: exactly what a
    new owner, reading from the checkpoint, will write again. Call it once no process of the
    old daemon can write any more."""
    messages = read_topic(scenario.stack.kafka.bootstrap, scenario.topic, timeout=120, idle=3.0)
    puts = {(p.key, p.index): p for p in list(writer.puts)}
    exposed = {shard: 0 for shard in leases}
    seen = set()
    for _partition, payload, _headers in messages:
        ident = (payload["k"], payload["i"])
        if ident in seen:
            continue
        seen.add(ident)
        put = puts[ident]
        checkpoint = leases[put.shard]["checkpoint"]
        if checkpoint in ("TRIM_HORIZON", None) or (checkpoint.isdigit() and int(put.sequence) > int(checkpoint)):
            exposed[put.shard] += 1
    return exposed


def shards_logging(replicator, message: str) -> set[str]:
    """Shards whose child logged `message` (each child line is tagged with its shard)."""
    return set(re.findall(r"\[(shardId-\d+)\] " + re.escape(message), replicator.log()))


def logged_at(replicator, pattern: str) -> datetime | None:
    """When the daemon first logged a line matching `pattern` (its lines start with an ISO time)."""
    found = re.search(r"^(\S+Z) .*" + pattern, replicator.log(), re.MULTILINE)
    return datetime.fromisoformat(found.group(1).replace("Z", "+00:00")) if found else None


def alive(pids: list[int]) -> list[int]:
    return wait_all_exit(pids, 0)


# -- 1. SIGKILL -----------------------------------------------------------------------------------


def test_daemon_killed_mid_stream_and_started_again_replays_only_after_the_checkpoint(scenario):
    rate = 100
    scenario.setup(shards=SHARDS, partitions=4)
    writer = scenario.writer(rate=rate).start()
    first = scenario.replicator()
    first_worker = worker_id(first)
    wait_replicating(scenario, writer)
    time.sleep(3.3)  # somewhere between two checkpoints

    killed_at = time.monotonic()
    orphans = first.kill()
    assert len(orphans) == SHARDS, f"the daemon ran {len(orphans)} children, not one per shard"
    # The children read EOF on stdin once the JVM is gone, give in-flight records up to
    # FLUSH_TIMEOUT_SECONDS, then exit.
    left = wait_all_exit(orphans, FLUSH_TIMEOUT_SECONDS + 5)
    orphans_exit_seconds = round(time.monotonic() - killed_at, 1)
    # Nothing of the old daemon can write now: its checkpoints and its records are final.
    leases_at_kill = scenario.stack.moto.leases(scenario.application)
    exposed = exposed_records(scenario, writer, leases_at_kill)

    second = scenario.replicator()
    second_worker = worker_id(second)
    # The dead worker's leases expire after failoverTimeMillis, but only the leader assigns
    # them, and the dead worker held the leader lock.
    owned = wait_owned_by(scenario, {second_worker}, timeout=LEADER_LOCK_SECONDS + 90)
    takeover_seconds = round(time.monotonic() - killed_at, 1)
    started, leader = logged_at(second, r"Using workerId"), logged_at(second, r"is new leader")
    leader_wait_seconds = round((leader - started).total_seconds(), 1) if started and leader else None
    time.sleep(5)  # the new owner replicates while the writer goes on
    writer.stop()
    assert not writer.errors, writer.errors

    gaps = scenario.wait_checkpointed(writer, timeout=180)
    report = scenario.read(writer)
    bound = rate * (CHECKPOINT_FREQ_SECONDS + CHECKPOINT_LAG_MARGIN_SECONDS)
    scenario.record(
        report,
        shards=SHARDS,
        rate=rate,
        orphans=len(orphans),
        orphans_left=len(left),
        orphans_exit_seconds=orphans_exit_seconds,
        exposed_by_shard=exposed,
        exposed=sum(exposed.values()),
        duplicate_bound=bound,
        takeover_seconds=takeover_seconds,
        leader_wait_seconds=leader_wait_seconds,
        first_worker=first_worker,
        second_worker=second_worker,
    )

    assert not left, f"children of the killed daemon still running after {FLUSH_TIMEOUT_SECONDS + 5} s: {left}"
    assert first_worker not in {lease["owner"] for lease in owned.values()}
    assert_complete(report, max_duplicates=None)
    # At-least-once, exactly as promised: what was in Kafka past the checkpoint came again,
    # nothing else did...
    assert report.duplicates == sum(exposed.values()), f"{report.line()}; exposed at the kill: {exposed}"
    # ...and that is bounded by the checkpoint interval (and far inside the in-flight window).
    assert report.duplicates <= min(bound, MAX_IN_FLIGHT_RECORDS), f"{report.line()}; bound {bound}"
    assert not gaps, gaps
    assert second.alive() and len(second.children()) == SHARDS


# -- 2. SIGTERM -----------------------------------------------------------------------------------


@pytest.mark.parametrize("writer_running", [False, True], ids=["writer-stopped-first", "writer-running"])
def test_sigterm_shuts_down_gracefully_and_checkpoints_what_kafka_acknowledged(scenario, writer_running):
    rate = 200
    scenario.setup(shards=SHARDS, partitions=4)
    writer = scenario.writer(rate=rate).start()
    # No periodic checkpoint during this test: the only checkpoint the first daemon can
    # write is the one its children take at shutdownRequested, so the checkpoints after the
    # SIGTERM show that graceful shutdown happened, and what it covered.
    first = scenario.replicator(env={"CHECKPOINT_FREQ_SECONDS": "600"})
    first_worker = worker_id(first)
    scenario.stack.wait_for_leases(scenario.application, SHARDS, timeout=240)
    wait_until("Kafka caught up", lambda: in_kafka(scenario) >= writer.count - 2 * rate and in_kafka(scenario) > 0, 240)
    time.sleep(4)
    if not writer_running:
        writer.stop()
        wait_until("every record in Kafka before the SIGTERM", lambda: in_kafka(scenario) >= writer.count, 120)
    before = scenario.stack.moto.leases(scenario.application)
    children = first.children()
    assert len(children) == SHARDS

    signalled_at = time.monotonic()
    returncode = first.terminate(timeout=SHUTDOWN_GRACE_SECONDS + 35)
    exit_seconds = round(time.monotonic() - signalled_at, 1)
    left = alive(children)
    left_later = wait_all_exit(left, FLUSH_TIMEOUT_SECONDS + 5)
    after = scenario.stack.moto.leases(scenario.application)
    requested = shards_logging(first, "shutdown requested: flushing and checkpointing")
    lost = shards_logging(first, "lease lost: no further checkpoints")
    exit_codes = re.findall(r"Child process exited with value: (-?\d+)", first.log())
    exposed = exposed_records(scenario, writer, after)
    gaps_at_exit = scenario.wait_checkpointed(writer, timeout=0) if not writer_running else None

    second = scenario.replicator()
    second_worker = worker_id(second)
    wait_owned_by(scenario, {second_worker}, timeout=FAILOVER_SECONDS + 180)
    if writer_running:
        time.sleep(5)
        writer.stop()
    else:
        writer.put_now(400)  # the restarted daemon carries on from the checkpoints
    assert not writer.errors, writer.errors
    gaps = scenario.wait_checkpointed(writer, timeout=180)
    report = scenario.read(writer)
    scenario.record(
        report,
        variant="writer running" if writer_running else "writer stopped first",
        shards=SHARDS,
        rate=rate,
        returncode=returncode,
        exit_seconds=exit_seconds,
        children_left_at_exit=len(left),
        shutdown_requested_shards=len(requested),
        lease_lost_shards=len(lost),
        child_exit_codes=exit_codes,
        checkpoints_behind_before=sum(1 for s, lease in before.items() if lease["checkpoint"] != writer.last_sequence_by_shard().get(s)),
        exposed_by_shard=exposed,
        exposed=sum(exposed.values()),
        first_worker=first_worker,
        second_worker=second_worker,
    )

    assert returncode is not None, f"the daemon did not exit within {SHUTDOWN_GRACE_SECONDS + 35} s of SIGTERM"
    assert exit_seconds <= SHUTDOWN_GRACE_SECONDS + 15, f"the daemon took {exit_seconds} s to exit"
    assert not left_later, f"children still running after the daemon exited: {left_later}"
    assert requested == set(after), f"shutdownRequested reached only {sorted(requested)}"
    assert lost == set(after), f"leaseLost reached only {sorted(lost)}"
    # Each child ended on EOF (exit 0), none by a signal.
    assert exit_codes == ["0"] * SHARDS, exit_codes
    # Before the SIGTERM nothing was checkpointed (CHECKPOINT_FREQ_SECONDS=600); after it
    # every lease is checkpointed by shutdownRequested.
    assert all(lease["checkpoint"] == "TRIM_HORIZON" for lease in before.values()), before
    assert all(lease["checkpoint"].isdigit() for lease in after.values()), after
    if not writer_running:
        # Everything was in Kafka before the SIGTERM: each lease at its shard's last record.
        assert not gaps_at_exit, gaps_at_exit
    assert_complete(report, max_duplicates=None)
    assert report.duplicates == sum(exposed.values()), f"{report.line()}; exposed at exit: {exposed}"
    if writer_running:
        # The shutdown checkpoint covers every acknowledged record; only records still
        # unacknowledged after FLUSH_TIMEOUT_SECONDS can be written again, and there are at
        # most MAX_IN_FLIGHT_RECORDS of those.
        assert report.duplicates <= MAX_IN_FLIGHT_RECORDS, report.line()
    else:
        assert report.duplicates == 0, report.line()
    assert not gaps, gaps


# -- 3. a second daemon joins ----------------------------------------------------------------------


def test_second_daemon_joining_takes_leases_by_graceful_handoff(scenario):
    rate = 200
    scenario.setup(shards=SHARDS, partitions=4)
    writer = scenario.writer(rate=rate).start()
    first = scenario.replicator()
    first_worker = worker_id(first)
    wait_replicating(scenario, writer)
    assert {lease["owner"] for lease in scenario.stack.moto.leases(scenario.application).values()} == {first_worker}

    joined_at = time.monotonic()
    second = scenario.replicator()
    second_worker = worker_id(second)
    leases = scenario.stack.wait_for_leases(scenario.application, SHARDS, owners=2, timeout=240)
    move_seconds = round(time.monotonic() - joined_at, 1)
    moved = sorted(shard for shard, lease in leases.items() if lease["owner"] == second_worker)
    time.sleep(8)  # the new owner replicates while the writer goes on
    writer.stop()
    assert not writer.errors, writer.errors

    gaps = scenario.wait_checkpointed(writer, timeout=180)
    report = scenario.read(writer)
    final = scenario.stack.moto.leases(scenario.application)
    moved_final = sorted(shard for shard, lease in final.items() if lease["owner"] == second_worker)
    requested = shards_logging(first, "shutdown requested: flushing and checkpointing")
    lost = shards_logging(first, "lease lost: no further checkpoints")
    # Where the old owner's child last checkpointed each shard, and where the new owner's
    # child started it.
    last_checkpoint = {}
    for shard, seq in re.findall(r"\[(shardId-\d+)\] checkpointed at (\d+)/\d+", first.log()):
        last_checkpoint[shard] = seq
    # The lease table names the new owner a moment before that owner's child is started:
    # give each moved shard's child the time to say where it started.
    deadline = time.monotonic() + 60
    while True:
        started_at = dict(re.findall(r"\[(shardId-\d+)\] initialized at (\S+) ", second.log()))
        if all(shard in started_at for shard in moved_final) or time.monotonic() > deadline:
            break
        time.sleep(1)
    bound = rate * (CHECKPOINT_FREQ_SECONDS + CHECKPOINT_LAG_MARGIN_SECONDS)
    scenario.record(
        report,
        shards=SHARDS,
        rate=rate,
        leases_moved=len(moved),
        leases_moved_at_end=len(moved_final),
        move_seconds=move_seconds,
        shutdown_requested_shards=sorted(requested),
        lease_lost_shards=sorted(lost),
        duplicate_bound=bound,
        first_worker=first_worker,
        second_worker=second_worker,
    )

    assert moved, leases
    assert_complete(report, max_duplicates=None)
    # A graceful handoff: the old owner's child got shutdownRequested (and checkpointed what
    # Kafka had acknowledged), then leaseLost; the new owner started at that checkpoint.
    for shard in moved_final:
        assert shard in requested and shard in lost, f"{shard} moved without shutdownRequested/leaseLost: {requested}, {lost}"
        assert started_at.get(shard) == last_checkpoint.get(shard), (
            f"{shard}: the new owner started at {started_at.get(shard)}, the old one last checkpointed {last_checkpoint.get(shard)}"
        )
    # Duplicates: with the handoff's checkpoint, none are expected; should a handoff time out
    # (gracefulLeaseHandoffTimeoutMillis) the new owner starts from the last periodic
    # checkpoint, at most CHECKPOINT_FREQ_SECONDS plus the margin behind, and far inside
    # the in-flight window.
    assert report.duplicates <= min(bound, MAX_IN_FLIGHT_RECORDS), f"{report.line()}; bound {bound}"
    assert not gaps, gaps
    assert first.alive() and second.alive()
    assert len(first.children()) + len(second.children()) == SHARDS
