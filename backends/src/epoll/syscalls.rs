//! Executing an [`Op`] as a syscall, in two flavours:
//!
//! * [`attempt`]: on the loop thread, never blocking. Sockets get `MSG_DONTWAIT`; other fds are
//!   either `O_NONBLOCK` already, or are only read after they reported readiness (and then with
//!   `RWF_NOWAIT` where the file supports it). `EAGAIN` becomes [`Attempt::Again`].
//! * [`run_blocking`]: on a pool thread, the plain blocking syscall.
//!
//! [`route`] decides which flavour an operation gets.

use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::ptr;
use std::time::Duration;

use crate::sys::{cvt, to_result};
use crate::{FdClass, Op};

/// The interest of an operation that reads (`EPOLLIN`).
pub(super) const IN: u32 = libc::EPOLLIN as u32;
/// The interest of an operation that writes (`EPOLLOUT`).
pub(super) const OUT: u32 = libc::EPOLLOUT as u32;

/// How the driver runs an operation on an fd of a given class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// On the file pool (regular files, positional I/O, fsync, and what would block).
    Pool,
    /// Try the syscall now; on `EAGAIN` wait for these readiness bits and retry.
    Now(u32),
    /// Wait for these readiness bits first, then do the syscall (blocking fds).
    Wait(u32),
}

/// What a non-blocking attempt gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    /// The final result (a value or `-errno`).
    Done(i32),
    /// Not ready (`EAGAIN`): wait for readiness and try again.
    Again,
    /// `connect` returned `EINPROGRESS`: wait for `OUT`, then read `SO_ERROR`.
    InProgress,
}

/// Decides how `op` runs on an fd of class `class`. Not used for `Nop`, `Poll` and `Close`, which
/// the driver handles itself.
pub(super) fn route(op: &Op, class: FdClass) -> Route {
    let socket = matches!(class, FdClass::Socket { .. });
    let nonblocking = class.is_nonblocking();
    match *op {
        Op::Fsync { .. } => Route::Pool,
        Op::Read {
            offset: Some(_), ..
        }
        | Op::Readv {
            offset: Some(_), ..
        }
        | Op::Write {
            offset: Some(_), ..
        }
        | Op::Writev {
            offset: Some(_), ..
        } => Route::Pool,
        Op::Read { .. } | Op::Readv { .. } | Op::Write { .. } | Op::Writev { .. }
            if class == FdClass::File =>
        {
            Route::Pool
        }
        // Sockets are read and written with MSG_DONTWAIT, whatever their O_NONBLOCK says.
        Op::Read { .. } | Op::Readv { .. } if socket || nonblocking => Route::Now(IN),
        // A blocking pipe or tty: readiness first, then a read that cannot block for long.
        Op::Read { .. } | Op::Readv { .. } => Route::Wait(IN),
        Op::Write { .. } | Op::Writev { .. } if socket || nonblocking => Route::Now(OUT),
        // A write to a blocking pipe or tty may block until everything is written.
        Op::Write { .. } | Op::Writev { .. } => Route::Pool,
        Op::Recv { .. } | Op::RecvMsg { .. } | Op::RecvMulti { .. } => Route::Now(IN),
        Op::Send { .. } | Op::SendMsg { .. } => Route::Now(OUT),
        // On a non-socket the syscall fails at once with ENOTSOCK.
        Op::Accept { .. } if !socket || nonblocking => Route::Now(IN),
        Op::Accept { .. } => Route::Wait(IN),
        Op::Connect { .. } if !socket || nonblocking => Route::Now(OUT),
        // A blocking connect waits for the handshake.
        Op::Connect { .. } => Route::Pool,
        // Handled by the driver; never routed.
        Op::Nop | Op::Poll { .. } | Op::Close { .. } => Route::Pool,
    }
}

