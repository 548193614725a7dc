//! Focused tests of the epoll driver on real kernel objects. The contract suite shared by both
//! drivers lives in `backends/tests/`.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::Epoll;
use crate::test_fds::{pipe, socketpair, write_all};
use crate::{interest, Completion, Config, Op};

fn driver() -> Epoll {
    let config = Config {
        file_threads: 2,
        ..Config::default()
    };
    Epoll::new(&config, "test".into()).expect("epoll driver")
}

/// Waits until `n` completions have arrived (a generous guard turns a hang into a failure).
fn wait_for(d: &mut Epoll, n: usize) -> Vec<Completion> {
    let guard = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(Instant::now() < guard, "hang: got {out:?}");
        d.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
    }
    out
}

/// A completion for `user_data` among `out`.
fn find(out: &[Completion], user_data: u64) -> Completion {
    *out.iter()
        .find(|c| c.user_data == user_data)
        .unwrap_or_else(|| panic!("no completion for {user_data} in {out:?}"))
}

#[test]
fn nop_completes_at_next_wait() {
    let mut d = driver();
    // SAFETY: (I2, I3) Nop references no memory and no fd.
    unsafe { d.push(Op::Nop, 7) };
    assert_eq!(d.in_flight(), 1);
    let mut out = Vec::new();
    d.wait(None, &mut out).unwrap();
    assert_eq!(
        out,
        [Completion {
            user_data: 7,
            result: 0,
            more: false
        }]
    );
    assert_eq!(d.in_flight(), 0);
}

#[test]
fn pipe_read_waits_then_completes() {
    let mut d = driver();
    let (r, w) = pipe(libc::O_NONBLOCK);
    let mut buf = [0u8; 16];
    let op = Op::Read {
        fd: r.as_raw_fd(),
        buf: buf.as_mut_ptr(),
        len: buf.len() as u32,
        offset: None,
    };
    // SAFETY: (I2, I3) `buf` and `r` outlive the operation (it completes below).
    unsafe { d.push(op, 1) };
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty());
    write_all(w.as_raw_fd(), b"hi");
    let out = wait_for(&mut d, 1);
    assert_eq!(out[0].result, 2);
    assert_eq!(&buf[..2], b"hi");
}

#[test]
fn recv_and_send_on_a_socketpair() {
    let mut d = driver();
    let (a, b) = socketpair();
    let mut buf = [0u8; 8];
    let msg = b"ping";
    // SAFETY: (I2, I3) the buffers and sockets outlive both operations (they complete below).
    unsafe {
        d.push(
            Op::Recv {
                fd: a.as_raw_fd(),
                buf: buf.as_mut_ptr(),
                len: 8,
                flags: 0,
            },
            1,
        );
        d.push(
            Op::Send {
                fd: b.as_raw_fd(),
                buf: msg.as_ptr(),
                len: 4,
                flags: 0,
            },
            2,
        );
    }
    let out = wait_for(&mut d, 2);
    assert_eq!(find(&out, 1).result, 4);
    assert_eq!(find(&out, 2).result, 4);
    assert_eq!(&buf[..4], b"ping");
}

