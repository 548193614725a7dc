//! The backend contract (see the crate documentation of `fdloop-backends`), tested on both
//! drivers against real kernel objects. Every test runs twice: `name::uring` and `name::epoll`.
//!
//! Run: `cargo test -p fdloop-backends --test contract`.

#[macro_use]
mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::mem::size_of;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::*;
use fdloop_backends::interest::{HUP, PRIORITY, RDHUP, READABLE, WRITABLE};
use fdloop_backends::{Config, Op, Waker};

/// An fd given either as a number or as a reference to something that has one.
trait Fd {
    fn raw(self) -> RawFd;
}

impl Fd for RawFd {
    fn raw(self) -> RawFd {
        self
    }
}

impl<T: AsRawFd> Fd for &T {
    fn raw(self) -> RawFd {
        self.as_raw_fd()
    }
}

fn read_op(fd: impl Fd, buf: &mut [u8], offset: Option<u64>) -> Op {
    Op::Read {
        fd: fd.raw(),
        buf: buf.as_mut_ptr(),
        len: buf.len() as u32,
        offset,
    }
}

fn write_op(fd: impl Fd, buf: &[u8], offset: Option<u64>) -> Op {
    Op::Write {
        fd: fd.raw(),
        buf: buf.as_ptr(),
        len: buf.len() as u32,
        offset,
    }
}

fn poll_op(fd: impl Fd, events: u32, multishot: bool) -> Op {
    Op::Poll {
        fd: fd.raw(),
        events,
        multishot,
    }
}

fn iov(buf: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }
}

