//! Unix-domain sockets: [`UnixListener`], [`UnixStream`] (with fd passing) and
//! [`UnixDatagram`].

use std::fmt;
use std::io;
use std::mem;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::addr::{sockaddr_un_addr, sockaddr_un_path, unix_addr_from};
use super::socket::{msghdr, Socket};
use crate::fiber;
use crate::fiber::scheduler::current_or_panic;

/// A Unix-domain stream socket listening for connections.
///
/// ```
/// use fdloop::net::{UnixListener, UnixStream};
/// use fdloop::Loop;
/// use std::io::{Read, Write};
///
/// let path = std::env::temp_dir().join(format!("fdloop-doc-{}.sock", std::process::id()));
/// let lp = Loop::new()?;
/// let listener = UnixListener::bind(&path)?;
/// let p = path.clone();
/// let server = lp.spawn(move || {
///     let (mut conn, _addr) = listener.accept().unwrap();
///     let mut s = String::new();
///     conn.read_to_string(&mut s).unwrap();
///     s
/// });
/// lp.spawn(move || UnixStream::connect(&p).unwrap().write_all(b"local").unwrap());
/// lp.run()?;
/// assert_eq!(server.join().unwrap(), "local");
/// std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UnixListener {
    sock: Socket,
}

/// A Unix-domain stream connection; `Read`/`Write` (also through `&UnixStream`) suspend only
/// the calling fiber. It can pass fds to its peer ([`UnixStream::send_with_fds`]).
pub struct UnixStream {
    sock: Socket,
}

/// A Unix-domain datagram socket.
pub struct UnixDatagram {
    sock: Socket,
}

/// The iterator of [`UnixListener::incoming`]; it never ends.
#[derive(Debug)]
pub struct UnixIncoming<'a> {
    listener: &'a UnixListener,
}

/// The most fds one message may carry (the kernel's `SCM_MAX_FD`).
const MAX_FDS: usize = 253;

/// Room for a full `SCM_RIGHTS` message plus other control messages the socket may be set up
/// to receive (`SCM_CREDENTIALS` …).
// SAFETY: (FFI) CMSG_SPACE only computes a size from its argument.
const CMSG_CAP: usize =
    unsafe { libc::CMSG_SPACE((MAX_FDS * mem::size_of::<RawFd>()) as u32) } as usize + 256;

/// A control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_CAP]);

fn bound(ty: i32, addr: (libc::sockaddr_storage, libc::socklen_t)) -> io::Result<Socket> {
    let sock = Socket::new(libc::AF_UNIX, ty)?;
    sock.bind(&addr.0, addr.1)?;
    Ok(sock)
}

fn listening(addr: (libc::sockaddr_storage, libc::socklen_t)) -> io::Result<UnixListener> {
    let sock = bound(libc::SOCK_STREAM, addr)?;
    sock.listen()?;
    Ok(UnixListener { sock })
}

/// A Unix-domain `connect(2)` never waits for a handshake: on a non-blocking socket it
/// completes at once or fails, with `EAGAIN` while the listener's backlog is full. The kernel
/// offers no readiness event for "the backlog has room" (the connecting socket polls writable
/// at once), so that case is retried after a sleep that suspends only the fiber.
fn connected(addr: (libc::sockaddr_storage, libc::socklen_t)) -> io::Result<UnixStream> {
    let sock = Socket::new(libc::AF_UNIX, libc::SOCK_STREAM)?;
    let mut backoff = Duration::from_millis(1);
    loop {
        match sock.connect_now(&addr.0, addr.1) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                fiber::sleep(backoff);
                backoff = (backoff * 2).min(MAX_CONNECT_BACKOFF);
            }
            r => return r.map(|()| UnixStream { sock }),
        }
    }
}

/// The longest sleep between two connect attempts to a listener whose backlog is full.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_millis(32);

impl UnixListener {
    /// Creates a listener bound to the filesystem path `path` (which must not exist yet; it is
    /// not removed when the listener goes). Works outside fibers too.
    ///
    /// # Errors
    ///
    /// `bind(2)` errors (`AddrInUse` when the path exists …); `InvalidInput` for a path with a
    /// NUL byte or longer than `sun_path`.
    pub fn bind<P: AsRef<Path>>(path: P) -> io::Result<UnixListener> {
        listening(sockaddr_un_path(path.as_ref())?)
    }

