//! Kernel objects for the drivers' unit tests: pipes, socket pairs, and a blocking write.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A pipe, with `flags` (e.g. `O_NONBLOCK`) besides `O_CLOEXEC`.
pub(crate) fn pipe(flags: i32) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: (FFI) `fds` is a writable array of two ints for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | flags) };
    assert_eq!(r, 0);
    // SAFETY: (FFI) pipe2 just returned both fds and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A connected pair of blocking Unix stream sockets (the drivers add `MSG_DONTWAIT`).
pub(crate) fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut sv = [0; 2];
    // SAFETY: (FFI) `sv` is a writable array of two ints for socketpair to fill.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: (FFI) socketpair just returned both fds and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) }
}

/// Writes all of `data` to `fd` in one `write`, which must take it whole.
pub(crate) fn write_all(fd: RawFd, data: &[u8]) {
    // SAFETY: (FFI) `data` is a live buffer of `data.len()` bytes for the call; `fd` is open.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize);
}