fn iov_mut(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

// =============================================================================================
// Plumbing and plain I/O
// =============================================================================================

both_backends!(
    nop,
    user_data_passes_through,
    pipe_read_waits_for_write,
    file_read_write_offsets,
    readv_writev_pipe_and_file,
    recv_send_socketpair,
    send_to_closed_peer_is_epipe,
    sendmsg_recvmsg_pass_fd,
    accept_and_connect,
    multishot_accept_then_cancel,
    connect_to_closed_port_is_refused,
    close_op,
    fsync_and_fdatasync,
);

fn nop(b: Backend) {
    let mut h = b.harness();
    // SAFETY: (I2, I3) Nop references no memory and no fd, so nothing has to stay valid or open
    // until its final completion.
    let t = unsafe { h.push(Op::Nop) };
    assert_eq!(h.run_until_final(t), 0);
}

fn user_data_passes_through(b: Backend) {
    let mut h = b.harness();
    let uds = [
        0,
        1,
        u64::MAX,
        1 << 63,
        u64::from(u32::MAX) + 1,
        0xDEAD_BEEF_CAFE_F00D,
    ];
    let ts: Vec<_> = uds
        .iter()
        // SAFETY: (I2, I3) Nop references no memory and no fd, so nothing has to stay valid or open
        // until its final completion.
        .map(|&ud| unsafe { h.push_as(Op::Nop, ud) })
        .collect();
    h.run_until_idle();
    for t in ts {
        assert_eq!(h.final_of(t), Some(0), "user_data {:#x}", t.ud);
    }
}

fn pipe_read_waits_for_write(b: Backend) {
    let (r, w) = pipe();
    let mut buf = [0u8; 64];
    let msg = b"hello, pipe";
    let mut h = b.harness();
    // SAFETY: (I2, I3) `buf` and `r` are declared before the harness, whose drop waits for the
    // read's final completion, so the buffer stays valid and the pipe open until then.
    let rt = unsafe { h.push(read_op(&r, &mut buf, None)) };
    h.expect_quiet(rt, ms(50), "nothing written yet");
    // SAFETY: (I2, I3) `msg` is static; `w` is declared before the harness, so it stays open until
    // the write's final completion.
    let wt = unsafe { h.push(write_op(&w, msg, None)) };
    h.run_until_all(&[rt, wt]);
    assert_count(h.fin(wt), msg.len(), "write");
    assert_count(h.fin(rt), msg.len(), "read");
    assert_eq!(&buf[..msg.len()], msg);
}

fn file_read_write_offsets(b: Backend) {
    let file = tempfile();
    let fd = file.as_raw_fd();
    let head = b"hello world";
    let tail = b"XY";
    let bang = b"!";
    let mut at6 = [0u8; 5];
    let mut at100 = [0u8; 10];
    let mut past_eof = [0xEEu8; 10];
    let mut seq1 = [0u8; 5];
    let mut seq2 = [0u8; 6];
    let mut h = b.harness();

    // SAFETY: (I2, I3) `head` and `file` are declared before the harness, whose drop waits for
    // every final completion: the buffer stays valid and the file open until the write ends.
    let w1 = unsafe { h.push(write_op(fd, head, Some(0))) };
    // SAFETY: (I2, I3) `tail` and `file` are declared before the harness: the buffer stays valid
    // and the file open until the write's final completion.
    let w2 = unsafe { h.push(write_op(fd, tail, Some(100))) };
    h.run_until_all(&[w1, w2]);
    assert_count(h.fin(w1), head.len(), "pwrite at 0");
    assert_count(h.fin(w2), tail.len(), "pwrite at 100");
    assert_eq!(file.metadata().unwrap().len(), 102);

    // SAFETY: (I2, I3) `at6` and `file` are declared before the harness: the buffer stays valid and
    // the file open until the read's final completion.
    let r1 = unsafe { h.push(read_op(fd, &mut at6, Some(6))) };
    // SAFETY: (I2, I3) `at100` and `file` are declared before the harness: the buffer stays valid
    // and the file open until the read's final completion.
    let r2 = unsafe { h.push(read_op(fd, &mut at100, Some(100))) };
    // SAFETY: (I2, I3) `past_eof` and `file` are declared before the harness: the buffer stays
    // valid and the file open until the read's final completion.
    let r3 = unsafe { h.push(read_op(fd, &mut past_eof, Some(1000))) };
    h.run_until_all(&[r1, r2, r3]);
    assert_count(h.fin(r1), 5, "pread at 6");
    assert_eq!(&at6, b"world");
    assert_count(h.fin(r2), 2, "pread at 100 (2 bytes before EOF)");
    assert_eq!(&at100[..2], b"XY");
    assert_count(h.fin(r3), 0, "pread past EOF");
    assert_eq!(
        past_eof, [0xEE; 10],
        "a read past EOF wrote into the buffer"
    );

    // Positional I/O left the file position at 0: reads without offset start there and move it.
    // SAFETY: (I2, I3) `seq1` and `file` are declared before the harness, and `seq1` is read only
    // after the final completion: the buffer stays valid and the file open until then.
    let s1 = unsafe { h.push(read_op(fd, &mut seq1, None)) };
    assert_count(h.run_until_final(s1), 5, "read at the file position");
    assert_eq!(&seq1, b"hello");
    // SAFETY: (I2, I3) `seq2` and `file` are declared before the harness: the buffer stays valid
    // and the file open until the read's final completion.
    let s2 = unsafe { h.push(read_op(fd, &mut seq2, None)) };
    assert_count(
        h.run_until_final(s2),
        6,
        "read at the advanced file position",
    );
    assert_eq!(&seq2, b" world");
    // SAFETY: (I2, I3) `bang` and `file` are declared before the harness: the buffer stays valid
    // and the file open until the write's final completion.
    let s3 = unsafe { h.push(write_op(fd, bang, None)) };
    assert_count(h.run_until_final(s3), 1, "write at the file position");
    let mut check = [0u8; 1];
    file.read_exact_at(&mut check, 11).unwrap();
    assert_eq!(
        &check, b"!",
        "a write without offset must land at the file position (11)"
    );
}

fn readv_writev_pipe_and_file(b: Backend) {
    let (r, w) = pipe();
    let file = tempfile();
    let (p1, p2, p3) = (*b"ab", *b"cde", *b"f");
    let wiov = [iov(&p1), iov(&p2), iov(&p3)];
    let mut q1 = [0u8; 2];
    let mut q2 = [0u8; 10];
    let riov = [iov_mut(&mut q1), iov_mut(&mut q2)];
    let (f1, f2) = (*b"0123", *b"456789");
    let fwiov = [iov(&f1), iov(&f2)];
    let mut g1 = [0u8; 3];
    let mut g2 = [0u8; 3];
    let friov = [iov_mut(&mut g1), iov_mut(&mut g2)];
    let mut h = b.harness();

    // SAFETY: (I2, I3) `riov`, the buffers `q1` and `q2` it points to, and `r` are declared before
    // the harness, whose drop waits for the readv's final completion.
    let rv = unsafe {
        h.push(Op::Readv {
            fd: r.as_raw_fd(),
            iov: riov.as_ptr(),
            iovcnt: 2,
            offset: None,
        })
    };
    // SAFETY: (I2, I3) `wiov`, the buffers `p1`, `p2` and `p3` it points to, and `w` are declared
    // before the harness, so they stay valid and open until the writev's final completion.
    let wv = unsafe {
        h.push(Op::Writev {
            fd: w.as_raw_fd(),
            iov: wiov.as_ptr(),
            iovcnt: 3,
            offset: None,
        })
    };
    h.run_until_all(&[rv, wv]);
    assert_count(h.fin(wv), 6, "writev on a pipe");
    assert_count(h.fin(rv), 6, "readv on a pipe");
    assert_eq!(&q1, b"ab");
    assert_eq!(&q2[..4], b"cdef");

    // SAFETY: (I2, I3) `fwiov`, the buffers `f1` and `f2` it points to, and `file` are declared
    // before the harness, so they stay valid and open until the writev's final completion.
    let fw = unsafe {
        h.push(Op::Writev {
            fd: file.as_raw_fd(),
            iov: fwiov.as_ptr(),
            iovcnt: 2,
            offset: Some(4096),
        })
    };
    assert_count(h.run_until_final(fw), 10, "pwritev at 4096");
    // SAFETY: (I2, I3) `friov`, the buffers `g1` and `g2` it points to, and `file` are declared
    // before the harness, so they stay valid and open until the readv's final completion.
    let fr = unsafe {
        h.push(Op::Readv {
            fd: file.as_raw_fd(),
            iov: friov.as_ptr(),
            iovcnt: 2,
            offset: Some(4098),
        })
    };
    assert_count(h.run_until_final(fr), 6, "preadv at 4098");
    assert_eq!((&g1, &g2), (b"234", b"567"));
    let mut whole = [0u8; 10];
    file.read_exact_at(&mut whole, 4096).unwrap();
    assert_eq!(&whole, b"0123456789");
}

fn recv_send_socketpair(b: Backend) {
    let (sa, sb) = socketpair();
    let mut buf = [0u8; 64];
    let mut peek = [0u8; 64];
    let msg = b"ping";
    let mut h = b.harness();
    // SAFETY: (I2, I3) `buf` and `sb` are declared before the harness, whose drop waits for the
    // recv's final completion.
    let rt = unsafe {
        h.push(Op::Recv {
            fd: sb.as_raw_fd(),
            buf: buf.as_mut_ptr(),
            len: 64,
            flags: 0,
        })
    };
    h.expect_quiet(rt, ms(30), "nothing sent yet");
    // SAFETY: (I2, I3) `msg` and `sa` are declared before the harness, so the data stays valid and
    // the socket open until the send's final completion.
    let st = unsafe {
        h.push(Op::Send {
            fd: sa.as_raw_fd(),
            buf: msg.as_ptr(),
            len: 4,
            flags: 0,
        })
    };
    h.run_until_all(&[rt, st]);
    assert_count(h.fin(st), 4, "send");
    assert_count(h.fin(rt), 4, "recv");
    assert_eq!(&buf[..4], msg);

    // Flags reach the system call: MSG_PEEK leaves the data in the socket.
    write_all(&sa, b"pong");
    // SAFETY: (I2, I3) `peek` and `sb` are declared before the harness, so the buffer stays valid
    // and the socket open until the peek's final completion.
    let pk = unsafe {
        h.push(Op::Recv {
            fd: sb.as_raw_fd(),
            buf: peek.as_mut_ptr(),
            len: 64,
            flags: libc::MSG_PEEK,
        })
    };
    assert_count(h.run_until_final(pk), 4, "recv(MSG_PEEK)");
    assert_eq!(&peek[..4], b"pong");
    let mut again = [0u8; 8];
    assert_eq!(read_some(&sb, &mut again), 4, "MSG_PEEK consumed the data");
}

fn send_to_closed_peer_is_epipe(b: Backend) {
    let (sa, sb) = socketpair();
    drop(sb);
    let msg = b"into the void";
    let mut h = b.harness();
    // SAFETY: (I2, I3) `msg` is static; `sa` is declared before the harness, so it stays open until
    // the send's final completion.
    let t = unsafe {
        h.push(Op::Send {
            fd: sa.as_raw_fd(),
            buf: msg.as_ptr(),
            len: msg.len() as u32,
            flags: 0,
        })
    };
    assert_errno(h.run_until_final(t), libc::EPIPE, "send to a closed peer");
}

/// Space for one `SCM_RIGHTS` fd, as u64 words so that the control buffer is aligned.
const CMSG_WORDS: usize = 8;

fn sendmsg_recvmsg_pass_fd(b: Backend) {
    let (sa, sb) = socketpair();
    let (pr, pw) = pipe();

    // SAFETY: (FFI) CMSG_SPACE and CMSG_LEN only compute sizes from an integer; they touch no
    // memory.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize,
            libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize,
        )
    };
    assert!(space <= CMSG_WORDS * 8);

    let sdata = *b"x";
    let mut siov = [iov(&sdata)];
    let mut scmsg = [0u64; CMSG_WORDS];
    // SAFETY: (FFI) msghdr is plain old data for which all zeroes is a valid (empty) header.
    let mut smsg: libc::msghdr = unsafe { std::mem::zeroed() };
    smsg.msg_iov = siov.as_mut_ptr();
    smsg.msg_iovlen = 1;
    smsg.msg_control = scmsg.as_mut_ptr().cast();
    smsg.msg_controllen = space as _;
    // SAFETY: (FFI) `smsg` points to the control buffer `scmsg` of `space` bytes, enough for one
    // header and one fd, so CMSG_FIRSTHDR is non-null and CMSG_DATA has room for a RawFd.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&smsg);
        assert!(!c.is_null());
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = len as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), pw.as_raw_fd());
    }

    let mut rdata = [0u8; 8];
    let mut riov = [iov_mut(&mut rdata)];
    let mut rcmsg = [0u64; CMSG_WORDS];
    // SAFETY: (FFI) msghdr is plain old data for which all zeroes is a valid (empty) header.
    let mut rmsg: libc::msghdr = unsafe { std::mem::zeroed() };
    rmsg.msg_iov = riov.as_mut_ptr();
    rmsg.msg_iovlen = 1;
    rmsg.msg_control = rcmsg.as_mut_ptr().cast();
    rmsg.msg_controllen = (CMSG_WORDS * 8) as _;

    let mut h = b.harness();
    // SAFETY: (I2, I3) `rmsg`, the iovec `riov`, the data and control buffers it points to, and
    // `sb` are declared before the harness, whose drop waits for the recvmsg's final completion.
    let rt = unsafe {
        h.push(Op::RecvMsg {
            fd: sb.as_raw_fd(),
            msg: &mut rmsg,
            flags: libc::MSG_CMSG_CLOEXEC,
        })
    };
    // SAFETY: (I2, I3) `smsg`, the iovec `siov`, `sdata`, the control buffer `scmsg` and `sa` are
    // declared before the harness, so they stay valid and open until the sendmsg's final
    // completion.
    let st = unsafe {
        h.push(Op::SendMsg {
            fd: sa.as_raw_fd(),
            msg: &smsg,
            flags: 0,
        })
    };
    h.run_until_all(&[rt, st]);
    assert_count(h.fin(st), 1, "sendmsg");
    assert_count(h.fin(rt), 1, "recvmsg");
    assert_eq!(rdata[0], b'x');
    assert_eq!(
        rmsg.msg_flags & libc::MSG_CTRUNC,
        0,
        "control data truncated"
    );

    // SAFETY: (FFI) the recvmsg has had its final completion: the kernel filled `rcmsg` and set
    // msg_controllen, and the CMSG_* walk stays inside that buffer.
    let got = unsafe {
        let c = libc::CMSG_FIRSTHDR(&rmsg);
        assert!(!c.is_null(), "no control message received");
        assert_eq!(
            ((*c).cmsg_level, (*c).cmsg_type),
            (libc::SOL_SOCKET, libc::SCM_RIGHTS)
        );
        assert_eq!((*c).cmsg_len as usize, len);
        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>())
    };
    let got = own(got);
    assert!(is_cloexec(&got), "MSG_CMSG_CLOEXEC did not reach recvmsg");
    write_all(&got, b"z");
    let mut one = [0u8; 1];
    assert_eq!(read_some(&pr, &mut one), 1);
    assert_eq!(&one, b"z", "the received fd is not the pipe's write end");
}