    /// Creates a listener bound to `addr`: a path or a Linux abstract name
    /// (`std::os::linux::net::SocketAddrExt::from_abstract_name`).
    ///
    /// # Errors
    ///
    /// As [`UnixListener::bind`]; `InvalidInput` for an unnamed address.
    pub fn bind_addr(addr: &SocketAddr) -> io::Result<UnixListener> {
        listening(sockaddr_un_addr(addr)?)
    }

    /// Adopts a std listener (sets `O_NONBLOCK` on it).
    ///
    /// # Errors
    ///
    /// `fcntl(2)` errors.
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        Ok(UnixListener {
            sock: Socket::adopt(OwnedFd::from(listener))?,
        })
    }

    /// Waits for a connection and returns it with the peer's address (usually unnamed).
    ///
    /// # Errors
    ///
    /// `accept4(2)` errors; `EMFILE`/`ENFILE` leave the connection queued and the listener
    /// usable.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        let (sock, storage, len) = self.sock.accept()?;
        Ok((UnixStream { sock }, unix_addr_from(&storage, len)?))
    }

    /// An endless iterator over [`UnixListener::accept`]'s streams.
    ///
    /// # Panics
    ///
    /// Its `next` panics outside a fiber.
    pub fn incoming(&self) -> UnixIncoming<'_> {
        UnixIncoming { listener: self }
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock
            .with_std(|s: &std::os::unix::net::UnixListener| s.local_addr())
    }

    /// A second listener on a duplicate of the fd.
    ///
    /// # Errors
    ///
    /// `fcntl(F_DUPFD_CLOEXEC)` errors (`EMFILE`).
    pub fn try_clone(&self) -> io::Result<UnixListener> {
        Ok(UnixListener {
            sock: self.sock.try_clone()?,
        })
    }

    /// Takes the socket's pending error (`SO_ERROR`).
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock.take_error()
    }
}

impl Iterator for UnixIncoming<'_> {
    type Item = io::Result<UnixStream>;

    fn next(&mut self) -> Option<io::Result<UnixStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

