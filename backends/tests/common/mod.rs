//! Shared pieces of the backend contract tests: a per-backend test macro, a [`Harness`] that
//! checks the exactly-once rule on every completion, and makers of real kernel objects (pipes,
//! sockets, eventfds, temporary files, ptys).
//!
//! Memory rule for tests: every buffer, iovec, msghdr or address that an operation points to is
//! declared *before* the [`Harness`], so that it is dropped *after* the harness, whose `Drop`
//! shuts the driver down and so waits for every final completion (invariant I2).

#![allow(dead_code)]

pub mod seccomp;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use fdloop_backends::{BackendChoice, BackendKind, Completion, Config, Driver, Op, OpId};

/// How long `run_until` waits for its condition before failing with what is missing.
pub const RUN_LIMIT: Duration = Duration::from_secs(10);

/// How long a harness may live before the process is aborted: the last resort against a driver
/// that blocks forever in `wait(None)` or `shutdown`.
pub const WATCHDOG_LIMIT: Duration = Duration::from_secs(60);

/// Shorthand for a number of milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------------
// Per-backend instantiation
// ---------------------------------------------------------------------------------------------

/// Instantiates each named test function `fn name(b: Backend)` once per backend, as the tests
/// `name::uring` and `name::epoll`. With `@exclusive` the tests run while no other test of the
/// binary runs (for fd counting).
#[macro_export]
macro_rules! both_backends {
    (@exclusive $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                let _only_me = $crate::common::exclusive_fds();
                if let Some(b) = $crate::common::Backend::uring_or_skip() {
                    super::$name(b);
                }
            }
            #[test]
            fn epoll() {
                let _only_me = $crate::common::exclusive_fds();
                super::$name($crate::common::Backend::epoll());
            }
        }
    )+};
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn uring() {
                let _shared = $crate::common::shared_fds();
                if let Some(b) = $crate::common::Backend::uring_or_skip() {
                    super::$name(b);
                }
            }
            #[test]
            fn epoll() {
                let _shared = $crate::common::shared_fds();
                super::$name($crate::common::Backend::epoll());
            }
        }
    )+};
}

/// Tests that count fds take this lock for writing; all others take it for reading.
static FD_TABLE: RwLock<()> = RwLock::new(());

/// Held by ordinary tests: they may run together.
pub fn shared_fds() -> RwLockReadGuard<'static, ()> {
    FD_TABLE.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held by tests that count the process's fds: nothing else runs meanwhile.
pub fn exclusive_fds() -> RwLockWriteGuard<'static, ()> {
    FD_TABLE.write().unwrap_or_else(PoisonError::into_inner)
}

/// The name of the running test (libtest names each test's thread after it).
pub fn test_name() -> String {
    thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

/// Whether the kernel lets this process create an io_uring at all, asked with the raw
/// `io_uring_setup` system call (no driver involved).
pub fn kernel_io_uring() -> io::Result<()> {
    // struct io_uring_params is 120 bytes; all zero asks for no flags.
    let mut params = [0u64; 15];
    // SAFETY: (FFI) io_uring_setup(entries, params) writes at most sizeof(struct io_uring_params)
    // (120 bytes) into `params`, which is exactly that large and lives across the call.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 2u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: (FFI) `fd` is the ring fd just created and owned by nobody else.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    Ok(())
}

/// The backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The forced choice.
    pub choice: BackendChoice,
}

impl Backend {
    /// The epoll backend.
    pub fn epoll() -> Backend {
        Backend {
            choice: BackendChoice::Epoll,
        }
    }

    /// The io_uring backend, or `None` (with a message) where the kernel refuses io_uring.
    ///
    /// A driver that fails to start although the raw `io_uring_setup` works here is a failure,
    /// not a skip. Set `FDLOOP_TEST_REQUIRE_URING=1` to turn every skip into a failure.
    pub fn uring_or_skip() -> Option<Backend> {
        let b = Backend {
            choice: BackendChoice::Uring,
        };
        match Driver::new(&b.config()) {
            Ok(d) => {
                assert_eq!(
                    d.kind(),
                    BackendKind::Uring,
                    "forced Uring built {:?}",
                    d.info()
                );
                Some(b)
            }
            Err(e) => match kernel_io_uring() {
                Err(k) if std::env::var_os("FDLOOP_TEST_REQUIRE_URING").is_none() => {
                    eprintln!(
                        "{}: skipped: io_uring unavailable here: {e} (io_uring_setup: {k})",
                        test_name()
                    );
                    None
                }
                Err(k) => panic!("io_uring is required but unavailable: {e} (io_uring_setup: {k})"),
                Ok(()) => panic!(
                    "Driver::new(Uring) failed although io_uring_setup works on this kernel: {e}"
                ),
            },
        }
    }

