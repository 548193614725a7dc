#!/usr/bin/env python3
"""The benchmarks besides echo: criterion micro-benchmarks, the idle loop, memory per fiber.

    scripts/bench-extra.py micro  [--out DIR] [--measurement-time 3] [--filter REGEX] [--charts-out DIR]
    scripts/bench-extra.py idle   [--out DIR] [--conns 10000] [--timers 10000] [--secs 10]
    scripts/bench-extra.py memory [--out DIR] [--conns 100000]
    scripts/bench-extra.py all    [--out DIR] …

micro: runs `cargo bench -p fdloop-bench` (timers, fibers, post, files) and collects
criterion's estimates (median time per element, with its confidence interval) into
DIR/micro.json, and draws micro.svg (scripts/charts.py) into docs/img when DIR is
benches/results/extra, into DIR/img otherwise (--charts-out overrides; 'none': no chart). Set
FDLOOP_BENCH_FILE_MB / FDLOOP_BENCH_DIR for the file benchmarks.

idle: runs the `idle` binary on both backends in both styles. Besides what the binary reports (context
switches and CPU time of the loop thread over the window), the process's syscalls over the
window are counted from outside with perf (or strace). Results: DIR/idle.jsonl (replaced).

memory: runs the `memory` binary on both backends: --conns fibers (100,000 by default) on one
loop, each parked in a read on its own connection. That needs as many fds: when the hard
RLIMIT_NOFILE is lower (raising it needs CAP_SYS_RESOURCE), the run makes as many connections
as the limit allows and parks the other fibers without one (`memory --fibers`), and the result
says how many of each. Before Linux 6.13 (no guard regions: two mappings per fiber stack),
100,000 fibers also need vm.max_map_count above ~200,000 (raised with sysctl when running as
root, and said so). Results: DIR/memory.jsonl (replaced).
"""

import argparse
import glob
import json
import os
import re
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


def micro(args, out):
    cmd = ["cargo", "bench", "-p", "fdloop-bench", "--"]
    if args.filter:
        cmd.append(args.filter)
    cmd += ["--measurement-time", str(args.measurement_time), "--warm-up-time", "1"]
    bl.log("+", " ".join(cmd))
    started = time.time()
    subprocess.run(cmd, cwd=bl.ROOT, check=True)
    results = {}
    for path in glob.glob(os.path.join(bl.target_dir(), "criterion", "**", "new", "benchmark.json"),
                          recursive=True):
        if os.path.getmtime(path) < started:
            continue  # from an earlier run
        with open(path) as f:
            b = json.load(f)
        with open(os.path.join(os.path.dirname(path), "estimates.json")) as f:
            e = json.load(f)
        med = e["median"]
        results[b["full_id"]] = {
            "ns": med["point_estimate"],
            "ns_low": med["confidence_interval"]["lower_bound"],
            "ns_high": med["confidence_interval"]["upper_bound"],
        }
    rec = {"machine": bl.machine_info(), "results": dict(sorted(results.items()))}
    with open(os.path.join(out, "micro.json"), "w") as f:
        json.dump(rec, f, indent=1)
    for k, v in rec["results"].items():
        print(f"{k:45s} {v['ns']:12.1f} ns  [{v['ns_low']:.1f} – {v['ns_high']:.1f}]")
    if args.charts_out != "none":
        import charts  # scripts/charts.py
        charts.micro_charts(out, args.charts_out or bl.default_charts_dir(out, "extra"))


