//! Networking for fibers: TCP, UDP and Unix-domain sockets whose blocking-looking calls
//! (`connect`, `accept`, `read`, `write`, `send`, `recv` …) suspend only the calling fiber.
//!
//! The types mirror `std::net` and `std::os::unix::net` — same names, same signatures, same
//! addresses ([`std::net::SocketAddr`], [`std::os::unix::net::SocketAddr`]) — so code written
//! for std moves into a fiber unchanged, and the stream types implement [`std::io::Read`] and
//! [`std::io::Write`] (also through `&T`, as std's do) for `BufReader`, parsers and TLS.
//!
//! ```
//! use fdloop::net::{Shutdown, TcpListener, TcpStream};
//! use fdloop::Loop;
//! use std::io::{Read, Write};
//!
//! let lp = Loop::new()?;
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//!
//! // An echo server fiber: one connection, echoed until the client stops writing.
//! lp.spawn(move || {
//!     let (mut conn, _peer) = listener.accept().unwrap();
//!     let mut buf = [0u8; 1024];
//!     loop {
//!         match conn.read(&mut buf).unwrap() {
//!             0 => break,
//!             n => conn.write_all(&buf[..n]).unwrap(),
//!         }
//!     }
//! });
//!
//! // A client fiber.
//! let client = lp.spawn(move || {
//!     let mut s = TcpStream::connect(addr).unwrap();
//!     s.write_all(b"hello, fibers").unwrap();
//!     s.shutdown(Shutdown::Write).unwrap(); // the server reads end-of-file
//!     let mut echoed = String::new();
//!     s.read_to_string(&mut echoed).unwrap();
//!     echoed
//! });
//!
//! lp.run()?;
//! assert_eq!(client.join().unwrap(), "hello, fibers");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Which calls need a fiber
//!
//! Calls that wait — `connect`, `accept`, reads, writes, `send*`, `recv*`, `peek*` — panic
//! outside a fiber, with a message that says what to do instead. Calls that never wait —
//! `bind`, `pair`, socket options, addresses, `shutdown`, `try_clone` — work anywhere.
//!
//! # Behaviour worth knowing
//!
//! * **Sockets** are created close-on-exec and non-blocking (the epoll backend needs
//!   `O_NONBLOCK`; io_uring does not mind it). `from_std` and `From<OwnedFd>` set
//!   `O_NONBLOCK` on the adopted fd — it belongs to the open file description, so other
//!   holders of a duplicate see it too.
//! * **No `SIGPIPE`**: every write is a `send`/`sendmsg` with `MSG_NOSIGNAL`; writing to a
//!   connection the peer has closed fails with [`std::io::ErrorKind::BrokenPipe`].
//! * **Zero-length** reads and writes on stream sockets return `Ok(0)` at once. On datagram
//!   sockets they are real: an empty datagram is sent, and an empty buffer still waits for and
//!   consumes one datagram, as with std.
//! * **Timeouts** (`set_read_timeout`, `set_write_timeout`) bound each call. As with std on
//!   Linux, a read or write that times out fails with [`std::io::ErrorKind::WouldBlock`]
//!   (`EAGAIN`), and [`TcpStream::connect_timeout`] with [`std::io::ErrorKind::TimedOut`].
//!   The socket stays usable. Unlike std, the timeouts belong to the value, not to the
//!   kernel socket: a [`TcpStream::try_clone`] starts with a copy of them and then has its
//!   own.
//! * **Host names** in [`ToSocketAddrs`] arguments are resolved with `getaddrinfo` on the
//!   loop's thread pool ([`crate::fiber::unblock`]), so a slow DNS server holds only the
//!   calling fiber. Literal addresses are parsed in place. Outside a fiber (for a `bind`
//!   before the loop runs), a host name is resolved on the calling thread, which blocks it:
//!   do not pass host names from loop callbacks.
//! * **Out of fds**: `accept` returns the `EMFILE`/`ENFILE` error and the connection stays in
//!   the listener's queue; once fds are free again the next `accept` takes it. A server that
//!   retries at once would spin: back off (e.g. [`crate::fiber::sleep`]) on these errors.
//! * **Dropping** a socket inside a fiber also makes that fiber's loop forget what it cached
//!   about the fd number ([`crate::Loop::detach`]), so the number can be reused safely.

mod addr;
mod socket;
mod tcp;
mod udp;
mod unix;

pub use std::net::Shutdown;

pub use addr::ToSocketAddrs;
pub use tcp::{Incoming, TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixDatagram, UnixIncoming, UnixListener, UnixStream};

