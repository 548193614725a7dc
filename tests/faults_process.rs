//! Process-wide fault cases, one after the other in one test (they change signal
//! dispositions, resource limits, and fork the process), each on both backends and each
//! ending with an exact account:
//!
//! * **EMFILE**: a child process (this binary, run again with `CHILD_ENV` set) lowers its
//!   `RLIMIT_NOFILE` and uses up its fds; the parent floods its listener with 100 clients; the
//!   server's accepts fail with `EMFILE` until the child frees its fds, and then every client
//!   is served — with callbacks and with fibers;
//! * **signals under heavy load**: 200 rounds of "send a signal, wait for a callback that ran
//!   after it" while 1,000 socket pairs stream data through the loop: every signal is followed
//!   by at least one callback, and every byte arrives once;
//! * **signals during `close()`**: loops with 1,000 reads in flight are built and closed while
//!   signals keep arriving: every close returns and the fd count comes back;
//! * **fork**: a child of a process whose loop has operations in flight finds none of the
//!   parent's ring mapped, builds its own loop, runs a timer, a pipe read and a fiber, and
//!   `_exit`s; the parent's operations then complete exactly once, and its loop goes on.
//!
//! Signals used: `SIGWINCH` and `SIGURG`, whose default action is to ignore them, so a signal
//! that arrives after the last watch stopped cannot kill the test.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener as StdListener, TcpStream as StdStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fd_count, pipe};
use fdloop::{fiber, BackendChoice, BackendKind, Loop, Signal, Timer};

/// Selects the child role when this binary is re-executed: `emfile:<backend>:<style>`.
const CHILD_ENV: &str = "FDLOOP_FAULTS_PROCESS_CHILD";

/// Bound on every wait for something that must happen; reaching it is a failure, never a
/// measurement.
const LIMIT: Duration = Duration::from_secs(30);

const BACKENDS: [(&str, BackendChoice); 2] = [
    ("uring", BackendChoice::Uring),
    ("epoll", BackendChoice::Epoll),
];

#[test]
fn process_wide_faults() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        emfile_child(&role);
        return;
    }
    raise_fd_limit();
    type Case = fn(BackendChoice);
    let cases: [(&str, Case); 5] = [
        ("emfile_flood_then_recovery_callbacks", |c| {
            emfile_parent(c, "callbacks")
        }),
        ("emfile_flood_then_recovery_fibers", |c| {
            emfile_parent(c, "fibers")
        }),
        ("signals_during_heavy_load", signals_during_heavy_load),
        ("signals_during_close", signals_during_close),
        ("fork_with_a_live_loop", fork_with_a_live_loop),
    ];
    let mut failed = Vec::new();
    for (name, case) in cases {
        for (bname, choice) in BACKENDS {
            if choice == BackendChoice::Uring && !uring_available() {
                println!("{name} {bname} ... skipped: io_uring is unavailable here");
                continue;
            }
            let before = other_fds();
            let r = panic::catch_unwind(AssertUnwindSafe(|| case(choice)));
            let after = other_fds();
            match r {
                Ok(()) if after == before => println!("{name} {bname} ... ok"),
                Ok(()) => {
                    println!("{name} {bname} ... FAILED: {before} fds before, {after} after");
                    failed.push(format!("{name} {bname}"));
                }
                Err(_) => {
                    println!("{name} {bname} ... FAILED");
                    failed.push(format!("{name} {bname}"));
                }
            }
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// What a loop itself opens: its ring or epoll set, and its wake-up eventfd.
const LOOP_OWN_FDS: &[&str] = &[
    "anon_inode:[io_uring]",
    "anon_inode:[eventpoll]",
    "anon_inode:[eventfd]",
];

/// Open fds other than the loops' own ones. A closed loop whose fibers did I/O keeps its own
/// fds open (see `fiber_io_then_close_releases_the_loop` in tests/faults.rs); every other fd
/// is accounted for exactly.
fn other_fds() -> usize {
    let loops = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| LOOP_OWN_FDS.iter().any(|k| t.to_string_lossy() == *k))
        })
        .count();
    fd_count() - loops
}