#[test]
fn file_pread_pwrite_fsync_on_the_pool() {
    let mut d = driver();
    let path = std::env::temp_dir().join(format!("fdloop-epoll-{}.tmp", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let fd = file.as_raw_fd();
    let data = b"hello";
    // SAFETY: (I2, I3) `data` and `file` outlive the operation (it completes below).
    unsafe {
        d.push(
            Op::Write {
                fd,
                buf: data.as_ptr(),
                len: 5,
                offset: Some(10),
            },
            1,
        )
    };
    assert_eq!(wait_for(&mut d, 1)[0].result, 5);
    // SAFETY: (I2, I3) an fsync references no memory, and `file` outlives the operation (it
    // completes below).
    unsafe {
        d.push(
            Op::Fsync {
                fd,
                datasync: false,
            },
            2,
        )
    };
    assert_eq!(wait_for(&mut d, 1)[0].result, 0);
    let mut buf = [0xffu8; 15];
    let mut tail = [0u8; 4];
    // SAFETY: (I2, I3) the buffers and `file` outlive the operations (they complete below).
    unsafe {
        d.push(
            Op::Read {
                fd,
                buf: buf.as_mut_ptr(),
                len: 15,
                offset: Some(0),
            },
            3,
        );
        d.push(
            Op::Read {
                fd,
                buf: tail.as_mut_ptr(),
                len: 4,
                offset: Some(100),
            },
            4,
        );
    }
    let out = wait_for(&mut d, 2);
    assert_eq!(find(&out, 3).result, 15);
    assert_eq!(&buf[..10], &[0; 10]);
    assert_eq!(&buf[10..], b"hello");
    assert_eq!(find(&out, 4).result, 0, "a read past the end gives 0");
    assert_eq!(d.in_flight(), 0);
}

#[test]
fn cancel_of_a_pending_read_gives_one_ecanceled() {
    let mut d = driver();
    let (r, _w) = pipe(libc::O_NONBLOCK);
    let mut buf = [0u8; 4];
    // SAFETY: (I2, I3) `buf` and `r` outlive the operation (its final completion is awaited below).
    let id = unsafe {
        d.push(
            Op::Read {
                fd: r.as_raw_fd(),
                buf: buf.as_mut_ptr(),
                len: 4,
                offset: None,
            },
            9,
        )
    };
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty());
    assert!(d.cancel(id));
    assert!(d.cancel(id), "its final completion is still to come");
    d.wait(None, &mut out).unwrap();
    assert_eq!(
        out,
        [Completion {
            user_data: 9,
            result: -libc::ECANCELED,
            more: false
        }]
    );
    assert!(!d.cancel(id), "stale after its final completion");
    assert_eq!(d.in_flight(), 0);
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert_eq!(out.len(), 1);
}

#[test]
fn multishot_poll_on_an_eventfd() {
    let mut d = driver();
    // SAFETY: (FFI) eventfd takes no pointers; the fd it returns is owned by nobody else.
    let efd = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
    let op = Op::Poll {
        fd: efd.as_raw_fd(),
        events: interest::READABLE,
        multishot: true,
    };
    // SAFETY: (I3) a poll references no memory, and `efd` outlives the operation (cancelled and
    // awaited below).
    let id = unsafe { d.push(op, 3) };
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty());
    write_all(efd.as_raw_fd(), &1u64.to_ne_bytes());
    for _ in 0..2 {
        // Level-triggered: it reports on every wait while the eventfd is readable.
        out.clear();
        d.wait(None, &mut out).unwrap();
        assert_eq!(
            out,
            [Completion {
                user_data: 3,
                result: interest::READABLE as i32,
                more: true
            }]
        );
    }
    assert!(d.cancel(id));
    out.clear();
    d.wait(None, &mut out).unwrap();
    assert_eq!(
        out,
        [Completion {
            user_data: 3,
            result: -libc::ECANCELED,
            more: false
        }]
    );
    assert_eq!(d.in_flight(), 0);
}

/// A listening TCP socket on 127.0.0.1 and its address.
fn listener(flags: i32) -> (OwnedFd, libc::sockaddr_storage, libc::socklen_t) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    if flags & libc::SOCK_NONBLOCK != 0 {
        listener.set_nonblocking(true).unwrap();
    }
    // SAFETY: (FFI) all-zero is a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let fd = OwnedFd::from(listener);
    // SAFETY: (FFI) `addr` and `len` are live and sized as getsockname is told.
    let r = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &mut len) };
    assert_eq!(r, 0);
    (fd, addr, len)
}