/// The implementations that every socket type shares: fd traits and adoption.
macro_rules! socket_fd_traits {
    ($t:ident) => {
        impl std::os::fd::AsFd for $t {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(self.sock.fd())
            }
        }

        impl std::os::fd::AsRawFd for $t {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                self.sock.raw()
            }
        }

        impl std::os::fd::IntoRawFd for $t {
            fn into_raw_fd(self) -> std::os::fd::RawFd {
                std::os::fd::IntoRawFd::into_raw_fd(self.sock.into_owned())
            }
        }

        impl From<$t> for std::os::fd::OwnedFd {
            fn from(s: $t) -> std::os::fd::OwnedFd {
                s.sock.into_owned()
            }
        }

        impl From<std::os::fd::OwnedFd> for $t {
            /// Adopts a socket fd and sets `O_NONBLOCK` on it (which the epoll backend needs).
            /// The fd's type is not checked: a wrong one fails at the first call.
            fn from(fd: std::os::fd::OwnedFd) -> $t {
                $t {
                    sock: crate::net::socket::Socket::adopt_lenient(fd),
                }
            }
        }
    };
}

/// `Read` and `Write` for a stream socket type and for a shared reference to it.
macro_rules! stream_io {
    ($t:ident) => {
        impl std::io::Read for &$t {
            /// Receives what is available, suspending the fiber until something is (`Ok(0)`:
            /// the peer shut down its writing side; an empty `buf` returns `Ok(0)` at once).
            ///
            /// # Errors
            ///
            /// `recv(2)` errors (`ConnectionReset` …), and `WouldBlock` when the read timeout
            /// expired.
            ///
            /// # Panics
            ///
            /// Outside a fiber.
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.sock.read_stream(buf)
            }

            fn read_vectored(
                &mut self,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::io::Result<usize> {
                self.sock.read_vectored_stream(bufs)
            }
        }

        impl std::io::Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.sock.read_stream(buf)
            }

            fn read_vectored(
                &mut self,
                bufs: &mut [std::io::IoSliceMut<'_>],
            ) -> std::io::Result<usize> {
                self.sock.read_vectored_stream(bufs)
            }
        }

        impl std::io::Write for &$t {
            /// Sends what fits, suspending the fiber until some room is free (an empty `buf`
            /// returns `Ok(0)` at once). Never raises `SIGPIPE`.
            ///
            /// # Errors
            ///
            /// `send(2)` errors: `BrokenPipe` when the peer has gone, `ConnectionReset` …;
            /// `WouldBlock` when the write timeout expired.
            ///
            /// # Panics
            ///
            /// Outside a fiber.
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.sock.write_stream(buf)
            }

            fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
                self.sock.write_vectored_stream(bufs)
            }

            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        impl std::io::Write for $t {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.sock.write_stream(buf)
            }

            fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
                self.sock.write_vectored_stream(bufs)
            }

            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
    };
}

/// Timeout accessors (and `take_error`) shared by the connected socket types.
macro_rules! timeout_methods {
    ($t:ident) => {
        impl $t {
            /// Sets how long one read (or receive) may wait; `None` waits forever, the default.
            /// A read that times out fails with `WouldBlock` (as std's do on Linux) and leaves
            /// the socket usable.
            ///
            /// # Errors
            ///
            /// `InvalidInput` for `Some(Duration::ZERO)`, as std.
            pub fn set_read_timeout(
                &self,
                dur: Option<std::time::Duration>,
            ) -> std::io::Result<()> {
                self.sock.set_read_timeout(dur)
            }

            /// Sets how long one write (or send) may wait; `None` waits forever, the default.
            /// A write that times out fails with `WouldBlock` and leaves the socket usable.
            ///
            /// # Errors
            ///
            /// `InvalidInput` for `Some(Duration::ZERO)`, as std.
            pub fn set_write_timeout(
                &self,
                dur: Option<std::time::Duration>,
            ) -> std::io::Result<()> {
                self.sock.set_write_timeout(dur)
            }

            /// The read timeout.
            ///
            /// # Errors
            ///
            /// None in practice; `io::Result` for std compatibility.
            pub fn read_timeout(&self) -> std::io::Result<Option<std::time::Duration>> {
                Ok(self.sock.read_timeout())
            }

            /// The write timeout.
            ///
            /// # Errors
            ///
            /// None in practice; `io::Result` for std compatibility.
            pub fn write_timeout(&self) -> std::io::Result<Option<std::time::Duration>> {
                Ok(self.sock.write_timeout())
            }

            /// Takes the socket's pending error (`SO_ERROR`).
            ///
            /// # Errors
            ///
            /// `getsockopt(2)` errors.
            pub fn take_error(&self) -> std::io::Result<Option<std::io::Error>> {
                self.sock.take_error()
            }
        }
    };
}

pub(crate) use {socket_fd_traits, stream_io, timeout_methods};
