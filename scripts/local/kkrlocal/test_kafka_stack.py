"""End-to-end check of kkrlocal.kafka: a real Kafka 4.1.1 broker, its three client
listeners, and the BlackholeProxy partition.

Needs `java`, `mvn` (first run only, to fetch the jars) and, for the broker tests,
the confluent-kafka client (`pip install confluent-kafka==2.12.1`), imported
inside the fixture so that the proxy test runs without it.

Every wait has a deadline: the whole module finishes (or fails) in a bounded
time even if the broker hangs.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

# Importable both as part of the kkrlocal package and when pytest is pointed at
# this file alone.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kkrlocal.kafka import BlackholeProxy, KafkaBroker, fetch_kafka_jars, metadata  # noqa: E402

# The stack's cache (KKR_CACHE, as in kkrlocal.env), so the jars are fetched once for both.
CACHE_DIR = Path(os.environ.get("KKR_CACHE", "~/.cache/kinesis-kafka-replicator")).expanduser()
SCRAM_USER, SCRAM_PASSWORD = "replicator", "s3cret-pass"
MESSAGES = 100


def _log(message: str) -> None:
    # Visible with `pytest -s`; the timings are the point of the first run.
    print(f"[kafka-stack] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- proxy


class _EchoServer:
    """A loopback TCP echo server that counts the connections it accepted."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket):
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


