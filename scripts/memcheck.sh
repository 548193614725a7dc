#!/usr/bin/env bash
# Runs fdloop's test suite under valgrind's memcheck.
#
# Which tests: the test binaries of the default workspace members (fdloop, fdloop-backends) are
# found through `cargo test --no-run --message-format=json`; each is listed with `--list` and
# its tests are picked by name, since most tests choose their backend through the builder
# (`FDLOOP_BACKEND` alone is not enough):
#
#   epoll run (default)  tests whose name mentions epoll (`…::epoll`, `epoll::tests::…`,
#                        `…_epoll`), and the backend-neutral ones (neither epoll nor uring in
#                        the name) with FDLOOP_BACKEND=epoll for those that call Loop::new();
#                        plus the README's demo (examples/tour.rs) with FDLOOP_BACKEND=epoll.
#   --uring              the tests whose name mentions uring (and not epoll) instead.
#   --quick              a bounded subset for CI: the epoll run of the binaries listed in
#                        QUICK_BINARIES below.
#
# valgrind 3.19 and the two backends (measured on Linux 6.18):
#   * epoll_pwait2 (syscall 441) is unknown to valgrind 3.19 (it warns "unhandled syscall" and
#     fails it with ENOSYS): the epoll backend then uses epoll_wait with millisecond timeouts,
#     its documented fallback for kernels before 5.11.
#   * io_uring_setup, io_uring_enter and io_uring_register have wrappers: rings are built and
#     probed and operations complete. But valgrind does not treat io_uring_enter as a blocking
#     call: while one thread waits in it, no other thread of the process runs. A wake-up from
#     another thread (LoopHandle::post, thread-pool results, signal handlers) then arrives only
#     when the wait ends on its own (a timer, an I/O completion); without one the process
#     hangs. Valgrind also cannot see the kernel writing into buffers of in-flight operations.
#     The --uring run is therefore informative, not a gate; PER_BINARY_LIMIT bounds its hangs.
#
# Tests that cannot run under valgrind are skipped by name (SKIP below, each with its reason);
# the script prints what it skipped. Known false positives are suppressed by
# scripts/memcheck.supp, which documents each one.
#
# A binary fails the run when valgrind reports an error (exit status 99: invalid reads or
# writes, uses of uninitialised values, invalid frees, definite leaks) or when a test fails
# (101). The summary lists the error count per binary.
#
# Usage: scripts/memcheck.sh [--quick] [--uring] [--list] [EXTRA-LIBTEST-ARGS…]
#   --list   print the selected tests per binary and exit.
# Environment: CARGO_TARGET_DIR as for cargo; VALGRIND_ARGS appended to valgrind's options.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

MODE=epoll
QUICK=0
LIST=0
EXTRA=()
for a in "$@"; do
    case "$a" in
        --uring) MODE=uring ;;
        --quick) QUICK=1 ;;
        --list) LIST=1 ;;
        *) EXTRA+=("$a") ;;
    esac
done

# The CI subset: the binaries that exercise the core of the loop (registrations, timers, posted
# closures, callback I/O with owned buffers, fibers and their I/O, fiber sync, loops on
# threads, the backend contract, the model tests).
QUICK_BINARIES=" fdloop fdloop_backends contract proptest_slab proptest_loop proptest_structures
    poll timers post io lifecycle fibers sync net fs loops overflow "
# shellcheck disable=SC2086 # word splitting joins the two lines
QUICK_BINARIES=" $(echo $QUICK_BINARIES) "