/// The readiness an I/O operation waits for: `IN` for reads, receives and accepts, `OUT` for
/// writes, sends and connects (0 for the others).
pub(super) fn direction(op: &Op) -> u32 {
    match op {
        Op::Read { .. }
        | Op::Readv { .. }
        | Op::Recv { .. }
        | Op::RecvMsg { .. }
        | Op::RecvMulti { .. }
        | Op::Accept { .. } => IN,
        Op::Write { .. }
        | Op::Writev { .. }
        | Op::Send { .. }
        | Op::SendMsg { .. }
        | Op::Connect { .. } => OUT,
        // Nop, Poll, Close, Fsync: not driven by readiness.
        _ => 0,
    }
}

/// The total length of `iov[..iovcnt]`.
///
/// # Safety
///
/// (I2) `iov[..iovcnt]` is valid for reads; a null `iov` is accepted when `iovcnt` is 0.
unsafe fn iov_len(iov: *const libc::iovec, iovcnt: usize) -> usize {
    if iov.is_null() || iovcnt == 0 {
        return 0;
    }
    // SAFETY: (I2) the caller guarantees `iov[..iovcnt]` is valid for reads, and `iov` is non-null
    // here.
    let slice = unsafe { std::slice::from_raw_parts(iov, iovcnt) };
    slice
        .iter()
        .fold(0usize, |acc, v| acc.saturating_add(v.iov_len))
}

/// For a stream transfer (read, write, receive or send without `MSG_PEEK`, no offset): the
/// readiness it uses and the bytes asked for. `None` for other operations.
///
/// # Safety
///
/// (I2) `op`'s iovecs and msghdr are valid for reads.
pub(super) unsafe fn stream_transfer(op: &Op) -> Option<(u32, usize)> {
    // SAFETY: (I2) the caller guarantees `op`'s iovecs and msghdr are valid for reads: `iov_len`
    // and the reads of `*msg` only read them.
    unsafe {
        match *op {
            Op::Read {
                len, offset: None, ..
            } => Some((IN, len as usize)),
            Op::Recv { len, flags, .. } if flags & libc::MSG_PEEK == 0 => Some((IN, len as usize)),
            // The whole buffer at the head of the ring was offered: `(*ring)` is valid while
            // the operation is in flight (I2).
            Op::RecvMulti { ring, flags, .. } if flags & libc::MSG_PEEK == 0 => {
                Some((IN, (*ring).buf_size() as usize))
            }
            Op::Readv {
                iov,
                iovcnt,
                offset: None,
                ..
            } => Some((IN, iov_len(iov, iovcnt as usize))),
            Op::RecvMsg { msg, flags, .. } if flags & libc::MSG_PEEK == 0 && !msg.is_null() => {
                Some((IN, iov_len((*msg).msg_iov, (*msg).msg_iovlen)))
            }
            Op::Write {
                len, offset: None, ..
            } => Some((OUT, len as usize)),
            Op::Send { len, .. } => Some((OUT, len as usize)),
            Op::Writev {
                iov,
                iovcnt,
                offset: None,
                ..
            } => Some((OUT, iov_len(iov, iovcnt as usize))),
            Op::SendMsg { msg, .. } if !msg.is_null() => {
                Some((OUT, iov_len((*msg).msg_iov, (*msg).msg_iovlen)))
            }
            _ => None,
        }
    }
}

