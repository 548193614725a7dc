//! Soak: many TCP connections echoing through one server loop, with random closes, idle
//! timeouts and timer churn, for a while; then an account.
//!
//! * The **server** is one loop on the test thread: an accept fiber and one echo fiber per
//!   connection, each with a read timeout (an idle connection is closed by the server), plus a
//!   periodic timer that starts and stops batches of one-shot timers.
//! * The **clients** are callbacks on a second loop, on another thread: each connection sends
//!   messages of random length and checks every echoed byte; now and then it closes (gracefully
//!   or with a reset) and reconnects, or goes idle long enough for the server to time it out,
//!   and then reconnects. Every exchange is guarded by a timer: a stalled exchange is an error.
//!
//! At the end it prints operations, errors, resident memory before and after (after a
//! warm-up in which every connection has completed one exchange), and open fds before and
//! after; it fails on any error, on memory that is not flat (more than 1.5 × the warm-up
//! figure plus 32 MiB: allocator noise and pooled fiber stacks, not growth with the number of
//! operations), or on fds that are not all closed again.
//!
//! Runs once per backend (only the one `FDLOOP_BACKEND` names, if set). The defaults suit CI;
//! longer runs are set through the environment:
//!
//! * `FDLOOP_SOAK_SECS` — seconds of load per backend (default 3);
//! * `FDLOOP_SOAK_CONNS` — connections kept open (default 2,000).
//!
//! ```text
//! FDLOOP_SOAK_SECS=600 FDLOOP_SOAK_CONNS=10000 cargo test --release --test soak -- --nocapture
//! ```
//!
//! Each connection needs two fds (both ends live in this process): the soft `RLIMIT_NOFILE`
//! is raised as far as the hard limit allows, and the connection count is scaled down, with a
//! message, when even that is not enough. The loops' completion queues are sized so that
//! every connection's waiting read fits in the kernel at once (see "Limits" in
//! docs/reliability.md).

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use fdloop::net::TcpListener;
use fdloop::{fiber, BackendChoice, Loop, LoopHandle, Timer};

/// The server closes a connection that stays idle this long.
const SERVER_IDLE: Duration = Duration::from_millis(200);
/// A client that goes idle waits this long, so that the server times it out.
const CLIENT_IDLE: Duration = Duration::from_millis(400);
/// An exchange that takes longer than this is a stall (an error, not a measurement).
const STALL: Duration = Duration::from_secs(20);
/// Largest message a client sends.
const MAX_MSG: usize = 2048;

