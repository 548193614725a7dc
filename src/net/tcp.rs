//! TCP: [`TcpListener`] and [`TcpStream`].

use std::fmt;
use std::io;
use std::mem;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use super::addr::{each_addr, ToSocketAddrs};
use super::socket::Socket;
use crate::fiber::scheduler::current_or_panic;
use crate::sys::{cvt, sockaddr_from, sockaddr_to};

/// A TCP socket listening for connections; [`accept`](TcpListener::accept) suspends only the
/// calling fiber.
///
/// ```
/// use fdloop::net::{TcpListener, TcpStream};
/// use fdloop::Loop;
///
/// let lp = Loop::new()?;
/// let listener = TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// let server = lp.spawn(move || listener.accept().map(|(_conn, peer)| peer));
/// let client = lp.spawn(move || TcpStream::connect(addr).map(|s| s.local_addr()));
/// lp.run()?;
/// assert_eq!(server.join().unwrap()?, client.join().unwrap()??);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct TcpListener {
    sock: Socket,
}

/// A TCP connection. It implements [`std::io::Read`] and [`std::io::Write`] (also through
/// `&TcpStream`, so that one fiber may read while another writes); they suspend only the
/// calling fiber.
pub struct TcpStream {
    sock: Socket,
}

fn domain(addr: &SocketAddr) -> i32 {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

/// A listening socket on `addr` with the kernel's largest backlog.
fn listen_on(addr: &SocketAddr, reuseport: bool) -> io::Result<TcpListener> {
    let sock = Socket::new(domain(addr), libc::SOCK_STREAM)?;
    sock.set_opt(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuseport {
        sock.set_opt(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    let (storage, len) = sockaddr_from(addr);
    sock.bind(&storage, len)?;
    sock.listen()?;
    Ok(TcpListener { sock })
}

fn connect_to(addr: &SocketAddr, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let sock = Socket::new(domain(addr), libc::SOCK_STREAM)?;
    let (storage, len) = sockaddr_from(addr);
    sock.connect(&storage, len, timeout)?;
    Ok(TcpStream { sock })
}

fn not_ip() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the socket address is not an IP address",
    )
}

impl TcpListener {
    /// Creates a listener bound to `addr` (`SO_REUSEADDR`, as std; the backlog is the kernel's
    /// maximum, `net.core.somaxconn`). When `addr` yields several addresses they are tried in
    /// order, and the first that binds is used. Port 0 asks the kernel for a free port (see
    /// [`TcpListener::local_addr`]).
    ///
    /// Works outside fibers too: binding never waits. A host name is resolved on the thread
    /// pool from a fiber, else on the calling thread.
    ///
    /// # Errors
    ///
    /// The last address's `socket(2)`, `bind(2)` (`AddrInUse`, `PermissionDenied` …) or
    /// `listen(2)` error; `InvalidInput` when `addr` yields no address; resolver errors.
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<TcpListener> {
        each_addr(addr, |a| listen_on(a, false))
    }

    /// As [`TcpListener::bind`], with `SO_REUSEPORT` as well: several listeners — typically
    /// one per thread, each on its own loop — may bind the same address, and the kernel
    /// spreads incoming connections among them.
    ///
    /// # Errors
    ///
    /// As [`TcpListener::bind`]; `AddrInUse` when a listener without `SO_REUSEPORT` (or of
    /// another user) holds the address.
    pub fn bind_reuseport<A: ToSocketAddrs>(addr: A) -> io::Result<TcpListener> {
        each_addr(addr, |a| listen_on(a, true))
    }

    /// Adopts a std listener (sets `O_NONBLOCK` on it).
    ///
    /// # Errors
    ///
    /// `fcntl(2)` errors.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        Ok(TcpListener {
            sock: Socket::adopt(OwnedFd::from(listener))?,
        })
    }

    /// Waits for a connection and returns it with the peer's address. The new stream is
    /// non-blocking and close-on-exec, with no timeouts.
    ///
    /// # Errors
    ///
    /// `accept4(2)` errors. `EMFILE`/`ENFILE` (out of fds) leave the connection queued and the
    /// listener usable: a later `accept` takes it once fds are free; back off meanwhile.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (sock, storage, _) = self.sock.accept()?;
        let peer = sockaddr_to(&storage).ok_or_else(not_ip)?;
        Ok((TcpStream { sock }, peer))
    }

    /// An endless iterator over [`TcpListener::accept`]'s streams.
    ///
    /// # Panics
    ///
    /// Its `next` panics outside a fiber.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { listener: self }
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock
            .with_std(|s: &std::net::TcpListener| s.local_addr())
    }

    /// A second listener on a duplicate of the fd.
    ///
    /// # Errors
    ///
    /// `fcntl(F_DUPFD_CLOEXEC)` errors (`EMFILE`).
    pub fn try_clone(&self) -> io::Result<TcpListener> {
        Ok(TcpListener {
            sock: self.sock.try_clone()?,
        })
    }

    /// Sets `IP_TTL` for the connections it accepts.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.sock
            .with_std(|s: &std::net::TcpListener| s.set_ttl(ttl))
    }

    /// `IP_TTL`.
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn ttl(&self) -> io::Result<u32> {
        self.sock.with_std(|s: &std::net::TcpListener| s.ttl())
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

/// The iterator of [`TcpListener::incoming`]; it never ends.
#[derive(Debug)]
pub struct Incoming<'a> {
    listener: &'a TcpListener,
}