fn tcp_socket(flags: i32) -> OwnedFd {
    // SAFETY: (FFI) socket takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | flags, 0) };
    assert!(fd >= 0);
    // SAFETY: (FFI) `fd` was just returned by socket and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn accept_and_connect_on_loopback() {
    let mut d = driver();
    let (lfd, addr, len) = listener(libc::SOCK_NONBLOCK);
    let client = tcp_socket(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    // SAFETY: (I2, I3) the sockets and `addr` outlive the operations (they complete below).
    unsafe {
        d.push(
            Op::Accept {
                fd: lfd.as_raw_fd(),
                addr: std::ptr::null_mut(),
                addrlen: std::ptr::null_mut(),
                flags: 0,
                multishot: false,
            },
            1,
        );
        d.push(
            Op::Connect {
                fd: client.as_raw_fd(),
                addr: &addr,
                addrlen: len,
            },
            2,
        );
    }
    let out = wait_for(&mut d, 2);
    let accepted = find(&out, 1).result;
    assert!(accepted >= 0, "{out:?}");
    // SAFETY: (FFI) the accepted fd was just returned by the accept and is owned by nobody else.
    drop(unsafe { OwnedFd::from_raw_fd(accepted) });
    assert_eq!(find(&out, 2).result, 0);
}

#[test]
fn multishot_accept_on_a_blocking_listener() {
    let mut d = driver();
    let (lfd, addr, len) = listener(0);
    // SAFETY: (I3) the accept references no memory (null address), and `lfd` outlives the operation
    // (cancelled and awaited below).
    let id = unsafe {
        d.push(
            Op::Accept {
                fd: lfd.as_raw_fd(),
                addr: std::ptr::null_mut(),
                addrlen: std::ptr::null_mut(),
                flags: 0,
                multishot: true,
            },
            1,
        )
    };
    // Blocking clients: their connects run on the pool.
    let clients = [
        tcp_socket(libc::SOCK_CLOEXEC),
        tcp_socket(libc::SOCK_CLOEXEC),
    ];
    for (i, c) in clients.iter().enumerate() {
        let op = Op::Connect {
            fd: c.as_raw_fd(),
            addr: &addr,
            addrlen: len,
        };
        // SAFETY: (I2, I3) the socket and `addr` outlive the operation (it completes below).
        unsafe { d.push(op, 10 + i as u64) };
    }
    let out = wait_for(&mut d, 4);
    assert_eq!(find(&out, 10).result, 0);
    assert_eq!(find(&out, 11).result, 0);
    let accepted: Vec<_> = out.iter().filter(|c| c.user_data == 1).collect();
    assert_eq!(accepted.len(), 2, "{out:?}");
    for c in accepted {
        assert!(c.more && c.result >= 0);
        // SAFETY: (FFI) the accepted fd was just returned by the accept and is owned by nobody
        // else.
        drop(unsafe { OwnedFd::from_raw_fd(c.result) });
    }
    assert!(d.cancel(id));
    let out = wait_for(&mut d, 1);
    assert_eq!((out[0].result, out[0].more), (-libc::ECANCELED, false));
}

#[test]
fn blocking_pipe_never_blocks_the_loop() {
    let mut d = driver();
    let (r, w) = pipe(0);
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    // SAFETY: (I2, I3) the buffers and `r` outlive both operations (completed or cancelled below).
    let (_, second) = unsafe {
        (
            d.push(
                Op::Read {
                    fd: r.as_raw_fd(),
                    buf: a.as_mut_ptr(),
                    len: 8,
                    offset: None,
                },
                1,
            ),
            d.push(
                Op::Read {
                    fd: r.as_raw_fd(),
                    buf: b.as_mut_ptr(),
                    len: 8,
                    offset: None,
                },
                2,
            ),
        )
    };
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty());
    write_all(w.as_raw_fd(), b"abc");
    let out = wait_for(&mut d, 1);
    assert_eq!((out[0].user_data, out[0].result), (1, 3));
    assert_eq!(&a[..3], b"abc");
    // The second read found the pipe empty again and still waits: the loop is not blocked.
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty());

    // A write to a full blocking pipe runs on the pool, not on the loop thread.
    assert!(d.cancel(second));
    assert_eq!(wait_for(&mut d, 1)[0].result, -libc::ECANCELED);
    let big = vec![7u8; 256 * 1024];
    // SAFETY: (I2, I3) `big` and `w` outlive the operation (it completes below).
    unsafe {
        d.push(
            Op::Write {
                fd: w.as_raw_fd(),
                buf: big.as_ptr(),
                len: big.len() as u32,
                offset: None,
            },
            5,
        )
    };
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty());
    let mut sink = std::fs::File::from(r);
    let mut read = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    while read < big.len() {
        read += std::io::Read::read(&mut sink, &mut chunk).unwrap();
    }
    assert_eq!(wait_for(&mut d, 1)[0].result, big.len() as i32);
}

