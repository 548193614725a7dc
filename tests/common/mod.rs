//! Test helpers: run each behaviour test on both backends, count fds, make kernel objects.
#![allow(dead_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fdloop::{BackendChoice, Loop};

/// A loop on `choice`, or `None` (with a message) when io_uring is unavailable here.
pub fn new_loop(choice: BackendChoice) -> Option<Loop> {
    match Loop::builder().backend(choice).build() {
        Ok(lp) => Some(lp),
        Err(e) if choice == BackendChoice::Uring => {
            eprintln!("skipped on io_uring: unavailable here: {e}");
            None
        }
        Err(e) => panic!("cannot build an epoll loop: {e}"),
    }
}

/// `backend_tests! { fn name(lp: &Loop) { … } … }` makes a module per test with one `#[test]`
/// per backend.
#[macro_export]
macro_rules! backend_tests {
    ($(fn $name:ident($lp:ident : &Loop) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($lp: &Loop) $body
            #[test]
            fn uring() {
                if let Some(lp) = $crate::common::new_loop(fdloop::BackendChoice::Uring) {
                    assert_eq!(lp.backend().kind, fdloop::BackendKind::Uring);
                    body(&lp);
                }
            }
            #[test]
            fn epoll() {
                let lp = $crate::common::new_loop(fdloop::BackendChoice::Epoll).unwrap();
                assert_eq!(lp.backend().kind, fdloop::BackendKind::Epoll);
                body(&lp);
            }
        }
    )*};
}

/// Open fds of this process (`/proc/self/fd`).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A pipe (read end, write end), close-on-exec, blocking.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: (FFI) `fds` is a writable array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: (FFI) pipe2 returned two fresh fds that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A non-blocking pipe.
pub fn pipe_nonblocking() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: (FFI) `fds` is a writable array of two ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert_eq!(r, 0);
    // SAFETY: (FFI) pipe2 returned two fresh fds that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// An eventfd.
pub fn eventfd() -> OwnedFd {
    // SAFETY: (FFI) eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "{}", io::Error::last_os_error());
    // SAFETY: (FFI) a fresh fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Writes `v` to an eventfd.
pub fn eventfd_write(fd: &OwnedFd, v: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: (FFI) `v` is a live 8-byte buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&v as *const u64).cast(), 8) };
    assert_eq!(n, 8);
}

/// Writes all of `data` to a raw fd with write(2).
pub fn write_fd(fd: &OwnedFd, data: &[u8]) {
    use std::os::fd::AsRawFd;
    // SAFETY: (FFI) `data` is a live buffer of the given length.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize, "{}", io::Error::last_os_error());
}

/// Reads up to `n` bytes from a raw fd with read(2).
pub fn read_fd(fd: &OwnedFd, n: usize) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; n];
    // SAFETY: (FFI) `buf` is a live writable buffer of `n` bytes.
    let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), n) };
    assert!(r >= 0, "{}", io::Error::last_os_error());
    buf.truncate(r as usize);
    buf
}

/// A fresh path in the temp dir (removed by the caller).
pub fn temp_path(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "fdloop-test-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs `f` in a fiber on `lp` until the loop is idle; re-raises the fiber's panic.
pub fn in_fiber<T: 'static>(lp: &Loop, f: impl FnOnce() -> T + 'static) -> T {
    let h = lp.spawn(f);
    lp.run().unwrap();
    match h.join() {
        Ok(v) => v,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// `len` bytes of a pseudo-random pattern (xorshift64) fixed by `seed` (non-zero).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs `lp` in 5 ms slices until `done()` holds; fails, naming `what`, once `limit` has passed
/// (a hang fails the test instead of blocking it).
pub fn run_until_within(lp: &Loop, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "{}: not reached within {limit:?}: {what}",
            lp.backend()
        );
        lp.run_for(Duration::from_millis(5)).unwrap();
    }
}

/// Sets `SO_LINGER` to zero on socket `fd`: closing it then sends RST instead of FIN.
pub fn set_linger_zero(fd: &impl std::os::fd::AsRawFd) {
    let value = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: (FFI) `value` is a live linger struct of the size passed, read during the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&value as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt(SO_LINGER): {}",
        io::Error::last_os_error()
    );
}
