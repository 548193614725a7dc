//! UDP: [`UdpSocket`].

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

use super::addr::{each_addr, first_addr, ToSocketAddrs};
use super::socket::Socket;
use crate::sys::{sockaddr_from, sockaddr_to};

/// A UDP socket; sends and receives suspend only the calling fiber.
///
/// Datagram semantics are std's: an empty buffer sends an empty datagram, and a receive into
/// a buffer too small for the datagram returns what fits and discards the rest.
///
/// ```
/// use fdloop::net::UdpSocket;
/// use fdloop::Loop;
///
/// let lp = Loop::new()?;
/// let a = UdpSocket::bind("127.0.0.1:0")?;
/// let b = UdpSocket::bind("127.0.0.1:0")?;
/// let a_addr = a.local_addr()?;
/// let b_addr = b.local_addr()?;
/// let got = lp.spawn(move || {
///     let mut buf = [0u8; 16];
///     let (n, from) = a.recv_from(&mut buf).unwrap();
///     (buf[..n].to_vec(), from)
/// });
/// lp.spawn(move || b.send_to(b"ping", a_addr).unwrap());
/// lp.run()?;
/// assert_eq!(got.join().unwrap(), (b"ping".to_vec(), b_addr));
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct UdpSocket {
    sock: Socket,
}

fn bind_on(addr: &SocketAddr) -> io::Result<UdpSocket> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let sock = Socket::new(domain, libc::SOCK_DGRAM)?;
    let (storage, len) = sockaddr_from(addr);
    sock.bind(&storage, len)?;
    Ok(UdpSocket { sock })
}

fn peer_of(storage: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    sockaddr_to(storage).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the sender's address is not an IP address",
        )
    })
}

impl UdpSocket {
    /// Creates a socket bound to `addr`; when it yields several addresses, the first that
    /// binds is used. Works outside fibers too.
    ///
    /// # Errors
    ///
    /// The last address's `socket(2)` or `bind(2)` error (`AddrInUse` …); `InvalidInput`
    /// when `addr` yields no address; resolver errors.
    pub fn bind<A: ToSocketAddrs>(addr: A) -> io::Result<UdpSocket> {
        each_addr(addr, bind_on)
    }

