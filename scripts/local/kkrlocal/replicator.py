"""The replicator as users run it: run.sh, which starts the KCL MultiLangDaemon, which starts
one kinesis-kafka-replicator child per shard lease. Here pointed at the local emulators."""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from pathlib import Path

from .env import AWS_ENV, RUN_SH, Service, children_of, pid_alive

# Daemon settings that make a one-machine stack answer in seconds rather than minutes. Each is
# an ordinary KCL property, passed the way users pass any: KCL_PROP_<key>.
FAST_KCL = {
    # KCL 3.x sleeps shardSyncIntervalMillis after its first shard sync (60 s by default)
    # before it starts taking leases, and syncs shards that often to find a reshard's children.
    "shardSyncIntervalMillis": "3000",
    # How often the leader assigns leases, and how often workers report the load it uses.
    "leaseAssignmentIntervalMillis": "2000",
    "workerMetricsReporterFreqInMillis": "2000",
    "failoverTimeMillis": "6000",
    "parentShardPollIntervalMillis": "1000",
    "idleTimeBetweenReadsInMillis": "250",
    "gracefulLeaseHandoffTimeoutMillis": "15000",
    "shutdownGraceMillis": "25000",
}

# The JVM: CBOR off (the emulators speak JSON); a small heap and the quick compiler, since
# several daemons and a broker share two cores.
JAVA_OPTS = "-Daws.cborEnabled=false -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"

_serial = itertools.count(1)


class Replicator:
    """One daemon started through run.sh (as `docker run` would), with its own work dir and log."""

    def __init__(
        self,
        workdir: Path,
        *,
        stream: str,
        application: str,
        kinesis_endpoint: str,
        dynamodb_endpoint: str,
        kcl_jars: Path,
        binary: Path,
        env: dict[str, str],
        retrieval: str = "POLLING",
        kcl_props: dict[str, str] | None = None,
        name: str | None = None,
    ):
        self.name = name or f"daemon-{next(_serial)}"
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "daemon.log"
        full = {
            **AWS_ENV,
            "KCL_STREAM_NAME": stream,
            "KCL_APPLICATION_NAME": application,
            "KCL_REGION": AWS_ENV["AWS_REGION"],
            "KCL_INITIAL_POSITION": "TRIM_HORIZON",
            "KCL_AWS_CREDENTIALS_PROVIDER": "EnvironmentVariableCredentialsProvider",
            "KCL_JARS_DIR": str(kcl_jars),
            "REPLICATOR_BIN": str(binary),
            "REPLICATOR_WORK_DIR": str(self.workdir),
            "JAVA_OPTS": JAVA_OPTS,
            "KCL_PROP_kinesisEndpoint": kinesis_endpoint,
            "KCL_PROP_dynamoDBEndpoint": dynamodb_endpoint,
            "KCL_PROP_metricsLevel": "NONE",
            "KCL_PROP_retrievalMode": retrieval,
        }
        for key, value in {**FAST_KCL, **(kcl_props or {})}.items():
            full[f"KCL_PROP_{key}"] = value
        full.update(env)
        self.env = full
        self.service: Service | None = None
        self.start()

    def start(self) -> None:
        # Variables of the caller that would change what run.sh does are not inherited.
        for key in [k for k in os.environ if k.startswith(("KCL_PROP_", "KAFKA_", "KCL_"))]:
            self.env.setdefault(key, "")
        self.service = Service(self.name, ["bash", str(RUN_SH)], self.log_path, env=self.env)

    # -- what a test or the quickstart looks at -------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.service is not None and self.service.alive()

    def children(self) -> list[int]:
        """The replicator children the daemon runs now (one per shard lease)."""
        if not self.alive():
            return []
        return [pid for pid in children_of(self.service.pid) if pid_alive(pid)]

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    # -- how it ends ----------------------------------------------------------------------------

    def terminate(self, timeout: float = 60) -> int | None:
        """SIGTERM to the daemon alone, as `docker stop` sends it; waits for it to exit."""
        assert self.service is not None
        self.service.signal(signal.SIGTERM)
        return self.service.wait(timeout)

    def kill(self) -> list[int]:
        """SIGKILL to the daemon alone (a crash); returns the children it left behind."""
        assert self.service is not None
        orphans = self.children()
        self.service.signal(signal.SIGKILL)
        self.service.wait(10)
        return orphans

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(grace=30.0)


def wait_all_exit(pids: list[int], timeout: float) -> list[int]:
    """Waits for processes to exit; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [pid for pid in pids if pid_alive(pid)]
        if not left:
            return []
        time.sleep(0.2)
    return [pid for pid in pids if pid_alive(pid)]
