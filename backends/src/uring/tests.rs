//! Focused tests of the io_uring driver against real kernel objects. The contract suite for
//! both drivers lives in `backends/tests/`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::{is_unavailable, setup, Uring};
use crate::test_fds::{pipe, socketpair, write_all};
use crate::{interest, BackendKind, Completion, Config, Op};

fn ring() -> Uring {
    Uring::new(&Config::default()).expect("io_uring is available on the test machine")
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: (FFI) fcntl F_GETFL and F_SETFL take integer arguments only, on an fd this test owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK), 0);
    }
}

/// Waits until `n` final completions have arrived; returns every completion seen.
fn wait_finals(u: &mut Uring, n: usize) -> Vec<Completion> {
    let mut all = Vec::new();
    while all.iter().filter(|c: &&Completion| !c.more).count() < n {
        u.wait(None, &mut all).unwrap();
    }
    all
}

/// Waits until no further completion comes without outside help.
fn settle(u: &mut Uring, out: &mut Vec<Completion>) {
    u.wait(Some(Duration::ZERO), out).unwrap();
}

#[test]
fn reports_itself() {
    let u = ring();
    assert_eq!(u.info().kind, BackendKind::Uring);
    assert!(
        u.info().reason.starts_with("io_uring available"),
        "{}",
        u.info().reason
    );
}

#[test]
fn nop_round_trip() {
    let mut u = ring();
    // SAFETY: (I2, I3) a Nop references no memory and no fd, so nothing has to stay valid or open
    // until its final completion.
    let id = unsafe { u.push(Op::Nop, 7) };
    assert_eq!(u.in_flight(), 1);
    let out = wait_finals(&mut u, 1);
    assert_eq!(
        out,
        vec![Completion {
            user_data: 7,
            result: 0,
            more: false
        }]
    );
    assert_eq!(u.in_flight(), 0);
    assert!(!u.cancel(id), "a finished operation is not in flight");
}

#[test]
fn pipe_read_waits_then_completes() {
    let mut u = ring();
    let (r, w) = pipe(0);
    let mut buf = [0u8; 16];
    // SAFETY: (I2, I3) `buf` and `r` live until after the read's final completion, awaited below,
    // so the buffer stays valid and the pipe open until then.
    unsafe {
        u.push(
            Op::Read {
                fd: r.as_raw_fd(),
                buf: buf.as_mut_ptr(),
                len: buf.len() as u32,
                offset: None,
            },
            1,
        )
    };
    let mut out = Vec::new();
    u.wait(Some(Duration::from_millis(20)), &mut out).unwrap();
    assert!(out.is_empty(), "nothing was written yet: {out:?}");
    write_all(w.as_raw_fd(), b"hello");
    let out = wait_finals(&mut u, 1);
    assert_eq!(out[0].result, 5);
    assert_eq!(&buf[..5], b"hello");
}

#[test]
fn cancel_pending_read_gives_one_ecanceled() {
    let mut u = ring();
    let (r, _w) = pipe(0);
    let mut buf = [0u8; 8];
    // SAFETY: (I2, I3) `buf` and `r` live until after the read's final completion, awaited below,
    // so the buffer stays valid and the pipe open until then.
    let id = unsafe {
        u.push(
            Op::Read {
                fd: r.as_raw_fd(),
                buf: buf.as_mut_ptr(),
                len: 8,
                offset: None,
            },
            9,
        )
    };
    let mut out = Vec::new();
    settle(&mut u, &mut out);
    assert!(out.is_empty());
    assert!(u.cancel(id));
    assert!(u.cancel(id), "asking twice is harmless");
    let out = wait_finals(&mut u, 1);
    assert_eq!(
        out,
        vec![Completion {
            user_data: 9,
            result: -libc::ECANCELED,
            more: false
        }]
    );
    let mut late = Vec::new();
    settle(&mut u, &mut late);
    assert!(late.is_empty(), "exactly one final completion: {late:?}");
    assert_eq!(u.in_flight(), 0);
}

