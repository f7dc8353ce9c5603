"""A real single-node Apache Kafka broker (KRaft) for the local end-to-end stack.

- fetch_kafka_jars(): the broker's jars, resolved once from Maven Central by `mvn`
  (kafka-pom.xml beside this file) and cached.
- KafkaBroker: writes server.properties, formats the storage (with SCRAM users),
  runs `kafka.Kafka` in its own process group, waits until it serves requests,
  creates topics, stops it.
- BlackholeProxy: a TCP proxy that can be "partitioned" (traffic stops in both
  directions, nothing is closed) and healed, put in front of one of the broker's
  listeners to simulate a network partition between a client and Kafka.

Standard library only: the few Kafka requests needed here (ApiVersions, Metadata,
CreateTopics) are encoded by hand in their non-flexible versions, which avoids both
a Python Kafka client and Kafka's own admin tools (kafka-tools drags in Kafka
Connect, Jetty and Jersey, and costs a JVM start per call).
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

KAFKA_VERSION = "4.1.1"
POM_PATH = Path(__file__).with_name("kafka-pom.xml")
_MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_COMPLETE_MARKER = ".complete"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------- jars


def fetch_kafka_jars(cache_dir: Path) -> Path:
    """Return a folder holding the broker's runtime jars, fetching them once.

    The folder is `cache_dir/kafka-<version>/`. It is reused when its marker file
    holds the digest of kafka-pom.xml, so editing the pom (e.g. another version)
    refetches. Maven copies into a temporary sibling folder that is renamed into
    place only once complete, so an interrupted fetch never looks finished and
    two concurrent fetches cannot mix their files.
    """
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"kafka-{KAFKA_VERSION}"
    marker = target / _COMPLETE_MARKER
    digest = hashlib.sha256(POM_PATH.read_bytes()).hexdigest()
    if marker.is_file() and marker.read_text().strip() == digest:
        return target

    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("`mvn` is not on PATH: it is needed once to fetch Apache Kafka's jars")
    print(
        f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central (once, about a minute)",
        file=sys.stderr,
        flush=True,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".kafka-{KAFKA_VERSION}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM_PATH),
        f"{_MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900
        )
    except subprocess.TimeoutExpired as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(
            f"fetching Kafka's jars with Maven took over {e.timeout:.0f} s"
        ) from None
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        # Maven prints its errors on stdout; -q keeps only those, but keep a
        # fallback for failures that happen before Maven's logging is set up.
        lines = _ANSI_ESCAPE.sub("", proc.stdout + proc.stderr).splitlines()
        errors = [line for line in lines if "[ERROR]" in line]
        # Past the first empty "[ERROR] " line Maven only adds its generic hints.
        if "[ERROR]" in (e.strip() for e in errors):
            errors = errors[: [e.strip() for e in errors].index("[ERROR]")]
        errors = errors or lines[-20:]
        raise RuntimeError(
            f"fetching Kafka's jars failed (`{' '.join(cmd)}` exited {proc.returncode}):\n"
            + "\n".join(errors)
        )
    (staging / _COMPLETE_MARKER).write_text(digest + "\n")
    shutil.rmtree(target, ignore_errors=True)  # a stale or incomplete earlier fetch
    try:
        staging.rename(target)
    except OSError:
        # A concurrent fetch renamed its own copy first: use that one.
        shutil.rmtree(staging, ignore_errors=True)
        if not (marker.is_file() and marker.read_text().strip() == digest):
            raise
    return target


# ------------------------------------------------------------ Kafka wire protocol
# Only non-flexible versions (plain int16-length strings, int32-length arrays,
# request header v1, response header v0), which every Kafka 4.x broker still
# accepts: ApiVersions v0, Metadata v4 (v0-v3 were removed in 4.0),
# CreateTopics v4 (v0-v1 were removed in 4.0).

_API_METADATA = 3
_API_API_VERSIONS = 18
_API_CREATE_TOPICS = 19

_ERROR_NAMES = {
    3: "UNKNOWN_TOPIC_OR_PARTITION",
    5: "LEADER_NOT_AVAILABLE",
    7: "REQUEST_TIMED_OUT",
    17: "INVALID_TOPIC_EXCEPTION",
    35: "UNSUPPORTED_VERSION",
    36: "TOPIC_ALREADY_EXISTS",
    37: "INVALID_PARTITIONS",
    38: "INVALID_REPLICATION_FACTOR",
    40: "INVALID_CONFIG",
    41: "NOT_CONTROLLER",
    42: "INVALID_REQUEST",
    45: "POLICY_VIOLATION",
}
_TOPIC_ALREADY_EXISTS = 36


class KafkaProtocolError(RuntimeError):
    """A Kafka response carried a non-zero error code."""

    def __init__(self, what: str, code: int, message: str | None = None):
        self.code = code
        name = _ERROR_NAMES.get(code, f"error {code}")
        super().__init__(f"{what}: {name}" + (f" ({message})" if message else ""))


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _nullable_string(s: str | None) -> bytes:
    return struct.pack(">h", -1) if s is None else _string(s)


def _array(items: list[bytes]) -> bytes:
    return struct.pack(">i", len(items)) + b"".join(items)


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def _unpack(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def int8(self) -> int:
        return self._unpack(">b")

    def int16(self) -> int:
        return self._unpack(">h")

    def int32(self) -> int:
        return self._unpack(">i")

    def nullable_string(self) -> str | None:
        n = self.int16()
        if n < 0:
            return None
        s = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return s

    def string(self) -> str:
        s = self.nullable_string()
        assert s is not None, "unexpected null string"
        return s

    def array(self, read_item) -> list:
        n = self.int32()
        return [read_item() for _ in range(max(n, 0))]


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("Kafka closed the connection")
        buf += chunk
    return bytes(buf)


def kafka_request(
    bootstrap: str, api_key: int, api_version: int, body: bytes, timeout: float = 10.0
) -> _Reader:
    """Send one request on a fresh connection and return a reader on the response body.

    One connection per request keeps this stateless; the few requests made here
    are not worth pooling.
    """
    host, _, port = bootstrap.rpartition(":")
    correlation_id = 1
    header = struct.pack(">hhi", api_key, api_version, correlation_id) + _string("kkrlocal")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
        response = _recv_exactly(sock, size)
    reader = _Reader(response)
    if reader.int32() != correlation_id:
        raise ConnectionError("Kafka answered with another correlation id")
    return reader


def api_versions(bootstrap: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
    """ApiVersions v0: {api_key: (min_version, max_version)}."""
    r = kafka_request(bootstrap, _API_API_VERSIONS, 0, b"", timeout)
    error = r.int16()
    if error:
        raise KafkaProtocolError("ApiVersions", error)
    keys = r.array(lambda: (r.int16(), r.int16(), r.int16()))
    return {key: (lo, hi) for key, lo, hi in keys}


@dataclass
class PartitionMetadata:
    index: int
    error: int
    leader: int  # -1 while no leader is elected
    replicas: list[int]
    isr: list[int]


@dataclass
class TopicMetadata:
    name: str
    error: int
    partitions: list[PartitionMetadata]


@dataclass
class ClusterMetadata:
    brokers: dict[int, tuple[str, int]]  # node id -> advertised (host, port)
    cluster_id: str | None
    controller_id: int
    topics: dict[str, TopicMetadata] = field(default_factory=dict)


def metadata(
    bootstrap: str, topics: Iterable[str] | None = (), timeout: float = 10.0
) -> ClusterMetadata:
    """Metadata v4 as the broker at `bootstrap` sees it.

    `topics=()` asks for brokers only, `None` for every topic. Never creates
    topics (allow_auto_topic_creation=false).

    The broker list holds only brokers that are registered and unfenced, so a
    broker listing itself can host partitions.
    """
    if topics is None:
        topic_field = struct.pack(">i", -1)
    else:
        topic_field = _array([_string(t) for t in topics])
    r = kafka_request(bootstrap, _API_METADATA, 4, topic_field + b"\x00", timeout)
    r.int32()  # throttle_time_ms
    brokers = r.array(lambda: (r.int32(), r.string(), r.int32(), r.nullable_string()))
    cluster_id = r.nullable_string()
    controller_id = r.int32()

    def partition() -> PartitionMetadata:
        error, index, leader = r.int16(), r.int32(), r.int32()
        replicas = r.array(r.int32)
        isr = r.array(r.int32)
        return PartitionMetadata(index, error, leader, replicas, isr)

    def topic() -> TopicMetadata:
        error, name = r.int16(), r.string()
        r.int8()  # is_internal
        return TopicMetadata(name, error, r.array(partition))

    return ClusterMetadata(
        brokers={node: (host, port) for node, host, port, _rack in brokers},
        cluster_id=cluster_id,
        controller_id=controller_id,
        topics={t.name: t for t in r.array(topic)},
    )


def _create_topics_body(topics: list[tuple[str, int, Mapping[str, str]]], timeout_ms: int) -> bytes:
    """CreateTopics v4 request body."""
    entries = []
    for name, partitions, config in topics:
        entries.append(
            _string(name)
            + struct.pack(">ih", partitions, 1)  # num_partitions, replication_factor
            + _array([])  # assignments: none, let the controller place them
            + _array([_string(k) + _nullable_string(str(v)) for k, v in config.items()])
        )
    return _array(entries) + struct.pack(">ib", timeout_ms, 0)  # validate_only=false


# ------------------------------------------------------------------------ broker


def _free_loopback_ports(n: int) -> list[int]:
    """n distinct free ports on 127.0.0.1.

    The sockets are all held until every port is picked (so the n ports differ),
    then released for the broker to bind. Another process could take one in
    between; on a test machine that is rare, and the broker then fails to start
    with "Address already in use" in broker.log.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# SCRAM users go through StorageTool's `--add-scram 'MECH=[name=...,password=...]'`,