    /// Whether this is the io_uring backend.
    pub fn is_uring(&self) -> bool {
        self.choice == BackendChoice::Uring
    }

    /// Whether this is the epoll backend.
    pub fn is_epoll(&self) -> bool {
        self.choice == BackendChoice::Epoll
    }

    /// The default configuration, forced to this backend.
    pub fn config(&self) -> Config {
        Config {
            backend: self.choice,
            ..Config::default()
        }
    }

    /// A harness with the default configuration.
    pub fn harness(&self) -> Harness {
        self.harness_with(self.config())
    }

    /// A harness with `config` (its `backend` is overridden with this backend).
    pub fn harness_with(&self, mut config: Config) -> Harness {
        config.backend = self.choice;
        let driver =
            Driver::new(&config).unwrap_or_else(|e| panic!("Driver::new({config:?}) failed: {e}"));
        let want = match self.choice {
            BackendChoice::Uring => BackendKind::Uring,
            _ => BackendKind::Epoll,
        };
        assert_eq!(driver.kind(), want, "wrong driver: {:?}", driver.info());
        assert!(
            !driver.info().reason.is_empty(),
            "BackendInfo::reason is empty"
        );
        Harness::from_driver(driver)
    }
}

// ---------------------------------------------------------------------------------------------
// Watchdog and delayed actions
// ---------------------------------------------------------------------------------------------