/// A read of nothing from the stream position (`Read` of length 0, `Readv` whose buffers add up
/// to 0): issued as `read(2)`/`readv(2)`, which answer at once (0, or an error such as `EBADF`)
/// on every kind of file. (A zero-length `recv(MSG_DONTWAIT)` on an idle socket would say
/// `EAGAIN` and wait.) `None` for other operations.
///
/// # Safety
///
/// (I2, I3) `op`'s buffer and iovecs are valid, its fd open.
pub(super) unsafe fn empty_read(op: &Op) -> Option<i32> {
    match *op {
        Op::Read {
            fd,
            buf,
            len: 0,
            offset: None,
        } => Some(retry(|| {
            // SAFETY: (I3, FFI) a zero-length read writes nothing to `buf`; the caller keeps the fd
            // open.
            unsafe { libc::read(fd, buf.cast(), 0) }
        })),
        Op::Readv {
            fd,
            iov,
            iovcnt,
            offset: None,
            // SAFETY: (I2) the caller guarantees `op`'s iovecs are valid for reads, and `iov` is
            // non-null here.
        } if !iov.is_null() && unsafe { iov_len(iov, iovcnt as usize) } == 0 => Some(retry(|| {
            // SAFETY: (I2, I3) the caller guarantees the iovecs are valid and the fd open; buffers
            // adding up to 0 bytes are not written.
            unsafe { libc::readv(fd, iov, iovcnt as i32) as isize }
        })),
        _ => None,
    }
}

/// Whether the socket `fd` listens (`SO_ACCEPTCONN`). `true` when it cannot be told: the
/// accept itself then reports the error.
pub(super) fn is_listening(fd: RawFd) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: (FFI) `on` and `len` are live locals of the sizes getsockopt is told about.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            ptr::addr_of_mut!(on).cast(),
            &mut len,
        )
    };
    r != 0 || on != 0
}

/// The current `errno`.
fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Calls `f` until it does not fail with `EINTR`; returns its value or `-errno`.
fn retry(mut f: impl FnMut() -> isize) -> i32 {
    loop {
        let r = f();
        if r >= 0 || errno() != libc::EINTR {
            return to_result(r);
        }
    }
}

/// Maps a `-EAGAIN` result to [`Attempt::Again`].
fn attempt_of(r: i32) -> Attempt {
    if r == -libc::EAGAIN || r == -libc::EWOULDBLOCK {
        Attempt::Again
    } else {
        Attempt::Done(r)
    }
}

/// A `msghdr` that only carries an iovec array (for readv/writev on sockets).
fn iov_msghdr(iov: *const libc::iovec, iovcnt: u32) -> libc::msghdr {
    // SAFETY: (FFI) msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.cast_mut();
    msg.msg_iovlen = iovcnt as _;
    msg
}

/// A read on a blocking fd that must not block: `preadv2(RWF_NOWAIT)` at the file position
/// (pipes and sockets support it on recent kernels). Where the file does not support it
/// (`EOPNOTSUPP`), a plain read is done only after the fd has reported readiness (`ready`).
///
/// # Safety
///
/// (I2, I3) `iov[..iovcnt]` and the memory it points to must be valid for writes; `fd` open.
unsafe fn read_nowait(fd: RawFd, iov: *const libc::iovec, iovcnt: u32, ready: bool) -> Attempt {
    let r = retry(|| {
        // SAFETY: (I2, I3, I5) the caller guarantees the iovecs and their buffers are valid for
        // writes and the fd open; offset -1 means the file position; RWF_NOWAIT keeps the loop
        // thread from blocking.
        unsafe { libc::preadv2(fd, iov, iovcnt as i32, -1, libc::RWF_NOWAIT) as isize }
    });
    if r == -libc::EOPNOTSUPP || r == -libc::EINVAL {
        if !ready {
            return Attempt::Again;
        }
        // SAFETY: (I2, I3, I5) the caller guarantees the iovecs and their buffers are valid for
        // writes and the fd open; the fd reported readiness, so this read returns at once unless
        // another reader raced us (documented in the module docs).
        return attempt_of(retry(|| unsafe {
            libc::readv(fd, iov, iovcnt as i32) as isize
        }));
    }
    attempt_of(r)
}

