//! Benchmarks of fdloop and its peers (see docs/benchmarks.md).
//!
//! The binaries in `src/bin/` are echo servers (fdloop in both styles on both backends, and one
//! per peer), the load generator `loadgen`, and the `idle` and `memory` measurements. The
//! criterion benches are in `benches/`. This library holds what they share: a small argument
//! parser, CPU pinning, the `READY <addr>` handshake and a few `/proc` readers.

pub mod fdloop_echo;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::str::FromStr;

/// The read buffer every echo server uses (the same size everywhere, so that no server wins by
/// reading more per call).
pub const ECHO_BUF: usize = 16 * 1024;

/// `--name value` / `--name=value` command-line options, with defaults.
pub struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    /// Parses `std::env::args()`; a bare `--flag` gets the value `"true"`.
    pub fn parse() -> Args {
        Args::from_args(std::env::args().skip(1))
    }

    /// Parses the given arguments.
    pub fn from_args(it: impl IntoIterator<Item = String>) -> Args {
        let mut pairs = Vec::new();
        let mut it = it.into_iter().peekable();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                eprintln!("ignoring argument {a:?}");
                continue;
            };
            if let Some((k, v)) = name.split_once('=') {
                pairs.push((k.to_string(), v.to_string()));
            } else if it.peek().is_some_and(|n| !n.starts_with("--")) {
                let v = it.next().unwrap_or_default();
                pairs.push((name.to_string(), v));
            } else {
                pairs.push((name.to_string(), "true".to_string()));
            }
        }
        Args { pairs }
    }

    /// The raw value of `--name`, if given.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `--name`, or `default`. Exits with a message when it does not parse.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        match self.get_str(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{name}: cannot parse {v:?}");
                std::process::exit(2)
            }),
        }
    }

    /// Whether `--name` was given (as a flag or with a true value).
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get_str(name), Some("true" | "1" | "yes"))
    }
}

/// Pins the calling thread to `cpu` (the runner pins whole processes with `taskset`; the
/// criterion benches pin their threads with this).
pub fn pin_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: (FFI) `set` is a plain bit set, zero-initialised, that lives across the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Prints the `READY <addr>` line the runner waits for.
pub fn ready(addr: SocketAddr) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "READY {addr}");
    let _ = out.flush();
}

/// Binds the listening socket every echo server uses: `SO_REUSEADDR`, the kernel's maximum
/// backlog (`net.core.somaxconn`; std's default of 128 would make a burst of connects wait
/// for SYN retries), blocking (servers switch it to what their runtime needs).
pub fn listen(addr: &str) -> io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    // Listening again on a listening socket only changes its backlog (clamped by the kernel).
    // SAFETY: (FFI) a plain syscall on an fd that `l` owns.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 65535) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(l)
}

/// `--backend uring|epoll` (default `uring`) as fdloop's choice.
pub fn backend_arg(args: &Args) -> fdloop::BackendChoice {
    match args.get_str("backend").unwrap_or("uring") {
        "uring" | "io_uring" => fdloop::BackendChoice::Uring,
        "epoll" => fdloop::BackendChoice::Epoll,
        other => {
            eprintln!("--backend: uring or epoll, not {other:?}");
            std::process::exit(2);
        }
    }
}

/// Raises `RLIMIT_NOFILE` to at least `want` (up to the hard limit, which root may raise to
/// `fs.nr_open`). Returns the new soft limit.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    // SAFETY: (FFI) `lim` is a plain struct that lives across the calls.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur >= want {
            return Ok(lim.rlim_cur);
        }
        if lim.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return Ok(want);
            }
        }
        lim.rlim_cur = want.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(lim.rlim_cur)
    }
}

/// Whether the kernel installs guard regions (`madvise(MADV_GUARD_INSTALL)`, Linux 6.13), which
/// make a fiber stack one memory mapping instead of two.
pub fn guard_regions() -> bool {
    const MADV_GUARD_INSTALL: libc::c_int = 102;
    // SAFETY: (FFI) a fresh two-page anonymous mapping, advised and unmapped here only.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if map == libc::MAP_FAILED {
            return false;
        }
        let ok = libc::madvise(map, 4096, MADV_GUARD_INSTALL) == 0;
        libc::munmap(map, 8192);
        ok
    }
}

/// The number of memory mappings of this process (lines of `/proc/self/maps`).
pub fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

/// A field of `/proc/self/status` (or `/proc/thread-self/status`), e.g. `VmRSS` (in kB) or
/// `voluntary_ctxt_switches`.
pub fn proc_status(path: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU time (user + system) of the whole process, in microseconds (`getrusage`).
pub fn process_cpu_us() -> u64 {
    // SAFETY: (FFI) `ru` is a plain struct that lives across the call.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        us(ru.ru_utime) + us(ru.ru_stime)
    }
}