/// Aborts the process with a message if it is not dropped within its limit: a hung driver must
/// fail the run, not stall it forever.
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog.
    pub fn new(what: String, limit: Duration) -> Watchdog {
        let (stop, rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{what}: still running after {limit:?}: the driver is stuck; aborting");
                std::process::abort();
            }
        });
        Watchdog {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs an action on another thread after a delay unless stopped first; records whether it ran.
pub struct Deferred {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    fired: Arc<AtomicBool>,
}

impl Deferred {
    /// Schedules `f` after `delay`.
    pub fn new(delay: Duration, f: impl FnOnce() + Send + 'static) -> Deferred {
        let (stop, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let thread = thread::spawn(move || {
            if let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(delay) {
                flag.store(true, Ordering::SeqCst);
                f();
            }
        });
        Deferred {
            stop: Some(stop),
            thread: Some(thread),
            fired,
        }
    }

    /// Whether the action has run (or started).
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Cancels the action if it has not run; returns whether it had.
    pub fn stop(mut self) -> bool {
        self.halt();
        self.fired()
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.halt();
    }
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// What the harness knows of one pushed operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket {
    /// The user_data it was pushed with.
    pub ud: u64,
    /// The id the driver returned.
    pub id: OpId,
}

struct Track {
    op: Op,
    id: OpId,
    multishot: bool,
    more: Vec<i32>,
    fin: Option<i32>,
}

/// A value no driver produces by itself: `wait` must append after it, never clear it.
const SENTINEL: Completion = Completion {
    user_data: 0x5E47_1AE1_0000_0000,
    result: -0x5E47,
    more: true,
};

/// Owns a driver, tags operations with unique user_data, and checks every completion:
/// no completion for an unknown user_data, none after a final one, `more` only on multishot
/// operations, `wait` appends to its output, and `in_flight()` matches the finals seen.
pub struct Harness {
    /// The driver under test.
    pub driver: Driver,
    name: String,
    next_ud: u64,
    ops: HashMap<u64, Track>,
    order: Vec<u64>,
    pending: usize,
    /// Every completion seen, in order.
    pub log: Vec<Completion>,
    _watchdog: Watchdog,
}

static UD_SEED: AtomicU64 = AtomicU64::new(0);

impl Harness {
    /// Wraps an already built driver.
    pub fn from_driver(driver: Driver) -> Harness {
        let name = test_name();
        // High bits set on purpose: user_data must travel as a full u64.
        let seed = UD_SEED.fetch_add(1, Ordering::Relaxed);
        Harness {
            driver,
            _watchdog: Watchdog::new(name.clone(), WATCHDOG_LIMIT),
            name,
            next_ud: 0xF00D_0000_0000_0000 | (seed << 32),
            ops: HashMap::new(),
            order: Vec::new(),
            pending: 0,
            log: Vec::new(),
        }
    }

    /// Operations pushed whose final completion has not been seen.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Pushes `op` with a fresh user_data.
    ///
    /// # Safety
    ///
    /// (I2, I3) Everything `op` points to, and its fd, stay valid until its final completion has
    /// been seen (declare them before the harness), as [`Driver::push`] requires.
    pub unsafe fn push(&mut self, op: Op) -> Ticket {
        let ud = self.next_ud;
        self.next_ud += 1;
        // SAFETY: (I2, I3) the caller of `push` keeps everything `op` points to, and its fd, valid
        // until its final completion has been seen, which is what `push_as` requires.
        unsafe { self.push_as(op, ud) }
    }

    /// Pushes `op` with the given user_data, which must never have been used in this harness.
    ///
    /// # Safety
    ///
    /// (I2, I3) Everything `op` points to, and its fd, stay valid until its final completion has
    /// been seen (declare them before the harness), as [`Driver::push`] requires.
    pub unsafe fn push_as(&mut self, op: Op, ud: u64) -> Ticket {
        assert!(
            !self.ops.contains_key(&ud),
            "{}: user_data {ud:#x} used twice by the test",
            self.name
        );
        // SAFETY: (I2, I3) the caller promises that `op`'s memory and fd outlive its final
        // completion.
        let id = unsafe { self.driver.push(op, ud) };
        self.ops.insert(
            ud,
            Track {
                op,
                id,
                multishot: op.is_multishot(),
                more: Vec::new(),
                fin: None,
            },
        );
        self.order.push(ud);
        self.pending += 1;
        assert_eq!(
            self.driver.in_flight(),
            self.pending,
            "{}: in_flight() after pushing {op:?}",
            self.name
        );
        Ticket { ud, id }
    }

    /// Asks the driver to cancel `t`.
    pub fn cancel(&mut self, t: Ticket) -> bool {
        self.driver.cancel(t.id)
    }

    /// Asks the driver to cancel everything on `fd`.
    pub fn cancel_fd(&mut self, fd: RawFd) -> usize {
        self.driver.cancel_fd(fd)
    }

    fn record(&mut self, c: Completion) {
        let name = &self.name;
        let t = self.ops.get_mut(&c.user_data).unwrap_or_else(|| {
            panic!("{name}: completion {c:?} for a user_data that was never pushed")
        });
        if let Some(f) = t.fin {
            panic!(
                "{name}: completion {c:?} after the final completion ({}) of {:?}",
                res(f),
                t.op
            );
        }
        if c.more {
            assert!(
                t.multishot,
                "{name}: more == true ({c:?}) on the one-shot operation {:?}",
                t.op
            );
            t.more.push(c.result);
        } else {
            t.fin = Some(c.result);
            self.pending -= 1;
        }
        self.log.push(c);
    }

    /// Records completions that came from somewhere else than `wait_once` (e.g. `shutdown`).
    pub fn record_all(&mut self, cs: &[Completion]) {
        for &c in cs {
            self.record(c);
        }
    }

    /// One `Driver::wait`, checked; returns the new completions.
    pub fn wait_once(&mut self, timeout: Option<Duration>) -> Vec<Completion> {
        let mut out = vec![SENTINEL];
        let r = self.driver.wait(timeout, &mut out);
        if let Err(e) = r {
            panic!("{}: wait({timeout:?}) failed: {e}", self.name);
        }
        assert_eq!(
            out.first(),
            Some(&SENTINEL),
            "{}: wait cleared or overwrote its output vector",
            self.name
        );
        let new: Vec<Completion> = out.drain(1..).collect();
        for &c in &new {
            self.record(c);
        }
        assert_eq!(
            self.driver.in_flight(),
            self.pending,
            "{}: in_flight() disagrees with the final completions returned so far",
            self.name
        );
        new
    }

    /// Runs the driver until `cond` holds, failing after [`RUN_LIMIT`].
    pub fn run_until(&mut self, what: &str, cond: impl FnMut(&Harness) -> bool) {
        self.run_until_within(RUN_LIMIT, what, cond);
    }

    /// Runs the driver until `cond` holds, failing after `limit` with what is still pending.
    pub fn run_until_within(
        &mut self,
        limit: Duration,
        what: &str,
        mut cond: impl FnMut(&Harness) -> bool,
    ) {
        let start = Instant::now();
        loop {
            if cond(self) {
                return;
            }
            let spent = start.elapsed();
            if spent >= limit {
                panic!(
                    "{}: {what}: not reached after {limit:?}; {} operation(s) pending:\n{}",
                    self.name,
                    self.pending,
                    self.describe_pending()
                );
            }
            self.wait_once(Some((limit - spent).min(ms(250))));
        }
    }

    /// Runs the driver until `t` has its final completion; returns its result.
    pub fn run_until_final(&mut self, t: Ticket) -> i32 {
        self.run_until("final completion", |h| h.final_of(t).is_some());
        self.fin(t)
    }

    /// Runs the driver until every ticket has its final completion.
    pub fn run_until_all(&mut self, ts: &[Ticket]) {
        self.run_until("final completions", |h| {
            ts.iter().all(|&t| h.final_of(t).is_some())
        });
    }

    /// Runs the driver until nothing is pending.
    pub fn run_until_idle(&mut self) {
        self.run_until("every operation's final completion", |h| h.pending == 0);
    }

    /// Like [`Harness::run_until_idle`] with a longer limit.
    pub fn run_until_idle_within(&mut self, limit: Duration) {
        self.run_until_within(limit, "every operation's final completion", |h| {
            h.pending == 0
        });
    }

    /// Runs the driver for at least `d`, recording whatever completes.
    pub fn pump(&mut self, d: Duration) {
        let start = Instant::now();
        loop {
            let spent = start.elapsed();
            if spent >= d {
                return;
            }
            self.wait_once(Some(d - spent));
        }
    }

    /// Runs the driver for `d` and asserts that `t` has had no completion at all.
    pub fn expect_quiet(&mut self, t: Ticket, d: Duration, why: &str) {
        self.pump(d);
        let tr = &self.ops[&t.ud];
        assert!(
            tr.fin.is_none() && tr.more.is_empty(),
            "{}: {why}: {:?} completed early (more: {:?}, final: {:?})",
            self.name,
            tr.op,
            tr.more,
            tr.fin.map(res)
        );
    }

    /// The final result of `t`, if it has arrived.
    pub fn final_of(&self, t: Ticket) -> Option<i32> {
        self.ops.get(&t.ud).and_then(|tr| tr.fin)
    }

    /// The final result of `t`; panics if it has not arrived.
    pub fn fin(&self, t: Ticket) -> i32 {
        self.final_of(t)
            .unwrap_or_else(|| panic!("{}: no final completion for {t:?}", self.name))
    }

    /// The `more == true` results of `t`, in order.
    pub fn mores(&self, t: Ticket) -> &[i32] {
        &self.ops[&t.ud].more
    }

    /// `Driver::shutdown`, checked: every pushed operation has its final completion afterwards
    /// and `in_flight()` is 0. Returns the completions shutdown produced.
    pub fn shutdown(&mut self) -> Vec<Completion> {
        let mut out = vec![SENTINEL];
        self.driver.shutdown(&mut out);
        assert_eq!(
            out.first(),
            Some(&SENTINEL),
            "{}: shutdown cleared its output vector",
            self.name
        );
        let new: Vec<Completion> = out.drain(1..).collect();
        self.record_all(&new);
        assert_eq!(
            self.driver.in_flight(),
            0,
            "{}: in_flight() after shutdown",
            self.name
        );
        assert_eq!(
            self.pending,
            0,
            "{}: shutdown left operations without a final completion:\n{}",
            self.name,
            self.describe_pending()
        );
        new
    }

    /// The pending operations, one per line (at most 20).
    pub fn describe_pending(&self) -> String {
        let mut s = String::new();
        let mut n = 0;
        for ud in &self.order {
            let t = &self.ops[ud];
            if t.fin.is_none() {
                n += 1;
                if n <= 20 {
                    let _ = writeln!(
                        s,
                        "  user_data {ud:#x} {:?} {:?} ({} more-completions)",
                        t.id,
                        t.op,
                        t.more.len()
                    );
                }
            }
        }
        if n > 20 {
            let _ = writeln!(s, "  … and {} more", n - 20);
        }
        s
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Waits for every final completion before the test's buffers go away (I2).
        let mut out = Vec::new();
        self.driver.shutdown(&mut out);
        if !thread::panicking() {
            self.record_all(&out);
            assert_eq!(
                self.driver.in_flight(),
                0,
                "{}: in_flight() after shutdown",
                self.name
            );
            assert_eq!(
                self.pending, 0,
                "{}: ops without a final completion",
                self.name
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// A completion result for messages: `5` or `-11 (EAGAIN: Resource temporarily unavailable)`.
pub fn res(r: i32) -> String {
    if r >= 0 {
        r.to_string()
    } else {
        format!(
            "{r} ({}: {})",
            errno_name(-r),
            io::Error::from_raw_os_error(-r)
        )
    }
}

/// The symbolic name of the errno values these tests meet.
pub fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::EPIPE => "EPIPE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECANCELED => "ECANCELED",
        libc::EALREADY => "EALREADY",
        libc::ETIME => "ETIME",
        _ => "?",
    }
}

/// Asserts that a result is `-errno`.
#[track_caller]
pub fn assert_errno(r: i32, errno: i32, what: &str) {
    assert_eq!(
        r,
        -errno,
        "{what}: expected {}, got {}",
        res(-errno),
        res(r)
    );
}

/// Asserts that a result is the byte count `n`.
#[track_caller]
pub fn assert_count(r: i32, n: usize, what: &str) {
    assert_eq!(r, n as i32, "{what}: expected {n}, got {}", res(r));
}

/// Asserts that a poll result is a non-empty subset of `events` plus the always-reported bits.
#[track_caller]
pub fn assert_poll_bits(r: i32, events: u32, what: &str) {
    use fdloop_backends::interest::{ERROR, HUP, INVALID};
    assert!(r > 0, "{what}: poll result {}", res(r));
    let extra = (r as u32) & !(events | ERROR | HUP | INVALID);
    assert_eq!(
        extra, 0,
        "{what}: poll result {r:#x} has bits {extra:#x} that were not asked for (asked {events:#x})"
    );
}

// ---------------------------------------------------------------------------------------------
// Kernel objects
// ---------------------------------------------------------------------------------------------

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a fresh fd returned by a system call.
pub fn own(fd: RawFd) -> OwnedFd {
    assert!(fd >= 0, "not an fd: {fd}");
    // SAFETY: (FFI) callers pass an fd that was just created for them and that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (the load tests open a few thousand fds).
pub fn raise_nofile() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: (FFI) `rl` is a valid rlimit that getrlimit fills.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 && rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: (FFI) `rl` is a valid rlimit read above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
    }
}

/// The number of open fds of this process (from `/proc/self/fd`).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// A pipe `(read end, write end)`, both close-on-exec and blocking.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: (FFI) `fds` has room for the two fds pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }).expect("pipe2");
    (own(fds[0]), own(fds[1]))
}

/// A connected AF_UNIX stream socket pair, close-on-exec and blocking.
pub fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: (FFI) `fds` has room for the two fds socketpair writes.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })
    .expect("socketpair");
    (own(fds[0]), own(fds[1]))
}

