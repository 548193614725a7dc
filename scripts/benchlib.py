"""Helpers shared by the benchmark runners (scripts/bench-echo.py, scripts/bench-extra.py).

Python 3.9+, standard library only.
"""

import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The syscalls worth naming in the tables (each also counted separately); the total comes
# from raw_syscalls:sys_enter.
NAMED_SYSCALLS = [
    "io_uring_enter", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl",
    "read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
    "accept4", "futex", "poll", "ppoll", "sched_yield",
]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_tools(need_perf=True):
    """Installs taskset / perf / strace with apt-get when missing (as root on Debian)."""
    missing = []
    if not shutil.which("taskset"):
        missing.append("util-linux")
    if need_perf and not shutil.which("perf"):
        missing.append("linux-perf")
    if not shutil.which("strace"):
        missing.append("strace")
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {' '.join(missing)} with apt-get")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False)
    for tool in ("taskset",):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required (package util-linux)")


def default_charts_dir(out, committed):
    """Where a run's charts go: docs/img when `out` is the committed results directory
    benches/results/<committed>, `out`/img for any other run (so that a scratch run never
    mixes its charts with the ones docs/benchmarks.md shows)."""
    if os.path.realpath(out) == os.path.realpath(os.path.join(ROOT, "benches", "results", committed)):
        return os.path.join(ROOT, "docs", "img")
    return os.path.join(out, "img")


def perf_works():
    """Whether `perf stat` can count syscall tracepoints here."""
    if not shutil.which("perf"):
        return False
    r = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "true"],
                       capture_output=True, text=True)
    return r.returncode == 0 and "raw_syscalls:sys_enter" in r.stderr and "not supported" not in r.stderr


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def build(bins=True, benches=False):
    cmd = ["cargo", "build", "--release", "-p", "fdloop-bench", "--bins"]
    log("+", " ".join(cmd))
    subprocess.run(cmd, cwd=ROOT, check=True)


def bin_path(name):
    return os.path.join(target_dir(), "release", name)


def proc_cpu_s(pid):
    """utime + stime of the whole process (all threads), seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_sched_s(pid):
    """Time on CPU of every thread of the process, seconds, from /proc/<pid>/task/*/schedstat
    (nanosecond resolution; threads that have exited are not counted)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass
    except OSError:
        return None
    return total / 1e9


def proc_switches(pid):
    """Voluntary and involuntary context switches of every thread of the process."""
    vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        invol += int(line.split()[1])
        except OSError:
            pass
    return vol, invol


class SyscallCounter:
    """Counts the syscalls of a running process over a window.

    With perf: `perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_<name>… -p PID`,
    started with its events disabled and switched on and off through control FIFOs, so the
    window is exact to well under a millisecond. Without perf: `strace -c -f -p PID`,
    attached at `start` and detached at `stop` (strace slows every syscall down a lot; its
    window edges are only approximate).
    """

    def __init__(self, pid, method):
        self.pid = pid
        self.method = method
        self.proc = None
        self.dir = tempfile.mkdtemp(prefix="fdloop-bench-")
        self.out = os.path.join(self.dir, "out")

    def prepare(self):
        if self.method != "perf":
            return
        self.ctl = os.path.join(self.dir, "ctl")
        self.ack = os.path.join(self.dir, "ack")
        os.mkfifo(self.ctl)
        os.mkfifo(self.ack)
        events = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in NAMED_SYSCALLS
                                               if os.path.isdir(f"/sys/kernel/tracing/events/syscalls/sys_enter_{n}")
                                               or os.path.isdir(f"/sys/kernel/debug/tracing/events/syscalls/sys_enter_{n}")]
        self.proc = subprocess.Popen(
            ["perf", "stat", "-x,", "-o", self.out, "-D", "-1",
             "--control", f"fifo:{self.ctl},{self.ack}", "-e", ",".join(events), "-p", str(self.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # O_RDWR never blocks on a FIFO (Linux).
        self.ctl_fd = os.open(self.ctl, os.O_RDWR)
        self.ack_fd = os.open(self.ack, os.O_RDWR)

    def _command(self, cmd):
        os.write(self.ctl_fd, (cmd + "\n").encode())
        r, _, _ = select.select([self.ack_fd], [], [], 10)
        if r:
            os.read(self.ack_fd, 64)
        else:
            log(f"perf did not acknowledge {cmd!r}")

    def start(self):
        if self.method == "perf":
            self._command("enable")
        else:
            self.proc = subprocess.Popen(["strace", "-c", "-f", "-o", self.out, "-p", str(self.pid)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        if self.method == "perf":
            self._command("disable")
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.method == "perf":
            os.close(self.ctl_fd)
            os.close(self.ack_fd)
        return self.parse()

    def parse(self):
        counts = {}
        total = None
        try:
            text = open(self.out).read()
        except OSError:
            return None
        if self.method == "perf":
            for line in text.splitlines():
                parts = line.split(",")
                if len(parts) < 3 or line.startswith("#"):
                    continue
                try:
                    value = int(parts[0])
                except ValueError:
                    continue
                event = parts[2]
                if event == "raw_syscalls:sys_enter":
                    total = value
                elif event.startswith("syscalls:sys_enter_"):
                    if value:
                        counts[event[len("syscalls:sys_enter_"):]] = value
        else:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 5 and parts[-1] == "total":
                    total = int(parts[3])
                elif len(parts) >= 5 and parts[3].isdigit():
                    counts[parts[-1]] = int(parts[3])
        shutil.rmtree(self.dir, ignore_errors=True)
        return {"total": total, "by_name": counts, "method": self.method}


def read_line(proc, timeout):
    """One line of a child's stdout, or None at EOF / timeout."""
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    if not r:
        return None
    line = proc.stdout.readline()
    return line.decode().strip() if line else None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=3):
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.2f}"


def fmt_against(x, limit, digits=3):
    """x as `fmt` writes it, with as many more significant digits as it takes not to print the
    limit itself when x is not the limit (2.0204 against 2.02, 1.0006 against 1)."""
    s = fmt(x, digits)
    d = digits
    while x != limit and float(s.replace(",", "")) == float(limit) and d < 8:
        d += 1
        s = f"{x:.{d}g}"
    return s


def write_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def machine_info():
    def run(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001 - informative only
            return ""
    model = ""
    for line in run(["lscpu"]).splitlines():
        if line.startswith("Model name"):
            model = line.split(":", 1)[1].strip()
    return {
        "kernel": run(["uname", "-r"]),
        "nproc": run(["nproc"]),
        "cpu": model,
        "hypervisor": next((l.split(":", 1)[1].strip() for l in run(["lscpu"]).splitlines()
                            if l.startswith("Hypervisor vendor")), ""),
        "mem_total_kib": next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "io_uring_disabled": (open("/proc/sys/kernel/io_uring_disabled").read().strip()
                              if os.path.exists("/proc/sys/kernel/io_uring_disabled") else "n/a"),
        "rustc": run(["rustc", "--version"]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