fn uring_available() -> bool {
    Loop::builder()
        .backend(BackendChoice::Uring)
        .build()
        .is_ok()
}

fn new_loop(choice: BackendChoice) -> Loop {
    let lp = Loop::builder().backend(choice).build().unwrap();
    let want = match choice {
        BackendChoice::Uring => BackendKind::Uring,
        _ => BackendKind::Epoll,
    };
    assert_eq!(lp.backend().kind, want);
    lp
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: (FFI) `lim` is a writable rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: (FFI) `lim` is a valid rlimit; raising the soft limit up to the hard one is allowed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

/// Runs `lp` in short slices until `done()`; fails after [`LIMIT`] with `what`.
fn run_until(lp: &Loop, what: &str, done: impl FnMut() -> bool) {
    common::run_until_within(lp, LIMIT, what, done);
}

/// Sends `sig` to this process (not to one thread).
fn kill_self(sig: i32) {
    // SAFETY: (FFI) kill takes no pointers; the signals sent here are watched or ignored by
    // default.
    let r = unsafe { libc::kill(libc::getpid(), sig) };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
}

// =============================================================================================
// EMFILE
// =============================================================================================

const FLOOD: usize = 100;

/// The parent side: starts the child, floods its listener with [`FLOOD`] clients, and checks
/// that every one of them is served once the child has freed its fds.
fn emfile_parent(choice: BackendChoice, style: &str) {
    let backend = match choice {
        BackendChoice::Uring => "uring",
        _ => "epoll",
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "process_wide_faults",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("emfile:{backend}:{style}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut port = None;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        // libtest may print "test … ... " on the same line first.
        if let Some(p) = line.find("PORT ").map(|i| &line[i + 5..]) {
            port = Some(p.trim().parse::<u16>().unwrap());
            break;
        }
        line.clear();
    }
    let port = port.expect("the child did not report its port");
    // The flood: every client connects (the kernel queues the connections) and sends one line.
    let mut clients: Vec<StdStream> = (0..FLOOD)
        .map(|i| {
            let mut c = StdStream::connect(("127.0.0.1", port)).unwrap();
            c.set_read_timeout(Some(LIMIT)).unwrap();
            // One write: `writeln!` on an unbuffered stream would send the line in pieces.
            c.write_all(format!("client {i}\n").as_bytes()).unwrap();
            c
        })
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut reply = String::new();
        BufReader::new(c).read_line(&mut reply).unwrap();
        assert_eq!(
            reply,
            format!("echo client {i}\n"),
            "client {i} was not served"
        );
    }
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let result = rest
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or("(none)")
        .to_string();
    println!("  emfile {backend} {style}: {result}");
    assert!(status.success(), "child failed: {status}\n{rest}");
    assert!(
        result.starts_with(&format!("served={FLOOD} emfile=")) && result.ends_with("fds=restored"),
        "{result}"
    );
}

/// The highest open fd number.
fn highest_fd() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .max()
        .unwrap()
}

