"""The AWS side on loopback: kinesis-local (Kinesis) and moto (DynamoDB, for the leases)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

from .env import AWS_ENV, REPO, Service, free_port, wait_for_port

LOOPBACK_ONLY = REPO / "scripts" / "local" / "loopback-only.js"


def _client(service: str, endpoint: str, region: str | None = None):
    """A boto3 client for an emulator. Both emulators keep a namespace per region (the one
    a request is signed for): a stream or table made in one region is absent from others."""
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region or AWS_ENV["AWS_REGION"],
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
        self._clients = {AWS_ENV["AWS_REGION"]: self.client}

    def client_for(self, region: str | None = None):
        """The client for `region` (default: AWS_ENV's). kinesis-local keeps streams per
        region, so a daemon with KCL_REGION=eu-west-1 sees only streams made there."""
        region = region or AWS_ENV["AWS_REGION"]
        if region not in self._clients:
            self._clients[region] = _client("kinesis", self.endpoint, region)
        return self._clients[region]

    def create_stream(self, name: str, shards: int, region: str | None = None) -> None:
        self.client_for(region).create_stream(StreamName=name, ShardCount=shards)
        self.wait_active(name, region=region)

    def wait_active(self, name: str, timeout: float = 30, region: str | None = None) -> None:
        client = self.client_for(region)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            summary = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
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
        self._clients = {AWS_ENV["AWS_REGION"]: self.dynamodb}

    def client_for(self, region: str | None = None):
        """The DynamoDB client for `region` (default: AWS_ENV's); moto keeps tables per region."""
        region = region or AWS_ENV["AWS_REGION"]
        if region not in self._clients:
            self._clients[region] = _client("dynamodb", self.endpoint, region)
        return self._clients[region]

    def leases(self, table: str, region: str | None = None) -> dict[str, dict]:
        """The lease table: shard id -> {checkpoint, subSequence, owner, counter}; {} before it
        exists. `region`: the daemon's KCL_REGION, when it is not AWS_ENV's."""
        dynamodb = self.client_for(region)
        try:
            pages = dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
            items = [item for page in pages for item in page["Items"]]
        except dynamodb.exceptions.ResourceNotFoundException:
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