/// Tries `op` once without blocking (retrying only `EINTR`).
///
/// `ready` says the fd has just reported readiness (blocking fds are only read then).
/// `connecting` says an earlier `connect` returned `EINPROGRESS`: the result is `SO_ERROR`.
///
/// # Safety
///
/// (I2, I3) Every pointer in `op` must be valid as the matching syscall requires, and its fd open.
/// `op` must have been routed to [`Route::Now`] or [`Route::Wait`] for `class`.
pub(super) unsafe fn attempt(op: &Op, class: FdClass, ready: bool, connecting: bool) -> Attempt {
    let socket = matches!(class, FdClass::Socket { .. });
    let nonblocking = class.is_nonblocking();
    // SAFETY: (I2, I3) for every syscall below, the caller guarantees that the buffers, iovecs,
    // msghdrs and addresses in `op` are valid and that the fd is open; the kernel only accesses
    // them for the duration of the call.
    unsafe {
        match *op {
            Op::Read { fd, buf, len, .. } if socket => attempt_of(retry(|| {
                libc::recv(fd, buf.cast(), len as usize, libc::MSG_DONTWAIT)
            })),
            Op::Read { fd, buf, len, .. } if nonblocking => {
                attempt_of(retry(|| libc::read(fd, buf.cast(), len as usize)))
            }
            Op::Read { fd, buf, len, .. } => {
                let iov = libc::iovec {
                    iov_base: buf.cast(),
                    iov_len: len as usize,
                };
                read_nowait(fd, &iov, 1, ready)
            }
            Op::Readv {
                fd, iov, iovcnt, ..
            } if socket => {
                let mut msg = iov_msghdr(iov, iovcnt);
                attempt_of(retry(|| libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT)))
            }
            Op::Readv {
                fd, iov, iovcnt, ..
            } if nonblocking => attempt_of(retry(|| libc::readv(fd, iov, iovcnt as i32) as isize)),
            Op::Readv {
                fd, iov, iovcnt, ..
            } => read_nowait(fd, iov, iovcnt, ready),
            // Like write(2) on a socket: no MSG_NOSIGNAL (a closed peer raises SIGPIPE exactly
            // as io_uring's write would).
            Op::Write { fd, buf, len, .. } if socket => attempt_of(retry(|| {
                libc::send(fd, buf.cast(), len as usize, libc::MSG_DONTWAIT)
            })),
            Op::Write { fd, buf, len, .. } => {
                attempt_of(retry(|| libc::write(fd, buf.cast(), len as usize)))
            }
            Op::Writev {
                fd, iov, iovcnt, ..
            } if socket => {
                let msg = iov_msghdr(iov, iovcnt);
                attempt_of(retry(|| libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT)))
            }
            Op::Writev {
                fd, iov, iovcnt, ..
            } => attempt_of(retry(|| libc::writev(fd, iov, iovcnt as i32) as isize)),
            Op::Recv {
                fd,
                buf,
                len,
                flags,
            } => attempt_of(retry(|| {
                libc::recv(fd, buf.cast(), len as usize, flags | libc::MSG_DONTWAIT)
            })),
            Op::Send {
                fd,
                buf,
                len,
                flags,
            } => attempt_of(retry(|| {
                let flags = flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                libc::send(fd, buf.cast(), len as usize, flags)
            })),
            Op::RecvMsg { fd, msg, flags } => {
                attempt_of(retry(|| libc::recvmsg(fd, msg, flags | libc::MSG_DONTWAIT)))
            }
            Op::RecvMulti { fd, ring, flags } => attempt_of(crate::bufring::recv_into(
                ring,
                fd,
                flags | libc::MSG_DONTWAIT,
            )),
            Op::SendMsg { fd, msg, flags } => attempt_of(retry(|| {
                let flags = flags | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                libc::sendmsg(fd, msg, flags)
            })),
            // accept4 on a blocking listener would wait: only after readiness.
            Op::Accept { .. } if socket && !nonblocking && !ready => Attempt::Again,
            Op::Accept {
                fd,
                addr,
                addrlen,
                flags,
                ..
            } => attempt_of(retry(|| {
                let flags = flags | libc::SOCK_CLOEXEC;
                libc::accept4(fd, addr.cast(), addrlen, flags) as isize
            })),
            Op::Connect { fd, .. } if connecting => Attempt::Done(socket_error(fd)),
            Op::Connect { fd, addr, addrlen } => {
                let r = retry(|| libc::connect(fd, addr.cast(), addrlen) as isize);
                match -r {
                    libc::EINPROGRESS => Attempt::InProgress,
                    // A Unix listener's full backlog: an unconnected socket is always
                    // writable, so waiting for OUT would spin. Reported as is.
                    libc::EAGAIN => Attempt::Done(-libc::EAGAIN),
                    _ => attempt_of(r),
                }
            }
            Op::Fsync { .. } | Op::Nop | Op::Poll { .. } | Op::Close { .. } => {
                Attempt::Done(-libc::EINVAL)
            }
        }
    }
}

