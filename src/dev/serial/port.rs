//! [`SerialPort`]: an owned, non-blocking tty fd driven by the loop.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::settings::{self, named, not_a_terminal, Line, Settings};
use crate::fiber::ops;
use crate::fiber::scheduler::current_or_panic;
use crate::sys::{cvt, set_nonblocking, LoopFd};
use crate::{Interest, IoId, Loop};

/// The encoding of "no timeout" in the atomics.
const NO_TIMEOUT: u64 = u64::MAX;

/// `drain` re-checks the output queue at least this often.
const DRAIN_MAX_STEP: Duration = Duration::from_millis(100);
/// … and at most this often.
const DRAIN_MIN_STEP: Duration = Duration::from_millis(1);

/// A serial port or any other tty (a pty end, a terminal opened elsewhere), owned and
/// non-blocking, for fibers and callbacks alike. See [the module docs](super) for the rules.
pub struct SerialPort {
    /// Taken out only by `into_owned`.
    fd: ManuallyDrop<LoopFd>,
    /// The path it was opened by, or the tty's name for an adopted fd.
    path: Option<PathBuf>,
    /// A pty master: `EIO` from `read` is the hang-up (every slave fd closed), reported as
    /// end-of-file.
    pty_master: bool,
    /// Opened with `TIOCEXCL` (cleared again on drop, as serialport does).
    pub(super) exclusive: bool,
    /// Nanoseconds, or [`NO_TIMEOUT`].
    read_timeout: AtomicU64,
    write_timeout: AtomicU64,
}

