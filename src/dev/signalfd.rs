//! [`SignalFd`]: signals read from an fd (`signalfd(2)`), with their full [`SigInfo`].
//!
//! **You probably want [`Loop::start_signal`](crate::Loop::start_signal) instead.** It needs
//! none of the rules below: fdloop's handler only sets a flag and wakes the loop, whatever the
//! threads of the process and their signal masks, and children are unaffected. Use a
//! `SignalFd` when you need what a signalfd gives and a handler does not: the sender's pid and
//! uid, the child's exit status with `SIGCHLD`, the value sent with `sigqueue(3)`.
//!
//! # The mask rule
//!
//! A signalfd only sees signals that are **blocked in every thread of the process**. The
//! kernel delivers a process-directed signal to any thread that does not block it; if one
//! thread does, that thread gets the signal (its handler runs, or the default action kills
//! the process) and the signalfd never sees it. Verified on Linux 6.18: a thread spawned
//! *before* `SIGUSR1` was blocked received all 20 `kill`s, the signalfd none; with the signal
//! blocked in `main` *before* any thread was spawned, the signalfd received 20 of 20.
//!
//! A new thread inherits the mask of the thread that creates it, so **block the signals in
//! `main`, before spawning any thread** (and before anything else — a logging or runtime
//! crate — spawns one): [`block_in_this_thread`] there, then create the `SignalFd` wherever.
//! A library cannot fix this after the fact, which is why fdloop's own signal handling does
//! not use signalfd.
//!
//! # Children inherit the mask
//!
//! A blocked mask survives `fork` and `exec`, and `std::process::Command` keeps it: a child
//! started while `SIGINT` is blocked cannot be interrupted with Ctrl-C, and most programs never
//! unblock it. Unblock in the child, between fork and exec, with [`SigSet::unblock`] in
//! `CommandExt::pre_exec`:
//!
//! ```
//! use fdloop::dev::signalfd::SigSet;
//! use fdloop::Signal;
//! use std::os::unix::process::CommandExt;
//! use std::process::Command;
//!
//! let set = SigSet::from_signals(&[Signal::INT, Signal::TERM]);
//! let mut cmd = Command::new("true");
//! // SAFETY: (FFI) SigSet::unblock only calls pthread_sigmask, which is async-signal-safe, and
//! // neither allocates nor takes locks.
//! unsafe { cmd.pre_exec(move || set.unblock()) };
//! assert!(cmd.status()?.success());
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! (A `pre_exec` closure makes `Command` fork and exec instead of using `posix_spawn`.)
//!
//! # Example
//!
//! Standard signals coalesce: several `SIGUSR1`s sent before a read give one [`SigInfo`].
//! Treat each as "at least one arrived".
//!
//! ```
//! use fdloop::dev::signalfd::{block_in_this_thread, SigSet, SignalFd};
//! use fdloop::{Loop, Signal};
//!
//! // In main, before any thread exists (a doctest's main has none).
//! let set = SigSet::from_signals(&[Signal::USR1]);
//! let _blocked = block_in_this_thread(&set)?;
//!
//! let lp = Loop::new()?;
//! let sfd = SignalFd::new(&set)?;
//! let reader = lp.spawn(move || sfd.read().unwrap()); // suspends until a signal arrives
//! // SAFETY: (FFI) kill takes no pointers.
//! unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
//! lp.run()?;
//! let info = reader.join().unwrap();
//! assert_eq!(info.signo, libc::SIGUSR1);
//! assert_eq!(info.pid, std::process::id());
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! From a callback, watch the fd with [`Loop::start_poll`](crate::Loop::start_poll) and
//! [`Interest::READABLE`](crate::Interest::READABLE) and call [`SignalFd::try_read`] until it
//! gives `WouldBlock`.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::eventfd::{assert_fiber, check_timeout, retry_in_fiber};
use crate::sys::LoopFd;
use crate::{Interest, Signal};

