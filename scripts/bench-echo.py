#!/usr/bin/env python3
"""The echo benchmark: fdloop's echo servers next to its peers', under the same load.

    scripts/bench-echo.py [--rounds 3] [--secs 3] [--warmup 0.5] [--syscall-secs 1]
                          [--servers fdloop-cb-uring,tokio,...] [--workloads 64x64,1x64,...]
                          [--out DIR] [--overwrite] [--charts-out DIR|none] [--no-build]
                          [--server-cpu 0] [--client-cpu 1] [--syscalls perf|strace|off]
    scripts/bench-echo.py --summarize DIR [--charts-out DIR|none]

For each workload, for each round, every server runs once, in the same order (A B C A B C …):
the server is started pinned to one CPU (`taskset -c 0`) and prints `READY <addr>`; the load
generator (`loadgen`, pinned to the other CPU) connects, warms up, and prints `GO` and `DONE`
around the measured window. Two passes per server and round:

1. **main pass** (`--secs`): round trips/s and latency percentiles (p50/p99/p99.9) come from
   loadgen; the server's CPU time is read from /proc/<pid>/stat (utime + stime, all threads)
   at `GO` and `DONE`, and divided by the round trips of the window. loadgen reports its own
   CPU time over the window (getrusage): per round trip, and as a share of the window (near
   100 %, the load generator, not the server, is the bottleneck).
2. **syscall pass** (`--syscall-secs`): the same load again, with the server's syscalls counted
   over the window by `perf stat -e raw_syscalls:sys_enter` (plus one
   `syscalls:sys_enter_<name>` counter per syscall of interest), switched on at `GO` and off at
   `DONE` through perf's control FIFOs. Counting costs the server a little CPU per syscall, so
   it is kept out of the main pass. Without perf, `strace -c -f -p` is used instead (much more
   intrusive; the tables say which).

The summary gives, per workload and server, the median and min–max over the rounds of each
measure, and the ratio of every fdloop server to every peer and to the best peer of the same
round (computed per round, then summarized), and checks the targets (TARGETS below, and round
trips/s ≥ 0.95 × the best peer of the round).

Files in DIR (default: a new benches/results/echo-<date> directory; the committed results are
benches/results/echo): meta.json (machine and options), raw.jsonl (one JSON object per server
run), summary.json and summary.md (also printed). A run refuses to append to an existing
raw.jsonl unless given --overwrite. Charts (scripts/charts.py) go to docs/img when DIR is
benches/results/echo and to DIR/img otherwise. `--summarize DIR` reruns nothing: it recomputes
the summary and the charts from DIR/raw.jsonl and DIR/meta.json.

Requires Linux, Python 3.9+, taskset, and perf or strace (installed with apt-get as root when
missing). The binaries are built with `cargo build --release -p fdloop-bench --bins` (set
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
    # The same callback server with the io_uring batch wait (LoopBuilder::batch_wait): fewer
    # syscalls per round trip, paid for in latency and CPU.
    "fdloop-cb-uring-bw50": [
        "echo_fdloop", "--style", "callback", "--backend", "uring", "--batch-wait-us", "50",
    ],
    # The callback server with a single receive per request (Loop::recv, submitted again after
    # each response) instead of one multishot receive per connection.
    "fdloop-cb-uring-single": [
        "echo_fdloop", "--style", "callback", "--backend", "uring", "--recv", "single",
    ],
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
    ("syscalls/rt, io_uring, single receives, 64×64 B", "64x64", "syscalls",
     "fdloop-cb-uring-single", None, 0.05),
    ("syscalls/rt, io_uring, single receives, 1×64 B", "1x64", "syscalls",
     "fdloop-cb-uring-single", None, 1.0),
    ("syscalls/rt, io_uring + batch wait, 64×64 B", "64x64", "syscalls", "fdloop-cb-uring-bw50",
     None, 0.05),
    ("syscalls/rt, io_uring + batch wait, 1×64 B", "1x64", "syscalls", "fdloop-cb-uring-bw50",
     None, 1.0),
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


def _by_round(records, w, server, get):
    """{round: value} of one server in one workload (runs that failed or lack the value left out)."""
    out = {}
    for r in records:
        if r["workload"] == w and r["server"] == server and "load" in r:
            v = get(r)
            if v is not None:
                out[r["round"]] = v
    return out


def _range(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": bl.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def client_cpu_us_per_rt(r):
    """The load generator's CPU time (getrusage over the measured window) per round trip."""
    load = r["load"]
    if load.get("client_cpu_s") is None or not load.get("round_trips"):
        return None
    return load["client_cpu_s"] * 1e6 / load["round_trips"]


