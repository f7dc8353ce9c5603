"""Fetches or builds what the local stack runs, once, into the cache (KKR_CACHE).

    python -m kkrlocal.fetch            # everything
    python -m kkrlocal.fetch --no-build # everything but the release binary

Every piece comes from the registries this project may use: the KCL jars from Maven
Central exactly as users fetch them (`mvn -f jars/pom.xml dependency:copy-dependencies`),
Apache Kafka from Maven Central, kinesis-local from npm, the binary from `cargo build`.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from .env import CACHE, REPO, say
from .kafka import fetch_kafka_jars

KINESIS_LOCAL_VERSION = "0.6.2"
MAVEN_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line or "ERR!" in line]
        detail = "\n".join(errors[:5]) or (result.stdout + result.stderr)[-2000:]
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{detail}")


def kcl_jars() -> Path:
    """The daemon's jars, from jars/pom.xml; a new pom means a new directory."""
    pom = REPO / "jars" / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:12]
    target = CACHE / f"kcl-jars-{digest}"
    done = target / ".complete"
    if not done.exists():
        say("fetching the KCL MultiLangDaemon jars: mvn -f jars/pom.xml dependency:copy-dependencies (once, about a minute)")
        target.mkdir(parents=True, exist_ok=True)
        _run(["mvn", "-q", "-B", "-f", str(pom), MAVEN_GOAL, f"-Djars.outputDirectory={target}"], "Maven (KCL jars)")
        if not list(target.glob("amazon-kinesis-client-multilang-*.jar")):
            raise RuntimeError(f"Maven left no amazon-kinesis-client-multilang jar in {target}")
        done.touch()
    return target


def kinesis_local() -> Path:
    """kinesis-local's main.js (a Kinesis emulator that speaks HTTP/2, as the daemon needs)."""
    prefix = CACHE / f"kinesis-local-{KINESIS_LOCAL_VERSION}"
    main = prefix / "node_modules" / "kinesis-local" / "main.js"
    if not main.exists():
        say(f"fetching kinesis-local {KINESIS_LOCAL_VERSION} from npm (once)")
        prefix.mkdir(parents=True, exist_ok=True)
        _run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"kinesis-local@{KINESIS_LOCAL_VERSION}"],
            "npm (kinesis-local)",
        )
    return main


def kafka_jars() -> Path:
    return fetch_kafka_jars(CACHE)


def replicator_binary(build: bool = True) -> Path:
    """The release binary; `cargo build` is incremental, so this is quick when nothing changed."""
    binary = REPO / "target" / "release" / "kinesis-kafka-replicator"
    if build:
        say("building the replicator: cargo build --release --locked (the first time takes a few minutes)")
        result = subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=REPO)
        if result.returncode != 0:
            raise RuntimeError("cargo build --release failed (see above)")
    if not binary.exists():
        raise RuntimeError(f"no replicator binary at {binary}; run cargo build --release")
    return binary


def main(argv: list[str]) -> int:
    try:
        kcl_jars()
        kinesis_local()
        kafka_jars()
        replicator_binary(build="--no-build" not in argv)
    except RuntimeError as e:
        say(f"error: {e}")
        return 3
    say(f"ready (cache: {CACHE})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
