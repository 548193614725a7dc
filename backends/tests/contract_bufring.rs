//! The backend contract for `Op::RecvMulti` (multishot receive into a provided-buffer ring),
//! on both drivers against real sockets. Every test runs twice: `name::uring` and `name::epoll`.
//!
//! Run: `cargo test -p fdloop-backends --test contract_bufring`.

#[macro_use]
mod common;

use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use common::*;
use fdloop_backends::bufring::unpack;
use fdloop_backends::{BufRing, Op};

both_backends!(
    recv_multi_reports_chunks_then_eof,
    recv_multi_empty_ring_ends_with_enobufs_and_keeps_the_data,
    recv_multi_cancel_ends_with_ecanceled,
    recv_multi_peer_reset_is_an_error,
    recv_multi_on_a_pipe_is_an_error,
);

/// A harness and a ring registered with its driver. The ring is declared before the harness
/// in every test, so the driver (which waits for its operations when dropped) goes first.
fn register(h: &mut Harness, ring: &BufRing) {
    // SAFETY: (I2) every test declares the ring before the harness, so it stays valid and unmoved
    // until the harness's driver is dropped, which waits for its operations first.
    unsafe { h.driver.register_buf_ring(ring) }.expect("register the buffer ring");
}

/// The bytes of the reports `from..` of `t`, recycling their buffers.
fn take(h: &Harness, ring: &BufRing, t: Ticket, from: usize) -> Vec<u8> {
    let mut got = Vec::new();
    for &r in &h.mores(t)[from..] {
        assert!(r > 0, "a report without data: {}", res(r));
        let (bid, len) = unpack(r);
        assert!(bid < ring.count() && len <= ring.buf_size());
        // SAFETY: (I2) the driver handed `bid` out with this report and it has not been recycled,
        // so no receive writes it while `chunk` reads it; it goes back to the ring once, here.
        unsafe {
            got.extend_from_slice(ring.chunk(bid, len));
            ring.recycle(bid);
        }
    }
    got
}

fn recv_multi(fd: i32, ring: &BufRing) -> Op {
    Op::RecvMulti { fd, ring, flags: 0 }
}

fn recv_multi_reports_chunks_then_eof(b: Backend) {
    let (a, mut c) = UnixStream::pair().unwrap();
    let ring = BufRing::new(4, 16).unwrap();
    let mut h = b.harness();
    register(&mut h, &ring);
    // SAFETY: (I2, I3) the ring and `a` are declared before the harness, so the buffers stay valid
    // and the socket open until the receive's final completion, which the test waits for.
    let t = unsafe { h.push(recv_multi(a.as_raw_fd(), &ring)) };
    h.expect_quiet(t, ms(30), "no data yet");
    let mut want = Vec::new();
    for i in 0..10u8 {
        let msg = [i; 5];
        c.write_all(&msg).unwrap();
        want.extend_from_slice(&msg);
        let n = h.mores(t).len();
        h.run_until("a chunk", |h| h.mores(t).len() > n);
        assert_eq!(h.final_of(t), None, "ended early");
        let got = take(&h, &ring, t, n);
        assert_eq!(got, msg);
    }
    drop(c);
    assert_eq!(h.run_until_final(t), 0, "end of stream");
    assert!(want.len() == 50);
    h.driver.unregister_buf_ring(&ring);
}

fn recv_multi_empty_ring_ends_with_enobufs_and_keeps_the_data(b: Backend) {
    let (a, mut c) = UnixStream::pair().unwrap();
    let ring = BufRing::new(2, 4).unwrap();
    let mut h = b.harness();
    register(&mut h, &ring);
    let data: Vec<u8> = (0..40).collect();
    c.write_all(&data).unwrap();
    let mut got = Vec::new();
    let mut rounds = 0;
    while got.len() < data.len() {
        rounds += 1;
        assert!(rounds <= 40, "no progress");
        // SAFETY: (I2, I3) the ring and `a` are declared before the harness, so the buffers stay
        // valid and the socket open until each receive's final completion.
        let t = unsafe { h.push(recv_multi(a.as_raw_fd(), &ring)) };
        h.run_until("the ring to run dry", |h| {
            h.mores(t).len() == 2 || h.final_of(t).is_some()
        });
        if got.len() + 8 < data.len() {
            // More data than buffers: the next report is ENOBUFS, and the operation ends.
            assert_errno(h.run_until_final(t), libc::ENOBUFS, "the ring ran dry");
        } else {
            // The last 8 bytes filled the ring; no data is left to run into the empty ring.
            h.pump(ms(20));
            assert_eq!(h.final_of(t), None, "no data, no ENOBUFS");
            assert!(h.cancel(t));
            assert_errno(h.run_until_final(t), libc::ECANCELED, "cancelled");
        }
        assert_eq!(h.mores(t).len(), 2, "one chunk per 4-byte buffer");
        got.extend(take(&h, &ring, t, 0));
    }
    assert_eq!(got, data, "data lost or reordered across ENOBUFS");
    h.driver.unregister_buf_ring(&ring);
}