fn accept_and_connect(b: Backend) {
    let (listener, addr) = tcp_listener();
    let (sa, salen) = sockaddr_of(addr);
    let client = tcp_socket();
    // SAFETY: (FFI) sockaddr_storage is plain old data for which all zeroes is a valid value.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut peerlen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let mut h = b.harness();
    // SAFETY: (I2, I3) `peer`, `peerlen` and `listener` are declared before the harness, whose drop
    // waits for the accept's final completion.
    let at = unsafe {
        h.push(Op::Accept {
            fd: listener.as_raw_fd(),
            addr: &mut peer,
            addrlen: &mut peerlen,
            flags: 0,
            multishot: false,
        })
    };
    // SAFETY: (I2, I3) `sa` and `client` are declared before the harness, so the address stays
    // valid and the socket open until the connect's final completion.
    let ct = unsafe {
        h.push(Op::Connect {
            fd: client.as_raw_fd(),
            addr: &sa,
            addrlen: salen,
        })
    };
    h.run_until_all(&[at, ct]);
    assert_eq!(h.fin(ct), 0, "connect: {}", res(h.fin(ct)));
    let a = h.fin(at);
    assert!(a >= 0, "accept: {}", res(a));
    let accepted = own(a);
    assert!(is_cloexec(&accepted), "accepted fds must be close-on-exec");
    assert_eq!(
        status_flags(&accepted) & libc::O_NONBLOCK,
        0,
        "O_NONBLOCK not asked for"
    );
    assert_eq!(peerlen as usize, size_of::<libc::sockaddr_in>());
    let client = TcpStream::from(client);
    assert_eq!(
        port_of(&peer),
        client.local_addr().unwrap().port(),
        "peer address"
    );
    (&client).write_all(b"hi").unwrap();
    let mut two = [0u8; 2];
    assert_eq!(read_some(&accepted, &mut two), 2);
    assert_eq!(&two, b"hi");

    // Null address, SOCK_NONBLOCK.
    let _c2 = TcpStream::connect(addr).unwrap();
    // SAFETY: (I2, I3) null address pointers reference no memory; `listener` is declared before the
    // harness, so it stays open until the accept's final completion.
    let a2 = unsafe {
        h.push(Op::Accept {
            fd: listener.as_raw_fd(),
            addr: std::ptr::null_mut(),
            addrlen: std::ptr::null_mut(),
            flags: libc::SOCK_NONBLOCK,
            multishot: false,
        })
    };
    let r = h.run_until_final(a2);
    assert!(r >= 0, "accept(SOCK_NONBLOCK): {}", res(r));
    let second = own(r);
    assert_ne!(
        status_flags(&second) & libc::O_NONBLOCK,
        0,
        "SOCK_NONBLOCK ignored"
    );
    assert!(is_cloexec(&second));
}

fn multishot_accept_then_cancel(b: Backend) {
    let (listener, addr) = tcp_listener();
    let mut h = b.harness();
    // SAFETY: (I2, I3) null address pointers reference no memory; `listener` is declared before the
    // harness, so it stays open until the multishot accept's final completion.
    let t = unsafe {
        h.push(Op::Accept {
            fd: listener.as_raw_fd(),
            addr: std::ptr::null_mut(),
            addrlen: std::ptr::null_mut(),
            flags: 0,
            multishot: true,
        })
    };
    h.expect_quiet(t, ms(30), "no client yet");
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    h.run_until("three accepted connections", |h| {
        h.mores(t).len() >= 3 || h.final_of(t).is_some()
    });
    assert_eq!(h.final_of(t), None, "multishot accept ended by itself");
    let accepted: Vec<OwnedFd> = h
        .mores(t)
        .iter()
        .map(|&r| {
            assert!(r >= 0, "multishot accept: {}", res(r));
            own(r)
        })
        .collect();
    assert_eq!(accepted.len(), 3);
    let want: HashSet<u16> = clients
        .iter()
        .map(|c| c.local_addr().unwrap().port())
        .collect();
    let got: HashSet<u16> = accepted
        .iter()
        .map(|fd| {
            assert!(is_cloexec(fd));
            let s = TcpStream::from(fd.try_clone().unwrap());
            s.peer_addr().unwrap().port()
        })
        .collect();
    assert_eq!(got, want, "accepted connections are not the clients'");
    assert!(h.cancel(t), "cancel of a live multishot accept");
    assert_errno(
        h.run_until_final(t),
        libc::ECANCELED,
        "cancelled multishot accept",
    );
}

fn connect_to_closed_port_is_refused(b: Backend) {
    let addr = tcp_listener().1; // the listener is dropped at once: the port is closed
    let (sa, salen) = sockaddr_of(addr);
    let blocking = tcp_socket();
    let nonblocking = tcp_socket();
    set_nonblocking(&nonblocking);
    let mut h = b.harness();
    // SAFETY: (I2, I3) `sa` and `blocking` are declared before the harness, so the address stays
    // valid and the socket open until the connect's final completion.
    let t1 = unsafe {
        h.push(Op::Connect {
            fd: blocking.as_raw_fd(),
            addr: &sa,
            addrlen: salen,
        })
    };
    // SAFETY: (I2, I3) `sa` and `nonblocking` are declared before the harness, so the address stays
    // valid and the socket open until the connect's final completion.
    let t2 = unsafe {
        h.push(Op::Connect {
            fd: nonblocking.as_raw_fd(),
            addr: &sa,
            addrlen: salen,
        })
    };
    h.run_until_all(&[t1, t2]);
    assert_errno(h.fin(t1), libc::ECONNREFUSED, "connect (blocking socket)");
    assert_errno(h.fin(t2), libc::ECONNREFUSED, "connect (O_NONBLOCK socket)");
}

fn close_op(b: Backend) {
    let (r, w) = pipe();
    let mut h = b.harness();
    let rfd = r.into_raw_fd();
    // SAFETY: (I3) `rfd` was taken out of its OwnedFd with into_raw_fd, so nothing else closes or
    // uses it: the Close op owns it and no other op is in flight on it.
    let t = unsafe { h.push(Op::Close { fd: rfd }) };
    assert_eq!(h.run_until_final(t), 0, "close: {}", res(h.fin(t)));
    // The only read end is gone: the write end reports an error.
    assert_ne!(
        poll_now(&w, libc::POLLOUT) & libc::POLLERR,
        0,
        "the pipe's read end is still open"
    );
    // SAFETY: (I3) closing -1 refers to no open fd and touches nothing; no op is in flight on it.
    let bad = unsafe { h.push(Op::Close { fd: -1 }) };
    assert_errno(h.run_until_final(bad), libc::EBADF, "close(-1)");
}

fn fsync_and_fdatasync(b: Backend) {
    let file = tempfile();
    file.write_all_at(&pattern(8192), 0).unwrap();
    let (r, _w) = pipe();
    let mut h = b.harness();
    // SAFETY: (I3) `file` is declared before the harness, so it stays open until the fsync's final
    // completion.
    let f = unsafe {
        h.push(Op::Fsync {
            fd: file.as_raw_fd(),
            datasync: false,
        })
    };
    // SAFETY: (I3) `file` is declared before the harness, so it stays open until the fdatasync's
    // final completion.
    let d = unsafe {
        h.push(Op::Fsync {
            fd: file.as_raw_fd(),
            datasync: true,
        })
    };
    // SAFETY: (I3) `r` is declared before the harness, so it stays open until the fsync's final
    // completion.
    let p = unsafe {
        h.push(Op::Fsync {
            fd: r.as_raw_fd(),
            datasync: false,
        })
    };
    h.run_until_all(&[f, d, p]);
    assert_eq!(h.fin(f), 0, "fsync: {}", res(h.fin(f)));
    assert_eq!(h.fin(d), 0, "fdatasync: {}", res(h.fin(d)));
    assert_errno(h.fin(p), libc::EINVAL, "fsync on a pipe");
}

// =============================================================================================
// Poll
// =============================================================================================

both_backends!(
    poll_readable_pipe,
    poll_writable_socket,
    poll_priority_tcp_urgent_data,
    poll_readable_or_priority_tcp_urgent_data,
    poll_hup_when_writer_closes,
    poll_rdhup_when_peer_shuts_down,
    poll_oneshot_is_level_checked_when_armed,
    poll_multishot_eventfd_then_cancel,
);

fn poll_readable_pipe(b: Backend) {
    let (r, w) = pipe();
    let mut h = b.harness();
    // SAFETY: (I3) `r` is declared before the harness, so it stays open until the poll's final
    // completion.
    let t = unsafe { h.push(poll_op(&r, READABLE, false)) };
    h.expect_quiet(t, ms(30), "empty pipe");
    write_all(&w, b"!");
    let res = h.run_until_final(t);
    assert_poll_bits(res, READABLE, "poll READABLE on a pipe");
    assert_ne!(res as u32 & READABLE, 0);
}

fn poll_writable_socket(b: Backend) {
    let (sa, _sb) = socketpair();
    let mut h = b.harness();
    // SAFETY: (I3) `sa` is declared before the harness, so it stays open until the poll's final
    // completion.
    let t = unsafe { h.push(poll_op(&sa, WRITABLE, false)) };
    let res = h.run_until_final(t);
    assert_poll_bits(res, WRITABLE, "poll WRITABLE on a socket");
    assert_ne!(res as u32 & WRITABLE, 0);
}