/// The pending error of a socket (`SO_ERROR`) as `0` or `-errno`.
fn socket_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: (FFI) `err` and `len` are live locals of the sizes getsockopt is told about.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            ptr::addr_of_mut!(err).cast(),
            &mut len,
        )
    };
    if r < 0 {
        -errno()
    } else {
        -err
    }
}

/// The fast path for a positional file read: `preadv2(RWF_NOWAIT)` on the loop thread, which
/// succeeds when the data is in the page cache. Only a complete read (or 0 at end of file) is
/// accepted; a short or failed one returns `None` and the caller runs the read on the pool, so
/// that results match io_uring's (which completes buffered file reads in full).
///
/// # Safety
///
/// (I2, I3) `op`'s buffer or iovecs (and their buffers) must be valid for writes and its fd open.
pub(super) unsafe fn file_read_nowait(op: &Op) -> Option<i32> {
    let (fd, iov, iovcnt, offset, single);
    match *op {
        Op::Read {
            fd: f,
            buf,
            len,
            offset: Some(off),
        } => {
            single = libc::iovec {
                iov_base: buf.cast(),
                iov_len: len as usize,
            };
            (fd, iov, iovcnt, offset) = (f, ptr::addr_of!(single), 1, off);
        }
        Op::Readv {
            fd: f,
            iov: v,
            iovcnt: n,
            offset: Some(off),
        } => (fd, iov, iovcnt, offset) = (f, v, n, off),
        _ => return None,
    }
    let offset = i64::try_from(offset).ok()?;
    // SAFETY: (I2) the caller guarantees `iov[..iovcnt]` is valid for reads (or `iov` points to
    // `single`, alive here).
    let slice = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
    let total: usize = slice.iter().map(|v| v.iov_len).sum();
    // SAFETY: (I2, I3, I5) the caller guarantees the iovecs (or `single`, alive here) and their
    // buffers are valid for writes and the fd open; RWF_NOWAIT keeps the loop thread from blocking.
    let r = unsafe { libc::preadv2(fd, iov, iovcnt as i32, offset, libc::RWF_NOWAIT) };
    if r < 0 || (r != 0 && r as usize != total) {
        None
    } else {
        Some(to_result(r as isize))
    }
}

