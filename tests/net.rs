//! fdloop::net on both backends, on real sockets: a 1,000-connection TCP echo, std::io adapters,
//! resets, EPIPE, timeouts, connect_timeout, shutdown, UDP, Unix streams and datagrams, fd
//! passing, zero-length I/O, SO_REUSEPORT, peek, and the panic outside a fiber.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::temp_path;
use fdloop::net::{
    Shutdown, TcpListener, TcpStream, UdpSocket, UnixDatagram, UnixListener, UnixStream,
};
use fdloop::{fiber, pipe, Loop, PipeReader};

/// Raises the soft fd limit to the hard one (the 1,000-connection test needs ~2,000 fds per
/// backend, and both backends' tests may run at once).
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: (FFI) `lim` is a live rlimit for the kernel to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: (FFI) `lim` is a valid rlimit; raising the soft limit up to the hard one is
        // allowed.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

fn local_listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// A connected TCP pair, made inside a fiber: (client, server side).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let (l, addr) = local_listener();
    let accepting = fiber::spawn(move || l.accept().unwrap().0);
    let client = TcpStream::connect(addr).unwrap();
    (client, accepting.join().unwrap())
}

/// Echoes until end-of-file; returns the byte count.
fn echo(mut s: impl Read + Write) -> usize {
    let mut buf = [0u8; 2048];
    let mut total = 0;
    loop {
        match s.read(&mut buf).unwrap() {
            0 => return total,
            n => {
                s.write_all(&buf[..n]).unwrap();
                total += n;
            }
        }
    }
}

fn cloexec(fd: &impl AsRawFd) -> bool {
    // SAFETY: (FFI) F_GETFD takes no pointer.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    flags & libc::FD_CLOEXEC != 0
}

fn nonblocking(fd: &impl AsRawFd) -> bool {
    // SAFETY: (FFI) F_GETFL takes no pointer.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    flags & libc::O_NONBLOCK != 0
}