fn poll_priority_tcp_urgent_data(b: Backend) {
    let (client, server) = tcp_pair();
    let mut h = b.harness();
    // SAFETY: (I3) `server` is declared before the harness, so it stays open until the poll's final
    // completion.
    let t = unsafe { h.push(poll_op(&server, PRIORITY, false)) };
    (&client).write_all(b"abc").unwrap();
    h.expect_quiet(t, ms(50), "only normal data was sent to a PRIORITY poll");
    // SAFETY: (FFI) the one-byte static buffer is valid for the call; `client` is an open socket.
    let n = unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
    assert_eq!(n, 1, "send(MSG_OOB): {}", std::io::Error::last_os_error());
    let res = h.run_until_final(t);
    assert_poll_bits(res, PRIORITY, "poll PRIORITY after urgent data");
    assert_ne!(res as u32 & PRIORITY, 0);
}

fn poll_readable_or_priority_tcp_urgent_data(b: Backend) {
    let (client, server) = tcp_pair();
    let mut h = b.harness();
    // Normal data: READABLE, and not PRIORITY.
    // SAFETY: (I3) `server` is declared before the harness, so it stays open until the poll's final
    // completion.
    let t = unsafe { h.push(poll_op(&server, READABLE | PRIORITY, false)) };
    h.expect_quiet(t, ms(30), "nothing sent yet");
    (&client).write_all(b"abc").unwrap();
    let res = h.run_until_final(t);
    assert_poll_bits(
        res,
        READABLE | PRIORITY,
        "poll READABLE|PRIORITY after normal data",
    );
    assert_ne!(
        res as u32 & READABLE,
        0,
        "normal data is READABLE: {res:#x}"
    );
    assert_eq!(
        res as u32 & PRIORITY,
        0,
        "normal data reported as urgent: {res:#x}"
    );
    let mut abc = [0u8; 3];
    assert_eq!(read_some(&server, &mut abc), 3);

    // Urgent data: PRIORITY.
    // SAFETY: (I3) `server` is declared before the harness, so it stays open until the poll's final
    // completion.
    let t = unsafe { h.push(poll_op(&server, READABLE | PRIORITY, false)) };
    h.expect_quiet(t, ms(30), "nothing more sent yet");
    // SAFETY: (FFI) the one-byte static buffer is valid for the call; `client` is an open socket.
    let n = unsafe { libc::send(client.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_OOB) };
    assert_eq!(n, 1, "send(MSG_OOB): {}", std::io::Error::last_os_error());
    let res = h.run_until_final(t);
    assert_poll_bits(
        res,
        READABLE | PRIORITY,
        "poll READABLE|PRIORITY after urgent data",
    );
    assert_ne!(
        res as u32 & PRIORITY,
        0,
        "urgent data must be reported as PRIORITY: {res:#x}"
    );
}

fn poll_hup_when_writer_closes(b: Backend) {
    let (r, w) = pipe();
    let mut h = b.harness();
    // Pipes never raise PRIORITY: only the always-reported HUP can end this poll.
    // SAFETY: (I3) `r` is declared before the harness, so it stays open until the poll's final
    // completion.
    let t = unsafe { h.push(poll_op(&r, PRIORITY, false)) };
    h.expect_quiet(t, ms(30), "writer still open");
    drop(w);
    let res = h.run_until_final(t);
    assert_poll_bits(res, PRIORITY, "poll after the writer closed");
    assert_ne!(res as u32 & HUP, 0, "HUP is always reported: got {res:#x}");
}

fn poll_rdhup_when_peer_shuts_down(b: Backend) {
    let (sa, sb) = socketpair();
    let mut h = b.harness();
    // SAFETY: (I3) `sa` is declared before the harness, so it stays open until the poll's final
    // completion.
    let t = unsafe { h.push(poll_op(&sa, RDHUP, false)) };
    h.expect_quiet(t, ms(30), "peer still open");
    // SAFETY: (FFI) shutdown takes no pointers; `sb` is an open socket.
    assert_eq!(unsafe { libc::shutdown(sb.as_raw_fd(), libc::SHUT_WR) }, 0);
    let res = h.run_until_final(t);
    assert_poll_bits(res, RDHUP, "poll RDHUP after the peer's SHUT_WR");
    assert_ne!(res as u32 & RDHUP, 0);
}

fn poll_oneshot_is_level_checked_when_armed(b: Backend) {
    let (r, w) = pipe();
    write_all(&w, b"already here");
    let mut h = b.harness();
    // SAFETY: (I3) `r` is declared before the harness, so it stays open until the poll's final
    // completion.
    let t = unsafe { h.push(poll_op(&r, READABLE, false)) };
    // Non-blocking waits only: an already readable pipe must not need a wake-up.
    for _ in 0..10 {
        if h.final_of(t).is_some() {
            break;
        }
        h.wait_once(Some(Duration::ZERO));
    }
    let res = h
        .final_of(t)
        .expect("a poll on an already readable pipe did not complete at once");
    assert_poll_bits(res, READABLE, "poll READABLE on a readable pipe");
    assert_ne!(res as u32 & READABLE, 0);
}

fn poll_multishot_eventfd_then_cancel(b: Backend) {
    let efd = eventfd();
    let mut h = b.harness();
    // SAFETY: (I3) `efd` is declared before the harness, so it stays open until the multishot
    // poll's final completion.
    let t = unsafe { h.push(poll_op(&efd, READABLE, true)) };
    h.expect_quiet(t, ms(30), "eventfd counter is 0");
    for round in 1..=3 {
        let before = h.mores(t).len();
        eventfd_add(&efd);
        h.run_until("a report after an eventfd write", |h| {
            h.mores(t).len() > before || h.final_of(t).is_some()
        });
        assert_eq!(
            h.final_of(t),
            None,
            "multishot poll ended by itself (round {round})"
        );
        for &r in h.mores(t) {
            assert_poll_bits(r, READABLE, "multishot poll report");
            assert_ne!(r as u32 & READABLE, 0);
        }
        assert_eq!(eventfd_take(&efd), 1);
        let after = h.mores(t).len();
        h.pump(ms(30));
        assert_eq!(
            h.mores(t).len(),
            after,
            "reports while the eventfd was not readable (round {round})"
        );
    }
    assert!(h.cancel(t));
    assert_errno(
        h.run_until_final(t),
        libc::ECANCELED,
        "cancelled multishot poll",
    );
}

// =============================================================================================
// Cancellation
// =============================================================================================

both_backends!(
    cancel_pending_read,
    cancel_stale_id_is_false,
    cancel_fd_ends_every_op_on_the_fd,
    cancelled_read_leaves_buffer_and_data_alone,
    cancel_fd_then_fd_number_reuse,
    cancel_racing_data_is_consistent,
    dropping_the_driver_ends_pending_ops,
);

fn cancel_pending_read(b: Backend) {
    let (r, _w) = pipe();
    let mut buf = [0u8; 16];
    let mut h = b.harness();
    // SAFETY: (I2, I3) `buf` and `r` are declared before the harness, so the buffer stays valid and
    // the pipe open until the read's final completion.
    let t = unsafe { h.push(read_op(&r, &mut buf, None)) };
    h.expect_quiet(t, ms(20), "empty pipe");
    assert!(h.cancel(t), "cancel of a pending read");
    assert_errno(h.run_until_final(t), libc::ECANCELED, "cancelled read");
    h.pump(ms(20));
    assert!(
        !h.cancel(t),
        "cancel after the final completion must be false"
    );
}

fn cancel_stale_id_is_false(b: Backend) {
    let (r, _w) = pipe();
    let mut buf = [0u8; 16];
    let mut h = b.harness();
    // SAFETY: (I2, I3) Nop references no memory and no fd, so nothing has to stay valid or open
    // until its final completion.
    let old = unsafe { h.push(Op::Nop) };
    h.run_until_final(old);
    assert!(!h.cancel(old), "cancel of a finished op");
    // A new op may take the old slot; the stale id must not reach it.
    // SAFETY: (I2, I3) `buf` and `r` are declared before the harness, so the buffer stays valid and
    // the pipe open until the read's final completion.
    let new = unsafe { h.push(read_op(&r, &mut buf, None)) };
    assert_ne!(old.id, new.id);
    assert!(!h.cancel(old), "cancel of a stale id");
    h.expect_quiet(new, ms(30), "a stale cancel ended another op");
    assert!(h.cancel(new));
    assert_errno(h.run_until_final(new), libc::ECANCELED, "cancelled read");
}

