"""A 2-minute network partition between the replicator and Kafka, mid-stream.

All of the replicator's Kafka traffic crosses the broker's BlackholeProxy
(KAFKA_BOOTSTRAP_SERVERS = partitionable_bootstrap; the broker advertises the proxy there).
partition() stops every byte in both directions and closes nothing, as a real partition
shorter than TCP's retransmission timeout does; heal() lets everything through again.
Records keep coming into Kinesis all along. The test checks through the broker's own
listener (not the proxy) that the checkpoints never pass what Kafka holds, that nothing is
lost or reordered, and that no process died.
"""

from __future__ import annotations

import time
from itertools import pairwise

from conftest import assert_complete, wait_until
from kkrlocal.records import count_topic, read_topic, reckon

PARTITION_SECONDS = 120
SEQUENCE = "kinesis.sequenceNumber"
SHARD = "kinesis.shardId"



def as_number(checkpoint: str | None) -> int:
    """A checkpoint as a number: -1 for TRIM_HORIZON, LATEST or none (nothing covered)."""
    return int(checkpoint) if checkpoint and checkpoint.isdigit() else -1


def last_in_kafka_by_shard(messages) -> dict[str, int]:
    last: dict[str, int] = {}
    for _, _, headers in messages:
        seq = int(headers[SEQUENCE])
        if seq > last.get(headers[SHARD], -1):
            last[headers[SHARD]] = seq
    return last


def test_two_minute_kafka_partition_mid_stream(scenario):
    stack = scenario.stack
    proxy = stack.kafka.proxy
    bootstrap = stack.kafka.bootstrap  # verification: the broker's own listener, not the proxy
    scenario.setup(shards=4, partitions=4)

    writer = scenario.writer(rate=40).start()
    samples: list[tuple[float, dict[str, dict]]] = []
    try:
        replicator = scenario.replicator(bootstrap=stack.kafka.partitionable_bootstrap)
        assert replicator.env["KAFKA_BOOTSTRAP_SERVERS"] == stack.kafka.partitionable_bootstrap
        stack.wait_for_leases(scenario.application, shards=4, timeout=180)
        wait_until("a child per shard", lambda: len(replicator.children()) == 4, timeout=120)

        def replicating():
            leases = stack.moto.leases(scenario.application)
            return len(leases) == 4 and all(as_number(lease["checkpoint"]) >= 0 for lease in leases.values())

        wait_until("every shard replicated and checkpointed", replicating, timeout=180)
        time.sleep(5)
        children_before = sorted(replicator.children())

        proxy.partition()
        started = time.monotonic()
        in_kafka_at_partition = count_topic(bootstrap, scenario.topic)
        put_at_partition = writer.count
        while time.monotonic() - started < PARTITION_SECONDS - 8:
            samples.append((round(time.monotonic() - started, 1), stack.moto.leases(scenario.application)))
            time.sleep(2)
        # Kafka only grows, so what it holds now bounds what it held at every sample: a
        # checkpoint above this was above an unacknowledged record when it was sampled.
        frozen = read_topic(bootstrap, scenario.topic, timeout=60, idle=2)
        samples.append((round(time.monotonic() - started, 1), stack.moto.leases(scenario.application)))
        wait_until("the end of the partition", lambda: time.monotonic() - started >= PARTITION_SECONDS, timeout=PARTITION_SECONDS)
        in_kafka_at_heal = count_topic(bootstrap, scenario.topic)
        put_at_heal = writer.count
        proxy.heal()
        partition_seconds = round(time.monotonic() - started, 1)

        healed = time.monotonic()
        wait_until("records reaching Kafka again", lambda: count_topic(bootstrap, scenario.topic) > in_kafka_at_heal, timeout=180, interval=0.5)
        resumed_after = round(time.monotonic() - healed, 1)
        time.sleep(20)  # the stream goes on after the heal
    finally:
        writer.stop()
    assert not writer.errors, writer.errors

    messages = read_topic(bootstrap, scenario.topic, until_count=writer.count, timeout=300)
    report = reckon(writer, messages)
    report.seconds = round(time.monotonic() - scenario.started, 1)
    gaps = scenario.wait_checkpointed(writer, timeout=180)
    children_after = sorted(replicator.children())

    bound = last_in_kafka_by_shard(frozen)
    passed = [
        (at, shard, lease["checkpoint"], bound.get(shard))
        for at, leases in samples
        for shard, lease in leases.items()
        if as_number(lease["checkpoint"]) > bound.get(shard, -1)
    ]
    # Checkpoints may still move early in the partition (records Kafka acknowledged just
    # before it), never past what Kafka holds.
    moves = [
        at for (_, a), (at, b) in pairwise(samples) for shard in a if a[shard]["checkpoint"] != b.get(shard, {}).get("checkpoint")
    ]

    scenario.record(
        report,
        shards=4,
        partition_seconds=partition_seconds,
        put_during_partition=put_at_heal - put_at_partition,
        in_kafka_at_partition=in_kafka_at_partition,
        in_kafka_at_heal=in_kafka_at_heal,
        checkpoint_samples=len(samples) * 4,
        checkpoint_moves_during_partition=len(moves),
        last_checkpoint_move_at=max(moves, default=None),
        checkpoints_past_kafka=len(passed),
        resumed_seconds_after_heal=resumed_after,
        children_same=children_before == children_after,
    )

    assert len(samples) >= 40, f"only {len(samples)} samples of the lease table during the partition"
    assert not passed, f"checkpoints past the last record in Kafka (seconds into the partition, shard, checkpoint, last in Kafka): {passed[:10]}"
    assert_complete(report, max_duplicates=None)
    # The idempotent producer (enable.idempotence=true) retries what the partition held up
    # without writing it twice.
    assert report.duplicates == 0, report.line()
    assert not gaps, gaps
    assert replicator.alive(), "the daemon died"
    assert children_after == children_before, f"children before the partition {children_before}, after {children_after}"