# Tests skipped under valgrind, with the reason (a regular expression on `binary:test`).
SKIP=(
    # Installs seccomp filters that make io_uring_setup fail; under valgrind the filter also
    # hits valgrind's own syscalls.
    'fallback:seccomp_'
    # Timing assertions (a wait returns within a bound): valgrind slows every syscall.
    'fdloop_backends:epoll::tests::wait_timeout_returns_ok_and_not_early'
    # Counts allocations through its own global allocator; valgrind replaces malloc, and the
    # slowdown changes how many iterations run. Memory safety of the same paths is covered by
    # the poll and timer tests.
    '^alloc:'
    '^alloc_fiber:'
    # Network limits (thousands of sockets and connections): minutes under valgrind, and
    # nothing the net tests do not cover.
    '^net_limits:'
    # Needs the mosquitto feature and a broker.
    '^mosquitto:'
    # Timing assumptions that valgrind's slowdown breaks (they pass without it):
    # - compares the loop's firing order with deadlines the test computes *before* each
    #   start_timer call; the first start_timer is much slower under valgrind, which shifts its
    #   deadline past the next one's;
    '^timers:fire_in_deadline_order_and_never_early::'
    # - expects three eventfd writes (a fiber, timers at 2 and 4 ms) to be read one by one;
    #   when an iteration takes longer than 2 ms the writes coalesce and the test waits forever.
    '^dev_fds:eventfd_from_a_callback::'
    # - a periodic 1 ms timer started in the first half keeps running; the test expects a
    #   one-shot 1 ms timer of the second half to fire after it, not before it in the same
    #   iteration, which a slow iteration allows.
    '^post:stop_from_a_callback::'
    # - a thread sends 20 ms after being spawned and the fiber's first recv_timeout(5 ms) must
    #   time out; when starting the loop and the fiber takes longer than 20 ms, the message is
    #   already there.
    '^sync:recv_timeout_fires_not_early_and_the_channel_still_works::'
    # A load test (thousands of connections for a few seconds, with server-side timeouts):
    # under valgrind's slowdown the timeouts fire and count as errors.
    '^soak:'
    # These run their io_uring cases whatever the filter (one test over both backends, or a
    # custom harness), and under valgrind 3.19 a thread waiting in io_uring_enter stops every
    # other thread (see the uring notes below): they hang.
    '^fd_accounting:'
    '^faults_process:'
    '^signals:'
    # The timing wheel's long randomised model test: safe code only, minutes under valgrind
    # (its property test, with PROPTEST_CASES below, covers the same paths).
    '^fdloop:timer::wheel::tests::model_random_sequences$'
)

# Property tests (tests/proptest_*.rs and the wheel's) run fewer cases under valgrind.
export PROPTEST_CASES="${PROPTEST_CASES:-16}"

valgrind --version >/dev/null 2>&1 || {
    echo "error: valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
}