fn cancel_fd_ends_every_op_on_the_fd(b: Backend) {
    let (r, _w) = pipe();
    let (other_r, other_w) = pipe();
    let mut b1 = [0u8; 8];
    let mut b3 = [0u8; 8];
    let mut h = b.harness();
    // SAFETY: (I2, I3) `b1` and `r` are declared before the harness, whose drop waits for the final
    // completions of the read and both polls.
    let ts = unsafe {
        [
            h.push(read_op(&r, &mut b1, None)),
            h.push(poll_op(&r, READABLE, false)),
            h.push(poll_op(&r, READABLE, true)),
        ]
    };
    // SAFETY: (I2, I3) `b3` and `other_r` are declared before the harness, so the buffer stays
    // valid and the pipe open until the read's final completion.
    let bystander = unsafe { h.push(read_op(&other_r, &mut b3, None)) };
    h.pump(ms(20));
    assert_eq!(
        h.cancel_fd(r.as_raw_fd()),
        3,
        "cancel_fd must ask all three ops"
    );
    h.run_until_all(&ts);
    for t in ts {
        assert_errno(h.fin(t), libc::ECANCELED, "op ended by cancel_fd");
    }
    assert_eq!(
        h.final_of(bystander),
        None,
        "cancel_fd ended an op on another fd"
    );
    write_all(&other_w, b"12345678");
    assert_count(h.run_until_final(bystander), 8, "read on the other pipe");
    assert_eq!(h.cancel_fd(r.as_raw_fd()), 0);
}

fn cancelled_read_leaves_buffer_and_data_alone(b: Backend) {
    let (r, w) = pipe();
    let (sa, sb) = socketpair();
    let mut buf = [0u8; 64];
    let mut sbuf = [0u8; 64];
    let mut h = b.harness();
    // SAFETY: (I2, I3) `buf` and `r` are declared before the harness, so the buffer stays valid and
    // the pipe open until the read's final completion.
    let t = unsafe { h.push(read_op(&r, &mut buf, None)) };
    // SAFETY: (I2, I3) `sbuf` and `sb` are declared before the harness, so the buffer stays valid
    // and the socket open until the recv's final completion.
    let s = unsafe {
        h.push(Op::Recv {
            fd: sb.as_raw_fd(),
            buf: sbuf.as_mut_ptr(),
            len: 64,
            flags: 0,
        })
    };
    h.pump(ms(20));
    assert!(h.cancel(t));
    assert_eq!(h.cancel_fd(sb.as_raw_fd()), 1);
    h.run_until_all(&[t, s]);
    assert_errno(h.fin(t), libc::ECANCELED, "cancelled read");
    assert_errno(h.fin(s), libc::ECANCELED, "recv cancelled by fd");

    // The final completion has been seen: the buffers are the test's again.
    buf.fill(0xAA);
    sbuf.fill(0xAA);
    write_all(&w, &[0x55; 64]);
    write_all(&sa, &[0x55; 64]);
    h.pump(ms(100));
    assert!(
        buf.iter().all(|&x| x == 0xAA),
        "a cancelled read wrote into its buffer"
    );
    assert!(
        sbuf.iter().all(|&x| x == 0xAA),
        "a cancelled recv wrote into its buffer"
    );
    // Nor did anything consume the data.
    set_nonblocking(&r);
    set_nonblocking(&sb);
    assert_eq!(
        drain_nonblocking(&r).len(),
        64,
        "a cancelled read consumed pipe data"
    );
    assert_eq!(
        drain_nonblocking(&sb).len(),
        64,
        "a cancelled recv consumed socket data"
    );
}

fn cancel_fd_then_fd_number_reuse(b: Backend) {
    let (r, w) = pipe();
    let (sa, sb) = socketpair();
    let mut buf = [0u8; 8];
    let mut h = b.harness();
    // Let the driver learn about `r` (a pipe): poll it until readable.
    // SAFETY: (I3) `r` is declared before the harness, so it stays open until the poll's final
    // completion.
    let p = unsafe { h.push(poll_op(&r, READABLE, false)) };
    write_all(&w, b"x");
    h.run_until_final(p);
    assert_eq!(h.cancel_fd(r.as_raw_fd()), 0);
    // Same fd number, different file: `r` now refers to a socket.
    // SAFETY: (FFI) dup2 takes no pointers; both fds are open and owned by this test, and the call
    // atomically replaces the pipe's read end (no op is in flight on `r`).
    let d = unsafe { libc::dup2(sb.as_raw_fd(), r.as_raw_fd()) };
    assert_eq!(d, r.as_raw_fd());
    // SAFETY: (I2, I3) `buf` and `r` are declared before the harness, so the buffer stays valid and
    // the fd open until the recv's final completion.
    let t = unsafe {
        h.push(Op::Recv {
            fd: r.as_raw_fd(),
            buf: buf.as_mut_ptr(),
            len: 8,
            flags: 0,
        })
    };
    // SAFETY: (I3) `r` is declared before the harness, so it stays open until the poll's final
    // completion.
    let q = unsafe { h.push(poll_op(&r, READABLE, false)) };
    h.expect_quiet(t, ms(30), "nothing sent on the socket yet");
    write_all(&sa, b"socket!!");
    h.run_until_all(&[t, q]);
    assert_count(h.fin(t), 8, "recv on the reused fd number");
    assert_eq!(&buf, b"socket!!");
    assert_poll_bits(h.fin(q), READABLE, "poll on the reused fd number");
}

fn cancel_racing_data_is_consistent(b: Backend) {
    // Data arrives just before the cancel: the read may win (and then it consumed the data) or
    // be cancelled (and then the data is still in the pipe). Never both, never neither.
    let (r, w) = pipe();
    let mut buf = [0u8; 8];
    let mut h = b.harness();
    let (mut won, mut lost) = (0, 0);
    for round in 0..50u8 {
        buf.fill(0);
        // SAFETY: (I2, I3) `buf` and `r` are declared before the harness, and `buf` is only touched
        // again after this read's final completion.
        let t = unsafe { h.push(read_op(&r, &mut buf, None)) };
        if round % 2 == 0 {
            h.wait_once(Some(Duration::ZERO));
        }
        write_all(&w, &[round; 8]);
        if round % 3 == 0 {
            h.wait_once(Some(Duration::ZERO));
        }
        if h.final_of(t).is_none() {
            h.cancel(t);
        }
        let res = h.run_until_final(t);
        let mut left = vec![0u8; 8];
        let n = if poll_now(&r, libc::POLLIN) & libc::POLLIN != 0 {
            read_some(&r, &mut left)
        } else {
            0
        };
        left.truncate(n);
        if res == 8 {
            won += 1;
            assert_eq!(buf, [round; 8]);
            assert!(
                left.is_empty(),
                "the read completed and the data is still there"
            );
        } else {
            lost += 1;
            assert_errno(res, libc::ECANCELED, "cancelled read");
            assert_eq!(left, [round; 8], "a cancelled read consumed the data");
            assert_eq!(buf, [0; 8], "a cancelled read wrote its buffer");
        }
    }
    eprintln!(
        "{}: the read won {won} times, the cancel {lost} times",
        test_name()
    );
}