/// A set of signals (`sigset_t`).
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    /// The empty set.
    pub fn empty() -> SigSet {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: (FFI) sigemptyset initialises the whole sigset_t it is given.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            SigSet(set.assume_init())
        }
    }

    /// The set of `signals`.
    pub fn from_signals(signals: &[Signal]) -> SigSet {
        let mut set = SigSet::empty();
        for &s in signals {
            set.add(s);
        }
        set
    }

    /// Adds `signal`.
    pub fn add(&mut self, signal: Signal) {
        // SAFETY: (FFI) `self.0` is an initialised sigset_t and `signal` a valid signal number
        // (guaranteed by `Signal`), so sigaddset cannot fail.
        unsafe { libc::sigaddset(&mut self.0, signal.as_raw()) };
    }

    /// `self` with `signal` added.
    pub fn with(mut self, signal: Signal) -> SigSet {
        self.add(signal);
        self
    }

    /// Removes `signal`.
    pub fn remove(&mut self, signal: Signal) {
        // SAFETY: (FFI) `self.0` is an initialised sigset_t and `signal` a valid signal number
        // (guaranteed by `Signal`), so sigdelset cannot fail.
        unsafe { libc::sigdelset(&mut self.0, signal.as_raw()) };
    }

    /// Whether `signal` is in the set.
    pub fn contains(&self, signal: Signal) -> bool {
        self.contains_raw(signal.as_raw())
    }

    fn contains_raw(&self, signum: i32) -> bool {
        // SAFETY: (FFI) `self.0` is an initialised sigset_t; sigismember only reads it.
        unsafe { libc::sigismember(&self.0, signum) == 1 }
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.signals().next().is_none()
    }

    /// The signals in the set, lowest number first.
    pub fn signals(&self) -> impl Iterator<Item = Signal> + '_ {
        (1..=libc::SIGRTMAX())
            .filter(|&n| self.contains_raw(n))
            .filter_map(|n| Signal::new(n).ok())
    }

    /// The signals blocked in the calling thread.
    ///
    /// # Errors
    ///
    /// None in practice (`pthread_sigmask(3)` errors).
    pub fn blocked_in_this_thread() -> io::Result<SigSet> {
        let mut old = SigSet::empty();
        // SAFETY: (FFI) a null new set only queries; `old.0` is a writable sigset_t.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old.0) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(old)
    }

    /// Unblocks these signals in the calling thread. Async-signal-safe: it neither allocates
    /// nor locks, so it may run in `CommandExt::pre_exec` (see the [module docs](self)).
    /// A signal that is pending when it is unblocked is delivered at once.
    ///
    /// # Errors
    ///
    /// None in practice (`pthread_sigmask(3)` errors).
    pub fn unblock(&self) -> io::Result<()> {
        // SAFETY: (FFI) `self.0` is an initialised sigset_t; a null old-set pointer is allowed.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &self.0, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(())
    }
}

impl Default for SigSet {
    fn default() -> SigSet {
        SigSet::empty()
    }
}

impl PartialEq for SigSet {
    fn eq(&self, other: &SigSet) -> bool {
        (1..=libc::SIGRTMAX()).all(|n| self.contains_raw(n) == other.contains_raw(n))
    }
}

impl Eq for SigSet {}

impl fmt::Debug for SigSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.signals()).finish()
    }
}

impl FromIterator<Signal> for SigSet {
    fn from_iter<I: IntoIterator<Item = Signal>>(iter: I) -> SigSet {
        let mut set = SigSet::empty();
        for s in iter {
            set.add(s);
        }
        set
    }
}

/// Blocks `set` in the calling thread (`pthread_sigmask(SIG_BLOCK)`), until the returned
/// guard is dropped, which restores the thread's previous mask. Threads spawned meanwhile
/// inherit the blocked mask. Call it in `main` before any thread exists (see the
/// [module docs](self)).
///
/// Restoring the mask delivers signals that arrived while blocked and were not read from a
/// signalfd (with their default action, if no handler is installed). To keep the signals
/// blocked for the life of the program, `mem::forget` the guard.
///
/// # Errors
///
/// None in practice (`pthread_sigmask(3)` errors).
pub fn block_in_this_thread(set: &SigSet) -> io::Result<SigSetGuard> {
    let mut old = SigSet::empty();
    // SAFETY: (FFI) `set.0` is an initialised sigset_t and `old.0` a writable one.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set.0, &mut old.0) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(SigSetGuard {
        old,
        _thread: PhantomData,
    })
}

/// Restores a thread's signal mask when dropped (see [`block_in_this_thread`]). It must be
/// dropped on the thread that created it, so it is neither `Send` nor `Sync`.
#[must_use = "dropping the guard at once unblocks the signals again"]
pub struct SigSetGuard {
    old: SigSet,
    _thread: PhantomData<*const ()>,
}

impl SigSetGuard {
    /// The mask the thread had before, which the guard restores.
    pub fn previous(&self) -> &SigSet {
        &self.old
    }
}

impl fmt::Debug for SigSetGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigSetGuard")
            .field("previous", &self.old)
            .finish()
    }
}

impl Drop for SigSetGuard {
    fn drop(&mut self) {
        // SAFETY: (FFI) `self.old.0` is an initialised sigset_t; a null old-set pointer is allowed.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old.0, std::ptr::null_mut()) };
    }
}

