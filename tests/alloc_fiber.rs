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

use std::io::{Read, Write};

use fdloop::net::{TcpListener, TcpStream};
use fdloop::{BackendChoice, Loop};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

/// How many allocations of the measured thread print a backtrace, per measurement.
const TRACES: u32 = 5;

/// The first mark: from here on, the calling thread's allocations are counted.
fn start_counting() {
    counting_alloc::start(TRACES);
}

/// The second mark: the calling thread's allocations since the first, and other threads'.
fn stop_counting() -> (u64, u64) {
    let counts = counting_alloc::stop();
    (counts.thread, counts.others())
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