/// The child: serves [`FLOOD`] one-line echo requests with its fds used up until accepts
/// have failed with `EMFILE` a few times.
fn emfile_child(role: &str) {
    let mut parts = role.split(':').skip(1);
    let backend = parts.next().unwrap();
    let style = parts.next().unwrap().to_string();
    let choice = if backend == "uring" {
        BackendChoice::Uring
    } else {
        BackendChoice::Epoll
    };
    let lp = new_loop(choice);
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    println!("PORT {}", listener.local_addr().unwrap().port());
    io::stdout().flush().unwrap();
    let start_fds = other_fds();
    // Leave a few fds, then use them all up.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: (FFI) `lim` is a writable rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = (highest_fd() as u64 + 1 + 8).min(lim.rlim_max);
    // SAFETY: (FFI) a valid rlimit; lowering the soft limit is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let hogs: Rc<RefCell<Vec<OwnedFd>>> = Rc::default();
    loop {
        match listener.as_fd().try_clone_to_owned() {
            Ok(fd) => hogs.borrow_mut().push(fd),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
    }
    let served = Rc::new(Cell::new(0usize));
    let emfile = Rc::new(Cell::new(0usize));
    if style == "callbacks" {
        serve_callbacks(
            &lp,
            Rc::new(listener),
            served.clone(),
            emfile.clone(),
            hogs.clone(),
        );
    } else {
        let (s, e, h) = (served.clone(), emfile.clone(), hogs.clone());
        let listener = fdloop::net::TcpListener::from_std(listener).unwrap();
        lp.spawn(move || {
            while s.get() < FLOOD {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let s = s.clone();
                        fiber::spawn(move || {
                            let mut line = String::new();
                            BufReader::new(&mut conn).read_line(&mut line).unwrap();
                            conn.write_all(format!("echo {line}").as_bytes()).unwrap();
                            s.set(s.get() + 1);
                        });
                    }
                    Err(err) if err.raw_os_error() == Some(libc::EMFILE) => {
                        e.set(e.get() + 1);
                        if e.get() == 10 {
                            h.borrow_mut().clear();
                        }
                        fiber::sleep(Duration::from_millis(1)); // back off
                    }
                    Err(err) => panic!("accept: {err}"),
                }
            }
        });
    }
    run_until(&lp, "every client served", || served.get() == FLOOD);
    // The next accept is still waiting: close cancels it, and drops the listener with it.
    lp.close().unwrap();
    let fds = if other_fds() == start_fds - 1 {
        "restored"
    } else {
        "leaked"
    };
    println!(
        "RESULT served={} emfile={} fds={fds}",
        served.get(),
        emfile.get()
    );
}

/// Reads from `conn` until a whole line has arrived, then sends `reply` + the line back.
fn echo_line(lp: &Loop, conn: Rc<OwnedFd>, mut reply: Vec<u8>, served: Rc<Cell<usize>>) {
    let c = conn.clone();
    lp.recv(&*conn, vec![0; 64], move |lp, res, buf| {
        let n = res.unwrap();
        assert!(n > 0, "the client closed before sending a whole line");
        reply.extend_from_slice(&buf[..n]);
        if !reply.ends_with(b"\n") {
            return echo_line(lp, c, reply, served);
        }
        lp.send(&*c.clone(), reply, move |_, res, _| {
            res.unwrap();
            drop(c);
            served.set(served.get() + 1);
        });
    });
}

fn serve_callbacks(
    lp: &Loop,
    listener: Rc<StdListener>,
    served: Rc<Cell<usize>>,
    emfile: Rc<Cell<usize>>,
    hogs: Rc<RefCell<Vec<OwnedFd>>>,
) {
    let l = listener.clone();
    lp.accept(&*listener, move |lp, res| match res {
        Ok((conn, _)) => {
            echo_line(lp, Rc::new(conn), b"echo ".to_vec(), served.clone());
            serve_callbacks(lp, l, served, emfile, hogs);
        }
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
            emfile.set(emfile.get() + 1);
            if emfile.get() == 10 {
                hogs.borrow_mut().clear();
            }
            // Back off, then accept again.
            lp.start_timer(Timer::after(Duration::from_millis(1)), move |lp, _| {
                serve_callbacks(lp, l.clone(), served.clone(), emfile.clone(), hogs.clone())
            });
        }
        Err(e) => panic!("accept: {e}"),
    });
}

// =============================================================================================
// Signals
// =============================================================================================

