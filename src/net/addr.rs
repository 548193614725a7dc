//! Addresses: [`ToSocketAddrs`] (std's list of accepted forms, with host names looked up off
//! the loop thread) and conversions between Unix-domain addresses and `sockaddr_un`.

use std::ffi::OsStr;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::SocketAddr as UnixAddr;
use std::path::Path;

use crate::fiber;

/// What the fdloop socket types accept as an address: the same forms as
/// [`std::net::ToSocketAddrs`] — a [`SocketAddr`], `(IpAddr, u16)`, `"host:port"`,
/// `("host", port)`, a slice of addresses …
///
/// Literal addresses are parsed in place. A host name is resolved with `getaddrinfo` on the
/// loop's thread pool ([`crate::fiber::unblock`]) when called from a fiber, so that the loop
/// never waits for DNS; outside a fiber it is resolved on the calling thread.
///
/// This trait is sealed: it cannot be implemented outside fdloop.
pub trait ToSocketAddrs: sealed::Resolve {}

pub(crate) mod sealed {
    use std::io;
    use std::net::SocketAddr;

    /// How a [`super::ToSocketAddrs`] value turns into addresses.
    pub trait Resolve {
        /// The addresses, in the order they are to be tried.
        fn resolve(&self) -> io::Result<Addrs>;
    }

    /// The addresses of a [`super::ToSocketAddrs`] value. A literal address needs no
    /// allocation (`send_to` is a hot path).
    #[derive(Debug)]
    pub struct Addrs(pub(super) Inner);

    #[derive(Debug)]
    pub(super) enum Inner {
        One(Option<SocketAddr>),
        Many(std::vec::IntoIter<SocketAddr>),
    }

    impl Iterator for Addrs {
        type Item = SocketAddr;

        fn next(&mut self) -> Option<SocketAddr> {
            match &mut self.0 {
                Inner::One(a) => a.take(),
                Inner::Many(it) => it.next(),
            }
        }
    }
}

use sealed::{Addrs, Inner, Resolve};

fn one(addr: SocketAddr) -> io::Result<Addrs> {
    Ok(Addrs(Inner::One(Some(addr))))
}

/// Looks `query` up with std's resolver: on the thread pool inside a fiber, else here.
fn lookup<Q>(query: Q) -> io::Result<Addrs>
where
    Q: std::net::ToSocketAddrs + Send + 'static,
{
    let run = move || query.to_socket_addrs().map(Iterator::collect::<Vec<_>>);
    let found = if fiber::in_fiber() {
        fiber::unblock(run)?
    } else {
        run()?
    };
    Ok(Addrs(Inner::Many(found.into_iter())))
}

macro_rules! literal {
    ($($t:ty),*) => {$(
        impl ToSocketAddrs for $t {}
        impl Resolve for $t {
            fn resolve(&self) -> io::Result<Addrs> {
                one(SocketAddr::from(*self))
            }
        }
    )*};
}

literal!(
    SocketAddr,
    SocketAddrV4,
    SocketAddrV6,
    (IpAddr, u16),
    (Ipv4Addr, u16),
    (Ipv6Addr, u16)
);

impl ToSocketAddrs for str {}
impl Resolve for str {
    fn resolve(&self) -> io::Result<Addrs> {
        match self.parse::<SocketAddr>() {
            Ok(addr) => one(addr),
            Err(_) => lookup(self.to_owned()),
        }
    }
}

impl ToSocketAddrs for String {}
impl Resolve for String {
    fn resolve(&self) -> io::Result<Addrs> {
        self.as_str().resolve()
    }
}

impl ToSocketAddrs for (&str, u16) {}
impl Resolve for (&str, u16) {
    fn resolve(&self) -> io::Result<Addrs> {
        let (host, port) = *self;
        match host.parse::<IpAddr>() {
            Ok(ip) => one(SocketAddr::new(ip, port)),
            Err(_) => lookup((host.to_owned(), port)),
        }
    }
}

impl ToSocketAddrs for (String, u16) {}
impl Resolve for (String, u16) {
    fn resolve(&self) -> io::Result<Addrs> {
        (self.0.as_str(), self.1).resolve()
    }
}

impl ToSocketAddrs for [SocketAddr] {}
impl Resolve for [SocketAddr] {
    fn resolve(&self) -> io::Result<Addrs> {
        match self {
            [addr] => one(*addr),
            addrs => Ok(Addrs(Inner::Many(Vec::from(addrs).into_iter()))),
        }
    }
}

impl<T: ToSocketAddrs + ?Sized> ToSocketAddrs for &T {}
impl<T: ToSocketAddrs + ?Sized> Resolve for &T {
    fn resolve(&self) -> io::Result<Addrs> {
        (**self).resolve()
    }
}

/// Calls `f` with each address of `addrs` until one succeeds; returns the last error.
pub(crate) fn each_addr<A, T>(
    addrs: A,
    mut f: impl FnMut(&SocketAddr) -> io::Result<T>,
) -> io::Result<T>
where
    A: ToSocketAddrs,
{
    let mut last = None;
    for addr in addrs.resolve()? {
        match f(&addr) {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any addresses",
        )
    }))
}

/// The first address of `addrs` (for `send_to`).
pub(crate) fn first_addr<A: ToSocketAddrs>(addrs: A) -> io::Result<SocketAddr> {
    addrs
        .resolve()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no addresses to send data to"))
}

