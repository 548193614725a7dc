#!/usr/bin/env python3
"""Charts (self-contained SVG, Python standard library only) from the benchmark results.

    scripts/charts.py [DIR ...] [--out docs/img]

Each DIR is a results directory: one written by scripts/bench-echo.py (it holds summary.json;
`scripts/bench-echo.py --summarize DIR` recomputes that from raw.jsonl and redraws the charts)
or one written by scripts/bench-extra.py (it holds micro.json). Without DIR:
benches/results/echo and benches/results/extra. Charts written to --out:

* echo-<workload>.svg — one per echo workload: round trips/s, server CPU µs per round trip and
  server syscalls per round trip of every server, side by side (bars: medians over the rounds,
  whiskers: min–max; fdloop's servers in blue, peers in grey; red ticks: the syscall targets).
* echo-ratios.svg — every fdloop server ÷ every peer and ÷ the best peer of the same round, per
  workload: round trips/s and server CPU per round trip (medians of the per-round ratios).
* targets.svg — every target of the echo benchmark: the measured value (median, min–max over
  the rounds) against its limit.
* micro.svg — the criterion micro-benchmarks, fdloop next to its peers per item, on a log
  scale (whiskers: criterion's confidence interval of the median; red ticks: targets).
"""

import argparse
import json
import math
import os
import sys
from html import escape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
FDLOOP_URING = "#2b6cb0"
FDLOOP_EPOLL = "#63b3ed"
PEER = "#a0aec0"
TARGET = "#c53030"
MET = "#2f855a"
GRID = "#e2e8f0"
INK = "#1a202c"
MUTED = "#4a5568"


# ---------------------------------------------------------------------------------------------
# SVG and number helpers

class Svg:
    def __init__(self, width):
        self.width = width
        self.items = []

    def add(self, s):
        self.items.append(s)

    def text(self, x, y, s, size=12, anchor="start", fill=INK, weight=None, extra=""):
        w = f' font-weight="{weight}"' if weight else ""
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                 f'fill="{fill}"{w}{extra}>{escape(str(s))}</text>')

    def rect(self, x, y, w, h, fill, extra=""):
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(0.0, w):.1f}" height="{h:.1f}" '
                 f'fill="{fill}"{extra}/>')

    def line(self, x1, y1, x2, y2, stroke=INK, width=1, extra=""):
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
                 f'stroke-width="{width}"{extra}/>')

    def whisker(self, x1, x2, ym, half=4):
        if x2 - x1 < 0.5:
            return
        self.line(x1, ym, x2, ym)
        self.line(x1, ym - half, x1, ym + half)
        self.line(x2, ym - half, x2, ym + half)

    def note(self, x, y, text, size=10.5):
        """Grey small print, wrapped at "; " to the width of the chart; returns the y below it."""
        lines, cur = [], ""
        for part in text.split("; "):
            cand = f"{cur}; {part}" if cur else part
            if cur and x + text_w(cand, size) > self.width - 8:
                lines.append(cur + ";")
                cur = part
            else:
                cur = cand
        lines.append(cur)
        for line in lines:
            self.text(x, y, line, size=size, fill=MUTED)
            y += size + 4
        return y

    def write(self, path, height, title):
        head = (f'<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{height:.0f}" '
                f'viewBox="0 0 {self.width} {height:.0f}" font-family="{FONT}" font-size="12">\n'
                f'<title>{escape(title)}</title>\n'
                f'<rect width="{self.width}" height="{height:.0f}" fill="white"/>')
        with open(path, "w", encoding="utf-8") as f:
            f.write(head + "\n" + "\n".join(self.items) + "\n</svg>\n")
        print(path)


def text_w(s, size=12):
    """Rough width of a DejaVu Sans string, px."""
    return len(str(s)) * size * 0.6


def sig(v, n=3):
    """v with n significant digits, without exponent notation."""
    if v == 0:
        return "0"
    d = max(0, n - 1 - math.floor(math.log10(abs(v))))
    return f"{v:,.{d}f}"


def against(fmt, v, limit):
    """fmt(v), or v with as many significant digits as it takes not to print the limit itself
    when v is not the limit (2.0204 against 2.02, 0.945× against 0.95×)."""
    s = fmt(v)
    n = 3
    while v != limit and float(s.rstrip("×").replace(",", "")) == float(limit) and n < 8:
        s = sig(v, n) + ("×" if s.endswith("×") else "")
        n += 1
    return s


