//! Blocking-looking I/O primitives for fibers: each pushes one operation, suspends the fiber
//! until its final completion, and returns the result.
//!
//! Buffers are borrowed from the caller — often the fiber's own stack. That is sound here,
//! and not in future-based runtimes, because the operation's guard lives in this module's
//! frame, where user code cannot `mem::forget` it: whether the fiber resumes normally or is
//! unwound (its loop closing), the guard does not let the frame go until the kernel has
//! reported the operation's final completion (invariant I2).
//!
//! Every function panics outside a fiber, with a message that says what to do instead. A
//! timeout given by the caller expires as `WouldBlock` (`EAGAIN`), like std's socket
//! timeouts; `connect` expires as `TimedOut`.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use fdloop_backends::{interest, Op};

use crate::fiber::scheduler::{fiber_io, fiber_io_adopting};

const MAX_LEN: usize = 0x7fff_f000;

/// A completion result as `io::Result`. A timeout set by the caller (`ETIME` from
/// `fiber_io`) becomes `EAGAIN` (`WouldBlock`), as std's socket timeouts do on Linux.
fn result(res: i32) -> io::Result<usize> {
    if res == -libc::ETIME {
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    } else if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

fn len(buf_len: usize) -> u32 {
    buf_len.min(MAX_LEN) as u32
}

/// `read(2)` (or `pread(2)` with an offset) into `buf`.
pub(crate) fn read(
    fd: RawFd,
    buf: &mut [u8],
    offset: Option<u64>,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let op = Op::Read {
        fd,
        buf: buf.as_mut_ptr(),
        len: len(buf.len()),
        offset,
    };
    // SAFETY: (I2, I3) `buf` is borrowed for this whole call, and `fiber_io` returns (or unwinds)
    // only after the final completion; `fd` is the caller's, open for the whole call.
    result(unsafe { fiber_io(op, timeout) })
}

/// `write(2)` (or `pwrite(2)` with an offset) from `buf`.
pub(crate) fn write(
    fd: RawFd,
    buf: &[u8],
    offset: Option<u64>,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let op = Op::Write {
        fd,
        buf: buf.as_ptr(),
        len: len(buf.len()),
        offset,
    };
    // SAFETY: (I2, I3) `buf` is borrowed for this whole call, and `fiber_io` returns (or unwinds)
    // only after the final completion; `fd` is the caller's, open for the whole call.
    result(unsafe { fiber_io(op, timeout) })
}

/// `readv(2)` / `preadv(2)`.
pub(crate) fn readv(
    fd: RawFd,
    bufs: &mut [io::IoSliceMut<'_>],
    offset: Option<u64>,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let op = Op::Readv {
        fd,
        // IoSliceMut is ABI-compatible with iovec on Unix.
        iov: bufs.as_ptr().cast(),
        iovcnt: bufs.len().min(libc::UIO_MAXIOV as usize) as u32,
        offset,
    };
    // SAFETY: (I2, I3) `bufs` and the memory it points to are borrowed for this whole call, and
    // `fiber_io` returns (or unwinds) only after the final completion; `fd` is the caller's, open
    // for the whole call.
    result(unsafe { fiber_io(op, timeout) })
}

/// `writev(2)` / `pwritev(2)`.
pub(crate) fn writev(
    fd: RawFd,
    bufs: &[io::IoSlice<'_>],
    offset: Option<u64>,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let op = Op::Writev {
        fd,
        // IoSlice is ABI-compatible with iovec on Unix.
        iov: bufs.as_ptr().cast(),
        iovcnt: bufs.len().min(libc::UIO_MAXIOV as usize) as u32,
        offset,
    };
    // SAFETY: (I2, I3) `bufs` and the memory it points to are borrowed for this whole call, and
    // `fiber_io` returns (or unwinds) only after the final completion; `fd` is the caller's, open
    // for the whole call.
    result(unsafe { fiber_io(op, timeout) })
}

/// `recv(2)`.
pub(crate) fn recv(
    fd: RawFd,
    buf: &mut [u8],
    flags: i32,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let op = Op::Recv {
        fd,
        buf: buf.as_mut_ptr(),
        len: len(buf.len()),
        flags,
    };
    // SAFETY: (I2, I3) `buf` is borrowed for this whole call, and `fiber_io` returns (or unwinds)
    // only after the final completion; `fd` is the caller's, open for the whole call.
    result(unsafe { fiber_io(op, timeout) })
}

/// `send(2)` (always `MSG_NOSIGNAL`).
pub(crate) fn send(
    fd: RawFd,
    buf: &[u8],
    flags: i32,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let op = Op::Send {
        fd,
        buf: buf.as_ptr(),
        len: len(buf.len()),
        flags,
    };
    // SAFETY: (I2, I3) `buf` is borrowed for this whole call, and `fiber_io` returns (or unwinds)
    // only after the final completion; `fd` is the caller's, open for the whole call.
    result(unsafe { fiber_io(op, timeout) })
}

/// `recvmsg(2)`. When the fiber is unwound and the operation succeeded anyway, `orphan`
/// receives the result (to close fds that arrived with `SCM_RIGHTS`).
///
/// # Safety
///
/// (I2) `msg` and everything it points to must be valid for the whole call; `orphan` may only use
/// memory that outlives the call.
pub(crate) unsafe fn recvmsg(
    fd: RawFd,
    msg: &mut libc::msghdr,
    flags: i32,
    timeout: Option<Duration>,
    orphan: Option<&dyn Fn(i32)>,
) -> io::Result<usize> {
    let op = Op::RecvMsg { fd, msg, flags };
    // SAFETY: (I2, I3) the caller keeps `msg` and its buffers valid for this call, and
    // `fiber_io_adopting` returns (or unwinds) only after the final completion; `fd` is the
    // caller's, open for the whole call.
    result(unsafe { fiber_io_adopting(op, timeout, orphan) })
}

/// `sendmsg(2)` (always `MSG_NOSIGNAL`).
///
/// # Safety
///
/// (I2) `msg` and everything it points to must be valid for the whole call.
pub(crate) unsafe fn sendmsg(
    fd: RawFd,
    msg: &libc::msghdr,
    flags: i32,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    let op = Op::SendMsg { fd, msg, flags };
    // SAFETY: (I2, I3) the caller keeps `msg` and its buffers valid for this call, and `fiber_io`
    // returns (or unwinds) only after the final completion; `fd` is the caller's, open for the
    // whole call.
    result(unsafe { fiber_io(op, timeout) })
}

/// `accept4(2)`: the new fd (close-on-exec, plus `flags`) and the peer address.
pub(crate) fn accept(
    fd: RawFd,
    flags: i32,
    timeout: Option<Duration>,
) -> io::Result<(RawFd, libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: (FFI) sockaddr_storage is plain old data; zero is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut addrlen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let op = Op::Accept {
        fd,
        addr: &mut addr,
        addrlen: &mut addrlen,
        flags,
        multishot: false,
    };
    let close_orphan = |fd: i32| {
        if fd >= 0 {
            // SAFETY: (FFI) the accept won the race with the unwinding fiber's cancellation; the
            // new fd, which the kernel just created, belongs to nobody else.
            drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
    };
    // SAFETY: (I2, I3) `addr` and `addrlen` live in this frame, which outlives the operation:
    // `fiber_io_adopting` returns (or unwinds) only after the final completion; `fd` is the
    // caller's, open for the whole call.
    let fd = result(unsafe { fiber_io_adopting(op, timeout, Some(&close_orphan)) })?;
    Ok((fd as RawFd, addr, addrlen))
}

/// `connect(2)`, waiting until the connection is established or failed.
pub(crate) fn connect(
    fd: RawFd,
    addr: &libc::sockaddr_storage,
    addrlen: libc::socklen_t,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let op = Op::Connect { fd, addr, addrlen };
    // SAFETY: (I2, I3) `addr` is borrowed for this whole call, and `fiber_io` returns (or unwinds)
    // only after the final completion; `fd` is the caller's, open for the whole call.
    match unsafe { fiber_io(op, timeout) } {
        r if r == -libc::ETIME => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection timed out (connect_timeout)",
        )),
        r => result(r).map(drop),
    }
}

/// Waits until `fd` reports one of `events` (see [`interest`]); returns the reported bits.
pub(crate) fn poll(fd: RawFd, events: u32, timeout: Option<Duration>) -> io::Result<u32> {
    let op = Op::Poll {
        fd,
        events: events | interest::ERROR | interest::HUP,
        multishot: false,
    };
    // SAFETY: (I2, I3) a poll references no memory; `fd` is the caller's, open for the whole call,
    // and `fiber_io` returns (or unwinds) only after the final completion.
    result(unsafe { fiber_io(op, timeout) }).map(|r| r as u32)
}

/// `fsync(2)` / `fdatasync(2)`.
pub(crate) fn fsync(fd: RawFd, datasync: bool) -> io::Result<()> {
    let op = Op::Fsync { fd, datasync };
    // SAFETY: (I2, I3) an fsync references no memory; `fd` is the caller's, open for the whole
    // call, and `fiber_io` returns (or unwinds) only after the final completion.
    result(unsafe { fiber_io(op, None) }).map(drop)
}