fn recv_multi_cancel_ends_with_ecanceled(b: Backend) {
    let (a, _c) = UnixStream::pair().unwrap();
    let ring = BufRing::new(2, 64).unwrap();
    let mut h = b.harness();
    register(&mut h, &ring);
    // SAFETY: (I2, I3) the ring and `a` are declared before the harness, so the buffers stay valid
    // and the socket open until the receive's final completion.
    let t = unsafe { h.push(recv_multi(a.as_raw_fd(), &ring)) };
    h.expect_quiet(t, ms(20), "no data");
    assert!(h.cancel(t));
    assert_errno(h.run_until_final(t), libc::ECANCELED, "cancelled");
    assert!(h.mores(t).is_empty());
    h.driver.unregister_buf_ring(&ring);
}

fn recv_multi_peer_reset_is_an_error(b: Backend) {
    let (listener, addr) = tcp_listener();
    let client = std::net::TcpStream::connect(addr).unwrap();
    let (server, _) = listener.accept().unwrap();
    let ring = BufRing::new(2, 64).unwrap();
    let mut h = b.harness();
    register(&mut h, &ring);
    // SAFETY: (I2, I3) the ring and `server` are declared before the harness, so the buffers stay
    // valid and the socket open until the receive's final completion.
    let t = unsafe { h.push(recv_multi(server.as_raw_fd(), &ring)) };
    // SO_LINGER 0: close sends RST.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: (FFI) `linger` is a valid linger struct of the size passed, read during the call;
    // `client` is an open socket.
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    drop(client);
    assert_errno(h.run_until_final(t), libc::ECONNRESET, "peer reset");
    h.driver.unregister_buf_ring(&ring);
}

fn recv_multi_on_a_pipe_is_an_error(b: Backend) {
    let (r, _w) = pipe();
    let ring = BufRing::new(2, 64).unwrap();
    let mut h = b.harness();
    register(&mut h, &ring);
    // SAFETY: (I2, I3) the ring and `r` are declared before the harness, so the buffers stay valid
    // and the pipe open until the receive's final completion.
    let t = unsafe { h.push(recv_multi(r.as_raw_fd(), &ring)) };
    assert_errno(h.run_until_final(t), libc::ENOTSOCK, "recv on a pipe");
    h.driver.unregister_buf_ring(&ring);
}

// =============================================================================================
// Batch wait (Config::batch_wait; io_uring on Linux 6.12, ignored elsewhere)
// =============================================================================================

both_backends!(
    batch_wait_hands_out_a_lone_completion,
    batch_wait_does_not_end_a_wait_without_a_completion,
);

fn batch_harness(b: Backend) -> Harness {
    let mut config = b.config();
    config.batch_wait = Some(ms(2));
    b.harness_with(config)
}

fn batch_wait_hands_out_a_lone_completion(b: Backend) {
    // A Nop completes at once; nothing else comes: the wait still returns it (after at most
    // the batch wait).
    let mut h = batch_harness(b);
    for _ in 0..3 {
        // SAFETY: (I2, I3) Nop references no memory and no fd, so nothing has to stay valid or open
        // until its final completion.
        let t = unsafe { h.push(Op::Nop) };
        assert_eq!(h.run_until_final(t), 0);
    }
}

fn batch_wait_does_not_end_a_wait_without_a_completion(b: Backend) {
    // A receive with no data, submitted by a blocking wait: the minimum wait passes with
    // nothing to show, and the wait goes on until the data comes.
    let (a, mut c) = UnixStream::pair().unwrap();
    let mut buf = [0u8; 8];
    let mut h = batch_harness(b);
    // SAFETY: (I2, I3) `buf` and `a` are declared before the harness, so the buffer stays valid and
    // the socket open until the receive's final completion, which the test waits for.
    let t = unsafe {
        h.push(Op::Recv {
            fd: a.as_raw_fd(),
            buf: buf.as_mut_ptr(),
            len: 8,
            flags: 0,
        })
    };
    let writer = std::thread::spawn(move || {
        std::thread::sleep(ms(30));
        c.write_all(b"late").unwrap();
        c
    });
    let out = h.wait_once(None);
    assert!(
        out.iter().any(|c| c.user_data == t.ud),
        "the wait ended without the receive: {out:?}"
    );
    assert_eq!(h.final_of(t), Some(4));
    drop(writer.join().unwrap());
}