backend_tests! {
    fn a_thousand_fibers_echo_over_tcp(lp: &Loop) {
        raise_fd_limit();
        const CLIENTS: usize = 1000;
        const ROUNDS: usize = 5;
        let (listener, addr) = local_listener();
        let served = Rc::new(Cell::new(0usize));
        let s = served.clone();
        lp.spawn(move || {
            let mut conns = Vec::new();
            for conn in listener.incoming().take(CLIENTS) {
                let conn = conn.unwrap();
                let s = s.clone();
                conns.push(fiber::spawn(move || {
                    let n = echo(conn);
                    s.set(s.get() + 1);
                    n
                }));
            }
            conns.into_iter().map(|c| c.join().unwrap()).sum::<usize>()
        });
        let ok = Rc::new(Cell::new(0usize));
        for i in 0..CLIENTS {
            let ok = ok.clone();
            lp.spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                for round in 0..ROUNDS {
                    let msg = format!("client {i:04} says hello, round {round}\n").repeat(round + 1);
                    s.write_all(msg.as_bytes()).unwrap();
                    let mut back = vec![0u8; msg.len()];
                    s.read_exact(&mut back).unwrap();
                    assert_eq!(back, msg.as_bytes(), "client {i} round {round}");
                }
                ok.set(ok.get() + 1);
            });
        }
        lp.run().unwrap();
        assert_eq!(ok.get(), CLIENTS);
        assert_eq!(served.get(), CLIENTS);
    }

    fn buf_reader_lines_over_a_fiber_stream(lp: &Loop) {
        let h = lp.spawn(|| {
            let (client, server) = tcp_pair();
            fiber::spawn(move || {
                let mut w = &server;
                for i in 0..100 {
                    writeln!(w, "line {i}").unwrap();
                    if i % 10 == 0 {
                        fiber::sleep(Duration::from_micros(200));
                    }
                }
                server.shutdown(Shutdown::Write).unwrap();
            });
            BufReader::new(client).lines().collect::<io::Result<Vec<String>>>().unwrap()
        });
        lp.run().unwrap();
        let lines = h.join().unwrap();
        let expect: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        assert_eq!(lines, expect);
    }

    fn a_peer_reset_mid_read_is_an_error(lp: &Loop) {
        let h = lp.spawn(|| {
            let (mut client, server) = tcp_pair();
            fiber::spawn(move || {
                (&server).write_all(b"partial").unwrap();
                fiber::sleep(Duration::from_millis(5));
                server.set_linger(Some(Duration::ZERO)).unwrap();
                assert_eq!(server.linger().unwrap(), Some(Duration::ZERO));
                drop(server); // RST
            });
            let mut buf = [0u8; 100];
            client.read_exact(&mut buf).unwrap_err()
        });
        lp.run().unwrap();
        let err = h.join().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }

    fn writes_to_a_closed_connection_are_broken_pipe(lp: &Loop) {
        let h = lp.spawn(|| {
            // Our own writing side shut down: EPIPE at once.
            let (mut client, server) = tcp_pair();
            client.shutdown(Shutdown::Write).unwrap();
            let own = client.write(b"x").unwrap_err();
            let own_v = client.write_vectored(&[IoSlice::new(b"x")]).unwrap_err();
            // The peer closed: a reset first (ECONNRESET), then EPIPE.
            let (mut client2, server2) = tcp_pair();
            drop(server2);
            let mut kinds = Vec::new();
            loop {
                match client2.write(&[7u8; 1024]) {
                    Ok(n) => {
                        assert!(n > 0);
                        fiber::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        kinds.push(e.kind());
                        if e.kind() == io::ErrorKind::BrokenPipe {
                            break;
                        }
                    }
                }
            }
            drop(server);
            (own.kind(), own_v.kind(), kinds)
        });
        lp.run().unwrap();
        let (own, own_v, kinds) = h.join().unwrap();
        assert_eq!(own, io::ErrorKind::BrokenPipe);
        assert_eq!(own_v, io::ErrorKind::BrokenPipe);
        for k in &kinds[..kinds.len() - 1] {
            assert_eq!(*k, io::ErrorKind::ConnectionReset);
        }
    }

    fn read_and_write_timeouts_fire_and_the_socket_stays_usable(lp: &Loop) {
        let h = lp.spawn(|| {
            let (mut client, server) = tcp_pair();
            let t = Duration::from_millis(5);
            assert!(client.set_read_timeout(Some(Duration::ZERO)).is_err());
            client.set_read_timeout(Some(t)).unwrap();
            assert_eq!(client.read_timeout().unwrap(), Some(t));
            let mut buf = [0u8; 16];
            let t0 = Instant::now();
            let err = client.read(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
            assert!(t0.elapsed() >= t, "the read timed out early");
            // Still usable: data written later arrives.
            let writer = fiber::spawn(move || {
                fiber::sleep(Duration::from_millis(2));
                (&server).write_all(b"late").unwrap();
                server
            });
            client.set_read_timeout(None).unwrap();
            client.read_exact(&mut buf[..4]).unwrap();
            assert_eq!(&buf[..4], b"late");
            let server = writer.join().unwrap();

            // Write timeout: nobody reads, so the buffers fill up.
            client.set_write_timeout(Some(t)).unwrap();
            assert_eq!(client.write_timeout().unwrap(), Some(t));
            let chunk = vec![0x5a_u8; 64 * 1024];
            let mut sent = 0usize;
            loop {
                let t0 = Instant::now();
                match client.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(e) => {
                        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                        assert!(t0.elapsed() >= t, "the write timed out early");
                        break;
                    }
                }
            }
            // Still usable: once the peer drains, writing goes on, and every byte counted as
            // sent arrives exactly once.
            let reader = fiber::spawn(move || {
                let mut got = 0usize;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match (&server).read(&mut buf).unwrap() {
                        0 => return got,
                        n => {
                            assert!(buf[..n].iter().all(|b| *b == 0x5a));
                            got += n;
                        }
                    }
                }
            });
            client.set_write_timeout(None).unwrap();
            client.write_all(&chunk).unwrap();
            sent += chunk.len();
            client.shutdown(Shutdown::Write).unwrap();
            (sent, reader.join().unwrap())
        });
        lp.run().unwrap();
        let (sent, got) = h.join().unwrap();
        assert_eq!(sent, got);
    }

    fn connect_timeout_against_a_full_backlog(lp: &Loop) {
        // A listener with backlog 0 that never accepts: once its queue holds a connection,
        // further SYNs are dropped and connects wait.
        let listener = std_listener_with_backlog(0);
        let addr = listener.local_addr().unwrap();
        let h = lp.spawn(move || {
            assert_eq!(
                TcpStream::connect_timeout(&addr, Duration::ZERO).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            let t = Duration::from_millis(50);
            let mut queued = Vec::new();
            for _ in 0..64 {
                let t0 = Instant::now();
                match TcpStream::connect_timeout(&addr, t) {
                    Ok(s) => queued.push(s),
                    Err(e) => {
                        assert!(t0.elapsed() >= t, "connect_timeout gave up early");
                        return (queued.len(), Some(e.kind()));
                    }
                }
            }
            (queued.len(), None)
        });
        lp.run().unwrap();
        let (queued, err) = h.join().unwrap();
        println!("connections queued before the timeout: {queued}");
        assert_eq!(err, Some(io::ErrorKind::TimedOut));
        drop(listener);
    }

    fn connect_succeeds_or_is_refused(lp: &Loop) {
        let (listener, addr) = local_listener();
        let closed = {
            let (l, a) = local_listener();
            drop(l);
            a
        };
        let h = lp.spawn(move || {
            let accepted = fiber::spawn(move || listener.accept().map(|(_, peer)| peer));
            let ok = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            assert_eq!(accepted.join().unwrap().unwrap(), ok.local_addr().unwrap());
            assert_eq!(ok.peer_addr().unwrap(), addr);
            // IPv6 too, where the loopback has it.
            if let Ok(l6) = TcpListener::bind("[::1]:0") {
                let a6 = l6.local_addr().unwrap();
                let acc = fiber::spawn(move || l6.accept().unwrap().1);
                let s6 = TcpStream::connect(a6).unwrap();
                assert_eq!(acc.join().unwrap(), s6.local_addr().unwrap());
            }
            let refused = TcpStream::connect(closed).unwrap_err();
            let refused_t = TcpStream::connect_timeout(&closed, Duration::from_secs(5)).unwrap_err();
            (refused.kind(), refused_t.kind())
        });
        lp.run().unwrap();
        let (a, b) = h.join().unwrap();
        assert_eq!(a, io::ErrorKind::ConnectionRefused);
        assert_eq!(b, io::ErrorKind::ConnectionRefused);
    }

    fn a_host_name_is_resolved_off_the_loop_thread(lp: &Loop) {
        use std::net::ToSocketAddrs as _;
        if ("localhost", 0).to_socket_addrs().is_err() {
            eprintln!("skipped: localhost does not resolve here");
            return;
        }
        let (listener, addr) = local_listener();
        let h = lp.spawn(move || {
            fiber::spawn(move || (listener.accept().unwrap(), listener.accept().unwrap()));
            let s = TcpStream::connect(("localhost", addr.port())).unwrap();
            let s2 = TcpStream::connect(format!("localhost:{}", addr.port()));
            (s.peer_addr().unwrap(), s2.map(|_| ()))
        });
        lp.run().unwrap();
        let (peer, second) = h.join().unwrap();
        assert_eq!(peer.port(), addr.port());
        second.unwrap();
    }

    fn shutdown_write_gives_the_peer_eof(lp: &Loop) {
        let h = lp.spawn(|| {
            let (client, server) = tcp_pair();
            let srv = fiber::spawn(move || {
                let mut got = Vec::new();
                (&server).read_to_end(&mut got).unwrap();
                (&server).write_all(b"reply after eof").unwrap();
                got
            });
            (&client).write_all(b"bye").unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            let mut reply = String::new();
            (&client).read_to_string(&mut reply).unwrap();
            (srv.join().unwrap(), reply)
        });
        lp.run().unwrap();
        let (got, reply) = h.join().unwrap();
        assert_eq!(got, b"bye");
        assert_eq!(reply, "reply after eof");
    }

    fn udp_send_to_and_recv_from_between_fibers(lp: &Loop) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let receiver = lp.spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            for _ in 0..10 {
                let (n, from) = a.recv_from(&mut buf).unwrap();
                assert_eq!(from, b_addr);
                got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
                a.send_to(&buf[..n], from).unwrap();
            }
            got
        });
        let sender = lp.spawn(move || {
            let mut echoed = Vec::new();
            let mut buf = [0u8; 64];
            for i in 0..10 {
                b.send_to(format!("datagram {i}").as_bytes(), a_addr).unwrap();
                let (n, from) = b.recv_from(&mut buf).unwrap();
                assert_eq!(from, a_addr);
                echoed.push(String::from_utf8(buf[..n].to_vec()).unwrap());
            }
            echoed
        });
        lp.run().unwrap();
        let expect: Vec<String> = (0..10).map(|i| format!("datagram {i}")).collect();
        assert_eq!(receiver.join().unwrap(), expect);
        assert_eq!(sender.join().unwrap(), expect);
    }

    fn udp_connected_send_recv_peek_and_timeouts(lp: &Loop) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        assert_eq!(a.peer_addr().unwrap(), b.local_addr().unwrap());
        a.set_broadcast(true).unwrap();
        assert!(a.broadcast().unwrap());
        a.set_ttl(33).unwrap();
        assert_eq!(a.ttl().unwrap(), 33);
        let h = lp.spawn(move || {
            b.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            let mut buf = [0u8; 32];
            let t0 = Instant::now();
            let e = b.recv(&mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            assert!(t0.elapsed() >= Duration::from_millis(5));
            assert_eq!(a.send(b"first").unwrap(), 5);
            assert_eq!(a.send(b"").unwrap(), 0); // an empty datagram is a datagram
            assert_eq!(b.peek(&mut buf).unwrap(), 5);
            let (n, from) = b.peek_from(&mut buf).unwrap();
            assert_eq!((n, from), (5, a.local_addr().unwrap()));
            assert_eq!(b.recv(&mut buf).unwrap(), 5);
            assert_eq!(&buf[..5], b"first");
            assert_eq!(b.recv(&mut buf).unwrap(), 0);
            format!("{b:?}")
        });
        lp.run().unwrap();
        assert!(h.join().unwrap().starts_with("UdpSocket"));
    }

    fn unix_stream_echo(lp: &Loop) {
        let path = temp_path("unix-stream");
        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(listener.local_addr().unwrap().as_pathname(), Some(path.as_path()));
        let p = path.clone();
        let server = lp.spawn(move || {
            let (conn, addr) = listener.accept().unwrap();
            assert!(addr.is_unnamed());
            echo(conn)
        });
        let client = lp.spawn(move || {
            let mut s = UnixStream::connect(&p).unwrap();
            assert_eq!(s.peer_addr().unwrap().as_pathname(), Some(p.as_path()));
            let mut out = Vec::new();
            for i in 0..50 {
                let msg = format!("unix message {i}");
                s.write_all(msg.as_bytes()).unwrap();
                let mut back = vec![0; msg.len()];
                s.read_exact(&mut back).unwrap();
                out.push(String::from_utf8(back).unwrap());
            }
            s.shutdown(Shutdown::Write).unwrap();
            assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
            out
        });
        lp.run().unwrap();
        std::fs::remove_file(&path).unwrap();
        let out = client.join().unwrap();
        assert_eq!(out.len(), 50);
        assert_eq!(out[49], "unix message 49");
        assert_eq!(server.join().unwrap(), out.iter().map(String::len).sum::<usize>());
    }

    fn unix_connect_waits_while_the_backlog_is_full(lp: &Loop) {
        // Backlog 0: one connection fits in the queue; the next connect gets EAGAIN from the
        // kernel until the listener accepts.
        let path = temp_path("unix-backlog");
        let std_listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // SAFETY: (FFI) listen(2) on an open socket, to lower its backlog; takes no pointers.
        assert_eq!(unsafe { libc::listen(std_listener.as_raw_fd(), 0) }, 0);
        let listener = UnixListener::from_std(std_listener).unwrap();
        let accepting_from: Rc<Cell<Option<Instant>>> = Rc::default();
        let a = accepting_from.clone();
        lp.spawn(move || {
            fiber::sleep(Duration::from_millis(20));
            a.set(Some(Instant::now()));
            for _ in 0..3 {
                let (conn, _) = listener.accept().unwrap();
                fiber::spawn(move || echo(conn));
            }
        });
        let p = path.clone();
        let h = lp.spawn(move || {
            let mut done = Vec::new();
            let mut conns = Vec::new();
            for _ in 0..3 {
                conns.push(UnixStream::connect(&p).unwrap());
                done.push(Instant::now());
            }
            // Really connected: the echoes come back.
            for (i, s) in conns.iter_mut().enumerate() {
                s.write_all(&[i as u8]).unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).unwrap();
                assert_eq!(usize::from(b[0]), i);
                assert!(s.peer_addr().is_ok());
            }
            done
        });
        lp.run().unwrap();
        std::fs::remove_file(&path).unwrap();
        let done = h.join().unwrap();
        let accepting = accepting_from.get().unwrap();
        assert!(done[1] >= accepting, "the second connect finished before the listener accepted");
    }

    fn unix_stream_on_an_abstract_address(lp: &Loop) {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("fdloop-test-abstract-{}-{:?}", std::process::id(), lp.backend().kind);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        let h = lp.spawn(move || {
            let srv = fiber::spawn(move || echo(listener.accept().unwrap().0));
            let mut s = UnixStream::connect_addr(&addr).unwrap();
            s.write_all(b"abstract").unwrap();
            let mut back = [0u8; 8];
            s.read_exact(&mut back).unwrap();
            drop(s);
            (back, srv.join().unwrap())
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), (*b"abstract", 8));
    }

    fn unix_datagram_echo(lp: &Loop) {
        let (pa, pb) = (temp_path("dgram-a"), temp_path("dgram-b"));
        let a = UnixDatagram::bind(&pa).unwrap();
        let b = UnixDatagram::bind(&pb).unwrap();
        let (pa2, pb2) = (pa.clone(), pb.clone());
        let server = lp.spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..5 {
                let (n, from) = a.recv_from(&mut buf).unwrap();
                assert_eq!(from.as_pathname(), Some(pb2.as_path()));
                a.send_to_addr(&buf[..n], &from).unwrap();
            }
            // An unbound sender has an unnamed address.
            let (n, from) = a.recv_from(&mut buf).unwrap();
            assert!(from.is_unnamed());
            buf[..n].to_vec()
        });
        let client = lp.spawn(move || {
            let mut echoed = Vec::new();
            let mut buf = [0u8; 64];
            for i in 0..5 {
                b.send_to(format!("dgram {i}").as_bytes(), &pa2).unwrap();
                let n = b.recv(&mut buf).unwrap();
                echoed.push(String::from_utf8(buf[..n].to_vec()).unwrap());
            }
            let anon = UnixDatagram::unbound().unwrap();
            anon.connect(&pa2).unwrap();
            anon.send(b"anonymous").unwrap();
            // A connected pair, too.
            let (x, y) = UnixDatagram::pair().unwrap();
            x.send(b"paired").unwrap();
            let n = y.recv(&mut buf).unwrap();
            echoed.push(String::from_utf8(buf[..n].to_vec()).unwrap());
            echoed
        });
        lp.run().unwrap();
        std::fs::remove_file(&pa).unwrap();
        std::fs::remove_file(&pb).unwrap();
        assert_eq!(server.join().unwrap(), b"anonymous");
        let mut expect: Vec<String> = (0..5).map(|i| format!("dgram {i}")).collect();
        expect.push("paired".into());
        assert_eq!(client.join().unwrap(), expect);
    }

    fn scm_rights_passes_a_pipe_between_fibers(lp: &Loop) {
        let (a, b) = UnixStream::pair().unwrap();
        let (rx, mut tx) = pipe().unwrap();
        let (extra1, extra2) = pipe().unwrap();
        lp.spawn(move || {
            assert_eq!(a.send_with_fds(b"fd", &[rx.as_fd()]).unwrap(), 2);
            drop(rx); // the receiver has its own duplicate now
            assert_eq!(
                a.send_with_fds(b"two", &[extra1.as_fd(), extra2.as_fd()]).unwrap(),
                3
            );
            assert_eq!(
                a.send_with_fds(b"", &[extra1.as_fd()]).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
            fiber::sleep(Duration::from_millis(2));
            tx.write_all(b"through the passed fd").unwrap();
        });
        let h = lp.spawn(move || {
            let mut buf = [0u8; 16];
            let mut fds = Vec::new();
            let n = b.recv_with_fds(&mut buf, &mut fds).unwrap();
            assert_eq!(&buf[..n], b"fd");
            assert_eq!(fds.len(), 1);
            assert!(cloexec(&fds[0]), "received fds are close-on-exec");
            let mut passed = PipeReader::from(fds.pop().unwrap());
            let mut more = Vec::new();
            let mut got = 0;
            while got < 3 {
                got += b.recv_with_fds(&mut buf[got..3], &mut more).unwrap();
            }
            assert_eq!(&buf[..3], b"two");
            assert_eq!(more.len(), 2);
            let mut s = String::new();
            passed.read_to_string(&mut s).unwrap();
            s
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), "through the passed fd");
    }

    fn zero_length_reads_and_writes_do_not_wait(lp: &Loop) {
        let h = lp.spawn(|| {
            let (mut client, server) = tcp_pair();
            // Nothing is ever written to `client`: a wait here would never end.
            assert_eq!(client.read(&mut []).unwrap(), 0);
            assert_eq!(client.write(&[]).unwrap(), 0);
            assert_eq!(client.peek(&mut []).unwrap(), 0);
            assert_eq!(client.read_vectored(&mut [IoSliceMut::new(&mut [])]).unwrap(), 0);
            assert_eq!(client.write_vectored(&[IoSlice::new(&[])]).unwrap(), 0);
            let (mut u, _u2) = UnixStream::pair().unwrap();
            assert_eq!(u.read(&mut []).unwrap(), 0);
            assert_eq!(u.write(&[]).unwrap(), 0);
            assert_eq!(u.recv_with_fds(&mut [], &mut Vec::new()).unwrap(), 0);
            drop(server);
        });
        lp.run().unwrap();
        h.join().unwrap();
    }

    fn vectored_io_and_split_halves(lp: &Loop) {
        let h = lp.spawn(|| {
            let (client, server) = tcp_pair();
            let writer = client.try_clone().unwrap();
            // One fiber writes through a clone while another reads through `&TcpStream`.
            let w = fiber::spawn(move || {
                let parts = [IoSlice::new(b"vec"), IoSlice::new(b"tor"), IoSlice::new(b"ed")];
                assert_eq!((&writer).write_vectored(&parts).unwrap(), 8);
                writer.shutdown(Shutdown::Write).unwrap();
            });
            let r = fiber::spawn(move || {
                let (mut a, mut b) = ([0u8; 3], [0u8; 5]);
                let mut bufs = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
                let n = (&server).read_vectored(&mut bufs).unwrap();
                let mut got = [a.as_slice(), b.as_slice()].concat();
                got.truncate(n);
                (&server).read_to_end(&mut got).unwrap();
                got
            });
            w.join().unwrap();
            let got = r.join().unwrap();
            drop(client);
            got
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), b"vectored");
    }

    fn bind_reuseport_twice_on_one_port(lp: &Loop) {
        let a = TcpListener::bind_reuseport("127.0.0.1:0").unwrap();
        let addr = a.local_addr().unwrap();
        let b = TcpListener::bind_reuseport(addr).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        assert_eq!(
            TcpListener::bind(addr).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        const N: usize = 40;
        let counts = Rc::new(RefCell::new([0usize; 2]));
        for (i, l) in [a, b].into_iter().enumerate() {
            let c = counts.clone();
            lp.spawn(move || loop {
                let (conn, _) = l.accept().unwrap();
                c.borrow_mut()[i] += 1;
                fiber::spawn(move || echo(conn));
            });
        }
        lp.spawn(move || {
            let clients: Vec<_> = (0..N)
                .map(|_| {
                    fiber::spawn(move || {
                        let mut s = TcpStream::connect(addr).unwrap();
                        s.write_all(b"r").unwrap();
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).unwrap();
                    })
                })
                .collect();
            for c in clients {
                c.join().unwrap();
            }
            // The acceptors wait forever; stop the loop (closing it unwinds them).
            fiber::with_loop(|lp| lp.stop());
        });
        lp.run().unwrap();
        let counts = *counts.borrow();
        println!("connections per listener: {counts:?}");
        assert_eq!(counts[0] + counts[1], N);
    }

    fn peek_leaves_the_data_queued(lp: &Loop) {
        let h = lp.spawn(|| {
            let (client, server) = tcp_pair();
            (&server).write_all(b"peekaboo").unwrap();
            let mut p = [0u8; 4];
            let n = client.peek(&mut p).unwrap();
            assert!(n > 0 && b"peekaboo".starts_with(&p[..n]));
            let mut all = [0u8; 8];
            (&client).read_exact(&mut all).unwrap();
            let (u1, u2) = UnixStream::pair().unwrap();
            (&u1).write_all(b"unix").unwrap();
            let mut q = [0u8; 4];
            let m = u2.peek(&mut q).unwrap();
            assert_eq!(&q[..m], &b"unix"[..m]);
            (&u2).read_exact(&mut q).unwrap();
            (all, q)
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), (*b"peekaboo", *b"unix"));
    }

    fn adopting_std_sockets_and_raw_fds(lp: &Loop) {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!nonblocking(&std_listener));
        let listener = TcpListener::from_std(std_listener).unwrap();
        assert!(nonblocking(&listener) && cloexec(&listener));
        let addr = listener.local_addr().unwrap();
        let h = lp.spawn(move || {
            let srv = fiber::spawn(move || echo(listener.accept().unwrap().0));
            let s = TcpStream::connect(addr).unwrap();
            assert!(nonblocking(&s) && cloexec(&s));
            s.set_nodelay(true).unwrap();
            assert!(s.nodelay().unwrap());
            assert!(format!("{s:?}").contains("peer"));
            // Through an OwnedFd and back: still the same connection.
            let fd: OwnedFd = s.into();
            let mut s = TcpStream::from(fd);
            s.write_all(b"round trip").unwrap();
            let mut back = [0u8; 10];
            s.read_exact(&mut back).unwrap();
            // A std stream adopted inside a fiber.
            let (u1, u2) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut f1 = UnixStream::from_std(u1).unwrap();
            let mut f2 = UnixStream::from_std(u2).unwrap();
            f1.write_all(b"std").unwrap();
            let mut three = [0u8; 3];
            f2.read_exact(&mut three).unwrap();
            drop(s);
            (back, three, srv.join().unwrap())
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), (*b"round trip", *b"std", 10));
    }
}

