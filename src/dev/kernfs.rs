//! [`Attribute`]: sysfs, procfs and cgroup attribute files that announce changes with
//! `POLLPRI` — a GPIO `value` file, `cgroup.events`, `/proc/sys/kernel/hostname`, a power-supply
//! or thermal attribute with notifications …
//!
//! # How these files signal a change
//!
//! A kernfs attribute file always polls as readable and writable, so waiting for `POLLIN` would
//! wake at once, forever. When the attribute changes (`sysfs_notify` / `kernfs_notify` in the
//! kernel), the file *also* reports `POLLPRI | POLLERR`, and keeps reporting it until the open
//! file reads the attribute again **from offset 0**. A `read` at the end of the file (0 bytes)
//! does *not* re-arm it: verified on Linux 6.18, a level-triggered epoll kept reporting
//! `PRI|ERR` after such a read, and went quiet after `pread(fd, …, 0)`.
//!
//! So this type waits for [`Interest::PRIORITY`] only and always reads with `pread` at offset 0:
//! [`Attribute::wait_change`] (fibers) and [`watch`] (callbacks) re-read the value after each
//! notification, which is also what keeps the level-triggered poll from firing again. With
//! io_uring as with epoll, one notification gives one wake-up; several changes before the
//! re-read coalesce into one (the value read is the latest).
//!
//! Reads are done inline, on the loop thread: an attribute's value is produced by a kernel
//! function from memory, in microseconds, and these files cannot be read asynchronously
//! anyway (they are regular files to io_uring and epoll).
//!
//! ```
//! use fdloop::dev::kernfs::Attribute;
//!
//! // Any attribute file can be read; only some of them notify changes.
//! let attr = Attribute::open("/proc/sys/kernel/ostype")?;
//! assert_eq!(attr.read_value()?.trim(), "Linux");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Waiting for a change, in a fiber (here the cgroup v2 `cgroup.events` file, whose
//! `populated` line changes when the first process enters the cgroup or the last one leaves):
//!
//! ```no_run
//! use fdloop::dev::kernfs::Attribute;
//! use fdloop::Loop;
//!
//! let lp = Loop::new()?;
//! lp.spawn(|| {
//!     let attr = Attribute::open("/sys/fs/cgroup/my-service/cgroup.events").unwrap();
//!     println!("now: {}", attr.read_value().unwrap());
//!     loop {
//!         let value = attr.wait_change(None).unwrap();
//!         println!("changed: {value}");
//!     }
//! });
//! lp.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # What is tested, and how
//!
//! `tests/pollpri.rs` exercises this module on both backends with the cgroup v2
//! `cgroup.events` file — kernfs, the same notification path (`kernfs_notify`) as a sysfs GPIO
//! `value` file: it creates a child cgroup, moves a `sleep` process into it ("populated 1") and
//! kills it ("populated 0"), once with [`watch`] (counting callbacks, to show there is no busy
//! loop) and once with [`Attribute::wait_change`] in a fiber. Where no writable cgroup v2
//! hierarchy exists and none can be mounted, those tests say "skipped" and pass.

use std::cell::Cell;
use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use fdloop_backends::FdClass;

use super::eventfd::assert_fiber;
use crate::fiber;
use crate::sys::{cvt, LoopFd};
use crate::{Interest, Loop};

/// An open attribute file of sysfs, procfs or cgroupfs.
pub struct Attribute {
    fd: LoopFd,
    path: PathBuf,
    /// Whether the file can be polled: 0 not checked yet, 1 yes, 2 no.
    pollable: AtomicU8,
}

impl fmt::Debug for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attribute")
            .field("fd", &self.fd.as_raw_fd())
            .field("path", &self.path)
            .finish()
    }
}