impl SerialPort {
    /// Opens the serial port (or any tty) at `path` and configures it with `settings`,
    /// through the `serialport` crate: raw mode, `CLOCAL | CREAD`, the line settings (any
    /// baud rate, via `termios2`), exclusive access unless [`Settings::exclusive`] is false.
    /// The settings are then read back and compared. The fd is close-on-exec and
    /// `O_NONBLOCK`.
    ///
    /// Opening raises DTR (and RTS) on most serial hardware, and closing drops them (`HUPCL`):
    /// boards that reset on DTR, such as Arduinos, reset when the port is opened.
    ///
    /// ```no_run
    /// use fdloop::dev::serial::{SerialPort, Settings};
    ///
    /// let port = SerialPort::open("/dev/ttyUSB0", &Settings::new().baud_rate(9600))?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Each names the path:
    ///
    /// * `NotFound` "/dev/ttyUSB9: No such file or directory …" for a missing device;
    /// * `InvalidInput` "… is not a terminal" for a regular file, a directory, `/dev/null` or
    ///   another device that is not a tty; `InvalidInput` for a baud rate of 0, for a path
    ///   that is not UTF-8 (serialport takes a string), and when the driver did not apply a
    ///   setting (an unsupported baud rate: the message says what the tty has instead);
    /// * `ResourceBusy` when the port is open exclusively elsewhere (another process, or
    ///   another `SerialPort` of this one);
    /// * `PermissionDenied` (the user is often missing from the `dialout` group);
    /// * other errors of `open(2)` and the `ioctl`s, e.g. `EIO` for a UART that is not there.
    pub fn open(path: impl AsRef<Path>, settings: &Settings) -> io::Result<SerialPort> {
        let path = path.as_ref();
        let who = path.display().to_string();
        settings.validate().map_err(|e| named(&who, e))?;
        let name = path.to_str().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{who}: the path is not UTF-8, which serialport requires"),
            )
        })?;
        // Before opening (which has effects on real hardware): a missing path or a file that
        // cannot be a tty.
        let meta = std::fs::metadata(path).map_err(|e| named(&who, e))?;
        if !meta.file_type().is_char_device() {
            return Err(not_a_terminal(&who));
        }
        let builder = serialport::new(name, settings.baud_rate)
            .data_bits(settings.data_bits)
            .parity(settings.parity)
            .stop_bits(settings.stop_bits)
            .flow_control(settings.flow_control)
            .exclusive(settings.exclusive);
        let builder = match settings.dtr_on_open {
            Some(level) => builder.dtr_on_open(level),
            None => builder.preserve_dtr_on_open(),
        };
        let tty = builder
            .open_native()
            .map_err(|e| open_error(path, &who, e))?;
        // SAFETY: (FFI) `into_raw_fd` hands over serialport's fd (without closing it or clearing
        // its exclusivity); nothing else owns it now.
        let fd = unsafe { OwnedFd::from_raw_fd(tty.into_raw_fd()) };
        let pty_master = is_pty_master(fd.as_raw_fd());
        // Wrapped at once, so that an error below also clears the exclusivity on close.
        let port = SerialPort::wrap(fd, Some(path.to_path_buf()), pty_master, settings.exclusive);
        // SAFETY: (FFI) isatty takes no pointers.
        if unsafe { libc::isatty(port.raw()) } == 0 {
            return Err(not_a_terminal(&who));
        }
        set_nonblocking(port.raw()).map_err(|e| named(&who, e))?;
        // serialport does not read back what it set after its raw-mode step.
        settings::verify(port.raw(), &Line::of(settings), &who)?;
        Ok(port)
    }

    /// Adopts a tty fd: a pty master or slave (from `openpty`, `forkpty` …) or any tty opened
    /// elsewhere. Sets `O_NONBLOCK` on it (on the open file description, which its
    /// duplicates share: do not adopt a copy of a terminal that other processes use, such
    /// as stdin) and changes no setting: call [`SerialPort::set_raw`] or
    /// [`SerialPort::configure`] as needed. Whether the fd is a pty master is detected
    /// (`TIOCGPTN`), for the hang-up rule.
    ///
    /// `TryFrom<OwnedFd>` does the same.
    ///
    /// # Errors
    ///
    /// `InvalidInput` "fd N (a socket) is not a terminal" when `fd` is not a tty; `fcntl(2)`
    /// errors.
    pub fn from_pty(fd: OwnedFd) -> io::Result<SerialPort> {
        let raw = fd.as_raw_fd();
        // SAFETY: (FFI) isatty takes no pointers.
        if unsafe { libc::isatty(raw) } == 0 {
            return Err(not_a_terminal(&format!("fd {raw} ({})", describe_fd(raw))));
        }
        set_nonblocking(raw)?;
        let pty_master = is_pty_master(raw);
        let path = if pty_master { None } else { tty_name(raw) };
        Ok(SerialPort::wrap(fd, path, pty_master, false))
    }

    pub(super) fn wrap(
        fd: OwnedFd,
        path: Option<PathBuf>,
        pty_master: bool,
        exclusive: bool,
    ) -> SerialPort {
        SerialPort {
            fd: ManuallyDrop::new(LoopFd::new(fd)),
            path,
            pty_master,
            exclusive,
            read_timeout: AtomicU64::new(NO_TIMEOUT),
            write_timeout: AtomicU64::new(NO_TIMEOUT),
        }
    }

    pub(super) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The port's name in error messages: its path, or "fd N".
    pub(super) fn who(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => format!("fd {}", self.raw()),
        }
    }

    /// The path the port was opened by ([`SerialPort::open`]), or the tty's name for an
    /// adopted fd (`/dev/pts/3` for a pty slave); `None` for a pty master.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether this is a pty master, whose `read` reports the hang-up (`EIO`) as
    /// end-of-file.
    pub fn is_pty_master(&self) -> bool {
        self.pty_master
    }

    // --- fiber I/O ----------------------------------------------------------------------

    /// Sets how long one read may wait; `None` (the default) waits forever. A read that
    /// times out fails with `WouldBlock` (as std's socket timeouts do on Linux) and leaves the
    /// port usable.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for `Some(Duration::ZERO)`, as std.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.store(encode(timeout)?, Ordering::Relaxed);
        Ok(())
    }

    /// Sets how long one write (or [`SerialPort::drain`]) may wait; `None` (the default)
    /// waits forever. A write that times out fails with `WouldBlock` and leaves the port
    /// usable.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for `Some(Duration::ZERO)`, as std.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.write_timeout
            .store(encode(timeout)?, Ordering::Relaxed);
        Ok(())
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> Option<Duration> {
        decode(self.read_timeout.load(Ordering::Relaxed))
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Option<Duration> {
        decode(self.write_timeout.load(Ordering::Relaxed))
    }

    /// `EIO` from a read on a pty master is the hang-up: end-of-file.
    fn hangup_is_eof(&self, r: io::Result<usize>) -> io::Result<usize> {
        match r {
            Err(e) if self.pty_master && e.raw_os_error() == Some(libc::EIO) => Ok(0),
            r => r,
        }
    }

    fn fiber_write(&self, buf: &[u8]) -> io::Result<usize> {
        if !self.pty_master {
            return ops::write(self.raw(), buf, None, self.write_timeout());
        }
        // A pty master whose slave side is closed keeps accepting data until its buffer is
        // full; then `write` says EAGAIN while `poll` reports only POLLHUP, never POLLOUT.
        // Waiting for room would never end, so that case is reported as BrokenPipe.
        current_or_panic("fdloop::dev::serial::SerialPort::write");
        let deadline = self.write_timeout().map(|t| Instant::now() + t);
        loop {
            match self.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
            let ready = crate::fiber::wait(self, Interest::WRITABLE, remaining(deadline)?)?;
            if ready.is_hup() && !ready.is_writable() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the pty's slave side is closed (hang-up) and its input buffer is full",
                ));
            }
        }
    }

    /// Waits until everything written has been sent: the kernel's output queue is empty
    /// (`TIOCOUTQ`, re-checked with [`fiber::sleep`](crate::fiber::sleep)s sized by the baud
    /// rate) and then `tcdrain(3)` (for the UART's own FIFO) on the loop's thread pool, on a
    /// duplicate of the fd. It never blocks the loop thread. The write timeout bounds the
    /// wait for the queue. `Write::flush` does not drain (it returns at once, like a socket's).
    ///
    /// A pty has no output queue: `drain` returns at once.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when the write timeout passed with data still queued (flow control
    /// holding it back, say); `ioctl(2)` / `tcdrain(3)` errors.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn drain(&self) -> io::Result<()> {
        if current_or_panic("fdloop::dev::serial::SerialPort::drain").closing {
            // The loop is closing and unwinds this fiber: it cannot wait.
            return Err(io::Error::from_raw_os_error(libc::ECANCELED));
        }
        let deadline = self.write_timeout().map(|t| Instant::now() + t);
        let mut per_char: Option<Duration> = None;
        loop {
            let queued = self.bytes_to_write()?;
            if queued == 0 {
                break;
            }
            let per_char = match per_char {
                Some(d) => d,
                None => {
                    let line = settings::decode(&settings::get(self.raw())?);
                    let ns = u64::from(line.bits_per_char()) * 1_000_000_000
                        / u64::from(line.baud_rate.max(1));
                    *per_char.insert(Duration::from_nanos(ns))
                }
            };
            let step = per_char
                .saturating_mul(queued)
                .clamp(DRAIN_MIN_STEP, DRAIN_MAX_STEP);
            let step = match remaining(deadline)? {
                Some(left) => step.min(left),
                None => step,
            };
            crate::fiber::sleep(step);
        }
        let fd = self.fd.as_fd().try_clone_to_owned()?;
        crate::fiber::unblock(move || loop {
            // SAFETY: (FFI) tcdrain takes no pointers; `fd` is owned by this closure.
            match cvt(unsafe { libc::tcdrain(fd.as_raw_fd()) }) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r.map(drop),
            }
        })
        .map_err(|e| named(&self.who(), e))
    }

    // --- callback I/O -------------------------------------------------------------------

    /// One non-blocking `read(2)`, for [`Loop::start_poll`] callbacks (and anywhere else):
    /// `WouldBlock` when nothing is there. `Ok(0)` is end-of-file, including the hang-up of a
    /// pty master (`EIO`: every slave fd is closed).
    ///
    /// # Errors
    ///
    /// `WouldBlock`; `read(2)` errors.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: (FFI) `buf` is a live writable buffer of `buf.len()` bytes.
            let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return self.hangup_is_eof(Err(e));
            }
        }
    }

    /// One non-blocking `write(2)`: `WouldBlock` when there is no room.
    ///
    /// # Errors
    ///
    /// `WouldBlock`; `write(2)` errors (`EIO` on a slave whose master is closed).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: (FFI) `buf` is a live buffer of `buf.len()` bytes.
            let n = unsafe { libc::write(self.raw(), buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// [`Loop::read`] on the port with an owned buffer, except that the hang-up of a pty
    /// master (`EIO`) is delivered as `Ok(0)`, end-of-file. (`Loop::read(&port, …)` and
    /// [`Loop::write`] work on the port directly too; `Loop::read` reports the hang-up as
    /// `EIO`.) The port must outlive the operation: cancel it ([`Loop::cancel`],
    /// [`Loop::detach`]) before dropping the port.
    ///
    /// # Errors
    ///
    /// Delivered to the callback: `read(2)` errors, `ECANCELED`.
    pub fn read_owned<F>(&self, lp: &Loop, buf: Vec<u8>, callback: F) -> IoId
    where
        F: FnOnce(&Loop, io::Result<usize>, Vec<u8>) + 'static,
    {
        let master = self.pty_master;
        lp.read(self, buf, move |lp, r, mut buf| {
            let r = match r {
                Err(e) if master && e.raw_os_error() == Some(libc::EIO) => {
                    buf.clear();
                    Ok(0)
                }
                r => r,
            };
            callback(lp, r, buf);
        })
    }

    /// Gives the fd up (the loops of this thread forget it). An exclusive port stays
    /// exclusive (`TIOCEXCL`) for its new owner.
    fn into_owned(self) -> OwnedFd {
        let mut this = ManuallyDrop::new(self);
        drop(this.path.take());
        // SAFETY: (FFI) `this` is never used or dropped again, so the fd is moved out exactly once;
        // the other fields need no drop (the path was dropped above).
        unsafe { ManuallyDrop::take(&mut this.fd) }.into_owned()
    }
}

impl Drop for SerialPort {
    fn drop(&mut self) {
        if self.exclusive {
            // As serialport does on close: TIOCEXCL may outlive this fd when others hold the
            // tty open.
            // SAFETY: (FFI) TIOCNXCL takes no argument.
            unsafe { libc::ioctl(self.raw(), libc::TIOCNXCL) };
        }
        // SAFETY: (FFI) `self.fd` is dropped exactly once, here, and never used after.
        unsafe { ManuallyDrop::drop(&mut self.fd) };
    }
}

impl fmt::Debug for SerialPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialPort")
            .field("fd", &self.raw())
            .field("path", &self.path)
            .field("pty_master", &self.pty_master)
            .field("exclusive", &self.exclusive)
            .finish()
    }
}

