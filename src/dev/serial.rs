//! Serial ports and other ttys on the loop: [`SerialPort`], for fibers and callbacks.
//!
//! # The rules
//!
//! * **Configure with `serialport`, drive from the loop.** [`SerialPort::open`] opens and
//!   configures the port through the `serialport` crate (raw mode, `CLOCAL | CREAD`, baud rate
//!   via `termios2`, exclusive access), takes its fd, sets `O_NONBLOCK` and never calls
//!   serialport's `Read`/`Write`/`flush` again: those block the calling thread in `poll(2)` and
//!   `tcdrain(3)`. Reads and writes are driven by the loop instead — on io_uring too, ttys go
//!   through a poll and a non-blocking read or write (an io_uring read on a tty would sit in a
//!   kernel worker).
//! * **Settings are verified.** `tcsetattr` reports success when *any* change applied, so every
//!   change ([`SerialPort::configure`], [`SerialPort::set_baud_rate`] …, [`set_raw`]) is read
//!   back and compared; a driver that refused a rate is an error that says what it chose.
//! * **Ptys must be in raw mode.** A fresh pty is cooked: it echoes, edits lines (the reader
//!   sees nothing until a newline), turns `\n` into `\r\n` and `\r` into `\n`, and swallows
//!   `0x03` as an interrupt. [`pty_pair`] sets raw mode; for ptys from elsewhere, call
//!   [`SerialPort::set_raw`] (or [`set_raw`] on any tty fd).
//! * **Hang-up is end-of-file.** When every slave fd of a pty is closed, `read` on the master
//!   fails with `EIO`: that is the kernel's hang-up signal there (after the data the slave
//!   wrote has been read), and a [`SerialPort`] that is a pty master reports it as `Ok(0)`
//!   from `Read`, [`SerialPort::try_read`] and [`SerialPort::read_owned`]. Closing the master
//!   hangs the slave up: the slave reads end-of-file (its unread input is discarded) and its
//!   writes fail with `EIO`. A real serial port that hangs up (a USB adapter unplugged)
//!   polls `POLLHUP` and reads end-of-file, and its writes fail with `EIO`.
//! * **Writing to a hung-up pty master.** The master accepts a few KiB more, then `write`
//!   says `EAGAIN` while `poll` reports `POLLHUP` and never `POLLOUT`. The fiber `Write` of a
//!   master reports that as `BrokenPipe`; a [`Loop::write`](crate::Loop::write) on it would
//!   wait forever (cancel it on hang-up), and a poll callback sees `is_hup()`.
//! * **DTR and resets.** Opening a serial port raises DTR and closing it drops DTR (`HUPCL`):
//!   boards such as Arduinos reset on that edge, so the first bytes after an open may be lost
//!   while the board boots. Keep the port open, or control DTR with
//!   [`SerialPort::write_dtr`]. Modem lines mean nothing on a pty (the calls fail with
//!   `Unsupported`).
//! * **Never block the loop thread.** [`SerialPort::drain`] (wait until sent) polls the
//!   output queue with fiber sleeps and finishes with `tcdrain` on the thread pool.
//!
//! # Two styles
//!
//! * **Fibers**: `Read`/`Write` for `SerialPort` and `&SerialPort` suspend only the fiber, with
//!   [`SerialPort::set_read_timeout`] / [`SerialPort::set_write_timeout`] (`WouldBlock` on
//!   expiry). Share a port between a reading and a writing fiber with an `Rc`.
//! * **Callbacks**: [`Loop::start_poll`](crate::Loop::start_poll) on the port plus
//!   [`SerialPort::try_read`] / [`SerialPort::try_write`] (`WouldBlock` when not ready); or
//!   completion I/O with owned buffers: [`SerialPort::read_owned`] (`Loop::read` with the
//!   hang-up as `Ok(0)`), `Loop::read(&port, …)` and `Loop::write(&port, …)`.
//!
//! # Example
//!
//! A request and its response over a pty pair; with hardware, open the port with
//! `SerialPort::open("/dev/ttyUSB0", &Settings::new())` instead of the master.
//!
//! ```
//! use fdloop::dev::serial::pty_pair;
//! use fdloop::Loop;
//! use std::io::{BufRead, BufReader, Write};
//!
//! let lp = Loop::new()?;
//! let (host, device) = pty_pair()?;
//!
//! // The "device": answers PING with PONG.
//! lp.spawn(move || {
//!     let mut lines = BufReader::new(&device);
//!     let mut line = String::new();
//!     lines.read_line(&mut line).unwrap();
//!     assert_eq!(line, "PING\n");
//!     (&device).write_all(b"PONG\n").unwrap();
//! });
//! // The host: sends a request and reads the reply.
//! let reply = lp.spawn(move || {
//!     (&host).write_all(b"PING\n").unwrap();
//!     let mut line = String::new();
//!     BufReader::new(&host).read_line(&mut line).unwrap();
//!     line
//! });
//! lp.run()?;
//! assert_eq!(reply.join().unwrap(), "PONG\n");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Testing
//!
//! The tests run over pty pairs in raw mode, on both backends: 1 MiB each way through fibers
//! and through poll callbacks, hang-ups in both directions, timeouts, owned-buffer I/O,
//! settings read-back and the error cases (missing path, regular file, `/dev/null`, a socket,
//! a second exclusive open). No serial hardware was available to them: a pty stores the baud
//! rate and stop bits but ignores them, always keeps 8 data bits and no parity, has no modem
//! lines and no output queue. So [`SerialPort::drain`] on a UART, DTR/RTS/CTS, breaks, real
//! baud rates and a USB unplug were not exercised. A second exclusive open is refused by
//! `TIOCEXCL` (`EBUSY`) for ordinary users and by the exclusive `flock` for root, whom
//! `TIOCEXCL` lets through; both give `ResourceBusy`, and only the path taken by the user
//! running the tests is exercised.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use crate::sys::cvt;