#[test]
fn soak() {
    let secs: u64 = env_or("FDLOOP_SOAK_SECS", 3);
    let wanted: usize = env_or("FDLOOP_SOAK_CONNS", 2000);
    let conns = fit_fd_limit(wanted);
    let forced = std::env::var("FDLOOP_BACKEND").ok();
    let mut backends = Vec::new();
    for (name, choice) in [
        ("uring", BackendChoice::Uring),
        ("epoll", BackendChoice::Epoll),
    ] {
        let selected = match forced.as_deref().map(str::to_ascii_lowercase) {
            Some(f) if f != "auto" && !f.is_empty() => {
                f == name || (name == "uring" && (f == "io_uring" || f == "io-uring"))
            }
            _ => true,
        };
        if !selected {
            continue;
        }
        if choice == BackendChoice::Uring && Loop::builder().backend(choice).build().is_err() {
            println!("soak: io_uring is unavailable here; skipped");
            continue;
        }
        backends.push((name, choice));
    }
    let mut failures = Vec::new();
    for (name, choice) in backends {
        let report = run(choice, conns, Duration::from_secs(secs));
        println!("soak {name}: {report}");
        failures.extend(
            report
                .failures()
                .into_iter()
                .map(|f| format!("{name}: {f}")),
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Raises the soft `RLIMIT_NOFILE` (and the hard one, where the process may) to what `conns`
/// connections need; returns how many connections fit.
fn fit_fd_limit(conns: usize) -> usize {
    let need = (2 * conns + 256) as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: (FFI) `lim` is a writable rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_max < need {
        let raised = libc::rlimit {
            rlim_cur: need,
            rlim_max: need,
        };
        // SAFETY: (FFI) a valid rlimit; raising the hard limit needs CAP_SYS_RESOURCE, and failing
        // is handled below.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    lim.rlim_cur = need.min(lim.rlim_max);
    // SAFETY: (FFI) a valid rlimit within the hard limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let fit = (lim.rlim_cur.saturating_sub(256) / 2) as usize;
    if fit < conns {
        println!(
            "soak: RLIMIT_NOFILE allows {} fds; running {fit} connections instead of {conns}",
            lim.rlim_cur
        );
        return fit.max(1);
    }
    conns
}

/// A completion queue with room for every connection's waiting operations (two per
/// connection at most: a read and a write), within the kernel's maximum.
fn loop_for(choice: BackendChoice, conns: usize) -> Loop {
    let cq = (4 * conns + 64).next_power_of_two().clamp(1024, 65536) as u32;
    Loop::builder()
        .backend(choice)
        .ring_entries(1024)
        .cq_entries(cq)
        .build()
        .unwrap()
}

#[derive(Default)]
struct Report {
    conns: usize,
    secs: f64,
    exchanges: u64,
    bytes: u64,
    connects: u64,
    client_closes: u64,
    resets: u64,
    server_timeouts: u64,
    server_slow: u64,
    server_reads: u64,
    timers_fired: u64,
    timers_stopped: u64,
    errors: Vec<String>,
    rss_before_kib: u64,
    rss_after_kib: u64,
    fds_before: usize,
    fds_after: usize,
    loop_fds_left: usize,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connections for {:.1} s: {} exchanges ({} MiB echoed), {} connects, {} client \
             closes ({} resets), {} idle connections timed out by the server, {} server read \
             timeouts on busy connections, {} server reads, {} timers fired, {} stopped; errors: {}; RSS {} KiB -> {} KiB; fds {} -> {}",
            self.conns,
            self.secs,
            self.exchanges,
            self.bytes >> 20,
            self.connects,
            self.client_closes,
            self.resets,
            self.server_timeouts,
            self.server_slow,
            self.server_reads,
            self.timers_fired,
            self.timers_stopped,
            self.errors.len(),
            self.rss_before_kib,
            self.rss_after_kib,
            self.fds_before,
            self.fds_after
        )?;
        if self.loop_fds_left > 0 {
            write!(
                f,
                " (+{} fds of closed loops still open; see \
                 fiber_io_then_close_releases_the_loop in tests/faults.rs)",
                self.loop_fds_left
            )?;
        }
        Ok(())
    }
}

impl Report {
    fn failures(&self) -> Vec<String> {
        let mut f: Vec<String> = self.errors.iter().take(20).cloned().collect();
        if self.exchanges < self.conns as u64 {
            f.push(format!(
                "only {} exchanges for {} connections",
                self.exchanges, self.conns
            ));
        }
        let allowed = self.rss_before_kib * 3 / 2 + 32 * 1024;
        if self.rss_after_kib > allowed {
            f.push(format!(
                "memory grew: {} KiB after warm-up, {} KiB at the end (allowed {allowed})",
                self.rss_before_kib, self.rss_after_kib
            ));
        }
        if self.fds_after != self.fds_before {
            f.push(format!(
                "fds: {} before, {} after",
                self.fds_before, self.fds_after
            ));
        }
        f
    }
}

/// The server's counters.
#[derive(Default)]
struct ServerStats {
    reads: Cell<u64>,
    /// Read timeouts after an idle announcement: the server closed the connection.
    idle_closes: Cell<u64>,
    /// Read timeouts on a connection that was not idle: the server waited on.
    slow: Cell<u64>,
}

/// Counters shared by the client thread and the test thread.
#[derive(Default)]
struct Shared {
    exchanges: AtomicU64,
    bytes: AtomicU64,
    connects: AtomicU64,
    client_closes: AtomicU64,
    resets: AtomicU64,
    /// Connections that have completed at least one exchange (warm-up).
    warmed: AtomicU64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Open fds, and how many of them are loops' own (ring or epoll set, eventfd).
fn fds() -> (usize, usize) {
    let mut all = 0;
    let mut own = 0;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        all += 1;
        let t = std::fs::read_link(e.path()).unwrap_or_default();
        let t = t.to_string_lossy();
        if t == "anon_inode:[io_uring]"
            || t == "anon_inode:[eventpoll]"
            || t == "anon_inode:[eventfd]"
        {
            own += 1;
        }
    }
    (all, own)
}

fn run(choice: BackendChoice, conns: usize, duration: Duration) -> Report {
    let (fds_before, own_before) = fds();
    let mut report = Report {
        conns,
        fds_before,
        ..Report::default()
    };
    let server = loop_for(choice, conns);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();

    // Server: accept fiber, echo fibers.
    let stats = Rc::new(ServerStats::default());
    let server_errors: Rc<RefCell<Vec<String>>> = Rc::default();
    let (st, e) = (stats.clone(), server_errors.clone());
    server.spawn(move || loop {
        match listener.accept() {
            Ok((conn, _)) => {
                let (st, e) = (st.clone(), e.clone());
                fiber::spawn(move || echo(conn, &st, &e));
            }
            Err(err) => {
                e.borrow_mut().push(format!("accept: {err}"));
                fiber::sleep(Duration::from_millis(10));
            }
        }
    });
    // Timer churn: every millisecond, 20 one-shot timers start and half of them are stopped.
    let fired = Rc::new(Cell::new(0u64));
    let stopped = Rc::new(Cell::new(0u64));
    let (f, s) = (fired.clone(), stopped.clone());
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let churn = server.start_timer(Timer::every(Duration::from_millis(1)), move |lp, _| {
        for i in 0..20 {
            let delay = Duration::from_micros(500 + xorshift(&mut seed) % 20_000);
            let f = f.clone();
            let id = lp.start_timer(Timer::after(delay), move |_, _| f.set(f.get() + 1));
            if i % 2 == 0 {
                lp.stop_timer(id).unwrap();
                s.set(s.get() + 1);
            }
        }
    });

    // Clients, on their own thread and loop.
    let shared = Arc::new(Shared::default());
    let (handle_tx, handle_rx) = mpsc::channel::<LoopHandle>();
    let sh = shared.clone();
    let clients = std::thread::spawn(move || {
        let lp = loop_for(choice, conns);
        handle_tx.send(lp.handle()).unwrap();
        let ctx = Rc::new(Ctx {
            addr,
            shared: sh,
            errors: RefCell::default(),
            seed: Cell::new(0x2545_F491_4F6C_DD1D),
        });
        for id in 0..conns {
            connect(&lp, &ctx, id);
        }
        lp.run().unwrap();
        lp.close().unwrap();
        ctx.errors.take()
    });
    let client_loop = handle_rx.recv().unwrap();

    // Warm-up: every connection has completed one exchange.
    let start = Instant::now();
    while shared.warmed.load(Ordering::Relaxed) < conns as u64 {
        if start.elapsed() > STALL {
            report.errors.push(format!(
                "warm-up: only {} of {conns} connections completed an exchange",
                shared.warmed.load(Ordering::Relaxed)
            ));
            break;
        }
        server.run_for(Duration::from_millis(10)).unwrap();
    }
    report.rss_before_kib = rss_kib();
    let load = Instant::now();
    server.run_for(duration).unwrap();
    report.rss_after_kib = rss_kib();
    report.secs = load.elapsed().as_secs_f64();

    // Teardown: the clients first (their loop closes every client socket), then the server.
    client_loop.stop().unwrap();
    while !clients.is_finished() {
        server.run_for(Duration::from_millis(5)).unwrap();
    }
    report.errors.extend(clients.join().unwrap());
    server.stop_timer(churn).unwrap();
    server.run_for(Duration::from_millis(20)).unwrap();
    server.close().unwrap();
    report.errors.extend(server_errors.take());

    report.exchanges = shared.exchanges.load(Ordering::Relaxed);
    report.bytes = shared.bytes.load(Ordering::Relaxed);
    report.connects = shared.connects.load(Ordering::Relaxed);
    report.client_closes = shared.client_closes.load(Ordering::Relaxed);
    report.resets = shared.resets.load(Ordering::Relaxed);
    report.server_timeouts = stats.idle_closes.get();
    report.server_slow = stats.slow.get();
    report.server_reads = stats.reads.get();
    report.timers_fired = fired.get();
    report.timers_stopped = stopped.get();
    let (after, own_after) = fds();
    report.loop_fds_left = own_after.saturating_sub(own_before);
    report.fds_after = after - report.loop_fds_left;
    report
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// The server side of one connection: echo until end-of-file, a reset, or an idle timeout.
/// A read that times out closes the connection only after the client announced an idle
/// pause (the [`IDLE`] byte): closing is decided by the protocol, never by how fast the
/// client happens to be.
fn echo(mut conn: fdloop::net::TcpStream, stats: &ServerStats, errors: &RefCell<Vec<String>>) {
    conn.set_read_timeout(Some(SERVER_IDLE)).unwrap();
    let mut buf = [0u8; 4096];
    let mut idle = false;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                stats.reads.set(stats.reads.get() + 1);
                idle = buf[n - 1] == IDLE;
                if let Err(e) = conn.write_all(&buf[..n]) {
                    if !is_peer_gone(&e) {
                        errors.borrow_mut().push(format!("server write: {e}"));
                    }
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if idle {
                    stats.idle_closes.set(stats.idle_closes.get() + 1);
                    return; // an idle client: the server closes
                }
                stats.slow.set(stats.slow.get() + 1); // a slow client: wait on
            }
            Err(e) if is_peer_gone(&e) => return,
            Err(e) => {
                errors.borrow_mut().push(format!("server read: {e}"));
                return;
            }
        }
    }
}

fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// The client loop's shared state.
struct Ctx {
    addr: SocketAddr,
    shared: Arc<Shared>,
    errors: RefCell<Vec<String>>,
    seed: Cell<u64>,
}

impl Ctx {
    fn rand(&self) -> u64 {
        let mut s = self.seed.get();
        let v = xorshift(&mut s);
        self.seed.set(s);
        v
    }

    fn error(&self, e: String) {
        let mut errors = self.errors.borrow_mut();
        if errors.len() < 1000 {
            errors.push(e);
        }
    }
}

/// One client connection.
struct Client {
    id: usize,
    fd: OwnedFd,
    seq: Cell<u64>,
    warmed: Cell<bool>,
    /// The current exchange follows an idle pause: the server may have closed.
    after_idle: Cell<bool>,
    /// The current exchange announces an idle pause.
    going_idle: Cell<bool>,
}

fn tcp_socket() -> OwnedFd {
    // SAFETY: (FFI) socket() takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: (FFI) a fresh fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn connect(lp: &Loop, ctx: &Rc<Ctx>, id: usize) {
    let fd = tcp_socket();
    let ctx2 = ctx.clone();
    let client = Rc::new(Client {
        id,
        fd,
        seq: Cell::new(0),
        warmed: Cell::new(false),
        after_idle: Cell::new(false),
        going_idle: Cell::new(false),
    });
    let c = client.clone();
    lp.connect(&client.fd, ctx.addr, move |lp, res| match res {
        Ok(()) => {
            ctx2.shared.connects.fetch_add(1, Ordering::Relaxed);
            exchange(lp, &ctx2, c);
        }
        Err(e) => {
            ctx2.error(format!("client {id}: connect: {e}"));
            // Try again later.
            let ctx3 = ctx2.clone();
            lp.start_timer(Timer::after(Duration::from_millis(50)), move |lp, _| {
                connect(lp, &ctx3, id)
            });
        }
    });
}

/// The bytes of message `seq` of client `id`.
fn message(id: usize, seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            ((id as u64)
                .wrapping_mul(31)
                .wrapping_add(seq * 7 + i as u64)
                % 255) as u8
        })
        .collect()
}

