//! Completion-style I/O for callbacks, with owned buffers.
//!
//! Each operation takes its buffer by value (`Vec<u8>`), lends it to the kernel, and hands it
//! back to the callback together with the result. Because the loop owns the buffer until the
//! operation's final completion (invariant I2), dropping or cancelling never frees memory the
//! kernel may still write: a cancelled operation's callback receives `ECANCELED` (or its real
//! result, if it won the race) and its buffer.
//!
//! On io_uring these are real asynchronous operations, regular-file reads and writes included.
//! On epoll, socket and pipe operations are tried at once and retried on readiness, and
//! regular-file operations run on the backend's small thread pool.
//!
//! The fd stays owned by the caller and must stay open until the callback has run (detach, then
//! close): fdloop never closes an fd it does not own.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use fdloop_backends::{BackendKind, Op, OpId};

use crate::descriptor::Descriptor;
use crate::event_loop::OpKind;
use crate::sys::{result, sockaddr_from, sockaddr_to};
use crate::Loop;

mod multishot;

pub use multishot::BufPool;
pub(crate) use multishot::Multi;

/// The largest transfer one operation asks for (the kernel's own per-call limit).
const MAX_LEN: usize = 0x7fff_f000;

/// What the loop does with an I/O operation when its final completion arrives.
pub(crate) trait Pending {
    /// Calls the user's callback with the result.
    fn complete(self: Box<Self>, lp: &Loop, result: i32);
    /// Frees what the operation owns without calling back (the loop is closing). Resources
    /// the kernel created for it (an accepted fd) are closed.
    fn discard(self: Box<Self>, result: i32);
}

/// Identifies an I/O operation in flight, for [`Loop::cancel`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoId {
    pub(crate) serial: u32,
    pub(crate) key: OpId,
}

impl fmt::Debug for IoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoId({}:{})", self.serial, self.key.to_u64())
    }
}

struct BufOp<F> {
    buf: Vec<u8>,
    /// Reads keep only what the kernel filled.
    truncate: bool,
    callback: F,
}

impl<F> Pending for BufOp<F>
where
    F: FnOnce(&Loop, io::Result<usize>, Vec<u8>),
{
    fn complete(self: Box<Self>, lp: &Loop, res: i32) {
        let BufOp {
            mut buf,
            truncate,
            callback,
        } = *self;
        let r = result(res);
        if truncate {
            if let Ok(n) = r {
                buf.truncate(n);
            }
        }
        callback(lp, r, buf);
    }

    fn discard(self: Box<Self>, _res: i32) {}
}

struct AcceptOp<F> {
    addr: libc::sockaddr_storage,
    addrlen: libc::socklen_t,
    callback: F,
}

impl<F> Pending for AcceptOp<F>
where
    F: FnOnce(&Loop, io::Result<(OwnedFd, Option<SocketAddr>)>),
{
    fn complete(self: Box<Self>, lp: &Loop, res: i32) {
        let r = result(res).map(|fd| {
            // SAFETY: (FFI) `fd` is the new fd that a successful accept just returned, and nothing
            // else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
            (fd, sockaddr_to(&self.addr))
        });
        (self.callback)(lp, r);
    }

    fn discard(self: Box<Self>, res: i32) {
        if res >= 0 {
            // SAFETY: (FFI) the accept succeeded after all (it won the race with cancellation):
            // `res` is the new fd it returned, which nothing else owns, so the loop closes it.
            drop(unsafe { OwnedFd::from_raw_fd(res) });
        }
    }
}

struct ConnectOp<F> {
    addr: libc::sockaddr_storage,
    callback: F,
}

impl<F> Pending for ConnectOp<F>
where
    F: FnOnce(&Loop, io::Result<()>),
{
    fn complete(self: Box<Self>, lp: &Loop, res: i32) {
        (self.callback)(lp, result(res).map(drop));
    }

    fn discard(self: Box<Self>, _res: i32) {}
}

#[derive(Clone, Copy)]
enum Dir {
    Read(Option<u64>),
    Write(Option<u64>),
    Recv,
    Send,
}