echo "+ cargo test --no-run --message-format=json (default members)"
BINS=$(cargo test --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
')

# Each binary is bounded: a hang fails the run instead of holding the machine (SIGKILL, since a
# process stuck in io_uring_enter under valgrind does not handle SIGTERM).
PER_BINARY_LIMIT="${PER_BINARY_LIMIT:-900}"
VG=(timeout --kill-after=5 "$PER_BINARY_LIMIT" valgrind --tool=memcheck --error-exitcode=99 --leak-check=full
    --errors-for-leak-kinds=definite --show-leak-kinds=definite
    --suppressions="$ROOT/scripts/memcheck.supp" --num-callers=30)
# shellcheck disable=SC2206
VG+=(${VALGRIND_ARGS:-})

skipped() {
    local id="$1" re
    for re in "${SKIP[@]}"; do
        [[ "$id" =~ $re ]] && return 0
    done
    return 1
}

LOG_DIR=$(mktemp -d)
trap 'rm -rf "$LOG_DIR"' EXIT
FAILED=()
SUMMARY=()
START=$SECONDS

# Tests with `harness = false` (their own main, which ignores libtest's arguments): run whole.
CUSTOM_HARNESS=" $(python3 -c '
import tomllib
for root in ("Cargo.toml", "backends/Cargo.toml"):
    with open(root, "rb") as f:
        for t in tomllib.load(f).get("test", []):
            if t.get("harness", True) is False:
                print(t["name"])
' | tr '\n' ' ') "

while read -r name exe; do
    if [[ $QUICK == 1 && "$QUICK_BINARIES" != *" $name "* ]]; then
        continue
    fi
    if [[ "$CUSTOM_HARNESS" == *" $name "* ]]; then
        tests=""
        whole=1
        if skipped "$name:"; then
            SUMMARY+=("$name: custom harness, skipped")
            continue
        fi
    else
        tests=$("$exe" --list --format terse 2>/dev/null | sed -n 's/: test$//p')
        whole=0
    fi
    selected=()
    skipped_here=()
    for t in $tests; do
        lower=${t,,}
        if [[ $MODE == epoll ]]; then
            [[ $lower == *uring* && $lower != *epoll* ]] && continue
        else
            [[ $lower == *uring* && $lower != *epoll* ]] || continue
        fi
        if skipped "$name:$t"; then
            skipped_here+=("$t")
        else
            selected+=("$t")
        fi
    done
    if [[ $LIST == 1 ]]; then
        printf '%s: %d selected, %d skipped%s\n' "$name" "${#selected[@]}" "${#skipped_here[@]}" \
            "$([[ $whole == 1 ]] && echo ' (custom harness: run whole)')"
        printf '    %s\n' "${selected[@]}"
        continue
    fi
    if [[ $whole == 0 && ${#selected[@]} == 0 ]]; then
        continue
    fi
    t0=$SECONDS
    log="$LOG_DIR/$(basename "$exe").log"
    echo "+ [$MODE] $name: ${#selected[@]} tests"
    set +e
    if [[ $whole == 1 ]]; then
        [[ $MODE == epoll ]] || { set -e; continue; }
        FDLOOP_BACKEND=$MODE "${VG[@]}" --log-file="$log" "$exe" "${EXTRA[@]}" \
            >"$LOG_DIR/$(basename "$exe").out" 2>&1
    else
        FDLOOP_BACKEND=$MODE "${VG[@]}" --log-file="$log" "$exe" --exact "${selected[@]}" \
            "${EXTRA[@]}" >"$LOG_DIR/$(basename "$exe").out" 2>&1
    fi
    rc=$?
    set -e
    errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$log" | awk '{n += $1} END {print n + 0}')
    warnings=$(grep -o 'unhandled amd64-linux syscall: [0-9]*' "$log" | sort -u | tr '\n' ' ' || true)
    line="$name: ${#selected[@]} tests, ${#skipped_here[@]} skipped, rc $rc, $errors error reports, $((SECONDS - t0)) s"
    [[ -n "$warnings" ]] && line+=" ($warnings)"
    SUMMARY+=("$line")
    echo "  $line"
    if [[ $rc != 0 ]]; then
        FAILED+=("$name")
        echo "---- valgrind log of $name ----"
        cat "$log"
        if [[ -f "$LOG_DIR/$(basename "$exe").out" ]]; then
            echo "---- test output of $name (last 60 lines) ----"
            tail -n 60 "$LOG_DIR/$(basename "$exe").out"
        fi
    fi
done <<<"$BINS"

[[ $LIST == 1 ]] && exit 0

if [[ $MODE == epoll && $QUICK == 0 ]]; then
    echo "+ [epoll] example tour (the README's demo)"
    cargo build --quiet --example tour
    tour=$(cargo build --example tour --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])
')
    t0=$SECONDS
    set +e
    FDLOOP_BACKEND=epoll "${VG[@]}" --log-file="$LOG_DIR/tour.log" "$tour" >/dev/null 2>&1
    rc=$?
    set -e
    SUMMARY+=("example tour: rc $rc, $((SECONDS - t0)) s")
    if [[ $rc != 0 ]]; then
        FAILED+=("tour")
        cat "$LOG_DIR/tour.log"
    fi
fi

echo
echo "==== memcheck summary ($MODE$([[ $QUICK == 1 ]] && echo ', quick'), $((SECONDS - START)) s) ===="
printf '%s\n' "${SUMMARY[@]}"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "FAILED: ${FAILED[*]}"
    exit 1
fi
echo "no memcheck errors, no test failures"
