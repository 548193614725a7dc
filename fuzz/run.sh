#!/usr/bin/env bash
# Fuzzes fdloop's decoders of kernel bytes: inotify and fanotify event parsing and GPIO edge-event
# records (targets in fuzz/fuzz_targets/, checks in fuzz/src/lib.rs).
#
#   1. The smoke runner, always: every target's check over its seeds, over fuzz/corpus/<target>/
#      and fuzz/artifacts/<target>/ (what earlier libFuzzer runs kept or found), and over
#      SMOKE_ITERATIONS (default 100000) inputs mutated from the seeds. Plain release build, no
#      instrumentation, about a second of run time.
#   2. libFuzzer with AddressSanitizer through cargo-fuzz, when `cargo fuzz` is installed:
#      SECONDS_PER_TARGET (first argument, default 20) per target, starting from the seeds.
#      cargo-fuzz passes -Z flags to rustc; on a stable toolchain RUSTC_BOOTSTRAP=1 allows them
#      (this script sets it).
#
# Usage: fuzz/run.sh [SECONDS_PER_TARGET]     (0 skips the libFuzzer runs)
# A crash is saved by libFuzzer in fuzz/artifacts/<target>/; replay it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
SECONDS_PER_TARGET="${1:-20}"
SMOKE_ITERATIONS="${SMOKE_ITERATIONS:-100000}"
TARGETS=(inotify_decode fanotify_decode gpio_event_decode)

echo "+ smoke runner: seeds, saved corpus and $SMOKE_ITERATIONS mutated inputs per target"
cargo run --quiet --release --bin smoke -- "$SMOKE_ITERATIONS"

if [[ "$SECONDS_PER_TARGET" == 0 ]]; then
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed (cargo install cargo-fuzz): libFuzzer runs skipped"
    exit 0
fi
cargo fuzz --version
cargo run --quiet --release --bin smoke -- --write-seeds
cd ..
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${TARGETS[@]}"; do
    echo "+ cargo fuzz run $t -- -max_total_time=$SECONDS_PER_TARGET"
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" -- -max_total_time="$SECONDS_PER_TARGET" \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 80 "$log"
        echo "error: $t: libFuzzer found a failing input (saved in fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    grep -E '^(Done |stat::number_of_executed_units|stat::peak_rss_mb)|^INFO: seed corpus' "$log" || true
done
