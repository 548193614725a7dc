//! Small syscall helpers: the one place where a `-1` becomes an `io::Error`, and socket-address
//! conversions.

use std::io;
use std::mem;
use std::mem::ManuallyDrop;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// Turns a libc `-1` into `io::Error::last_os_error()`.
pub(crate) fn cvt(ret: i32) -> io::Result<i32> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Sets `O_NONBLOCK` on an fd the caller owns.
pub(crate) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: (FFI) F_GETFL/F_SETFL take no pointers.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: (FFI) F_SETFL takes an int flag argument, no pointer.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    }
    Ok(())
}

/// Turns a completion result (`-errno` or a value) into an `io::Result`.
pub(crate) fn result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as usize)
    }
}

/// `EBADF` unless `fd` is an open file descriptor.
pub(crate) fn check_fd(fd: RawFd) -> io::Result<()> {
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a file descriptor (EBADF)"),
        ));
    }
    // SAFETY: (FFI) F_GETFD takes no pointer; it only asks the kernel whether `fd` is open.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }).map(drop)
}

/// A socket address in the kernel's representation.
pub(crate) fn sockaddr_from(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: (FFI) sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: (FFI) sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sin)
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: (FFI) sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sin6)
            };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The `SocketAddr` in a kernel address, if it is an IPv4 or IPv6 one.
pub(crate) fn sockaddr_to(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: (FFI) the family says the storage holds a sockaddr_in; storage is large
            // enough and aligned for it.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: (FFI) the family says the storage holds a sockaddr_in6; storage is larger
            // than and suitably aligned for it.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// An fd owned by one of fdloop's I/O types. Closing it (on drop) first makes the loops of this
/// thread forget what they cached about the number, and counts the close process-wide so that
/// loops of other threads notice it too, so that the number can be reused by another kind of
/// file without confusing a driver.
#[derive(Debug)]
pub(crate) struct LoopFd(ManuallyDrop<OwnedFd>);

impl LoopFd {
    pub(crate) fn new(fd: OwnedFd) -> LoopFd {
        LoopFd(ManuallyDrop::new(fd))
    }

    /// Gives the fd up (the caller owns it now; the loops are told to forget it).
    pub(crate) fn into_owned(self) -> OwnedFd {
        crate::event_loop::forget_fd(self.0.as_raw_fd());
        fdloop_backends::note_close(self.0.as_raw_fd());
        let mut this = ManuallyDrop::new(self);
        // SAFETY: (FFI) `this` is never used or dropped again, so the fd is moved out of the
        // `ManuallyDrop` exactly once.
        unsafe { ManuallyDrop::take(&mut this.0) }
    }
}

impl Drop for LoopFd {
    fn drop(&mut self) {
        // This thread's loops forget at once (an epoll registration is removed now); loops on
        // other threads notice the close count when they next look the number up.
        crate::event_loop::forget_fd(self.0.as_raw_fd());
        fdloop_backends::note_close(self.0.as_raw_fd());
        // SAFETY: (FFI) `self.0` is dropped exactly once, here, and never used after; the loops
        // were told to forget the number just above.
        unsafe { ManuallyDrop::drop(&mut self.0) };
    }
}

impl AsFd for LoopFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for LoopFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