def _recv_some(sock: socket.socket, timeout: float) -> bytes | None:
    """What arrives within `timeout`, or None if nothing does."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return None


def test_blackhole_proxy_holds_then_resumes():
    echo = _EchoServer()
    proxy = BlackholeProxy("127.0.0.1", echo.port)
    try:
        old = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        old.sendall(b"before")
        assert _recv_some(old, 5) == b"before"

        proxy.partition()
        old.sendall(b"during")
        # A connection opened during the partition: the connect succeeds (the
        # kernel completes it) but the target never sees it.
        new = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        new.sendall(b"new")
        assert _recv_some(old, 1.0) is None
        assert _recv_some(new, 0.5) is None
        assert echo.accepted == 1

        proxy.heal()
        # What was written during the partition is delivered, nothing is reset.
        assert _recv_some(old, 5) == b"during"
        assert _recv_some(new, 5) == b"new"
        assert echo.accepted == 2

        proxy.close()
        # Closing the proxy closes the proxied connections.
        assert _recv_some(old, 5) == b"", "the proxied connection is still open"
        old.close()
        new.close()
    finally:
        proxy.close()
        echo.close()


# ------------------------------------------------------------------------ broker


@pytest.fixture(scope="module")
def ck():
    try:
        import confluent_kafka
    except ImportError:
        pytest.fail("these tests need `pip install confluent-kafka==2.12.1`")
    return confluent_kafka


@pytest.fixture(scope="module")
def broker(tmp_path_factory, ck):
    t0 = time.monotonic()
    jars = fetch_kafka_jars(CACHE_DIR)
    _log(f"jars ready in {time.monotonic() - t0:.1f} s ({jars})")

    t0 = time.monotonic()
    kafka = KafkaBroker(
        tmp_path_factory.mktemp("kafka"), jars, scram_users={SCRAM_USER: SCRAM_PASSWORD}
    )
    try:
        kafka.start(timeout=90)
        _log(f"format + start in {time.monotonic() - t0:.1f} s ({kafka.bootstrap})")
        yield kafka
    finally:
        t0 = time.monotonic()
        kafka.stop()
        _log(f"stopped in {time.monotonic() - t0:.1f} s")
    assert not kafka.running


@pytest.fixture(scope="module")
def topics(broker):
    t0 = time.monotonic()
    broker.create_topic("e2e-plain", 4)
    _log(f"create_topic (4 partitions) in {time.monotonic() - t0:.2f} s")
    t0 = time.monotonic()
    broker.create_topics(
        [
            ("e2e-sasl", 4),
            ("e2e-partitionable", 4, {"retention.ms": "3600000"}),
            ("e2e-partition", 1),
        ]
    )
    _log(f"create_topics (3 topics) in {time.monotonic() - t0:.2f} s")
    md = metadata(broker.bootstrap, None)
    for name, count in [("e2e-plain", 4), ("e2e-sasl", 4), ("e2e-partitionable", 4)]:
        assert len(md.topics[name].partitions) == count


def _sasl_conf(broker: KafkaBroker, mechanism: str = "SCRAM-SHA-512", password=SCRAM_PASSWORD):
    return {
        "bootstrap.servers": broker.sasl_bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": SCRAM_USER,
        "sasl.password": password,
    }


def _produce(ck, conf: dict, topic: str, values: list[str], timeout: float = 30) -> None:
    producer = ck.Producer({**conf, "enable.idempotence": True, "linger.ms": 5})
    delivered, failed = [], []

    def on_delivery(err, msg):
        (failed if err else delivered).append(err or msg)

    for i, value in enumerate(values):
        producer.produce(topic, key=str(i), value=value, on_delivery=on_delivery)
    assert producer.flush(timeout) == 0, "messages still in flight after the deadline"
    assert failed == []
    assert len(delivered) == len(values)
    assert len({m.partition() for m in delivered}) > 1, "keys should spread over partitions"


def _consume(ck, conf: dict, topic: str, count: int, timeout: float = 45) -> list[str]:
    consumer = ck.Consumer(
        {
            **conf,
            "group.id": f"kkr-test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    values: list[str] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(values) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            values.append(msg.value().decode())
    finally:
        consumer.close()
    return values


def _roundtrip(ck, conf: dict, topic: str) -> None:
    sent = [f"{topic}-{i}" for i in range(MESSAGES)]
    _produce(ck, conf, topic, sent)
    assert sorted(_consume(ck, conf, topic, MESSAGES)) == sorted(sent)


def test_plaintext_roundtrip(ck, broker, topics):
    _roundtrip(ck, {"bootstrap.servers": broker.bootstrap}, "e2e-plain")


def test_scram_roundtrip(ck, broker, topics):
    _roundtrip(ck, _sasl_conf(broker), "e2e-sasl")
    # The other mechanism works too for the same user.
    client = ck.Producer(_sasl_conf(broker, "SCRAM-SHA-256"))
    assert "e2e-sasl" in client.list_topics(timeout=15).topics


def test_scram_wrong_password_refused(ck, broker, topics):
    errors = []
    client = ck.Producer({**_sasl_conf(broker, password="wrong"), "error_cb": errors.append})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(e.code() == ck.KafkaError._AUTHENTICATION for e in errors):
            break
        client.poll(0.2)
    assert any(e.code() == ck.KafkaError._AUTHENTICATION for e in errors), errors
    with pytest.raises(ck.KafkaException):
        client.list_topics(timeout=3)


def test_partitionable_roundtrip(ck, broker, topics):
    conf = {"bootstrap.servers": broker.partitionable_bootstrap}
    # The broker advertises the proxy on that listener, so clients stay behind it.
    md = metadata(broker.partitionable_bootstrap)
    assert md.brokers[1] == ("127.0.0.1", broker.proxy.port)
    _roundtrip(ck, conf, "e2e-partitionable")


def test_partition_holds_produce_until_heal(ck, broker, topics):
    topic = "e2e-partition"
    tp = ck.TopicPartition(topic, 0)
    conf = {"bootstrap.servers": broker.partitionable_bootstrap}
    # Observes the log directly, past the proxy.
    watcher = ck.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "kkr-watcher"})

    def high_watermark() -> int:
        return watcher.get_watermark_offsets(tp, timeout=10)[1]

    producer = ck.Producer({**conf, "enable.idempotence": True, "linger.ms": 0})
    delivered, failed = [], []

    def on_delivery(err, msg):
        (failed if err else delivered).append(err or msg)

    try:
        # Warm up: connections and metadata are in place before the partition.
        producer.produce(topic, value=b"before", partition=0, on_delivery=on_delivery)
        assert producer.flush(30) == 0 and len(delivered) == 1 and not failed
        base = high_watermark()

        broker.proxy.partition()
        partition_end = time.monotonic() + 5
        producer.produce(topic, value=b"during", partition=0, on_delivery=on_delivery)
        # A client that starts during the partition cannot even get metadata.
        newcomer = ck.Producer(conf)
        with pytest.raises(ck.KafkaException):
            newcomer.list_topics(timeout=2)
        while time.monotonic() < partition_end:
            producer.poll(0.2)
        assert len(delivered) == 1 and not failed, "a produce crossed the partition"
        assert high_watermark() == base, "the broker got the message during the partition"

        broker.proxy.heal()
        t0 = time.monotonic()
        assert producer.flush(30) == 0, "not delivered after heal"
        _log(f"delivered {time.monotonic() - t0:.2f} s after heal")
        assert not failed and [m.value() for m in delivered] == [b"before", b"during"]
        assert high_watermark() == base + 1
        assert topic in newcomer.list_topics(timeout=15).topics
    finally:
        broker.proxy.heal()
        watcher.close()