# whose parser splits on ',' and '=' and treats '[', ']' and '"' specially.
_SCRAM_SAFE = re.compile(r"[A-Za-z0-9._~@+/:-]+")


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return "java"


def _parent_death_signal_setter():
    """A preexec_fn making the child get SIGKILL when the thread that forked it ends.

    atexit covers a normal or exception exit of the Python process, not a
    SIGKILL of it (e.g. a CI timeout), which would leave an orphan JVM holding
    ports and memory. Linux delivers this signal when the *thread* that forked
    the child ends, which is why it is only used when starting from the main
    thread (see KafkaBroker.start). Returns None where prctl is not available.

    libc is loaded here, in the parent: between fork and exec the child should
    only call what is already loaded (an import there could deadlock on a lock
    another thread of the parent held at fork time).
    """
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):  # not Linux / no libc
        return None
    parent = os.getpid()
    PR_SET_PDEATHSIG = 1

    def set_parent_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent already died before prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return set_parent_death_signal


_LOG4J2_PROPERTIES = """\
# Written by kkrlocal/kafka.py. Quiet: warnings and errors, plus the lines that
# tell the broker started and stopped.
status = warn
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.console.ref = console
logger.raftserver.name = kafka.server.KafkaRaftServer
logger.raftserver.level = INFO
logger.brokerserver.name = kafka.server.BrokerServer
logger.brokerserver.level = INFO
"""


