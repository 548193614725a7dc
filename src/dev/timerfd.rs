//! [`TimerFd`]: a kernel timer as an fd, readable when it has expired.
//!
//! fdloop's own timers ([`Loop::start_timer`](crate::Loop::start_timer),
//! [`fiber::sleep`](crate::fiber::sleep)) need no fd and are cheaper; a `TimerFd` is for what
//! they do not offer: the wall clock ([`Clock::Realtime`], absolute deadlines that follow clock
//! changes), time that counts while the machine is suspended ([`Clock::Boottime`]), or an fd to
//! hand to code that only understands fds.
//!
//! Reading a timer returns the number of expirations since the last read (periodic timers that
//! were not read in time report several at once) and never returns before the first
//! expiration: the kernel does not fire early.
//!
//! ```
//! use fdloop::dev::timerfd::{Clock, TimerFd, TimerSpec};
//! use fdloop::Loop;
//! use std::time::Duration;
//!
//! let lp = Loop::new()?;
//! let ticks = lp.spawn(|| {
//!     let t = TimerFd::new(Clock::Monotonic).unwrap();
//!     t.set(TimerSpec::every(Duration::from_millis(2))).unwrap();
//!     let mut n = 0;
//!     while n < 3 {
//!         n += t.wait().unwrap(); // suspends the fiber until the next expiration
//!     }
//!     t.disarm().unwrap();
//!     n
//! });
//! lp.run()?;
//! assert!(ticks.join().unwrap() >= 3);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! From a callback, watch the fd with [`Loop::start_poll`](crate::Loop::start_poll) and
//! [`Interest::READABLE`](crate::Interest::READABLE) and call [`TimerFd::try_wait`].

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::eventfd::{assert_fiber, check_timeout, retry_in_fiber};
use crate::sys::{cvt, LoopFd};
use crate::Interest;

/// The clock a [`TimerFd`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Clock {
    /// `CLOCK_MONOTONIC`: steady, stops while the machine is suspended.
    Monotonic,
    /// `CLOCK_REALTIME`: the wall clock. Absolute deadlines follow changes of the clock.
    Realtime,
    /// `CLOCK_BOOTTIME`: like `Monotonic`, but also counts time spent suspended.
    Boottime,
}

impl Clock {
    fn id(self) -> libc::clockid_t {
        match self {
            Clock::Monotonic => libc::CLOCK_MONOTONIC,
            Clock::Realtime => libc::CLOCK_REALTIME,
            Clock::Boottime => libc::CLOCK_BOOTTIME,
        }
    }

    /// The clock's current time (since its epoch: boot for `Monotonic`/`Boottime`, 1970 for
    /// `Realtime`), as used by absolute [`TimerSpec`]s.
    ///
    /// # Errors
    ///
    /// `clock_gettime(2)` errors (none in practice).
    pub fn now(self) -> io::Result<Duration> {
        let mut ts = MaybeUninit::<libc::timespec>::uninit();
        // SAFETY: (FFI) `ts` is a writable timespec for the duration of the call.
        cvt(unsafe { libc::clock_gettime(self.id(), ts.as_mut_ptr()) })?;
        // SAFETY: (FFI) clock_gettime succeeded and filled `ts`.
        Ok(from_timespec(unsafe { ts.assume_init() }))
    }
}

/// When a [`TimerFd`] expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerSpec {
    /// The first expiration: a delay from now, or (with `absolute`) a time on the timer's
    /// clock (see [`Clock::now`]). A zero delay means "at once" (the kernel would read a zero
    /// as "disarm"; use [`TimerFd::disarm`] for that).
    pub first: Duration,
    /// Then every `interval`, or never again when `None`.
    pub interval: Option<Duration>,
    /// Whether `first` is a time on the clock rather than a delay.
    pub absolute: bool,
}

impl TimerSpec {
    /// Once, after `delay`.
    pub fn after(delay: Duration) -> TimerSpec {
        TimerSpec {
            first: delay,
            interval: None,
            absolute: false,
        }
    }

    /// Once, when the timer's clock reads `time` (at once if it has passed).
    pub fn at(time: Duration) -> TimerSpec {
        TimerSpec {
            first: time,
            interval: None,
            absolute: true,
        }
    }

    /// Every `period`, the first time one `period` from now.
    pub fn every(period: Duration) -> TimerSpec {
        TimerSpec {
            first: period,
            interval: Some(period),
            absolute: false,
        }
    }

    /// The same first expiration, then every `interval`.
    pub fn with_interval(mut self, interval: Duration) -> TimerSpec {
        self.interval = Some(interval);
        self
    }
}

fn to_timespec(d: Duration) -> io::Result<libc::timespec> {
    let secs = libc::time_t::try_from(d.as_secs()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{d:?} is too long for a timerfd"),
        )
    })?;
    Ok(libc::timespec {
        tv_sec: secs,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    })
}