/// The one-byte message that announces an idle pause; never part of a normal message.
const IDLE: u8 = 0xFF;

/// Sends one message, reads its echo, checks it, and decides what comes next.
fn exchange(lp: &Loop, ctx: &Rc<Ctx>, client: Rc<Client>) {
    let seq = client.seq.get() + 1;
    client.seq.set(seq);
    let len = 1 + (ctx.rand() as usize) % MAX_MSG;
    let msg = if client.going_idle.get() {
        vec![IDLE]
    } else {
        message(client.id, seq, len)
    };
    // The stall guard for this exchange.
    let (ctx2, id) = (ctx.clone(), client.id);
    let guard = lp.start_timer(Timer::after(STALL), move |_, _| {
        ctx2.error(format!("client {id}: exchange {seq} stalled"));
    });
    send_all(lp, ctx, client, msg, 0, guard);
}

fn send_all(
    lp: &Loop,
    ctx: &Rc<Ctx>,
    client: Rc<Client>,
    msg: Vec<u8>,
    off: usize,
    guard: fdloop::TimerId,
) {
    let (ctx2, c) = (ctx.clone(), client.clone());
    let chunk = msg[off..].to_vec();
    lp.send(&client.fd, chunk, move |lp, res, _| match res {
        Ok(n) if off + n < msg.len() => send_all(lp, &ctx2, c, msg, off + n, guard),
        Ok(_) => {
            let want = msg.len();
            recv_echo(lp, &ctx2, c, msg, Vec::with_capacity(want), guard);
        }
        Err(e) => ended(lp, &ctx2, c, guard, &format!("send: {e}"), is_peer_gone(&e)),
    });
}

