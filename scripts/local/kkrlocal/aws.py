"""The AWS side on loopback: kinesis-local (Kinesis) and moto (DynamoDB, for the leases)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

from .env import AWS_ENV, REPO, Service, free_port, wait_for_port

LOOPBACK_ONLY = REPO / "scripts" / "local" / "loopback-only.js"


def _client(service: str, endpoint: str):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=AWS_ENV["AWS_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 10, "mode": "standard"}, connect_timeout=5, read_timeout=30),
    )


class KinesisLocal:
    """kinesis-local (npm): speaks HTTP/2 cleartext, which the daemon's Kinesis client requires,
    and ends parent shards after SplitShard/MergeShards, which moto's Kinesis does not."""

    def __init__(self, main_js: Path, workdir: Path):
        self.port = free_port()
        tls_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.service = Service(
            "kinesis-local",
            # --require: kinesis-local binds 0.0.0.0 and has no setting for the host.
            ["node", "--require", str(LOOPBACK_ONLY), str(main_js)],
            workdir / "kinesis-local.log",
            env={
                "KINESIS_MOCK_PLAIN_PORT": str(self.port),
                "KINESIS_MOCK_TLS_PORT": str(tls_port),
                "KINESIS_MOCK_CERT_PATH": str(main_js.parent / "server.json"),
                "LOG_LEVEL": "WARN",
                # Stream operations complete at once: no test waits on a fake 500 ms.
                "CREATE_STREAM_DURATION": "0ms",
                "SPLIT_SHARD_DURATION": "0ms",
                "MERGE_SHARDS_DURATION": "0ms",
                "REGISTER_STREAM_CONSUMER_DURATION": "0ms",
                "SHARD_LIMIT": "200",
            },
            cwd=workdir,
        )
        wait_for_port(self.port, time.monotonic() + 60, self.service.proc, "kinesis-local")
        self.client = _client("kinesis", self.endpoint)

    def create_stream(self, name: str, shards: int) -> None:
        self.client.create_stream(StreamName=name, ShardCount=shards)
        self.wait_active(name)

    def wait_active(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            summary = self.client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
            if summary["StreamStatus"] == "ACTIVE":
                return
            time.sleep(0.1)
        raise TimeoutError(f"stream {name} not ACTIVE within {timeout} s")

    def shards(self, name: str) -> list[dict]:
        out, token = [], None
        while True:
            page = self.client.list_shards(NextToken=token) if token else self.client.list_shards(StreamName=name)
            out += page["Shards"]
            token = page.get("NextToken")
            if not token:
                return out

    def open_shards(self, name: str) -> list[dict]:
        return [s for s in self.shards(name) if "EndingSequenceNumber" not in s["SequenceNumberRange"]]

    def split(self, name: str, shard_id: str) -> None:
        """Splits a shard at the middle of its hash key range."""
        shard = next(s for s in self.shards(name) if s["ShardId"] == shard_id)
        low = int(shard["HashKeyRange"]["StartingHashKey"])
        high = int(shard["HashKeyRange"]["EndingHashKey"])
        self.client.split_shard(StreamName=name, ShardToSplit=shard_id, NewStartingHashKey=str((low + high) // 2 + 1))
        self.wait_active(name)

    def merge(self, name: str, shard_id: str, adjacent_id: str) -> None:
        self.client.merge_shards(StreamName=name, ShardToMerge=shard_id, AdjacentShardToMerge=adjacent_id)
        self.wait_active(name)

    def stop(self) -> None:
        # Its SIGTERM handling can take 30 s; it holds nothing worth a graceful stop.
        self.service.stop(grace=2.0)


class Moto:
    """moto's server, for DynamoDB: the lease table with its index, and KCL 3.x's
    coordinator-state and worker-metrics tables."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.service = Service(
            "moto",
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            workdir / "moto.log",
        )
        wait_for_port(self.port, time.monotonic() + 60, self.service.proc, "moto")
        self.dynamodb = _client("dynamodb", self.endpoint)

    def leases(self, table: str) -> dict[str, dict]:
        """The lease table: shard id -> {checkpoint, subSequence, owner, counter}; {} before it exists."""
        try:
            pages = self.dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
            items = [item for page in pages for item in page["Items"]]
        except self.dynamodb.exceptions.ResourceNotFoundException:
            return {}
        out = {}
        for item in items:
            out[item["leaseKey"]["S"]] = {
                "checkpoint": item.get("checkpoint", {}).get("S"),
                "subSequence": int(item.get("checkpointSubSequenceNumber", {}).get("N", "0")),
                "owner": item.get("leaseOwner", {}).get("S"),
                "counter": int(item.get("leaseCounter", {}).get("N", "0")),
            }
        return out

    def stop(self) -> None:
        self.service.stop(grace=5.0)