def client_cpu_share(r):
    """The load generator's CPU time over the window ÷ the window: near 1, the client is the
    bottleneck (it has one CPU)."""
    load = r["load"]
    if load.get("client_cpu_s") is None or not load.get("secs"):
        return None
    return load["client_cpu_s"] / load["secs"]


CELL_MEASURES = {
    "rt_per_s": lambda r: r.get("rt_per_s"),
    "p50_us": lambda r: r["load"].get("p50_us"),
    "p99_us": lambda r: r["load"].get("p99_us"),
    "p999_us": lambda r: r["load"].get("p999_us"),
    "cpu_us_per_rt": lambda r: r.get("cpu_us_per_rt"),
    "sched_us_per_rt": lambda r: r.get("sched_us_per_rt"),
    "syscalls_per_rt": lambda r: r.get("syscalls_per_rt"),
    "client_cpu_us_per_rt": client_cpu_us_per_rt,
    "client_cpu_share": client_cpu_share,
}


def summarize(records, servers, workloads):
    """Medians and min–max over the rounds per (workload, server); per-round ratios of each
    fdloop server to each peer and to the best peer of the round; the targets.

    A ratio is computed per round (runs of one round are adjacent in time, so they share the
    machine's conditions) and the median, min and max are over the rounds."""
    fdloops = [s for s in servers if s.startswith("fdloop")]
    peers = [s for s in servers if not s.startswith("fdloop")]
    summary = {"cells": {}, "ratios": {}, "vs_best_peer": {}, "peer_vs_best_other": {},
               "targets": [],
               "errors": [{k: r.get(k) for k in ("workload", "server", "round", "error")}
                          for r in records if "error" in r]}
    for w in workloads:
        for s in servers:
            rs = [r for r in records if r["workload"] == w and r["server"] == s and "load" in r]
            if not rs:
                continue
            cell = {key: _range([get(r) for r in rs]) for key, get in CELL_MEASURES.items()}
            names = {}
            for r in rs:
                sp = r.get("syscall_pass")
                if sp and sp["counts"] and sp["round_trips"]:
                    for k, v in sp["counts"]["by_name"].items():
                        names.setdefault(k, []).append(v / sp["round_trips"])
            cell["syscalls_by_name_per_rt"] = {k: bl.median(v) for k, v in names.items()}
            cell["syscall_method"] = next((r["syscall_pass"]["counts"]["method"] for r in rs
                                           if r.get("syscall_pass") and r["syscall_pass"]["counts"]), None)
            summary["cells"][f"{w}|{s}"] = cell
        # fdloop ÷ each peer, per round.
        for f in fdloops:
            for peer in peers:
                for key in ("rt_per_s", "cpu_us_per_rt", "syscalls_per_rt"):
                    a = _by_round(records, w, f, CELL_MEASURES[key])
                    b = _by_round(records, w, peer, CELL_MEASURES[key])
                    st = _range([a[k] / b[k] for k in sorted(a) if b.get(k)])
                    if st:
                        summary["ratios"][f"{w}|{f}|{peer}|{key}"] = st
        # fdloop ÷ the best peer of the same round (highest round trips/s; lowest CPU per
        # round trip).
        for f in fdloops:
            for key, pick in (("rt_per_s", max), ("cpu_us_per_rt", min)):
                mine = _by_round(records, w, f, CELL_MEASURES[key])
                theirs = {p: _by_round(records, w, p, CELL_MEASURES[key]) for p in peers}
                ratios, bests = [], []
                for rnd in sorted(mine):
                    cand = [(v[rnd], p) for p, v in theirs.items() if v.get(rnd)]
                    if not cand:
                        continue
                    best = pick(cand)
                    ratios.append(mine[rnd] / best[0])
                    bests.append(best[1])
                st = _range(ratios)
                if st:
                    st["best_peers"] = sorted(set(bests))
                    summary["vs_best_peer"][f"{w}|{f}|{key}"] = st
        # Each peer ÷ the best of the other peers of the same round: how far below the best a
        # server lands on this machine when it is no slower, the noise floor of the 0.95 × rule.
        rts = {p: _by_round(records, w, p, CELL_MEASURES["rt_per_s"]) for p in peers}
        for p in peers:
            ratios = []
            for rnd, v in sorted(rts[p].items()):
                others = [o[rnd] for q, o in rts.items() if q != p and o.get(rnd)]
                if others:
                    ratios.append(v / max(others))
            st = _range(ratios)
            if st:
                summary["peer_vs_best_other"][f"{w}|{p}"] = st
    for desc, w, kind, f, peer, limit in TARGETS:
        if w not in workloads:
            continue
        if kind == "syscalls":
            cell = summary["cells"].get(f"{w}|{f}")
            st = cell["syscalls_per_rt"] if cell else None
        else:
            st = summary["ratios"].get(f"{w}|{f}|{peer}|cpu_us_per_rt")
        if not st:
            continue
        summary["targets"].append({"target": desc, "server": f, "peer": peer, "workload": w,
                                   "kind": kind, "limit": limit, "value": st["median"],
                                   "min": st["min"], "max": st["max"], "met": st["median"] <= limit})
    # Round trips/s never below 0.95 × the best peer of the same round.
    for w in workloads:
        for f in fdloops:
            st = summary["vs_best_peer"].get(f"{w}|{f}|rt_per_s")
            if not st:
                continue
            summary["targets"].append({"target": f"rt/s vs best peer of the round, {w}", "server": f,
                                       "peer": "/".join(st["best_peers"]), "workload": w, "kind": "rt",
                                       "limit": 0.95, "value": st["median"], "min": st["min"],
                                       "max": st["max"], "met": st["median"] >= 0.95})
    return summary