fn eventfd() -> OwnedFd {
    // SAFETY: (FFI) eventfd takes no pointers; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: (FFI) `fd` is an fd that eventfd just returned and nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn bump(efd: RawFd) {
    write_all(efd, &1u64.to_ne_bytes());
}

fn drain_eventfd(efd: RawFd) {
    let mut v = [0u8; 8];
    // SAFETY: (FFI) `v` is a live 8-byte buffer for the call; `efd` is open.
    unsafe { libc::read(efd, v.as_mut_ptr().cast(), 8) };
}

fn multishot_poll_reports_repeatedly(native: bool) {
    let mut u = ring();
    u.features.multishot_poll &= native;
    let efd = eventfd();
    // SAFETY: (I3) `efd` stays open until after the multishot poll's final completion, awaited
    // below.
    let id = unsafe {
        u.push(
            Op::Poll {
                fd: efd.as_raw_fd(),
                events: interest::READABLE,
                multishot: true,
            },
            3,
        )
    };
    for _ in 0..3 {
        bump(efd.as_raw_fd());
        let mut out = Vec::new();
        while out.is_empty() {
            u.wait(None, &mut out).unwrap();
        }
        drain_eventfd(efd.as_raw_fd());
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].more);
        assert_eq!(out[0].user_data, 3);
        assert!(out[0].result as u32 & interest::READABLE != 0);
    }
    assert!(u.cancel(id));
    let out = wait_finals(&mut u, 1);
    let last = out.last().unwrap();
    assert!(!last.more);
    assert_eq!(last.result, -libc::ECANCELED);
    assert_eq!(u.in_flight(), 0);
}

#[test]
fn multishot_poll_native() {
    multishot_poll_reports_repeatedly(true);
}

#[test]
fn multishot_poll_emulated() {
    multishot_poll_reports_repeatedly(false);
}

#[test]
fn ten_thousand_nops_through_a_tiny_cq() {
    let mut u = Uring::new(&Config {
        cq_entries: Some(8),
        ..Config::default()
    })
    .unwrap();
    assert_eq!(u.ring.params().cq_entries(), 8);
    const N: u64 = 10_000;
    for i in 0..N {
        // SAFETY: (I2, I3) a Nop references no memory and no fd, so nothing has to stay valid or
        // open until its final completion.
        unsafe { u.push(Op::Nop, i) };
    }
    assert_eq!(u.in_flight(), N as usize);
    let mut seen = vec![0u32; N as usize];
    let mut out = Vec::new();
    let mut got = 0;
    while got < N as usize {
        out.clear();
        u.wait(None, &mut out).unwrap();
        assert!(u.in_kernel <= u.limit);
        for c in &out {
            assert_eq!((c.result, c.more), (0, false));
            seen[c.user_data as usize] += 1;
        }
        got += out.len();
    }
    assert!(seen.iter().all(|&n| n == 1));
    assert_eq!(u.in_flight(), 0);
}

#[test]
fn wait_timeout_is_not_early() {
    let mut u = ring();
    let mut out = Vec::new();
    for ms in [1, 30] {
        let d = Duration::from_millis(ms);
        let t = Instant::now();
        u.wait(Some(d), &mut out).unwrap();
        assert!(t.elapsed() >= d);
        assert!(out.is_empty());
    }
    // Zero never blocks and reports nothing here.
    u.wait(Some(Duration::ZERO), &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn waker_ends_an_unbounded_wait() {
    let mut u = ring();
    for _ in 0..3 {
        let waker = u.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            waker.wake();
        });
        let mut out = Vec::new();
        u.wait(None, &mut out).unwrap();
        assert!(out.is_empty(), "wake-ups are not completions");
        t.join().unwrap();
    }
}