/// Sets `TCP_NODELAY` on a raw socket (every server and the load generator do, so that
/// Nagle's algorithm never delays a small echo).
pub fn set_nodelay(fd: std::os::fd::RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: (FFI) `one` is a live c_int and the length says so; a failure is harmless here.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Idle client connections held by `holdconns` child processes (so that the client ends do not
/// count against the server process's fd limit), driven from a thread of their own.
pub mod clients {
    use std::io::{self, BufRead, BufReader, Write};
    use std::net::SocketAddr;
    use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
    use std::sync::mpsc::{self, Receiver, Sender};

    struct Holder {
        child: Child,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
        conns: usize,
    }

    /// The manager's side of the conversation, for the loop thread.
    pub struct Clients {
        /// Receives the number of connections once every child has connected.
        pub connected: Receiver<usize>,
        /// Send the connection indices to probe; the manager answers on `probed`, then calls
        /// the `stop` closure it was given.
        pub probe: Sender<Vec<usize>>,
        /// Per probed connection: the echo's round-trip time in ms, or `None` after 2 s.
        pub probed: Receiver<Vec<Option<f64>>>,
    }

    fn line(h: &mut Holder) -> io::Result<String> {
        let mut s = String::new();
        h.stdout.read_line(&mut s)?;
        Ok(s.trim().to_string())
    }

    /// Starts `total` client connections to `addrs` (round-robin), `per_child` per `holdconns`
    /// process, from a manager thread. `stop` is called after the probes (to end the loop's
    /// `run_for`).
    pub fn start(
        addrs: Vec<SocketAddr>,
        total: usize,
        per_child: usize,
        stop: impl FnOnce() + Send + 'static,
    ) -> io::Result<Clients> {
        let exe = std::env::current_exe()?.with_file_name("holdconns");
        let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let mut holders = Vec::new();
        let mut left = total;
        while left > 0 {
            let n = left.min(per_child.max(1));
            left -= n;
            let mut child = Command::new(&exe)
                .arg("--addrs")
                .arg(list.join(","))
                .arg("--conns")
                .arg(n.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", exe.display())))?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = BufReader::new(child.stdout.take().expect("piped"));
            holders.push(Holder {
                child,
                stdin,
                stdout,
                conns: n,
            });
        }
        let (connected_tx, connected) = mpsc::channel();
        let (probe, probe_rx) = mpsc::channel::<Vec<usize>>();
        let (probed_tx, probed) = mpsc::channel();
        std::thread::spawn(move || {
            let mut n = 0;
            for h in &mut holders {
                let l = line(h).unwrap_or_default();
                let got: usize = l
                    .strip_prefix("READY ")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if got < h.conns {
                    eprintln!("holdconns connected {got} of {}", h.conns);
                }
                h.conns = got;
                n += got;
            }
            let _ = connected_tx.send(n);
            let Ok(indices) = probe_rx.recv() else {
                return;
            };
            let mut answers = Vec::new();
            for i in indices {
                let mut base = 0;
                let mut answer = None;
                for h in &mut holders {
                    if i < base + h.conns {
                        let ok = writeln!(h.stdin, "probe {}", i - base).is_ok()
                            && h.stdin.flush().is_ok();
                        let l = if ok {
                            line(h).unwrap_or_default()
                        } else {
                            String::new()
                        };
                        answer = l.strip_prefix("ok ").and_then(|v| v.parse().ok());
                        break;
                    }
                    base += h.conns;
                }
                answers.push(answer);
            }
            let _ = probed_tx.send(answers);
            stop();
            for h in &mut holders {
                let _ = writeln!(h.stdin, "quit");
                let _ = h.stdin.flush();
                let _ = h.child.wait();
            }
        });
        Ok(Clients {
            connected,
            probe,
            probed,
        })
    }

    /// `count` indices spread over `0..n`: the first, the last and evenly between.
    pub fn spread(n: usize, count: usize) -> Vec<usize> {
        let count = count.min(n);
        (0..count)
            .map(|k| {
                if count <= 1 {
                    0
                } else {
                    k * (n - 1) / (count - 1)
                }
            })
            .collect()
    }
}

/// Runs `lp` until the clients report how many connections they opened and the loop has
/// accepted that many. Returns that number, and `true` when accepting stalled instead (no new
/// connection for 10 s: the clients are then stuck in `connect`).
pub fn wait_accepted(
    lp: &fdloop::Loop,
    connected: &std::sync::mpsc::Receiver<usize>,
    accepted: &std::cell::Cell<usize>,
) -> io::Result<(usize, bool)> {
    use std::time::{Duration, Instant};
    let mut seen = accepted.get();
    let mut progress = Instant::now();
    let mut total = None;
    loop {
        lp.run_for(Duration::from_millis(20))?;
        if total.is_none() {
            total = connected.try_recv().ok();
        }
        if let Some(n) = total {
            if accepted.get() >= n {
                return Ok((n, false));
            }
        }
        if accepted.get() != seen {
            seen = accepted.get();
            progress = Instant::now();
        } else if progress.elapsed() > Duration::from_secs(10) {
            return Ok((total.unwrap_or(seen), true));
        }
    }
}
