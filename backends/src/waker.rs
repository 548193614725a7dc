//! Cross-thread wake-ups through an eventfd, shared by both drivers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sys::cvt;

/// The driver is not blocked, and no wake-up has come since it last slept.
const RUNNING: u32 = 0;
/// The driver is blocked (or about to block) in its kernel wait (`io_uring_enter`,
/// `epoll_wait`): a wake-up must write the eventfd.
const SLEEPING: u32 = 1;
/// A wake-up came while the driver was running (its next sleep must not block), or one has
/// been delivered during the current sleep.
const NOTIFIED: u32 = 2;
/// The driver has nothing in the kernel and is blocked (or about to block) in a futex wait
/// on the state word itself: a wake-up must `FUTEX_WAKE` it.
const SLEEPING_ON_FUTEX: u32 = 3;

/// The eventfd behind a [`Waker`], and the state that decides whether a wake-up needs it.
///
/// The driver brackets each blocking wait in the kernel with [`WakeFd::sleep`] and
/// [`WakeFd::awake`], or, when it has nothing in the kernel, blocks in [`WakeFd::futex_sleep`]
/// instead (cheaper on both sides, as a thread parker is). A wake-up writes the eventfd, or
/// wakes the futex, only when the driver sleeps that way; one that comes while the driver
/// runs just leaves `NOTIFIED`, which makes its next `sleep` refuse to block. No wake-up is
/// lost: a waker publishes its state (a posted closure, a signal flag) before its `swap`, and
/// the driver's caller looks at that state after every wait. A wake-up that lands between the
/// driver's return from the kernel and `awake` writes although the driver is already up; its
/// only effect is one early return of a later wait.
///
/// The driver watches `fd()` and calls [`WakeFd::drain`] when it is readable (epoll, and an
/// io_uring poll that is not multishot); io_uring's multishot poll reports each write and needs
/// nothing (the counter grows by at most one per sleep, so it never saturates in practice).
pub(crate) struct WakeFd {
    fd: OwnedFd,
    /// `RUNNING`, `SLEEPING`, `NOTIFIED` or `SLEEPING_ON_FUTEX` (a `u32`: it is the futex word).
    state: AtomicU32,
}

impl WakeFd {
    pub(crate) fn new() -> io::Result<Arc<WakeFd>> {
        // SAFETY: (FFI) eventfd takes no pointers; the result is checked before use.
        let raw = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        Ok(Arc::new(WakeFd {
            // SAFETY: (FFI) `raw` is an fd that eventfd just returned and nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            state: AtomicU32::new(RUNNING),
        }))
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Consumes the eventfd's counter (so that a level-triggered watch stops reporting it).
    pub(crate) fn drain(&self) {
        let mut v = 0u64;
        // SAFETY: (FFI) `v` is a live 8-byte buffer for the duration of the call; the fd is ours.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// Called by the driver right before it blocks in the kernel. Returns `false` when a
    /// wake-up has come since the last sleep: the driver must then not block (it returns as if
    /// woken), and the state is back to running.
    pub(crate) fn sleep(&self) -> bool {
        self.enter_sleep(SLEEPING)
    }

    fn enter_sleep(&self, how: u32) -> bool {
        match self
            .state
            .compare_exchange(RUNNING, how, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => true,
            Err(_) => {
                // NOTIFIED (the sleeping states are only ever set here, by the driver's thread).
                self.state.store(RUNNING, Ordering::SeqCst);
                false
            }
        }
    }

    /// Blocks the driver, which has nothing in the kernel, until a wake-up (or a signal, or
    /// `timeout`), without entering its kernel wait. Returns at once when a wake-up has come
    /// since the last sleep. The caller looks at the shared state afterwards, as after any wait.
    pub(crate) fn futex_sleep(&self, timeout: Option<Duration>) {
        if !self.enter_sleep(SLEEPING_ON_FUTEX) {
            return;
        }
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64 / 2) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: (FFI) the futex word is the `AtomicU32` state, which lives as long as `self`;
        // `ts_ptr` is null or points to `ts`, alive for the call. The kernel blocks only while
        // the word still holds SLEEPING_ON_FUTEX (a wake-up that swapped it first makes the
        // call return EAGAIN at once); EINTR and ETIMEDOUT just end the sleep.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.state.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                SLEEPING_ON_FUTEX,
                ts_ptr,
            )
        };
        self.state.store(RUNNING, Ordering::SeqCst);
    }

    /// Called by the driver when it is back from a blocking wait entered after a successful
    /// [`WakeFd::sleep`].
    pub(crate) fn awake(&self) {
        self.state.store(RUNNING, Ordering::SeqCst);
    }

    pub(crate) fn wake(&self) {
        match self.state.swap(NOTIFIED, Ordering::SeqCst) {
            SLEEPING => {
                let v = 1u64;
                // SAFETY: (FFI) `v` is a live 8-byte buffer for the duration of the call; the fd
                // is ours. EAGAIN (counter saturated) still leaves the fd readable, which is all
                // we need.
                unsafe { libc::write(self.fd.as_raw_fd(), (&v as *const u64).cast(), 8) };
            }
            SLEEPING_ON_FUTEX => {
                // SAFETY: (FFI) the futex word is the state, alive as long as `self`; FUTEX_WAKE
                // reads no other pointer.
                unsafe {
                    libc::syscall(
                        libc::SYS_futex,
                        self.state.as_ptr(),
                        libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                        1,
                    )
                };
            }
            _ => {}
        }
    }
}

/// Wakes a driver blocked in `wait`, from any thread. Cheap to clone; wake-ups coalesce.
#[derive(Clone)]
pub struct Waker {
    inner: Arc<WakeFd>,
}

impl Waker {
    pub(crate) fn new(inner: Arc<WakeFd>) -> Waker {
        Waker { inner }
    }

    /// Makes the driver's current or next blocking `wait` return. Costs an atomic swap when the
    /// driver is not asleep, plus a `write` to its eventfd or a `FUTEX_WAKE` when it is.
    /// Async-signal-safe.
    pub fn wake(&self) {
        self.inner.wake();
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waker")
            .field("fd", &self.inner.fd())
            .finish()
    }
}