/// 200 rounds of: send `SIGWINCH` to the process, then wait until the loop has run a callback
/// of the watch after that send — while 1,000 socket pairs stream 64 KiB each through the
/// loop (reads re-armed from their callbacks) and timers churn. Every signal is followed by
/// at least one callback; never more callbacks than signals; every byte is read once.
fn signals_during_heavy_load(choice: BackendChoice) {
    const PAIRS: usize = 1000;
    const BYTES: usize = 64 * 1024;
    const ROUNDS: usize = 200;
    let lp = new_loop(choice);
    let acked = Arc::new(AtomicUsize::new(0));
    let a = acked.clone();
    let watch = lp
        .start_signal(Signal::WINCH, move |_, _| {
            a.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    let pairs: Vec<(StdUnixStream, Rc<OwnedFd>)> = (0..PAIRS)
        .map(|_| {
            let (a, b) = StdUnixStream::pair().unwrap();
            (a, Rc::new(OwnedFd::from(b)))
        })
        .collect();
    let received = Rc::new(Cell::new(0usize));
    fn read_more(lp: &Loop, fd: Rc<OwnedFd>, received: Rc<Cell<usize>>) {
        let f = fd.clone();
        lp.read(&*fd, vec![0; 4096], move |lp, res, _| {
            let n = res.unwrap();
            received.set(received.get() + n);
            if n > 0 {
                read_more(lp, f, received);
            }
        });
    }
    for (_, b) in &pairs {
        read_more(&lp, b.clone(), received.clone());
    }
    // Timer churn: a periodic timer that starts and stops 10 one-shot timers per tick.
    let churn = lp.start_timer(Timer::every(Duration::from_millis(1)), |lp, _| {
        let ids: Vec<_> = (0..10)
            .map(|i| lp.start_timer(Timer::after(Duration::from_millis(50 + i)), |_, _| {}))
            .collect();
        for id in ids {
            lp.stop_timer(id).unwrap();
        }
    });
    let writers: Vec<StdUnixStream> = pairs.iter().map(|(a, _)| a.try_clone().unwrap()).collect();
    let feeder = std::thread::spawn(move || {
        let chunk = vec![0x42u8; 4096];
        for _ in 0..BYTES / 4096 {
            for mut w in &writers {
                w.write_all(&chunk).unwrap();
            }
        }
        writers
    });
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (ack, d, s) = (acked.clone(), done.clone(), sent.clone());
    let sender = std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            let seen = ack.load(Ordering::SeqCst);
            kill_self(libc::SIGWINCH);
            s.fetch_add(1, Ordering::SeqCst);
            let start = Instant::now();
            while ack.load(Ordering::SeqCst) == seen {
                if start.elapsed() > LIMIT {
                    d.store(true, Ordering::SeqCst);
                    return false;
                }
                std::thread::yield_now();
            }
        }
        d.store(true, Ordering::SeqCst);
        true
    });
    run_until(&lp, "the signal rounds", || done.load(Ordering::SeqCst));
    assert!(
        sender.join().unwrap(),
        "a signal was not followed by a callback"
    );
    let writers = feeder.join().unwrap();
    drop(writers);
    for (a, _) in &pairs {
        a.shutdown(std::net::Shutdown::Write).unwrap();
    }
    run_until(&lp, "every byte", || received.get() == PAIRS * BYTES);
    lp.stop_timer(churn).unwrap();
    lp.stop_signal(watch).unwrap();
    lp.run().unwrap(); // the reads end with end-of-file
    assert_eq!(received.get(), PAIRS * BYTES, "bytes lost or read twice");
    let (calls, signals) = (acked.load(Ordering::SeqCst), sent.load(Ordering::SeqCst));
    println!(
        "  {signals} signals, {calls} callbacks, {} bytes",
        received.get()
    );
    assert!(
        calls >= ROUNDS && calls <= signals,
        "{calls} callbacks for {signals} signals"
    );
    lp.close().unwrap();
}