#[test]
fn eagain_waits_for_readiness_then_retries() {
    let mut u = ring();
    // Reads carry RWF_NOWAIT: an empty pipe answers -EAGAIN instead of waiting in the kernel.
    u.features.nowait_reads = true;
    let (r, w) = pipe(libc::O_NONBLOCK);
    let mut a = [0u8; 4];
    let mut b = [0u8; 4];
    // SAFETY: (I2, I3) `a`, `b`, `r` and `w` live until after both operations' final completions,
    // awaited below, so the buffers stay valid and the pipe open until then.
    let (_, id_b) = unsafe {
        (
            u.push(
                Op::Read {
                    fd: r.as_raw_fd(),
                    buf: a.as_mut_ptr(),
                    len: 4,
                    offset: None,
                },
                1,
            ),
            u.push(
                Op::Read {
                    fd: r.as_raw_fd(),
                    buf: b.as_mut_ptr(),
                    len: 4,
                    offset: None,
                },
                2,
            ),
        )
    };
    let mut out = Vec::new();
    u.wait(Some(Duration::from_millis(20)), &mut out).unwrap();
    assert!(out.is_empty(), "-EAGAIN is not reported: {out:?}");
    assert!(u.ops.iter().all(|(_, st)| st.step == super::Step::Poll));
    // The second read is cancelled while it waits for readiness.
    assert!(u.cancel(id_b));
    write_all(w.as_raw_fd(), b"data");
    let mut out = wait_finals(&mut u, 2);
    out.sort_by_key(|c| c.user_data);
    assert_eq!(out[0].result, 4);
    assert_eq!(&a, b"data");
    assert_eq!(out[1].result, -libc::ECANCELED);
    assert_eq!(u.in_flight(), 0);
}

#[test]
fn nonblocking_tty_is_driven_by_poll() {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: (FFI) the out-parameters are live ints for openpty to fill; the name, termios and
    // winsize may be null.
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
    // SAFETY: (FFI) openpty just returned both fds and nothing else owns them.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: (FFI) `tio` is a termios (plain old data, all zeroes valid) that tcgetattr fills
    // before cfmakeraw and tcsetattr read it; `slave` is an open tty.
    unsafe {
        let mut tio = std::mem::zeroed::<libc::termios>();
        assert_eq!(libc::tcgetattr(slave.as_raw_fd(), &mut tio), 0);
        libc::cfmakeraw(&mut tio);
        assert_eq!(libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &tio), 0);
    }
    set_nonblocking(slave.as_raw_fd());
    set_nonblocking(master.as_raw_fd());

    let mut u = ring();
    let mut buf = [0u8; 16];
    // SAFETY: (I2, I3) `buf`, `slave` and `master` live until after the final completions, awaited
    // below, so the buffer stays valid and the tty open until then.
    unsafe {
        u.push(
            Op::Read {
                fd: slave.as_raw_fd(),
                buf: buf.as_mut_ptr(),
                len: 16,
                offset: None,
            },
            1,
        )
    };
    assert!(u.ops.iter().all(|(_, st)| st.tty));
    let mut out = Vec::new();
    u.wait(Some(Duration::from_millis(20)), &mut out).unwrap();
    assert!(out.is_empty(), "no input yet: {out:?}");
    write_all(master.as_raw_fd(), b"ping");
    let out = wait_finals(&mut u, 1);
    assert_eq!(out[0].result, 4);
    assert_eq!(&buf[..4], b"ping");

    // A write through the driver (non-blocking tty: poll + write) comes out of the master.
    let msg = b"pong";
    // SAFETY: (I2, I3) `msg` is static; `slave` stays open until after the write's final
    // completion, awaited below.
    unsafe {
        u.push(
            Op::Write {
                fd: slave.as_raw_fd(),
                buf: msg.as_ptr(),
                len: 4,
                offset: None,
            },
            2,
        )
    };
    let out = wait_finals(&mut u, 1);
    assert_eq!(out[0].result, 4);
    let mut back = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        // SAFETY: (FFI) `back[got..]` is a live buffer of `4 - got` bytes for the call; `master` is
        // open.
        let n = unsafe { libc::read(master.as_raw_fd(), back[got..].as_mut_ptr().cast(), 4 - got) };
        if n > 0 {
            got += n as usize;
        } else {
            std::thread::yield_now();
        }
    }
    assert_eq!(&back, msg);
    assert_eq!(u.cancel_fd(slave.as_raw_fd()), 0);
}

