"""Records in, records out: a writer that puts numbered records into Kinesis at a steady rate,
and the reckoning of what reached Kafka (missing, duplicates, per-key order, checkpoints)."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition


@dataclass
class Put:
    key: str
    index: int  # the record's number among its key's records, from 0
    shard: str
    sequence: str


class Writer:
    """Puts records at `rate` per second in PutRecords batches, from one thread, so that each
    key's records enter Kinesis in order. Record i of key k carries {"k": k, "i": i}."""

    def __init__(self, kinesis, stream: str, *, rate: float, keys: int = 16, payload_bytes: int = 100, prefix: str = "key"):
        self.kinesis = kinesis
        self.stream = stream
        self.rate = rate
        self.keys = [f"{prefix}-{n}" for n in range(keys)]
        self.pad = "x" * max(0, payload_bytes - 40)
        self.puts: list[Put] = []
        self.next_index: dict[str, int] = defaultdict(int)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- running ---------------------------------------------------------------------------------

    def start(self, seconds: float | None = None) -> "Writer":
        self._thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(60)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)

    def put_now(self, count: int) -> None:
        """Puts `count` records at once (in batches of 500), in the caller's thread."""
        while count > 0:
            n = min(count, 500)
            self._put_batch(n)
            count -= n

    def _run(self, seconds: float | None) -> None:
        started = time.monotonic()
        sent = 0
        tick = 0.1
        while not self._stop.is_set():
            elapsed = time.monotonic() - started
            if seconds is not None and elapsed >= seconds:
                break
            due = int(self.rate * elapsed) - sent
            if due > 0:
                try:
                    self._put_batch(min(due, 500))
                    sent += min(due, 500)
                except Exception as e:  # noqa: BLE001 - reported, and the run goes on
                    self.errors.append(str(e))
                    time.sleep(0.5)
            else:
                time.sleep(tick)

    def _put_batch(self, n: int) -> None:
        with self._lock:
            entries, meta = [], []
            for j in range(n):
                key = self.keys[(len(self.puts) + j) % len(self.keys)]
                meta.append((key, self.next_index[key]))
                self.next_index[key] += 1
                entries.append({"Data": json.dumps({"k": key, "i": meta[-1][1], "pad": self.pad}).encode(), "PartitionKey": key})
            response = self.kinesis.put_records(StreamName=self.stream, Records=entries)
            # PutRecords can refuse single entries (throttling) and accept later ones of the
            # same key; putting them again would break that key's order. The emulator does not
            # throttle, so a refusal is an error of the run, reported, never papered over.
            for (key, index), result in zip(meta, response["Records"]):
                if "ErrorCode" in result:
                    raise RuntimeError(f"PutRecords refused {key}/{index}: {result['ErrorCode']}")
                self.puts.append(Put(key, index, result["ShardId"], result["SequenceNumber"]))

    # -- what was put -------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self.puts)

    def last_sequence_by_shard(self) -> dict[str, str]:
        last: dict[str, str] = {}
        for put in self.puts:
            if put.shard not in last or int(put.sequence) > int(last[put.shard]):
                last[put.shard] = put.sequence
        return last


@dataclass
class Report:
    put: int
    in_kafka: int
    missing: int
    duplicates: int
    order_violations: int
    missing_examples: list = field(default_factory=list)
    violation_examples: list = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"records put={self.put} in_kafka={self.in_kafka} missing={self.missing} "
            f"duplicates={self.duplicates} order_violations={self.order_violations}"
        )


def consumer(bootstrap: str, extra: dict | None = None) -> Consumer:
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": f"kkr-verify-{time.monotonic_ns()}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }
    conf.update(extra or {})
    return Consumer(conf)


def read_topic(bootstrap: str, topic: str, *, until_count: int | None = None, timeout: float = 60, idle: float = 3.0, conf: dict | None = None) -> list[tuple[int, dict, dict]]:
    """Every message of the topic, from the start: (partition, payload, headers). Stops when
    `until_count` messages are read and nothing more came for `idle` seconds, or at `timeout`."""
    c = consumer(bootstrap, conf)
    try:
        metadata = c.list_topics(topic, timeout=10)
        partitions = metadata.topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in partitions])
        out: list[tuple[int, dict, dict]] = []
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = c.consume(num_messages=5000, timeout=0.5)
            for m in batch:
                if m.error():
                    raise KafkaException(m.error())
                headers = {k: (v.decode() if v is not None else None) for k, v in (m.headers() or [])}
                out.append((m.partition(), json.loads(m.value()), headers))
            if batch:
                last_new = time.monotonic()
            elif until_count is None or len(out) >= until_count:
                if time.monotonic() - last_new >= idle:
                    break
        return out
    finally:
        c.close()


def count_topic(bootstrap: str, topic: str, conf: dict | None = None) -> int:
    """Messages in the topic now (high minus low watermarks), without reading them."""
    c = consumer(bootstrap, conf)
    try:
        partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for p in partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        c.close()


def reckon(writer: Writer, messages: list[tuple[int, dict, dict]]) -> Report:
    """Compares what was put with what Kafka holds. Order: per key, the first copy of each
    record must come after the first copy of every earlier record of that key (a replay
    after a crash repeats a run of records; that is a duplicate, not disorder)."""
    expected = {(p.key, p.index) for p in writer.puts}
    seen: dict[tuple[str, int], int] = defaultdict(int)
    last_first: dict[str, int] = {}
    violations = []
    for partition, payload, _headers in messages:
        ident = (payload["k"], payload["i"])
        seen[ident] += 1
        if seen[ident] == 1:
            previous = last_first.get(payload["k"], -1)
            if payload["i"] < previous:
                violations.append((payload["k"], previous, payload["i"], partition))
            else:
                last_first[payload["k"]] = payload["i"]
    missing = sorted(expected - set(seen))
    return Report(
        put=len(expected),
        in_kafka=len(messages),
        missing=len(missing),
        duplicates=sum(n - 1 for n in seen.values()),
        order_violations=len(violations),
        missing_examples=missing[:10],
        violation_examples=violations[:10],
    )


def checkpoint_gaps(writer: Writer, leases: dict[str, dict], ended: set[str] = frozenset()) -> dict[str, str]:
    """Shards whose lease is not checkpointed where it should be: at the shard's last record,
    or SHARD_END for a shard that ended. Returns shard -> what is wrong (empty when all is well)."""
    wrong = {}
    last = writer.last_sequence_by_shard()
    for shard, lease in leases.items():
        want = "SHARD_END" if shard in ended else last.get(shard)
        if want is None:
            continue  # a shard that received nothing
        if lease["checkpoint"] != want:
            wrong[shard] = f"checkpoint {lease['checkpoint']} where {want} was expected"
    for shard in last:
        if shard not in leases:
            wrong[shard] = "no lease"
    return wrong