fn recv_echo(
    lp: &Loop,
    ctx: &Rc<Ctx>,
    client: Rc<Client>,
    msg: Vec<u8>,
    mut got: Vec<u8>,
    guard: fdloop::TimerId,
) {
    let (ctx2, c) = (ctx.clone(), client.clone());
    let want = msg.len() - got.len();
    lp.recv(&client.fd, vec![0; want], move |lp, res, buf| match res {
        Ok(0) => ended(lp, &ctx2, c, guard, "end-of-file mid-exchange", true),
        Ok(_) => {
            got.extend_from_slice(&buf);
            if got.len() < msg.len() {
                return recv_echo(lp, &ctx2, c, msg, got, guard);
            }
            let _ = lp.stop_timer(guard);
            c.after_idle.set(false);
            if c.going_idle.replace(false) {
                // The server knows: pause long enough for it to time the connection out.
                let ctx3 = ctx2.clone();
                let mut client = Some(c);
                lp.start_timer(Timer::after(CLIENT_IDLE), move |lp, _| {
                    if let Some(c) = client.take() {
                        c.after_idle.set(true);
                        exchange(lp, &ctx3, c);
                    }
                });
                return;
            }
            if got != msg {
                ctx2.error(format!(
                    "client {}: echo of {} bytes differs",
                    c.id,
                    msg.len()
                ));
            }
            let shared = &ctx2.shared;
            shared.exchanges.fetch_add(1, Ordering::Relaxed);
            shared.bytes.fetch_add(msg.len() as u64, Ordering::Relaxed);
            if !c.warmed.replace(true) {
                shared.warmed.fetch_add(1, Ordering::Relaxed);
            }
            next(lp, &ctx2, c);
        }
        Err(e) => ended(lp, &ctx2, c, guard, &format!("recv: {e}"), is_peer_gone(&e)),
    });
}

