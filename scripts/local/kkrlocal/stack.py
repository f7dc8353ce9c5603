"""The whole local stack in one object: Kafka, Kinesis, DynamoDB, and replicators on demand."""

from __future__ import annotations

import time
from pathlib import Path

from . import fetch
from .aws import KinesisLocal, Moto
from .env import say
from .kafka import KafkaBroker
from .replicator import Replicator


class Stack:
    """Starts the emulators and the broker in `workdir`; `replicator()` starts daemons through
    run.sh against them. `stop()` (or leaving the `with` block) stops all of it."""

    def __init__(self, workdir: Path, *, scram_users: dict[str, str] | None = None, build: bool = False):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.kcl_jars = fetch.kcl_jars()
        self.binary = fetch.replicator_binary(build=build)
        self.replicators: list[Replicator] = []
        self.kafka = self.kinesis = self.moto = None
        try:
            started = time.monotonic()
            self.kafka = KafkaBroker(workdir / "kafka", fetch.kafka_jars(), scram_users=scram_users or {})
            self.kafka.start()
            self.kinesis = KinesisLocal(fetch.kinesis_local(), workdir)
            self.moto = Moto(workdir)
            say(f"Kafka on {self.kafka.bootstrap}, Kinesis on {self.kinesis.endpoint}, DynamoDB on {self.moto.endpoint} ({time.monotonic() - started:.0f} s)")
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def replicator(self, *, stream: str, application: str, topic: str, env: dict[str, str] | None = None, bootstrap: str | None = None, **kwargs) -> Replicator:
        """A daemon through run.sh, reading `stream` as `application`, writing to `topic`."""
        replicator = Replicator(
            self.workdir,
            stream=stream,
            application=application,
            kinesis_endpoint=self.kinesis.endpoint,
            dynamodb_endpoint=self.moto.endpoint,
            kcl_jars=self.kcl_jars,
            binary=self.binary,
            env={"KAFKA_BOOTSTRAP_SERVERS": bootstrap or self.kafka.bootstrap, "KAFKA_TOPIC": topic, **(env or {})},
            **kwargs,
        )
        self.replicators.append(replicator)
        return replicator

    def wait_for_leases(self, application: str, shards: int, owners: int = 1, timeout: float = 120, region: str | None = None) -> dict[str, dict]:
        """Waits until `shards` leases are held, by at least `owners` distinct workers.
        `region`: the daemons' KCL_REGION, when it is not AWS_ENV's (moto keeps tables per region)."""
        deadline = time.monotonic() + timeout
        leases: dict[str, dict] = {}
        while time.monotonic() < deadline:
            leases = self.moto.leases(application, region)
            held = [lease for lease in leases.values() if lease["owner"] and lease["checkpoint"] != "SHARD_END"]
            if len(held) >= shards and len({lease["owner"] for lease in held}) >= owners:
                return leases
            time.sleep(1)
        raise TimeoutError(f"{application}: leases not taken within {timeout} s: {leases}")

    def stop(self) -> None:
        for replicator in reversed(self.replicators):
            replicator.stop()
        for part in (self.moto, self.kinesis, self.kafka):
            if part is not None:
                part.stop()