// --- Unix-domain addresses ----------------------------------------------------------------

fn sun_path_offset() -> usize {
    mem::offset_of!(libc::sockaddr_un, sun_path)
}

/// A `sockaddr_un` (in a `sockaddr_storage`) for `bytes`: a path, or an abstract name (stored
/// after a leading NUL).
fn sockaddr_un(
    bytes: &[u8],
    abstract_name: bool,
) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    // SAFETY: (FFI) sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    // SAFETY: (FFI) sockaddr_storage is larger than and suitably aligned for sockaddr_un, and the
    // reference does not outlive `storage`.
    let sun =
        unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let skip = usize::from(abstract_name);
    if !abstract_name && bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "paths must not contain interior null bytes",
        ));
    }
    if skip + bytes.len() >= sun.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path must be shorter than SUN_LEN",
        ));
    }
    for (dst, src) in sun.sun_path[skip..].iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // A path carries its terminating NUL (the array is zeroed); an abstract name does not.
    let nul = usize::from(!abstract_name);
    let len = sun_path_offset() + skip + bytes.len() + nul;
    Ok((storage, len as libc::socklen_t))
}

/// The kernel form of a filesystem path.
pub(crate) fn sockaddr_un_path(
    path: &Path,
) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty path is not a socket address",
        ));
    }
    sockaddr_un(bytes, false)
}

/// The kernel form of a std Unix-domain address (a path or an abstract name).
pub(crate) fn sockaddr_un_addr(
    addr: &UnixAddr,
) -> io::Result<(libc::sockaddr_storage, libc::socklen_t)> {
    if let Some(path) = addr.as_pathname() {
        sockaddr_un_path(path)
    } else if let Some(name) = addr.as_abstract_name() {
        sockaddr_un(name, true)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an unnamed address cannot be bound or connected to",
        ))
    }
}

/// The std form of a `sockaddr_un` the kernel filled (`len` bytes of it).
pub(crate) fn unix_addr_from(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> io::Result<UnixAddr> {
    let offset = sun_path_offset();
    let len = len as usize;
    if len <= offset || i32::from(storage.ss_family) != libc::AF_UNIX {
        return unnamed();
    }
    // SAFETY: (FFI) the family says the storage holds a sockaddr_un; storage is large enough and
    // aligned for it.
    let sun = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
    let n = (len - offset).min(sun.sun_path.len());
    // SAFETY: (FFI) `c_char` and `u8` have the same size and alignment, and the first `n` elements
    // of `sun_path` are initialised memory borrowed from `storage`.
    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(sun.sun_path.as_ptr().cast(), n) };
    match bytes.split_first() {
        Some((0, name)) => UnixAddr::from_abstract_name(name),
        _ => {
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            if end == 0 {
                return unnamed();
            }
            UnixAddr::from_pathname(Path::new(OsStr::from_bytes(&bytes[..end])))
        }
    }
}

/// An unnamed Unix-domain address (std has no constructor for one).
fn unnamed() -> io::Result<UnixAddr> {
    // std builds an unnamed address from an empty path; if a future std refused that, ask the
    // kernel for the name of an unbound socket.
    match UnixAddr::from_pathname("") {
        Ok(a) if a.is_unnamed() => Ok(a),
        _ => std::os::unix::net::UnixDatagram::unbound()?.local_addr(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_addresses_round_trip() {
        let (s, len) = sockaddr_un_path(Path::new("/tmp/x.sock")).unwrap();
        let a = unix_addr_from(&s, len).unwrap();
        assert_eq!(a.as_pathname(), Some(Path::new("/tmp/x.sock")));

        let (s, len) = sockaddr_un(b"abs\0name", true).unwrap();
        let a = unix_addr_from(&s, len).unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"abs\0name"[..]));
        let (s2, len2) = sockaddr_un_addr(&a).unwrap();
        assert_eq!(len, len2);
        let back = unix_addr_from(&s2, len2).unwrap();
        assert_eq!(back.as_abstract_name(), a.as_abstract_name());

        // SAFETY: (FFI) all-zero is a valid sockaddr_storage.
        let z: libc::sockaddr_storage = unsafe { mem::zeroed() };
        assert!(unix_addr_from(&z, 0).unwrap().is_unnamed());
        assert!(unnamed().unwrap().is_unnamed());

        assert!(sockaddr_un_path(Path::new("a\0b")).is_err());
        assert!(sockaddr_un_path(Path::new(&"x".repeat(200))).is_err());
        assert!(sockaddr_un_addr(&unnamed().unwrap()).is_err());
    }

    #[test]
    fn literals_need_no_lookup() {
        let v: Vec<_> = "127.0.0.1:80".resolve().unwrap().collect();
        assert_eq!(v, ["127.0.0.1:80".parse::<SocketAddr>().unwrap()]);
        let v: Vec<_> = ("::1", 8u16).resolve().unwrap().collect();
        assert_eq!(v, ["[::1]:8".parse::<SocketAddr>().unwrap()]);
        let both: [SocketAddr; 2] = ["1.2.3.4:5".parse().unwrap(), "[::2]:6".parse().unwrap()];
        assert_eq!(both[..].resolve().unwrap().collect::<Vec<_>>(), both);
        assert!(each_addr(&[][..], |_| Ok(())).is_err());
    }
}
