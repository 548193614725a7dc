//! What kind of file an fd refers to, as far as the drivers care.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

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
        classify(fd, &stat(fd)?)
    }

    /// Whether the kernel can report readiness for `fd`: asks a throw-away epoll set. Regular
    /// files and directories cannot be polled (EPERM); sysfs, procfs and cgroup attribute files,
    /// which are regular files too, can.
    ///
    /// # Errors
    ///
    /// `EBADF` for a closed fd; errors creating the epoll set.
    pub fn can_poll(fd: RawFd) -> io::Result<bool> {
        // SAFETY: (FFI) epoll_create1 takes no pointers; the result is checked.
        let ep = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: (FFI) `ep` is an fd that epoll_create1 just returned and nothing else owns;
        // OwnedFd closes it on every path.
        let ep = unsafe { std::os::fd::OwnedFd::from_raw_fd(ep) };
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: (FFI) `ev` is a valid epoll_event for the duration of the call.
        let r = unsafe {
            libc::epoll_ctl(
                std::os::fd::AsRawFd::as_raw_fd(&ep),
                libc::EPOLL_CTL_ADD,
                fd,
                &mut ev,
            )
        };
        match cvt(r) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether positional I/O (`pread`/`pwrite`) works on `fd`: false for pipes, FIFOs, sockets
    /// and ttys, which give `ESPIPE`. (io_uring silently ignores the offset on such files and
    /// reads the stream instead; the drivers use this to answer `ESPIPE` on both backends.)
    pub fn is_seekable(fd: RawFd) -> bool {
        // SAFETY: (FFI) lseek takes no pointers; SEEK_CUR with offset 0 does not move the position.
        let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        pos != -1 || io::Error::last_os_error().raw_os_error() != Some(libc::ESPIPE)
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

/// What the epoll driver learns about an fd on first use (see [`probe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    /// How a driver must treat it.
    pub(crate) class: FdClass,
    /// The file it names: `(st_dev, st_ino)`. Another file on the same number (a close and a
    /// reuse behind the driver's back) gives another identity.
    pub(crate) identity: (u64, u64),
    /// A read shorter than asked for empties it: a stream socket or a pipe (FIFO). Not a
    /// datagram socket (one datagram per read), a tty (one line per read in canonical mode),
    /// an eventfd in semaphore mode, inotify (whole events only) …
    pub(crate) short_read_drains: bool,
}

/// `fstat` of `fd`.
fn stat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: (FFI) `st` is a writable `stat` buffer that lives across the call.
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: (FFI) fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// The identity `(st_dev, st_ino)` of the file `fd` names (one `fstat`).
///
/// # Errors
///
/// `EBADF` for a closed or invalid fd.
pub(crate) fn identity(fd: RawFd) -> io::Result<(u64, u64)> {
    stat(fd).map(|st| (st.st_dev, st.st_ino))
}

/// Looks at `fd` with `fstat` and `fcntl(F_GETFL)` (plus `isatty` for character devices and
/// `getsockopt(SO_TYPE)` for sockets).
///
/// # Errors
///
/// `EBADF` for a closed or invalid fd.
pub(crate) fn probe(fd: RawFd) -> io::Result<Probe> {
    let st = stat(fd)?;
    let class = classify(fd, &st)?;
    let short_read_drains = match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => socket_type(fd) == Some(libc::SOCK_STREAM),
        libc::S_IFIFO => true,
        _ => false,
    };
    Ok(Probe {
        class,
        identity: (st.st_dev, st.st_ino),
        short_read_drains,
    })
}

/// The class of `fd`, whose `fstat` is `st` (one `fcntl`, plus `isatty` for character devices).
fn classify(fd: RawFd, st: &libc::stat) -> io::Result<FdClass> {
    // SAFETY: (FFI) F_GETFL takes no pointer argument.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let nonblocking = flags & libc::O_NONBLOCK != 0;
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFBLK | libc::S_IFDIR => FdClass::File,
        libc::S_IFSOCK => FdClass::Socket { nonblocking },
        // SAFETY: (FFI) isatty only inspects the fd.
        libc::S_IFCHR if unsafe { libc::isatty(fd) } == 1 => FdClass::Tty { nonblocking },
        _ => FdClass::Stream { nonblocking },
    })
}

/// `SO_TYPE` of a socket (`SOCK_STREAM`, `SOCK_DGRAM` …), `None` if it cannot be read.
fn socket_type(fd: RawFd) -> Option<i32> {
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: (FFI) `ty` and `len` are live locals of the sizes getsockopt is told about.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            std::ptr::addr_of_mut!(ty).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(ty)
}

/// fd numbers whose closes are counted (higher numbers are not tracked; their owners rely on
/// `Driver::forget_fd` / `cancel_fd` alone).
const TRACKED_FDS: usize = 1 << 16;

/// How many times each fd number was closed by an owner that says so ([`note_close`]),
/// process-wide. Drivers remember the count when they cache facts about an fd and treat a
/// changed count as "another file now": this catches an fd closed on another thread, where
/// the thread's own loops could not be told.
static CLOSES: [AtomicU32; TRACKED_FDS] = [const { AtomicU32::new(0) }; TRACKED_FDS];

/// Records that the owner of `fd` is about to close it (any thread). Cheap: one atomic add.
pub fn note_close(fd: RawFd) {
    if let Some(c) = usize::try_from(fd).ok().and_then(|i| CLOSES.get(i)) {
        c.fetch_add(1, Ordering::Release);
    }
}

/// The close count of `fd` (see [`note_close`]); 0 for untracked numbers.
pub(crate) fn close_count(fd: RawFd) -> u32 {
    usize::try_from(fd)
        .ok()
        .and_then(|i| CLOSES.get(i))
        .map_or(0, |c| c.load(Ordering::Acquire))
}