fn from_timespec(ts: libc::timespec) -> Duration {
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// A kernel timer (`timerfd_create(2)`), non-blocking and close-on-exec.
#[derive(Debug)]
pub struct TimerFd {
    fd: LoopFd,
    clock: Clock,
    timeout: Option<Duration>,
}

impl TimerFd {
    /// A disarmed timer on `clock`.
    ///
    /// # Errors
    ///
    /// `timerfd_create(2)` errors: `EMFILE`/`ENFILE` when out of fds.
    pub fn new(clock: Clock) -> io::Result<TimerFd> {
        // SAFETY: (FFI) timerfd_create takes no pointers.
        let fd = cvt(unsafe {
            libc::timerfd_create(clock.id(), libc::TFD_CLOEXEC | libc::TFD_NONBLOCK)
        })?;
        // SAFETY: (FFI) timerfd_create returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TimerFd {
            fd: LoopFd::new(fd),
            clock,
            timeout: None,
        })
    }

    /// The timer's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Sets how long [`TimerFd::wait`] may wait (`None`: forever). A wait that times out
    /// fails with `WouldBlock`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// Arms (or re-arms) the timer. Expirations not yet read are discarded.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero `interval` or a duration too long for the kernel.
    pub fn set(&self, spec: TimerSpec) -> io::Result<()> {
        if spec.interval == Some(Duration::ZERO) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a timerfd interval must not be zero (use None for a one-shot timer)",
            ));
        }
        // A zero it_value would disarm the timer: "at once" is the next nanosecond.
        let first = spec.first.max(Duration::from_nanos(1));
        let new = libc::itimerspec {
            it_value: to_timespec(first)?,
            it_interval: to_timespec(spec.interval.unwrap_or(Duration::ZERO))?,
        };
        let flags = if spec.absolute {
            libc::TFD_TIMER_ABSTIME
        } else {
            0
        };
        self.settime(flags, &new)
    }

    /// Stops the timer; expirations not yet read are discarded.
    ///
    /// # Errors
    ///
    /// None in practice (`timerfd_settime(2)` errors).
    pub fn disarm(&self) -> io::Result<()> {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let new = libc::itimerspec {
            it_value: zero,
            it_interval: zero,
        };
        self.settime(0, &new)
    }

    fn settime(&self, flags: i32, new: &libc::itimerspec) -> io::Result<()> {
        // SAFETY: (FFI) `new` is a valid itimerspec for the call; the old-value pointer may be
        // null.
        cvt(unsafe { libc::timerfd_settime(self.as_raw_fd(), flags, new, std::ptr::null_mut()) })
            .map(drop)
    }

    /// The time left until the next expiration and the interval, or `None` when the timer is
    /// disarmed (or a one-shot timer has expired). The returned spec is always relative
    /// (`absolute == false`).
    ///
    /// # Errors
    ///
    /// None in practice (`timerfd_gettime(2)` errors).
    pub fn get(&self) -> io::Result<Option<TimerSpec>> {
        let mut cur = MaybeUninit::<libc::itimerspec>::uninit();
        // SAFETY: (FFI) `cur` is a writable itimerspec for the duration of the call.
        cvt(unsafe { libc::timerfd_gettime(self.as_raw_fd(), cur.as_mut_ptr()) })?;
        // SAFETY: (FFI) timerfd_gettime succeeded and filled `cur`.
        let cur = unsafe { cur.assume_init() };
        let first = from_timespec(cur.it_value);
        if first.is_zero() {
            return Ok(None);
        }
        let interval = from_timespec(cur.it_interval);
        Ok(Some(TimerSpec {
            first,
            interval: (!interval.is_zero()).then_some(interval),
            absolute: false,
        }))
    }

    /// Waits until the timer has expired at least once and returns the number of expirations
    /// since the last read. Suspends only the calling fiber. A disarmed timer never expires:
    /// the wait lasts until the timeout (see [`TimerFd::set_timeout`]).
    ///
    /// # Errors
    ///
    /// `WouldBlock` after the timeout; `ECANCELED` when the loop is closing.
    ///
    /// # Panics
    ///
    /// Outside a fiber: from a callback use [`TimerFd::try_wait`] with
    /// [`Loop::start_poll`](crate::Loop::start_poll).
    pub fn wait(&self) -> io::Result<u64> {
        assert_fiber("TimerFd::wait", "TimerFd::try_wait");
        retry_in_fiber(self.as_raw_fd(), Interest::READABLE, self.timeout, || {
            self.try_wait()
        })
    }

    /// The number of expirations since the last read, without waiting.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when the timer has not expired since the last read.
    pub fn try_wait(&self) -> io::Result<u64> {
        let mut bytes = [0u8; 8];
        // SAFETY: (FFI) `bytes` is a live writable 8-byte buffer for the duration of the call.
        let n = unsafe { libc::read(self.as_raw_fd(), bytes.as_mut_ptr().cast(), 8) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n != 8 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read of {n} bytes from a timerfd"),
            ));
        }
        Ok(u64::from_ne_bytes(bytes))
    }
}

impl AsFd for TimerFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for TimerFd {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_owned().into_raw_fd()
    }
}

impl From<TimerFd> for OwnedFd {
    fn from(t: TimerFd) -> OwnedFd {
        t.fd.into_owned()
    }
}
