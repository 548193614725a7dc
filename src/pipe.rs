//! Pipes for fibers: [`pipe`] gives a [`PipeReader`] and a [`PipeWriter`] whose `Read`/`Write`
//! suspend only the calling fiber.
//!
//! ```
//! use fdloop::{pipe, Loop};
//! use std::io::{Read, Write};
//!
//! let lp = Loop::new()?;
//! let (mut rx, mut tx) = pipe()?;
//! let reader = lp.spawn(move || {
//!     let mut s = String::new();
//!     rx.read_to_string(&mut s).unwrap(); // suspends until the writer is gone
//!     s
//! });
//! lp.spawn(move || tx.write_all(b"through the pipe").unwrap());
//! lp.run()?;
//! assert_eq!(reader.join().unwrap(), "through the pipe");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::fiber::ops;
use crate::sys::{cvt, set_nonblocking, LoopFd};

/// Creates a pipe for fibers (close-on-exec, non-blocking underneath).
///
/// # Errors
///
/// `pipe2(2)` errors: `EMFILE`/`ENFILE` when out of fds.
pub fn pipe() -> io::Result<(PipeReader, PipeWriter)> {
    let mut fds = [0; 2];
    // SAFETY: (FFI) `fds` is a writable array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: (FFI) pipe2 returned two fresh fds that nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((
        PipeReader {
            fd: LoopFd::new(r),
            timeout: None,
        },
        PipeWriter {
            fd: LoopFd::new(w),
            timeout: None,
        },
    ))
}

/// The reading end of a [`pipe`].
#[derive(Debug)]
pub struct PipeReader {
    fd: LoopFd,
    timeout: Option<Duration>,
}

/// The writing end of a [`pipe`].
#[derive(Debug)]
pub struct PipeWriter {
    fd: LoopFd,
    timeout: Option<Duration>,
}

macro_rules! pipe_end {
    ($t:ident) => {
        impl $t {
            /// Sets how long one read or write may wait (`None`: forever). A call that times
            /// out fails with `WouldBlock` (as std's socket timeouts do) and leaves the pipe
            /// usable.
            ///
            /// # Errors
            ///
            /// `InvalidInput` for a zero duration.
            pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
                if timeout == Some(Duration::ZERO) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a zero timeout is not allowed",
                    ));
                }
                self.timeout = timeout;
                Ok(())
            }
        }

        impl AsFd for $t {
            fn as_fd(&self) -> BorrowedFd<'_> {
                self.fd.as_fd()
            }
        }

        impl AsRawFd for $t {
            fn as_raw_fd(&self) -> RawFd {
                self.fd.as_raw_fd()
            }
        }

        impl IntoRawFd for $t {
            fn into_raw_fd(self) -> RawFd {
                self.fd.into_owned().into_raw_fd()
            }
        }

        impl From<$t> for OwnedFd {
            fn from(p: $t) -> OwnedFd {
                p.fd.into_owned()
            }
        }

        impl From<OwnedFd> for $t {
            /// Adopts a pipe end (sets `O_NONBLOCK` on it, which the epoll backend needs).
            fn from(fd: OwnedFd) -> $t {
                let _ = set_nonblocking(fd.as_raw_fd());
                $t {
                    fd: LoopFd::new(fd),
                    timeout: None,
                }
            }
        }
    };
}

pipe_end!(PipeReader);
pipe_end!(PipeWriter);

impl Read for PipeReader {
    /// Reads what is available, suspending the fiber until something is (0 at end-of-file).
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        ops::read(self.fd.as_raw_fd(), buf, None, self.timeout)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        ops::readv(self.fd.as_raw_fd(), bufs, None, self.timeout)
    }
}

impl Write for PipeWriter {
    /// Writes what fits, suspending the fiber until some room is free. A reader that is gone
    /// gives `BrokenPipe`.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        ops::write(self.fd.as_raw_fd(), buf, None, self.timeout)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        ops::writev(self.fd.as_raw_fd(), bufs, None, self.timeout)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