impl Read for &SerialPort {
    /// Reads what is there, suspending the fiber until something is (or the read timeout
    /// passes: `WouldBlock`). `Ok(0)` is end-of-file: the hang-up of a pty master (`EIO`),
    /// or a hung-up serial port.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let port: &SerialPort = self;
        port.hangup_is_eof(ops::read(port.raw(), buf, None, port.read_timeout()))
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        let port: &SerialPort = self;
        port.hangup_is_eof(ops::readv(port.raw(), bufs, None, port.read_timeout()))
    }
}

impl Write for &SerialPort {
    /// Writes what fits, suspending the fiber until some room is free (or the write timeout
    /// passes: `WouldBlock`). On a pty master whose slave side is closed, once the buffer is
    /// full: `BrokenPipe`.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (*self).fiber_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let port: &SerialPort = self;
        if port.pty_master {
            let buf = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return port.fiber_write(buf);
        }
        ops::writev(port.raw(), bufs, None, port.write_timeout())
    }

    /// Returns at once: data is handed to the kernel by `write`. To wait until it has been
    /// sent on the wire, use [`SerialPort::drain`].
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for SerialPort {
    /// As `Read for &SerialPort`.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        (&*self).read_vectored(bufs)
    }
}

impl Write for SerialPort {
    /// As `Write for &SerialPort`.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for SerialPort {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SerialPort {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

impl IntoRawFd for SerialPort {
    fn into_raw_fd(self) -> RawFd {
        self.into_owned().into_raw_fd()
    }
}

impl From<SerialPort> for OwnedFd {
    fn from(port: SerialPort) -> OwnedFd {
        port.into_owned()
    }
}

impl TryFrom<OwnedFd> for SerialPort {
    type Error = io::Error;

