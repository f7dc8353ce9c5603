#!/usr/bin/env bash
# The test command (README "Test it"; .ci/run calls it): installs what the tests need on a
# fresh Debian machine of this project's kind, then runs them all.
#
#   scripts/test.sh            everything: the Rust suite (cargo test) and the end-to-end
#                              scenarios with the real KCL daemon, emulators and Kafka
#   scripts/test.sh --rust     only cargo test
#   scripts/test.sh --e2e [pytest args...]
#                              only the end-to-end scenarios (e.g. -k resharding)
#   scripts/test.sh --install  only install what the tests and the build need
#
# Everything downloaded is cached under KKR_CACHE (default ~/.cache/kinesis-kafka-replicator)
# and reused: the Python virtualenv, the KCL jars, Apache Kafka, kinesis-local, amazon_kclpy.
# E2E_WORKERS (default 2) scenarios run side by side, each worker with its own stack.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cache=${KKR_CACHE:-$HOME/.cache/kinesis-kafka-replicator}

rust=1 e2e=1 install_only=0
case ${1:-} in
    --rust) e2e=0; shift ;;
    --e2e) rust=0; shift ;;
    --install) install_only=1; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
esac

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "system packages"
# librdkafka is built from source by rdkafka-sys: a C toolchain, make, perl, OpenSSL and
# zlib headers. The end-to-end stack needs Java 17 with Maven (the KCL daemon, Kafka), Node.js
# with npm (kinesis-local) and Python 3 with venv (moto, boto3, confluent-kafka, pytest).
# Machines of this kind come with Java, Maven, Node and Python; the packages below are
# installed only when missing.
missing=()
for pkg in build-essential pkg-config perl libssl-dev zlib1g-dev shellcheck; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}"
fi

step "amazon_kclpy (an independent MultiLang child: checks the daemon double; the migration scenario)"
# Its setup.py downloads jars and cannot install here; the package is pure Python and is
# used from its unpacked sdist.
kclpy_cache=$cache/kclpy
if [[ ! -f $kclpy_cache/amazon_kclpy-3.2.0/samples/sample_kclpy_app.py ]]; then
    mkdir -p "$kclpy_cache"
    python3 -m pip download -q --no-deps --no-binary :all: -d "$kclpy_cache" amazon-kclpy==3.2.0
    tar xzf "$kclpy_cache/amazon_kclpy-3.2.0.tar.gz" -C "$kclpy_cache"
fi
export KCLPY_DIR=${KCLPY_DIR:-$kclpy_cache/amazon_kclpy-3.2.0}
((install_only)) && exit 0

status=0
if ((rust)); then
    step "Rust tests: cargo test (the binary on real pipes under the daemon double, librdkafka's mock cluster)"
    cargo test --locked --no-fail-fast || status=1
fi

if ((e2e)); then
    step "the local stack: virtualenv, KCL jars, Apache Kafka, kinesis-local, release binary"
    python=$(bash scripts/local/setup.sh)
    step "pyflakes: the Python side (the local stack, the scenarios)"
    "$python" -m pyflakes scripts/local tests/e2e || status=1
    step "end-to-end scenarios: run.sh -> the real KCL daemon -> the binary -> Apache Kafka"
    rm -f target/e2e/figures.jsonl
    PYTHONPATH=scripts/local "$python" -m pytest tests/e2e scripts/local/kkrlocal/test_kafka_stack.py \
        -p no:cacheprovider -n "${E2E_WORKERS:-2}" --dist loadfile -rA --durations=0 "$@" || status=1
    if [[ -f target/e2e/figures.jsonl ]]; then
        step "scenario figures"
        cat target/e2e/figures.jsonl
    fi
fi
exit "$status"
