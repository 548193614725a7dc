//! Fibers: straight-line code on the loop.
//!
//! A fiber is a stackful coroutine (on `corosensei`) that runs on its loop's thread. Its
//! blocking-looking calls — [`sleep`], [`yield_now`], [`JoinHandle::join`], and the fiber I/O
//! types — suspend only the fiber; the loop serves everyone else meanwhile. Fibers and
//! callbacks run on the same loop.
//!
//! ```
//! use fdloop::{fiber, Loop};
//! use std::time::Duration;
//!
//! let lp = Loop::new()?;
//! let a = lp.spawn(|| {
//!     fiber::sleep(Duration::from_millis(2));
//!     "a"
//! });
//! let b = lp.spawn(move || {
//!     let inner = fiber::spawn(|| 40);
//!     inner.join().unwrap() + 2
//! });
//! lp.run()?; // returns when every fiber has finished
//! assert_eq!(a.join().unwrap(), "a");
//! assert_eq!(b.join().unwrap(), 42);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Threads
//!
//! Fibers never leave their loop's thread: a [`JoinHandle`] is `!Send`, and so is everything a
//! fiber may capture by reference. Work for other threads goes through [`crate::LoopHandle`].
//!
//! ```compile_fail
//! fn assert_send<T: Send>() {}
//! assert_send::<fdloop::fiber::JoinHandle<()>>();
//! ```
//!
//! # Stacks
//!
//! Each fiber has its own stack (64 KiB by default, see [`crate::LoopBuilder::stack_size`] and
//! [`Builder::stack_size`]) with a guard page below it; finished fibers' stacks are pooled and
//! reused. On Linux 6.13 and later the guard page is a guard region (`MADV_GUARD_INSTALL`), so
//! a stack is one memory mapping and neighbouring stacks merge into one: the kernel's limit on
//! mappings per process (`vm.max_map_count`, 65,530 by default) does not bound the number of
//! fibers. On older kernels the guard is a `PROT_NONE` mapping of its own, each stack takes two
//! mappings, and about 32,000 fibers can exist at once unless that limit is raised; spawning
//! beyond it fails with an error that says so.
//!
//! A fiber that overflows its stack hits the guard page: fdloop prints `fdloop: a fiber
//! overflowed its stack (guard page hit at 0x…); give it a larger stack with
//! fiber::Builder::stack_size or LoopBuilder::stack_size` to stderr and aborts (SIGABRT), rather
//! than corrupting memory silently; other faults go to the previously installed handler.
//!
//! # Panics and unwinding
//!
//! A panic inside a fiber unwinds that fiber only; [`JoinHandle::join`] returns it as `Err`,
//! like `std::thread`. When a loop closes, its suspended fibers are unwound (their destructors
//! run). Code inside a fiber that uses `catch_unwind` across a blocking call must re-raise
//! panics it does not recognise, or closing the loop cannot unwind that fiber.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use fdloop_backends::OpId;

use crate::timer::Action;
use crate::Loop;

pub(crate) mod ops;
mod overflow;
pub(crate) mod scheduler;
mod stack;
mod unblock;

pub use unblock::unblock;

pub(crate) use scheduler::{current, Fibers, DEFAULT_STACK_SIZE};

/// What a fiber shares with its [`JoinHandle`].
pub(crate) struct JoinState<T> {
    result: RefCell<Option<thread::Result<T>>>,
    finished: Cell<bool>,
    /// A fiber waiting in `join`, with its loop (which may be another loop of this thread).
    waiter: RefCell<Option<(Weak<crate::event_loop::Inner>, OpId)>>,
}

impl<T> JoinState<T> {
    pub(crate) fn new() -> JoinState<T> {
        JoinState {
            result: RefCell::new(None),
            finished: Cell::new(false),
            waiter: RefCell::new(None),
        }
    }

    /// Called by the fiber itself when its function returned or panicked.
    #[inline]
    pub(crate) fn finish(&self, result: thread::Result<T>) {
        *self.result.borrow_mut() = Some(result);
        self.finished.set(true);
        let waiter = self.waiter.borrow_mut().take();
        if let Some((inner, fiber)) = waiter {
            if let Some(inner) = inner.upgrade() {
                inner.make_ready(fiber);
            }
        }
    }
}

/// An owned permission to wait for a fiber and take its result. Dropping it detaches the
/// fiber, which runs on.
pub struct JoinHandle<T> {
    state: Rc<JoinState<T>>,
    /// Weak: a handle must not keep a closed loop's ring (and its fds) alive.
    inner: Weak<crate::event_loop::Inner>,
}