def fmt_count(v):
    """Round trips/s and the like: 2.00M, 47.6k, 950."""
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.1f}k"
    if v >= 1e3:
        return f"{v / 1e3:.2f}k"
    return sig(v)


def compact(v):
    """A round figure without trailing zeros: 0.05, 1, 2.5, 20."""
    return f"{float(f'{v:.6g}'):g}"


def compact_count(v):
    if v >= 1e6:
        return f"{compact(v / 1e6)}M"
    if v >= 1e3:
        return f"{compact(v / 1e3)}k"
    return compact(v)


def compact_ns(v):
    if v >= 1e6:
        return f"{compact(v / 1e6)} ms"
    if v >= 1e3:
        return f"{compact(v / 1e3)} µs"
    return f"{compact(v)} ns"


def compact_ratio(v):
    return f"{compact(v)}×"


def fmt_ns(v):
    if v >= 1e6:
        return f"{sig(v / 1e6)} ms"
    if v >= 1e3:
        return f"{sig(v / 1e3)} µs"
    return f"{sig(v)} ns"


class Scale:
    """Maps values to x in [x0, x1]; linear from 0 or logarithmic by decades."""

    def __init__(self, lo, hi, x0, x1, log=False):
        self.log = log
        self.x0, self.x1 = x0, x1
        if log:
            lo = max(lo, 1e-12)
            self.lo = 10 ** math.floor(math.log10(lo))
            self.hi = 10 ** math.ceil(math.log10(hi)) if hi > 0 else self.lo * 10
            if self.hi <= self.lo:
                self.hi = self.lo * 10
        else:
            self.lo = 0.0
            self.step = nice_step(hi / 4)
            self.hi = self.step * math.ceil(hi / self.step - 1e-9) if hi > 0 else 1.0

    def __call__(self, v):
        v = min(max(v, self.lo), self.hi)
        if self.log:
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return self.x0 + f * (self.x1 - self.x0)

    def ticks(self):
        if self.log:
            k0, k1 = round(math.log10(self.lo)), round(math.log10(self.hi))
            return [10.0 ** k for k in range(k0, k1 + 1)]
        return [self.step * i for i in range(round(self.hi / self.step) + 1)]

    def minor(self):
        if not self.log:
            return []
        out = []
        for t in self.ticks()[:-1]:
            out += [t * m for m in (2, 5)]
        return out


def nice_step(v):
    """The smallest 1, 2, 2.5 or 5 × 10^k at least v."""
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * e >= v * 0.999:
            return m * e
    return 10 * e


def axis(svg, scale, y_top, y_bottom, tick_label, labels_at=("bottom",), size=11):
    for t in scale.minor():
        x = scale(t)
        svg.line(x, y_top, x, y_bottom, stroke="#f1f5f9")
    for t in scale.ticks():
        x = scale(t)
        svg.line(x, y_top, x, y_bottom, stroke=GRID)
        if "bottom" in labels_at:
            svg.text(x, y_bottom + 14, tick_label(t), size=size, anchor="middle", fill=MUTED)
        if "top" in labels_at:
            svg.text(x, y_top - 5, tick_label(t), size=size, anchor="middle", fill=MUTED)


def legend(svg, x, y, entries, size=12):
    """entries: (kind, colour, label); kind 'box', 'whisker', 'tick', 'band' or 'dot'."""
    for kind, colour, label in entries:
        if kind == "box":
            svg.rect(x, y - 10, 14, 12, colour)
        elif kind == "whisker":
            svg.whisker(x, x + 14, y - 4)
        elif kind == "tick":
            svg.line(x + 7, y - 12, x + 7, y + 3, stroke=colour, width=2.5)
        elif kind == "band":
            svg.rect(x, y - 11, 14, 14, colour)
        elif kind == "dot":
            svg.add(f'<circle cx="{x + 7:.1f}" cy="{y - 4:.1f}" r="4.5" fill="{colour}"/>')
        svg.text(x + 19, y, label, size=size)
        x += 19 + text_w(label, size) + 18
    return x


def server_colour(name):
    if not name.startswith("fdloop"):
        return PEER
    return FDLOOP_EPOLL if "epoll" in name else FDLOOP_URING


def use_log(values):
    values = [v for v in values if v and v > 0]
    return bool(values) and max(values) / min(values) > 40


