//! Closing or dropping a loop with 1,000 fibers blocked in reads — half on pipes, half on TCP
//! connections — returns, runs every fiber's destructors, and leaks no fd, on both backends.
//!
//! Every fiber owns both ends of what it reads from, so once its destructors have run, every
//! fd the test opened must be closed. fds are counted in `/proc/self/fd`, which is why this
//! runs as one test, the cases one after the other, with no other test opening fds meanwhile.

mod common;

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;
use std::time::Duration;

use common::fd_count;
use fdloop::net::TcpStream;
use fdloop::{fiber, pipe, BackendChoice, Loop};

const FIBERS: usize = 1_000;

/// Counts its drops.
struct Counted(Rc<Cell<usize>>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// Raises the soft limit on open fds to the hard limit: the test holds about 2,000 at once.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: (FFI) `lim` is a live, writable rlimit.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(r, 0, "getrlimit: {}", std::io::Error::last_os_error());
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: (FFI) `lim` is a live rlimit; raising the soft limit up to the hard one is
        // allowed.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

#[derive(Clone, Copy, Debug)]
enum End {
    Close,
    Drop,
}

/// Spawns the blocked fibers on `lp`, lets them block, ends the loop, and checks.
fn blocked_readers(lp: Loop, end: End) {
    let name = format!("{:?} {:?}", lp.backend().kind, end);
    let dropped = Rc::new(Cell::new(0usize));
    let reached = Rc::new(Cell::new(0usize));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    for i in 0..FIBERS {
        let guard = Counted(dropped.clone());
        let reached = reached.clone();
        if i % 2 == 0 {
            let (mut rx, tx) = pipe().unwrap();
            lp.spawn(move || {
                let _guard = guard;
                let _tx = tx; // kept open: the read waits for data, not for end-of-file
                let mut buf = [0u8; 64];
                reached.set(reached.get() + 1);
                let r = rx.read(&mut buf);
                panic!("a pipe read returned {r:?}; the fiber should have been unwound");
            });
        } else {
            let peer = std::net::TcpStream::connect(addr).unwrap();
            let (conn, _) = listener.accept().unwrap();
            let mut conn = TcpStream::from_std(conn).unwrap();
            lp.spawn(move || {
                let _guard = guard;
                let _peer = peer; // kept open and silent
                let mut buf = [0u8; 64];
                reached.set(reached.get() + 1);
                let r = conn.read(&mut buf);
                panic!("a TCP read returned {r:?}; the fiber should have been unwound");
            });
        }
    }
    drop(listener);
    // Run until every fiber has started its read (each is then suspended in it).
    lp.spawn({
        let reached = reached.clone();
        move || {
            while reached.get() < FIBERS {
                fiber::yield_now();
            }
            fiber::with_loop(|lp| lp.stop());
        }
    });
    lp.run_for(Duration::from_secs(60)).unwrap();
    assert_eq!(
        reached.get(),
        FIBERS,
        "{name}: not every fiber reached its read"
    );
    assert_eq!(dropped.get(), 0, "{name}: a fiber ended early");

    match end {
        End::Close => lp.close().unwrap(),
        End::Drop => drop(lp),
    }
    assert_eq!(
        dropped.get(),
        FIBERS,
        "{name}: not every fiber's destructors ran"
    );
}

#[test]
fn closing_a_loop_with_blocked_fibers_leaks_no_fd() {
    raise_fd_limit();
    for choice in [BackendChoice::Uring, BackendChoice::Epoll] {
        for end in [End::Close, End::Drop] {
            let before = fd_count();
            let Some(lp) = common::new_loop(choice) else {
                break;
            };
            blocked_readers(lp, end);
            assert_eq!(
                fd_count(),
                before,
                "{choice:?} {end:?}: fds leaked (or closed twice)"
            );
        }
    }
}