fn dropping_the_driver_ends_pending_ops(b: Backend) {
    // `Driver`'s own Drop (not the harness's shutdown): it must wait for the final completions.
    let (r, w) = pipe();
    let mut buf = [0u8; 64];
    let mut d = fdloop_backends::Driver::new(&b.config()).expect("driver");
    // SAFETY: (I2, I3) `buf` and `r` are declared before the driver, whose drop waits for the
    // read's final completion.
    unsafe { d.push(read_op(&r, &mut buf, None), 1) };
    let mut out = Vec::new();
    d.wait(Some(ms(20)), &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
    drop(d);
    buf.fill(0xAA);
    write_all(&w, &[0x55; 64]);
    std::thread::sleep(ms(50));
    assert!(buf.iter().all(|&x| x == 0xAA), "a read outlived its driver");
    set_nonblocking(&r);
    assert_eq!(
        drain_nonblocking(&r).len(),
        64,
        "a read outlived its driver"
    );
}

// =============================================================================================
// Timeouts and the waker
// =============================================================================================

both_backends!(
    wait_timeout_is_never_early,
    wait_zero_does_not_block,
    waker_ends_wait_none,
    waker_before_wait,
    wakes_coalesce_and_the_driver_blocks_again,
);

fn wait_timeout_is_never_early(b: Backend) {
    let (r, _w) = pipe();
    let mut buf = [0u8; 8];
    let mut h = b.harness();
    let start = Instant::now();
    let got = h.wait_once(Some(ms(50)));
    let spent = start.elapsed();
    assert!(got.is_empty(), "completions from an idle driver: {got:?}");
    assert!(
        spent >= ms(50),
        "wait(50 ms) with nothing in flight returned after {spent:?}"
    );

    // SAFETY: (I2, I3) `buf` and `r` are declared before the harness, so the buffer stays valid and
    // the pipe open until the read's final completion.
    let t = unsafe { h.push(read_op(&r, &mut buf, None)) };
    for _ in 0..3 {
        let start = Instant::now();
        let got = h.wait_once(Some(ms(30)));
        let spent = start.elapsed();
        assert!(
            got.is_empty(),
            "completions for a read on an empty pipe: {got:?}"
        );
        assert!(
            spent >= ms(30),
            "wait(30 ms) with a read pending returned after {spent:?}"
        );
    }
    assert!(h.cancel(t));
    h.run_until_final(t);
}

fn wait_zero_does_not_block(b: Backend) {
    let (r, w) = pipe();
    let mut buf = [0u8; 8];
    let mut h = b.harness();
    // Nothing in flight: a wait that blocked would only end through the guard's wake-up.
    let waker = h.driver.waker();
    let guard = Deferred::new(Duration::from_secs(10), move || waker.wake());
    for _ in 0..20 {
        assert!(h.wait_once(Some(Duration::ZERO)).is_empty());
    }
    assert!(!guard.stop(), "wait(Some(ZERO)) blocked until woken");

    // A read pending: a wait that blocked would return the read's completion.
    // SAFETY: (I2, I3) `buf` and `r` are declared before the harness, so the buffer stays valid and
    // the pipe open until the read's final completion.
    let t = unsafe { h.push(read_op(&r, &mut buf, None)) };
    let w2 = w.try_clone().unwrap();
    let guard = Deferred::new(Duration::from_secs(10), move || write_all(&w2, b"late"));
    for _ in 0..20 {
        let got = h.wait_once(Some(Duration::ZERO));
        assert!(
            got.is_empty(),
            "wait(Some(ZERO)) blocked until data arrived: {got:?}"
        );
    }
    assert!(!guard.stop());
    write_all(&w, b"now!");
    assert_count(h.run_until_final(t), 4, "read");
}

fn waker_ends_wait_none(b: Backend) {
    fn send_sync<T: Send + Sync + Clone>(_: &T) {}
    let mut h = b.harness();
    let waker: Waker = h.driver.waker();
    send_sync(&waker);
    for _ in 0..3 {
        let w = waker.clone();
        let th = std::thread::spawn(move || {
            std::thread::sleep(ms(20));
            w.wake();
        });
        let got = h.wait_once(None);
        assert!(got.is_empty(), "a wake-up is not a completion: {got:?}");
        th.join().unwrap();
    }
}

fn waker_before_wait(b: Backend) {
    let mut h = b.harness();
    h.driver.waker().wake();
    // The pending wake-up ends the next wait (the harness watchdog catches a hang).
    assert!(h.wait_once(None).is_empty());
}

fn wakes_coalesce_and_the_driver_blocks_again(b: Backend) {
    let mut h = b.harness();
    let waker = h.driver.waker();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let w = waker.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    w.wake();
                }
            })
        })
        .collect();
    assert!(h.wait_once(None).is_empty());
    for t in threads {
        t.join().unwrap();
    }
    // A wake-up that arrived after the first wait may still be pending: the next blocking wait
    // lets it through (waits that do not block leave it pending).
    for _ in 0..3 {
        assert!(h.wait_once(Some(Duration::ZERO)).is_empty());
    }
    assert!(h.wait_once(Some(ms(20))).is_empty());
    for _ in 0..2 {
        let start = Instant::now();
        let got = h.wait_once(Some(ms(20)));
        let spent = start.elapsed();
        assert!(got.is_empty(), "{got:?}");
        assert!(
            spent >= ms(20),
            "4000 coalesced wakes left the driver spinning: {spent:?}"
        );
    }
    // And the waker still works afterwards.
    let w = waker.clone();
    let th = std::thread::spawn(move || {
        std::thread::sleep(ms(10));
        w.wake();
    });
    assert!(h.wait_once(None).is_empty());
    th.join().unwrap();
}

// =============================================================================================
// Load
// =============================================================================================

both_backends!(
    ten_thousand_reads_on_a_thousand_socketpairs,
    ten_thousand_reads_on_few_pipes,
    ten_thousand_nops_through_a_tiny_ring,
    multishot_poll_survives_a_tiny_completion_queue,
);
both_backends!(@exclusive shutdown_with_a_thousand_pending_reads);
both_backends!(shutdown_ends_every_kind_of_op);

fn big_ring() -> Config {
    Config {
        ring_entries: 4096,
        cq_entries: Some(16384),
        ..Config::default()
    }
}

fn tiny_ring() -> Config {
    Config {
        ring_entries: 4,
        cq_entries: Some(8),
        ..Config::default()
    }
}

fn tag(i: usize) -> u8 {
    (i % 251) as u8 + 1
}

fn ten_thousand_reads_on_a_thousand_socketpairs(b: Backend) {
    const PAIRS: usize = 1000;
    const PER: usize = 10;
    const LEN: usize = 8;
    raise_nofile();
    let pairs: Vec<(OwnedFd, OwnedFd)> = (0..PAIRS)
        .map(|i| {
            let p = socketpair();
            if i % 2 == 1 {
                set_nonblocking(&p.1);
            }
            p
        })
        .collect();
    let mut bufs = vec![0u8; PAIRS * PER * LEN];
    let base = bufs.as_mut_ptr();
    let mut h = b.harness_with(big_ring());
    let mut ts = Vec::with_capacity(PAIRS * PER);
    for (i, (_, reader)) in pairs.iter().enumerate() {
        for j in 0..PER {
            let slot = (i * PER + j) * LEN;
            // SAFETY: (I2, I3) each op gets its own 8 bytes of `bufs` (`slot + LEN <= bufs.len()`),
            // which, like the sockets, is declared before the harness, so they stay valid and open
            // until the read's final completion.
            let t = unsafe {
                h.push(Op::Read {
                    fd: reader.as_raw_fd(),
                    buf: base.add(slot),
                    len: LEN as u32,
                    offset: None,
                })
            };
            ts.push((i, slot, t));
        }
    }
    h.pump(ms(50));
    assert_eq!(
        h.pending(),
        PAIRS * PER,
        "reads completed before any data was sent"
    );
    for (i, (writer, _)) in pairs.iter().enumerate() {
        write_all(writer, &[tag(i); PER * LEN]);
    }
    h.run_until_idle_within(Duration::from_secs(30));
    for (i, slot, t) in ts {
        assert_count(h.fin(t), LEN, "read");
        assert!(
            bufs[slot..slot + LEN].iter().all(|&x| x == tag(i)),
            "read on pair {i} got bytes of another pair"
        );
    }
}

fn ten_thousand_reads_on_few_pipes(b: Backend) {
    const PIPES: usize = 20;
    const PER: usize = 500;
    const LEN: usize = 4;
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..PIPES).map(|_| pipe()).collect();
    let mut bufs = vec![0u8; PIPES * PER * LEN];
    let base = bufs.as_mut_ptr();
    let mut h = b.harness_with(big_ring());
    let mut ts = Vec::with_capacity(PIPES * PER);
    for (i, (r, _)) in pipes.iter().enumerate() {
        for j in 0..PER {
            let slot = (i * PER + j) * LEN;
            // SAFETY: (I2, I3) each op gets its own 4 bytes of `bufs` (`slot + LEN <= bufs.len()`),
            // which, like the pipes, is declared before the harness, so they stay valid and open
            // until the read's final completion.
            let t = unsafe {
                h.push(Op::Read {
                    fd: r.as_raw_fd(),
                    buf: base.add(slot),
                    len: LEN as u32,
                    offset: None,
                })
            };
            ts.push((i, slot, t));
        }
    }
    h.pump(ms(50));
    assert_eq!(
        h.pending(),
        PIPES * PER,
        "reads completed before any data was written"
    );
    // 2000 bytes per pipe in one write (< PIPE_BUF: atomic), so every read gets exactly 4.
    for (i, (_, w)) in pipes.iter().enumerate() {
        write_all(w, &[tag(i); PER * LEN]);
    }
    h.run_until_idle_within(Duration::from_secs(30));
    for (i, slot, t) in ts {
        assert_count(h.fin(t), LEN, "read");
        assert!(bufs[slot..slot + LEN].iter().all(|&x| x == tag(i)));
    }
}

fn ten_thousand_nops_through_a_tiny_ring(b: Backend) {
    let mut h = b.harness_with(tiny_ring());
    let ts: Vec<_> = (0..10_000)
        // SAFETY: (I2, I3) Nop references no memory and no fd, so nothing has to stay valid or open
        // until its final completion.
        .map(|_| unsafe { h.push(Op::Nop) })
        .collect();
    h.run_until_idle_within(Duration::from_secs(30));
    for t in ts {
        assert_eq!(h.fin(t), 0);
    }
}

