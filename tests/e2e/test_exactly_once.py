"""Exactly-once (DELIVERY_GUARANTEE=exactly_once) against the real Apache Kafka, with the
release binary driven on real pipes as the daemon drives it (driver.Child): the moments the
real daemon cannot be made to hit on demand. A child killed between a commit and the
daemon's checkpoint, with a transaction left open; two owners of one shard at once. The
real daemon's own scenarios (a daemon SIGKILLed mid-stream, a lease moved, a reshard) are in
test_exactly_once_pipeline.py.

A read_committed consumer must find every record exactly once, in order."""

from __future__ import annotations

import base64
import json
import os
import signal
import time

from confluent_kafka import TopicPartition
from kkrlocal.records import consumer

from driver import Child
from test_record_errors import batches as record_batches
from test_record_errors import read_all, record_figures, sequence, setup_topics

SHARD = "shardId-000000000000"
BEHIND_MS = 600_000


def batch(start: int, count: int, behind_ms: int = 0) -> dict:
    """processRecords of records start..start+count: key n % 4, payload {"n": n}."""
    now_ms = int(time.time() * 1000)
    records = [{
        "data": base64.b64encode(json.dumps({"n": n}).encode()).decode(),
        "partitionKey": f"key-{n % 4}",
        "sequenceNumber": sequence(n),
        "approximateArrivalTimestamp": now_ms,
        "subSequenceNumber": 0,
        "action": "record",
    } for n in range(start, start + count)]
    return {"action": "processRecords", "records": records, "millisBehindLatest": behind_ms}


def initialize(child: Child, checkpoint: str = "TRIM_HORIZON") -> bool:
    return child.act({"action": "initialize", "shardId": SHARD, "sequenceNumber": checkpoint, "subSequenceNumber": 0})


def write_config(tmp_path, stack, name: str, topic: str, **delivery) -> object:
    config = {
        "kafka": {"bootstrap_servers": stack.kafka.bootstrap, "topic": topic},
        # Far apart: the daemon's checkpoint lags behind the commits, as after a crash.
        "checkpoint": {"freq_seconds": "600"},
        "delivery": {"guarantee": "exactly_once", "application_name": f"app-{name}",
                     "transaction_max_seconds": "20", **delivery},
    }
    path = tmp_path / f"replicator-{len(list(tmp_path.glob('replicator-*.json')))}.json"
    path.write_text(json.dumps(config))
    return path


def read(bootstrap: str, topic: str, isolation: str, expect: int, timeout: float = 60) -> list[int]:
    """The n of every message of the one-partition topic, in offset order."""
    return [n for _, n, _ in read_all(bootstrap, topic, expect, timeout, isolation)]


def positions(bootstrap: str, topic: str) -> list[dict]:
    c = consumer(bootstrap, {"isolation.level": "read_committed"})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        out = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 3:
            for m in c.consume(num_messages=1000, timeout=0.5):
                assert not m.error(), m.error()
                out.append({"key": m.key().decode(), **json.loads(m.value())})
                quiet_since = time.monotonic()
        return out
    finally:
        c.close()


def exactly_once(ns: list[int], total: int, excluded: set[int] = frozenset()) -> dict:
    """Missing (of 0..total, but `excluded`), duplicated and out-of-order records."""
    seen = set(ns)
    return {
        "missing": len(set(range(total)) - excluded - seen),
        "duplicates": len(ns) - len(seen),
        "order_violations": sum(1 for a, b in zip(ns, ns[1:]) if b < a),
    }