#[test]
fn wait_timeout_returns_ok_and_not_early() {
    let mut d = driver();
    let (r, _w) = pipe(libc::O_NONBLOCK);
    let op = Op::Poll {
        fd: r.as_raw_fd(),
        events: interest::READABLE,
        multishot: false,
    };
    // SAFETY: (I3) a poll references no memory, and `r` outlives the operation (the driver is shut
    // down before it is dropped).
    unsafe { d.push(op, 1) };
    let mut out = Vec::new();
    // epoll_pwait2 (ns), then the epoll_wait fallback (ms rounded up).
    for pwait2 in [true, false] {
        d.pwait2 = pwait2;
        for timeout in [Duration::from_micros(1500), Duration::from_millis(20)] {
            let start = Instant::now();
            d.wait(Some(timeout), &mut out).unwrap();
            assert!(start.elapsed() >= timeout);
            assert!(out.is_empty());
        }
    }
    d.shutdown(&mut out);
    assert_eq!(out[0].result, -libc::ECANCELED);
}

#[test]
fn waker_from_another_thread() {
    let mut d = driver();
    let waker = d.waker();
    let t = std::thread::spawn(move || waker.wake());
    let mut out = Vec::new();
    d.wait(None, &mut out).unwrap();
    assert!(out.is_empty());
    t.join().unwrap();
}

#[test]
fn poll_on_a_regular_file_reports_ready() {
    let mut d = driver();
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let op = Op::Poll {
        fd: file.as_raw_fd(),
        events: interest::READABLE | interest::PRIORITY,
        multishot: false,
    };
    // SAFETY: (I2, I3) `file` outlives the operation (it completes below).
    unsafe { d.push(op, 1) };
    let out = wait_for(&mut d, 1);
    assert_eq!(out[0].result, interest::READABLE as i32);
}

#[test]
fn close_cancels_waiters_then_closes() {
    let mut d = driver();
    let (r, w) = pipe(libc::O_NONBLOCK);
    let fd = r.into_raw_fd();
    let op = Op::Poll {
        fd,
        events: interest::READABLE,
        multishot: false,
    };
    // SAFETY: (I3) the fd stays open until the Close below, which the driver orders after the poll;
    // a poll references no memory.
    unsafe {
        d.push(op, 1);
        d.push(Op::Close { fd }, 2);
    }
    let out = wait_for(&mut d, 2);
    assert_eq!(find(&out, 1).result, -libc::ECANCELED);
    assert_eq!(find(&out, 2).result, 0);
    // The read end is closed when writing to the pipe fails with EPIPE. (Asking whether the fd
    // number is open would race with other tests of this binary, which may reuse the number.)
    // SAFETY: (FFI) the pointer and length describe one valid byte; the test harness ignores
    // SIGPIPE, so the write returns the error.
    let n = unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
    assert_eq!(n, -1, "the read end is still open");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPIPE)
    );
}