/// 30 loops, each with 1,000 reads in flight and a signal watch, built, run briefly and closed
/// while another thread sends `SIGWINCH` and `SIGURG` as fast as it can: every close returns,
/// no read outlives its loop (data written afterwards stays in the pipes), and the caller's fd
/// account comes back.
fn signals_during_close(choice: BackendChoice) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (st, se) = (stop.clone(), sent.clone());
    let sender = std::thread::spawn(move || {
        while !st.load(Ordering::SeqCst) {
            kill_self(libc::SIGWINCH);
            kill_self(libc::SIGURG);
            se.fetch_add(2, Ordering::SeqCst);
            std::thread::yield_now();
        }
    });
    let calls = Rc::new(Cell::new(0usize));
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        for _ in 0..30 {
            let lp = new_loop(choice);
            let c = calls.clone();
            lp.start_signal(Signal::WINCH, move |_, _| c.set(c.get() + 1))
                .unwrap();
            let c = calls.clone();
            lp.start_signal(Signal::new(libc::SIGURG).unwrap(), move |_, _| {
                c.set(c.get() + 1)
            })
            .unwrap();
            let pipes: Vec<(OwnedFd, OwnedFd)> = (0..100).map(|_| pipe()).collect();
            for (r, _) in &pipes {
                for _ in 0..10 {
                    lp.read(r, vec![0; 16], |_, _, _| panic!("no data was written"));
                }
            }
            lp.run_for(Duration::from_millis(2)).unwrap();
            lp.close().unwrap();
            for (r, w) in &pipes {
                common::write_fd(w, b"after");
                assert_eq!(common::read_fd(r, 16), b"after", "a read outlived close");
            }
        }
    }));
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    if let Err(p) = r {
        panic::resume_unwind(p);
    }
    println!(
        "  {} signals over 30 loops, {} callbacks",
        sent.load(Ordering::SeqCst),
        calls.get()
    );
}

// =============================================================================================
// fork
// =============================================================================================

/// The `io_uring` mappings of this process (`/proc/self/maps`).
fn uring_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("anon_inode:[io_uring]"))
        .count()
}

/// Exit codes of the forked child.
mod child_exit {
    pub const OK: i32 = 0;
    pub const PARENT_RING_MAPPED: i32 = 10;
    pub const NO_LOOP: i32 = 11;
    pub const NO_OWN_RING: i32 = 12;
    pub const TIMER: i32 = 13;
    pub const PIPE_READ: i32 = 14;
    pub const FIBER: i32 = 15;
    pub const PANIC: i32 = 16;
}

/// What the forked child does: only its own loop. Returns an exit code.
fn forked_child(choice: BackendChoice, parent_had_ring: bool) -> i32 {
    use child_exit::*;
    if parent_had_ring && uring_mappings() != 0 {
        return PARENT_RING_MAPPED;
    }
    let Ok(lp) = Loop::builder().backend(choice).build() else {
        return NO_LOOP;
    };
    if choice == BackendChoice::Uring && uring_mappings() == 0 {
        return NO_OWN_RING;
    }
    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    lp.start_timer(Timer::after(Duration::from_millis(5)), move |_, _| {
        f.set(true)
    });
    let (r, w) = pipe();
    let got = Rc::new(RefCell::new(Vec::new()));
    let g = got.clone();
    lp.read(&r, vec![0; 16], move |_, res, buf| {
        if res.is_ok() {
            *g.borrow_mut() = buf;
        }
    });
    common::write_fd(&w, b"child");
    let h = lp.spawn(|| {
        let (mut rx, mut tx) = fdloop::pipe().unwrap();
        tx.write_all(b"fiber").unwrap();
        let mut b = [0u8; 5];
        rx.read_exact(&mut b).unwrap();
        b
    });
    let start = Instant::now();
    while !(fired.get() && !got.borrow().is_empty() && h.is_finished()) {
        if start.elapsed() > LIMIT {
            break;
        }
        if lp.run_for(Duration::from_millis(5)).is_err() {
            break;
        }
    }
    if !fired.get() {
        return TIMER;
    }
    if *got.borrow() != b"child" {
        return PIPE_READ;
    }
    if !h.is_finished() || h.join().ok() != Some(*b"fiber") {
        return FIBER;
    }
    OK
}