impl Loop {
    fn buf_op<F>(&self, fd: RawFd, buf: Vec<u8>, dir: Dir, callback: F) -> IoId
    where
        F: FnOnce(&Loop, io::Result<usize>, Vec<u8>) + 'static,
    {
        let truncate = matches!(dir, Dir::Read(_) | Dir::Recv);
        let mut pending = Box::new(BufOp {
            buf,
            truncate,
            callback,
        });
        let len = pending.buf.len().min(MAX_LEN) as u32;
        let ptr = pending.buf.as_mut_ptr();
        let op = match dir {
            Dir::Read(offset) => Op::Read {
                fd,
                buf: ptr,
                len,
                offset,
            },
            Dir::Write(offset) => Op::Write {
                fd,
                buf: ptr,
                len,
                offset,
            },
            Dir::Recv => Op::Recv {
                fd,
                buf: ptr,
                len,
                flags: 0,
            },
            Dir::Send => Op::Send {
                fd,
                buf: ptr,
                len,
                flags: 0,
            },
        };
        // SAFETY: (I2, I3) the buffer is owned by `pending`, which the loop keeps in its operation
        // table until the final completion, and moving the Box does not move the Vec's heap memory;
        // the caller keeps `fd` open until the callback (documented rule; a closed fd only makes
        // the operation fail).
        let key = unsafe { self.push_op(op, OpKind::Io(pending)) };
        IoId {
            serial: self.inner.serial,
            key,
        }
    }

    /// Reads up to `buf.len()` bytes from `fd` at its current position (sockets, pipes, ttys,
    /// eventfd …). The callback gets the byte count (0 at end-of-file) and the buffer,
    /// truncated to what was read.
    ///
    /// # Errors
    ///
    /// Delivered to the callback: the `read(2)` error (`EBADF`, `EISDIR` …), or `ECANCELED`
    /// after [`Loop::cancel`] / [`Loop::detach`] / loop shutdown.
    pub fn read<F>(&self, fd: impl Descriptor, buf: Vec<u8>, callback: F) -> IoId
    where
        F: FnOnce(&Loop, io::Result<usize>, Vec<u8>) + 'static,
    {
        self.buf_op(fd.raw_fd(), buf, Dir::Read(None), callback)
    }

    /// Reads up to `buf.len()` bytes from `fd` at `offset` (`pread(2)`), without moving the file
    /// position. Asynchronous on both backends: io_uring reads in the kernel, epoll on its
    /// file thread pool.
    ///
    /// ```
    /// use fdloop::Loop;
    /// use std::io::Write;
    ///
    /// let lp = Loop::new()?;
    /// let path = std::env::temp_dir().join(format!("fdloop-doc-{}", std::process::id()));
    /// std::fs::File::create(&path)?.write_all(b"hello, file")?;
    /// let file = std::fs::File::open(&path)?;
    /// lp.read_at(&file, vec![0; 4], 7, |_lp, n, buf| {
    ///     assert_eq!(n.unwrap(), 4);
    ///     assert_eq!(buf, b"file");
    /// });
    /// lp.run()?;
    /// std::fs::remove_file(&path)?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`Loop::read`] (`ESPIPE` on pipes and sockets).
    pub fn read_at<F>(&self, fd: impl Descriptor, buf: Vec<u8>, offset: u64, callback: F) -> IoId
    where
        F: FnOnce(&Loop, io::Result<usize>, Vec<u8>) + 'static,
    {
        self.buf_op(fd.raw_fd(), buf, Dir::Read(Some(offset)), callback)
    }

    /// Writes `buf` to `fd` at its current position. The count may be short (as with
    /// `write(2)`); the buffer comes back unchanged.
    ///
    /// # Errors
    ///
    /// Delivered to the callback: the `write(2)` error (`EPIPE` for a closed pipe or socket —
    /// never `SIGPIPE` on sockets — `EBADF` …), or `ECANCELED`.
    pub fn write<F>(&self, fd: impl Descriptor, buf: Vec<u8>, callback: F) -> IoId
    where
        F: FnOnce(&Loop, io::Result<usize>, Vec<u8>) + 'static,
    {
        self.buf_op(fd.raw_fd(), buf, Dir::Write(None), callback)
    }

    /// Writes `buf` to `fd` at `offset` (`pwrite(2)`).
    ///
    /// # Errors
    ///
    /// As for [`Loop::write`].
    pub fn write_at<F>(&self, fd: impl Descriptor, buf: Vec<u8>, offset: u64, callback: F) -> IoId
    where
        F: FnOnce(&Loop, io::Result<usize>, Vec<u8>) + 'static,
    {
        self.buf_op(fd.raw_fd(), buf, Dir::Write(Some(offset)), callback)
    }