impl UnixStream {
    /// Connects to the socket at `path`. While the listener's backlog is full, the fiber
    /// sleeps and tries again (after 1 ms, doubling up to 32 ms) until the listener accepts
    /// or goes away.
    ///
    /// # Errors
    ///
    /// `connect(2)` errors: `NotFound` (no such path), `ConnectionRefused` (nobody listens);
    /// `InvalidInput` for a path with a NUL byte or too long.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn connect<P: AsRef<Path>>(path: P) -> io::Result<UnixStream> {
        current_or_panic("fdloop::net::UnixStream::connect");
        connected(sockaddr_un_path(path.as_ref())?)
    }

    /// Connects to `addr`: a path or a Linux abstract name.
    ///
    /// # Errors
    ///
    /// As [`UnixStream::connect`]; `InvalidInput` for an unnamed address.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn connect_addr(addr: &SocketAddr) -> io::Result<UnixStream> {
        current_or_panic("fdloop::net::UnixStream::connect_addr");
        connected(sockaddr_un_addr(addr)?)
    }

    /// Two connected streams (`socketpair(2)`). Works outside fibers too.
    ///
    /// # Errors
    ///
    /// `socketpair(2)` errors (`EMFILE` …).
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = Socket::pair(libc::SOCK_STREAM)?;
        Ok((UnixStream { sock: a }, UnixStream { sock: b }))
    }

    /// Adopts a connected std stream (sets `O_NONBLOCK` on it; std's timeouts are ignored).
    ///
    /// # Errors
    ///
    /// `fcntl(2)` errors.
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        Ok(UnixStream {
            sock: Socket::adopt(OwnedFd::from(stream))?,
        })
    }

    /// The local address (usually unnamed).
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock
            .with_std(|s: &std::os::unix::net::UnixStream| s.local_addr())
    }

    /// The peer's address.
    ///
    /// # Errors
    ///
    /// `getpeername(2)` errors (`NotConnected`).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock
            .with_std(|s: &std::os::unix::net::UnixStream| s.peer_addr())
    }

    /// Shuts down the reading side, the writing side (the peer reads end-of-file) or both.
    ///
    /// # Errors
    ///
    /// `shutdown(2)` errors (`NotConnected`).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.shutdown(how)
    }

    /// A second stream on a duplicate of the fd, starting with the same timeouts.
    ///
    /// # Errors
    ///
    /// `fcntl(F_DUPFD_CLOEXEC)` errors (`EMFILE`).
    pub fn try_clone(&self) -> io::Result<UnixStream> {
        Ok(UnixStream {
            sock: self.sock.try_clone()?,
        })
    }

    /// Receives data without removing it from the queue (`Ok(0)` at end-of-file, or at once
    /// for an empty `buf`).
    ///
    /// # Errors
    ///
    /// `recv(2)` errors; `WouldBlock` when the read timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.peek_stream(buf)
    }

    /// Sends `buf` together with duplicates of `fds` (`SCM_RIGHTS`); returns how many bytes of
    /// `buf` were sent. The fds travel with the first of those bytes, so a short send still
    /// delivers all of them: send the rest of `buf` with `write`. Without fds this is a plain
    /// write. The caller's fds stay open.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `fds` is not empty and `buf` is (fds need data to travel with), or
    /// for more than 253 fds (the kernel's limit per message); `sendmsg(2)` errors
    /// (`BrokenPipe`, `ETOOMANYREFS` …); `WouldBlock` when the write timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn send_with_fds(&self, buf: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if fds.is_empty() {
            return self.sock.write_stream(buf);
        }
        current_or_panic("fdloop::net::UnixStream::send_with_fds");
        if buf.is_empty() || fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "file descriptors need 1 to 253 per message and at least one byte of data",
            ));
        }
        let payload = (fds.len() * mem::size_of::<RawFd>()) as u32;
        let mut control = CmsgBuf([0; CMSG_CAP]);
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        };
        let mut msg = msghdr();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: (FFI) CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        // SAFETY: (FFI) `msg_control` points to `control`, aligned for `cmsghdr` and larger than
        // `msg_controllen`, which has room for one header and `payload` bytes; so CMSG_FIRSTHDR is
        // a valid, non-null header inside it, and CMSG_DATA has room for the fds (written
        // unaligned, as the data area need not be aligned for `int`).
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(payload) as _;
            let data = libc::CMSG_DATA(hdr).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
        // SAFETY: (I2, I3) `msg` points to `iov` and `control` in this frame and `iov` to `buf`,
        // borrowed for this call; the frame outlives the operation's final completion (I2). The fds
        // are borrowed too, so they are open while the kernel takes its references to them (I3).
        unsafe { self.sock.sendmsg(&msg, 0) }
    }

    /// Receives data into `buf` and appends the fds that came with it (`SCM_RIGHTS`) to
    /// `fds`, close-on-exec (`MSG_CMSG_CLOEXEC`); returns how many bytes were received
    /// (`Ok(0)` at end-of-file, or at once for an empty `buf`). The kernel delivers a
    /// message's fds with the first of its bytes and never merges two messages' fds into one
    /// receive.
    ///
    /// # Errors
    ///
    /// `recvmsg(2)` errors; `WouldBlock` when the read timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn recv_with_fds(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        if buf.is_empty() {
            current_or_panic("fdloop::net::UnixStream::recv_with_fds");
            return Ok(0);
        }
        let mut control = CmsgBuf([0; CMSG_CAP]);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg = msghdr();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_CAP as _;
        let msg_ptr: *const libc::msghdr = &msg;
        // If the fiber is unwound and the receive won the race, the fds that arrived are closed.
        let orphan = |n: i32| {
            if n >= 0 {
                // SAFETY: (I1, I2) `msg` lives in this frame, which outlives the operation, and
                // this runs on the operation's one final completion, after which the kernel no
                // longer writes it; its fds were not adopted before.
                unsafe { adopt_fds(msg_ptr, drop) };
            }
        };
        // SAFETY: (I2) `msg` points to `iov` and `control` in this frame and `iov` to `buf`,
        // borrowed for this call; the frame outlives the operation's final completion.
        let n = unsafe {
            self.sock
                .recvmsg(&mut msg, libc::MSG_CMSG_CLOEXEC, Some(&orphan))
        }?;
        // SAFETY: (I1, I2) the receive reached its final completion, so `msg` is no longer lent to
        // the kernel, and its fds were not adopted by `orphan` (which runs only when the fiber is
        // unwound).
        unsafe { adopt_fds(&msg, |fd| fds.push(fd)) };
        Ok(n)
    }
}