def rng(st, digits=3, scale=1.0, unit="", limit=None):
    """`median (min–max)` of a {median, min, max} entry; against a `limit`, each figure with the
    digits that put it on its side of the limit (2.0204, not 2.02)."""
    if not st:
        return "–"

    def f(x):
        x *= scale
        return bl.fmt(x, digits) if limit is None else bl.fmt_against(x, limit, digits)

    if st.get("n", 2) == 1 or st["min"] == st["max"]:
        return f"{f(st['median'])}{unit}"
    return f"{f(st['median'])}{unit} ({f(st['min'])}–{f(st['max'])})"


def syscall_method_of(summary, w, servers, meta):
    for s in servers:
        c = summary["cells"].get(f"{w}|{s}")
        if c and c.get("syscall_method"):
            return c["syscall_method"]
    return meta.get("syscall_method") or "not counted"


def markdown(summary, servers, workloads, meta):
    fdloops = [s for s in servers if s.startswith("fdloop")]
    peers = [s for s in servers if not s.startswith("fdloop")]
    out = [f"Medians over the rounds ({meta.get('rounds', '?')} interleaved, {meta.get('secs', '?')} s each), "
           f"(min–max) over the rounds. Ratios are computed per round (fdloop ÷ peer in the same "
           f"round) and summarized the same way. Machine: {meta.get('nproc', '?')} CPUs "
           f"{meta.get('cpu', '')} {meta.get('hypervisor', '')}, Linux {meta.get('kernel', '?')}, "
           f"{meta.get('rustc', '')}, {meta.get('date', '')}; load average at start "
           f"{' '.join(meta.get('loadavg', []))}.\n"]
    if summary.get("errors"):
        out.append("Failed runs (left out): " + "; ".join(
            f"{e['workload']} round {e['round']} {e['server']}: {(e.get('error') or '')[:120]}"
            for e in summary["errors"]) + "\n")
    for w in workloads:
        conns, size, depth = meta["workloads"][w] if w in meta.get("workloads", {}) else WORKLOADS[w]
        kind = "request/response" if depth == 1 else f"pipelined, depth {depth}"
        method = syscall_method_of(summary, w, servers, meta)
        out.append(f"### {w}: {conns} connection(s) × {size} B, {kind}\n")
        out.append(f"| server | round trips/s | server CPU µs/rt | syscalls/rt ({method}) | main syscalls/rt "
                   "| loadgen CPU µs/rt | loadgen CPU busy |")
        out.append("|---|---|---|---|---|---|---|")
        for s in servers:
            c = summary["cells"].get(f"{w}|{s}")
            if not c:
                continue
            top = sorted(c["syscalls_by_name_per_rt"].items(), key=lambda kv: -kv[1])[:3]
            tops = ", ".join(f"{k} {bl.fmt(v)}" for k, v in top if v >= 0.0005) or "–"
            share = c.get("client_cpu_share")
            out.append(f"| {s} | {rng(c['rt_per_s'])} | {rng(c['cpu_us_per_rt'])} | "
                       f"{rng(c['syscalls_per_rt'])} | {tops} | {rng(c.get('client_cpu_us_per_rt'))} | "
                       f"{bl.fmt(100 * share['median']) + ' %' if share else '–'} |")
        out.append("")
        out.append(f"Latency seen by the load generator, µs ({w}):\n")
        out.append("| server | p50 | p99 | p99.9 |")
        out.append("|---|---|---|---|")
        for s in servers:
            c = summary["cells"].get(f"{w}|{s}")
            if c:
                out.append(f"| {s} | {rng(c['p50_us'])} | {rng(c['p99_us'])} | {rng(c['p999_us'])} |")
        out.append("")
        if fdloops and peers:
            for key, what in (("rt_per_s", "Round trips/s, fdloop ÷ peer (higher is better; best peer: the most "
                                            "round trips/s in the round; target ≥ 0.95 × the best peer)"),
                              ("cpu_us_per_rt", "Server CPU per round trip, fdloop ÷ peer (lower is better; best "
                                                "peer: the least CPU per round trip in the round)")):
                out.append(f"{what}, {w}:\n")
                out.append("| fdloop \\ peer | " + " | ".join(peers) + " | best peer of the round |")
                out.append("|---|" + "---|" * (len(peers) + 1))
                for f in fdloops:
                    row = [rng(summary["ratios"].get(f"{w}|{f}|{peer}|{key}")) for peer in peers]
                    best = summary["vs_best_peer"].get(f"{w}|{f}|{key}")
                    row.append(rng(best) + (f" [{'/'.join(best['best_peers'])}]" if best else ""))
                    out.append(f"| {f} | " + " | ".join(row) + " |")
                out.append("")
                if key == "rt_per_s" and len(peers) > 1:
                    floor = [f"{p} {rng(summary['peer_vs_best_other'].get(f'{w}|{p}'))}" for p in peers
                             if summary["peer_vs_best_other"].get(f"{w}|{p}")]
                    out.append(f"The 0.95 × rule applied to the peers themselves, {w} (each peer ÷ "
                               "the best of the other peers of the same round): "
                               + "; ".join(floor) + ".\n")
    out.append("### Targets\n")
    out.append("| target | fdloop server | measured, median (min–max) | limit | met |")
    out.append("|---|---|---|---|---|")
    for t in summary["targets"]:
        rel = "≥" if t["kind"] == "rt" else "≤"
        unit = "×" if t["kind"] in ("cpu", "rt") else ""
        measured = rng({"median": t["value"], "min": t["min"], "max": t["max"]}, unit=unit,
                       limit=t["limit"])
        out.append(f"| {t['target']} | {t['server']} | {measured} | {rel} {t['limit']}{unit} | "
                   f"{'yes' if t['met'] else '**no**'} |")
    out.append("")
    return "\n".join(out)


