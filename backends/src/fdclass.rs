//! What kind of file an fd refers to, as far as the drivers care.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use crate::sys::cvt;

/// How a driver must treat an fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdClass {
    /// Regular files and block devices: always "ready", cannot be added to epoll. io_uring reads
    /// them asynchronously; the epoll driver runs their operations on its thread pool.
    File,
    /// A terminal or serial port: driven by readiness + non-blocking syscalls on both drivers
    /// (an io_uring read on a tty waits instead of returning EAGAIN).
    Tty {
        /// `O_NONBLOCK` is set on the open file description.
        nonblocking: bool,
    },
    /// A socket.
    Socket {
        /// `O_NONBLOCK` is set on the open file description.
        nonblocking: bool,
    },
    /// Anything else that can be polled: pipes, FIFOs, eventfd, timerfd, signalfd, inotify,
    /// character devices, kernfs attribute files are not here (they are regular files).
    Stream {
        /// `O_NONBLOCK` is set on the open file description.
        nonblocking: bool,
    },
}

impl FdClass {
    /// Looks at `fd` with `fstat` and `fcntl(F_GETFL)` (and `isatty` for character devices).
    ///
    /// # Errors
    ///
    /// `EBADF` for a closed or invalid fd.
    pub fn of(fd: RawFd) -> io::Result<FdClass> {
        let mut st = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is a writable `stat` buffer that lives across the call.
        cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
        // SAFETY: fstat succeeded, so it filled `st`.
        let st = unsafe { st.assume_init() };
        // SAFETY: F_GETFL takes no pointer argument.
        let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
        let nonblocking = flags & libc::O_NONBLOCK != 0;
        Ok(match st.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFBLK | libc::S_IFDIR => FdClass::File,
            libc::S_IFSOCK => FdClass::Socket { nonblocking },
            // SAFETY: isatty only inspects the fd.
            libc::S_IFCHR if unsafe { libc::isatty(fd) } == 1 => FdClass::Tty { nonblocking },
            _ => FdClass::Stream { nonblocking },
        })
    }

    /// Whether `O_NONBLOCK` is set (always `false` for files, where it does not matter).
    pub fn is_nonblocking(self) -> bool {
        match self {
            FdClass::File => false,
            FdClass::Tty { nonblocking }
            | FdClass::Socket { nonblocking }
            | FdClass::Stream { nonblocking } => nonblocking,
        }
    }
}