    /// As [`SerialPort::from_pty`].
    fn try_from(fd: OwnedFd) -> io::Result<SerialPort> {
        SerialPort::from_pty(fd)
    }
}

/// Maps serialport's open errors to `io::Error`s that name the path.
fn open_error(path: &Path, who: &str, e: serialport::Error) -> io::Error {
    use serialport::ErrorKind as K;
    match e.kind() {
        K::NoDevice => io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "{who}: the port is busy: it is open exclusively elsewhere (another process, \
                 or another SerialPort of this one) ({})",
                e.description
            ),
        ),
        K::Io(io::ErrorKind::PermissionDenied) => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{who}: {} (serial ports usually belong to the `dialout` group)",
                e.description
            ),
        ),
        K::Io(kind) => io::Error::new(kind, format!("{who}: {}", e.description)),
        K::InvalidInput => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{who}: {}", e.description),
        ),
        // serialport keeps no errno for the rest; ENOTTY (a device that is not a tty) is one.
        K::Unknown => {
            if is_tty_path(path) == Some(false) {
                not_a_terminal(who)
            } else {
                io::Error::other(format!("{who}: {}", e.description))
            }
        }
    }
}

/// Whether the device at `path` is a tty (`None` when it cannot be opened to ask). Opens it
/// once more: only used after serialport's open failed.
fn is_tty_path(path: &Path) -> Option<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    // SAFETY: (FFI) isatty takes no pointers.
    Some(unsafe { libc::isatty(f.as_raw_fd()) } != 0)
}

