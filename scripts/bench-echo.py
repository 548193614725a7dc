#!/usr/bin/env python3
"""The echo benchmark: fdloop's echo servers next to its peers', under the same load.

    scripts/bench-echo.py [--rounds 3] [--secs 3] [--warmup 0.5] [--syscall-secs 1]
                          [--servers fdloop-cb-uring,tokio,...] [--workloads 64x64,1x64,...]
                          [--out DIR] [--no-build] [--server-cpu 0] [--client-cpu 1]

For each workload, for each round, every server runs once, in the same order (A B C A B C …):
the server is started pinned to one CPU (`taskset -c 0`) and prints `READY <addr>`; the load
generator (`loadgen`, pinned to the other CPU) connects, warms up, and prints `GO` and `DONE`
around the measured window. Two passes per server and round:

1. **main pass** (`--secs`): round trips/s and latency percentiles come from loadgen; the
   server's CPU time is read from /proc/<pid>/stat (utime + stime, all threads) at `GO` and
   `DONE`, and divided by the round trips of the window.
2. **syscall pass** (`--syscall-secs`): the same load again, with the server's syscalls counted
   over the window by `perf stat -e raw_syscalls:sys_enter` (plus one
   `syscalls:sys_enter_<name>` counter per syscall of interest), switched on at `GO` and off at
   `DONE` through perf's control FIFOs. Counting costs the server a little CPU per syscall, so
   it is kept out of the main pass. Without perf, `strace -c -f -p` is used instead (much more
   intrusive; the table says which).

Raw results go to DIR/raw.jsonl (one JSON object per server run), the summary to
DIR/summary.json and DIR/summary.md, and the tables are printed. Charts: scripts/charts.py DIR.
Requires Linux, Python 3.9+, taskset, and perf or strace (installed with apt-get as root when
missing). The binaries are built with `cargo build --release -p fdloop-bench` (set
CARGO_TARGET_DIR to reuse a build).
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

SERVERS = {
    "fdloop-cb-uring": ["echo_fdloop", "--style", "callback", "--backend", "uring"],
    "fdloop-fiber-uring": ["echo_fdloop", "--style", "fiber", "--backend", "uring"],
    "fdloop-cb-epoll": ["echo_fdloop", "--style", "callback", "--backend", "epoll"],
    "fdloop-fiber-epoll": ["echo_fdloop", "--style", "fiber", "--backend", "epoll"],
    "tokio": ["echo_tokio"],
    "monoio-uring": ["echo_monoio", "--driver", "uring"],
    "monoio-epoll": ["echo_monoio", "--driver", "epoll"],
    "may": ["echo_may"],
    "mio": ["echo_mio"],
    "calloop": ["echo_calloop"],
}
PEERS = ["tokio", "monoio-uring", "monoio-epoll", "may", "mio", "calloop"]

# name: (connections, message size, depth)
WORKLOADS = {
    "64x64": (64, 64, 1),
    "1x64": (1, 64, 1),
    "256x1k": (256, 1024, 1),
    "64x64-p16": (64, 64, 16),
}

# The targets of the issue. Each: (description, workload, kind, fdloop server, peer or None,
# limit). kind "syscalls": median syscalls/rt ≤ limit; "cpu": median (per-round) ratio of
# CPU/rt, fdloop ÷ peer ≤ limit.
TARGETS = [
    ("syscalls/rt, io_uring, 64×64 B", "64x64", "syscalls", "fdloop-cb-uring", None, 0.05),
    ("syscalls/rt, io_uring, 64×64 B", "64x64", "syscalls", "fdloop-fiber-uring", None, 0.05),
    ("syscalls/rt, io_uring, 1×64 B", "1x64", "syscalls", "fdloop-cb-uring", None, 1.0),
    ("syscalls/rt, io_uring, 1×64 B", "1x64", "syscalls", "fdloop-fiber-uring", None, 1.0),
    ("syscalls/rt, epoll, 64×64 B", "64x64", "syscalls", "fdloop-cb-epoll", None, 2.02),
    ("syscalls/rt, epoll, 64×64 B", "64x64", "syscalls", "fdloop-fiber-epoll", None, 2.02),
]
for w in ("64x64", "256x1k"):
    TARGETS += [
        (f"CPU/rt callback+io_uring vs tokio, {w}", w, "cpu", "fdloop-cb-uring", "tokio", 0.85),
        (f"CPU/rt callback+io_uring vs monoio, {w}", w, "cpu", "fdloop-cb-uring", "monoio-uring", 0.95),
        (f"CPU/rt fiber+io_uring vs tokio, {w}", w, "cpu", "fdloop-fiber-uring", "tokio", 0.90),
        (f"CPU/rt fiber+io_uring vs monoio, {w}", w, "cpu", "fdloop-fiber-uring", "monoio-uring", 1.0),
        (f"CPU/rt fiber+epoll vs tokio, {w}", w, "cpu", "fdloop-fiber-epoll", "tokio", 1.0),
    ]


def start_server(name, cpu):
    cmd = ["taskset", "-c", str(cpu), bl.bin_path(SERVERS[name][0]), *SERVERS[name][1:]]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 15
    while time.time() < deadline:
        line = bl.read_line(p, 1)
        if line and line.startswith("READY "):
            return p, line.split()[1]
        if p.poll() is not None:
            break
    p.kill()
    raise RuntimeError(f"{name} did not start: {p.stderr.read().decode()[-2000:]}")


def stop_server(p):
    p.terminate()
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    err = p.stderr.read().decode(errors="replace")
    return err


def run_load(addr, workload, secs, warmup, cpu, on_go, on_done):
    conns, size, depth = WORKLOADS[workload]
    cmd = ["taskset", "-c", str(cpu), bl.bin_path("loadgen"), "--addr", addr, "--conns", str(conns),
           "--size", str(size), "--depth", str(depth), "--secs", str(secs), "--warmup", str(warmup)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    result = None
    while True:
        line = bl.read_line(p, secs + warmup + 60)
        if line is None:
            break
        if line == "GO":
            on_go()
        elif line == "DONE":
            on_done()
        elif line.startswith("{"):
            result = json.loads(line)
    p.wait()
    if p.returncode != 0 or result is None:
        raise RuntimeError(f"loadgen failed ({p.returncode}): {p.stderr.read().decode()[-2000:]}")
    return result


def one_run(server, workload, rnd, args, syscall_method):
    p, addr = start_server(server, args.server_cpu)
    rec = {"server": server, "workload": workload, "round": rnd,
           "conns": WORKLOADS[workload][0], "size": WORKLOADS[workload][1],
           "depth": WORKLOADS[workload][2]}
    try:
        marks = {}

        def go():
            marks["cpu0"] = bl.proc_cpu_s(p.pid)
            marks["sched0"] = bl.proc_sched_s(p.pid)
            marks["sw0"] = bl.proc_switches(p.pid)

        def done():
            marks["cpu1"] = bl.proc_cpu_s(p.pid)
            marks["sched1"] = bl.proc_sched_s(p.pid)
            marks["sw1"] = bl.proc_switches(p.pid)

        load = run_load(addr, workload, args.secs, args.warmup, args.client_cpu, go, done)
        rec["load"] = load
        rt = load["round_trips"]
        rec["server_cpu_s"] = marks["cpu1"] - marks["cpu0"]
        rec["server_sched_s"] = (marks["sched1"] - marks["sched0"]
                                 if marks["sched0"] is not None and marks["sched1"] is not None else None)
        rec["server_voluntary_switches"] = marks["sw1"][0] - marks["sw0"][0]
        rec["cpu_us_per_rt"] = rec["server_cpu_s"] * 1e6 / rt if rt else None
        rec["sched_us_per_rt"] = (rec["server_sched_s"] * 1e6 / rt
                                  if rt and rec["server_sched_s"] is not None else None)
        rec["rt_per_s"] = load["rt_per_s"]

        if syscall_method and args.syscall_secs > 0:
            counter = bl.SyscallCounter(p.pid, syscall_method)
            counter.prepare()
            load2 = run_load(addr, workload, args.syscall_secs, args.warmup / 2, args.client_cpu,
                             counter.start, lambda: None)
            counts = counter.stop()
            rec["syscall_pass"] = {"round_trips": load2["round_trips"], "rt_per_s": load2["rt_per_s"],
                                   "counts": counts}
            if counts and counts["total"] is not None and load2["round_trips"]:
                rec["syscalls_per_rt"] = counts["total"] / load2["round_trips"]
    finally:
        err = stop_server(p)
        if err.strip():
            rec["server_stderr"] = err[-1000:]
    return rec


def summarize(records, servers, workloads):
    """Medians and ranges per (workload, server); per-round ratios fdloop ÷ peer."""
    summary = {"cells": {}, "ratios": {}, "targets": []}
    for w in workloads:
        for s in servers:
            rs = [r for r in records if r["workload"] == w and r["server"] == s and "load" in r]
            if not rs:
                continue

            def stat(key, get):
                xs = [get(r) for r in rs]
                xs = [x for x in xs if x is not None]
                if not xs:
                    return None
                return {"median": bl.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}

            cell = {
                "rt_per_s": stat("rt", lambda r: r["rt_per_s"]),
                "p50_us": stat("p50", lambda r: r["load"]["p50_us"]),
                "p99_us": stat("p99", lambda r: r["load"]["p99_us"]),
                "p999_us": stat("p999", lambda r: r["load"]["p999_us"]),
                "cpu_us_per_rt": stat("cpu", lambda r: r.get("cpu_us_per_rt")),
                "sched_us_per_rt": stat("sched", lambda r: r.get("sched_us_per_rt")),
                "syscalls_per_rt": stat("sys", lambda r: r.get("syscalls_per_rt")),
                "client_cpu_share": stat("client", lambda r: r["load"].get("client_cpu_s", 0)
                                         / r["load"]["secs"] if r["load"].get("secs") else None),
            }
            names = {}
            for r in rs:
                sp = r.get("syscall_pass")
                if sp and sp["counts"] and sp["round_trips"]:
                    for k, v in sp["counts"]["by_name"].items():
                        names.setdefault(k, []).append(v / sp["round_trips"])
            cell["syscalls_by_name_per_rt"] = {k: bl.median(v) for k, v in names.items()}
            method = next((r["syscall_pass"]["counts"]["method"] for r in rs
                           if r.get("syscall_pass") and r["syscall_pass"]["counts"]), None)
            cell["syscall_method"] = method
            summary["cells"][f"{w}|{s}"] = cell
        # Per-round ratios fdloop ÷ peer (same round: adjacent in time).
        for f in [s for s in servers if s.startswith("fdloop")]:
            for peer in [s for s in servers if not s.startswith("fdloop")]:
                for key in ("cpu_us_per_rt", "rt_per_s"):
                    ratios = []
                    for rnd in sorted({r["round"] for r in records if r["workload"] == w}):
                        a = next((r.get(key) for r in records if r["workload"] == w and r["server"] == f
                                  and r["round"] == rnd), None)
                        b = next((r.get(key) for r in records if r["workload"] == w and r["server"] == peer
                                  and r["round"] == rnd), None)
                        if a is not None and b:
                            ratios.append(a / b)
                    if ratios:
                        summary["ratios"][f"{w}|{f}|{peer}|{key}"] = {
                            "median": bl.median(ratios), "min": min(ratios), "max": max(ratios)}
    for desc, w, kind, f, peer, limit in TARGETS:
        if kind == "syscalls":
            cell = summary["cells"].get(f"{w}|{f}")
            value = cell["syscalls_per_rt"]["median"] if cell and cell["syscalls_per_rt"] else None
        else:
            ratio = summary["ratios"].get(f"{w}|{f}|{peer}|cpu_us_per_rt")
            value = ratio["median"] if ratio else None
        if value is None:
            continue
        summary["targets"].append({"target": desc, "server": f, "peer": peer, "workload": w,
                                   "kind": kind, "limit": limit, "value": value,
                                   "met": value <= limit})
    # Round trips/s never below 0.95 × the best peer: per round, fdloop's rt/s ÷ the best peer's
    # rt/s in that same round; the median over the rounds.
    for w in workloads:
        peers = [s for s in servers if not s.startswith("fdloop")]
        rounds = sorted({r["round"] for r in records if r["workload"] == w})
        for f in [s for s in servers if s.startswith("fdloop")]:
            ratios, bests = [], []
            for rnd in rounds:
                mine = next((r.get("rt_per_s") for r in records if r["workload"] == w
                             and r["server"] == f and r["round"] == rnd), None)
                theirs = [(r.get("rt_per_s"), r["server"]) for r in records if r["workload"] == w
                          and r["server"] in peers and r["round"] == rnd and r.get("rt_per_s")]
                if mine is None or not theirs:
                    continue
                best = max(theirs)
                ratios.append(mine / best[0])
                bests.append(best[1])
            if not ratios:
                continue
            value = bl.median(ratios)
            summary["targets"].append({"target": f"rt/s vs best peer of the round, {w}", "server": f,
                                       "peer": "/".join(sorted(set(bests))), "workload": w, "kind": "rt",
                                       "limit": 0.95, "value": value, "met": value >= 0.95})
    return summary


def rng(c, key, digits=3):
    s = c.get(key)
    if not s:
        return "–"
    return f"{bl.fmt(s['median'], digits)} ({bl.fmt(s['min'], digits)}–{bl.fmt(s['max'], digits)})"


def markdown(summary, servers, workloads, meta):
    out = []
    for w in workloads:
        conns, size, depth = WORKLOADS[w]
        kind = "request/response" if depth == 1 else f"pipelined, depth {depth}"
        out.append(f"### {w}: {conns} connection(s) × {size} B, {kind}\n")
        out.append("| server | round trips/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/rt | syscalls/rt "
                   "| main syscalls/rt | loadgen CPU share |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for s in servers:
            c = summary["cells"].get(f"{w}|{s}")
            if not c:
                continue
            top = sorted(c["syscalls_by_name_per_rt"].items(), key=lambda kv: -kv[1])[:3]
            tops = ", ".join(f"{k} {bl.fmt(v)}" for k, v in top if v >= 0.0005) or "–"
            out.append(f"| {s} | {rng(c, 'rt_per_s')} | {bl.fmt(c['p50_us']['median'])} | "
                       f"{bl.fmt(c['p99_us']['median'])} | {bl.fmt(c['p999_us']['median'])} | "
                       f"{rng(c, 'cpu_us_per_rt')} | {rng(c, 'syscalls_per_rt')} | {tops} | "
                       f"{bl.fmt(100 * c['client_cpu_share']['median']) if c.get('client_cpu_share') else '–'} % |")
        out.append("")
        fl = [s for s in servers if s.startswith("fdloop")]
        peers = [s for s in servers if not s.startswith("fdloop")]
        if fl and peers:
            out.append(f"CPU per round trip, fdloop ÷ peer (median of per-round ratios, {w}):\n")
            out.append("| fdloop \\ peer | " + " | ".join(peers) + " |")
            out.append("|---|" + "---|" * len(peers))
            for f in fl:
                row = []
                for peer in peers:
                    r = summary["ratios"].get(f"{w}|{f}|{peer}|cpu_us_per_rt")
                    row.append(bl.fmt(r["median"]) if r else "–")
                out.append(f"| {f} | " + " | ".join(row) + " |")
            out.append("")
    out.append("### Targets\n")
    out.append("| target | fdloop server | measured | limit | met |")
    out.append("|---|---|---|---|---|")
    for t in summary["targets"]:
        rel = "≥" if t["kind"] == "rt" else "≤"
        unit = "×" if t["kind"] in ("cpu", "rt") else ""
        out.append(f"| {t['target']} | {t['server']} | {bl.fmt(t['value'])}{unit} | {rel} {t['limit']}{unit} | "
                   f"{'yes' if t['met'] else '**no**'} |")
    out.append("")
    return "\n".join(out)


def write_summary(out, records, servers, workloads, meta):
    summary = summarize(records, servers, workloads)
    summary["meta"] = meta
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    md = markdown(summary, servers, workloads, meta)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(md)
    print(md)


def resummarize(out):
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(out, "raw.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    write_summary(out, records, meta["servers"], list(meta["workloads"]), meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--syscall-secs", type=float, default=1.0)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--summarize", metavar="DIR", default=None,
                    help="only recompute DIR/summary.{json,md} from DIR/raw.jsonl and print it")
    ap.add_argument("--syscalls", choices=["perf", "strace", "off"], default=None,
                    help="how to count syscalls (default: perf if it works, else strace)")
    args = ap.parse_args()
    if args.summarize:
        resummarize(args.summarize)
        return
    servers = [s for s in args.servers.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    for s in servers:
        if s not in SERVERS:
            sys.exit(f"unknown server {s}; known: {', '.join(SERVERS)}")
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w}; known: {', '.join(WORKLOADS)}")
    bl.ensure_tools()
    method = args.syscalls or ("perf" if bl.perf_works() else "strace")
    if method == "off":
        method = None
    if not args.no_build:
        bl.build()
    out = args.out or os.path.join(bl.ROOT, "benches", "results", time.strftime("echo-%Y%m%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    raw = os.path.join(out, "raw.jsonl")
    meta = bl.machine_info()
    meta.update({"rounds": args.rounds, "secs": args.secs, "warmup": args.warmup,
                 "syscall_secs": args.syscall_secs, "syscall_method": method,
                 "server_cpu": args.server_cpu, "client_cpu": args.client_cpu,
                 "servers": servers, "workloads": {w: WORKLOADS[w] for w in workloads}})
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    bl.log(f"results in {out}; syscalls counted with {method}")
    records = []
    for w in workloads:
        for rnd in range(1, args.rounds + 1):
            for s in servers:
                try:
                    rec = one_run(s, w, rnd, args, method)
                except Exception as e:  # noqa: BLE001 - a failed server run is recorded, not fatal
                    rec = {"server": s, "workload": w, "round": rnd, "error": str(e)}
                rec["time"] = time.time()
                rec["loadavg"] = open("/proc/loadavg").read().split()[:3]
                records.append(rec)
                bl.write_jsonl(raw, rec)
                if "error" in rec:
                    bl.log(f"{w} r{rnd} {s}: ERROR {rec['error'][:300]}")
                else:
                    bl.log(f"{w} r{rnd} {s:20s} {rec['rt_per_s']:>10.0f} rt/s  "
                           f"cpu {bl.fmt(rec.get('cpu_us_per_rt'))} µs/rt  "
                           f"syscalls {bl.fmt(rec.get('syscalls_per_rt'))}/rt  "
                           f"p99 {bl.fmt(rec['load']['p99_us'])} µs  load {' '.join(rec['loadavg'])}")
    write_summary(out, records, servers, workloads, meta)
    print(f"\nraw results: {raw}")


if __name__ == "__main__":
    main()
