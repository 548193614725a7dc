//! Cross-thread wake-ups through an eventfd, shared by both drivers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::sys::cvt;

/// The eventfd behind a [`Waker`]. The driver watches `fd()` and calls [`WakeFd::drain`] (or
/// [`WakeFd::rearm`]) when it is readable.
pub(crate) struct WakeFd {
    fd: OwnedFd,
    /// Set by `wake`, cleared by `drain`: a burst of wake-ups costs one `write`.
    pending: AtomicBool,
}

impl WakeFd {
    pub(crate) fn new() -> io::Result<Arc<WakeFd>> {
        // SAFETY: (FFI) eventfd takes no pointers; the result is checked before use.
        let raw = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        Ok(Arc::new(WakeFd {
            // SAFETY: (FFI) `raw` is an fd that eventfd just returned and nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            pending: AtomicBool::new(false),
        }))
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Consumes the eventfd's counter and re-enables writes.
    ///
    /// The read comes first: clearing `pending` first would let a `wake` in between write, have
    /// that write consumed by this read, and leave `pending` set with the counter at zero, so
    /// that no later `wake` would ever write again. In this order a `wake` that lands between
    /// the read and the store is not written, but the caller looks at the shared state (posted
    /// closures, signal flags) after draining, and that `wake` published its state first.
    pub(crate) fn drain(&self) {
        let mut v = 0u64;
        // SAFETY: (FFI) `v` is a live 8-byte buffer for the duration of the call; the fd is ours.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        self.pending.store(false, Ordering::SeqCst);
    }

    /// Re-enables writes without consuming the counter, for a watcher that is told about every
    /// `write` rather than about the counter being non-zero: io_uring's multishot poll posts a
    /// CQE per wake-up of the eventfd's wait queue, and each `write` is one, however high the
    /// counter already is. Saves the `read` of [`WakeFd::drain`]. The counter only grows by one
    /// per `rearm` (a `wake` writes only after one), so it never saturates in practice; and a
    /// watcher that is re-armed must `drain` first (a new poll on a readable eventfd fires at
    /// once).
    ///
    /// A `wake` that lands before the store is not written; as in `drain`, it published its
    /// state first and the caller looks at that state afterwards. One that lands after the store
    /// writes, and the poll reports that write.
    pub(crate) fn rearm(&self) {
        self.pending.store(false, Ordering::SeqCst);
    }

    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            let v = 1u64;
            // SAFETY: (FFI) `v` is a live 8-byte buffer for the duration of the call; the fd is
            // ours. EAGAIN (counter saturated) still leaves the fd readable, which is all we need.
            unsafe { libc::write(self.fd.as_raw_fd(), (&v as *const u64).cast(), 8) };
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

    /// Makes the driver's current or next `wait` return. Async-signal-safe after the first call
    /// (an atomic swap and a `write`).
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