impl<T> JoinHandle<T> {
    /// Whether the fiber has finished (returned or panicked).
    pub fn is_finished(&self) -> bool {
        self.state.finished.get()
    }

    /// Waits for the fiber and returns its value, or the payload of its panic.
    ///
    /// Inside a fiber this suspends the calling fiber. Outside fibers (on the loop's thread,
    /// when the loop is not running) it runs the loop until the fiber finishes.
    ///
    /// # Errors
    ///
    /// `Err(payload)` when the fiber panicked; `Err` with a `String` payload when its loop was
    /// closed before it finished.
    ///
    /// # Panics
    ///
    /// When called from a callback of the loop that runs the fiber (waiting there would block
    /// the loop): use [`JoinHandle::is_finished`] or join from a fiber instead.
    #[inline]
    pub fn join(self) -> thread::Result<T> {
        let closed = |inner: &Weak<crate::event_loop::Inner>| {
            inner
                .upgrade()
                .is_none_or(|i| i.shared.closed.load(Ordering::Acquire))
        };
        if let Some(cur) = current() {
            if !self.state.finished.get() {
                // SAFETY: (I7) the loop set `cur.lp` when it resumed the running fiber, on this
                // thread, and the `Loop` stays in place while that fiber runs: fibers and the
                // `Loop` never leave the loop's thread.
                let own = Rc::downgrade(&unsafe { &*cur.lp }.inner);
                while !self.state.finished.get() && !cur.closing && !closed(&self.inner) {
                    let mut waiter = self.state.waiter.borrow_mut();
                    if waiter.is_none() {
                        *waiter = Some((own.clone(), cur.fiber));
                    }
                    drop(waiter);
                    scheduler::suspend();
                }
            }
        } else if !self.state.finished.get() {
            if let Some(inner) = self.inner.upgrade() {
                assert!(
                    !inner.running.get(),
                    "JoinHandle::join called from a callback of the running loop would block \
                     it; join from a fiber, or check JoinHandle::is_finished"
                );
                // A temporary `Loop` over the same state. It must not close the loop when it
                // goes — also when a callback's panic unwinds through `run_once` — so a guard
                // takes it apart with `inner_rc` instead of dropping it.
                struct Temporary(Option<Loop>);
                impl Drop for Temporary {
                    fn drop(&mut self) {
                        if let Some(lp) = self.0.take() {
                            drop(lp.inner_rc());
                        }
                    }
                }
                let lp = Temporary(Some(Loop { inner }));
                let lp_ref = lp.0.as_ref().expect("set above");
                while !self.state.finished.get() && !closed(&self.inner) {
                    match lp_ref.run_once() {
                        Ok(true) => {}
                        Ok(false) | Err(_) => break,
                    }
                }
                drop(lp);
            }
        }
        self.state.result.borrow_mut().take().unwrap_or_else(|| {
            Err(Box::new(String::from(
                "the fiber did not finish: its loop was closed first",
            )))
        })
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Configures a fiber before spawning it.
///
/// ```
/// use fdloop::{fiber, Loop};
///
/// let lp = Loop::new()?;
/// let h = fiber::Builder::new().stack_size(256 * 1024).spawn_on(&lp, || 7)?;
/// lp.run()?;
/// assert_eq!(h.join().unwrap(), 7);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Builder {
    stack_size: Option<usize>,
}

impl Builder {
    /// The defaults: the loop's stack size.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// The fiber's stack size in bytes (rounded up to whole pages, at least 4 KiB). Only
    /// stacks of the loop's default size are pooled.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// Spawns the fiber on `lp`.
    ///
    /// # Errors
    ///
    /// When the stack cannot be mapped: `ENOMEM` (out of memory, or on kernels before 6.13
    /// typically the `vm.max_map_count` limit; the message says so), or `InvalidInput` for a
    /// stack size above the maximum.
    pub fn spawn_on<T, F>(self, lp: &Loop, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let size = self
            .stack_size
            .unwrap_or_else(|| lp.inner.fibers.borrow().stack_size);
        let (_, state) = lp.spawn_fiber(size, f)?;
        Ok(JoinHandle {
            state,
            inner: Rc::downgrade(&lp.inner),
        })
    }

    /// Spawns the fiber on the loop of the running fiber.
    ///
    /// # Errors
    ///
    /// As for [`Builder::spawn_on`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn spawn<T, F>(self, f: F) -> io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        with_loop(|lp| self.spawn_on(lp, f))
    }
}

