//! Bad input on the public entry points, on both backends: invalid and closed fds, fds of the
//! wrong kind, zero and huge lengths and offsets, ids from another loop and ids already
//! stopped, calls from the wrong thread or after `close`, stopping twice, running a loop from
//! inside itself, and out-of-range configuration. Each must give a documented, clear error
//! (or a documented panic) — never undefined behaviour, a hang, or a lost completion: every
//! I/O callback here is counted and must run exactly once.
//!
//! A `Loop` method called from another thread does not compile (`Loop` is `!Send`): that is
//! the `compile_fail` doctest on `Loop` in src/event_loop.rs.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pipe;
use fdloop::{fiber, BackendChoice, BackendKind, Interest, IoId, Loop, Timer};

/// An fd number that no test process has open.
const NEVER_OPEN: RawFd = 1_000_000;

/// Bound on waits for things that must happen; reaching it is a failure.
const LIMIT: Duration = Duration::from_secs(20);

/// Results of I/O callbacks, in completion order, as `Ok(n)` or the errno.
type Log = Rc<RefCell<Vec<(&'static str, Result<usize, Option<i32>>)>>>;

fn record(log: &Log, what: &'static str) -> impl FnOnce(&Loop, io::Result<usize>, Vec<u8>) {
    let log = log.clone();
    move |_, res, _| {
        log.borrow_mut()
            .push((what, res.map_err(|e| e.raw_os_error())))
    }
}

fn record_unit(log: &Log, what: &'static str) -> impl FnOnce(&Loop, io::Result<()>) {
    let log = log.clone();
    move |_, res| {
        log.borrow_mut()
            .push((what, res.map(|()| 0).map_err(|e| e.raw_os_error())))
    }
}

fn record_accept(
    log: &Log,
    what: &'static str,
) -> impl FnOnce(&Loop, io::Result<(OwnedFd, Option<SocketAddr>)>) {
    let log = log.clone();
    move |_, res| {
        log.borrow_mut()
            .push((what, res.map(|_| 0).map_err(|e| e.raw_os_error())))
    }
}

/// Runs `lp` until `n` results are logged (bounded), then once more to show nothing else
/// arrives; returns the log sorted by name.
fn settle(lp: &Loop, log: &Log, n: usize) -> Vec<(&'static str, Result<usize, Option<i32>>)> {
    let start = Instant::now();
    while log.borrow().len() < n {
        assert!(
            start.elapsed() < LIMIT,
            "{}: only {} of {n} callbacks ran: {:?}",
            lp.backend(),
            log.borrow().len(),
            log.borrow()
        );
        lp.run_for(Duration::from_millis(5)).unwrap();
    }
    lp.run_for(Duration::from_millis(5)).unwrap();
    let mut v = log.borrow().clone();
    assert_eq!(v.len(), n, "a callback ran twice: {v:?}");
    v.sort_by_key(|e| e.0);
    v
}

fn addr_of(l: &StdListener) -> SocketAddr {
    l.local_addr().unwrap()
}

backend_tests! {
    // Every fd-taking call with `-1` and with a number that is not open: the I/O calls
    // answer `EBADF` in their callback, once each; the registration calls fail at once.
    fn invalid_and_closed_fds(lp: &Loop) {
        let log: Log = Rc::default();
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for fd in [-1, NEVER_OPEN] {
            lp.read(fd, vec![0; 8], record(&log, "read"));
            lp.read_at(fd, vec![0; 8], 0, record(&log, "read_at"));
            lp.write(fd, vec![0; 8], record(&log, "write"));
            lp.write_at(fd, vec![0; 8], 0, record(&log, "write_at"));
            lp.recv(fd, vec![0; 8], record(&log, "recv"));
            lp.send(fd, vec![0; 8], record(&log, "send"));
            lp.accept(fd, record_accept(&log, "accept"));
            lp.connect(fd, to, record_unit(&log, "connect"));
        }
        for (what, res) in settle(lp, &log, 16) {
            assert_eq!(res, Err(Some(libc::EBADF)), "{what}");
        }
        lp.run().unwrap(); // nothing left in flight

        let e = lp.start_poll(-1, Interest::READABLE, |_, _| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = lp.start_poll(NEVER_OPEN, Interest::READABLE, |_, _| {}).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        let (r, _w) = pipe();
        let e = lp.start_poll(&r, Interest::READABLE.remove(Interest::READABLE), |_, _| {});
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::InvalidInput, "an empty interest");
        assert_eq!(lp.stop_poll(-1, Interest::READABLE).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(lp.stop_poll(NEVER_OPEN, Interest::READABLE).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(lp.detach(-1).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        lp.detach(NEVER_OPEN).unwrap(); // an fd the loop does not know: nothing to do

        // In a fiber: fiber::wait takes raw fds too.
        let h = lp.spawn(|| {
            (
                fiber::wait(-1, Interest::READABLE, None).map(drop).map_err(|e| e.raw_os_error()),
                fiber::wait(NEVER_OPEN, Interest::READABLE, None).map(drop).map_err(|e| e.raw_os_error()),
            )
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), (Err(Some(libc::EBADF)), Err(Some(libc::EBADF))));
    }

    // fds of the wrong kind: each call gets the kernel's answer for that kind, once.
    fn fds_of_the_wrong_kind(lp: &Loop) {
        let log: Log = Rc::default();
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        let (r, w) = pipe();
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let (client, _server) = (StdStream::connect(addr_of(&listener)).unwrap(), listener.accept().unwrap());
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let efd = common::eventfd();
        let to: SocketAddr = addr_of(&listener);

        lp.read(&dir, vec![0; 8], record(&log, "a read of a directory"));
        lp.read_at(&dir, vec![0; 8], 0, record(&log, "b read_at of a directory"));
        lp.write(&r, vec![1; 8], record(&log, "c write to a pipe's read end"));
        lp.read(&w, vec![0; 8], record(&log, "d read from a pipe's write end"));
        lp.recv(&r, vec![0; 8], record(&log, "e recv on a pipe"));
        lp.send(&w, vec![1; 8], record(&log, "f send on a pipe"));
        lp.accept(&r, record_accept(&log, "g accept on a pipe"));
        lp.connect(&r, to, record_unit(&log, "i connect on a pipe"));
        lp.connect(&listener, to, record_unit(&log, "j connect on a listener"));
        lp.read_at(&client, vec![0; 8], 0, record(&log, "k read_at on a socket"));
        lp.send(&udp, vec![1; 8], record(&log, "l send on an unconnected UDP socket"));
        lp.read(&efd, vec![0; 4], record(&log, "m 4-byte read of an eventfd"));
        let want = [
            Err(Some(libc::EISDIR)),
            Err(Some(libc::EISDIR)),
            Err(Some(libc::EBADF)),
            Err(Some(libc::EBADF)),
            Err(Some(libc::ENOTSOCK)),
            Err(Some(libc::ENOTSOCK)),
            Err(Some(libc::ENOTSOCK)),
            Err(Some(libc::ENOTSOCK)),
            Err(Some(libc::EISCONN)),
            Err(Some(libc::ESPIPE)),
            Err(Some(libc::EDESTADDRREQ)),
            Err(Some(libc::EINVAL)),
        ];
        let got = settle(lp, &log, want.len());
        for ((what, res), want) in got.iter().zip(want) {
            assert_eq!(*res, want, "{what}");
        }

        // Registrations: directories and regular files cannot be polled, on both backends.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        for f in [&dir, &file] {
            let e = lp.start_poll(f, Interest::READABLE, |_, _| {}).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        }
        // Device and net types: a socket is not a terminal; a fiber TCP stream over a
        // directory is not a socket.
        let (a, _b) = StdUnixStream::pair().unwrap();
        let e = fdloop::dev::serial::set_raw(&a).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("not a terminal"), "{e}");
        let not_a_socket = fdloop::net::TcpStream::from(OwnedFd::from(std::fs::File::open(std::env::temp_dir()).unwrap()));
        assert_eq!(not_a_socket.peer_addr().unwrap_err().raw_os_error(), Some(libc::ENOTSOCK));
        let h = lp.spawn(move || {
            let mut s = not_a_socket;
            let mut b = [0u8; 4];
            (
                s.read(&mut b).map_err(|e| e.raw_os_error()),
                s.write(b"x").map_err(|e| e.raw_os_error()),
            )
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), (Err(Some(libc::ENOTSOCK)), Err(Some(libc::ENOTSOCK))));
    }

    // Zero lengths: reads and writes of nothing complete at once with `Ok(0)`, without
    // touching the data; a zero-length `recv` is `recv(2)`'s: it waits for data, then answers
    // 0 and leaves the data queued. Huge lengths: a transfer asks for at most `0x7fff_f000`
    // bytes (the kernel's own limit) and the buffer comes back whole.
    fn zero_and_huge_lengths(lp: &Loop) {
        let log: Log = Rc::default();
        let (r, w) = pipe();
        let (a, b) = StdUnixStream::pair().unwrap();
        lp.read(&r, Vec::new(), record(&log, "a read 0 from an empty pipe"));
        lp.write(&w, Vec::new(), record(&log, "b write 0 to a pipe"));
        lp.send(&a, Vec::new(), record(&log, "c send 0 on a socket"));
        let got = settle(lp, &log, 3);
        assert!(got.iter().all(|(_, res)| *res == Ok(0)), "{got:?}");
        log.borrow_mut().clear();

        lp.recv(&b, Vec::new(), record(&log, "recv 0"));
        lp.run_for(Duration::from_millis(10)).unwrap();
        assert!(log.borrow().is_empty(), "a zero-length recv on an empty socket returned");
        (&a).write_all(b"data").unwrap();
        assert_eq!(settle(lp, &log, 1), vec![("recv 0", Ok(0))]);
        let mut left = [0u8; 8];
        assert_eq!((&b).read(&mut left).unwrap(), 4, "the zero-length recv consumed data");
        log.borrow_mut().clear();

        // 4 GiB + 5 bytes: a length that does not fit in 32 bits. The allocation is zeroed
        // lazily by the kernel; /dev/null never touches it.
        const HUGE: usize = (4 << 30) + 5;
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null").unwrap();
        let back = Rc::new(Cell::new(0usize));
        let (l, bk) = (log.clone(), back.clone());
        lp.write(&null, vec![0u8; HUGE], move |_, res, buf| {
            bk.set(buf.len());
            l.borrow_mut().push(("write 4 GiB", res.map_err(|e| e.raw_os_error())));
        });
        let (l, bk2) = (log.clone(), Rc::new(Cell::new(usize::MAX)));
        let bk = bk2.clone();
        common::write_fd(&w, b"five!");
        lp.read(&r, vec![0u8; 3 << 30], move |_, res, buf| {
            bk.set(buf.len());
            l.borrow_mut().push(("read into 3 GiB", res.map_err(|e| e.raw_os_error())));
        });
        let got = settle(lp, &log, 2);
        assert_eq!(got, vec![("read into 3 GiB", Ok(5)), ("write 4 GiB", Ok(0x7fff_f000))]);
        assert_eq!(back.get(), HUGE, "a write's buffer did not come back whole");
        assert_eq!(bk2.get(), 5, "a read's buffer is cut to what was read");

        // The same through a fiber's borrowed slice.
        let h = lp.spawn(move || {
            let mut null = fdloop::fs::File::options().write(true).open("/dev/null").unwrap();
            let huge = vec![0u8; HUGE];
            null.write(&huge).map_err(|e| e.raw_os_error())
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), Ok(0x7fff_f000));
    }

    // Offsets beyond what a file can have (`> i64::MAX`) are `EINVAL`.
    fn offsets_out_of_range_below_the_sign_bit(lp: &Loop) {
        let log: Log = Rc::default();
        let path = common::temp_path("bad-offsets");
        std::fs::write(&path, b"0123456789").unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let huge = (i64::MAX as u64) + 1;
        lp.read_at(&f, vec![0; 4], huge, record(&log, "read_at 2^63"));
        lp.write_at(&f, b"ZZ".to_vec(), huge, record(&log, "write_at 2^63"));
        lp.read_at(&f, vec![0; 4], i64::MAX as u64, record(&log, "read_at i64::MAX"));
        for (what, res) in settle(lp, &log, 3) {
            assert_eq!(res, Err(Some(libc::EINVAL)), "{what}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        std::fs::remove_file(&path).unwrap();
    }

    // Ids from another loop — even one whose slot exists in this loop — are refused with
    // `NotFound` and leave both loops' operations alone.
    fn ids_from_another_loop(lp: &Loop) {
        let other = Loop::builder().backend(BackendChoice::Epoll).build().unwrap();
        let (r1, w1) = pipe();
        let (r2, w2) = pipe();
        let log: Log = Rc::default();
        let mine = lp.read(&r1, vec![0; 8], record(&log, "mine"));
        let theirs = other.read(&r2, vec![0; 8], record(&log, "theirs"));
        assert_eq!(lp.cancel(theirs).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(other.cancel(mine).unwrap_err().kind(), io::ErrorKind::NotFound);
        let t = other.start_timer(Timer::after(LIMIT), |_, _| {});
        assert_eq!(lp.restart_timer(t, Timer::after(Duration::ZERO)).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(lp.stop_timer(t).unwrap_err().kind(), io::ErrorKind::NotFound);
        common::write_fd(&w1, b"1");
        common::write_fd(&w2, b"2");
        let start = Instant::now();
        while log.borrow().len() < 2 {
            assert!(start.elapsed() < LIMIT, "stuck: {:?}", log.borrow());
            lp.run_for(Duration::from_millis(2)).unwrap();
            other.run_for(Duration::from_millis(2)).unwrap();
        }
        let mut got = log.borrow().clone();
        got.sort();
        assert_eq!(got, vec![("mine", Ok(1)), ("theirs", Ok(1))], "a foreign id cancelled something");
        other.stop_timer(t).unwrap();
        other.close().unwrap();
    }

    // Ids already stopped or completed: `NotFound` (cancelling twice while in flight is
    // fine); the callback still runs exactly once.
    fn ids_already_stopped(lp: &Loop) {
        let log: Log = Rc::default();
        let (r, _w) = pipe();
        let id: IoId = lp.read(&r, vec![0; 8], record(&log, "read"));
        lp.cancel(id).unwrap();
        lp.cancel(id).unwrap(); // still in flight: asking again is harmless
        assert_eq!(settle(lp, &log, 1), vec![("read", Err(Some(libc::ECANCELED)))]);
        assert_eq!(lp.cancel(id).unwrap_err().kind(), io::ErrorKind::NotFound);

        let t = lp.start_timer(Timer::after(LIMIT), |_, _| {});
        lp.stop_timer(t).unwrap();
        assert_eq!(lp.stop_timer(t).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(lp.restart_timer(t, Timer::after(Duration::ZERO)).unwrap_err().kind(), io::ErrorKind::NotFound);
        let fired = lp.start_timer(Timer::after(Duration::ZERO), |_, _| {});
        lp.run().unwrap();
        assert_eq!(lp.stop_timer(fired).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(lp.restart_timer(fired, Timer::after(Duration::ZERO)).unwrap_err().kind(), io::ErrorKind::NotFound);

        lp.start_poll(&r, Interest::READABLE, |_, _| {}).unwrap();
        lp.stop_poll(&r, Interest::READABLE).unwrap();
        assert_eq!(lp.stop_poll(&r, Interest::READABLE).unwrap_err().kind(), io::ErrorKind::NotFound);
        lp.detach(&r).unwrap();
        lp.detach(&r).unwrap(); // detaching twice is not an error
        lp.run().unwrap();
    }

    // `stop` twice is `stop` once: `run` returns after the current iteration, and the next
    // `run` starts afresh. A `stop` made while the loop is not running makes the next `run`
    // return after one iteration. `LoopHandle::stop` twice, from another thread, too.
    fn stopping_twice(lp: &Loop) {
        let ticks = Rc::new(Cell::new(0u32));
        let t = ticks.clone();
        let id = lp.start_timer(Timer::every(Duration::from_millis(1)), move |lp, _| {
            t.set(t.get() + 1);
            if t.get() == 3 {
                lp.stop();
                lp.stop();
            }
        });
        lp.run().unwrap();
        assert_eq!(ticks.get(), 3, "run went on after stop");
        // The next run is not stopped by the old requests.
        let t = ticks.clone();
        lp.start_timer(Timer::after(Duration::from_millis(5)), move |lp, _| {
            assert!(t.get() > 3);
            lp.stop();
        });
        lp.run().unwrap();
        assert!(ticks.get() > 3, "the second run returned at once");
        // A stop before run: one iteration.
        lp.stop();
        lp.stop();
        let before = ticks.get();
        lp.run().unwrap();
        assert!(ticks.get() <= before + 1, "a stop before run did not stop it");
        // From another thread, twice.
        let h = lp.handle();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            (h.stop().is_ok(), h.stop().is_ok())
        });
        lp.run().unwrap();
        assert_eq!(stopper.join().unwrap(), (true, true));
        lp.stop_timer(id).unwrap();
    }

    // `run`, `run_for` and `run_once` from inside the loop's own callbacks — timer, poll,
    // I/O, posted closure, thread-pool result — and from a fiber: an `Other` error each time,
    // and the loop runs on. Running *another* loop from a callback is allowed.
    fn running_a_loop_from_inside_itself(lp: &Loop) {
        let errors = Rc::new(RefCell::new(Vec::<String>::new()));
        fn check(lp: &Loop, errors: &Rc<RefCell<Vec<String>>>, from: &str) {
            for r in [lp.run(), lp.run_for(Duration::from_millis(1)), lp.run_once().map(drop)] {
                match r {
                    Err(e) if e.kind() == io::ErrorKind::Other && e.to_string().contains("inside") => {}
                    other => errors.borrow_mut().push(format!("{from}: {other:?}")),
                }
            }
        }
        let done = Rc::new(Cell::new(0u32));
        let (e, d) = (errors.clone(), done.clone());
        lp.start_timer(Timer::after(Duration::ZERO), move |lp, _| {
            check(lp, &e, "timer");
            d.set(d.get() + 1);
        });
        let (r, w) = pipe();
        common::write_fd(&w, b"x");
        let (e, d) = (errors.clone(), done.clone());
        let fd = r.as_raw_fd();
        lp.start_poll(fd, Interest::READABLE, move |lp, _| {
            check(lp, &e, "poll");
            d.set(d.get() + 1);
            lp.detach(fd).unwrap();
        })
        .unwrap();
        let (e, d) = (errors.clone(), done.clone());
        lp.write(&w, b"y".to_vec(), move |lp, _, _| {
            check(lp, &e, "io");
            d.set(d.get() + 1);
        });
        let (e, d) = (errors.clone(), done.clone());
        lp.spawn_blocking(|| 1, move |lp, _| {
            check(lp, &e, "pool");
            d.set(d.get() + 1);
        })
        .unwrap();
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        lp.handle()
            .post(move |lp| {
                // A posted closure must be Send: report through an atomic.
                let bad = [lp.run(), lp.run_for(Duration::from_millis(1)), lp.run_once().map(drop)]
                    .iter()
                    .any(|r| !matches!(r, Err(e) if e.kind() == io::ErrorKind::Other));
                f.store(!bad, Ordering::SeqCst);
            })
            .unwrap();
        let (e, d) = (errors.clone(), done.clone());
        lp.spawn(move || {
            fiber::with_loop(|lp| check(lp, &e, "fiber"));
            d.set(d.get() + 1);
        });
        // Another loop, run from this loop's callback: allowed.
        let nested = Rc::new(Cell::new(false));
        let n = nested.clone();
        lp.start_timer(Timer::after(Duration::ZERO), move |_, _| {
            let inner = Loop::builder().backend(BackendChoice::Epoll).build().unwrap();
            let n2 = n.clone();
            inner.start_timer(Timer::after(Duration::ZERO), move |_, _| n2.set(true));
            inner.run().unwrap();
        });
        let start = Instant::now();
        while done.get() < 5 || !flag.load(Ordering::SeqCst) || !nested.get() {
            assert!(start.elapsed() < LIMIT, "stuck: {} callbacks", done.get());
            lp.run_for(Duration::from_millis(2)).unwrap();
        }
        assert!(errors.borrow().is_empty(), "{:?}", errors.borrow());
        drop((r, w));
    }

    // `JoinHandle::join` from a callback of the running loop would block it: it panics with
    // advice, the panic comes out of `run`, and the loop stays usable.
    fn join_from_a_callback_panics_with_advice(lp: &Loop) {
        let h = lp.spawn(|| {
            fiber::sleep(Duration::from_millis(5));
            7
        });
        let slot = Rc::new(RefCell::new(Some(h)));
        let s = slot.clone();
        lp.start_timer(Timer::after(Duration::ZERO), move |_, _| {
            let h = s.borrow_mut().take().unwrap();
            let _ = h.join();
        });
        let payload = panic::catch_unwind(AssertUnwindSafe(|| lp.run())).unwrap_err();
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(msg.contains("would block"), "{msg}");
        lp.run().unwrap(); // the fiber finishes; the loop works
        let h2 = lp.spawn(|| 8);
        lp.run().unwrap();
        assert_eq!(h2.join().unwrap(), 8);
    }

    // `LoopHandle` calls after `close` (and after a drop) answer `NotConnected`; a closure
    // posted while the loop closes is either run or refused — never silently dropped.
    fn handle_calls_after_close(lp: &Loop) {
        let victim = Loop::builder()
            .backend(match lp.backend().kind {
                BackendKind::Uring => BackendChoice::Uring,
                BackendKind::Epoll => BackendChoice::Epoll,
            })
            .build()
            .unwrap();
        let handle = victim.handle();
        let ran = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let posters: Vec<_> = (0..4)
            .map(|_| {
                let (h, ran, acc, stop) = (handle.clone(), ran.clone(), accepted.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut refused = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let r = ran.clone();
                        match h.post(move |_| {
                            r.fetch_add(1, Ordering::SeqCst);
                        }) {
                            Ok(()) => {
                                acc.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => {
                                assert_eq!(e.kind(), io::ErrorKind::NotConnected);
                                refused += 1;
                                if refused > 100 {
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for _ in 0..20 {
            victim.run_for(Duration::from_millis(1)).unwrap();
        }
        victim.close().unwrap();
        stop.store(true, Ordering::SeqCst);
        for p in posters {
            p.join().unwrap();
        }
        // Closures accepted but not yet run when the loop closed are dropped by `close`,
        // without running: the account is accepted = ran + dropped at close, and nothing runs
        // after close.
        let (acc, r) = (accepted.load(Ordering::SeqCst), ran.load(Ordering::SeqCst));
        assert!(r <= acc, "{r} closures ran, {acc} accepted");
        println!("{acc} posts accepted, {r} ran before close");
        assert!(handle.is_closed());
        assert_eq!(handle.post(|_| {}).unwrap_err().kind(), io::ErrorKind::NotConnected);
        assert_eq!(handle.stop().unwrap_err().kind(), io::ErrorKind::NotConnected);
        assert_eq!(handle.spawn(|| 1).unwrap_err().kind(), io::ErrorKind::NotConnected);
        // The same from another thread, for a loop that was dropped rather than closed.
        let dropped = Loop::builder().backend(BackendChoice::Epoll).build().unwrap();
        let h = dropped.handle();
        drop(dropped);
        let kinds = std::thread::spawn(move || {
            [
                h.post(|_| {}).unwrap_err().kind(),
                h.stop().unwrap_err().kind(),
                h.spawn(|| 1).map(drop).unwrap_err().kind(),
            ]
        })
        .join()
        .unwrap();
        assert_eq!(kinds, [io::ErrorKind::NotConnected; 3]);
    }

    // Out-of-range configuration is clamped to what works (never a panic nor a silent
    // change of backend); a zero timeout is refused as std refuses it.
    fn configuration_out_of_range(lp: &Loop) {
        let choice = match lp.backend().kind {
            BackendKind::Uring => BackendChoice::Uring,
            BackendKind::Epoll => BackendChoice::Epoll,
        };
        for b in [
            Loop::builder().ring_entries(0),
            Loop::builder().ring_entries(u32::MAX),
            Loop::builder().cq_entries(0),
            Loop::builder().cq_entries(u32::MAX),
            Loop::builder().pool_threads(0).file_threads(0).stack_size(0),
        ] {
            let l = b.backend(choice).build().unwrap();
            assert_eq!(l.backend().kind, lp.backend().kind);
            // And it works.
            let h = l.spawn(|| {
                fiber::sleep(Duration::from_millis(1));
                1
            });
            l.run().unwrap();
            assert_eq!(h.join().unwrap(), 1);
        }
        let (mut rx, _tx) = fdloop::pipe().unwrap();
        assert_eq!(rx.set_timeout(Some(Duration::ZERO)).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        // Far deadlines are not an overflow.
        let t = lp.start_timer(Timer::after(Duration::MAX), |_, _| panic!("fired"));
        let p = lp.start_timer(Timer::every(Duration::MAX), |_, _| panic!("fired"));
        lp.run_for(Duration::from_millis(2)).unwrap();
        lp.stop_timer(t).unwrap();
        lp.stop_timer(p).unwrap();
        // A stack too large to map is an error that says why.
        let e = fiber::Builder::new().stack_size(1 << 46).spawn_on(lp, || 1).map(drop).unwrap_err();
        // Beyond 1 GiB the size is refused up front; below that, a failed mapping says ENOMEM.
        assert!(
            matches!(e.kind(), io::ErrorKind::InvalidInput | io::ErrorKind::OutOfMemory),
            "{e}"
        );
        assert!(e.to_string().contains("fiber stack"), "{e}");
    }

    // A full thread-pool queue answers `WouldBlock`; every job accepted before runs its
    // callback exactly once.
    fn thread_pool_queue_full(lp: &Loop) {
        let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let small = Loop::builder()
            .backend(match lp.backend().kind {
                BackendKind::Uring => BackendChoice::Uring,
                BackendKind::Epoll => BackendChoice::Epoll,
            })
            .pool_threads(1)
            .build()
            .unwrap();
        let done = Rc::new(Cell::new(0usize));
        let mut accepted = 0usize;
        let refused = loop {
            let g = gate.clone();
            let d = done.clone();
            let r = small.spawn_blocking(
                move || {
                    let (m, c) = &*g;
                    let mut open = m.lock().unwrap();
                    while !*open {
                        open = c.wait(open).unwrap();
                    }
                },
                move |_, res| {
                    res.unwrap();
                    d.set(d.get() + 1);
                },
            );
            match r {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
            assert!(accepted <= fdloop::QUEUE_CAPACITY + 64, "the queue never filled");
        };
        assert_eq!(refused.kind(), io::ErrorKind::WouldBlock);
        assert!(accepted >= fdloop::QUEUE_CAPACITY);
        {
            let (m, c) = &*gate;
            *m.lock().unwrap() = true;
            c.notify_all();
        }
        let start = Instant::now();
        while done.get() < accepted {
            assert!(start.elapsed() < LIMIT, "{} of {accepted} pool callbacks", done.get());
            small.run_for(Duration::from_millis(5)).unwrap();
        }
        small.run().unwrap();
        assert_eq!(done.get(), accepted, "a pool callback ran twice");
        small.close().unwrap();
    }
}

// =============================================================================================
// Known divergences (bugs), kept as tests
// =============================================================================================

/// `read` with an empty buffer on a socket: `read(2)` answers 0 at once.
fn read_zero_from_an_idle_socket(lp: &Loop) {
    let log: Log = Rc::default();
    let (a, _b) = StdUnixStream::pair().unwrap();
    lp.read(&a, Vec::new(), record(&log, "read 0 from an idle socket"));
    let start = Instant::now();
    while log.borrow().is_empty() && start.elapsed() < Duration::from_secs(2) {
        lp.run_for(Duration::from_millis(5)).unwrap();
    }
    let got = log.borrow().clone();
    lp.detach(&a).unwrap();
    lp.run().unwrap();
    assert_eq!(
        got,
        vec![("read 0 from an idle socket", Ok(0))],
        "{}",
        lp.backend()
    );
}

/// `read_at`/`write_at` at offset `u64::MAX` (`-1` as a signed offset): `EINVAL`, as
/// `pread(2)`/`pwrite(2)` answer, and the file is left alone.
fn offset_u64_max(lp: &Loop) {
    let log: Log = Rc::default();
    let path = common::temp_path("bad-offset-max");
    std::fs::write(&path, b"0123456789").unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    lp.read_at(&f, vec![0; 4], u64::MAX, record(&log, "read_at u64::MAX"));
    lp.write_at(
        &f,
        b"ZZ".to_vec(),
        u64::MAX,
        record(&log, "write_at u64::MAX"),
    );
    let got = settle(lp, &log, 2);
    let contents = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        contents,
        b"0123456789",
        "{}: a write at u64::MAX changed the file",
        lp.backend()
    );
    for (what, res) in got {
        assert_eq!(res, Err(Some(libc::EINVAL)), "{}: {what}", lp.backend());
    }
}

/// `accept` on a connected (not listening) socket: `accept4(2)` answers `EINVAL` at once.
fn accept_on_a_connected_socket(lp: &Loop) {
    let log: Log = Rc::default();
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let client = StdStream::connect(addr_of(&listener)).unwrap();
    let _server = listener.accept().unwrap();
    lp.accept(&client, record_accept(&log, "accept on a connected socket"));
    let start = Instant::now();
    while log.borrow().is_empty() && start.elapsed() < Duration::from_secs(2) {
        lp.run_for(Duration::from_millis(5)).unwrap();
    }
    let got = log.borrow().clone();
    lp.detach(&client).unwrap();
    lp.run().unwrap();
    assert_eq!(
        got,
        vec![("accept on a connected socket", Err(Some(libc::EINVAL)))],
        "{}",
        lp.backend()
    );
}

fn with_loop(choice: BackendChoice, f: fn(&Loop)) {
    if let Some(lp) = common::new_loop(choice) {
        f(&lp);
    }
}

mod read_zero_from_an_idle_socket {
    use super::*;

    #[test]
    fn uring() {
        with_loop(BackendChoice::Uring, read_zero_from_an_idle_socket);
    }

    #[test]
    fn epoll() {
        with_loop(BackendChoice::Epoll, read_zero_from_an_idle_socket);
    }
}

mod accept_on_a_connected_socket {
    use super::*;

    #[test]
    fn uring() {
        with_loop(BackendChoice::Uring, accept_on_a_connected_socket);
    }

    #[test]
    fn epoll() {
        with_loop(BackendChoice::Epoll, accept_on_a_connected_socket);
    }
}

mod offset_u64_max {
    use super::*;

    #[test]
    fn uring() {
        with_loop(BackendChoice::Uring, offset_u64_max);
    }

    #[test]
    fn epoll() {
        with_loop(BackendChoice::Epoll, offset_u64_max);
    }
}

/// A stack size whose page rounding overflows is an error, like any unmappable size.
#[test]
fn stack_size_that_overflows_is_an_error() {
    let lp = Loop::new().unwrap();
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        fiber::Builder::new()
            .stack_size(usize::MAX)
            .spawn_on(&lp, || 1)
            .map(drop)
    }));
    let e = r.expect("spawn_on panicked").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
}
