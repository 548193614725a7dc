//! Invariant I6: the hot paths do not allocate in steady state. Poll dispatch, timer fire and
//! multishot receive (per chunk) are measured with a counting global allocator
//! (`tests/support/counting_alloc.rs`) over 10,000 loop iterations after a warm-up, on both
//! backends; completion I/O is measured and reported (today one `Box` per operation, for
//! its callback) but not asserted.
//!
//! The allocator is global, so this is a test binary of its own, and its cases run one after
//! the other in a single `#[test]`. Allocations are counted per thread (the loop thread is the
//! one measured) and, separately, on every thread. While a measurement is on, the first few
//! allocations of the loop thread print a backtrace, so that a failure says where it comes
//! from.

mod common;

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use common::{eventfd, eventfd_write, temp_path};
use fdloop::{BackendChoice, Interest, Loop, Timer};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::Counts;

/// How many allocations of the measured thread print a backtrace, per measurement.
const TRACES: u32 = 3;

/// Runs `f` with allocation counting on (between two marks) and returns the counts; `trace`:
/// print the backtraces of the first allocations.
fn measure(trace: bool, f: impl FnOnce()) -> Counts {
    counting_alloc::start(if trace { TRACES } else { 0 });
    f();
    counting_alloc::stop()
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

const WARM_UP: usize = 1_000;
const ITERATIONS: usize = 10_000;
/// The bound on one completion-I/O operation (never asserted as a duration).
const LIMIT: Duration = Duration::from_secs(20);

fn backends() -> Vec<(&'static str, Loop)> {
    let mut v = Vec::new();
    match Loop::builder().backend(BackendChoice::Uring).build() {
        Ok(lp) => v.push(("uring", lp)),
        Err(e) => eprintln!("skipped on io_uring: unavailable here: {e}"),
    }
    let lp = Loop::builder()
        .backend(BackendChoice::Epoll)
        .build()
        .expect("epoll loop");
    v.push(("epoll", lp));
    v
}

/// Poll dispatch: an eventfd that the callback reads and writes again, so that it is ready in
/// every iteration.
fn poll_dispatch(name: &str, lp: &Loop) {
    let efd = eventfd();
    eventfd_write(&efd, 1);
    let fd = efd.as_raw_fd();
    let calls = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let (c, e) = (calls.clone(), errors.clone());
    lp.start_poll(fd, Interest::READABLE, move |_, ready| {
        let mut v = 0u64;
        // SAFETY: (FFI) `v` is a live, writable 8-byte buffer for the call; `fd` is open (owned by
        // `efd`, which is dropped only after the registration is detached).
        let r = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
        let one = 1u64;
        // SAFETY: (FFI) `one` is a live 8-byte buffer for the call; `fd` is open (owned by `efd`,
        // which is dropped only after the registration is detached).
        let w = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
        if r != 8 || w != 8 || !ready.is_readable() {
            e.set(e.get() + 1);
        }
        c.set(c.get() + 1);
    })
    .unwrap();
    for _ in 0..WARM_UP {
        lp.run_once().unwrap();
    }
    let before = calls.get();
    let counts = measure(true, || {
        for _ in 0..ITERATIONS {
            lp.run_once().unwrap();
        }
    });
    let calls_measured = calls.get() - before;
    lp.detach(fd).unwrap();
    drop(efd);
    println!(
        "poll dispatch {name}: {ITERATIONS} iterations, {calls_measured} callbacks, \
         {} allocations on the loop thread ({} on all threads)",
        counts.thread, counts.all
    );
    assert_eq!(errors.get(), 0, "eventfd read/write failed in the callback");
    assert!(calls_measured >= 1, "the poll callback did not run");
    assert_eq!(
        counts.thread, 0,
        "poll dispatch allocated on {name} (backtraces above)"
    );
}

/// Timer fire: a periodic timer whose period has always passed by the next iteration.
fn timer_fire(name: &str, lp: &Loop) {
    let fired = Rc::new(Cell::new(0u64));
    let f = fired.clone();
    let id = lp.start_timer(Timer::every(Duration::from_nanos(1)), move |_, _| {
        f.set(f.get() + 1)
    });
    for _ in 0..WARM_UP {
        lp.run_once().unwrap();
    }
    let before = fired.get();
    let counts = measure(true, || {
        for _ in 0..ITERATIONS {
            lp.run_once().unwrap();
        }
    });
    let fired_measured = fired.get() - before;
    lp.stop_timer(id).unwrap();
    println!(
        "timer fire {name}: {ITERATIONS} iterations, {fired_measured} fires, \
         {} allocations on the loop thread ({} on all threads)",
        counts.thread, counts.all
    );
    assert!(fired_measured >= 1, "the periodic timer did not fire");
    assert_eq!(
        counts.thread, 0,
        "timer fire allocated on {name} (backtraces above)"
    );
}

#[derive(Clone, Copy)]
enum Io {
    Write,
    Read,
    ReadAt,
}

/// Completion I/O: allocations per operation, reported only. The buffer is handed back by each
/// callback and reused by the next operation, so what is counted is the loop's own cost.
fn completion_io(name: &str, lp: &Loop) {
    const OPS: usize = 2_000;
    let efd = eventfd();
    let fd = efd.as_raw_fd();
    let path = temp_path("alloc-read-at");
    std::fs::write(&path, [7u8; 64]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let ffd = file.as_raw_fd();

    let slot: Rc<RefCell<Option<Vec<u8>>>> = Rc::new(RefCell::new(Some(vec![0u8; 8])));
    let failures = Rc::new(Cell::new(0u64));
    // One operation, driven to completion (bounded by `run_for`; the callback stops the loop).
    let one = |op: Io| {
        let buf = slot.borrow_mut().take().expect("buffer back");
        let s = slot.clone();
        let fl = failures.clone();
        let cb = move |lp: &Loop, r: std::io::Result<usize>, mut buf: Vec<u8>| {
            if !matches!(r, Ok(8)) {
                fl.set(fl.get() + 1);
            }
            // Reads truncate the buffer to what they got; keep its length at 8.
            buf.resize(8, 0);
            *s.borrow_mut() = Some(buf);
            lp.stop();
        };
        match op {
            Io::Write => {
                let mut buf = buf;
                buf.copy_from_slice(&1u64.to_ne_bytes());
                lp.write(fd, buf, cb);
            }
            Io::Read => {
                lp.read(fd, buf, cb);
            }
            Io::ReadAt => {
                lp.read_at(ffd, buf, 0, cb);
            }
        }
        lp.run_for(LIMIT).unwrap();
        assert!(slot.borrow().is_some(), "an operation did not complete");
    };
    // An eventfd write then a read (which empties the counter again), or a file read.
    let run = |first: Io, second: Option<Io>| {
        one(first);
        if let Some(op) = second {
            one(op);
        }
    };
    for _ in 0..WARM_UP / 10 {
        run(Io::Write, Some(Io::Read));
        run(Io::ReadAt, None);
    }
    let mut report = Vec::new();
    for (label, first, second, ops) in [
        ("eventfd write+read", Io::Write, Some(Io::Read), 2 * OPS),
        ("read_at (file)", Io::ReadAt, None, OPS),
    ] {
        let counts = measure(false, || {
            for _ in 0..OPS {
                run(first, second);
            }
        });
        report.push(format!(
            "{label}: {:.2} per op on the loop thread, {:.2} on all threads",
            counts.thread as f64 / ops as f64,
            counts.all as f64 / ops as f64
        ));
    }
    println!("completion I/O {name}: {}", report.join("; "));
    assert_eq!(failures.get(), 0, "an I/O operation failed");
    lp.detach(fd).unwrap();
    drop(efd);
    drop(file);
    std::fs::remove_file(&path).unwrap();
}

/// Multishot receive into a buffer pool: a chunk written by the test thread, received and
/// handed to the callback, its buffer recycled. No allocation per chunk (I6).
fn multishot_recv(name: &str, lp: &Loop) {
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let pool = lp.buffer_pool(4, 64).unwrap();
    let bytes = Rc::new(Cell::new(0u64));
    let chunks = Rc::new(Cell::new(0u64));
    let finals = Rc::new(Cell::new(0u64));
    let (by, ch, fi) = (bytes.clone(), chunks.clone(), finals.clone());
    let id = lp
        .recv_multishot(&a, &pool, move |lp, r| {
            match r {
                Ok(c) if !c.is_empty() => {
                    by.set(by.get() + c.len() as u64);
                    ch.set(ch.get() + 1);
                }
                _ => fi.set(fi.get() + 1),
            }
            lp.stop();
        })
        .unwrap();
    let fd = b.as_raw_fd();
    let one = || {
        let want = bytes.get() + 8;
        // SAFETY: (FFI) the array is a live 8-byte buffer for the call; `fd` is open (owned by
        // `b`).
        let w = unsafe { libc::write(fd, [1u8; 8].as_ptr().cast(), 8) };
        assert_eq!(w, 8);
        while bytes.get() < want && finals.get() == 0 {
            lp.run_for(LIMIT).unwrap();
        }
    };
    for _ in 0..WARM_UP {
        one();
    }
    let before = chunks.get();
    let counts = measure(true, || {
        for _ in 0..ITERATIONS {
            one();
        }
    });
    let measured = chunks.get() - before;
    println!(
        "multishot recv {name}: {ITERATIONS} writes, {measured} chunks, \
         {} allocations on the loop thread ({} on all threads)",
        counts.thread, counts.all
    );
    assert_eq!(finals.get(), 0, "the multishot receive ended");
    assert!(measured >= 1);
    assert_eq!(
        counts.thread, 0,
        "multishot recv allocated on {name} (backtraces above)"
    );
    lp.cancel(id).unwrap();
    lp.run().unwrap();
    assert_eq!(finals.get(), 1);
}

#[test]
fn hot_paths_do_not_allocate_in_steady_state() {
    for (name, lp) in backends() {
        poll_dispatch(name, &lp);
        timer_fire(name, &lp);
        completion_io(name, &lp);
        multishot_recv(name, &lp);
        lp.close().unwrap();
    }
}
