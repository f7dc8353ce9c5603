"""End-to-end scenarios: the real KCL MultiLangDaemon (jars/pom.xml) started by run.sh, our
release binary as its children, kinesis-local and moto as Kinesis and DynamoDB, and an Apache
Kafka broker. Run through scripts/test.sh (which sets everything up); by hand:

    PYTHONPATH=scripts/local ~/.cache/kinesis-kafka-replicator/venv/bin/pytest tests/e2e -n 2

Each pytest worker runs one stack; each test uses its own stream, application (lease table)
and topic, so tests never see each other's records. Every wait has a deadline.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "local"))

from kkrlocal.records import Report, Writer, checkpoint_gaps, read_topic, reckon  # noqa: E402
from kkrlocal.stack import Stack  # noqa: E402

# The Python replicator's env file, from the article its users come from, byte for byte
# (tests/e2e_run_sh.rs reads the same file).
PYTHON_ENV_FILE = (Path(__file__).resolve().parents[1] / "fixtures" / "python-replicator.env").read_text()
SCRAM_USERS = {"kafka-user": "kafka-password"}

FIGURES = REPO / "target" / "e2e" / "figures.jsonl"


def parse_env_file(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack"), scram_users=SCRAM_USERS) as s:
        yield s


class Scenario:
    """A test's own names (stream, lease table, topic) and the figures it reports."""

    def __init__(self, stack: Stack, name: str):
        self.stack = stack
        self.name = name
        tag = uuid.uuid4().hex[:6]
        safe = re.sub(r"[^a-zA-Z0-9]+", "-", name)[:40]
        self.stream = f"{safe}-{tag}"
        self.application = f"app-{safe}-{tag}"
        self.topic = f"topic-{safe}-{tag}"
        self.started = time.monotonic()

    def writer(self, **kwargs) -> Writer:
        return Writer(self.stack.kinesis.client, self.stream, **kwargs)

    def setup(self, shards: int = 4, partitions: int = 4) -> None:
        self.stack.kafka.create_topic(self.topic, partitions)
        self.stack.kinesis.create_stream(self.stream, shards)

    def replicator(self, **kwargs):
        kwargs.setdefault("env", {})
        kwargs["env"] = {"CHECKPOINT_FREQ_SECONDS": "2", **kwargs["env"]}
        return self.stack.replicator(stream=self.stream, application=self.application, topic=self.topic, **kwargs)

    def read(self, writer: Writer, timeout: float = 120, **kwargs) -> Report:
        messages = read_topic(self.stack.kafka.bootstrap, self.topic, until_count=writer.count, timeout=timeout, **kwargs)
        report = reckon(writer, messages)
        report.seconds = round(time.monotonic() - self.started, 1)
        return report

    def wait_checkpointed(self, writer: Writer, ended: set[str] = frozenset(), timeout: float = 60) -> dict[str, str]:
        """Waits until every lease is checkpointed at its shard's last record (or SHARD_END)."""
        deadline = time.monotonic() + timeout
        while True:
            gaps = checkpoint_gaps(writer, self.stack.moto.leases(self.application), ended)
            if not gaps or time.monotonic() > deadline:
                return gaps
            time.sleep(1)

    def record(self, report: Report, **extra) -> None:
        """Writes the scenario's figures where the closing note and CI's log can find them."""
        figures = {"scenario": self.name, **report.__dict__, **extra}
        figures.pop("missing_examples", None)
        figures.pop("violation_examples", None)
        FIGURES.parent.mkdir(parents=True, exist_ok=True)
        with open(FIGURES, "a") as f:
            f.write(json.dumps(figures) + "\n")
        print(f"\nFIGURES {json.dumps(figures)}", file=sys.stderr)


@pytest.fixture
def scenario(stack, request):
    s = Scenario(stack, request.node.name)
    yield s
    for replicator in list(stack.replicators):
        replicator.stop()
        stack.replicators.remove(replicator)
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            print(f"--- {replicator.name} log (last 60 lines) ---\n" + "\n".join(replicator.log().splitlines()[-60:]), file=sys.stderr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def wait_until(what: str, condition, timeout: float, interval: float = 1.0):
    """Polls `condition` until it returns something truthy, and returns that; raises
    TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def assert_complete(report: Report, max_duplicates: int | None = 0) -> None:
    assert report.missing == 0, f"{report.line()}; first missing: {report.missing_examples}"
    assert report.order_violations == 0, f"{report.line()}; first violations: {report.violation_examples}"
    if max_duplicates is not None:
        assert report.duplicates <= max_duplicates, report.line()


def secrets_in(text: str, secrets: list[str]) -> list[str]:
    """The secrets that appear in `text` (empty when none does)."""
    return [s for s in secrets if s in text]