#[test]
fn shutdown_finishes_everything() {
    let mut d = driver();
    let (r, _w) = pipe(libc::O_NONBLOCK);
    let mut buf = [0u8; 4];
    // SAFETY: (I2, I3) `buf` and `r` outlive the operations (shutdown awaits their finals).
    unsafe {
        d.push(Op::Nop, 1);
        d.push(
            Op::Read {
                fd: r.as_raw_fd(),
                buf: buf.as_mut_ptr(),
                len: 4,
                offset: None,
            },
            2,
        );
        d.push(
            Op::Fsync {
                fd: r.as_raw_fd(),
                datasync: true,
            },
            3,
        );
    }
    let mut out = Vec::new();
    d.shutdown(&mut out);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out.iter().all(|c| !c.more));
    assert_eq!(find(&out, 2).result, -libc::ECANCELED);
    assert_eq!(d.in_flight(), 0);
}

#[test]
fn blocking_tty_read_waits_for_readiness() {
    let mut d = driver();
    let (mut master, mut slave) = (0, 0);
    // SAFETY: (FFI) both out-pointers are live ints; name, termios and winsize may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: (FFI) both fds were just returned by openpty and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut buf = [0u8; 16];
    // A blocking tty: RWF_NOWAIT is not supported, so the read waits for IN, then reads.
    let op = Op::Read {
        fd: slave.as_raw_fd(),
        buf: buf.as_mut_ptr(),
        len: 16,
        offset: None,
    };
    // SAFETY: (I2, I3) `buf` and `slave` outlive the operation (it completes below).
    unsafe { d.push(op, 1) };
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty());
    write_all(master.as_raw_fd(), b"line\n");
    let out = wait_for(&mut d, 1);
    assert_eq!(out[0].result, 5);
    assert_eq!(&buf[..5], b"line\n");
}

#[test]
fn reads_on_one_fd_complete_in_push_order() {
    let mut d = driver();
    let (r, w) = pipe(libc::O_NONBLOCK);
    let mut a = [0u8; 2];
    let mut b = [0u8; 2];
    // SAFETY: (I2, I3) the buffers and `r` outlive both operations (they complete below).
    unsafe {
        d.push(
            Op::Read {
                fd: r.as_raw_fd(),
                buf: a.as_mut_ptr(),
                len: 2,
                offset: None,
            },
            1,
        );
        write_all(w.as_raw_fd(), b"1234");
        // Data is there now, but the older read goes first.
        d.push(
            Op::Read {
                fd: r.as_raw_fd(),
                buf: b.as_mut_ptr(),
                len: 2,
                offset: None,
            },
            2,
        );
    }
    let out = wait_for(&mut d, 2);
    assert_eq!(out.iter().map(|c| c.user_data).collect::<Vec<_>>(), [1, 2]);
    assert_eq!((&a, &b), (b"12", b"34"));
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> Op {
    Op::Recv {
        fd: fd.as_raw_fd(),
        buf: buf.as_mut_ptr(),
        len: buf.len() as u32,
        flags: 0,
    }
}

const ET: u32 = libc::EPOLLET as u32;

#[test]
fn an_idle_socket_keeps_its_edge_triggered_registration() {
    let mut d = driver();
    let (a, b) = socketpair();
    let fd = a.as_raw_fd();
    let mut buf = [0u8; 8];
    // SAFETY: (I2, I3) `buf` and the sockets outlive the operation, which completes before the next
    // push.
    unsafe { d.push(recv(&a, &mut buf), 1) };
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty());
    let registered = d
        .fds
        .registration(fd)
        .expect("registered while the recv waits");
    assert_ne!(registered & ET, 0, "edge-triggered: {registered:#x}");

    // A short read: the socket is drained, the next recv waits for the next edge.
    write_all(b.as_raw_fd(), b"one");
    assert_eq!(wait_for(&mut d, 1)[0].result, 3);
    assert_eq!(d.fds.registration(fd), Some(registered), "kept while idle");
    // SAFETY: (I2, I3) `buf` and the sockets outlive the operation, which completes before the next
    // push.
    unsafe { d.push(recv(&a, &mut buf), 2) };
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
    write_all(b.as_raw_fd(), b"two");
    assert_eq!(find(&wait_for(&mut d, 1), 2).result, 3);
    assert_eq!(&buf[..3], b"two");

    // Data that arrives while nobody waits is noted, and the next recv takes it.
    write_all(b.as_raw_fd(), b"three");
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    // SAFETY: (I2, I3) `buf` and the sockets outlive the operation, which completes before the next
    // push.
    unsafe { d.push(recv(&a, &mut buf), 3) };
    assert_eq!(find(&wait_for(&mut d, 1), 3).result, 5);
    assert_eq!(&buf[..5], b"three");

    // A read that fills its buffer leaves the rest known to be there.
    write_all(b.as_raw_fd(), b"0123456789");
    // SAFETY: (I2, I3) `buf` and the sockets outlive the operation, which completes before the next
    // push.
    unsafe { d.push(recv(&a, &mut buf), 4) };
    assert_eq!(find(&wait_for(&mut d, 1), 4).result, 8);
    // SAFETY: (I2, I3) `buf` and the sockets outlive the operation, which completes before the next
    // push.
    unsafe { d.push(recv(&a, &mut buf), 5) };
    assert_eq!(find(&wait_for(&mut d, 1), 5).result, 2);
    assert_eq!(&buf[..2], b"89");
    assert_eq!(d.fds.registration(fd), Some(registered));

    // Forgetting the fd removes the registration.
    assert_eq!(d.cancel_fd(fd), 0);
    assert_eq!(d.fds.registration(fd), None);
}

