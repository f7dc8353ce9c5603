"""Resharding mid-stream: a split and then a merge while records flow, with one daemon.

What must hold across a reshard (KCL multilang contract, ../shared/docs/multilang-protocol.md
sections 6-7): a parent shard's child process drains Kafka and checkpoints SHARD_END; only then
does the KCL start reading the children (BlockOnParentShardTask), so each key's records reach
Kafka parent first, child second, and nothing is lost at the seam.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from datetime import datetime

import pytest
from conftest import assert_complete, wait_until
from kkrlocal.records import checkpoint_gaps, count_topic, read_topic, reckon

# A line a child writes on stderr, relayed verbatim by the daemon (besides its ERROR-level
# copy "Received error line from subprocess [...]"): "<child's clock> LEVEL [shardId-…] text".
CHILD_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(?:Z|[+-]\d\d:?\d\d)) (\w+)\s+\[(shardId-\d+)\] (.*)$")
# A line of the daemon itself: "<daemon's clock> LEVEL [thread] logger - text".
DAEMON_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(?:Z|[+-]\d\d:?\d\d)) (\w+)\s+\[([^\]]+)\] (\S+) - (.*)$")


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class LeaseSampler:
    """Scans the lease table every `period` seconds in a thread, keeping every sample, so that
    a parent's SHARD_END is seen even if the KCL deletes that lease seconds later."""

    def __init__(self, moto, application: str, period: float = 0.3):
        self.moto = moto
        self.application = application
        self.period = period
        self.samples: list[tuple[float, dict[str, dict]]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "LeaseSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), self.moto.leases(self.application)))
            except Exception as e:  # noqa: BLE001 - kept; the test reports them
                self.errors.append(str(e))
            self._stop.wait(self.period)

    def latest(self) -> dict[str, dict]:
        return self.samples[-1][1] if self.samples else {}

    def first_seen(self, shard: str, predicate) -> float | None:
        return next((t for t, leases in self.samples if shard in leases and predicate(leases[shard])), None)

    def ever_present(self, shard: str) -> bool:
        return any(shard in leases for _, leases in self.samples)


def numeric(lease: dict) -> bool:
    return (lease.get("checkpoint") or "").isdigit()


def parents_of(shards: list[dict]) -> dict[str, list[str]]:
    out = {}
    for s in shards:
        parents = [p for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p]
        if parents:
            out[s["ShardId"]] = parents
    return out


def log_events(log: str) -> tuple[dict[str, list[tuple[float, str]]], list[tuple[float, str, str]]]:
    """The children's lines per shard (their own clock) and the daemon's lines, in log order."""
    children: dict[str, list[tuple[float, str]]] = {}
    daemon: list[tuple[float, str, str]] = []
    for line in log.splitlines():
        if m := CHILD_LINE.match(line):
            children.setdefault(m.group(3), []).append((_when(m.group(1)), m.group(4)))
        elif (m := DAEMON_LINE.match(line)) and "DrainChildSTDERRTask" not in m.group(4):
            daemon.append((_when(m.group(1)), m.group(4), m.group(5)))
    return children, daemon


def reading_started(shard: str, children, daemon) -> float | None:
    """When the daemon began reading `shard`: the earliest of its polling publisher starting
    ("Starting Prefetching thread" / "Initializing shard …:<shard> with"), a fan-out
    subscription, the InitializeMessage written to the child, and the child's "initialized at".
    The KCL creates the record publisher in its InitializeTask, which only runs once
    BlockOnParentShardTask has seen every parent at SHARD_END, so no record of `shard` is
    fetched before the earliest of these."""
    marks = [t for t, text in children.get(shard, []) if text.startswith("initialized at")]
    pattern = re.compile(rf"(:{shard}\b.*(Starting Prefetching thread|with )|Initializing shard .*{shard}\b|InitializeMessage to child process for shard {shard}\b|Subscrib\w* .*{shard}\b|{shard}\b.*Subscrib)")
    marks += [t for t, _logger, text in daemon if pattern.search(text)]
    return min(marks) if marks else None


def shard_end_checkpointed(shard: str, children) -> float | None:
    """When the parent's child process logged "checkpointed at SHARD_END": it logs that line
    after the daemon confirmed the checkpoint, i.e. after the lease table holds SHARD_END."""
    times = [t for t, text in children.get(shard, []) if text == "checkpointed at SHARD_END"]
    return min(times) if times else None



def adjacent_pair(open_shards: list[dict], prefer: set[str]) -> tuple[str, str]:
    """Two open shards whose hash key ranges touch; preferably one in `prefer` and one not
    (a split's child merged with an original shard: parents of two generations)."""
    ordered = sorted(open_shards, key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))
    pairs = [
        (a["ShardId"], b["ShardId"])
        for a, b in zip(ordered, ordered[1:])
        if int(a["HashKeyRange"]["EndingHashKey"]) + 1 == int(b["HashKeyRange"]["StartingHashKey"])
    ]
    assert pairs, f"no adjacent open shards in {ordered}"
    mixed = [p for p in pairs if (p[0] in prefer) != (p[1] in prefer)]
    return (mixed or pairs)[0]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_split_then_merge_mid_stream_loses_nothing_and_keeps_per_key_order(scenario, guarantee):
    # Exactly-once: each parent commits its last transaction before SHARD_END, its
    # children start from their own positions, and a read_committed consumer checks it all.
    # Polling, not fan-out: kinesis-local 0.6.2 never ends a fan-out subscription to a closed
    # shard. Its SubscribeToShard sends an event every second with ChildShards null and a
    # ContinuationSequenceNumber that is never null (its type is not even optional), while
    # the KCL's FanOutRecordsPublisher sees the end of a shard only in an event whose
    # ContinuationSequenceNumber is null. Under FANOUT the parent's child process is never
    # sent shardEnded, so the children are never read (tried: the split's children waited
    # 150 s with the parent idle at its last record). Its GetRecords does end a closed shard
    # (NextShardIterator null, ChildShards set), which is what the KCL polls with here.
    mode = "POLLING"
    stack = scenario.stack
    scenario.setup(shards=2, partitions=4)
    # 32 keys: each of the quarter-range shards a split makes receives records for sure.
    writer = scenario.writer(rate=200, keys=32).start()
    sampler = LeaseSampler(stack.moto, scenario.application).start()
    replicator = scenario.replicator(retrieval=mode, env={"DELIVERY_GUARANTEE": guarantee})
    read_conf = {"isolation.level": "read_committed"} if guarantee == "exactly_once" else None
    try:
        stack.wait_for_leases(scenario.application, shards=2, timeout=180)
        # Replicating for real before the split: records from the original shards in Kafka.
        wait_until("first records in Kafka", lambda: count_topic(stack.kafka.bootstrap, scenario.topic) >= 400, 120)

        # -- the split ---------------------------------------------------------------------
        before = {s["ShardId"] for s in stack.kinesis.shards(scenario.stream)}
        split_parent = sorted(before)[0]
        stack.kinesis.split(scenario.stream, split_parent)
        put_at_split = writer.count
        split_children = {s["ShardId"] for s in stack.kinesis.shards(scenario.stream)} - before
        assert len(split_children) == 2, split_children

        def children_replicating(children: set[str]) -> bool:
            leases = sampler.latest()
            fed = writer.last_sequence_by_shard()
            return all(c in leases and (numeric(leases[c]) or c not in fed) for c in children) and any(c in fed for c in children)

        wait_until(f"children {sorted(split_children)} checkpointing records", lambda: children_replicating(split_children), 150)
        time.sleep(5)

        # -- the merge ---------------------------------------------------------------------
        open_now = stack.kinesis.open_shards(scenario.stream)
        merged_pair = adjacent_pair(open_now, prefer=split_children)
        before = {s["ShardId"] for s in stack.kinesis.shards(scenario.stream)}
        stack.kinesis.merge(scenario.stream, *merged_pair)
        put_at_merge = writer.count
        merge_child = {s["ShardId"] for s in stack.kinesis.shards(scenario.stream)} - before
        assert len(merge_child) == 1, merge_child
        wait_until(f"merged child {merge_child} checkpointing records", lambda: children_replicating(merge_child), 150)
        time.sleep(5)
        writer.stop()
        assert not writer.errors, writer.errors

        messages = read_topic(stack.kafka.bootstrap, scenario.topic, until_count=writer.count, timeout=180, conf=read_conf)
        report = reckon(writer, messages)
        report.seconds = round(time.monotonic() - scenario.started, 1)

        # -- checkpoints at the end ----------------------------------------------------------
        shards = stack.kinesis.shards(scenario.stream)
        ended = {s["ShardId"] for s in shards if "EndingSequenceNumber" in s["SequenceNumberRange"]}
        assert ended == {split_parent, *merged_pair}, (ended, split_parent, merged_pair)

        def final_gaps() -> dict[str, str]:
            # An ended shard's lease may be gone: the KCL's LeaseCleanupManager deletes a lease
            # only once it is at SHARD_END and its children have checkpointed, so a missing
            # ended lease is a SHARD_END one that was cleaned up (below, the sampler or the
            # log must also have seen its SHARD_END). With KCL 3.1.3's defaults (a cleanup
            # scan a minute, completed leases after 5 minutes) that does not happen within
            # this test: every ended lease is still there, at SHARD_END.
            gaps = checkpoint_gaps(writer, sampler.latest(), ended)
            return {s: why for s, why in gaps.items() if not (s in ended and why == "no lease")}

        deadline = time.monotonic() + 90
        while (gaps := final_gaps()) and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        writer.stop()
        sampler.stop()

    # -- parents at SHARD_END before their children were read -----------------------------------
    deleted = sorted(s for s in ended if sampler.ever_present(s) and s not in sampler.latest())
    parents = parents_of(shards)
    children_lines, daemon_lines = log_events(replicator.log())
    order_problems = []
    lease_problems = []
    timings = {}
    for child, its_parents in sorted(parents.items()):
        started = reading_started(child, children_lines, daemon_lines)
        first_checkpoint = sampler.first_seen(child, numeric)
        for parent in its_parents:
            ended_at = shard_end_checkpointed(parent, children_lines)
            seen_end = sampler.first_seen(parent, lambda lease: lease["checkpoint"] == "SHARD_END")
            timings[f"{parent}->{child}"] = {
                "parent_shard_end_logged": ended_at,
                "parent_shard_end_in_table": seen_end,
                "child_reading_started": started,
                "child_first_checkpoint_in_table": first_checkpoint,
            }
            # 1. The log, on one host clock: the parent's child process logged its confirmed
            #    SHARD_END checkpoint before the daemon started reading the child shard.
            if ended_at is None or started is None or not ended_at <= started:
                order_problems.append(f"{parent}->{child}: SHARD_END logged at {ended_at}, reading of the child started at {started}")
            # 2. The lease table: the sampler saw the parent at SHARD_END (unless the KCL
            #    deleted that lease between two samples, which only a SHARD_END lease can be,
            #    and the log showed it), and never saw the child with a record checkpoint while
            #    the parent lease was there and not at SHARD_END.
            if seen_end is None and not (parent in deleted and ended_at is not None):
                lease_problems.append(f"{parent}: never seen at SHARD_END in {len(sampler.samples)} samples")
            for t, leases in sampler.samples:
                if child in leases and numeric(leases[child]) and parent in leases and leases[parent]["checkpoint"] != "SHARD_END":
                    lease_problems.append(f"{child} checkpointed at {leases[child]['checkpoint']} while {parent} was at {leases[parent]['checkpoint']} (t={t})")
                    break

    # Each message's kinesis.shardId / kinesis.sequenceNumber headers name the shard and
    # sequence number PutRecords returned for that record: the children really carried the
    # records put after each reshard, and the replicator labelled them right.
    put_at = {(p.key, p.index): (p.shard, p.sequence) for p in writer.puts}
    mislabelled = [
        (payload["k"], payload["i"], headers.get("kinesis.shardId"), headers.get("kinesis.sequenceNumber"))
        for _partition, payload, headers in messages
        if put_at.get((payload["k"], payload["i"])) != (headers.get("kinesis.shardId"), headers.get("kinesis.sequenceNumber"))
    ]
    per_shard = Counter(headers.get("kinesis.shardId") for _p, _payload, headers in messages)

    scenario.record(
        report,
        retrieval=mode,
        guarantee=guarantee,
        shards_at_start=2,
        split=f"{split_parent}->{sorted(split_children)}",
        merge=f"{list(merged_pair)}->{sorted(merge_child)}",
        put_at_split=put_at_split,
        put_at_merge=put_at_merge,
        lease_samples=len(sampler.samples),
        ended_leases_deleted_by_kcl=deleted,
        records_per_shard=dict(sorted(per_shard.items())),
    )
    print(f"parent/child timings: {timings}")

    # A scan can time out on a loaded machine; a few lost samples do not matter, many would.
    assert len(sampler.errors) <= max(5, len(sampler.samples) // 10), sampler.errors[:5]
    assert_complete(report, max_duplicates=None)
    # One daemon that never lost a lease: no record is read twice.
    assert report.duplicates == 0, report.line()
    assert not mislabelled, mislabelled[:10]
    assert all(per_shard[c] > 0 for c in parents), per_shard
    assert not order_problems, order_problems
    assert not lease_problems, lease_problems
    assert not gaps, gaps
    assert replicator.alive()