class KafkaBroker:
    """One Kafka 4.x node, broker and controller in one JVM, on 127.0.0.1.

    Listeners (ports picked at construction, so the addresses are known before
    start()):
      - PLAINTEXT on `bootstrap`: no authentication; also the inter-broker listener.
      - SASL_PLAINTEXT on `sasl_bootstrap`: SCRAM-SHA-256 and SCRAM-SHA-512, with
        the users of `scram_users` (name -> password), created when the storage
        is formatted, for both mechanisms.
      - PARTITIONABLE (PLAINTEXT protocol) on an internal port, reached through
        `proxy` (a BlackholeProxy) at `partitionable_bootstrap`. The broker
        advertises the proxy's address on this listener, so a client that
        bootstraps there is told to reach the broker via the proxy for all its
        traffic, and `proxy.partition()` cuts it off from Kafka entirely.
      - CONTROLLER on an internal port (KRaft quorum, this node only).

    Use as a context manager, or call start() and stop(). stop() also runs at
    interpreter exit if it was not called.
    """

    NODE_ID = 1

    def __init__(
        self,
        workdir: Path,
        jars_dir: Path,
        scram_users: Mapping[str, str] | None = None,
    ):
        self.workdir = Path(workdir)
        self.jars_dir = Path(jars_dir)
        self.scram_users = dict(scram_users or {})
        for name, password in self.scram_users.items():
            if not (_SCRAM_SAFE.fullmatch(name) and _SCRAM_SAFE.fullmatch(password)):
                raise ValueError(
                    f"SCRAM user {name!r}: names and passwords are limited to "
                    f"{_SCRAM_SAFE.pattern} (StorageTool's --add-scram syntax)"
                )
        ports = _free_loopback_ports(4)
        self.port, self.sasl_port, self.internal_port, self.controller_port = ports
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.sasl_bootstrap = f"127.0.0.1:{self.sasl_port}"
        # The proxy must exist before server.properties is written: its port is
        # what the PARTITIONABLE listener advertises.
        self.proxy = BlackholeProxy("127.0.0.1", self.internal_port)
        self.partitionable_bootstrap = f"127.0.0.1:{self.proxy.port}"
        self.cluster_id = _random_cluster_id()
        self.log_path = self.workdir / "broker.log"
        self._proc: subprocess.Popen | None = None
        self._stopped = False
        atexit.register(self.stop)

    # -- lifecycle

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 90) -> None:
        """Format the storage if needed, start the JVM, wait until it serves requests.

        Raises RuntimeError, with the end of broker.log, if the broker exits or
        does not list itself in Metadata within `timeout` seconds.
        """
        if self._stopped:
            raise RuntimeError("this KafkaBroker was stopped for good (use restart() to bounce it)")
        if self.running:
            return
        deadline = time.monotonic() + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        (self.workdir / "server.properties").write_text(self._server_properties())
        self._format_storage(timeout=max(deadline - time.monotonic(), 1))

        cmd = [
            _java(), "-Xms256m", "-Xmx768m", "-XX:+UseSerialGC",
            *self._common_jvm_flags(),
            "kafka.Kafka", str(self.workdir / "server.properties"),
        ]  # fmt: skip
        preexec = None
        if threading.current_thread() is threading.main_thread():
            preexec = _parent_death_signal_setter()
        with open(self.log_path, "ab") as log:
            # Own process group: stop() signals the JVM and anything it spawned,
            # and a Ctrl-C in the terminal reaches only the Python side, whose
            # cleanup then stops the broker in order.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=preexec,
            )
        try:
            self._wait_ready(deadline)
        except BaseException:
            self._stop_jvm()
            raise

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 15 s) and close the proxy.

        Final and idempotent: the data stays in workdir, but this object cannot
        start again (its proxy is gone); restart() is the way to bounce the broker.
        """
        self._stopped = True
        self._stop_jvm()
        self.proxy.close()
        atexit.unregister(self.stop)

    def restart(self, timeout: float = 90) -> None:
        """Stop the JVM (gracefully) and start it again on the same data, ports and
        SCRAM users (the storage is already formatted, so it is not formatted again).

        The proxy keeps running, so connections through it see the broker go
        away and come back, as through a real network.
        """
        self._stop_jvm()
        self.start(timeout=timeout)

    def _stop_jvm(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            proc.wait(timeout=10)

    def _common_jvm_flags(self) -> list[str]:
        return [
            "-cp", str(self.jars_dir / "*"),  # the JVM expands `dir/*` itself
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-Djava.awt.headless=true",
            # log4j2's own shutdown hook would stop logging while Kafka is still
            # shutting down (and warn about it); the console appender flushes
            # every line anyway.
            "-Dlog4j2.shutdownHookEnabled=false",
        ]  # fmt: skip

    def _format_storage(self, timeout: float) -> None:
        cmd = [
            _java(), "-Xmx256m", "-XX:+UseSerialGC", *self._common_jvm_flags(),
            "kafka.tools.StorageTool", "format",
            "--config", str(self.workdir / "server.properties"),
            "--cluster-id", self.cluster_id,
            # A restart on the same workdir keeps its data (and SCRAM users).
            "--ignore-formatted",
        ]  # fmt: skip
        for name, password in self.scram_users.items():
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                cmd += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        try:
            proc = subprocess.run(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"formatting Kafka's storage took over {timeout:.0f} s") from None
        with open(self.log_path, "a") as log:
            log.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(
                f"kafka.tools.StorageTool format exited {proc.returncode}:\n"
                + (proc.stdout + proc.stderr).strip()
            )

    def _server_properties(self) -> str:
        voters = f"{self.NODE_ID}@127.0.0.1:{self.controller_port}"
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        props = {
            "process.roles": "broker,controller",
            "node.id": self.NODE_ID,
            # A static quorum of this node alone: `format` then needs no
            # --standalone / --initial-controllers.
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "listeners": ",".join(
                [
                    f"PLAINTEXT://127.0.0.1:{self.port}",
                    f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
                    f"PARTITIONABLE://127.0.0.1:{self.internal_port}",
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                ]
            ),
            "advertised.listeners": ",".join(
                [
                    f"PLAINTEXT://127.0.0.1:{self.port}",
                    f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
                    # The proxy's port, not the listener's own: see the class doc.
                    f"PARTITIONABLE://127.0.0.1:{self.proxy.port}",
                ]
            ),
            "listener.security.protocol.map": ",".join(
                [
                    "PLAINTEXT:PLAINTEXT",
                    "SASL_PLAINTEXT:SASL_PLAINTEXT",
                    "PARTITIONABLE:PLAINTEXT",
                    "CONTROLLER:PLAINTEXT",
                ]
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            # SCRAM on the SASL listener only. The server side needs a JAAS entry
            # per mechanism even though it authenticates nobody outwards (the
            # credentials themselves live in the metadata log).
            "listener.name.sasl_plaintext.sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": jaas,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": jaas,
            "log.dirs": self.workdir / "data",
            "metadata.log.dir": self.workdir / "metadata",
            # One node: every internal topic with one replica.
            "offsets.topic.replication.factor": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "min.insync.replicas": 1,
            "default.replication.factor": 1,
            # Few partitions for internal topics: the first consumer group or
            # transactional producer then waits for 4 leaders, not 50.
            "offsets.topic.num.partitions": 4,
            "transaction.state.log.num.partitions": 4,
            "num.partitions": 1,
            # Topics exist only when a test creates them, as in production.
            "auto.create.topics.enable": "false",
            # The first consumer of a group gets its partitions without the
            # default 3 s wait for more members.
            "group.initial.rebalance.delay.ms": 0,
            # Sized for 2 cores and a short-lived broker.
            "num.network.threads": 2,
            "num.io.threads": 2,
            "background.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "log.segment.bytes": 16 * 1024 * 1024,
            "log.cleaner.dedupe.buffer.size": 8 * 1024 * 1024,
            "log.cleaner.threads": 1,
        }
        lines = ["# Written by kkrlocal/kafka.py"]
        lines += [f"{key}={value}" for key, value in props.items()]
        return "\n".join(lines) + "\n"

    def _wait_ready(self, deadline: float) -> None:
        """Wait until the broker lists itself in a Metadata response.

        A TCP connect alone proves little: the listening sockets are bound early
        and the kernel completes handshakes long before Kafka processes requests.
        A listed broker is registered with the controller and unfenced.
        """
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(
                    f"the Kafka broker exited (code {code}) while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                md = metadata(self.bootstrap, (), timeout=2)
                if self.NODE_ID in md.brokers:
                    return
                last_error = RuntimeError("the broker is not registered yet")
            except (OSError, ConnectionError, struct.error) as e:
                last_error = e
            time.sleep(0.2)
        raise RuntimeError(
            f"the Kafka broker did not come up in time ({last_error}); "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of broker.log, preceded by its first ERROR line if the
        tail does not show it (the tail of a failed start is often a stack trace
        whose cause only that line names)."""
        try:
            all_lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        tail = all_lines[-lines:]
        first_error = next((x for x in all_lines if re.search(r"\] (ERROR|FATAL) ", x)), None)
        if first_error and first_error not in tail:
            tail = [f"first error: {first_error}", "..."] + tail
        return "\n".join(tail)

    # -- topics

    def create_topic(
        self,
        name: str,
        partitions: int,
        config: Mapping[str, str] | None = None,
        *,
        exist_ok: bool = False,
        timeout: float = 30,
    ) -> None:
        """Create a topic (replication factor 1) and wait until every partition has a leader."""
        self.create_topics([(name, partitions, config or {})], exist_ok=exist_ok, timeout=timeout)

    def create_topics(
        self,
        topics: Iterable[tuple[str, int] | tuple[str, int, Mapping[str, str]]],
        *,
        exist_ok: bool = False,
        timeout: float = 30,
    ) -> None:
        """Create several topics in one CreateTopics request, then wait for their leaders.

        Each item is (name, partitions) or (name, partitions, config).
        """
        specs = [(t[0], t[1], dict(t[2]) if len(t) > 2 else {}) for t in topics]
        if not specs:
            return
        deadline = time.monotonic() + timeout
        body = _create_topics_body(specs, timeout_ms=int(timeout * 1000))
        r = kafka_request(self.bootstrap, _API_CREATE_TOPICS, 4, body, timeout=timeout + 5)
        r.int32()  # throttle_time_ms
        results = r.array(lambda: (r.string(), r.int16(), r.nullable_string()))
        for topic, error, message in results:
            if error == 0 or (exist_ok and error == _TOPIC_ALREADY_EXISTS):
                continue
            raise KafkaProtocolError(f"creating topic {topic!r}", error, message)

        # CreateTopics returns once the controller committed the topics; the
        # broker's own metadata (what clients are told) follows shortly after.
        wanted = {name: partitions for name, partitions, _ in specs}
        while True:
            md = metadata(self.bootstrap, wanted, timeout=5)
            pending = [
                name
                for name, count in wanted.items()
                if name not in md.topics
                or md.topics[name].error != 0
                or len(md.topics[name].partitions) < count
                or any(p.leader < 0 for p in md.topics[name].partitions)
            ]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topics without a leader for every partition: {pending}")
            time.sleep(0.05)