impl Iterator for Incoming<'_> {
    type Item = io::Result<TcpStream>;

    fn next(&mut self) -> Option<io::Result<TcpStream>> {
        Some(self.listener.accept().map(|(s, _)| s))
    }
}

impl TcpStream {
    /// Connects to `addr`, suspending the fiber until the connection is established. When
    /// `addr` yields several addresses (a host name with IPv4 and IPv6 addresses), each is
    /// tried in order until one connects. Host names are resolved on the thread pool.
    ///
    /// # Errors
    ///
    /// The last address's error (`ConnectionRefused`, `TimedOut` from the kernel's own SYN
    /// retries …); `InvalidInput` when `addr` yields no address; resolver errors.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn connect<A: ToSocketAddrs>(addr: A) -> io::Result<TcpStream> {
        current_or_panic("fdloop::net::TcpStream::connect");
        each_addr(addr, |a| connect_to(a, None))
    }

    /// Connects to `addr`, giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// `TimedOut` when the timeout expired; `InvalidInput` for a zero timeout (as std);
    /// `connect(2)` errors (`ConnectionRefused` …).
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn connect_timeout(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        current_or_panic("fdloop::net::TcpStream::connect_timeout");
        if timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot set a 0 duration timeout",
            ));
        }
        connect_to(addr, Some(timeout))
    }

    /// Adopts a connected std stream (sets `O_NONBLOCK` on it; std's timeouts are ignored).
    ///
    /// # Errors
    ///
    /// `fcntl(2)` errors.
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        Ok(TcpStream {
            sock: Socket::adopt(OwnedFd::from(stream))?,
        })
    }

    /// The remote address.
    ///
    /// # Errors
    ///
    /// `getpeername(2)` errors (`NotConnected`).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.with_std(|s: &std::net::TcpStream| s.peer_addr())
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.with_std(|s: &std::net::TcpStream| s.local_addr())
    }

    /// Shuts down the reading side, the writing side (the peer reads end-of-file) or both.
    ///
    /// # Errors
    ///
    /// `shutdown(2)` errors (`NotConnected`).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.sock.shutdown(how)
    }

    /// A second stream on a duplicate of the fd: the same connection, starting with the same
    /// timeouts (which each value then keeps for itself).
    ///
    /// # Errors
    ///
    /// `fcntl(F_DUPFD_CLOEXEC)` errors (`EMFILE`).
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(TcpStream {
            sock: self.sock.try_clone()?,
        })
    }

    /// Receives data without removing it from the queue, suspending the fiber until some is
    /// there (`Ok(0)` at end-of-file, or at once for an empty `buf`).
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

    /// Sets `TCP_NODELAY` (disables Nagle's algorithm).
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.sock
            .with_std(|s: &std::net::TcpStream| s.set_nodelay(nodelay))
    }

    /// `TCP_NODELAY`.
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.sock.with_std(|s: &std::net::TcpStream| s.nodelay())
    }

    /// Sets `IP_TTL`.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.sock.with_std(|s: &std::net::TcpStream| s.set_ttl(ttl))
    }

    /// `IP_TTL`.
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn ttl(&self) -> io::Result<u32> {
        self.sock.with_std(|s: &std::net::TcpStream| s.ttl())
    }

    /// Sets `SO_LINGER` (whole seconds). `Some(Duration::ZERO)` makes closing the socket
    /// reset the connection (the peer gets `ConnectionReset`) instead of a graceful close.
    /// Note that with a non-zero linger time, the `close(2)` in `drop` may wait that long.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        let value = libc::linger {
            l_onoff: libc::c_int::from(linger.is_some()),
            l_linger: linger.map_or(0, |d| {
                libc::c_int::try_from(d.as_secs()).unwrap_or(libc::c_int::MAX)
            }),
        };
        // SAFETY: (FFI) `value` is a live `linger` and the length says so.
        cvt(unsafe {
            libc::setsockopt(
                self.sock.raw(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&value as *const libc::linger).cast(),
                mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// `SO_LINGER`.
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn linger(&self) -> io::Result<Option<Duration>> {
        let mut value = libc::linger {
            l_onoff: 0,
            l_linger: 0,
        };
        let mut len = mem::size_of::<libc::linger>() as libc::socklen_t;
        // SAFETY: (FFI) `value` and `len` are live locals of the sizes the kernel is told about.
        cvt(unsafe {
            libc::getsockopt(
                self.sock.raw(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&mut value as *mut libc::linger).cast(),
                &mut len,
            )
        })?;
        Ok((value.l_onoff != 0).then(|| Duration::from_secs(value.l_linger.max(0) as u64)))
    }
}

super::timeout_methods!(TcpStream);
super::stream_io!(TcpStream);
super::socket_fd_traits!(TcpStream);
super::socket_fd_traits!(TcpListener);

impl fmt::Debug for TcpListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TcpListener");
        if let Ok(a) = self.local_addr() {
            d.field("addr", &a);
        }
        d.field("fd", &self.sock.fd().as_raw_fd()).finish()
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TcpStream");
        if let Ok(a) = self.local_addr() {
            d.field("addr", &a);
        }
        if let Ok(a) = self.peer_addr() {
            d.field("peer", &a);
        }
        d.field("fd", &self.sock.raw()).finish()
    }
}