/// Runs `op` as the plain blocking syscall (on a pool thread), retrying `EINTR`.
///
/// # Safety
///
/// (I2, I3) Every pointer in `op` must be valid as the matching syscall requires, and its fd open,
/// until this returns.
pub(super) unsafe fn run_blocking(op: &Op) -> i32 {
    // SAFETY: (I2, I3) for every syscall below, the caller guarantees that the buffers, iovecs,
    // msghdrs and addresses in `op` are valid and that the fd is open until we return; the kernel
    // only accesses them for the duration of the call.
    unsafe {
        match *op {
            Op::Read {
                fd,
                buf,
                len,
                offset,
            } => retry(|| match offset {
                Some(off) => libc::pread(fd, buf.cast(), len as usize, off as i64),
                None => libc::read(fd, buf.cast(), len as usize),
            }),
            Op::Write {
                fd,
                buf,
                len,
                offset,
            } => retry(|| match offset {
                Some(off) => libc::pwrite(fd, buf.cast(), len as usize, off as i64),
                None => libc::write(fd, buf.cast(), len as usize),
            }),
            Op::Readv {
                fd,
                iov,
                iovcnt,
                offset,
            } => retry(|| match offset {
                Some(off) => libc::preadv(fd, iov, iovcnt as i32, off as i64) as isize,
                None => libc::readv(fd, iov, iovcnt as i32) as isize,
            }),
            Op::Writev {
                fd,
                iov,
                iovcnt,
                offset,
            } => retry(|| match offset {
                Some(off) => libc::pwritev(fd, iov, iovcnt as i32, off as i64) as isize,
                None => libc::writev(fd, iov, iovcnt as i32) as isize,
            }),
            Op::Fsync { fd, datasync } => retry(|| {
                if datasync {
                    libc::fdatasync(fd) as isize
                } else {
                    libc::fsync(fd) as isize
                }
            }),
            Op::Connect { fd, addr, addrlen } => {
                let r = to_result(libc::connect(fd, addr.cast(), addrlen) as isize);
                if r != -libc::EINTR {
                    return r;
                }
                // An interrupted blocking connect goes on in the background: wait for it.
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                let p = retry(|| libc::poll(&mut pfd, 1, -1) as isize);
                if p < 0 {
                    p
                } else {
                    socket_error(fd)
                }
            }
            Op::Recv {
                fd,
                buf,
                len,
                flags,
            } => retry(|| libc::recv(fd, buf.cast(), len as usize, flags)),
            Op::Send {
                fd,
                buf,
                len,
                flags,
            } => retry(|| libc::send(fd, buf.cast(), len as usize, flags | libc::MSG_NOSIGNAL)),
            Op::RecvMsg { fd, msg, flags } => retry(|| libc::recvmsg(fd, msg, flags)),
            Op::SendMsg { fd, msg, flags } => {
                retry(|| libc::sendmsg(fd, msg, flags | libc::MSG_NOSIGNAL))
            }
            Op::Accept {
                fd,
                addr,
                addrlen,
                flags,
                ..
            } => retry(|| {
                libc::accept4(fd, addr.cast(), addrlen, flags | libc::SOCK_CLOEXEC) as isize
            }),
            Op::Nop | Op::Poll { .. } | Op::Close { .. } | Op::RecvMulti { .. } => -libc::EINVAL,
        }
    }
}

/// `epoll_pwait2` with a nanosecond timeout, or, where it is missing (`ENOSYS`, which clears
/// `pwait2` for good), `epoll_wait` with the timeout in milliseconds rounded up, so that the wait
/// never ends before the timeout. `None` waits without limit. Fills `events` from the start and
/// returns how many there are.
///
/// # Errors
///
/// The wait's own errors, `EINTR` included.
pub(super) fn epoll_wait(
    epfd: RawFd,
    events: &mut [libc::epoll_event],
    timeout: Option<Duration>,
    pwait2: &mut bool,
) -> io::Result<usize> {
    let cap = events.len().min(libc::c_int::MAX as usize) as libc::c_int;
    if *pwait2 {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: d.subsec_nanos() as _,
        });
        let tsp = ts
            .as_ref()
            .map_or(ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: (FFI) `events` has room for `cap` events and `tsp` is null or points to a live
        // timespec; a null sigmask leaves the signal mask alone.
        let r = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                epfd,
                events.as_mut_ptr(),
                cap,
                tsp,
                ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        *pwait2 = false;
    }
    let ms = match timeout {
        None => -1,
        Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int,
    };
    // SAFETY: (FFI) `events` has room for `cap` events; `epfd` is our open epoll fd.
    let r = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), cap, ms) };
    cvt(r).map(|n| n as usize)
}
