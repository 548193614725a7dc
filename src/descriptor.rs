//! [`Descriptor`]: what the loop's fd-taking methods accept.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

/// Anything that names a file descriptor: a reference to anything that implements [`AsFd`]
/// (`&TcpStream`, `&File`, `&OwnedFd` …), a [`BorrowedFd`], or a plain [`RawFd`] (for fds that a
/// C library hands out). The loop only borrows it: the fd stays owned by the caller.
pub trait Descriptor {
    /// The fd number.
    fn raw_fd(&self) -> RawFd;
}

impl Descriptor for RawFd {
    fn raw_fd(&self) -> RawFd {
        *self
    }
}

impl Descriptor for BorrowedFd<'_> {
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

impl<T: AsFd + ?Sized> Descriptor for &T {
    fn raw_fd(&self) -> RawFd {
        (**self).as_fd().as_raw_fd()
    }
}