def run_marked(cmd, method, timeout):
    """Runs `cmd`, counting its syscalls between the `GO` and `DONE` lines; returns
    (JSON result, syscall counts)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    counter = None
    result = None
    counts = None
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = bl.read_line(p, max(1, deadline - time.time()))
        if line is None:
            break
        if line == "GO" and method:
            counter = bl.SyscallCounter(p.pid, method)
            counter.prepare()
            counter.start()
        elif line == "DONE" and counter:
            counts = counter.stop()
        elif line.startswith("{"):
            result = json.loads(line)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
    if result is None:
        bl.log(f"{' '.join(cmd)} failed: {p.stderr.read().decode(errors='replace')[-1500:]}")
    return result, counts


def idle(args, out, method):
    path = os.path.join(out, "idle.jsonl")
    if os.path.exists(path):
        os.remove(path)  # a run replaces the previous one's records, as micro.json is replaced
    configs = [(b, s, args.cq_entries) for b in ("uring", "epoll") for s in ("fiber", "callback")]
    for backend, style, cq in configs:
        cmd = [bl.bin_path("idle"), "--backend", backend, "--style", style, "--conns", str(args.conns),
               "--timers", str(args.timers), "--secs", str(args.secs)]
        if cq and backend == "uring":
            cmd += ["--cq-entries", str(cq)]
        res, counts = run_marked(cmd, method, args.secs + 180)
        rec = {"bench": "idle", "backend": backend, "style": style, "cq_entries": cq or "default",
               "result": res, "syscalls": counts}
        bl.write_jsonl(path, rec)
        print(json.dumps(rec))


def memory(args, out):
    path = os.path.join(out, "memory.jsonl")
    if os.path.exists(path):
        os.remove(path)  # a run replaces the previous one's records, as micro.json is replaced
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    conns = args.conns
    if hard != resource.RLIM_INFINITY and hard < conns + 1024:
        conns = hard - 1024
        bl.log(f"RLIMIT_NOFILE hard limit is {hard}: measuring {conns} connections instead of {args.conns}")
    maps = int(open("/proc/sys/vm/max_map_count").read())
    note = None
    release = re.match(r"(\d+)\.(\d+)", os.uname().release)
    guard_regions = release is not None and tuple(map(int, release.groups())) >= (6, 13)
    fibers = max(args.conns, conns)
    if not guard_regions and maps < 2 * fibers + 10000:
        want = 1 << (2 * fibers + 65536).bit_length()
        if os.geteuid() == 0:
            subprocess.run(["sysctl", "-w", f"vm.max_map_count={want}"], check=False)
            note = f"vm.max_map_count raised from {maps} to {want}"
            bl.log(note)
        else:
            sys.exit(f"vm.max_map_count is {maps}; run `sysctl -w vm.max_map_count={want}` as root")
    for backend in ("uring", "epoll"):
        cmd = [bl.bin_path("memory"), "--backend", backend, "--conns", str(conns),
               "--fibers", str(fibers)]
        if args.cq_entries and backend == "uring":
            cmd += ["--cq-entries", str(args.cq_entries)]
        res, _ = run_marked(cmd, None, 900)
        rec = {"bench": "memory", "backend": backend, "requested_conns": args.conns,
               "nofile_hard": hard, "note": note, "result": res}
        bl.write_jsonl(path, rec)
        print(json.dumps(rec))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["micro", "idle", "memory", "all"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--measurement-time", type=float, default=3)
    ap.add_argument("--filter", default=None)
    ap.add_argument("--conns", type=int, default=None)
    ap.add_argument("--timers", type=int, default=10000)
    ap.add_argument("--secs", type=float, default=10)
    ap.add_argument("--cq-entries", type=int, default=None,
                    help="io_uring completion-queue size for idle/memory (default: the loop's)")
    ap.add_argument("--syscalls", choices=["perf", "strace", "off"], default=None)
    ap.add_argument("--charts-out", default=None,
                    help="where micro.svg goes (default: docs/img for benches/results/extra, "
                         "DIR/img otherwise; 'none': no chart)")
    args = ap.parse_args()
    bl.ensure_tools()
    method = args.syscalls or ("perf" if bl.perf_works() else "strace")
    if method == "off":
        method = None
    out = args.out or os.path.join(bl.ROOT, "benches", "results", time.strftime("extra-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    if args.what in ("idle", "memory", "all") and not args.no_build:
        bl.build()
    if args.what in ("micro", "all"):
        micro(args, out)
    if args.what in ("idle", "all"):
        a = argparse.Namespace(**vars(args))
        a.conns = args.conns or 10000
        idle(a, out, method)
    if args.what in ("memory", "all"):
        a = argparse.Namespace(**vars(args))
        a.conns = args.conns or 100000
        memory(a, out)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