impl UnixDatagram {
    /// Creates a datagram socket bound to the path `path`. Works outside fibers too.
    ///
    /// # Errors
    ///
    /// `bind(2)` errors (`AddrInUse` …); `InvalidInput` for a bad path.
    pub fn bind<P: AsRef<Path>>(path: P) -> io::Result<UnixDatagram> {
        let sock = bound(libc::SOCK_DGRAM, sockaddr_un_path(path.as_ref())?)?;
        Ok(UnixDatagram { sock })
    }

    /// Creates a datagram socket bound to `addr` (a path or an abstract name).
    ///
    /// # Errors
    ///
    /// As [`UnixDatagram::bind`]; `InvalidInput` for an unnamed address.
    pub fn bind_addr(addr: &SocketAddr) -> io::Result<UnixDatagram> {
        let sock = bound(libc::SOCK_DGRAM, sockaddr_un_addr(addr)?)?;
        Ok(UnixDatagram { sock })
    }

    /// Creates a datagram socket bound to no address.
    ///
    /// # Errors
    ///
    /// `socket(2)` errors.
    pub fn unbound() -> io::Result<UnixDatagram> {
        Ok(UnixDatagram {
            sock: Socket::new(libc::AF_UNIX, libc::SOCK_DGRAM)?,
        })
    }

    /// Two connected datagram sockets (`socketpair(2)`).
    ///
    /// # Errors
    ///
    /// `socketpair(2)` errors.
    pub fn pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
        let (a, b) = Socket::pair(libc::SOCK_DGRAM)?;
        Ok((UnixDatagram { sock: a }, UnixDatagram { sock: b }))
    }

    /// Adopts a std socket (sets `O_NONBLOCK` on it).
    ///
    /// # Errors
    ///
    /// `fcntl(2)` errors.
    pub fn from_std(socket: std::os::unix::net::UnixDatagram) -> io::Result<UnixDatagram> {
        Ok(UnixDatagram {
            sock: Socket::adopt(OwnedFd::from(socket))?,
        })
    }

    /// Sets the default destination of [`UnixDatagram::send`] and the only source
    /// [`UnixDatagram::recv`] accepts. It never waits.
    ///
    /// # Errors
    ///
    /// `connect(2)` errors (`NotFound`, `ConnectionRefused` …); `InvalidInput` for a bad path.
    pub fn connect<P: AsRef<Path>>(&self, path: P) -> io::Result<()> {
        let (storage, len) = sockaddr_un_path(path.as_ref())?;
        self.sock.connect_now(&storage, len)
    }

    /// As [`UnixDatagram::connect`], to a path or an abstract name.
    ///
    /// # Errors
    ///
    /// As [`UnixDatagram::connect`]; `InvalidInput` for an unnamed address.
    pub fn connect_addr(&self, addr: &SocketAddr) -> io::Result<()> {
        let (storage, len) = sockaddr_un_addr(addr)?;
        self.sock.connect_now(&storage, len)
    }

    /// Sends one datagram to the connected peer, suspending the fiber while the peer's queue
    /// is full.
    ///
    /// # Errors
    ///
    /// `send(2)` errors (`NotConnected`, `ConnectionRefused` when the peer is gone …);
    /// `WouldBlock` when the write timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.sock.send(buf, 0)
    }

    /// Receives one datagram.
    ///
    /// # Errors
    ///
    /// `recv(2)` errors; `WouldBlock` when the read timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf, 0)
    }

    /// Sends one datagram to the socket bound at `path`.
    ///
    /// # Errors
    ///
    /// `sendmsg(2)` errors (`NotFound`, `ConnectionRefused` …); `InvalidInput` for a bad
    /// path; `WouldBlock` when the write timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn send_to<P: AsRef<Path>>(&self, buf: &[u8], path: P) -> io::Result<usize> {
        let (storage, len) = sockaddr_un_path(path.as_ref())?;
        self.sock.send_to(buf, &storage, len)
    }

    /// Sends one datagram to `addr` (a path or an abstract name).
    ///
    /// # Errors
    ///
    /// As [`UnixDatagram::send_to`]; `InvalidInput` for an unnamed address.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn send_to_addr(&self, buf: &[u8], addr: &SocketAddr) -> io::Result<usize> {
        let (storage, len) = sockaddr_un_addr(addr)?;
        self.sock.send_to(buf, &storage, len)
    }

    /// Receives one datagram and the sender's address (unnamed when it is not bound).
    ///
    /// # Errors
    ///
    /// `recvmsg(2)` errors; `WouldBlock` when the read timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, storage, len) = self.sock.recv_from(buf, 0)?;
        Ok((n, unix_addr_from(&storage, len)?))
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock
            .with_std(|s: &std::os::unix::net::UnixDatagram| s.local_addr())
    }

    /// The connected peer's address.
    ///
    /// # Errors
    ///
    /// `NotConnected` without [`UnixDatagram::connect`].
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock
            .with_std(|s: &std::os::unix::net::UnixDatagram| s.peer_addr())
    }

    /// Shuts down the reading side, the writing side or both.
    ///
    /// # Errors
    ///
    /// `shutdown(2)` errors.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.shutdown(how)
    }

    /// A second socket on a duplicate of the fd, starting with the same timeouts.
    ///
    /// # Errors
    ///
    /// `fcntl(F_DUPFD_CLOEXEC)` errors (`EMFILE`).
    pub fn try_clone(&self) -> io::Result<UnixDatagram> {
        Ok(UnixDatagram {
            sock: self.sock.try_clone()?,
        })
    }
}