fn open_path(path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: path contains a NUL byte", path.display()),
        )
    })?;
    // SAFETY: (FFI) `c` is a NUL-terminated path that outlives the call.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: (FFI) open returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl Attribute {
    /// Opens the attribute at `path` for reading.
    ///
    /// # Errors
    ///
    /// `open(2)` errors, with the path in the message: `NotFound`, `PermissionDenied` …
    pub fn open(path: impl AsRef<Path>) -> io::Result<Attribute> {
        Attribute::open_with(path.as_ref(), libc::O_RDONLY)
    }

    /// Opens the attribute at `path` for reading and writing (for [`Attribute::write_value`]).
    ///
    /// # Errors
    ///
    /// `open(2)` errors, with the path in the message: `NotFound`, `PermissionDenied` (the
    /// attribute is read-only, or belongs to another user) …
    pub fn open_writable(path: impl AsRef<Path>) -> io::Result<Attribute> {
        Attribute::open_with(path.as_ref(), libc::O_RDWR)
    }

    fn open_with(path: &Path, flags: i32) -> io::Result<Attribute> {
        let fd = open_path(path, flags).map_err(|e| with_path(path, e))?;
        Ok(Attribute {
            fd: LoopFd::new(fd),
            path: path.to_path_buf(),
            pollable: AtomicU8::new(0),
        })
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole value from offset 0 (`pread`), which also re-arms the change
    /// notification. The value is returned as the kernel formats it, usually with a trailing
    /// newline. Works anywhere: in fibers, callbacks, or without a loop.
    ///
    /// # Errors
    ///
    /// `pread(2)` errors (`ENODEV` once the attribute's object is gone, `EIO`, or whatever the
    /// attribute's driver reports); `InvalidData` when the value is not UTF-8.
    pub fn read_value(&self) -> io::Result<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.pread(&mut buf, out.len() as u64)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(out).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: the value is not UTF-8", self.path.display()),
            )
        })
    }

    /// Reads the start of the value into `buf` with one `pread` at offset 0 (re-arming the
    /// notification) and returns the number of bytes read. Does not allocate: for small values
    /// read often, such as a GPIO `value`.
    ///
    /// # Errors
    ///
    /// As for [`Attribute::read_value`], without the UTF-8 check.
    pub fn read_raw(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.pread(buf, 0)
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            // SAFETY: (FFI) `buf` is a live writable buffer of `buf.len()` bytes for the call.
            let n = unsafe {
                libc::pread(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    offset as libc::off_t,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes `value` at offset 0 (`pwrite`), in one call, as sysfs expects. The attribute
    /// must have been opened with [`Attribute::open_writable`].
    ///
    /// # Errors
    ///
    /// `EBADF` when opened read-only; `EINVAL` and others from the attribute's driver when it
    /// refuses the value; `WriteZero` when the kernel took only part of it.
    pub fn write_value(&self, value: &str) -> io::Result<()> {
        loop {
            // SAFETY: (FFI) `value` is a live buffer of `value.len()` bytes for the call.
            let n =
                unsafe { libc::pwrite(self.fd.as_raw_fd(), value.as_ptr().cast(), value.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n as usize != value.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "{}: wrote {n} of {} bytes",
                        self.path.display(),
                        value.len()
                    ),
                ));
            }
            return Ok(());
        }
    }

    /// `PermissionDenied` unless the file can report changes (a real kernfs/procfs attribute,
    /// not a regular file).
    fn check_pollable(&self) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        let known = self.pollable.load(Ordering::Relaxed);
        let pollable = if known == 0 {
            // Checked once: `can_poll` asks a throw-away epoll set.
            let p = FdClass::of(fd)? != FdClass::File || FdClass::can_poll(fd)?;
            self.pollable
                .store(if p { 1 } else { 2 }, Ordering::Relaxed);
            p
        } else {
            known == 1
        };
        if !pollable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: not a sysfs/procfs/cgroup attribute that can notify changes (a regular \
                     file or directory cannot be polled)",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }

    /// Waits until the kernel announces a change of the attribute (`POLLPRI`), then re-reads
    /// it from offset 0 and returns the new value. Suspends only the calling fiber. Changes
    /// that happened since the last read (including before this call) end the wait at once.
    ///
    /// Not every attribute notifies: one that never does makes this wait until the timeout.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when `timeout` passed without a change; `PermissionDenied` for a file that
    /// cannot be polled (a regular file); the errors of [`Attribute::read_value`];
    /// `ECANCELED` when the loop is closing.
    ///
    /// # Panics
    ///
    /// Outside a fiber: from callbacks use [`watch`].
    pub fn wait_change(&self, timeout: Option<Duration>) -> io::Result<String> {
        assert_fiber("kernfs::Attribute::wait_change", "kernfs::watch");
        super::eventfd::check_timeout(timeout)?;
        self.check_pollable()?;
        fiber::wait(self.fd.as_raw_fd(), Interest::PRIORITY, timeout)?;
        self.read_value()
    }

    /// Like [`Attribute::wait_change`], but re-reads into `buf` with [`Attribute::read_raw`]
    /// instead of allocating a `String`; returns the number of bytes read.
    ///
    /// # Errors
    ///
    /// As for [`Attribute::wait_change`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn wait_change_raw(&self, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<usize> {
        assert_fiber("kernfs::Attribute::wait_change_raw", "kernfs::watch");
        super::eventfd::check_timeout(timeout)?;
        self.check_pollable()?;
        fiber::wait(self.fd.as_raw_fd(), Interest::PRIORITY, timeout)?;
        self.read_raw(buf)
    }
}

