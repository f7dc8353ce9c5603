#!/usr/bin/env bash
# `./run.sh --local [--for SECONDS] [--rate N]`: the whole pipeline on this machine. Sets up
# what is missing (scripts/local/setup.sh: a Python virtualenv, the KCL jars, kinesis-local,
# Apache Kafka, the release binary), then runs kkrlocal/quickstart.py in it.
set -Eeuo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
for arg in "$@"; do
    if [[ $arg == -h || $arg == --help ]]; then
        exec python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); from kkrlocal.quickstart import usage; print(usage())' "$here"
    fi
done
python=$(bash "$here/setup.sh")
PYTHONPATH=$here exec "$python" -m kkrlocal.quickstart "$@"