mod control;
mod port;
mod settings;

pub use port::SerialPort;
pub use settings::{ClearBuffer, DataBits, FlowControl, Parity, Settings, StopBits};

/// A new pty pair in raw mode, both ends close-on-exec and non-blocking: `(master, slave)`.
/// The slave's [`SerialPort::path`] is its device path (`/dev/pts/N`), which
/// [`SerialPort::open`] can open once more as a program would open a serial port. When every
/// slave fd is closed, the master reads end-of-file; when the master is closed, the slave
/// does.
///
/// # Errors
///
/// `posix_openpt(3)`, `grantpt(3)`, `unlockpt(3)`, `open(2)` and `termios` errors (`EMFILE`;
/// `ENOENT` without `/dev/ptmx`).
pub fn pty_pair() -> io::Result<(SerialPort, SerialPort)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: (FFI) posix_openpt takes no pointers.
    let master = cvt(unsafe { libc::posix_openpt(flags) })?;
    // SAFETY: (FFI) a fresh fd that nothing else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: (FFI) grantpt and unlockpt take no pointers.
    cvt(unsafe { libc::grantpt(master.as_raw_fd()) })?;
    // SAFETY: (FFI) unlockpt takes an int fd, no pointer; `master` is an open pty master we own.
    cvt(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut name = [0u8; 128];
    // SAFETY: (FFI) `name` is a live writable buffer of the given length.
    let r = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr().cast(), name.len()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    let cname = std::ffi::CStr::from_bytes_until_nul(&name)
        .map_err(|_| io::Error::other("ptsname_r returned an unterminated name"))?;
    // SAFETY: (FFI) `cname` is a NUL-terminated string that outlives the call.
    let slave = cvt(unsafe { libc::open(cname.as_ptr(), flags) })?;
    // SAFETY: (FFI) a fresh fd that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let path = PathBuf::from(cname.to_str().map_err(io::Error::other)?);
    settings::make_raw(slave.as_raw_fd(), &path.display().to_string())?;
    Ok((
        SerialPort::wrap(master, None, true, false),
        SerialPort::wrap(slave, Some(path), false, false),
    ))
}

/// Puts any tty in raw mode (`cfmakeraw`, applied at once with `TCSANOW`) and reads the
/// settings back to check: no echo, no line editing, no signal characters, no CR/NL
/// translation, 8-bit characters, reads return as soon as a byte is there. The fd stays
/// owned by the caller. On a pty master this changes the slave's settings (Linux keeps one
/// set for both ends).
///
/// ```
/// let (master, slave) = fdloop::dev::serial::pty_pair()?;
/// fdloop::dev::serial::set_raw(&slave)?; // already raw: a no-op
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Errors
///
/// `InvalidInput` "fd N is not a terminal" for an fd that is not a tty; `termios` errors;
/// `Other` when the kernel did not apply raw mode.
pub fn set_raw(fd: impl AsFd) -> io::Result<()> {
    let fd = fd.as_fd().as_raw_fd();
    settings::make_raw(fd, &format!("fd {fd}"))
}