/// A blocking eventfd with counter 0.
pub fn eventfd() -> OwnedFd {
    // SAFETY: (FFI) eventfd takes no pointers.
    own(cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }).expect("eventfd"))
}

/// Adds 1 to an eventfd's counter.
pub fn eventfd_add(fd: impl AsFd) {
    write_all(fd, &1u64.to_ne_bytes());
}

/// Reads (and so resets) an eventfd's counter.
pub fn eventfd_take(fd: impl AsFd) -> u64 {
    let mut b = [0u8; 8];
    assert_eq!(read_some(fd, &mut b), 8);
    u64::from_ne_bytes(b)
}

/// A TCP socket (AF_INET, close-on-exec, blocking), not connected.
pub fn tcp_socket() -> OwnedFd {
    // SAFETY: (FFI) socket takes no pointers.
    own(
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })
            .expect("socket"),
    )
}

/// A TCP listener on 127.0.0.1 with a kernel-chosen port.
pub fn tcp_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let a = l.local_addr().expect("local_addr");
    (l, a)
}

/// A connected TCP pair over loopback: `(client, server side)`.
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let (l, a) = tcp_listener();
    let c = TcpStream::connect(a).expect("connect");
    let (s, _) = l.accept().expect("accept");
    (c, s)
}

/// A socket address as a `sockaddr_storage` and its length.
pub fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: (FFI) sockaddr_storage is plain old data; all zeroes is a valid (AF_UNSPEC) value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: (FFI) sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: (FFI) sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// The port of an AF_INET address in a `sockaddr_storage`.
pub fn port_of(ss: &libc::sockaddr_storage) -> u16 {
    assert_eq!(
        i32::from(ss.ss_family),
        libc::AF_INET,
        "not an AF_INET address"
    );
    // SAFETY: (FFI) the family says the storage holds a sockaddr_in, which it is aligned for.
    let sin = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
    u16::from_be(sin.sin_port)
}