def test_a_child_killed_after_its_commits_is_replayed_without_a_duplicate(stack, tmp_path):
    """The first owner commits 2,000 records, opens a transaction with 500 more, and is
    SIGKILLed with no checkpoint written. The next owner starts at TRIM_HORIZON (the lease's
    checkpoint): it fences the first (whose open transaction is aborted), reads the committed
    position, skips the 2,000 and replicates the rest. read_committed: each record once."""
    name = f"eos-crash-{os.getpid()}-{int(time.time())}"
    topic = f"{name}-topic"
    stack.kafka.create_topic(topic, 1)
    first = Child(stack.binary, write_config(tmp_path, stack, name, topic), tmp_path / "first.log")
    try:
        assert initialize(first), first.text()
        for start in range(0, 2000, 500):
            assert first.act(batch(start, 500)), first.text()
        # Behind the stream's tip: the span stays open (transaction_max_seconds is 20).
        assert first.act(batch(2000, 500, BEHIND_MS)), first.text()
        # Killed once the open transaction's messages are in the partition's log.
        uncommitted = read(stack.kafka.bootstrap, topic, "read_uncommitted", 2500, timeout=30)
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
    finally:
        first.kill()
    assert first.checkpoints == [], "the first owner checkpointed: the replay would not be tested"
    assert len(uncommitted) == 2500, f"{len(uncommitted)} messages in the log before the kill"

    second = Child(stack.binary, write_config(tmp_path, stack, name, topic), tmp_path / "second.log")
    try:
        assert initialize(second), second.text()
        for start in range(0, 3000, 500):
            assert second.act(batch(start, 500)), second.text()
        assert second.act({"action": "shutdownRequested"}), second.text()
        assert second.act({"action": "leaseLost"})
        code = second.close()
    finally:
        second.kill()
    log = second.text()
    assert code == 0, log

    committed = read(stack.kafka.bootstrap, topic, "read_committed", 3000)
    everything = read(stack.kafka.bootstrap, topic, "read_uncommitted", 3000)
    figures = {"scenario": "exactly-once: child killed with an open transaction", "put": 3000,
               "messages_in_log": len(everything), "uncommitted_before_replay": len(uncommitted),
               **exactly_once(committed, 3000)}
    record_figures(figures)
    assert figures["missing"] == 0 and figures["duplicates"] == 0 and figures["order_violations"] == 0, figures
    assert len(everything) > 3000, "the aborted transaction's messages should be in the log, hidden from read_committed"
    assert "already_in_kafka=2000" in log, log[-3000:]
    assert second.checkpoints[-1] == (sequence(2999), 0), second.checkpoints[-3:]
    stored = [p for p in positions(stack.kafka.bootstrap, f"app-{name}.positions") if p["key"] == f"app-{name}-{SHARD}"]
    assert stored and stored[-1]["sequence_number"] == sequence(2999), stored[-3:]


def test_a_second_owner_fences_the_first_which_exits_without_a_checkpoint(stack, tmp_path):
    """Two children own the shard at once, as when a lease is taken from a worker that has
    not noticed yet. The second's initialize fences the first: the first's next commit fails,
    and it exits (1) without a checkpoint and without its open transaction ever becoming
    visible. The second replicates everything; read_committed sees each record once."""
    name = f"eos-fence-{os.getpid()}-{int(time.time())}"
    topic = f"{name}-topic"
    stack.kafka.create_topic(topic, 1)
    first = Child(stack.binary, write_config(tmp_path, stack, name, topic, transaction_max_records="700"),
                  tmp_path / "first.log")
    second = Child(stack.binary, write_config(tmp_path, stack, name, topic), tmp_path / "second.log")
    try:
        assert initialize(first), first.text()
        assert first.act(batch(0, 500)), first.text()
        assert first.act(batch(500, 500, BEHIND_MS)), first.text()  # open: behind the tip
        assert initialize(second), second.text()
        # The first goes on: its next commit (at 700 records of the span) is refused.
        answered = first.act(batch(1000, 500, BEHIND_MS), timeout=90)
        code = first.close()
    finally:
        first.kill()
    first_log = first.text()
    assert not answered, "the fenced child answered the batch"
    assert code == 1, first_log
    assert "exiting without a checkpoint" in first_log, first_log[-3000:]
    try:
        for start in range(0, 2000, 500):
            assert second.act(batch(start, 500)), second.text()
        assert second.act({"action": "shutdownRequested"}), second.text()
        assert second.act({"action": "leaseLost"})
        assert second.close() == 0, second.text()
    finally:
        second.kill()

    committed = read(stack.kafka.bootstrap, topic, "read_committed", 2000)
    figures = {"scenario": "exactly-once: second owner fences the first", "put": 2000,
               "first_owner_checkpoints": len(first.checkpoints), **exactly_once(committed, 2000)}
    record_figures(figures)
    assert figures["missing"] == 0 and figures["duplicates"] == 0 and figures["order_violations"] == 0, figures
    assert second.checkpoints[-1] == (sequence(1999), 0)