impl Loop {
    /// Spawns a fiber running `f` on this loop; it starts in the loop's next iteration.
    ///
    /// # Panics
    ///
    /// When the fiber's stack cannot be mapped (see [`Builder::spawn_on`] for the fallible
    /// form).
    pub fn spawn<T, F>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        Builder::new()
            .spawn_on(self, f)
            .unwrap_or_else(|e| panic!("cannot spawn a fiber: {e}"))
    }
}

/// Spawns a fiber on the running fiber's loop.
///
/// # Panics
///
/// Outside a fiber, or when the stack cannot be mapped (see [`Builder::spawn`]).
pub fn spawn<T, F>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    Builder::new()
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot spawn a fiber: {e}"))
}

/// Whether the caller runs inside a fiber.
pub fn in_fiber() -> bool {
    current().is_some()
}

/// Calls `f` with the running fiber's loop (to start timers, watch fds, post …).
///
/// # Panics
///
/// Outside a fiber.
pub fn with_loop<R>(f: impl FnOnce(&Loop) -> R) -> R {
    let cur = scheduler::current_or_panic("fdloop::fiber::with_loop");
    // SAFETY: (I7) the loop set `cur.lp` when it resumed the running fiber, on this thread, and the
    // `Loop` stays in place while that fiber runs (fibers and the `Loop` never leave the loop's
    // thread); `f` cannot keep the reference beyond this call.
    f(unsafe { &*cur.lp })
}

/// Lets the other ready fibers, timers and I/O run, then continues.
///
/// # Panics
///
/// Outside a fiber.
// Inlined into the caller on purpose: a fiber switch lands where the fiber suspended, and every
// function return between that point and the caller's code is a return the CPU's return-stack
// predictor gets wrong (the predictor holds the loop's frames, not the fiber's), which costs more
// than the rest of a yield. See docs/fibers.md, "Cost of a switch".
#[inline]
pub fn yield_now() {
    let cur = scheduler::current_or_panic("fdloop::fiber::yield_now");
    if cur.closing {
        return;
    }
    scheduler::yield_current(&cur);
}

/// Suspends the running fiber for `duration` (never less).
///
/// # Panics
///
/// Outside a fiber.
pub fn sleep(duration: Duration) {
    let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let deadline = with_loop(|lp| lp.now_ns().saturating_add(ns));
    sleep_until_ns(deadline);
}

/// Suspends the running fiber until `deadline` (at once if it has passed).
///
/// # Panics
///
/// Outside a fiber.
pub fn sleep_until(deadline: Instant) {
    let ns = with_loop(|lp| lp.instant_to_ns(deadline));
    sleep_until_ns(ns);
}

fn sleep_until_ns(deadline: u64) {
    let cur = scheduler::current_or_panic("fdloop::fiber::sleep");
    if cur.closing {
        return;
    }
    let timer = with_loop(|lp| lp.start_internal_timer(deadline, Action::Wake(cur.fiber)));
    struct StopOnUnwind(crate::TimerId);
    impl Drop for StopOnUnwind {
        fn drop(&mut self) {
            if let Some(cur) = current() {
                // SAFETY: (I7) the loop set `cur.lp` for the fiber it is running or unwinding, on
                // this thread, and the `Loop` stays in place until that ends: fibers and the `Loop`
                // never leave the loop's thread.
                let lp = unsafe { &*cur.lp };
                let _ = lp.stop_timer(self.0);
            }
        }
    }
    let guard = StopOnUnwind(timer);
    while with_loop(|lp| lp.timer_pending(timer)) {
        scheduler::suspend();
    }
    std::mem::forget(guard);
}

/// Suspends the running fiber until `fd` reports one of `interest` (or an error or hang-up),
/// or `timeout` passes. For fds that fdloop has no type for: a C library's socket, a sysfs
/// attribute (`Interest::PRIORITY`), an inotify fd.
///
/// # Errors
///
/// `WouldBlock` when `timeout` passed; the poll's errors (`EBADF` …).
///
/// # Panics
///
/// Outside a fiber.
pub fn wait(
    fd: impl crate::Descriptor,
    interest: crate::Interest,
    timeout: Option<Duration>,
) -> io::Result<crate::Readiness> {
    let bits = ops::poll(fd.raw_fd(), interest.bits(), timeout)?;
    Ok(crate::Readiness::from_bits(
        bits & (interest.bits() | crate::poll::ALWAYS),
    ))
}