#[test]
fn a_poll_on_an_edge_triggered_fd_stays_level_triggered() {
    let mut d = driver();
    let (a, b) = socketpair();
    let fd = a.as_raw_fd();
    let mut buf = [0u8; 4];
    write_all(b.as_raw_fd(), b"abcdef");
    // SAFETY: (I2, I3) `buf` and the sockets outlive the operation, which completes before the next
    // push.
    unsafe { d.push(recv(&a, &mut buf), 1) };
    assert_eq!(wait_for(&mut d, 1)[0].result, 4);
    // Two bytes are left. Each one-shot poll armed while they are there reports them, even
    // though no new edge comes.
    let poll = Op::Poll {
        fd,
        events: interest::READABLE,
        multishot: false,
    };
    for round in 0..3 {
        // SAFETY: (I3) a poll references no memory, and the socket outlives the poll, which
        // completes before the next push.
        unsafe { d.push(poll, 10 + round) };
        let out = wait_for(&mut d, 1);
        assert_ne!(out[0].result as u32 & interest::READABLE, 0, "{out:?}");
    }
    // SAFETY: (I3) a poll references no memory, and the socket outlives the poll, which completes
    // below.
    unsafe { d.push(poll, 20) };
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    let registered = d.fds.registration(fd).expect("registered");
    assert_eq!(registered & ET, 0, "level-triggered while the poll waits");
    let out = if out.is_empty() {
        wait_for(&mut d, 1)
    } else {
        out
    };
    assert_eq!(
        find(&out, 20).result as u32 & interest::READABLE,
        interest::READABLE
    );
    // SAFETY: (I2, I3) `buf` and the sockets outlive the operation, which completes before the next
    // push.
    unsafe { d.push(recv(&a, &mut buf), 2) };
    assert_eq!(find(&wait_for(&mut d, 1), 2).result, 2);
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    let registered = d.fds.registration(fd).expect("registered");
    assert_ne!(
        registered & ET,
        0,
        "edge-triggered again once no poll waits"
    );
}

#[test]
fn a_read_of_nothing_answers_at_once() {
    let mut d = driver();
    let (a, _b) = socketpair();
    // SAFETY: (I2, I3) a zero-length read references no memory it could write; `a` outlives it.
    unsafe {
        d.push(
            Op::Read {
                fd: a.as_raw_fd(),
                buf: std::ptr::null_mut(),
                len: 0,
                offset: None,
            },
            1,
        )
    };
    let mut out = Vec::new();
    d.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert_eq!(
        out,
        [Completion {
            user_data: 1,
            result: 0,
            more: false
        }]
    );
}