# ---------------------------------------------------------------------------------------------
# Echo: one chart per workload, three measures side by side

def workload_desc(w, meta):
    conns, size, depth = meta["workloads"][w]
    size_s = f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"
    kind = "request/response" if depth == 1 else f"pipelined, {depth} in flight per connection"
    return f"{conns} connection{'s' if conns != 1 else ''} × {size_s}, {kind}"


def run_note(meta):
    rounds = meta.get("rounds", "?")
    sys_pass = (f"syscalls: separate {meta.get('syscall_secs', '?')} s pass with {meta['syscall_method']}"
                if meta.get("syscall_method") else "syscalls not counted")
    return (f"{rounds} interleaved round{'' if rounds == 1 else 's'} of {meta.get('secs', '?')} s "
            f"({sys_pass}); "
            f"{meta.get('nproc', '?')} vCPU {meta.get('cpu', '')} {meta.get('hypervisor', '')}, "
            f"Linux {meta.get('kernel', '?')}, server pinned to CPU {meta.get('server_cpu', 0)}, "
            f"load generator to CPU {meta.get('client_cpu', 1)}; {meta.get('date', '')}")


def echo_workload_chart(path, w, summary):
    meta = summary["meta"]
    servers = [s for s in meta["servers"] if f"{w}|{s}" in summary["cells"]]
    if not servers:
        return
    cells = {s: summary["cells"][f"{w}|{s}"] for s in servers}
    method = next((c["syscall_method"] for c in cells.values() if c.get("syscall_method")),
                  meta.get("syscall_method") or "?")
    sys_targets = {t["server"]: t["limit"] for t in summary.get("targets", [])
                   if t["kind"] == "syscalls" and t["workload"] == w}
    panels = [
        ("rt_per_s", "Round trips per second", "higher is better", fmt_count, compact_count),
        ("cpu_us_per_rt", "Server CPU per round trip, µs", "lower is better; utime + stime, /proc", sig, compact),
        ("syscalls_per_rt", "Server syscalls per round trip", f"lower is better; counted with {method}", sig,
         compact),
    ]
    label_w = max(text_w(s, 12) for s in servers) + 16
    panel_w, gap, value_room = 285, 22, 50
    width = int(label_w + 3 * panel_w + 2 * gap + 12)
    row_h, bar_h = 25, 15
    top = 106
    plot_h = len(servers) * row_h
    svg = Svg(width)
    svg.text(12, 24, f"Echo {w}: {workload_desc(w, meta)}", size=16, weight="bold")
    svg.text(12, 44, "Bars: median over the rounds; whiskers: min–max over the rounds.", size=12,
             fill=MUTED)
    entries = [("box", FDLOOP_URING, "fdloop, io_uring"), ("box", FDLOOP_EPOLL, "fdloop, epoll"),
               ("box", PEER, "peers"), ("whisker", INK, "min–max")]
    if sys_targets:
        entries.append(("tick", TARGET, "syscall target"))
    legend(svg, 12, 64, entries)
    # Row stripes across all panels, and a rule between fdloop's servers and the peers.
    for i, s in enumerate(servers):
        y = top + i * row_h
        if i % 2 == 0:
            svg.rect(4, y, width - 8, row_h, "#f7fafc")
        svg.text(label_w - 8, y + row_h / 2 + 4, s, size=12, anchor="end",
                 weight="bold" if s.startswith("fdloop") else None)
    n_fd = sum(1 for s in servers if s.startswith("fdloop"))
    if 0 < n_fd < len(servers):
        y = top + n_fd * row_h
        svg.line(4, y, width - 4, y, stroke="#cbd5e0")
    for p, (key, title, sub, fmt, tick_fmt) in enumerate(panels):
        x0 = label_w + p * (panel_w + gap)
        x1 = x0 + panel_w - value_room
        stats = {s: cells[s].get(key) for s in servers}
        vals = [v for st in stats.values() if st for v in (st["min"], st["max"], st["median"])]
        if key == "syscalls_per_rt":
            vals += list(sys_targets.values())
        svg.text(x0, top - 22, title, size=13, weight="bold")
        if not vals:
            svg.text(x0, top - 8, "not measured in this run", size=11, fill=MUTED)
            continue
        log = use_log(vals)
        scale = Scale(min(vals), max(vals), x0, x1, log=log)
        svg.text(x0, top - 8, sub + ("; log scale" if log else ""), size=11, fill=MUTED)
        axis(svg, scale, top, top + plot_h, tick_fmt)
        for i, s in enumerate(servers):
            st = stats[s]
            y = top + i * row_h + (row_h - bar_h) / 2
            ym = y + bar_h / 2
            if not st:
                svg.text(x0 + 4, ym + 4, "–", fill=MUTED)
                continue
            svg.rect(x0, y, scale(st["median"]) - x0, bar_h, server_colour(s))
            svg.whisker(scale(st["min"]), scale(st["max"]), ym)
            end = max(scale(st["median"]), scale(st["max"]))
            if key == "syscalls_per_rt" and s in sys_targets:
                xt = scale(sys_targets[s])
                svg.line(xt, y - 3, xt, y + bar_h + 3, stroke=TARGET, width=2.5)
                end = max(end, xt)
            svg.text(end + 5, ym + 4, fmt(st["median"]), size=11)
    y = svg.note(12, top + plot_h + 38, run_note(meta))
    svg.write(path, y, f"Echo {w}")


