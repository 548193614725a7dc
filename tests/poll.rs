//! Readiness on both backends: pipes, socketpairs, TCP, eventfd, timerfd; level-triggering;
//! start/stop from callbacks; detach; stale registrations; bad input.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use common::{eventfd, eventfd_write, pipe, read_fd, write_fd};
use fdloop::{Interest, Loop, Timer};

backend_tests! {
    fn pipe_becomes_readable(lp: &Loop) {
        let (r, w) = pipe();
        let got = Rc::new(RefCell::new(Vec::new()));
        let g = got.clone();
        let rfd = r.as_raw_fd();
        lp.start_poll(rfd, Interest::READABLE, move |lp, ready| {
            assert!(ready.is_readable());
            g.borrow_mut().extend(read_fd(&r, 16));
            lp.detach(rfd).unwrap();
        }).unwrap();
        lp.start_timer(Timer::after(Duration::from_millis(5)), move |_, _| write_fd(&w, b"hello"));
        lp.run().unwrap();
        assert_eq!(&*got.borrow(), b"hello");
    }

    fn level_triggered_until_drained(lp: &Loop) {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&[7u8; 10]).unwrap();
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        let mut b2 = b.try_clone().unwrap();
        let fd = b.as_raw_fd();
        lp.start_poll(fd, Interest::READABLE, move |lp, ready| {
            assert!(ready.is_readable());
            c.set(c.get() + 1);
            // Read one byte per callback: the callback must come back until all ten are gone.
            let mut one = [0u8; 1];
            b2.read_exact(&mut one).unwrap();
            if c.get() == 10 {
                lp.stop_poll(fd, Interest::READABLE).unwrap();
            }
        }).unwrap();
        lp.run().unwrap();
        assert_eq!(calls.get(), 10);
    }

    fn writable_socket_and_stop_poll(lp: &Loop) {
        let (a, _b) = UnixStream::pair().unwrap();
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        let fd = a.as_raw_fd();
        lp.start_poll(fd, Interest::WRITABLE, move |lp, ready| {
            assert!(ready.is_writable());
            c.set(c.get() + 1);
            lp.stop_poll(fd, Interest::WRITABLE).unwrap();
            assert_eq!(
                lp.stop_poll(fd, Interest::WRITABLE).unwrap_err().kind(),
                io::ErrorKind::NotFound
            );
        }).unwrap();
        lp.run().unwrap();
        assert_eq!(calls.get(), 1);
    }

    fn hup_when_peer_closes(lp: &Loop) {
        let (a, b) = UnixStream::pair().unwrap();
        let seen = Rc::new(Cell::new(false));
        let s = seen.clone();
        let fd = b.as_raw_fd();
        lp.start_poll(fd, Interest::READABLE, move |lp, ready| {
            if ready.is_hup() {
                s.set(true);
                lp.detach(fd).unwrap();
            }
        }).unwrap();
        drop(a);
        lp.run().unwrap();
        assert!(seen.get());
    }

    fn eventfd_and_timerfd(lp: &Loop) {
        let efd = eventfd();
        eventfd_write(&efd, 3);
        // SAFETY: (FFI) timerfd_create takes no pointers.
        let tfd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK) };
        assert!(tfd >= 0);
        // SAFETY: (FFI) a fresh fd owned by nothing else.
        let tfd = unsafe { OwnedFd::from_raw_fd(tfd) };
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: 0, tv_nsec: 2_000_000 },
        };
        // SAFETY: (FFI) `spec` is a valid itimerspec for the call; the old value pointer may be
        // null.
        assert_eq!(unsafe { libc::timerfd_settime(tfd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) }, 0);
        let got: Rc<RefCell<Vec<(&str, u64)>>> = Rc::default();
        for (name, fd) in [("eventfd", efd), ("timerfd", tfd)] {
            let g = got.clone();
            let raw = fd.as_raw_fd();
            lp.start_poll(raw, Interest::READABLE, move |lp, _| {
                let v = read_fd(&fd, 8);
                g.borrow_mut().push((name, u64::from_ne_bytes(v.try_into().unwrap())));
                lp.detach(raw).unwrap();
            }).unwrap();
        }
        lp.run().unwrap();
        let mut got = got.borrow().clone();
        got.sort();
        assert_eq!(got, vec![("eventfd", 3), ("timerfd", 1)]);
    }

    fn tcp_loopback_accept_readiness(lp: &Loop) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fd = listener.as_raw_fd();
        let accepted = Rc::new(Cell::new(0));
        let a = accepted.clone();
        lp.start_poll(fd, Interest::READABLE, move |lp, _| {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"hi").unwrap();
            a.set(a.get() + 1);
            if a.get() == 3 {
                lp.detach(fd).unwrap();
            }
        }).unwrap();
        let clients: Vec<_> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        lp.run().unwrap();
        assert_eq!(accepted.get(), 3);
        for mut c in clients {
            let mut buf = [0; 2];
            c.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hi");
        }
    }

    fn priority_from_tcp_urgent_data(lp: &Loop) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // SAFETY: (FFI) a one-byte live buffer.
        let n = unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
        assert_eq!(n, 1);
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        let fd = server.as_raw_fd();
        lp.start_poll(fd, Interest::PRIORITY, move |lp, ready| {
            assert!(ready.is_priority());
            c.set(c.get() + 1);
            let mut b = 0u8;
            // SAFETY: (FFI) a one-byte live buffer.
            let n = unsafe { libc::recv(fd, (&mut b as *mut u8).cast(), 1, libc::MSG_OOB) };
            assert_eq!((n, b), (1, b'!'));
            // The urgent byte is consumed: PRIORITY clears. Stop after a few iterations to show
            // that no further callback comes (no busy loop).
            lp.start_timer(Timer::after(Duration::from_millis(20)), move |lp, _| lp.detach(fd).unwrap());
        }).unwrap();
        lp.run().unwrap();
        assert_eq!(calls.get(), 1);
        drop(server);
    }

    fn start_and_stop_sources_inside_callbacks(lp: &Loop) {
        // A callback registers a second fd, stops itself, and the second one's callback
        // detaches itself: no "already borrowed" panics, every callback runs as expected.
        let (a1, b1) = UnixStream::pair().unwrap();
        let (a2, b2) = UnixStream::pair().unwrap();
        (&a1).write_all(b"1").unwrap();
        (&a2).write_all(b"2").unwrap();
        let log: Rc<RefCell<Vec<&str>>> = Rc::default();
        let l = log.clone();
        let fd1 = b1.as_raw_fd();
        let fd2 = b2.as_raw_fd();
        lp.start_poll(fd1, Interest::READABLE, move |lp, _| {
            l.borrow_mut().push("first");
            lp.stop_poll(fd1, Interest::READABLE).unwrap();
            let l2 = l.clone();
            lp.start_poll(fd2, Interest::READABLE, move |lp, _| {
                l2.borrow_mut().push("second");
                lp.detach(fd2).unwrap();
                // Starting again from inside, after detaching, works too.
                let l3 = l2.clone();
                lp.start_timer(Timer::after(Duration::ZERO), move |_, _| l3.borrow_mut().push("timer"));
            }).unwrap();
        }).unwrap();
        lp.run().unwrap();
        assert_eq!(*log.borrow(), vec!["first", "second", "timer"]);
        drop((a1, a2, b1, b2));
    }

    fn replacing_a_callback_and_adding_interest(lp: &Loop) {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"x").unwrap();
        let fd = b.as_raw_fd();
        lp.start_poll(fd, Interest::PRIORITY, |_, _| panic!("replaced callback ran")).unwrap();
        let hit = Rc::new(Cell::new(false));
        let h = hit.clone();
        lp.start_poll(fd, Interest::READABLE, move |lp, ready| {
            assert!(ready.is_readable());
            h.set(true);
            lp.detach(fd).unwrap();
        }).unwrap();
        lp.run().unwrap();
        assert!(hit.get());
        drop(a);
    }

    fn bad_input_gets_clear_errors(lp: &Loop) {
        let err = lp.start_poll(-1, Interest::READABLE, |_, _| {}).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // A number no fd has here (tests run in parallel: a number freed by this test could
        // be taken by another one at once).
        let closed = 1_000_000;
        let err = lp.start_poll(closed, Interest::READABLE, |_, _| {}).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        let path = common::temp_path("poll-file");
        let file = std::fs::File::create(&path).unwrap();
        let err = lp.start_poll(&file, Interest::READABLE, |_, _| {}).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("read_at"), "{err}");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(lp.stop_poll(0, Interest::READABLE).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(lp.detach(-5).is_err());
        lp.detach(0).unwrap(); // unknown fd: nothing to do
    }
}