/// One signal read from a [`SignalFd`] (`struct signalfd_siginfo`). Which fields are
/// meaningful depends on the signal and on `code` (see `sigaction(2)`, "The siginfo_t
/// argument").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SigInfo {
    /// The signal number (`libc::SIGUSR1` …).
    pub signo: i32,
    /// Why it was sent: `SI_USER` (`kill`), `SI_QUEUE` (`sigqueue`), `SI_TKILL`, or, for
    /// `SIGCHLD`, `CLD_EXITED`, `CLD_KILLED` …
    pub code: i32,
    /// An error number (rarely used).
    pub errno: i32,
    /// The sending process (for `kill`/`sigqueue`) or the child (`SIGCHLD`).
    pub pid: u32,
    /// The real user id of the sender.
    pub uid: u32,
    /// `SIGCHLD`: the exit status or the signal that ended the child.
    pub status: i32,
    /// The integer sent with `sigqueue(3)`.
    pub int: i32,
    /// The pointer value sent with `sigqueue(3)`.
    pub ptr: u64,
    /// `SIGIO`: the fd; `SIGPOLL`: see `band`.
    pub fd: i32,
    /// `SIGPOLL`/`SIGIO`: the band event.
    pub band: u32,
    /// POSIX timers: the timer id.
    pub tid: u32,
    /// POSIX timers: the overrun count.
    pub overrun: u32,
    /// `SIGCHLD`: user CPU time consumed by the child (clock ticks).
    pub utime: u64,
    /// `SIGCHLD`: system CPU time consumed by the child (clock ticks).
    pub stime: u64,
    /// Hardware-generated signals: the faulting address.
    pub addr: u64,
}

impl SigInfo {
    /// The signal as a [`Signal`], when fdloop knows it as one.
    pub fn signal(&self) -> Option<Signal> {
        Signal::new(self.signo).ok()
    }

    fn from_raw(s: &libc::signalfd_siginfo) -> SigInfo {
        SigInfo {
            signo: s.ssi_signo as i32,
            code: s.ssi_code,
            errno: s.ssi_errno,
            pid: s.ssi_pid,
            uid: s.ssi_uid,
            status: s.ssi_status,
            int: s.ssi_int,
            ptr: s.ssi_ptr,
            fd: s.ssi_fd,
            band: s.ssi_band,
            tid: s.ssi_tid,
            overrun: s.ssi_overrun,
            utime: s.ssi_utime,
            stime: s.ssi_stime,
            addr: s.ssi_addr,
        }
    }
}

/// An fd that reads the signals of a set (`signalfd(2)`), non-blocking and close-on-exec.
/// Read the [module docs](self) first: the signals must be blocked in every thread.
#[derive(Debug)]
pub struct SignalFd {
    fd: LoopFd,
    timeout: Option<Duration>,
}

impl SignalFd {
    /// A signalfd for the signals of `set`. It does not block them: that is the caller's job,
    /// in every thread (see the [module docs](self)).
    ///
    /// # Errors
    ///
    /// `signalfd(2)` errors: `EMFILE`/`ENFILE` when out of fds.
    pub fn new(set: &SigSet) -> io::Result<SignalFd> {
        // SAFETY: (FFI) `set.0` is an initialised sigset_t that outlives the call.
        let fd = unsafe { libc::signalfd(-1, &set.0, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: (FFI) signalfd returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd {
            fd: LoopFd::new(fd),
            timeout: None,
        })
    }

    /// Replaces the set of signals this fd reads.
    ///
    /// # Errors
    ///
    /// `signalfd(2)` errors (none in practice).
    pub fn set_mask(&self, set: &SigSet) -> io::Result<()> {
        // SAFETY: (FFI) `set.0` is an initialised sigset_t; the fd is a signalfd owned by `self`.
        let r = unsafe { libc::signalfd(self.as_raw_fd(), &set.0, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets how long [`SignalFd::read`] may wait (`None`: forever). A read that times out
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

    /// Waits for one of the signals and returns its information. Suspends only the calling
    /// fiber.
    ///
    /// # Errors
    ///
    /// `WouldBlock` after the timeout; `ECANCELED` when the loop is closing.
    ///
    /// # Panics
    ///
    /// Outside a fiber: from a callback use [`SignalFd::try_read`] with
    /// [`Loop::start_poll`](crate::Loop::start_poll).
    pub fn read(&self) -> io::Result<SigInfo> {
        assert_fiber("SignalFd::read", "SignalFd::try_read");
        retry_in_fiber(self.as_raw_fd(), Interest::READABLE, self.timeout, || {
            self.try_read()
        })
    }

    /// Reads one pending signal without waiting.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when none of the signals is pending.
    pub fn try_read(&self) -> io::Result<SigInfo> {
        const SIZE: usize = mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: (FFI) signalfd_siginfo is plain old data; all-zero is a valid value.
        let mut raw: libc::signalfd_siginfo = unsafe { mem::zeroed() };
        // SAFETY: (FFI) `raw` is a live, writable buffer of SIZE bytes for the duration of the
        // call.
        let n = unsafe {
            libc::read(
                self.as_raw_fd(),
                (&mut raw as *mut _ as *mut u8).cast(),
                SIZE,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != SIZE {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("short read of {n} bytes from a signalfd"),
            ));
        }
        Ok(SigInfo::from_raw(&raw))
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for SignalFd {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_owned().into_raw_fd()
    }
}

impl From<SignalFd> for OwnedFd {
    fn from(s: SignalFd) -> OwnedFd {
        s.fd.into_owned()
    }
}