# ---------------------------------------------------------------------------------------------
# Echo: fdloop ÷ each peer, per workload (heat map of the per-round ratio medians)

def ratio_colour(r, higher_better):
    """Green when fdloop is better, red when worse; saturates at ±40 %."""
    good = math.log(r) if higher_better else -math.log(r)
    f = max(-1.0, min(1.0, good / math.log(1.4)))
    if f >= 0:
        c0, c1 = (247, 250, 252), (72, 187, 120)
    else:
        c0, c1 = (247, 250, 252), (245, 101, 101)
        f = -f
    rgb = [round(a + (b - a) * f) for a, b in zip(c0, c1)]
    return "#%02x%02x%02x" % tuple(rgb)


def echo_ratio_chart(path, summary):
    meta = summary["meta"]
    workloads = [w for w in meta["workloads"] if any(k.startswith(f"{w}|") for k in summary["cells"])]
    fdloops = [s for s in meta["servers"] if s.startswith("fdloop")]
    peers = [s for s in meta["servers"] if not s.startswith("fdloop")]
    if not workloads or not fdloops or not peers:
        return
    cols = peers + ["best peer"]
    measures = [("rt_per_s", "Round trips/s, fdloop ÷ peer", "higher is better; target ≥ 0.95 × the best peer", True),
                ("cpu_us_per_rt", "Server CPU per round trip, fdloop ÷ peer", "lower is better", False)]
    label_w = max(text_w(s, 12) for s in fdloops) + 14
    cell_w, cell_h, gap = 58, 24, 30
    grid_w = len(cols) * cell_w
    panel_w = label_w + max(grid_w, max(max(text_w(m[1], 13), text_w(m[2], 11)) for m in measures) + 10)
    title = "Echo: every fdloop server ÷ every peer, in the same round"
    subtitle = ("Cells: median over the rounds of the per-round ratio; 'best peer': the peer with "
                "the most round trips/s (or least CPU) in that round.")
    second_panel = 12 + panel_w + gap + label_w + text_w(measures[1][1], 13)
    width = int(max(12 + 2 * panel_w + gap + 12, 24 + text_w(subtitle, 12), 12 + second_panel,
                    24 + max(text_w(f"{w}: {workload_desc(w, meta)}", 13) for w in workloads)))
    svg = Svg(width)
    svg.text(12, 24, title, size=16, weight="bold")
    svg.text(12, 44, subtitle, size=12, fill=MUTED)
    for m, (key, title, sub, higher) in enumerate(measures):
        x0 = 12 + m * (panel_w + gap) + label_w
        svg.text(x0, 70, title, size=13, weight="bold")
        svg.text(x0, 85, sub, size=11, fill=MUTED)
    y = 104
    for w in workloads:
        svg.line(4, y - 6, width - 4, y - 6, stroke="#cbd5e0")
        svg.text(12, y + 8, f"{w}: {workload_desc(w, meta)}", size=13, weight="bold")
        y_head = y + 26
        y_grid = y_head + 18
        for m, (key, title, sub, higher) in enumerate(measures):
            gx = 12 + m * (panel_w + gap) + label_w
            for j, c in enumerate(cols):
                parts = c.split("-", 1) if c != "best peer" else ["best", "peer"]
                cx = gx + j * cell_w + cell_w / 2
                bold = "bold" if c == "best peer" else None
                svg.text(cx, y_head, parts[0], size=11, anchor="middle", fill=MUTED, weight=bold)
                if len(parts) > 1:
                    svg.text(cx, y_head + 13, parts[1], size=11, anchor="middle", fill=MUTED, weight=bold)
            for i, f in enumerate(fdloops):
                yy = y_grid + i * cell_h
                svg.text(gx - 8, yy + cell_h / 2 + 4, f, size=12, anchor="end")
                for j, c in enumerate(cols):
                    st = (summary.get("vs_best_peer", {}).get(f"{w}|{f}|{key}") if c == "best peer"
                          else summary["ratios"].get(f"{w}|{f}|{c}|{key}"))
                    cx = gx + j * cell_w
                    if not st:
                        svg.rect(cx + 1, yy + 1, cell_w - 2, cell_h - 2, "#edf2f7")
                        svg.text(cx + cell_w / 2, yy + cell_h / 2 + 4, "–", anchor="middle", fill=MUTED)
                        continue
                    svg.rect(cx + 1, yy + 1, cell_w - 2, cell_h - 2, ratio_colour(st["median"], higher))
                    missed = c == "best peer" and higher and st["median"] < 0.95
                    svg.text(cx + cell_w / 2, yy + cell_h / 2 + 4, f"{st['median']:.2f}", size=12,
                             anchor="middle", weight="bold" if c == "best peer" else None,
                             fill="#742a2a" if missed else INK)
            xb = gx + (len(cols) - 1) * cell_w
            svg.line(xb, y_grid - 2, xb, y_grid + len(fdloops) * cell_h + 2, stroke=INK)
        y = y_grid + len(fdloops) * cell_h + 24
    y = svg.note(12, y + 4, "Green: fdloop better than the peer; red: worse (full colour at 1.4× either "
                 "way); dark red figures: below the target of 0.95 × the best peer", size=11)
    y = svg.note(12, y + 4, run_note(meta))
    svg.write(path, y, "Echo: fdloop ÷ peers")