/// A temporary regular file opened read-write; its name is already unlinked.
pub fn tempfile() -> File {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "fdloop-backends-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create temporary file");
    std::fs::remove_file(&path).expect("unlink temporary file");
    f
}

/// The file status flags (`F_GETFL`).
pub fn status_flags(fd: impl AsFd) -> i32 {
    // SAFETY: (FFI) F_GETFL takes no pointer argument.
    cvt(unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETFL) }).expect("F_GETFL")
}

/// Sets `O_NONBLOCK` on the open file description.
pub fn set_nonblocking(fd: impl AsFd) {
    let raw = fd.as_fd().as_raw_fd();
    let fl = status_flags(fd);
    // SAFETY: (FFI) F_SETFL takes an integer argument.
    cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) }).expect("F_SETFL");
}

/// Whether `FD_CLOEXEC` is set on the fd.
pub fn is_cloexec(fd: impl AsFd) -> bool {
    // SAFETY: (FFI) F_GETFD takes no pointer argument.
    let fl = cvt(unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETFD) }).expect("F_GETFD");
    fl & libc::FD_CLOEXEC != 0
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: (FFI) F_SETFD takes an integer argument.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).expect("F_SETFD");
}

/// Writes all of `data` with plain blocking `write(2)` calls.
pub fn write_all(fd: impl AsFd, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(fd.as_fd(), data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// One plain `read(2)`.
pub fn read_some(fd: impl AsFd, buf: &mut [u8]) -> usize {
    loop {
        match nix::unistd::read(fd.as_fd(), buf) {
            Ok(n) => return n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Reads whatever is buffered in a non-blocking fd (until EAGAIN or EOF).
pub fn drain_nonblocking(fd: impl AsFd) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return all,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// `revents` of a zero-timeout `poll(2)` on `fd` for `events`.
pub fn poll_now(fd: impl AsFd, events: i16) -> i16 {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: (FFI) `p` is one valid pollfd for the duration of the call.
    cvt(unsafe { libc::poll(&mut p, 1, 0) }).expect("poll");
    p.revents
}

/// A pseudo-terminal pair in raw mode; the master is `O_NONBLOCK`, both are close-on-exec.
pub struct Pty {
    /// The master side.
    pub master: OwnedFd,
    /// The slave side (a terminal).
    pub slave: OwnedFd,
}

/// Opens a pty pair (`openpty`), puts it in raw mode (`cfmakeraw`) and makes the master
/// non-blocking.
pub fn pty() -> Pty {
    let (mut m, mut s) = (-1 as RawFd, -1 as RawFd);
    // SAFETY: (FFI) `m` and `s` are writable c_ints; the name, termios and winsize pointers may be
    // null.
    cvt(unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    })
    .expect("openpty");
    let (master, slave) = (own(m), own(s));
    set_cloexec(m);
    set_cloexec(s);
    let mut t = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: (FFI) `t` is a writable termios buffer; `s` is an open terminal.
    cvt(unsafe { libc::tcgetattr(s, t.as_mut_ptr()) }).expect("tcgetattr");
    // SAFETY: (FFI) tcgetattr succeeded, so `t` is initialised.
    let mut t = unsafe { t.assume_init() };
    // SAFETY: (FFI) `t` is a valid termios that cfmakeraw edits in place.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: (FFI) `t` is a valid termios; `s` is an open terminal.
    cvt(unsafe { libc::tcsetattr(s, libc::TCSANOW, &t) }).expect("tcsetattr");
    set_nonblocking(&master);
    Pty { master, slave }
}

/// A byte pattern that covers every byte value, control characters included.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + i / 256) as u8).collect()
}
