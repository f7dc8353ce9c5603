#!/usr/bin/env bash
# Sets up everything the local stack needs, from the registries, into a cache that later
# runs reuse (KKR_CACHE, default ~/.cache/kinesis-kafka-replicator):
#   - a Python virtualenv with requirements.txt (boto3, moto, confluent-kafka, pytest);
#   - then, through that Python, the rest (kkrlocal/fetch.py): the KCL jars from
#     jars/pom.xml, Apache Kafka from Maven Central, kinesis-local from npm, the release
#     binary. Each step says what it is doing; the first run takes several minutes.
# Prints the virtualenv's python on stdout (the last line), so callers can use it.
set -Eeuo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
cache=${KKR_CACHE:-$HOME/.cache/kinesis-kafka-replicator}
venv=$cache/venv
mkdir -p "$cache"

say() { printf 'local stack: %s\n' "$*" >&2; }

for tool in python3 java mvn npm node cargo; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        say "error: '$tool' is not installed; the local stack needs Python 3, Java 17 with Maven, Node.js with npm and Rust (cargo)."
        exit 3
    fi
done

stamp=$venv/.requirements.sha256
want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
    say "creating the Python virtualenv $venv (boto3, moto, confluent-kafka, pytest; once, about a minute)"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt" >&2
    printf '%s' "$want" >"$stamp"
fi

PYTHONPATH=$here "$venv/bin/python" -m kkrlocal.fetch "$@" >&2
printf '%s\n' "$venv/bin/python"