# ---------------------------------------------------------------------------------------------
# Targets: measured against the limit, one row per target

SHORT = {"fdloop-cb-uring": "callback, io_uring", "fdloop-fiber-uring": "fiber, io_uring",
         "fdloop-cb-uring-bw50": "callback, io_uring, batch wait 50 µs",
         "fdloop-cb-uring-single": "callback, io_uring, single receives",
         "fdloop-cb-epoll": "callback, epoll", "fdloop-fiber-epoll": "fiber, epoll"}


def targets_chart(path, summary):
    targets = summary.get("targets", [])
    if not targets:
        return
    meta = summary["meta"]
    sections = [
        ("syscalls", "Server syscalls per round trip (target: at most the limit)", sig),
        ("cpu", "Server CPU per round trip, fdloop ÷ peer, median of the per-round ratios (target: at most the limit)",
         lambda v: f"{v:.2f}×"),
        ("rt", "Round trips/s, fdloop ÷ the best peer of the same round (target: at least 0.95×)",
         lambda v: f"{v:.2f}×"),
    ]

    def label(t):
        who = SHORT.get(t["server"], t["server"])
        if t["kind"] == "cpu":
            return f"{t['workload']} · {who} ÷ {t['peer']}"
        return f"{t['workload']} · {who}"

    label_w = max(text_w(label(t), 12) for t in targets) + 16
    plot_w, value_room = 470, 150
    subtitle = ("Dot: median over the rounds; whiskers: min–max over the rounds; shaded: where the "
                "target is met; red tick: the limit.")
    width = int(max(label_w + plot_w + value_room + 12, 24 + text_w(subtitle, 12)))
    row_h = 22
    svg = Svg(width)
    met = sum(1 for t in targets if t["met"])
    svg.text(12, 24, f"Echo benchmark targets: {met} of {len(targets)} met", size=16, weight="bold")
    svg.text(12, 44, subtitle, size=12, fill=MUTED)
    legend(svg, 12, 64, [("dot", MET, "met"), ("dot", TARGET, "not met"), ("band", "#c6f6d5", "target zone"),
                         ("tick", TARGET, "limit"), ("whisker", INK, "min–max")])
    y = 92
    for kind, title, fmt in sections:
        rows = [t for t in targets if t["kind"] == kind]
        if not rows:
            continue
        svg.text(12, y + 12, title, size=13, weight="bold")
        top = y + 24
        plot_h = len(rows) * row_h
        x0, x1 = label_w, label_w + plot_w
        vals = [v for t in rows for v in (t["value"], t["min"], t["max"], t["limit"]) if v is not None]
        log = use_log(vals)
        if log:
            scale = Scale(min(vals), max(vals), x0, x1, log=True)
        else:
            scale = Scale(0, max(vals) * 1.05, x0, x1)
        for i, t in enumerate(rows):
            yy = top + i * row_h
            if i % 2 == 0:
                svg.rect(4, yy, width - 8, row_h, "#f7fafc")
        axis(svg, scale, top, top + plot_h, compact if kind == "syscalls" else compact_ratio)
        if log:
            svg.text(x1, top + plot_h + 28, "log scale", size=11, anchor="end", fill=MUTED)
        if kind != "syscalls":
            svg.line(scale(1.0), top, scale(1.0), top + plot_h, stroke="#718096", extra=' stroke-dasharray="3 3"')
        for i, t in enumerate(rows):
            yy = top + i * row_h
            ym = yy + row_h / 2
            svg.text(label_w - 8, ym + 4, label(t), anchor="end")
            xl = scale(t["limit"])
            if kind == "rt":
                svg.rect(xl, yy + 3, x1 - xl, row_h - 6, "#c6f6d5")
            else:
                svg.rect(x0, yy + 3, xl - x0, row_h - 6, "#c6f6d5")
            svg.line(xl, yy + 2, xl, yy + row_h - 2, stroke=TARGET, width=2.5)
            if t.get("min") is not None and t.get("max") is not None:
                svg.whisker(scale(t["min"]), scale(t["max"]), ym, half=3.5)
            svg.add(f'<circle cx="{scale(t["value"]):.1f}" cy="{ym:.1f}" r="5" '
                    f'fill="{MET if t["met"] else TARGET}" stroke="white" stroke-width="1"/>')
            rel = "≥" if kind == "rt" else "≤"
            svg.text(x1 + 10, ym + 4, f"{against(fmt, t['value'], t['limit'])}  (limit {rel} {compact(t['limit'])}{'' if kind == 'syscalls' else '×'})",
                     size=11.5, weight="bold" if not t["met"] else None,
                     fill=TARGET if not t["met"] else MET)
        y = top + plot_h + 34
    y = svg.note(12, y + 4, run_note(meta))
    svg.write(path, y, "Echo benchmark targets")