fn listener() -> (std::net::TcpListener, std::net::SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

fn multishot_accept(native: bool, with_addr: bool) {
    let mut u = ring();
    u.features.multishot_accept &= native;
    let (l, addr) = listener();
    let mut peer: libc::sockaddr_storage =
        // SAFETY: (FFI) sockaddr_storage is plain old data for which all zeroes is a valid value.
        unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let (paddr, plen) = if with_addr {
        (&mut peer as *mut _, &mut len as *mut _)
    } else {
        (std::ptr::null_mut(), std::ptr::null_mut())
    };
    // SAFETY: (I2, I3) `l`, `peer` and `len` live until after the accept's final completion,
    // awaited below, so the address buffers stay valid and the listener open until then.
    let id = unsafe {
        u.push(
            Op::Accept {
                fd: l.as_raw_fd(),
                addr: paddr,
                addrlen: plen,
                flags: 0,
                multishot: true,
            },
            5,
        )
    };
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(std::net::TcpStream::connect(addr).unwrap());
        let mut out = Vec::new();
        while out.is_empty() {
            u.wait(None, &mut out).unwrap();
        }
        for c in &out {
            assert!(c.more && c.result >= 0, "{c:?}");
            // SAFETY: (FFI) `c.result` is an fd that the accept just returned and nothing else
            // owns.
            let fd = unsafe { OwnedFd::from_raw_fd(c.result) };
            // SAFETY: (FFI) F_GETFD takes no pointer; `fd` is open.
            let fdflags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert!(fdflags & libc::FD_CLOEXEC != 0);
        }
        if with_addr {
            assert_eq!(peer.ss_family as i32, libc::AF_INET);
        }
    }
    assert!(u.cancel(id));
    let out = wait_finals(&mut u, 1);
    assert_eq!(out.last().unwrap().result, -libc::ECANCELED);
}

#[test]
fn multishot_accept_native() {
    multishot_accept(true, false);
}

#[test]
fn multishot_accept_emulated() {
    multishot_accept(false, false);
}

#[test]
fn multishot_accept_with_address_is_emulated() {
    multishot_accept(true, true);
}

