//! Multishot receive into a buffer pool and multishot accept, on both backends, with real
//! sockets: chunks in order, re-arming when a tiny pool runs dry, end of stream, peer reset,
//! cancel and detach mid-stream, exactly one final call. fd accounting: `multishot_fds.rs`.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use fdloop::{BufPool, IoId, Loop};

/// What a receive saw: the bytes, the number of chunks, and its final calls.
#[derive(Default)]
struct Seen {
    data: Vec<u8>,
    chunks: usize,
    /// `Ok(())` for end of stream, or the error kind / errno.
    finals: Vec<Result<(), io::Error>>,
    after_final: usize,
}

fn recorder(seen: &Rc<RefCell<Seen>>) -> impl FnMut(&Loop, io::Result<&[u8]>) + 'static {
    let seen = seen.clone();
    move |_lp, r| {
        let mut s = seen.borrow_mut();
        if !s.finals.is_empty() {
            s.after_final += 1;
        }
        match r {
            Ok(chunk) if !chunk.is_empty() => {
                s.data.extend_from_slice(chunk);
                s.chunks += 1;
            }
            Ok(_) => s.finals.push(Ok(())),
            Err(e) => s.finals.push(Err(e)),
        }
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn errno(r: &Result<(), io::Error>) -> Option<i32> {
    r.as_ref().err().and_then(|e| e.raw_os_error())
}

/// Runs the loop until `done`, bounded (a hang fails the test instead of blocking it).
fn run_until(lp: &Loop, done: impl FnMut() -> bool) {
    common::run_until_within(lp, Duration::from_secs(10), "condition", done);
}

backend_tests! {
    fn chunks_arrive_in_order_then_eof_once(lp: &Loop) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let pool = lp.buffer_pool(8, 256).unwrap();
        assert_eq!((pool.count(), pool.buf_size()), (8, 256));
        let seen = Rc::new(RefCell::new(Seen::default()));
        lp.recv_multishot(&a, &pool, recorder(&seen)).unwrap();
        let data = pattern(100_000);
        let d2 = data.clone();
        let writer = std::thread::spawn(move || {
            for part in d2.chunks(1000) {
                b.write_all(part).unwrap();
            }
        });
        run_until(lp, || seen.borrow().data.len() == data.len());
        writer.join().unwrap();
        run_until(lp, || !seen.borrow().finals.is_empty());
        lp.run_for(Duration::from_millis(10)).unwrap();
        let s = seen.borrow();
        assert_eq!(s.data, data);
        assert!(s.chunks >= data.len() / 256);
        assert_eq!(s.finals.len(), 1);
        assert!(s.finals[0].is_ok(), "end of stream: {:?}", s.finals[0]);
        assert_eq!(s.after_final, 0);
    }

    fn a_tiny_pool_runs_dry_and_is_rearmed_without_loss(lp: &Loop) {
        // Two 4-byte buffers for 64 KiB: the pool runs dry again and again (io_uring ends the
        // multishot request with ENOBUFS each time); the stream must go on, complete and in
        // order, and the callback never sees ENOBUFS.
        let (a, mut b) = UnixStream::pair().unwrap();
        let pool = lp.buffer_pool(2, 4).unwrap();
        let seen = Rc::new(RefCell::new(Seen::default()));
        lp.recv_multishot(&a, &pool, recorder(&seen)).unwrap();
        let data = pattern(64 * 1024);
        let d2 = data.clone();
        let writer = std::thread::spawn(move || b.write_all(&d2).unwrap());
        run_until(lp, || !seen.borrow().finals.is_empty());
        writer.join().unwrap();
        let s = seen.borrow();
        assert_eq!(s.data.len(), data.len());
        assert!(s.data == data, "data lost or reordered");
        assert_eq!(s.finals.len(), 1);
        assert!(s.finals[0].is_ok(), "end of stream, not {:?}", s.finals[0]);
    }

    fn connections_share_one_tiny_pool(lp: &Loop) {
        let pool = lp.buffer_pool(3, 16).unwrap();
        let mut writers = Vec::new();
        let mut seens = Vec::new();
        let mut keep = Vec::new();
        for i in 0..4 {
            let (a, mut b) = UnixStream::pair().unwrap();
            let seen = Rc::new(RefCell::new(Seen::default()));
            lp.recv_multishot(&a, &pool, recorder(&seen)).unwrap();
            let data = pattern(8000 + i * 100);
            let d2 = data.clone();
            writers.push(std::thread::spawn(move || b.write_all(&d2).unwrap()));
            seens.push((seen, data));
            keep.push(a);
        }
        run_until(lp, || seens.iter().all(|(s, _)| !s.borrow().finals.is_empty()));
        for w in writers {
            w.join().unwrap();
        }
        for (s, data) in &seens {
            let s = s.borrow();
            assert!(s.data == *data, "a connection's data was lost or mixed");
            assert_eq!(s.finals.len(), 1);
            assert!(s.finals[0].is_ok());
        }
    }

    fn cancel_mid_stream_ends_with_one_ecanceled(lp: &Loop) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let pool = lp.buffer_pool(4, 64).unwrap();
        let seen = Rc::new(RefCell::new(Seen::default()));
        let id: Rc<Cell<Option<IoId>>> = Rc::default();
        let mut rec = recorder(&seen);
        let (s2, id2) = (seen.clone(), id.clone());
        let got = lp
            .recv_multishot(&a, &pool, move |lp, r| {
                let chunk = matches!(&r, Ok(c) if !c.is_empty());
                rec(lp, r);
                // Cancel from inside the callback, after a few chunks.
                if chunk && s2.borrow().chunks == 3 {
                    lp.cancel(id2.get().unwrap()).unwrap();
                }
            })
            .unwrap();
        id.set(Some(got));
        let stop = Rc::new(Cell::new(false));
        let writer = std::thread::spawn(move || {
            let chunk = [5u8; 64];
            // Until the reader's side is gone (the test closes it).
            while b.write_all(&chunk).is_ok() {
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        run_until(lp, || !seen.borrow().finals.is_empty());
        lp.run_for(Duration::from_millis(20)).unwrap();
        {
            let s = seen.borrow();
            assert_eq!(s.finals.len(), 1);
            assert_eq!(errno(&s.finals[0]), Some(libc::ECANCELED));
            assert_eq!(s.after_final, 0, "called after the final call");
            assert!(lp.cancel(got).is_err(), "the operation is over");
        }
        stop.set(true);
        drop(a);
        writer.join().unwrap();
    }

    fn cancel_while_idle_and_detach(lp: &Loop) {
        let (a, _b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let pool = lp.buffer_pool(4, 64).unwrap();
        let s1 = Rc::new(RefCell::new(Seen::default()));
        let s2 = Rc::new(RefCell::new(Seen::default()));
        let id = lp.recv_multishot(&a, &pool, recorder(&s1)).unwrap();
        lp.recv_multishot(&c, &pool, recorder(&s2)).unwrap();
        lp.run_for(Duration::from_millis(5)).unwrap();
        lp.cancel(id).unwrap();
        lp.detach(&c).unwrap();
        lp.run().unwrap(); // returns: nothing left in flight
        for s in [&s1, &s2] {
            let s = s.borrow();
            assert_eq!(s.finals.len(), 1);
            assert_eq!(errno(&s.finals[0]), Some(libc::ECANCELED));
        }
    }

    fn peer_reset_is_the_final_error(lp: &Loop) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let pool = lp.buffer_pool(4, 64).unwrap();
        let seen = Rc::new(RefCell::new(Seen::default()));
        lp.recv_multishot(&server, &pool, recorder(&seen)).unwrap();
        // Closing `client` then sends RST.
        common::set_linger_zero(&client);
        (&client).write_all(b"last words").unwrap();
        run_until(lp, || seen.borrow().data.len() == 10);
        drop(client);
        run_until(lp, || !seen.borrow().finals.is_empty());
        let s = seen.borrow();
        assert_eq!(s.data, b"last words");
        assert_eq!(s.finals.len(), 1);
        assert_eq!(errno(&s.finals[0]), Some(libc::ECONNRESET));
    }

    fn a_pool_of_another_loop_is_refused(lp: &Loop) {
        let choice = match lp.backend().kind {
            fdloop::BackendKind::Uring => fdloop::BackendChoice::Uring,
            fdloop::BackendKind::Epoll => fdloop::BackendChoice::Epoll,
        };
        let other = Loop::builder().backend(choice).build().unwrap();
        let pool = other.buffer_pool(2, 16).unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        let called = Rc::new(Cell::new(false));
        let c = called.clone();
        let err = lp
            .recv_multishot(&a, &pool, move |_, _| c.set(true))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(lp.buffer_pool(0, 16).is_err());
        assert!(lp.buffer_pool(4, 1 << 20).is_err());
        lp.run().unwrap();
        assert!(!called.get());
    }

    fn accept_multishot_reports_each_connection_then_one_ecanceled(lp: &Loop) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted: Rc<RefCell<Vec<OwnedFd>>> = Rc::default();
        let finals: Rc<RefCell<Vec<io::Error>>> = Rc::default();
        let (acc, fin) = (accepted.clone(), finals.clone());
        let id = lp.accept_multishot(&listener, move |_, r| match r {
            Ok(fd) => acc.borrow_mut().push(fd),
            Err(e) => fin.borrow_mut().push(e),
        });
        let clients: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
        run_until(lp, || accepted.borrow().len() == 5);
        // Each accepted fd is a connected socket whose peer is one of the clients.
        for fd in accepted.borrow().iter() {
            let s = TcpStream::from(fd.try_clone().unwrap());
            let port = s.peer_addr().unwrap().port();
            assert!(clients.iter().any(|c| c.local_addr().unwrap().port() == port));
        }
        assert!(finals.borrow().is_empty());
        lp.cancel(id).unwrap();
        run_until(lp, || !finals.borrow().is_empty());
        lp.run_for(Duration::from_millis(10)).unwrap();
        assert_eq!(finals.borrow().len(), 1);
        assert_eq!(finals.borrow()[0].raw_os_error(), Some(libc::ECANCELED));
    }

    fn accept_multishot_feeds_recv_multishot(lp: &Loop) {
        // An echo-like server on the two new operations: every connection's bytes come back
        // whole.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = lp.buffer_pool(16, 512).unwrap();
        let received: Rc<RefCell<Vec<Rc<RefCell<Seen>>>>> = Rc::default();
        let (p2, r2) = (pool.clone(), received.clone());
        let conns: Rc<RefCell<Vec<OwnedFd>>> = Rc::default();
        let c2 = conns.clone();
        lp.accept_multishot(&listener, move |lp, r| {
            let Ok(fd) = r else { return };
            let seen = Rc::new(RefCell::new(Seen::default()));
            lp.recv_multishot(&fd, &p2, recorder(&seen)).unwrap();
            r2.borrow_mut().push(seen);
            c2.borrow_mut().push(fd);
        });
        let threads: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.write_all(&pattern(5000 + i)).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest).unwrap();
                })
            })
            .collect();
        run_until(lp, || {
            let r = received.borrow();
            r.len() == 4 && r.iter().all(|s| !s.borrow().finals.is_empty())
        });
        let mut sizes: Vec<usize> = received.borrow().iter().map(|s| s.borrow().data.len()).collect();
        sizes.sort();
        assert_eq!(sizes, vec![5000, 5001, 5002, 5003]);
        conns.borrow_mut().clear();
        for t in threads {
            t.join().unwrap();
        }
    }
}

/// `BufPool` is usable from the crate root.
#[allow(dead_code)]
fn pool_type_is_public(_: BufPool) {}

backend_tests! {
    fn a_panicking_callback_stops_its_multishot_receive(lp: &Loop) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let pool = lp.buffer_pool(2, 8).unwrap();
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        lp.recv_multishot(&a, &pool, move |_, _| {
            c.set(c.get() + 1);
            panic!("boom");
        })
        .unwrap();
        b.write_all(b"first").unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for _ in 0..2000 {
                lp.run_for(Duration::from_millis(5)).unwrap();
            }
        }));
        assert!(r.is_err(), "the panic reaches run()");
        // The operation is stopped: later data never reaches the callback, no final call is
        // made, the loop ends, and the pool's buffers are all back (a new receive gets data).
        b.write_all(b"second").unwrap();
        lp.run().unwrap();
        assert_eq!(calls.get(), 1);
        let seen = Rc::new(RefCell::new(Seen::default()));
        lp.recv_multishot(&a, &pool, recorder(&seen)).unwrap();
        drop(b);
        run_until(lp, || !seen.borrow().finals.is_empty());
        assert!(seen.borrow().finals[0].is_ok());
    }
}