def write_summary(out, records, servers, workloads, meta, charts_dir=None):
    summary = summarize(records, servers, workloads)
    summary["meta"] = meta
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    md = markdown(summary, servers, workloads, meta)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(md)
    print(md)
    if charts_dir != "none":
        import charts  # scripts/charts.py
        charts.echo_charts(out, charts_dir or bl.default_charts_dir(out, "echo"))


def resummarize(out, charts_dir=None):
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    with open(os.path.join(out, "raw.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    write_summary(out, records, meta["servers"], list(meta["workloads"]), meta, charts_dir)


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
                    help="rerun nothing: recompute DIR/summary.{json,md} and the charts from "
                         "DIR/raw.jsonl and DIR/meta.json")
    ap.add_argument("--charts-out", default=None,
                    help="where the SVG charts go (default: docs/img for benches/results/echo, "
                         "DIR/img for any other results directory; 'none': no charts)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the results already in --out (by default a run refuses to mix "
                         "its records with an earlier run's)")
    ap.add_argument("--syscalls", choices=["perf", "strace", "off"], default=None,
                    help="how to count syscalls (default: perf if it works, else strace)")
    args = ap.parse_args()
    if args.summarize:
        resummarize(args.summarize, args.charts_out)
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
    if os.path.exists(raw) and os.path.getsize(raw):
        if not args.overwrite:
            sys.exit(f"{raw} holds an earlier run's records; give --overwrite to replace them "
                     f"or another --out")
        os.remove(raw)
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
    write_summary(out, records, servers, workloads, meta, args.charts_out)
    print(f"\nraw results: {raw}")


if __name__ == "__main__":
    main()
