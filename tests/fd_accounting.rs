//! fd accounting and fd-number reuse. Everything here depends on which fd numbers the process
//! hands out, so it runs as one test, one backend after the other, with no other test opening
//! or closing fds meanwhile.

mod common;

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use common::{fd_count, pipe};
use fdloop::net::UnixStream as FiberUnixStream;
use fdloop::{BackendChoice, Interest, Loop, PipeReader, Timer};

/// Watch a pipe, close it behind the loop's back, put a new readable socket on the same fd
/// number and register it: the old callback never runs, the new one does.
fn stale_registration_never_reaches_a_reused_fd_number(lp: &Loop) {
    let (r, w) = pipe();
    let num = r.as_raw_fd();
    lp.start_poll(num, Interest::READABLE, |_, _| {
        panic!("stale registration fired")
    })
    .unwrap();
    lp.run_for(Duration::from_millis(5)).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    drop(r);
    (&a).write_all(b"new").unwrap();
    // SAFETY: (FFI) dup2 onto the freed number; `b` stays owned and is closed below.
    assert_eq!(unsafe { libc::dup2(b.as_raw_fd(), num) }, num);
    // SAFETY: (FFI) `num` now names a fresh duplicate that only this OwnedFd owns.
    let reused = unsafe { OwnedFd::from_raw_fd(num) };
    let got = Rc::new(Cell::new(false));
    let g = got.clone();
    lp.start_poll(num, Interest::READABLE, move |lp, _| {
        g.set(true);
        lp.detach(num).unwrap();
    })
    .unwrap();
    lp.run().unwrap();
    assert!(got.get());
    drop((w, reused, a, b));
}

/// A file is read through the loop (its driver caches "regular file" for the number), then
/// moved to another thread and dropped there; a pipe then gets the same number on the loop's
/// thread. The driver must notice that the number names another file now (the close count)
/// and treat the pipe as a pipe.
fn fd_closed_on_another_thread_is_noticed(choice: BackendChoice) {
    let Some(lp) = common::new_loop(choice) else {
        return;
    };
    let path = common::temp_path("cross-thread");
    std::fs::write(&path, b"file contents").unwrap();
    let p = path.clone();
    let h = lp.spawn(move || {
        let f = fdloop::fs::File::open(&p).unwrap();
        let mut buf = [0u8; 4];
        f.read_at(&mut buf, 0).unwrap();
        f
    });
    lp.run().unwrap();
    let file = h.join().unwrap();
    let number = std::os::fd::AsRawFd::as_raw_fd(&file);
    std::thread::spawn(move || drop(file)).join().unwrap();
    let (mut rx, mut tx) = fdloop::pipe().unwrap();
    let reused = std::os::fd::AsRawFd::as_raw_fd(&rx) == number
        || std::os::fd::AsRawFd::as_raw_fd(&tx) == number;
    let reader = lp.spawn(move || {
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut rx, &mut buf).unwrap();
        buf
    });
    lp.spawn(move || {
        fdloop::fiber::sleep(Duration::from_millis(2));
        std::io::Write::write_all(&mut tx, b"pipe!").unwrap();
    });
    lp.run().unwrap();
    assert_eq!(&reader.join().unwrap(), b"pipe!");
    assert!(
        reused,
        "the pipe should have taken the freed number {number}"
    );
    std::fs::remove_file(&path).unwrap();
}

/// `close()` with reads, accepts and polls in flight returns and leaks no fd.
fn close_with_work_in_flight(choice: BackendChoice) {
    let before = fd_count();
    {
        let Some(lp) = common::new_loop(choice) else {
            return;
        };
        let (r, w) = pipe();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        for _ in 0..50 {
            lp.read(&r, vec![0; 128], |_, _, _| {
                panic!("callbacks are dropped at close")
            });
            lp.accept(&listener, |_, _| panic!("callbacks are dropped at close"));
        }
        lp.start_poll(&r, fdloop::Interest::READABLE, |_, _| panic!("no event"))
            .unwrap();
        lp.start_timer(Timer::after(Duration::from_secs(60)), |_, _| {});
        let handle = lp.handle();
        lp.run_for(Duration::from_millis(5)).unwrap();
        lp.close().unwrap();
        assert!(
            handle.post(|_| {}).is_err(),
            "posting to a closed loop is an error"
        );
        assert!(handle.stop().is_err());
        drop((r, w, listener));
    }
    assert_eq!(fd_count(), before, "close() leaked an fd");
}

/// A fiber socket is dropped and its number reused by a pipe (`dup2`): the loop must not treat
/// the pipe as the socket it knew. (Here, not among the net tests: between the drop and the
/// `dup2`, a test on another thread could take the number.)
fn a_dropped_sockets_fd_number_can_be_reused_by_a_pipe(lp: &Loop) {
    let h = lp.spawn(|| {
        let (mut a, b) = FiberUnixStream::pair().unwrap();
        (&b).write_all(b"s").unwrap();
        a.read_exact(&mut [0u8; 1]).unwrap(); // the loop now knows `a`'s fd as a socket
        let num = a.as_raw_fd();
        let (r, w) = common::pipe();
        drop((a, b));
        // A pipe on the same fd number: the loop must not treat it as a socket.
        // SAFETY: (FFI) dup2 onto the number `a` had; the result is owned by `reused` alone.
        assert_eq!(unsafe { libc::dup2(r.as_raw_fd(), num) }, num);
        // SAFETY: (FFI) `num` is a fresh duplicate that nothing else owns.
        let reused = unsafe { OwnedFd::from_raw_fd(num) };
        drop(r);
        common::write_fd(&w, b"pipe data");
        let mut rx = PipeReader::from(reused);
        let mut buf = [0u8; 9];
        rx.read_exact(&mut buf).unwrap();
        buf
    });
    lp.run().unwrap();
    assert_eq!(&h.join().unwrap(), b"pipe data");
}

#[test]
fn fd_numbers_and_accounting_on_both_backends() {
    for choice in [BackendChoice::Uring, BackendChoice::Epoll] {
        if let Some(lp) = common::new_loop(choice) {
            stale_registration_never_reaches_a_reused_fd_number(&lp);
            a_dropped_sockets_fd_number_can_be_reused_by_a_pipe(&lp);
        }
    }
    for choice in [BackendChoice::Uring, BackendChoice::Epoll] {
        fd_closed_on_another_thread_is_noticed(choice);
    }
    close_with_work_in_flight(BackendChoice::Uring);
    close_with_work_in_flight(BackendChoice::Epoll);
    // Dropping instead of closing does the same.
    let before = fd_count();
    for choice in [BackendChoice::Uring, BackendChoice::Epoll] {
        let Some(lp) = common::new_loop(choice) else {
            continue;
        };
        let (r, w) = pipe();
        for _ in 0..100 {
            lp.read(&r, vec![0; 16], |_, _, _| {});
        }
        lp.run_for(Duration::from_millis(2)).unwrap();
        drop(lp);
        drop((r, w));
    }
    assert_eq!(fd_count(), before, "drop leaked an fd");
}