/// Whether `fd` is a pty master (only masters answer `TIOCGPTN`).
fn is_pty_master(fd: RawFd) -> bool {
    let mut n: libc::c_uint = 0;
    // SAFETY: (FFI) TIOCGPTN writes one unsigned int into the live `n`.
    unsafe { libc::ioctl(fd, libc::TIOCGPTN, &mut n) == 0 }
}

/// The tty's name (`ttyname_r`), if it has one.
fn tty_name(fd: RawFd) -> Option<PathBuf> {
    let mut buf = [0u8; 256];
    // SAFETY: (FFI) `buf` is a live writable buffer of the given length.
    let r = unsafe { libc::ttyname_r(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0)?;
    use std::os::unix::ffi::OsStrExt;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(&buf[..len])))
}

/// What kind of file `fd` is, for error messages.
fn describe_fd(fd: RawFd) -> &'static str {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: (FFI) fstat writes one `stat` into the live buffer.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return "not an open fd";
    }
    // SAFETY: (FFI) fstat succeeded and filled the struct.
    let mode = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
    match mode {
        libc::S_IFSOCK => "a socket",
        libc::S_IFIFO => "a pipe",
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        _ => "not a tty",
    }
}

fn encode(dur: Option<Duration>) -> io::Result<u64> {
    match dur {
        None => Ok(NO_TIMEOUT),
        Some(d) if d.is_zero() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cannot set a 0 duration timeout",
        )),
        Some(d) => Ok(u64::try_from(d.as_nanos())
            .unwrap_or(NO_TIMEOUT - 1)
            .min(NO_TIMEOUT - 1)),
    }
}

fn decode(v: u64) -> Option<Duration> {
    (v != NO_TIMEOUT).then(|| Duration::from_nanos(v))
}

/// The time left until `deadline` (`None`: no deadline); `WouldBlock` once it has passed.
fn remaining(deadline: Option<Instant>) -> io::Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(io::Error::from(io::ErrorKind::WouldBlock))
            } else {
                Ok(Some(left))
            }
        }
    }
}