fn multishot_poll_survives_a_tiny_completion_queue(b: Backend) {
    let efd = eventfd();
    let mut h = b.harness_with(tiny_ring());
    // SAFETY: (I3) `efd` is declared before the harness, so it stays open until the multishot
    // poll's final completion.
    let p = unsafe { h.push(poll_op(&efd, READABLE, true)) };
    eventfd_add(&efd);
    let nops: Vec<_> = (0..10_000)
        // SAFETY: (I2, I3) Nop references no memory and no fd, so nothing has to stay valid or open
        // until its final completion.
        .map(|_| unsafe { h.push(Op::Nop) })
        .collect();
    h.run_until_within(Duration::from_secs(30), "nops and a poll report", |h| {
        h.pending() == 1 && !h.mores(p).is_empty()
    });
    assert!(nops.iter().all(|&t| h.fin(t) == 0));
    assert_eq!(h.final_of(p), None, "multishot poll ended by itself");
    assert_eq!(eventfd_take(&efd), 1);
    let before = h.mores(p).len();
    eventfd_add(&efd);
    h.run_until("a report after the burst", |h| {
        h.mores(p).len() > before || h.final_of(p).is_some()
    });
    assert_eq!(h.final_of(p), None, "multishot poll ended by itself");
    assert!(h.cancel(p));
    assert_errno(
        h.run_until_final(p),
        libc::ECANCELED,
        "cancelled multishot poll",
    );
}

fn shutdown_with_a_thousand_pending_reads(b: Backend) {
    const PIPES: usize = 100;
    const PER: usize = 10;
    const LEN: usize = 16;
    let start = fd_count();
    {
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..PIPES).map(|_| pipe()).collect();
        let mut bufs = vec![0u8; PIPES * PER * LEN];
        let base = bufs.as_mut_ptr();
        let mut h = b.harness();
        for (i, (r, _)) in pipes.iter().enumerate() {
            for j in 0..PER {
                // SAFETY: (I2, I3) each op gets its own 16 bytes of `bufs`, declared (like the
                // pipes) before the harness, whose drop waits for every read's final completion.
                unsafe {
                    h.push(Op::Read {
                        fd: r.as_raw_fd(),
                        buf: base.add((i * PER + j) * LEN),
                        len: LEN as u32,
                        offset: None,
                    })
                };
            }
        }
        h.pump(ms(30));
        assert_eq!(h.pending(), PIPES * PER);
        let out = h.shutdown();
        assert_eq!(
            out.len(),
            PIPES * PER,
            "shutdown must return every final completion"
        );
        for c in &out {
            assert!(!c.more);
            assert_errno(c.result, libc::ECANCELED, "read ended by shutdown");
        }
        assert_eq!(h.driver.in_flight(), 0);
        // Nothing writes into the buffers any more.
        bufs.fill(0xAA);
        for (_, w) in &pipes {
            write_all(w, &[0x55; LEN]);
        }
        h.pump(ms(50));
        assert!(
            bufs.iter().all(|&x| x == 0xAA),
            "a read ended by shutdown wrote its buffer"
        );
        drop(h);
        drop(pipes);
    }
    assert_eq!(fd_count(), start, "fds leaked by the driver");
}

fn shutdown_ends_every_kind_of_op(b: Backend) {
    let (r, _w) = pipe();
    let (_full_r, full_w) = pipe();
    set_nonblocking(&full_w);
    let chunk = [1u8; 4096];
    while nix::unistd::write(&full_w, &chunk).is_ok() {}
    let (_sa, sb) = socketpair();
    let efd = eventfd();
    let (listener, _addr) = tcp_listener();
    let mut rbuf = [0u8; 8];
    let mut sbuf = [0u8; 8];
    let wbuf = [2u8; 100];
    let mut h = b.harness();
    // SAFETY: (I2, I3) `rbuf`, `wbuf`, `sbuf` and every fd are declared before the harness, whose
    // drop waits for the final completion of each op.
    let ts = unsafe {
        [
            h.push(read_op(&r, &mut rbuf, None)),
            h.push(write_op(&full_w, &wbuf, None)),
            h.push(Op::Recv {
                fd: sb.as_raw_fd(),
                buf: sbuf.as_mut_ptr(),
                len: 8,
                flags: 0,
            }),
            h.push(poll_op(&efd, READABLE, true)),
            h.push(Op::Accept {
                fd: listener.as_raw_fd(),
                addr: std::ptr::null_mut(),
                addrlen: std::ptr::null_mut(),
                flags: 0,
                multishot: true,
            }),
        ]
    };
    eventfd_add(&efd);
    h.run_until("a multishot poll report", |h| !h.mores(ts[3]).is_empty());
    let out = h.shutdown();
    assert_eq!(out.len(), ts.len(), "one final completion per op: {out:?}");
    for t in ts {
        assert_errno(h.fin(t), libc::ECANCELED, "op ended by shutdown");
    }
}

// =============================================================================================
// Bad input
// =============================================================================================

both_backends!(
    read_on_bad_fds_is_ebadf,
    poll_on_a_regular_file,
    socket_ops_on_a_pipe_are_enotsock,
);

fn read_on_bad_fds_is_ebadf(b: Backend) {
    // A closed fd far above anything the other tests open.
    let (r, _w) = pipe();
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: (FFI) `rl` is a valid rlimit for getrlimit to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
    let high = (rl.rlim_cur.min(1 << 20) as RawFd - 16).max(100);
    // SAFETY: (FFI) F_DUPFD_CLOEXEC takes an integer argument; the result is a new fd that this
    // test owns.
    let closed = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_DUPFD_CLOEXEC, high) };
    assert!(closed >= high);
    drop(own(closed));
    let mut b1 = [0u8; 8];
    let mut b2 = [0u8; 8];
    let mut h = b.harness();
    // SAFETY: (I2, I3) `b1` is declared before the harness, so it stays valid until the read's
    // final completion; the fd -1 is invalid on purpose, which the driver must report, not use.
    let t1 = unsafe { h.push(read_op(-1, &mut b1, None)) };
    // SAFETY: (I2, I3) `b2` is declared before the harness, so it stays valid until the read's
    // final completion; `closed` is a closed fd on purpose, which the driver must report, not use.
    let t2 = unsafe { h.push(read_op(closed, &mut b2, None)) };
    h.run_until_all(&[t1, t2]);
    assert_errno(h.fin(t1), libc::EBADF, "read on fd -1");
    assert_errno(h.fin(t2), libc::EBADF, "read on a closed fd");
}

fn poll_on_a_regular_file(b: Backend) {
    // Both drivers report a regular file ready at once, as poll(2) does: io_uring's POLL_ADD
    // does so by itself; the epoll driver documents that an fd epoll refuses (EPERM) is treated
    // as always ready.
    let file = tempfile();
    let mut h = b.harness();
    // SAFETY: (I3) `file` is declared before the harness, so it stays open until the poll's final
    // completion.
    let t = unsafe { h.push(poll_op(&file, READABLE, false)) };
    let r = h.run_until_final(t);
    assert_poll_bits(r, READABLE, "poll READABLE on a regular file");
    assert_ne!(r as u32 & READABLE, 0, "a regular file is always readable");
}

fn socket_ops_on_a_pipe_are_enotsock(b: Backend) {
    let (r, w) = pipe();
    let mut buf = [0u8; 8];
    let msg = b"12345678";
    let (sa, salen) = sockaddr_of("127.0.0.1:9".parse().unwrap());
    let mut h = b.harness();
    // SAFETY: (I2, I3) `buf` and `r` are declared before the harness, so the buffer stays valid and
    // the pipe open until the recv's final completion.
    let recv = unsafe {
        h.push(Op::Recv {
            fd: r.as_raw_fd(),
            buf: buf.as_mut_ptr(),
            len: 8,
            flags: 0,
        })
    };
    // SAFETY: (I2, I3) `msg` and `w` are declared before the harness, so the data stays valid and
    // the pipe open until the send's final completion.
    let send = unsafe {
        h.push(Op::Send {
            fd: w.as_raw_fd(),
            buf: msg.as_ptr(),
            len: 8,
            flags: 0,
        })
    };
    // SAFETY: (I2, I3) null address pointers reference no memory; `r` is declared before the
    // harness, so it stays open until the accept's final completion.
    let accept = unsafe {
        h.push(Op::Accept {
            fd: r.as_raw_fd(),
            addr: std::ptr::null_mut(),
            addrlen: std::ptr::null_mut(),
            flags: 0,
            multishot: false,
        })
    };
    // SAFETY: (I2, I3) `sa` and `w` are declared before the harness, so the address stays valid and
    // the pipe open until the connect's final completion.
    let connect = unsafe {
        h.push(Op::Connect {
            fd: w.as_raw_fd(),
            addr: &sa,
            addrlen: salen,
        })
    };
    h.run_until_all(&[recv, send, accept, connect]);
    assert_errno(h.fin(recv), libc::ENOTSOCK, "recv on a pipe");
    assert_errno(h.fin(send), libc::ENOTSOCK, "send on a pipe");
    assert_errno(h.fin(accept), libc::ENOTSOCK, "accept on a pipe");
    assert_errno(h.fin(connect), libc::ENOTSOCK, "connect on a pipe");
}

