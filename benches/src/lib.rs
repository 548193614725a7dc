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
        Args::from_iter(std::env::args().skip(1))
    }

    /// Parses the given arguments.
    pub fn from_iter(it: impl IntoIterator<Item = String>) -> Args {
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
    // SAFETY: `set` is a plain bit set, zero-initialised, that lives across the call.
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
    // SAFETY: a plain syscall on an fd that `l` owns.
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
    // SAFETY: `lim` is a plain struct that lives across the calls.
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
    // SAFETY: `ru` is a plain struct that lives across the call.
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
    // SAFETY: `one` is a live c_int and the length says so; a failure is harmless here.
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