/// A loop with reads, a fiber and a timer in flight forks. The child finds none of the
/// parent's ring mapped (`MADV_DONTFORK`), builds its own loop and runs a timer, a pipe read
/// and a fiber on it, and leaves with `_exit` (never dropping what it inherited). The parent's
/// operations then complete exactly once with their data, and its loop keeps working.
fn fork_with_a_live_loop(choice: BackendChoice) {
    let lp = new_loop(choice);
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..50).map(|_| pipe()).collect();
    let got: Rc<RefCell<Vec<u32>>> = Rc::new(RefCell::new(vec![0; 50]));
    for (i, (r, _)) in pipes.iter().enumerate() {
        let g = got.clone();
        lp.read(r, vec![0; 8], move |_, res, buf| {
            assert_eq!((res.unwrap(), &buf[..]), (6, &b"parent"[..]));
            g.borrow_mut()[i] += 1;
        });
    }
    let (mut frx, ftx) = fdloop::pipe().unwrap();
    let fib = lp.spawn(move || {
        let mut b = [0u8; 6];
        frx.read_exact(&mut b).unwrap();
        b
    });
    let ticks = Rc::new(Cell::new(0usize));
    let t = ticks.clone();
    let timer = lp.start_timer(Timer::every(Duration::from_millis(1)), move |_, _| {
        t.set(t.get() + 1)
    });
    lp.run_for(Duration::from_millis(10)).unwrap();
    let parent_ring = uring_mappings();
    if choice == BackendChoice::Uring {
        assert!(parent_ring > 0, "the parent's ring is not mapped?");
    }

    // SAFETY: (FFI) fork in a test process with other threads: the child only runs its own code
    // below (allocations are fork-safe in glibc) and leaves with _exit, without unwinding and
    // without dropping anything it inherited.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = panic::catch_unwind(AssertUnwindSafe(|| forked_child(choice, parent_ring > 0)))
            .unwrap_or(child_exit::PANIC);
        // SAFETY: (FFI) ends the child at once: no destructor runs, nothing inherited is touched.
        unsafe { libc::_exit(code) };
    }

    // Meanwhile the parent's loop goes on.
    let ticks_at_fork = ticks.get();
    run_until(&lp, "timer ticks while the child runs", || {
        ticks.get() > ticks_at_fork + 5
    });
    let status = wait_child(pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == child_exit::OK,
        "the forked child failed: status {status:#x} (exit code {}; see child_exit)",
        libc::WEXITSTATUS(status)
    );
    assert_eq!(
        uring_mappings(),
        parent_ring,
        "the parent's ring mappings changed"
    );
    for (_, w) in &pipes {
        common::write_fd(w, b"parent");
    }
    let ftx: OwnedFd = ftx.into();
    common::write_fd(&ftx, b"parent");
    run_until(&lp, "the parent's reads and fiber", || {
        got.borrow().iter().all(|&c| c == 1) && fib.is_finished()
    });
    lp.stop_timer(timer).unwrap();
    lp.run().unwrap();
    assert!(
        got.borrow().iter().all(|&c| c == 1),
        "a read completed twice"
    );
    assert_eq!(fib.join().unwrap(), *b"parent");
    drop((ftx, pipes));
    lp.close().unwrap();
}

/// Waits for child `pid`, bounded by [`LIMIT`] (then kills it); returns the wait status.
fn wait_child(pid: libc::pid_t) -> i32 {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: (FFI) `status` is a writable int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return status;
        }
        assert!(r == 0, "waitpid: {}", io::Error::last_os_error());
        if start.elapsed() > LIMIT {
            // SAFETY: (FFI) kill takes no pointers; `pid` is our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