super::timeout_methods!(UnixStream);
super::timeout_methods!(UnixDatagram);
super::stream_io!(UnixStream);
super::socket_fd_traits!(UnixListener);
super::socket_fd_traits!(UnixStream);
super::socket_fd_traits!(UnixDatagram);

fn debug_unix(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    fd: RawFd,
    local: io::Result<SocketAddr>,
    peer: Option<io::Result<SocketAddr>>,
) -> fmt::Result {
    let mut d = f.debug_struct(name);
    d.field("fd", &fd);
    if let Ok(a) = local {
        d.field("local", &a);
    }
    if let Some(Ok(a)) = peer {
        d.field("peer", &a);
    }
    d.finish()
}

impl fmt::Debug for UnixListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_unix(f, "UnixListener", self.sock.raw(), self.local_addr(), None)
    }
}

impl fmt::Debug for UnixStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = Some(self.peer_addr());
        debug_unix(f, "UnixStream", self.sock.raw(), self.local_addr(), peer)
    }
}

impl fmt::Debug for UnixDatagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = Some(self.peer_addr());
        debug_unix(f, "UnixDatagram", self.sock.raw(), self.local_addr(), peer)
    }
}

/// Adopts every fd of the `SCM_RIGHTS` control messages in `msg`, handing each to `f`.
///
/// # Safety
///
/// (I1, I2) `msg` must be a header the kernel filled in by a `recvmsg(2)` that reached its final
/// completion (so the kernel no longer writes it), with its control buffer still alive and not
/// adopted before.
unsafe fn adopt_fds(msg: *const libc::msghdr, mut f: impl FnMut(OwnedFd)) {
    // SAFETY: (I2, FFI) by this function's contract the `recvmsg(2)` reached its final completion,
    // so the kernel wrote `msg_controllen` bytes of well-formed control messages and writes them no
    // more; CMSG_FIRSTHDR/CMSG_NXTHDR stay inside that length, and each SCM_RIGHTS message holds
    // `(cmsg_len - CMSG_LEN(0)) / 4` fds that the kernel installed in this process for us alone, so
    // each is adopted exactly once.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(hdr).cast::<RawFd>();
                let bytes = (*hdr).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    f(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            hdr = libc::CMSG_NXTHDR(msg, hdr);
        }
    }
}
