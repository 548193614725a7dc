//! [`EventFd`]: a kernel counter that wakes whoever waits on it — between fibers, between a
//! callback and a fiber, or from another thread (an `EventFd` is `Send + Sync`).
//!
//! A write adds to the counter; a read returns the counter and resets it to zero, or, in
//! semaphore mode, returns 1 and decrements it. A read of a zero counter waits: [`EventFd::read`]
//! suspends the calling fiber, [`EventFd::try_read`] returns `WouldBlock` (for callbacks, with
//! [`Loop::start_poll`](crate::Loop::start_poll) and [`Interest::READABLE`]).
//!
//! ```
//! use fdloop::dev::eventfd::EventFd;
//! use fdloop::Loop;
//! use std::rc::Rc;
//!
//! let lp = Loop::new()?;
//! let ev = Rc::new(EventFd::new(0, false)?);
//! let waiter = {
//!     let ev = ev.clone();
//!     lp.spawn(move || ev.read().unwrap()) // suspends until the other fiber writes
//! };
//! lp.spawn(move || {
//!     ev.write(2).unwrap();
//!     ev.write(3).unwrap();
//! });
//! lp.run()?;
//! assert_eq!(waiter.join().unwrap(), 5);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! From a callback:
//!
//! ```
//! use fdloop::dev::eventfd::EventFd;
//! use fdloop::{Interest, Loop};
//! use std::os::fd::AsRawFd;
//!
//! let lp = Loop::new()?;
//! let ev = EventFd::new(0, false)?;
//! ev.write(7)?;
//! let fd = ev.as_raw_fd();
//! lp.start_poll(fd, Interest::READABLE, move |lp, _ready| {
//!     match ev.try_read() {
//!         Ok(n) => assert_eq!(n, 7),
//!         Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
//!         Err(e) => panic!("{e}"),
//!     }
//!     lp.detach(fd).unwrap();
//! })?;
//! lp.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The fd is non-blocking and close-on-exec. Blocking calls are a non-blocking syscall first
//! and, only when it gives `EAGAIN`, a wait for readiness on the loop followed by a retry; the
//! same pattern serves [`TimerFd`](super::timerfd::TimerFd),
//! [`SignalFd`](super::signalfd::SignalFd) and GPIO line requests.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::fiber;
use crate::sys::{cvt, LoopFd};
use crate::Interest;

/// An eventfd: a 64-bit counter in the kernel, readable when non-zero.
#[derive(Debug)]
pub struct EventFd {
    fd: LoopFd,
    timeout: Option<Duration>,
}

impl EventFd {
    /// A new eventfd whose counter starts at `initial`. In `semaphore` mode every read returns
    /// 1 and decrements the counter; otherwise a read returns the whole counter and resets it.
    ///
    /// # Errors
    ///
    /// `eventfd(2)` errors: `EMFILE`/`ENFILE` when out of fds.
    pub fn new(initial: u32, semaphore: bool) -> io::Result<EventFd> {
        let mut flags = libc::EFD_CLOEXEC | libc::EFD_NONBLOCK;
        if semaphore {
            flags |= libc::EFD_SEMAPHORE;
        }
        // SAFETY: (FFI) eventfd takes no pointers.
        let fd = cvt(unsafe { libc::eventfd(initial, flags) })?;
        // SAFETY: (FFI) eventfd returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd {
            fd: LoopFd::new(fd),
            timeout: None,
        })
    }

    /// Sets how long [`EventFd::read`] (and a [`EventFd::write`] that has to wait) may wait
    /// (`None`: forever). A call that times out fails with `WouldBlock`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// Adds `value` to the counter, waking readers.
    ///
    /// This does not wait in practice: it could only wait when the counter would exceed
    /// `u64::MAX - 1`. Then, inside a fiber, it suspends the fiber until a read makes room;
    /// outside a fiber it fails with `WouldBlock`, as [`EventFd::try_write`] does. Usable from
    /// any thread.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for `u64::MAX`; `WouldBlock` as described above (or after the timeout).
    pub fn write(&self, value: u64) -> io::Result<()> {
        if !fiber::in_fiber() {
            return self.try_write(value);
        }
        retry_in_fiber(self.as_raw_fd(), Interest::WRITABLE, self.timeout, || {
            self.try_write(value)
        })
    }

    /// Adds `value` to the counter without waiting.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when the counter would overflow; `InvalidInput` for `u64::MAX`.
    pub fn try_write(&self, value: u64) -> io::Result<()> {
        if value == u64::MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an eventfd cannot be incremented by u64::MAX",
            ));
        }
        let bytes = value.to_ne_bytes();
        // SAFETY: (FFI) `bytes` is a live 8-byte buffer for the duration of the call.
        let n = unsafe { libc::write(self.as_raw_fd(), bytes.as_ptr().cast(), 8) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until the counter is non-zero, then returns it and resets it to zero (or, in
    /// semaphore mode, returns 1 and decrements it). Suspends only the calling fiber.
    ///
    /// # Errors
    ///
    /// `WouldBlock` after the timeout set with [`EventFd::set_timeout`]; `ECANCELED` when the
    /// loop is closing.
    ///
    /// # Panics
    ///
    /// Outside a fiber: from a callback use [`EventFd::try_read`] with
    /// [`Loop::start_poll`](crate::Loop::start_poll).
    pub fn read(&self) -> io::Result<u64> {
        assert_fiber("EventFd::read", "EventFd::try_read");
        retry_in_fiber(self.as_raw_fd(), Interest::READABLE, self.timeout, || {
            self.try_read()
        })
    }

    /// Reads the counter without waiting.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when the counter is zero.
    pub fn try_read(&self) -> io::Result<u64> {
        let mut bytes = [0u8; 8];
        // SAFETY: (FFI) `bytes` is a live writable 8-byte buffer for the duration of the call.
        let n = unsafe { libc::read(self.as_raw_fd(), bytes.as_mut_ptr().cast(), 8) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n != 8 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read of {n} bytes from an eventfd"),
            ));
        }
        Ok(u64::from_ne_bytes(bytes))
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for EventFd {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_owned().into_raw_fd()
    }
}

impl From<EventFd> for OwnedFd {
    fn from(e: EventFd) -> OwnedFd {
        e.fd.into_owned()
    }
}

/// `InvalidInput` for a zero timeout (a zero wait is what the `try_*` methods are for).
pub(crate) fn check_timeout(timeout: Option<Duration>) -> io::Result<()> {
    if timeout == Some(Duration::ZERO) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a zero timeout is not allowed (use the try_ method instead)",
        ));
    }
    Ok(())
}

/// Panics with a message naming the non-blocking alternative when not in a fiber.
pub(crate) fn assert_fiber(what: &str, instead: &str) {
    assert!(
        fiber::in_fiber(),
        "fdloop::dev::{what} suspends the calling fiber and must run inside one; from a \
         callback use {instead} with Loop::start_poll"
    );
}

/// The blocking pattern of the `dev` types: `attempt` is a non-blocking syscall; while it gives
/// `WouldBlock`, the fiber waits for `interest` on `fd` (at most until `timeout` has passed in
/// all) and tries again.
pub(crate) fn retry_in_fiber<T>(
    fd: RawFd,
    interest: Interest,
    timeout: Option<Duration>,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        match attempt() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
        let left = match deadline {
            None => None,
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Err(io::Error::from_raw_os_error(libc::EAGAIN));
                }
                Some(d - now)
            }
        };
        fiber::wait(fd, interest, left)?;
    }
}