    /// Receives up to `buf.len()` bytes from a socket (`recv(2)`).
    ///
    /// # Errors
    ///
    /// Delivered to the callback: the `recv(2)` error (`ENOTSOCK`, `ECONNRESET` …), or
    /// `ECANCELED`.
    pub fn recv<F>(&self, socket: impl Descriptor, buf: Vec<u8>, callback: F) -> IoId
    where
        F: FnOnce(&Loop, io::Result<usize>, Vec<u8>) + 'static,
    {
        self.buf_op(socket.raw_fd(), buf, Dir::Recv, callback)
    }

    /// Sends `buf` on a socket (`send(2)` with `MSG_NOSIGNAL`: a closed peer gives `EPIPE`,
    /// never `SIGPIPE`). The count may be short.
    ///
    /// # Errors
    ///
    /// Delivered to the callback: the `send(2)` error, or `ECANCELED`.
    pub fn send<F>(&self, socket: impl Descriptor, buf: Vec<u8>, callback: F) -> IoId
    where
        F: FnOnce(&Loop, io::Result<usize>, Vec<u8>) + 'static,
    {
        self.buf_op(socket.raw_fd(), buf, Dir::Send, callback)
    }

    /// Accepts one connection on a listening socket. The new socket is close-on-exec (and
    /// non-blocking on the epoll backend); the address is `None` for non-IP sockets.
    ///
    /// # Errors
    ///
    /// Delivered to the callback: the `accept4(2)` error (`EMFILE` when out of fds, `EINVAL`
    /// for a socket that is not listening …), or `ECANCELED`.
    pub fn accept<F>(&self, listener: impl Descriptor, callback: F) -> IoId
    where
        F: FnOnce(&Loop, io::Result<(OwnedFd, Option<SocketAddr>)>) + 'static,
    {
        let fd = listener.raw_fd();
        let mut pending = Box::new(AcceptOp {
            // SAFETY: (FFI) sockaddr_storage is plain old data for which all zeroes is a valid
            // value.
            addr: unsafe { std::mem::zeroed() },
            addrlen: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
            callback,
        });
        let flags = match self.inner.info.kind {
            BackendKind::Epoll => libc::SOCK_NONBLOCK,
            BackendKind::Uring => 0,
        };
        let op = Op::Accept {
            fd,
            addr: &mut pending.addr,
            addrlen: &mut pending.addrlen,
            flags,
            multishot: false,
        };
        // SAFETY: (I2, I3) the address buffers live inside the boxed `pending`, which the loop
        // keeps in its operation table until the final completion; the caller keeps `listener` open
        // until the callback.
        let key = unsafe { self.push_op(op, OpKind::Io(pending)) };
        IoId {
            serial: self.inner.serial,
            key,
        }
    }

    /// Connects a socket to `addr`; the callback runs once the connection is established or
    /// has failed.
    ///
    /// # Errors
    ///
    /// Delivered to the callback: the `connect(2)` error (`ECONNREFUSED`, `ETIMEDOUT` …), or
    /// `ECANCELED`.
    pub fn connect<F>(&self, socket: impl Descriptor, addr: SocketAddr, callback: F) -> IoId
    where
        F: FnOnce(&Loop, io::Result<()>) + 'static,
    {
        let fd = socket.raw_fd();
        let (storage, addrlen) = sockaddr_from(&addr);
        let pending = Box::new(ConnectOp {
            addr: storage,
            callback,
        });
        let op = Op::Connect {
            fd,
            addr: &pending.addr,
            addrlen,
        };
        // SAFETY: (I2, I3) the address lives inside the boxed `pending`, which the loop keeps in
        // its operation table until the final completion; the caller keeps `socket` open until the
        // callback.
        let key = unsafe { self.push_op(op, OpKind::Io(pending)) };
        IoId {
            serial: self.inner.serial,
            key,
        }
    }

    /// Asks an I/O operation to stop early. Its callback still runs exactly once: with
    /// `ECANCELED`, or with its real result if it completed first (a read that had already
    /// received data keeps it), and always with its buffer.
    ///
    /// # Errors
    ///
    /// `NotFound` when the operation has already completed, or belongs to another loop.
    pub fn cancel(&self, id: IoId) -> io::Result<()> {
        if id.serial == self.inner.serial && self.cancel_op(id.key) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no such I/O operation in flight (already completed, or from another loop)",
            ))
        }
    }
}
