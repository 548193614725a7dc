//! Invariant I6 for fibers: a fiber echo over TCP loopback makes no heap allocation in steady
//! state. A client fiber and a server fiber (both `fdloop::net` streams) exchange 64-byte
//! messages; after 1,000 warm-up round trips, 10,000 round trips are measured with a counting
//! global allocator, on both backends. Everything the loop thread does between the two marks
//! is counted: both fibers, the switches between them and the loop, the driver.
//!
//! The allocator is global, so this is a test binary of its own, and its cases run one after
//! the other in a single `#[test]`. While a measurement is on, the first allocations of the
//! loop thread print a backtrace (captured with a re-entrancy guard), so that a failure says
//! where it comes from.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use fdloop::net::{TcpListener, TcpStream};
use fdloop::{BackendChoice, Loop};

// ---------------------------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    /// Count this thread's allocations (between the two marks).
    static TRACK: Cell<bool> = const { Cell::new(false) };
    /// This thread's allocations while `TRACK` was on.
    static COUNT: Cell<u64> = const { Cell::new(0) };
    /// Backtraces still to print in the current measurement.
    static TRACES_LEFT: Cell<u32> = const { Cell::new(0) };
    /// Set while the allocator itself is allocating (a backtrace): not counted, no recursion.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// Allocations of other threads during a measurement (reported, not asserted).
static OTHERS: AtomicU64 = AtomicU64::new(0);
static MEASURING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How many allocations of the measured thread print a backtrace, per measurement.
const TRACES: u32 = 5;

fn record(size: usize) {
    // `try_with`: never panic inside the allocator.
    if IN_HOOK.try_with(|h| h.get()).unwrap_or(true) {
        return;
    }
    let tracked = TRACK.try_with(|t| t.get()).unwrap_or(false);
    if !tracked {
        if MEASURING.load(Ordering::Relaxed) {
            OTHERS.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    let print = TRACES_LEFT
        .try_with(|t| {
            let left = t.get();
            t.set(left.saturating_sub(1));
            left > 0
        })
        .unwrap_or(false);
    if print {
        let _ = IN_HOOK.try_with(|h| h.set(true));
        let bt = Backtrace::force_capture();
        eprintln!("allocation of {size} bytes on the loop thread:\n{bt}");
        let _ = IN_HOOK.try_with(|h| h.set(false));
    }
}

// SAFETY: (FFI) every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is `System`'s; `record` only touches thread-locals and atomics (and,
// guarded against re-entrance, captures and prints a backtrace, which allocates through this same
// allocator without being counted).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: (FFI) forwarded from the caller (a non-zero-sized layout).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: (FFI) forwarded from the caller.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: (FFI) forwarded from the caller (`ptr` was allocated by `System` with `layout`).
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: (FFI) forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The first mark: from here on, the calling thread's allocations are counted.
fn start_counting() {
    COUNT.with(|c| c.set(0));
    TRACES_LEFT.with(|t| t.set(TRACES));
    OTHERS.store(0, Ordering::SeqCst);
    MEASURING.store(true, Ordering::SeqCst);
    TRACK.with(|t| t.set(true));
}

/// The second mark: the calling thread's allocations since the first, and other threads'.
fn stop_counting() -> (u64, u64) {
    TRACK.with(|t| t.set(false));
    MEASURING.store(false, Ordering::SeqCst);
    (COUNT.with(|c| c.get()), OTHERS.load(Ordering::SeqCst))
}

// ---------------------------------------------------------------------------------------------
// The echo
// ---------------------------------------------------------------------------------------------

const WARM_UP: usize = 1_000;
const ROUND_TRIPS: usize = 10_000;
const MESSAGE: usize = 64;

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

/// One round trip from the client's side: send a message, read the echo, check it.
fn round_trip(conn: &mut TcpStream, i: usize) {
    let mut msg = [0u8; MESSAGE];
    for (j, b) in msg.iter_mut().enumerate() {
        *b = (i + j) as u8;
    }
    conn.write_all(&msg).expect("client write");
    let mut echo = [0u8; MESSAGE];
    conn.read_exact(&mut echo).expect("client read");
    assert!(echo == msg, "round trip {i}: the echo differs");
}

fn fiber_echo(name: &str, lp: &Loop) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();

    let server = lp.spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_nodelay(true).unwrap();
        let mut buf = [0u8; MESSAGE];
        let mut echoed = 0usize;
        loop {
            match conn.read(&mut buf).expect("server read") {
                0 => return echoed,
                n => {
                    conn.write_all(&buf[..n]).expect("server write");
                    echoed += n;
                }
            }
        }
    });

    let client = lp.spawn(move || {
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_nodelay(true).unwrap();
        for i in 0..WARM_UP {
            round_trip(&mut conn, i);
        }
        start_counting();
        for i in 0..ROUND_TRIPS {
            round_trip(&mut conn, i);
        }
        stop_counting()
        // Dropping `conn` ends the server fiber (end of stream).
    });

    lp.run().unwrap();
    let (loop_thread, others) = client.join().unwrap();
    let echoed = server.join().unwrap();
    println!(
        "fiber echo {name}: {ROUND_TRIPS} round trips of {MESSAGE} bytes, {loop_thread} \
         allocations on the loop thread ({others} on other threads)"
    );
    assert_eq!(echoed, (WARM_UP + ROUND_TRIPS) * MESSAGE);
    assert_eq!(
        loop_thread, 0,
        "the fiber echo allocated on {name} (backtraces above)"
    );
}

#[test]
fn fiber_echo_does_not_allocate_in_steady_state() {
    for (name, lp) in backends() {
        fiber_echo(name, &lp);
        lp.close().unwrap();
    }
}