/// A listening std socket on 127.0.0.1 with the given backlog.
fn std_listener_with_backlog(backlog: i32) -> std::net::TcpListener {
    // SAFETY: (FFI) socket(2) takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: (FFI) a fresh fd that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: (FFI) `sin` is a valid sockaddr_in of the given length.
    let r = unsafe {
        libc::bind(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
    // SAFETY: (FFI) listen(2) takes no pointers.
    assert_eq!(unsafe { libc::listen(fd, backlog) }, 0);
    std::net::TcpListener::from(owned)
}

#[test]
fn the_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<TcpListener>();
    check::<TcpStream>();
    check::<UdpSocket>();
    check::<UnixListener>();
    check::<UnixStream>();
    check::<UnixDatagram>();
}

#[test]
fn binding_works_outside_fibers() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_ttl(42).unwrap();
    assert_eq!(l.ttl().unwrap(), 42);
    assert!(l.take_error().unwrap().is_none());
    assert!(format!("{l:?}").contains("127.0.0.1"));
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(a.write_timeout().unwrap(), Some(Duration::from_secs(1)));
    assert_eq!(
        a.set_write_timeout(Some(Duration::ZERO))
            .unwrap_err()
            .kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        TcpListener::bind(&[][..]).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}

#[test]
#[should_panic(expected = "must be called inside a fiber")]
fn connect_outside_a_fiber_panics_with_advice() {
    let _ = TcpStream::connect("127.0.0.1:9");
}

#[test]
#[should_panic(expected = "must be called inside a fiber")]
fn a_read_outside_a_fiber_panics_with_advice() {
    let (mut a, _b) = UnixStream::pair().unwrap();
    let _ = a.read(&mut [0u8; 4]);
}