// =============================================================================================
// Terminals
// =============================================================================================

both_backends!(
    pty_64k_slave_to_master,
    pty_64k_master_to_slave,
    pty_master_read_is_eio_after_slave_closes,
    pty_master_write_after_hang_up_ends_without_spinning,
    cancel_fd_after_the_number_was_closed,
);

const PTY_LEN: usize = 64 * 1024;

fn pty_64k_slave_to_master(b: Backend) {
    let p = pty();
    let data = pattern(PTY_LEN);
    let expected = data.clone();
    let slave = p.slave.try_clone().unwrap();
    // A plain thread writes; the driver reads the master. If the test fails, closing the master
    // ends the writer with EIO.
    let writer = std::thread::spawn(move || {
        let mut rest = &data[..];
        while !rest.is_empty() {
            match nix::unistd::write(&slave, rest) {
                Ok(n) => rest = &rest[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::with_capacity(PTY_LEN);
    let mut h = b.harness();
    while got.len() < PTY_LEN {
        // SAFETY: (I2, I3) `buf` and the pty are declared before the harness, so the buffer stays
        // valid and the master open until the read's final completion.
        let t = unsafe { h.push(read_op(&p.master, &mut buf, None)) };
        let r = h.run_until_final(t);
        assert!(
            r > 0,
            "pty master read after {} bytes: {}",
            got.len(),
            res(r)
        );
        got.extend_from_slice(&buf[..r as usize]);
    }
    writer.join().unwrap().expect("writing the slave");
    assert_eq!(got.len(), PTY_LEN);
    assert!(
        got == expected,
        "bytes differ through the pty (raw mode must be byte-exact)"
    );
}

fn pty_64k_master_to_slave(b: Backend) {
    let p = pty();
    let data = pattern(PTY_LEN);
    let slave = p.slave.try_clone().unwrap();
    // A plain thread reads the slave; the driver writes the (non-blocking) master, which
    // fills up: short writes and EAGAIN must be handled by the driver.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(PTY_LEN);
        let mut buf = [0u8; 4096];
        while got.len() < PTY_LEN {
            match nix::unistd::read(&slave, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
        got
    });
    let mut h = b.harness();
    let mut done = 0;
    while done < PTY_LEN {
        // SAFETY: (I2, I3) `data` and the pty are declared before the harness, so the data stays
        // valid and the master open until the write's final completion.
        let t = unsafe { h.push(write_op(&p.master, &data[done..], None)) };
        let r = h.run_until_final(t);
        assert!(r > 0, "pty master write after {done} bytes: {}", res(r));
        done += r as usize;
    }
    let got = reader.join().unwrap();
    assert_eq!(got.len(), PTY_LEN);
    assert!(
        got == data,
        "bytes differ through the pty (raw mode must be byte-exact)"
    );
}

fn pty_master_read_is_eio_after_slave_closes(b: Backend) {
    let Pty { master, slave } = pty();
    let mut buf = [0u8; 64];
    let mut h = b.harness();
    // SAFETY: (I2, I3) `buf` and `master` are declared before the harness, so the buffer stays
    // valid and the master open until the read's final completion.
    let t = unsafe { h.push(read_op(&master, &mut buf, None)) };
    h.expect_quiet(t, ms(30), "slave still open and silent");
    drop(slave);
    assert_errno(
        h.run_until_final(t),
        libc::EIO,
        "pty master read after the slave closed",
    );
}

/// The number was closed behind the driver's back while a read was in flight (a dup keeps the
/// file alive): `cancel_fd` must still end that read, whatever the number names now.
fn cancel_fd_after_the_number_was_closed(b: Backend) {
    let (r, w) = pipe();
    let keep = r.try_clone().unwrap();
    let number = r.as_raw_fd();
    let mut buf = [0u8; 8];
    let mut h = b.harness();
    // SAFETY: (I2, I3) `buf` is declared before the harness, so it stays valid until the read's
    // final completion; the test closes the number `r` behind the driver's back on purpose, but the
    // file stays open through `keep` until after the read has ended.
    let t = unsafe { h.push(read_op(number, &mut buf, None)) };
    h.expect_quiet(t, ms(10), "nothing written yet");
    drop(r);
    h.cancel_fd(number);
    let res = h.run_until_final(t);
    assert_errno(
        res,
        libc::ECANCELED,
        "a read whose fd number was closed, then cancel_fd",
    );
    drop((w, keep));
}

/// With the slave side gone and the master's buffer full, `write` says EAGAIN while poll reports
/// POLLHUP but never POLLOUT: the driver must end the write (EPIPE), not retry it forever.
fn pty_master_write_after_hang_up_ends_without_spinning(b: Backend) {
    let Pty { master, slave } = pty();
    let chunk = [0x55u8; 4096];
    // Fill the master's output until the kernel says EAGAIN.
    for _ in 0..10_000 {
        // SAFETY: (FFI) `chunk` is a live buffer of `chunk.len()` bytes for the call; `master` is
        // open.
        let n = unsafe { libc::write(master.as_raw_fd(), chunk.as_ptr().cast(), chunk.len()) };
        if n < 0 {
            break;
        }
    }
    drop(slave);
    let mut h = b.harness();
    // SAFETY: (I2, I3) `chunk` and `master` are declared before the harness, so the data stays
    // valid and the master open until the write's final completion.
    let t = unsafe { h.push(write_op(&master, &chunk, None)) };
    let r = h.run_until_final(t);
    assert!(
        r == -libc::EPIPE || r == -libc::EIO || r >= 0,
        "a write to a hung-up pty master ends (EPIPE/EIO, or a count): got {r}"
    );
}

// =============================================================================================
// O_NONBLOCK fds: EAGAIN is the driver's business
// =============================================================================================

both_backends!(
    nonblocking_pipe_read_waits_for_data,
    nonblocking_socket_recv_waits_for_data,
    nonblocking_pipe_write_waits_for_room,
);

fn nonblocking_pipe_read_waits_for_data(b: Backend) {
    let (r, w) = pipe();
    set_nonblocking(&r);
    let mut buf = [0u8; 16];
    let mut h = b.harness();
    // SAFETY: (I2, I3) `buf` and `r` are declared before the harness, so the buffer stays valid and
    // the pipe open until the read's final completion.
    let t = unsafe { h.push(read_op(&r, &mut buf, None)) };
    h.expect_quiet(
        t,
        ms(50),
        "an O_NONBLOCK read on an empty pipe must wait, not fail with EAGAIN",
    );
    write_all(&w, b"data");
    assert_count(h.run_until_final(t), 4, "read");
    assert_eq!(&buf[..4], b"data");
}

fn nonblocking_socket_recv_waits_for_data(b: Backend) {
    let (sa, sb) = socketpair();
    set_nonblocking(&sb);
    let mut buf = [0u8; 16];
    let mut h = b.harness();
    // SAFETY: (I2, I3) `buf` and `sb` are declared before the harness, so the buffer stays valid
    // and the socket open until the recv's final completion.
    let t = unsafe {
        h.push(Op::Recv {
            fd: sb.as_raw_fd(),
            buf: buf.as_mut_ptr(),
            len: 16,
            flags: 0,
        })
    };
    h.expect_quiet(t, ms(50), "an O_NONBLOCK recv on an empty socket must wait");
    write_all(&sa, b"data");
    assert_count(h.run_until_final(t), 4, "recv");
    assert_eq!(&buf[..4], b"data");
}

fn nonblocking_pipe_write_waits_for_room(b: Backend) {
    let (r, w) = pipe();
    set_nonblocking(&w);
    set_nonblocking(&r);
    let chunk = [7u8; 4096];
    let mut filled = 0usize;
    loop {
        match nix::unistd::write(&w, &chunk) {
            Ok(n) => filled += n,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
    let msg = [9u8; 100];
    let mut h = b.harness();
    // SAFETY: (I2, I3) `msg` and `w` are declared before the harness, so the data stays valid and
    // the pipe open until the write's final completion.
    let t = unsafe { h.push(write_op(&w, &msg, None)) };
    h.expect_quiet(t, ms(50), "an O_NONBLOCK write on a full pipe must wait");
    assert_eq!(drain_nonblocking(&r).len(), filled);
    assert_count(h.run_until_final(t), 100, "write once there is room");
    let rest = drain_nonblocking(&r);
    assert_eq!(rest, msg);
}
