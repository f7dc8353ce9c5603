"""The metrics endpoint as a platform team scrapes it: run.sh with METRICS_PORT, the real daemon,
one child per shard reporting to the container's metrics server."""

import json
import time
import urllib.error
import urllib.request

from conftest import assert_complete, wait_until
from kkrlocal.env import free_port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def series(text: str, name: str) -> dict[str, float]:
    """{shard: value} of one per-shard series in a Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            shard = labels.split('shard="', 1)[1].split('"', 1)[0]
            out[shard] = float(value)
    return out


def test_the_endpoint_reports_every_shard_of_a_running_daemon(scenario):
    scenario.setup(shards=4, partitions=4)
    port = free_port()
    writer = scenario.writer(rate=200).start(seconds=20)
    daemon = scenario.replicator(env={"METRICS_PORT": str(port), "METRICS_BIND": "127.0.0.1"})
    scenario.stack.wait_for_leases(scenario.application, shards=4, timeout=150)
    writer.wait(60)
    report = scenario.read(writer)
    assert_complete(report)
    gaps = scenario.wait_checkpointed(writer)
    assert not gaps, gaps

    def settled():
        status, text = get(port, "/metrics")
        acknowledged = series(text, "kkr_messages_acknowledged_total")
        return status == 200 and len(acknowledged) == 4 and sum(acknowledged.values()) >= writer.count

    wait_until("every record counted as acknowledged on /metrics", settled, timeout=30)
    status, text = get(port, "/metrics")
    received = series(text, "kkr_records_received_total")
    acknowledged = series(text, "kkr_messages_acknowledged_total")
    latency_count = series(text, "kkr_replication_latency_seconds_count")
    since_checkpoint = series(text, "kkr_since_last_checkpoint_seconds")
    assert sorted(received) == sorted(writer.last_sequence_by_shard()), text
    # One daemon that never lost a lease: nothing replayed, every record counted once.
    assert sum(received.values()) == writer.count, (received, writer.count)
    assert acknowledged == received
    assert latency_count == acknowledged, "one latency observation per acknowledged record"
    assert all(s < 60 for s in since_checkpoint.values()) and len(since_checkpoint) == 4, since_checkpoint
    assert "kkr_daemon_up 1" in text and "kkr_shards 4" in text

    status, body = get(port, "/status")
    assert status == 200
    shards = json.loads(body)["shards"]
    assert sorted(s["shard"] for s in shards) == sorted(received)
    assert all(s["state"] == "processing" and s["last_checkpoint"] for s in shards), shards
    assert get(port, "/healthz") == (200, "ok\n")

    scenario.record(report, metrics_port=port, scraped_records=int(sum(received.values())),
                    latency_observations=int(sum(latency_count.values())))

    # The server goes with the daemon.
    daemon.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            get(port, "/healthz")
        except (urllib.error.URLError, ConnectionError, OSError):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the metrics server outlived the daemon")