def _random_cluster_id() -> str:
    """A cluster id as Kafka writes one: a random UUID in URL-safe base64, unpadded.

    Same rule as Kafka's Uuid.randomUuid() (`kafka-storage random-uuid`), without
    a JVM start: never one that starts with '-', which command-line parsers take
    for an option (StorageTool then fails with "--cluster-id: expected one argument").
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# ------------------------------------------------------------------------- proxy


@dataclass
class _End:
    """One socket of a proxied connection, and what is waiting to be written to it."""

    sock: socket.socket
    outbox: bytearray = field(default_factory=bytearray)
    read_eof: bool = False  # this side sent FIN
    write_shut: bool = False  # we forwarded that FIN onwards to this side


@dataclass
class _Pipe:
    client: _End
    upstream: _End | None = None  # None until connected to the target

    def ends(self) -> list[_End]:
        return [self.client] + ([self.upstream] if self.upstream else [])


class BlackholeProxy:
    """A TCP proxy on 127.0.0.1 that can simulate a network partition.

    While partitioned, the proxy stops moving bytes in both directions and
    closes nothing:
      - on existing connections it stops reading from either side, so each
        peer's writes pile up in kernel buffers (and then block) and each peer's
        reads see silence, as when packets are dropped;
      - new connections are accepted (on loopback the kernel completes the TCP
        handshake anyway) but not connected to the target yet: the client sees
        an open connection that never answers, the target never sees it.

    heal() resumes forwarding, including whatever the peers wrote meanwhile,
    and connects the connections accepted during the partition to the target.
    Nothing is dropped or reset. This is what real TCP does across a partition
    shorter than its retransmission timeout (many minutes): segments are
    retransmitted until they get through, connections survive, and the
    application only notices the delay. A client that gave up during the
    partition and closed its socket gets its close delivered on heal, like the
    FIN that is retransmitted once the path is back. Peers can therefore only
    notice a partition by their own timeouts, which is the behaviour to test.

    partition() and heal() take effect before they return: no byte crosses
    the proxy after partition() returns.
    """

    _CHUNK = 64 * 1024
    _MAX_OUTBOX = 1024 * 1024  # per direction; beyond it, stop reading (backpressure)

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", listen_port), backlog=128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()  # held by the loop while it moves bytes
        self._partitioned = False
        self._closed = False
        self._pipes: list[_Pipe] = []
        self._registered: dict[socket.socket, int] = {}  # owned by the loop thread
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(
            target=self._run, name=f"blackhole-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def partitioned(self) -> bool:
        return self._partitioned

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._pipes)

    def partition(self) -> None:
        """Stop forwarding in both directions; keep every connection open."""
        with self._lock:  # waits for the loop to finish any forwarding in progress
            self._partitioned = True
        self._wake()

    def heal(self) -> None:
        """Resume forwarding, including what was written during the partition."""
        with self._lock:
            self._partitioned = False
        self._wake()

    def close(self) -> None:
        """Close the listener and every proxied connection. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def __enter__(self) -> BlackholeProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already has pending wake-ups, or closing

    # -- the loop (one thread, non-blocking sockets)

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    wanted = self._wanted_events()
                self._sync_selector(wanted)
                events = self._selector.select(timeout=1.0)
                with self._lock:
                    if self._closed:
                        return
                    for key, mask in events:
                        self._handle(key.fileobj, key.data, mask)
                    if not self._partitioned:
                        for pipe in [p for p in self._pipes if p.upstream is None]:
                            self._connect_upstream(pipe)
        finally:
            self._shutdown()

    def _wanted_events(self) -> dict[socket.socket, tuple[int, _Pipe | None]]:
        wanted: dict[socket.socket, tuple[int, _Pipe | None]] = {
            self._wake_r: (selectors.EVENT_READ, None),
            self._listener: (selectors.EVENT_READ, None),
        }
        if self._partitioned:
            return wanted  # no interest in any proxied socket: silence
        for pipe in self._pipes:
            if pipe.upstream is None:
                continue
            for end, peer in ((pipe.client, pipe.upstream), (pipe.upstream, pipe.client)):
                events = 0
                if not end.read_eof and len(peer.outbox) < self._MAX_OUTBOX:
                    events |= selectors.EVENT_READ
                if end.outbox:
                    events |= selectors.EVENT_WRITE
                if events:
                    wanted[end.sock] = (events, pipe)
        return wanted

    def _sync_selector(self, wanted: dict[socket.socket, tuple[int, _Pipe | None]]) -> None:
        for sock in [s for s in self._registered if s not in wanted]:
            self._unregister(sock)
        for sock, (events, pipe) in wanted.items():
            if sock not in self._registered:
                self._selector.register(sock, events, pipe)
            elif self._registered[sock] != events:
                self._selector.modify(sock, events, pipe)
            self._registered[sock] = events

    def _unregister(self, sock: socket.socket) -> None:
        if self._registered.pop(sock, None) is not None:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError, OSError):
                pass

    def _handle(self, sock, pipe: _Pipe | None, mask: int) -> None:
        if sock is self._wake_r:
            try:
                while self._wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
            return
        if sock is self._listener:
            self._accept()
            return
        # The selector may report events computed before partition() ran, or for
        # a pipe closed earlier in this same batch.
        if self._partitioned or pipe not in self._pipes or pipe.upstream is None:
            return
        if sock is pipe.client.sock:
            end, peer = pipe.client, pipe.upstream
        else:
            end, peer = pipe.upstream, pipe.client
        try:
            if mask & selectors.EVENT_WRITE and end.outbox:
                sent = end.sock.send(end.outbox)
                del end.outbox[:sent]
            if mask & selectors.EVENT_READ and not end.read_eof:
                data = end.sock.recv(self._CHUNK)
                if data:
                    peer.outbox += data
                else:
                    end.read_eof = True
            # Flush eagerly: most of the time the peer can take it at once.
            if peer.outbox:
                sent = peer.sock.send(peer.outbox)
                del peer.outbox[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset by a peer: reset the other one too
            self._close_pipe(pipe)
            return
        # Half-close: forward a FIN once everything before it was delivered.
        for a, b in ((pipe.client, pipe.upstream), (pipe.upstream, pipe.client)):
            if a.read_eof and not b.outbox and not b.write_shut:
                b.write_shut = True
                try:
                    b.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if pipe.client.write_shut and pipe.upstream.write_shut:
            self._close_pipe(pipe)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. too many open files: leave it in the backlog
                return
            conn.setblocking(False)
            pipe = _Pipe(client=_End(conn))
            self._pipes.append(pipe)
            if not self._partitioned:
                self._connect_upstream(pipe)

    def _connect_upstream(self, pipe: _Pipe) -> None:
        try:
            # Blocking connect: on loopback it completes or is refused at once.
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            # Nothing listens there (broker down): the client sees its
            # connection closed, as it would see a refused connection.
            self._close_pipe(pipe)
            return
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe.client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe.upstream = _End(upstream)

    def _close_pipe(self, pipe: _Pipe) -> None:
        if pipe in self._pipes:
            self._pipes.remove(pipe)
        for end in pipe.ends():
            self._unregister(end.sock)
            end.sock.close()

    def _shutdown(self) -> None:
        with self._lock:
            self._closed = True
            for pipe in list(self._pipes):
                self._close_pipe(pipe)
            for sock in (self._listener, self._wake_r, self._wake_w):
                self._unregister(sock)
                sock.close()
            self._selector.close()


# --------------------------------------------------------------------------- CLI


def _serve(argv: list[str] | None = None) -> int:
    """`python -m kkrlocal.kafka --serve DIR [--topic NAME:PARTITIONS]...`

    Starts a broker in DIR (formatted if new), creates the topics, prints the lines
    `bootstrap=HOST:PORT` and `pid=PID` (the JVM's) on stdout, then serves until stdin
    reaches EOF or the process gets SIGTERM/SIGINT, and stops the broker. For callers in
    other languages (the benchmark's fleet mode): closing the pipe to stdin stops it.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kkrlocal.kafka", description=_serve.__doc__)
    parser.add_argument("--serve", metavar="DIR", required=True, help="the broker's work folder")
    parser.add_argument(
        "--topic", action="append", default=[], metavar="NAME:PARTITIONS", help="create this topic (repeatable)"
    )
    parser.add_argument(
        "--cache",
        default=os.environ.get("KKR_CACHE", str(Path.home() / ".cache" / "kinesis-kafka-replicator")),
        help="where the jars are (fetched there once); default $KKR_CACHE or ~/.cache/kinesis-kafka-replicator",
    )
    args = parser.parse_args(argv)
    topics = []
    for spec in args.topic:
        name, _, parts = spec.rpartition(":")
        if not name or not parts.isdigit():
            parser.error(f"--topic {spec!r}: expected NAME:PARTITIONS")
        topics.append((name, int(parts)))
    workdir = Path(args.serve)
    workdir.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    broker = KafkaBroker(workdir, fetch_kafka_jars(Path(args.cache)))
    try:
        broker.start()
        if topics:
            broker.create_topics(topics)
        print(f"bootstrap={broker.bootstrap}", flush=True)
        print(f"pid={broker._proc.pid if broker._proc else 0}", flush=True)

        def wait_for_eof() -> None:
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except (OSError, ValueError):
                pass
            stop.set()

        threading.Thread(target=wait_for_eof, daemon=True).start()
        while not stop.is_set() and broker.running:
            stop.wait(0.5)
        return 0 if stop.is_set() else 1
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(_serve())
