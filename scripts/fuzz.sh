#!/usr/bin/env bash
# Fuzzes the protocol parser and the configuration template expansion (fuzz/, README
# "Fuzzing"): every cargo-fuzz target for SECONDS (default 30) each, starting from the seed
# corpus committed in fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh [SECONDS]
#
# Runs on the stable toolchain (FUZZ_TOOLCHAIN picks another one) with RUSTC_BOOTSTRAP=1,
# which lets rustc take the -Z flags cargo-fuzz may pass. Installs cargo-fuzz into
# ~/.cargo/bin when it is missing. The targets are built without a sanitizer (-s none):
# with AddressSanitizer, zstd-sys compiles its C code instrumented and librdkafka's
# configure script then fails to link against it; the code under test is safe Rust, and
# the targets' assertions (panics) are the checks.
# Inputs the fuzzer finds go to a temporary directory, never into the repository. A crash,
# a timeout or running out of memory fails the script; the reproducer is kept in
# fuzz/artifacts/<target>/ and its path printed.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${1:-30}
if [[ ! $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]  (seconds per target, default 30)" >&2
    exit 2
fi
cargo_fuzz_version=0.13.2
toolchain=${FUZZ_TOOLCHAIN:-stable}
export RUSTC_BOOTSTRAP=1

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $cargo_fuzz_version" ]]; then
    step "installing cargo-fuzz $cargo_fuzz_version"
    cargo "+$toolchain" install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

step "building the fuzz targets"
cargo "+$toolchain" fuzz build -s none

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

status=0
mapfile -t targets < <(cargo "+$toolchain" fuzz list)
for target in "${targets[@]}"; do
    step "fuzzing $target for ${seconds}s"
    mkdir -p "$work/corpus/$target"
    log=$work/$target.log
    # The first corpus directory receives the new inputs; the committed one is only read.
    if cargo "+$toolchain" fuzz run -s none "$target" "$work/corpus/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' "$log" || true
    else
        status=1
        mkdir -p "fuzz/artifacts/$target"
        cp "$log" "fuzz/artifacts/$target/fuzz.log"
        # The panic message (without its backtrace) and libFuzzer's verdict.
        awk '/panicked at/ { p = 1 } /^stack backtrace:|^note: / { p = 0 } p; /ERROR: libFuzzer|^SUMMARY: /' "$log"
        reproducer=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
        echo
        echo "FAILED: $target (full log: fuzz/artifacts/$target/fuzz.log)"
        if [[ -n $reproducer ]]; then
            echo "reproducer: $reproducer"
            echo "run it again: RUSTC_BOOTSTRAP=1 cargo +$toolchain fuzz run -s none $target $reproducer"
        fi
    fi
done
exit "$status"