/// After an exchange: mostly another one; sometimes a close (graceful or reset) and a new
/// connection; sometimes an idle pause long enough for the server to time the connection out.
fn next(lp: &Loop, ctx: &Rc<Ctx>, client: Rc<Client>) {
    match ctx.rand() % 100 {
        0..=2 => {
            ctx.shared.client_closes.fetch_add(1, Ordering::Relaxed);
            if ctx.rand() % 2 == 0 {
                ctx.shared.resets.fetch_add(1, Ordering::Relaxed);
                common::set_linger_zero(&client.fd);
            }
            let id = client.id;
            drop(client); // the last reference: the socket closes
            connect(lp, ctx, id);
        }
        3 => {
            client.going_idle.set(true);
            exchange(lp, ctx, client);
        }
        _ => exchange(lp, ctx, client),
    }
}

/// An exchange ended without its echo. After an idle pause the server has closed the
/// connection (expected: reconnect); anything else is an error.
fn ended(
    lp: &Loop,
    ctx: &Rc<Ctx>,
    client: Rc<Client>,
    guard: fdloop::TimerId,
    what: &str,
    peer_gone: bool,
) {
    let _ = lp.stop_timer(guard);
    if !(peer_gone && client.after_idle.get()) {
        ctx.error(format!(
            "client {}: exchange {}: {what}{}",
            client.id,
            client.seq.get(),
            if client.after_idle.get() {
                ""
            } else {
                " (the connection was not idle)"
            }
        ));
    }
    let id = client.id;
    drop(client);
    connect(lp, ctx, id);
}
