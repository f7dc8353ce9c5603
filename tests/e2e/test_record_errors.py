"""Batches the broker refuses for one record in them (KIP-467), against the real Apache Kafka.

Only a real broker makes these: it validates each record of a produce request and, when one
is invalid, refuses its whole batch and names the culprits; librdkafka fails the culprits with
their own error and every batchmate with `_INVALID_DIFFERENT_RECORD`. The invalid records here
are what users meet first: a backlog older than the topic's `message.timestamp.before.max.ms`,
with the record's arrival time as the message timestamp (the default).

The real daemon cannot make such records (kinesis-local stamps every record with the time it
was put), so this file speaks the MultiLang protocol to the release binary itself, on real
pipes, exactly as the daemon does (docs: multilang-protocol.md), with arrival timestamps
chosen per record.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections import defaultdict

from confluent_kafka import TopicPartition
from kkrlocal.records import consumer

from conftest import FIGURES
from driver import Child

HOUR_MS = 3_600_000
KEYS = 8
BASE_SEQUENCE = 49_590_000_000_000_000_000_000_000_000_000_000_000_000_000_000


def sequence(n: int) -> str:
    return str(BASE_SEQUENCE + n)


def batches(total: int, per_batch: int, invalid: set[int], now_ms: int):
    """processRecords lines: record n has key n % KEYS; the `invalid` ones arrived two hours ago."""
    for start in range(0, total, per_batch):
        records = []
        for n in range(start, min(total, start + per_batch)):
            payload = json.dumps({"n": n}).encode()
            records.append({
                "data": base64.b64encode(payload).decode(),
                "partitionKey": f"key-{n % KEYS}",
                "sequenceNumber": sequence(n),
                "approximateArrivalTimestamp": now_ms - 2 * HOUR_MS if n in invalid else now_ms,
                "subSequenceNumber": 0,
                "action": "record",
            })
        yield {"action": "processRecords", "records": records, "millisBehindLatest": 0}


def read_all(bootstrap: str, topic: str, expect: int, timeout: float = 60,
             isolation: str = "read_uncommitted") -> list[tuple[int, int, dict]]:
    """(offset, n, headers) of every message of a one-partition topic, once `expect` are there."""
    c = consumer(bootstrap, {"isolation.level": isolation})
    out = []
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            got = c.consume(num_messages=5000, timeout=0.5)
            for m in got:
                assert not m.error(), m.error()
                headers = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}
                out.append((m.offset(), json.loads(m.value())["n"], headers))
            if got:
                quiet_since = time.monotonic()
            elif len(out) >= expect and time.monotonic() - quiet_since > 2:
                break
        return out
    finally:
        c.close()


def last_copy_order_violations(messages: list[tuple[int, int, dict]]) -> list[tuple[int, int]]:
    """Per key, the last copy of each record must come after the last copy of every earlier one
    (what a consumer keeping each key's latest value ends with)."""
    last_offset = {}
    for offset, n, _ in messages:
        last_offset[n] = offset
    by_key = defaultdict(list)
    for n, offset in sorted(last_offset.items(), key=lambda item: item[1]):
        by_key[n % KEYS].append(n)
    return [(a, b) for ns in by_key.values() for a, b in zip(ns, ns[1:]) if b < a]


def setup_topics(stack, name: str):
    topic, dead_letters = f"{name}-topic", f"{name}-dlq"
    # One partition, so that every refusal touches records of every key and the copies
    # have later messages to keep in order.
    stack.kafka.create_topic(topic, 1, {"message.timestamp.before.max.ms": str(HOUR_MS)})
    stack.kafka.create_topic(dead_letters, 1)
    return topic, dead_letters


def write_config(tmp_path, stack, topic: str, dead_letters: str | None):
    config = {
        "kafka": {
            "bootstrap_servers": stack.kafka.bootstrap,
            "topic": topic,
            # Small produce batches, so that several are in flight to the partition when
            # one is refused: those are the ones the idempotent producer resends ahead of
            # the refused batchmates.
            "properties": {"batch.num.messages": "100"},
        },
        "checkpoint": {"freq_seconds": "1"},
        "records": {"timestamp": "arrival"},
        "dead_letter": {"topic": dead_letters or ""},
    }
    path = tmp_path / "replicator.json"
    path.write_text(json.dumps(config))
    return path


def record_figures(figures: dict) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with open(FIGURES, "a") as f:
        f.write(json.dumps(figures) + "\n")
    print(f"\nFIGURES {json.dumps(figures)}")


def replicate_and_hand_back(child: Child, total: int, per_batch: int, invalid: set[int]) -> int:
    """Initializes the child, sends the records, then ends as the daemon does when a lease is
    handed over (shutdownRequested, leaseLost, stdin closed). Returns the exit code."""
    try:
        assert child.act({"action": "initialize", "shardId": "shardId-000000000000",
                          "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0})
        for batch in batches(total, per_batch, invalid, int(time.time() * 1000)):
            assert child.act(batch), child.text()
        assert child.act({"action": "shutdownRequested"}, timeout=90), child.text()
        assert child.act({"action": "leaseLost"})
        return child.close()
    finally:
        child.kill()


def summary(log: str) -> dict[str, int]:
    lines = [line for line in log.splitlines() if "produced_again=" in line]
    assert lines, "no summary line in the child's log"
    fields = dict(f.split("=", 1) for f in lines[-1].split() if "=" in f)
    return {k: int(fields[k]) for k in ("records", "dead_lettered", "produced_again", "copies")}


def test_batchmates_of_a_refused_record_are_produced_again_in_key_order(stack, tmp_path):
    """With a dead-letter topic: the invalid records are dead-lettered, every other record
    reaches its topic (produced again, never dead-lettered), each key's last copies keep the
    Kinesis order, and the checkpoint reaches the last record."""
    name = f"refused-batch-{os.getpid()}-{int(time.time())}"
    topic, dead_letters = setup_topics(stack, name)
    total, per_batch = 3000, 500
    # Invalid records in pairs, early in each of the first two daemon batches; the rest are
    # good. Pairs, because librdkafka 2.12.1 names the culprits only when a batch has two or
    # more: with a single one it fails the whole batch with the culprit's error (see
    # test_a_single_invalid_record_takes_its_batch_along).
    invalid = {120, 121, 640, 641}
    child = Child(stack.binary, write_config(tmp_path, stack, topic, dead_letters), tmp_path / "child.log")
    code = replicate_and_hand_back(child, total, per_batch, invalid)
    log = child.text()
    assert code == 0, log

    messages = read_all(stack.kafka.bootstrap, topic, expect=total - len(invalid))
    seen = {n for _, n, _ in messages}
    missing = sorted(set(range(total)) - invalid - seen)
    violations = last_copy_order_violations(messages)
    dead = read_all(stack.kafka.bootstrap, dead_letters, expect=len(invalid))
    figures = summary(log)
    record_figures({"scenario": "refused batchmates", "put": total, "invalid": len(invalid),
                    "in_topic": len(messages), "missing": len(missing), "last_copy_order_violations": len(violations),
                    **figures})

    assert missing == [], f"{len(missing)} good records never reached {topic}: {missing[:10]}"
    assert not seen & invalid, "an invalid record reached the topic"
    assert sorted(n for _, n, _ in dead) == sorted(invalid), "only the invalid records are dead-lettered"
    assert all("invalid" in h.get("dlq.error", "").lower() for _, _, h in dead), dead
    assert violations == [], f"last copies out of order per key: {violations[:10]}; offsets: {[(o, n) for o, n, _ in messages if any(n in v for v in violations[:2])]}"
    assert figures["produced_again"] > 0, "the broker refused no batch for another record: the scenario did not happen"
    assert figures["copies"] > 0, "no later message needed copying: the scenario did not exercise the order repair"
    assert figures["dead_lettered"] == len(invalid)
    assert child.checkpoints and child.checkpoints[-1] == (sequence(total - 1), 0), child.checkpoints[-3:]


def test_without_a_dead_letter_topic_the_shard_stops_at_the_refused_record_not_before(stack, tmp_path):
    """Without a dead-letter topic: the batchmates before the invalid record are produced
    again and checkpointed; the child stops at the invalid record itself (exit 1), so that
    the replay after the fix starts there."""
    name = f"refused-stop-{os.getpid()}-{int(time.time())}"
    topic, _ = setup_topics(stack, name)
    first_invalid = 230
    child = Child(stack.binary, write_config(tmp_path, stack, topic, None), tmp_path / "child.log")
    try:
        assert child.act({"action": "initialize", "shardId": "shardId-000000000000",
                          "sequenceNumber": "TRIM_HORIZON", "subSequenceNumber": 0})
        now_ms = int(time.time() * 1000)
        answered = 0
        for batch in batches(2000, 500, {first_invalid, first_invalid + 1, 1200, 1201}, now_ms):
            if not child.act(batch):
                break
            answered += 1
        else:
            # Answered at once (pipelined): the failure is found at the next action.
            assert not child.act({"action": "shutdownRequested"}, timeout=90), "the child went on past the invalid record"
        code = child.close()
    finally:
        child.kill()
    log = child.text()
    assert code == 1, log
    assert f"sequence number {sequence(first_invalid)}" in log, log[-3000:]
    assert child.checkpoints, f"nothing checkpointed; the log:\n{log[-3000:]}"
    assert child.checkpoints[-1] == (sequence(first_invalid - 1), 0), child.checkpoints[-3:]
    messages = read_all(stack.kafka.bootstrap, topic, expect=first_invalid)
    seen = {n for _, n, _ in messages}
    assert set(range(first_invalid)) <= seen, sorted(set(range(first_invalid)) - seen)[:10]
    assert first_invalid not in seen
    # Up to the checkpoint the topic is final; what came after the invalid record (queued
    # before the failure was known) is replayed after the fix, which puts it back in order.
    assert last_copy_order_violations([m for m in messages if m[1] < first_invalid]) == []
    assert summary(log)["produced_again"] > 0


def test_a_single_invalid_record_takes_its_batch_along(stack, tmp_path):
    """One invalid record alone in its produce batch. librdkafka 2.12.1 then fails every
    message of the batch with the culprit's own error (it names culprits per record only
    when there are two or more), so the replicator cannot tell the batchmates from the
    culprit: they are dead-lettered with it, with the broker's reason. Nothing is lost and
    the shard goes on; the figure says how many good records went to the dead-letter topic."""
    name = f"refused-single-{os.getpid()}-{int(time.time())}"
    topic, dead_letters = setup_topics(stack, name)
    total, invalid = 1000, {150}
    child = Child(stack.binary, write_config(tmp_path, stack, topic, dead_letters), tmp_path / "child.log")
    code = replicate_and_hand_back(child, total, 500, invalid)
    log = child.text()
    assert code == 0, log
    figures = summary(log)
    messages = read_all(stack.kafka.bootstrap, topic, expect=total - figures["dead_lettered"])
    dead = read_all(stack.kafka.bootstrap, dead_letters, expect=figures["dead_lettered"])
    in_topic, in_dlq = {n for _, n, _ in messages}, {n for _, n, _ in dead}
    record_figures({"scenario": "single invalid record", "put": total, "in_topic": len(in_topic),
                    "dead_lettered_good_records": len(in_dlq - invalid), **figures})
    assert in_topic | in_dlq == set(range(total)), "every record is in the topic or the dead-letter topic"
    assert not in_topic & invalid and invalid <= in_dlq
    assert last_copy_order_violations(messages) == []
    assert child.checkpoints[-1] == (sequence(total - 1), 0)
