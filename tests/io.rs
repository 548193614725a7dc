//! Completion I/O with owned buffers on both backends: a callback TCP echo, file offsets,
//! cancellation and detach with reads in flight, close() with work in flight.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use common::{pipe, temp_path, write_fd};
use fdloop::{Loop, Timer};

/// Echoes on `conn` until end-of-file.
fn echo(lp: &Loop, conn: Rc<OwnedFd>, buf: Vec<u8>, done: Rc<Cell<usize>>) {
    let c = conn.clone();
    lp.recv(&*conn, buf, move |lp, n, mut buf| match n {
        Ok(0) | Err(_) => done.set(done.get() + 1),
        Ok(n) => {
            let c2 = c.clone();
            lp.send(&*c, buf.clone(), move |lp, sent, _| {
                assert_eq!(sent.unwrap(), n);
                buf.resize(4096, 0);
                echo(lp, c2, buf, done);
            });
        }
    });
}

backend_tests! {
    fn callback_tcp_echo_server(lp: &Loop) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let done = Rc::new(Cell::new(0));
        const CLIENTS: usize = 8;
        fn accept_loop(lp: &Loop, l: Rc<TcpListener>, left: usize, done: Rc<Cell<usize>>) {
            if left == 0 {
                return;
            }
            let l2 = l.clone();
            lp.accept(&*l, move |lp, r| {
                let (fd, peer) = r.unwrap();
                assert!(peer.unwrap().ip().is_loopback());
                echo(lp, Rc::new(fd), vec![0; 4096], done.clone());
                accept_loop(lp, l2, left - 1, done);
            });
        }
        accept_loop(lp, Rc::new(listener), CLIENTS, done.clone());
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(addr).unwrap();
                    for round in 0..50u32 {
                        let msg = format!("client {i} round {round}");
                        s.write_all(msg.as_bytes()).unwrap();
                        let mut back = vec![0; msg.len()];
                        s.read_exact(&mut back).unwrap();
                        assert_eq!(back, msg.as_bytes());
                    }
                })
            })
            .collect();
        lp.run().unwrap();
        for c in clients {
            c.join().unwrap();
        }
        assert_eq!(done.get(), CLIENTS);
    }

    fn connect_and_refused(lp: &Loop) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let closed: SocketAddr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let results: Rc<RefCell<Vec<Option<i32>>>> = Rc::default();
        let mut socks = Vec::new();
        for target in [addr, closed] {
            // SAFETY: (FFI) socket takes no pointers; the fd is wrapped at once.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            // SAFETY: (FFI) socket returned a fresh fd that nothing else owns.
            let sock: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
            let r = results.clone();
            lp.connect(&sock, target, move |_, res| r.borrow_mut().push(res.err().and_then(|e| e.raw_os_error())));
            socks.push(sock);
        }
        lp.run().unwrap();
        let mut results = results.borrow().clone();
        results.sort();
        assert_eq!(results, vec![None, Some(libc::ECONNREFUSED)]);
    }

    fn file_read_and_write_at_offsets(lp: &Loop) {
        let path = temp_path("io-file");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let file = Rc::new(file);
        let f = file.clone();
        let out: Rc<RefCell<Vec<u8>>> = Rc::default();
        let o = out.clone();
        lp.write_at(&*file, b"0123456789".to_vec(), 0, move |lp, n, _| {
            assert_eq!(n.unwrap(), 10);
            let f2 = f.clone();
            lp.write_at(&*f, b"abc".to_vec(), 20, move |lp, n, _| {
                assert_eq!(n.unwrap(), 3);
                let f3 = f2.clone();
                lp.read_at(&*f2, vec![0; 8], 4, move |lp, n, buf| {
                    assert_eq!(n.unwrap(), 8);
                    o.borrow_mut().extend(&buf);
                    // Past the end: 0 bytes, buffer truncated.
                    let o2 = o.clone();
                    lp.read_at(&*f3, vec![0; 8], 100, move |_, n, buf| {
                        assert_eq!(n.unwrap(), 0);
                        assert!(buf.is_empty());
                        o2.borrow_mut().push(b'|');
                    });
                });
            });
        });
        lp.run().unwrap();
        assert_eq!(&*out.borrow(), b"456789\0\0|");
        assert_eq!(std::fs::read(&path).unwrap().len(), 23);
        std::fs::remove_file(&path).unwrap();
    }

    fn detach_with_reads_in_flight_returns_every_buffer(lp: &Loop) {
        let (r, w) = pipe();
        let returned = Rc::new(RefCell::new(Vec::new()));
        for i in 0..100usize {
            let ret = returned.clone();
            let mut buf = vec![0u8; 64];
            buf[0] = i as u8;
            lp.read(&r, buf, move |_, res, buf| {
                ret.borrow_mut().push((res.map_err(|e| e.raw_os_error()), buf.capacity()));
            });
        }
        lp.run_for(Duration::from_millis(5)).unwrap();
        lp.detach(&r).unwrap();
        lp.run().unwrap();
        let returned = returned.borrow();
        assert_eq!(returned.len(), 100, "every callback runs exactly once");
        for (res, cap) in returned.iter() {
            assert_eq!(*res, Err(Some(libc::ECANCELED)));
            assert!(*cap >= 64, "the buffer came back");
        }
        // The pipe still works after the detach.
        write_fd(&w, b"after");
        let got = Rc::new(RefCell::new(Vec::new()));
        let g = got.clone();
        lp.read(&r, vec![0; 16], move |_, n, buf| {
            n.unwrap();
            *g.borrow_mut() = buf;
        });
        lp.run().unwrap();
        assert_eq!(&*got.borrow(), b"after");
    }

    fn cancel_a_read(lp: &Loop) {
        let (r, _w) = pipe();
        let res = Rc::new(RefCell::new(None));
        let r2 = res.clone();
        let id = lp.read(&r, vec![0; 8], move |_, n, buf| *r2.borrow_mut() = Some((n.map_err(|e| e.raw_os_error()), buf.len())));
        lp.start_timer(Timer::after(Duration::from_millis(2)), move |lp, _| lp.cancel(id).unwrap());
        lp.run().unwrap();
        assert_eq!(*res.borrow(), Some((Err(Some(libc::ECANCELED)), 8)));
        assert_eq!(lp.cancel(id).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    fn errors_reach_the_callback(lp: &Loop) {
        let (r, w) = pipe();
        let errs: Rc<RefCell<Vec<Option<i32>>>> = Rc::default();
        let e = errs.clone();
        lp.recv(&r, vec![0; 8], move |_, n, _| e.borrow_mut().push(n.unwrap_err().raw_os_error()));
        let e = errs.clone();
        lp.read_at(&r, vec![0; 8], 0, move |_, n, _| e.borrow_mut().push(n.unwrap_err().raw_os_error()));
        let e = errs.clone();
        lp.read(-1, vec![0; 8], move |_, n, _| e.borrow_mut().push(n.unwrap_err().raw_os_error()));
        lp.run().unwrap();
        let mut errs = errs.borrow().clone();
        errs.sort();
        let mut want = vec![Some(libc::ENOTSOCK), Some(libc::ESPIPE), Some(libc::EBADF)];
        want.sort();
        assert_eq!(errs, want);
        drop(w);
    }

    fn zero_length_read_and_write(lp: &Loop) {
        let (r, w) = pipe();
        let n = Rc::new(RefCell::new(Vec::new()));
        let n1 = n.clone();
        lp.write(&w, Vec::new(), move |_, res, _| n1.borrow_mut().push(res.unwrap()));
        lp.run().unwrap();
        assert_eq!(*n.borrow(), vec![0]);
        drop(r);
    }
}
