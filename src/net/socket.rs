//! The socket underneath every type of this module: an owned, non-blocking, close-on-exec fd,
//! its timeouts, and the waiting operations, built on the fiber primitives in `fiber::ops`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::{self, ManuallyDrop};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::fiber::ops;
use crate::fiber::scheduler::current_or_panic;
use crate::sys::cvt;

/// The encoding of "no timeout" in the atomics.
const NO_TIMEOUT: u64 = u64::MAX;

/// An owned socket fd (`O_NONBLOCK`, `FD_CLOEXEC`) and its read and write timeouts.
pub(crate) struct Socket {
    /// `None` only once `into_owned` has handed the fd out.
    fd: Option<OwnedFd>,
    /// Nanoseconds, or [`NO_TIMEOUT`]. Atomics keep the socket types `Send + Sync`, as std's.
    read_timeout: AtomicU64,
    write_timeout: AtomicU64,
}

impl Socket {
    /// `socket(2)`, close-on-exec and non-blocking.
    pub(crate) fn new(domain: i32, ty: i32) -> io::Result<Socket> {
        let ty = ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        // SAFETY: (FFI) socket(2) takes no pointers.
        let fd = cvt(unsafe { libc::socket(domain, ty, 0) })?;
        // SAFETY: (FFI) socket(2) returned a fresh fd that nothing else owns.
        Ok(Socket::fresh(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// `socketpair(2)` of Unix-domain sockets of type `ty`, close-on-exec and non-blocking.
    pub(crate) fn pair(ty: i32) -> io::Result<(Socket, Socket)> {
        let ty = ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        let mut fds = [0; 2];
        // SAFETY: (FFI) `fds` is a writable array of two ints.
        cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })?;
        // SAFETY: (FFI) socketpair(2) returned two fresh fds that nothing else owns.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Socket::fresh(a), Socket::fresh(b)))
    }

    /// Wraps an fd that is already non-blocking and close-on-exec.
    pub(crate) fn fresh(fd: OwnedFd) -> Socket {
        Socket {
            fd: Some(fd),
            read_timeout: AtomicU64::new(NO_TIMEOUT),
            write_timeout: AtomicU64::new(NO_TIMEOUT),
        }
    }

    /// Adopts an fd from elsewhere: sets `O_NONBLOCK` on it.
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Socket> {
        make_nonblocking(&fd)?;
        Ok(Socket::fresh(fd))
    }

    /// As [`Socket::adopt`], for `From<OwnedFd>`, which cannot fail: an fd whose flags cannot
    /// be read or set is not a usable fd, and its first operation reports the error.
    pub(crate) fn adopt_lenient(fd: OwnedFd) -> Socket {
        let _ = make_nonblocking(&fd);
        Socket::fresh(fd)
    }

    /// The fd.
    pub(crate) fn fd(&self) -> &OwnedFd {
        self.fd
            .as_ref()
            .expect("a socket has its fd until it is consumed")
    }

    /// The fd number, for syscalls.
    pub(crate) fn raw(&self) -> RawFd {
        self.fd().as_raw_fd()
    }

    /// Gives the fd away (it stays open).
    pub(crate) fn into_owned(mut self) -> OwnedFd {
        self.fd
            .take()
            .expect("a socket has its fd until it is consumed")
    }

    /// A new socket on a duplicate of the fd (`F_DUPFD_CLOEXEC`), with a copy of the timeouts.
    pub(crate) fn try_clone(&self) -> io::Result<Socket> {
        let fd = self.fd().try_clone()?;
        Ok(Socket {
            fd: Some(fd),
            read_timeout: AtomicU64::new(self.read_timeout.load(Ordering::Relaxed)),
            write_timeout: AtomicU64::new(self.write_timeout.load(Ordering::Relaxed)),
        })
    }

    /// Calls `f` with the std socket type `S` viewing this fd, for std's option and address
    /// methods (none of which waits on a non-blocking socket).
    pub(crate) fn with_std<S: FromRawFd, R>(&self, f: impl FnOnce(&S) -> R) -> R {
        // SAFETY: (I3, FFI) the fd is open for this whole call (it is borrowed from `self`). The
        // std value never owns it: `ManuallyDrop` keeps it from closing the fd, and `f` gets only a
        // shared reference, through which it can neither close the fd nor give it away.
        let s = ManuallyDrop::new(unsafe { S::from_raw_fd(self.raw()) });
        f(&s)
    }

    // --- options and syscalls that never wait -------------------------------------------

    /// `setsockopt(2)` with an `int` value.
    pub(crate) fn set_opt(&self, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
        // SAFETY: (FFI) `value` is a live `int` and the length says so.
        cvt(unsafe {
            libc::setsockopt(
                self.raw(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// `getsockopt(2)` of an `int` value.
    pub(crate) fn opt(&self, level: i32, name: i32) -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: (FFI) `value` and `len` are live locals of the sizes the kernel is told about.
        cvt(unsafe {
            libc::getsockopt(
                self.raw(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        Ok(value)
    }

    /// Takes the pending error (`SO_ERROR`).
    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        let e = self.opt(libc::SOL_SOCKET, libc::SO_ERROR)?;
        Ok((e != 0).then(|| io::Error::from_raw_os_error(e)))
    }

    /// `bind(2)`.
    pub(crate) fn bind(
        &self,
        addr: &libc::sockaddr_storage,
        len: libc::socklen_t,
    ) -> io::Result<()> {
        // SAFETY: (FFI) `addr` is a valid socket address of `len` bytes for the whole call.
        cvt(unsafe { libc::bind(self.raw(), sockaddr_ptr(addr), len) }).map(drop)
    }

    /// `listen(2)` with the largest backlog the kernel allows (`net.core.somaxconn`).
    pub(crate) fn listen(&self) -> io::Result<()> {
        // SAFETY: (FFI) listen(2) takes no pointers.
        cvt(unsafe { libc::listen(self.raw(), libc::c_int::MAX) }).map(drop)
    }

    /// `connect(2)` for datagram sockets, where it only records the peer and never waits.
    pub(crate) fn connect_now(
        &self,
        addr: &libc::sockaddr_storage,
        len: libc::socklen_t,
    ) -> io::Result<()> {
        // SAFETY: (FFI) `addr` is a valid socket address of `len` bytes for the whole call.
        cvt(unsafe { libc::connect(self.raw(), sockaddr_ptr(addr), len) }).map(drop)
    }

    /// `shutdown(2)`.
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => libc::SHUT_RD,
            Shutdown::Write => libc::SHUT_WR,
            Shutdown::Both => libc::SHUT_RDWR,
        };
        // SAFETY: (FFI) shutdown(2) takes no pointers.
        cvt(unsafe { libc::shutdown(self.raw(), how) }).map(drop)
    }

    // --- timeouts -----------------------------------------------------------------------

    pub(crate) fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.read_timeout.store(encode(dur)?, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
        self.write_timeout.store(encode(dur)?, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn read_timeout(&self) -> Option<Duration> {
        decode(self.read_timeout.load(Ordering::Relaxed))
    }

    pub(crate) fn write_timeout(&self) -> Option<Duration> {
        decode(self.write_timeout.load(Ordering::Relaxed))
    }

    // --- operations that wait: they suspend the calling fiber ----------------------------

    /// `recv(2)` with the read timeout.
    pub(crate) fn recv(&self, buf: &mut [u8], flags: i32) -> io::Result<usize> {
        let t = self.read_timeout();
        ops::recv(self.raw(), buf, flags, t)
    }

    /// `send(2)` (`MSG_NOSIGNAL`) with the write timeout.
    pub(crate) fn send(&self, buf: &[u8], flags: i32) -> io::Result<usize> {
        let t = self.write_timeout();
        ops::send(self.raw(), buf, flags | libc::MSG_NOSIGNAL, t)
    }

    /// `recvmsg(2)` with the read timeout.
    ///
    /// # Safety
    ///
    /// (I2) `msg` and everything it points to must stay valid and unmoved for the whole call;
    /// the operation reaches its final completion before this returns.
    pub(crate) unsafe fn recvmsg(
        &self,
        msg: &mut libc::msghdr,
        flags: i32,
        orphan: Option<&dyn Fn(i32)>,
    ) -> io::Result<usize> {
        let t = self.read_timeout();
        // SAFETY: (I2) forwarded from this function's contract (the caller keeps `msg` and what it
        // points to valid); `fiber_io` underneath returns only after the operation's final
        // completion.
        unsafe { ops::recvmsg(self.raw(), msg, flags, t, orphan) }
    }

    /// `sendmsg(2)` (`MSG_NOSIGNAL`) with the write timeout.
    ///
    /// # Safety
    ///
    /// (I2) `msg` and everything it points to must stay valid and unmoved for the whole call;
    /// the operation reaches its final completion before this returns.
    pub(crate) unsafe fn sendmsg(&self, msg: &libc::msghdr, flags: i32) -> io::Result<usize> {
        let t = self.write_timeout();
        let flags = flags | libc::MSG_NOSIGNAL;
        // SAFETY: (I2) forwarded from this function's contract (the caller keeps `msg` and what it
        // points to valid); `fiber_io` underneath returns only after the operation's final
        // completion.
        unsafe { ops::sendmsg(self.raw(), msg, flags, t) }
    }

    /// Receives one message into `buf` and returns its length and the sender's address.
    pub(crate) fn recv_from(
        &self,
        buf: &mut [u8],
        flags: i32,
    ) -> io::Result<(usize, libc::sockaddr_storage, libc::socklen_t)> {
        // SAFETY: (FFI) sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg = msghdr();
        msg.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: (I2) `msg` points to `storage` and `iov` in this frame and `iov` to `buf`, which
        // is borrowed for this call; the frame outlives the operation's final completion.
        let n = unsafe { self.recvmsg(&mut msg, flags, None) }?;
        let len = msg.msg_namelen;
        Ok((n, storage, len))
    }

    /// Sends one message from `buf` to the address `to`.
    pub(crate) fn send_to(
        &self,
        buf: &[u8],
        to: &libc::sockaddr_storage,
        to_len: libc::socklen_t,
    ) -> io::Result<usize> {
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        };
        let mut msg = msghdr();
        msg.msg_name = (to as *const libc::sockaddr_storage).cast_mut().cast();
        msg.msg_namelen = to_len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        // SAFETY: (I2) `msg` points to `iov` in this frame, and to `to` and `buf`, borrowed for
        // this call; the kernel only reads them, and the frame outlives the operation's final
        // completion.
        unsafe { self.sendmsg(&msg, 0) }
    }

    /// `accept4(2)`: a non-blocking, close-on-exec socket and the peer's address.
    pub(crate) fn accept(&self) -> io::Result<(Socket, libc::sockaddr_storage, libc::socklen_t)> {
        let (fd, addr, len) = ops::accept(self.raw(), libc::SOCK_NONBLOCK, None)?;
        // SAFETY: (FFI) accept4(2) returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok((Socket::fresh(fd), addr, len))
    }

    /// `connect(2)`, waiting for the handshake (at most `timeout`).
    pub(crate) fn connect(
        &self,
        addr: &libc::sockaddr_storage,
        len: libc::socklen_t,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        ops::connect(self.raw(), addr, len, timeout)
    }

    // --- stream semantics: empty buffers do not wait ------------------------------------

    pub(crate) fn read_stream(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            current_or_panic("fdloop::net read");
            return Ok(0);
        }
        self.recv(buf, 0)
    }

    pub(crate) fn read_vectored_stream(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            current_or_panic("fdloop::net read");
            return Ok(0);
        }
        let t = self.read_timeout();
        ops::readv(self.raw(), bufs, None, t)
    }

    pub(crate) fn write_stream(&self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            current_or_panic("fdloop::net write");
            return Ok(0);
        }
        self.send(buf, 0)
    }

    pub(crate) fn write_vectored_stream(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            current_or_panic("fdloop::net write");
            return Ok(0);
        }
        let mut msg = msghdr();
        // IoSlice is ABI-compatible with iovec on Unix; the kernel only reads through it.
        msg.msg_iov = bufs.as_ptr().cast_mut().cast();
        msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize) as _;
        // SAFETY: (I2) `msg` points to `bufs`, borrowed for this call, which outlives the
        // operation's final completion.
        unsafe { self.sendmsg(&msg, 0) }
    }

    pub(crate) fn peek_stream(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            current_or_panic("fdloop::net peek");
            return Ok(0);
        }
        self.recv(buf, libc::MSG_PEEK)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(fd) = &self.fd {
            forget_in_loop(fd.as_raw_fd());
        }
    }
}

/// Makes the loops of this thread forget what they cached about `fd` (its kind, its epoll
/// registration), so that the number can be reused by another kind of file. Nothing of a
/// loop's is in flight on `fd` here: every waiting operation borrows the socket.
fn forget_in_loop(fd: RawFd) {
    crate::event_loop::forget_fd(fd);
}

/// Sets `O_NONBLOCK`; when it was not set, the loops of this thread forget the flag they may
/// have cached for this fd.
fn make_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: (FFI) F_GETFL takes no pointer.
    let flags = cvt(unsafe { libc::fcntl(raw, libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: (FFI) F_SETFL takes an int, no pointer.
        cvt(unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
        forget_in_loop(raw);
    }
    Ok(())
}

/// An all-zero `msghdr`.
pub(crate) fn msghdr() -> libc::msghdr {
    // SAFETY: (FFI) msghdr is plain old data; all-zero is a valid empty header.
    unsafe { mem::zeroed() }
}

fn sockaddr_ptr(addr: &libc::sockaddr_storage) -> *const libc::sockaddr {
    (addr as *const libc::sockaddr_storage).cast()
}

/// A timeout for the atomics; zero is refused, as std does.
fn encode(dur: Option<Duration>) -> io::Result<u64> {
    match dur {
        None => Ok(NO_TIMEOUT),
        Some(d) if d.is_zero() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        )),
        Some(d) => Ok(u64::try_from(d.as_nanos())
            .unwrap_or(NO_TIMEOUT - 1)
            .min(NO_TIMEOUT - 1)),
    }
}

fn decode(v: u64) -> Option<Duration> {
    (v != NO_TIMEOUT).then(|| Duration::from_nanos(v))
}