    /// Adopts a std socket (sets `O_NONBLOCK` on it; std's timeouts are ignored).
    ///
    /// # Errors
    ///
    /// `fcntl(2)` errors.
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        Ok(UdpSocket {
            sock: Socket::adopt(OwnedFd::from(socket))?,
        })
    }

    /// Sets the default destination of [`UdpSocket::send`] and the only source
    /// [`UdpSocket::recv`] accepts. It never waits, and works outside fibers.
    ///
    /// # Errors
    ///
    /// The last address's `connect(2)` error; `InvalidInput` when `addr` yields no address;
    /// resolver errors.
    pub fn connect<A: ToSocketAddrs>(&self, addr: A) -> io::Result<()> {
        each_addr(addr, |a| {
            let (storage, len) = sockaddr_from(a);
            self.sock.connect_now(&storage, len)
        })
    }

    /// Sends one datagram to the connected peer, suspending the fiber while the send buffer
    /// is full.
    ///
    /// # Errors
    ///
    /// `send(2)` errors: `NotConnected` (`EDESTADDRREQ`) without [`UdpSocket::connect`],
    /// `ConnectionRefused` after an ICMP port-unreachable, `EMSGSIZE` …; `WouldBlock` when the
    /// write timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.sock.send(buf, 0)
    }

    /// Receives one datagram from the connected peer.
    ///
    /// # Errors
    ///
    /// `recv(2)` errors (`ConnectionRefused` after an ICMP port-unreachable …);
    /// `WouldBlock` when the read timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf, 0)
    }

    /// Receives one datagram from the connected peer without removing it from the queue.
    ///
    /// # Errors
    ///
    /// As [`UdpSocket::recv`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf, libc::MSG_PEEK)
    }

    /// Sends one datagram to `target` (its first address, as std).
    ///
    /// # Errors
    ///
    /// `sendmsg(2)` errors; `InvalidInput` when `target` yields no address; resolver errors;
    /// `WouldBlock` when the write timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn send_to<A: ToSocketAddrs>(&self, buf: &[u8], target: A) -> io::Result<usize> {
        let (storage, len) = sockaddr_from(&first_addr(target)?);
        self.sock.send_to(buf, &storage, len)
    }

    /// Receives one datagram and the address it came from.
    ///
    /// # Errors
    ///
    /// `recvmsg(2)` errors; `WouldBlock` when the read timeout expired.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, storage, _) = self.sock.recv_from(buf, 0)?;
        Ok((n, peer_of(&storage)?))
    }

    /// As [`UdpSocket::recv_from`], leaving the datagram in the queue.
    ///
    /// # Errors
    ///
    /// As [`UdpSocket::recv_from`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn peek_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, storage, _) = self.sock.recv_from(buf, libc::MSG_PEEK)?;
        Ok((n, peer_of(&storage)?))
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// `getsockname(2)` errors.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.with_std(|s: &std::net::UdpSocket| s.local_addr())
    }

    /// The connected peer's address.
    ///
    /// # Errors
    ///
    /// `NotConnected` without [`UdpSocket::connect`].
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.sock.with_std(|s: &std::net::UdpSocket| s.peer_addr())
    }

    /// A second socket on a duplicate of the fd, starting with the same timeouts.
    ///
    /// # Errors
    ///
    /// `fcntl(F_DUPFD_CLOEXEC)` errors (`EMFILE`).
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        Ok(UdpSocket {
            sock: self.sock.try_clone()?,
        })
    }

    /// Sets `SO_BROADCAST`: whether datagrams may go to a broadcast address.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_broadcast(&self, broadcast: bool) -> io::Result<()> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.set_broadcast(broadcast))
    }

    /// `SO_BROADCAST`.
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn broadcast(&self) -> io::Result<bool> {
        self.sock.with_std(|s: &std::net::UdpSocket| s.broadcast())
    }

    /// Sets `IP_TTL`.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_ttl(&self, ttl: u32) -> io::Result<()> {
        self.sock.with_std(|s: &std::net::UdpSocket| s.set_ttl(ttl))
    }

    /// `IP_TTL`.
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn ttl(&self) -> io::Result<u32> {
        self.sock.with_std(|s: &std::net::UdpSocket| s.ttl())
    }

    /// Joins an IPv4 multicast group on the interface with address `interface`
    /// (`UNSPECIFIED`: the kernel's choice).
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn join_multicast_v4(&self, multiaddr: &Ipv4Addr, interface: &Ipv4Addr) -> io::Result<()> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.join_multicast_v4(multiaddr, interface))
    }

    /// Leaves an IPv4 multicast group.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn leave_multicast_v4(&self, multiaddr: &Ipv4Addr, interface: &Ipv4Addr) -> io::Result<()> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.leave_multicast_v4(multiaddr, interface))
    }

    /// Joins an IPv6 multicast group on interface index `interface` (0: any).
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn join_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.join_multicast_v6(multiaddr, interface))
    }

    /// Leaves an IPv6 multicast group.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn leave_multicast_v6(&self, multiaddr: &Ipv6Addr, interface: u32) -> io::Result<()> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.leave_multicast_v6(multiaddr, interface))
    }

    /// Sets `IP_MULTICAST_LOOP`: whether this host receives its own IPv4 multicast.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_multicast_loop_v4(&self, on: bool) -> io::Result<()> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.set_multicast_loop_v4(on))
    }

    /// `IP_MULTICAST_LOOP`.
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn multicast_loop_v4(&self) -> io::Result<bool> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.multicast_loop_v4())
    }

    /// Sets `IP_MULTICAST_TTL`.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_multicast_ttl_v4(&self, ttl: u32) -> io::Result<()> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.set_multicast_ttl_v4(ttl))
    }

    /// `IP_MULTICAST_TTL`.
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn multicast_ttl_v4(&self) -> io::Result<u32> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.multicast_ttl_v4())
    }

    /// Sets `IPV6_MULTICAST_LOOP`.
    ///
    /// # Errors
    ///
    /// `setsockopt(2)` errors.
    pub fn set_multicast_loop_v6(&self, on: bool) -> io::Result<()> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.set_multicast_loop_v6(on))
    }

    /// `IPV6_MULTICAST_LOOP`.
    ///
    /// # Errors
    ///
    /// `getsockopt(2)` errors.
    pub fn multicast_loop_v6(&self) -> io::Result<bool> {
        self.sock
            .with_std(|s: &std::net::UdpSocket| s.multicast_loop_v6())
    }
}

super::timeout_methods!(UdpSocket);
super::socket_fd_traits!(UdpSocket);

impl fmt::Debug for UdpSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("UdpSocket");
        if let Ok(a) = self.local_addr() {
            d.field("addr", &a);
        }
        d.field("fd", &self.sock.raw()).finish()
    }
}
