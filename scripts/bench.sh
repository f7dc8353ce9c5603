#!/usr/bin/env bash
# The replication benchmark (benches/replication/; docs/benchmark.md explains every figure).
#
#   scripts/bench.sh                  full run (about 7 minutes on 2 cores); rewrites
#                                     docs/benchmark.svg and the table in docs/benchmark.md
#   scripts/bench.sh --quick          1 KB records only, fewer of them (about a minute)
#   scripts/bench.sh --fleet          the fleet figure instead: 8, 32 and 64 children at once
#                                     against Apache Kafka (kkrlocal.kafka), busy and idle, Rust
#                                     and Python (about 9 minutes); --fleet 8,32 --fleet-seconds 60
#   scripts/bench.sh --guarantees     at-least-once beside exactly-once against Apache Kafka
#                                     (1 KB records, batches of 10,000; about 3 minutes)
#   scripts/bench.sh --help           every filter and option
#
# What this script adds around `cargo bench --bench replication`:
#   - puts ~/.cargo/bin (tansu) on PATH;
#   - sets up the Python baseline of ../shared/bench/ when it is missing, following the setup
#     lines in the header of run-kclpy-replicator.sh (idempotent; it prints every step). When
#     that fails or ../shared/bench/ is absent, the benchmark runs without the Python rows.
#     BENCH_PYTHON_SETUP=0 skips the setup;
#   - writes the chart and the table into docs/ only on a full run (no option at all), unless
#     --publish or --no-publish says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf 'bench.sh: %s\n' "$*" >&2; }

# The Python replicator: where run-kclpy-replicator.sh expects its venv and amazon_kclpy.
PY_BENCH_DIR=${BENCH_PYTHON_DIR:-$(cd .. && pwd)/shared/bench}
PY_RUNNER="$PY_BENCH_DIR/run-kclpy-replicator.sh"
PY_VENV=${BENCH_PYTHON_VENV:-/tmp/kclpy-venv}
KCLPY_ROOT=/tmp/kclpy
KCLPY_VERSION=3.2.0
export KCLPY_DIR=${KCLPY_DIR:-$KCLPY_ROOT/amazon_kclpy-$KCLPY_VERSION}
export PYTHON=${PYTHON:-$PY_VENV/bin/python}

setup_python() {
  if [ ! -x "$PY_RUNNER" ] && [ ! -f "$PY_RUNNER" ]; then
    say "no Python baseline at $PY_RUNNER: the Python rows will be skipped"
    return 1
  fi
  if [ "${BENCH_PYTHON_SETUP:-1}" = 0 ]; then
    return 0
  fi
  if ! "$PYTHON" -c 'import confluent_kafka' >/dev/null 2>&1; then
    say "setting up the Python baseline's venv: python3 -m venv $PY_VENV && $PY_VENV/bin/pip install confluent-kafka boto3"
    python3 -m venv "$PY_VENV" || return 1
    "$PY_VENV/bin/pip" install --quiet --disable-pip-version-check confluent-kafka boto3 || return 1
  fi
  if [ ! -f "$KCLPY_DIR/amazon_kclpy/kcl.py" ]; then
    say "fetching amazon-kclpy $KCLPY_VERSION (sdist; used from PYTHONPATH): pip download --no-deps --no-binary :all: -d $KCLPY_ROOT amazon-kclpy==$KCLPY_VERSION"
    mkdir -p "$KCLPY_ROOT"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
      -d "$KCLPY_ROOT" "amazon-kclpy==$KCLPY_VERSION" || return 1
    tar xzf "$KCLPY_ROOT/amazon_kclpy-$KCLPY_VERSION.tar.gz" -C "$KCLPY_ROOT" || return 1
  fi
  if ! PYTHONPATH="$KCLPY_DIR" "$PYTHON" -c 'import amazon_kclpy.kcl, confluent_kafka' >/dev/null 2>&1; then
    say "the Python baseline does not import (amazon_kclpy from $KCLPY_DIR, confluent_kafka from $PYTHON)"
    return 1
  fi
  say "Python baseline ready: $PY_RUNNER ($PYTHON, amazon_kclpy from $KCLPY_DIR)"
}

args=()
publish=auto
python=on
help=no
for arg in "$@"; do
  case "$arg" in
    --publish) publish=yes ;;
    --no-publish) publish=no ;;
    --no-python) python=off; args+=("$arg") ;;
    --help|-h) help=yes; args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done
if [ "$help" = yes ]; then
  exec cargo bench --bench replication -- --help
fi

# Only the full run (no option at all) replaces the published figures by default.
if [ "$publish" = auto ]; then
  if [ ${#args[@]} -eq 0 ]; then publish=yes; else publish=no; fi
fi
if [ "$publish" = yes ]; then
  args+=(--publish)
fi

if [ "$python" = on ]; then
  if setup_python; then
    export BENCH_PYTHON_CHILD="$PY_RUNNER"
  else
    say "continuing without the Python baseline"
    unset BENCH_PYTHON_CHILD
  fi
fi

if ! command -v tansu >/dev/null 2>&1; then
  say "tansu is not on PATH: the tansu rows will be skipped (install: cargo install tansu --version 0.6.0 --features dynostore --locked)"
fi

say "load before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
exec cargo bench --bench replication -- "${args[@]+"${args[@]}"}"