def test_records_the_broker_refuses_are_dead_lettered_once_and_the_rest_replicated_once(stack, tmp_path):
    """Exactly-once with a dead-letter topic, and records the broker refuses (arrival times
    older than the topic's message.timestamp.before.max.ms). A refused record dooms its
    transaction: the child aborts it, writes the refused messages to the dead-letter topic in
    a transaction of their own whose position record names them, checkpoints the committed
    position and exits. Each replay skips what is dead-lettered. read_committed consumers see
    every good record once, in order, and each refused one once in the dead-letter topic."""
    name = f"eos-refused-{os.getpid()}-{int(time.time())}"
    topic, dead_letters = setup_topics(stack, name)
    total, per_batch = 3000, 500
    # In pairs: librdkafka 2.12.1 names the culprits of a batch only when there are two or
    # more (see test_record_errors.py).
    invalid = {120, 121, 1640, 1641}
    config = tmp_path / "replicator.json"
    config.write_text(json.dumps({
        "kafka": {"bootstrap_servers": stack.kafka.bootstrap, "topic": topic,
                  "properties": {"batch.num.messages": "100"}},
        "checkpoint": {"freq_seconds": "1"},
        "records": {"timestamp": "arrival"},
        "dead_letter": {"topic": dead_letters},
        "delivery": {"guarantee": "exactly_once", "application_name": f"app-{name}"},
    }))
    checkpoint = ("TRIM_HORIZON", 0)
    exits = []
    now_ms = int(time.time() * 1000)
    for attempt in range(6):
        child = Child(stack.binary, config, tmp_path / f"child-{attempt}.log")
        try:
            assert child.act({"action": "initialize", "shardId": SHARD, "sequenceNumber": checkpoint[0],
                              "subSequenceNumber": checkpoint[1]}), child.text()
            finished = all(child.act(b) for b in record_batches(total, per_batch, invalid, now_ms))
            if finished:
                assert child.act({"action": "shutdownRequested"}), child.text()
                assert child.act({"action": "leaseLost"})
            code = child.close()
        finally:
            child.kill()
        exits.append(code)
        if child.checkpoints:
            checkpoint = child.checkpoints[-1]
        if finished:
            assert code == 0, child.text()
            break
        assert code == 1, child.text()
        assert "in the dead-letter topic; the replay skips them" in child.text(), child.text()[-3000:]
    assert exits[-1] == 0, f"still refusing after {len(exits)} children: {exits}"

    committed = read(stack.kafka.bootstrap, topic, "read_committed", total - len(invalid))
    dead = read(stack.kafka.bootstrap, dead_letters, "read_committed", len(invalid))
    good = [n for n in range(total) if n not in invalid]
    figures = {"scenario": "exactly-once: refused records dead-lettered", "put": total, "invalid": len(invalid),
               "children": len(exits), "in_dead_letter_topic": len(dead),
               **exactly_once(committed, total, invalid)}
    record_figures(figures)
    assert sorted(dead) == sorted(invalid), f"dead-letter topic: {sorted(dead)}"
    assert figures["duplicates"] == 0 and figures["order_violations"] == 0, figures
    assert sorted(committed) == good, f"{len(committed)} records; missing {sorted(set(good) - set(committed))[:10]}"
    assert checkpoint == (sequence(total - 1), 0), checkpoint
