#!/usr/bin/env python3
"""Charts (SVG, no dependencies) from the benchmark results.

    scripts/charts.py [--echo DIR] [--extra DIR] [--out docs/img]

--echo DIR: a directory written by scripts/bench-echo.py (its summary.json); one chart per
workload and measure: server CPU per round trip, round trips per second, syscalls per round
trip (bars: medians; whiskers: min–max over the rounds; fdloop's servers in blue, peers in
grey).
--extra DIR: a directory written by scripts/bench-extra.py (its micro.json): one chart per
criterion group (median time per element, whiskers: criterion's confidence interval).
"""

import argparse
import json
import os
import sys
from html import escape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

FDLOOP = "#2b6cb0"
PEER = "#9aa5b1"
TARGET = "#c53030"


def nice_max(v):
    if v <= 0:
        return 1
    import math
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def fmt(v):
    if v >= 100000:
        return f"{v/1000:,.0f}k"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def hbar(path, title, unit, rows, note=None, target=None):
    """rows: (label, value, low, high, highlight). A horizontal bar chart with whiskers."""
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return
    left, right, top, bar_h, gap = 190, 90, 52, 20, 8
    width = 760
    plot_w = width - left - right
    height = top + len(rows) * (bar_h + gap) + 46
    vmax = nice_max(max(max(r[1], r[3] if r[3] is not None else r[1]) for r in rows)
                    if target is None else max(target, max(r[3] if r[3] is not None else r[1] for r in rows)))
    x = lambda v: left + plot_w * v / vmax  # noqa: E731
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{left}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
         f'<text x="{left}" y="40" fill="#555">{escape(unit)}</text>']
    for i in range(6):
        v = vmax * i / 5
        xx = x(v)
        s.append(f'<line x1="{xx:.1f}" y1="{top - 4}" x2="{xx:.1f}" y2="{height - 40}" stroke="#e2e8f0"/>')
        s.append(f'<text x="{xx:.1f}" y="{height - 26}" text-anchor="middle" fill="#555">{fmt(v)}</text>')
    for i, (label, v, lo, hi, hl) in enumerate(rows):
        y = top + i * (bar_h + gap)
        s.append(f'<text x="{left - 8}" y="{y + bar_h * 0.72:.1f}" text-anchor="end">{escape(label)}</text>')
        s.append(f'<rect x="{left}" y="{y}" width="{max(0.5, x(v) - left):.1f}" height="{bar_h}" '
                 f'fill="{FDLOOP if hl else PEER}"/>')
        if lo is not None and hi is not None and hi > lo:
            ym = y + bar_h / 2
            s.append(f'<line x1="{x(lo):.1f}" y1="{ym}" x2="{x(hi):.1f}" y2="{ym}" stroke="#1a202c"/>')
            for e in (lo, hi):
                s.append(f'<line x1="{x(e):.1f}" y1="{ym - 5}" x2="{x(e):.1f}" y2="{ym + 5}" stroke="#1a202c"/>')
        s.append(f'<text x="{max(x(v), x(hi) if hi is not None else 0) + 6:.1f}" y="{y + bar_h * 0.72:.1f}" '
                 f'fill="#1a202c">{fmt(v)}</text>')
    if target is not None:
        xt = x(target)
        s.append(f'<line x1="{xt:.1f}" y1="{top - 8}" x2="{xt:.1f}" y2="{height - 40}" stroke="{TARGET}" '
                 f'stroke-dasharray="4 3"/>')
        s.append(f'<text x="{xt + 3:.1f}" y="{top - 10}" fill="{TARGET}">target {fmt(target)}</text>')
    if note:
        s.append(f'<text x="{left}" y="{height - 8}" fill="#555" font-size="11">{escape(note)}</text>')
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")
    print(path)


def echo_charts(d, out):
    with open(os.path.join(d, "summary.json")) as f:
        summary = json.load(f)
    meta = summary.get("meta", {})
    servers = meta.get("servers", [])
    note = (f"{meta.get('rounds', '?')} interleaved rounds of {meta.get('secs', '?')} s; "
            f"bars: median, whiskers: min–max; {meta.get('nproc', '?')} CPUs, Linux {meta.get('kernel', '?')}")
    measures = [
        ("cpu", "cpu_us_per_rt", "Server CPU time per round trip", "µs (utime + stime from /proc/<pid>/stat); lower is better"),
        ("rt", "rt_per_s", "Round trips per second", "higher is better"),
        ("syscalls", "syscalls_per_rt", "Server syscalls per round trip",
         f"counted with {meta.get('syscall_method', '?')} in a separate pass; lower is better"),
    ]
    for w in meta.get("workloads", {}):
        conns, size, depth = meta["workloads"][w]
        wdesc = f"{conns} conn × {size} B" + (f", pipelined ×{depth}" if depth > 1 else "")
        for short, key, title, unit in measures:
            rows = []
            for s in servers:
                c = summary["cells"].get(f"{w}|{s}")
                if not c or not c.get(key):
                    continue
                st = c[key]
                rows.append((s, st["median"], st["min"], st["max"], s.startswith("fdloop")))
            hbar(os.path.join(out, f"echo-{short}-{w}.svg"), f"{title} — {wdesc}", unit, rows, note)


MICRO_GROUPS = [
    ("timers-batch", "Timer start + stop (1,000,000 timers, deadlines 1–60 s)", 30),
    ("timers-churn", "Timer start + stop, random victim among 1,000,000 live timers", None),
    ("yield", "Fiber yield round trip", 10),
    ("spawn+join", "Fiber spawn + join (pooled stacks)", 200),
    ("post-ping-pong", "Cross-thread round trip, both threads on one CPU", None),
    ("warm", "Random 4 KiB reads, page cache warm (time per read)", None),
    ("direct", "Random 4 KiB O_DIRECT reads, 32 in flight (time per read)", None),
]


def micro_charts(d, out):
    path = os.path.join(d, "micro.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        micro = json.load(f)
    res = micro["results"]
    for group, title, target in MICRO_GROUPS:
        rows = []
        for k, v in res.items():
            if k.split("/")[0] != group:
                continue
            label = k[len(group) + 1:]
            rows.append((label, v["ns"], v["ns_low"], v["ns_high"], label.startswith("fdloop")))
        safe = group.replace("+", "-")
        hbar(os.path.join(out, f"micro-{safe}.svg"), title, "ns per operation (criterion median); lower is better",
             rows, "whiskers: criterion's confidence interval of the median", target)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--echo", default=None)
    ap.add_argument("--extra", default=None)
    ap.add_argument("--out", default=os.path.join(bl.ROOT, "docs", "img"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.echo:
        echo_charts(args.echo, args.out)
    if args.extra:
        micro_charts(args.extra, args.out)
    if not args.echo and not args.extra:
        ap.error("give --echo DIR and/or --extra DIR")


if __name__ == "__main__":
    main()