# ---------------------------------------------------------------------------------------------
# Micro-benchmarks: one log-scale chart, grouped by item

# (criterion group, title, target ns or None)
MICRO_GROUPS = [
    ("timers-batch", "Timer start + stop, 1,000,000 timers, deadlines 1–60 s", 30),
    ("timers-churn", "Timer start + stop, random victim among 1,000,000 live timers", None),
    ("yield", "Fiber yield round trip", 10),
    ("spawn+join", "Fiber spawn + join, pooled stacks", 200),
    ("post-ping-pong", "Cross-thread round trip, both threads on one CPU", None),
    ("warm", "Random 4 KiB reads, page cache warm, time per read", None),
    ("direct", "Random 4 KiB O_DIRECT reads, 32 in flight, time per read", None),
]


def micro_chart(path, micro):
    res = micro["results"]
    groups = []
    known = [g for g, _, _ in MICRO_GROUPS]
    extra = sorted({k.split("/")[0] for k in res} - set(known))
    for group, title, target in MICRO_GROUPS + [(g, g, None) for g in extra]:
        rows = []
        for k, v in res.items():
            if k.split("/")[0] == group:
                lab = k[len(group) + 1:]
                rows.append((lab, v["ns"], v.get("ns_low"), v.get("ns_high")))
        if rows:
            rows.sort(key=lambda r: (not r[0].startswith("fdloop"), r[0]))
            groups.append((title, target, rows))
    if not groups:
        return
    label_w = max(text_w(r[0], 12) for _, _, rows in groups for r in rows) + 30
    plot_w, value_room = 560, 80
    width = int(label_w + plot_w + value_room + 12)
    row_h, bar_h, head_h = 21, 14, 24
    vals = [v for _, t, rows in groups for r in rows for v in (r[1], r[2], r[3]) if v] + \
        [t for _, t, _ in groups if t]
    top = 110
    scale = Scale(min(vals), max(vals), label_w, label_w + plot_w, log=True)
    n_rows = sum(len(rows) for _, _, rows in groups)
    plot_h = n_rows * row_h + len(groups) * head_h
    svg = Svg(width)
    m = micro.get("machine", {})
    svg.text(12, 24, "Micro-benchmarks: fdloop next to its peers (time per operation, log scale)",
             size=16, weight="bold")
    svg.text(12, 44, "Bars: criterion's median; whiskers: its confidence interval of the median. "
             "Lower is better.", size=12, fill=MUTED)
    legend(svg, 12, 64, [("box", FDLOOP_URING, "fdloop"), ("box", PEER, "peer or baseline"),
                         ("whisker", INK, "confidence interval"), ("tick", TARGET, "target")])
    axis(svg, scale, top, top + plot_h, compact_ns, labels_at=("top", "bottom"))
    y = top
    for title, target, rows in groups:
        svg.rect(4, y, width - 8, head_h, "#edf2f7")
        svg.text(12, y + 16, title + (f"  (target ≤ {compact_ns(target)})" if target else ""), size=12.5,
                 weight="bold")
        y += head_h
        for lab, ns, lo, hi in rows:
            yb = y + (row_h - bar_h) / 2
            ym = yb + bar_h / 2
            svg.text(label_w - 8, ym + 4, lab, anchor="end")
            svg.rect(label_w, yb, scale(ns) - label_w, bar_h,
                     FDLOOP_URING if lab.startswith("fdloop") else PEER)
            end = scale(ns)
            if lo is not None and hi is not None:
                svg.whisker(scale(lo), scale(hi), ym, half=3.5)
                end = max(end, scale(hi))
            if target and lab.startswith("fdloop"):
                xt = scale(target)
                svg.line(xt, yb - 3, xt, yb + bar_h + 3, stroke=TARGET, width=2.5)
                end = max(end, xt)
            svg.text(end + 5, ym + 4, fmt_ns(ns), size=11)
            y += row_h
    note = (f"criterion medians; {m.get('nproc', '?')} vCPU {m.get('cpu', '')} {m.get('hypervisor', '')}, "
            f"Linux {m.get('kernel', '?')}, {m.get('rustc', '')}; {m.get('date', '')}")
    y = svg.note(12, top + plot_h + 40, note)
    svg.write(path, y, "Micro-benchmarks")