impl AsFd for Attribute {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Attribute {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for Attribute {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_owned().into_raw_fd()
    }
}

impl From<Attribute> for OwnedFd {
    fn from(a: Attribute) -> OwnedFd {
        a.fd.into_owned()
    }
}

/// A callback watch started by [`watch`]. Dropping it does not stop the watch; call
/// [`Watch::stop`]. Cloning gives another handle to the same watch (to stop it from inside its
/// own callback, say).
#[derive(Clone, Debug)]
pub struct Watch {
    fd: RawFd,
    /// True while the registration (and with it the attribute's fd) exists.
    alive: Rc<Cell<bool>>,
}

impl Watch {
    /// Stops the watch and closes the attribute. Stopping a watch that has already stopped
    /// (after an error, or a previous `stop`) does nothing.
    ///
    /// # Errors
    ///
    /// None in practice ([`Loop::detach`] errors).
    pub fn stop(&self, lp: &Loop) -> io::Result<()> {
        if self.alive.get() {
            // While `alive`, the fd is still open and owned by the registration's closure, so
            // the number cannot name another file.
            lp.detach(self.fd)?;
        }
        Ok(())
    }

    /// Whether the watch still runs.
    pub fn is_active(&self) -> bool {
        self.alive.get()
    }
}

/// Marks the watch stopped when the registration's closure (which owns the attribute) goes.
struct AliveFlag(Rc<Cell<bool>>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Calls `callback` with the new value each time `attr` announces a change: registers
/// [`Interest::PRIORITY`] with [`Loop::start_poll`] and re-reads the attribute from offset 0
/// in the poll callback, before calling `callback` — that re-read is what keeps the
/// level-triggered poll from firing again for the same change.
///
/// The watch owns `attr` (it is closed when the watch stops). After an error has been passed
/// to `callback` (a failed read: the attribute's object was removed, say; or a failed poll),
/// the watch has stopped.
///
/// ```
/// use fdloop::dev::kernfs::{self, Attribute};
/// use fdloop::{Loop, Timer};
/// use std::time::Duration;
///
/// let lp = Loop::new()?;
/// let attr = Attribute::open("/proc/sys/kernel/hostname")?;
/// let watch = kernfs::watch(&lp, attr, |_lp, value| println!("hostname: {}", value.unwrap()))?;
/// lp.start_timer(Timer::after(Duration::from_millis(10)), move |lp, _| watch.stop(lp).unwrap());
/// lp.run()?;
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// `PermissionDenied` for a file that cannot be polled (a regular file); the errors of
/// [`Loop::start_poll`].
pub fn watch<F>(lp: &Loop, attr: Attribute, mut callback: F) -> io::Result<Watch>
where
    F: FnMut(&Loop, io::Result<String>) + 'static,
{
    attr.check_pollable()?;
    let fd = attr.as_raw_fd();
    let alive = Rc::new(Cell::new(true));
    let flag = AliveFlag(alive.clone());
    let r = lp.start_poll(fd, Interest::PRIORITY, move |lp, ready| {
        let _owned = &flag;
        if let Some(e) = ready.watch_error() {
            // The registration is removed after this callback.
            callback(lp, Err(e));
            return;
        }
        let value = attr.read_value();
        let failed = value.is_err();
        callback(lp, value);
        if failed {
            let _ = lp.detach(fd);
        }
    });
    match r {
        Ok(()) => Ok(Watch { fd, alive }),
        Err(e) => {
            alive.set(false);
            Err(e)
        }
    }
}