/// A unix socket bound to `path` (when given) and connected to `to`.
fn unix_client(bind: Option<&std::path::Path>, to: &std::path::Path) -> OwnedFd {
    fn sockaddr(path: &std::path::Path) -> (libc::sockaddr_un, libc::socklen_t) {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: (FFI) sockaddr_un is plain old data for which all zeroes is a valid value.
        let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        a.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        for (d, s) in a.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        (a, len as libc::socklen_t)
    }
    // SAFETY: (FFI) socket takes no pointers; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    // SAFETY: (FFI) `fd` is an fd that socket just returned and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(path) = bind {
        let (a, len) = sockaddr(path);
        // SAFETY: (FFI) `a` is a live sockaddr_un of at least `len` bytes for the call; `fd` is an
        // open socket.
        let r = unsafe { libc::bind(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
        assert_eq!(r, 0);
    }
    let (a, len) = sockaddr(to);
    // SAFETY: (FFI) `a` is a live sockaddr_un of at least `len` bytes for the call; `fd` is an open
    // socket.
    let r = unsafe { libc::connect(fd.as_raw_fd(), (&a as *const libc::sockaddr_un).cast(), len) };
    assert_eq!(r, 0);
    fd
}

#[test]
fn multishot_accept_resets_the_address_length() {
    let dir = std::env::temp_dir().join(format!("fdloop-uring-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let server = dir.join("server");
    let named = dir.join("named-client");
    let l = std::os::unix::net::UnixListener::bind(&server).unwrap();
    let mut u = ring();
    // SAFETY: (FFI) sockaddr_storage is plain old data for which all zeroes is a valid value.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let cap = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let mut len = cap;
    // SAFETY: (I2, I3) `l`, `peer` and `len` live until after the accept's final completion,
    // awaited below, so the address buffers stay valid and the listener open until then.
    let id = unsafe {
        u.push(
            Op::Accept {
                fd: l.as_raw_fd(),
                addr: &mut peer,
                addrlen: &mut len,
                flags: 0,
                multishot: true,
            },
            5,
        )
    };
    let mut keep = Vec::new();
    for bind in [None, Some(named.as_path())] {
        keep.push(unix_client(bind, &server));
        let mut out = Vec::new();
        while out.is_empty() {
            u.wait(None, &mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert!(out[0].more && out[0].result >= 0, "{:?}", out[0]);
        // SAFETY: (FFI) `out[0].result` is an fd that the accept just returned and nothing else
        // owns.
        keep.push(unsafe { OwnedFd::from_raw_fd(out[0].result) });
        // SAFETY: (FFI) `peer` is a sockaddr_storage, large and aligned enough for a sockaddr_un,
        // and holds the one the kernel wrote for this report.
        let un = unsafe { &*(&peer as *const libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
        match bind {
            // An unnamed peer: just the family.
            None => assert_eq!(len as usize, std::mem::size_of::<libc::sa_family_t>()),
            Some(path) => {
                use std::os::unix::ffi::OsStrExt;
                let want = path.as_os_str().as_bytes();
                let got: Vec<u8> = un.sun_path[..want.len()].iter().map(|&c| c as u8).collect();
                assert_eq!(
                    got, want,
                    "the whole path fits: *addrlen was reset to {cap}"
                );
            }
        }
    }
    assert!(u.cancel(id));
    let out = wait_finals(&mut u, 1);
    assert_eq!(out.last().unwrap().result, -libc::ECANCELED);
    drop(keep);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn priority_poll_on_a_socket_reports_only_urgent_data() {
    use std::io::Write;
    let mut u = ring();
    let (l, addr) = listener();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    let (server, _) = l.accept().unwrap();
    let poll = |events, multishot| Op::Poll {
        fd: server.as_raw_fd(),
        events,
        multishot,
    };
    // Armed before normal data arrives: the wake-up must not be reported as PRIORITY.
    // SAFETY: (I3) `server` stays open until after the poll's final completion, awaited below.
    unsafe { u.push(poll(interest::READABLE | interest::PRIORITY, false), 1) };
    settle(&mut u, &mut Vec::new());
    client.write_all(b"abc").unwrap();
    let out = wait_finals(&mut u, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].result as u32 & interest::PRIORITY,
        0,
        "{:#x}",
        out[0].result
    );
    assert_ne!(out[0].result as u32 & interest::READABLE, 0);

    // SAFETY: (I3) `server` stays open until after the poll's final completion, awaited below.
    unsafe { u.push(poll(interest::PRIORITY, false), 2) };
    let mut out = Vec::new();
    u.wait(Some(Duration::from_millis(20)), &mut out).unwrap();
    assert!(out.is_empty(), "only normal data is pending: {out:?}");
    // SAFETY: (FFI) the one-byte static buffer is valid for the call; `client` is an open socket.
    let n = unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
    assert_eq!(n, 1);
    let out = wait_finals(&mut u, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].user_data, 2);
    assert_ne!(out[0].result as u32 & interest::PRIORITY, 0);
    let mut late = Vec::new();
    settle(&mut u, &mut late);
    assert!(late.is_empty(), "{late:?}");
    assert_eq!(u.in_flight(), 0);
}

fn cancel_fd_cancels_everything_on_the_fd(by_fd: bool) {
    let mut u = Uring::new(&Config {
        cq_entries: Some(8),
        ..Config::default()
    })
    .unwrap();
    u.features.cancel_fd &= by_fd;
    let (r, _w) = pipe(0);
    let (other, other_w) = pipe(0);
    // More reads than the CQ holds: the kernel keeps the overflow (NODROP).
    let mut bufs = [[0u8; 4]; 12];
    let mut other_buf = [0u8; 4];
    for (i, b) in bufs.iter_mut().enumerate() {
        // SAFETY: (I2, I3) `bufs` and `r` live until after every read's final completion, awaited
        // below, so each buffer stays valid and the pipe open until then.
        unsafe {
            u.push(
                Op::Read {
                    fd: r.as_raw_fd(),
                    buf: b.as_mut_ptr(),
                    len: 4,
                    offset: None,
                },
                i as u64,
            )
        };
    }
    let mut out = Vec::new();
    settle(&mut u, &mut out);
    assert_eq!(u.cancel_fd(r.as_raw_fd()), 12);
    // An operation on another fd is untouched and still completes.
    // SAFETY: (I2, I3) `other_buf` and `other` live until after the read's final completion,
    // awaited below, so the buffer stays valid and the pipe open until then.
    unsafe {
        u.push(
            Op::Read {
                fd: other.as_raw_fd(),
                buf: other_buf.as_mut_ptr(),
                len: 4,
                offset: None,
            },
            100,
        )
    };
    let out = wait_finals(&mut u, 12);
    let mut count = HashMap::new();
    for c in &out {
        assert_eq!((c.result, c.more), (-libc::ECANCELED, false), "{c:?}");
        *count.entry(c.user_data).or_insert(0) += 1;
    }
    assert_eq!(count.len(), 12);
    assert!(count.values().all(|&n| n == 1));
    write_all(other_w.as_raw_fd(), b"abcd");
    let out = wait_finals(&mut u, 1);
    assert_eq!((out[0].user_data, out[0].result), (100, 4));
    assert_eq!(u.in_flight(), 0);
}

#[test]
fn cancel_fd_native() {
    cancel_fd_cancels_everything_on_the_fd(true);
}

#[test]
fn cancel_fd_emulated() {
    cancel_fd_cancels_everything_on_the_fd(false);
}

#[test]
fn shutdown_ends_everything() {
    let mut u = Uring::new(&Config {
        cq_entries: Some(8),
        ..Config::default()
    })
    .unwrap();
    let (r, _w) = pipe(0);
    let efd = eventfd();
    let mut bufs = [[0u8; 4]; 20];
    for (i, b) in bufs.iter_mut().enumerate() {
        // SAFETY: (I2, I3) `bufs` and `r` live until after shutdown, which returns every final
        // completion, so each buffer stays valid and the pipe open until then.
        unsafe {
            u.push(
                Op::Read {
                    fd: r.as_raw_fd(),
                    buf: b.as_mut_ptr(),
                    len: 4,
                    offset: None,
                },
                i as u64,
            )
        };
    }
    // SAFETY: (I3) `efd` lives until after shutdown, which returns the multishot poll's final
    // completion.
    unsafe {
        u.push(
            Op::Poll {
                fd: efd.as_raw_fd(),
                events: interest::READABLE,
                multishot: true,
            },
            99,
        )
    };
    let mut out = Vec::new();
    u.shutdown(&mut out);
    assert_eq!(u.in_flight(), 0);
    let finals: Vec<_> = out.iter().filter(|c| !c.more).collect();
    assert_eq!(finals.len(), 21);
    assert!(finals.iter().all(|c| c.result == -libc::ECANCELED));
    // The driver still works afterwards.
    // SAFETY: (I2, I3) a Nop references no memory and no fd, so nothing has to stay valid or open
    // until its final completion.
    unsafe { u.push(Op::Nop, 1) };
    assert_eq!(wait_finals(&mut u, 1)[0].result, 0);
}

#[test]
fn send_never_raises_sigpipe_and_close_works() {
    let mut u = ring();
    let (a, b) = socketpair();
    drop(b);
    // Owned by no one from here: the Close below closes it.
    let fd = a.into_raw_fd();
    let msg = b"x";
    // SAFETY: (I2, I3) `msg` is static; `fd` is owned by no one and is closed only by the Close
    // pushed after the send's final completion.
    unsafe {
        u.push(
            Op::Send {
                fd,
                buf: msg.as_ptr(),
                len: 1,
                flags: 0,
            },
            1,
        );
    }
    let out = wait_finals(&mut u, 1);
    assert_eq!(out[0].result, -libc::EPIPE);
    // SAFETY: (I3) the send on `fd` has had its final completion, so no operation is in flight
    // on it; the Close takes it over and nothing else owns it.
    unsafe { u.push(Op::Close { fd }, 2) };
    assert_eq!(wait_finals(&mut u, 1)[0].result, 0);
}

#[test]
fn unavailable_errors_keep_their_errno() {
    for (errno, unavailable) in [
        (libc::ENOSYS, true),
        (libc::EPERM, true),
        (libc::EOPNOTSUPP, true),
        (libc::EACCES, true),
        (libc::EINVAL, true),
        (libc::ENOMEM, false),
        (libc::EMFILE, false),
        (libc::ENFILE, false),
    ] {
        let raw = io::Error::from_raw_os_error(errno);
        assert_eq!(is_unavailable(&raw), unavailable, "{raw}");
        let e = setup::setup_error(errno, format!("io_uring_setup failed: {raw}: why"));
        assert_eq!(is_unavailable(&e), unavailable, "{e}");
        assert_eq!(e.kind(), raw.kind());
        assert_eq!(e.to_string(), format!("io_uring_setup failed: {raw}: why"));
        assert_eq!(setup::errno_of(&e), Some(errno));
    }
    let plain = io::Error::other("no errno");
    assert!(!is_unavailable(&plain));
}

/// `RecvMulti` natively (multishot `RECV` from a registered ring) and emulated (poll + a
/// user-space receive into an unregistered ring, as before Linux 6.0): the same reports, in
/// order, an `ENOBUFS` end when the ring runs dry, and end of stream.
fn recv_multi(native: bool) {
    use crate::bufring::unpack;
    use crate::BufRing;
    use std::io::Write;
    let ring_buf = BufRing::new(2, 4).unwrap();
    let mut u = ring();
    u.features.multishot_recv &= native;
    // SAFETY: (I2) `ring_buf` is declared before the driver, so it stays valid and unmoved until
    // the driver's drop, which waits for its operations first.
    unsafe { u.register_buf_ring(&ring_buf) }.unwrap();
    assert_eq!(
        ring_buf.group().is_some(),
        native && u.features.multishot_recv
    );
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let data: Vec<u8> = (0..20).collect();
    b.write_all(&data).unwrap();
    let mut got = Vec::new();
    let mut ends = Vec::new();
    while got.len() < data.len() {
        let op = Op::RecvMulti {
            fd: a.as_raw_fd(),
            ring: &ring_buf,
            flags: 0,
        };
        // SAFETY: (I2, I3) `ring_buf` and `a` live until after the receive's final completion,
        // awaited below, so the buffers stay valid and the socket open until then.
        unsafe { u.push(op, 9) };
        let mut out = Vec::new();
        while !out.iter().any(|c: &Completion| !c.more) {
            if got.len() + out.iter().filter(|c| c.more).count() * 4 == data.len() {
                break;
            }
            u.wait(None, &mut out).unwrap();
        }
        for c in &out {
            if c.more {
                let (bid, len) = unpack(c.result);
                // SAFETY: (I2) the driver handed `bid` out with this report and it has not been
                // recycled, so no receive writes it while `chunk` reads it; it goes back to the
                // ring once, here.
                unsafe {
                    got.extend_from_slice(ring_buf.chunk(bid, len));
                    ring_buf.recycle(bid);
                }
            } else {
                ends.push(c.result);
            }
        }
        if got.len() == data.len() && ends.len() < got.len().div_ceil(8) {
            break;
        }
    }
    assert_eq!(got, data);
    assert!(ends.iter().all(|&r| r == -libc::ENOBUFS), "{ends:?}");
    drop(b);
    let out = wait_finals(&mut u, 1);
    let fin: Vec<_> = out.iter().filter(|c| !c.more).collect();
    assert_eq!(fin.len(), 1);
    assert_eq!(fin[0].result, 0, "end of stream");
    u.unregister_buf_ring(&ring_buf);
}

#[test]
fn recv_multi_native() {
    recv_multi(true);
}

#[test]
fn recv_multi_emulated() {
    recv_multi(false);
}