# ---------------------------------------------------------------------------------------------

def echo_charts(d, out):
    """Every echo chart of the results directory d (its summary.json) into out."""
    with open(os.path.join(d, "summary.json")) as f:
        summary = json.load(f)
    os.makedirs(out, exist_ok=True)
    for w in summary["meta"]["workloads"]:
        echo_workload_chart(os.path.join(out, f"echo-{w}.svg"), w, summary)
    echo_ratio_chart(os.path.join(out, "echo-ratios.svg"), summary)
    targets_chart(os.path.join(out, "targets.svg"), summary)


def micro_charts(d, out):
    with open(os.path.join(d, "micro.json")) as f:
        micro = json.load(f)
    os.makedirs(out, exist_ok=True)
    micro_chart(os.path.join(out, "micro.svg"), micro)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", metavar="DIR",
                    help="results directories (default: benches/results/echo benches/results/extra)")
    ap.add_argument("--echo", action="append", default=[], help="an echo results directory")
    ap.add_argument("--extra", action="append", default=[], help="a bench-extra results directory")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    args = ap.parse_args()
    dirs = args.dirs
    if not dirs and not args.echo and not args.extra:
        dirs = [os.path.join(ROOT, "benches", "results", "echo"),
                os.path.join(ROOT, "benches", "results", "extra")]
    echo, extra = list(args.echo), list(args.extra)
    for d in dirs:
        if os.path.exists(os.path.join(d, "summary.json")):
            echo.append(d)
        elif os.path.exists(os.path.join(d, "micro.json")):
            extra.append(d)
        elif os.path.exists(os.path.join(d, "raw.jsonl")):
            sys.exit(f"{d}: no summary.json; run `python3 scripts/bench-echo.py --summarize {d}`")
        else:
            sys.exit(f"{d}: neither summary.json (bench-echo.py) nor micro.json (bench-extra.py micro)")
    for d in echo:
        echo_charts(d, args.out)
    for d in extra:
        micro_charts(d, args.out)


if __name__ == "__main__":
    main()
