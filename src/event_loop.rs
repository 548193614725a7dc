//! [`Loop`]: one thread's event loop, and the iteration that drives every source.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fdloop_backends::{BackendInfo, Completion, Driver, Op, OpId, OpSlab};

use crate::builder::LoopBuilder;
use crate::fiber::Fibers;
use crate::handle::{LoopHandle, Posted, Shared};
use crate::io::Pending;
use crate::poll::Polls;
use crate::pool::Blocking;
use crate::signal::Signals;
use crate::timer::Timers;

/// How many posted closures one iteration runs at most, so that a flood of posts cannot starve
/// I/O and timers.
const POSTED_BUDGET: usize = 4096;

/// An event loop: one per thread.
///
/// A `Loop` owns one io_uring ring or one epoll set (see [`Loop::backend`]) and drives timers,
/// signals, fd readiness, completion I/O, closures posted from other threads and thread-pool
/// results. Its methods take `&self`, and every callback receives `&Loop`, so a callback may
/// start and stop sources, stop the loop, or detach its own fd.
///
/// `Loop` is `!Send`: it lives and dies on the thread that created it. Other threads talk to it
/// through a [`LoopHandle`].
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<fdloop::Loop>();
/// ```
///
/// # Panics in callbacks
///
/// A panic inside a callback unwinds out of [`Loop::run`] (or `run_for` / `run_once`) on the
/// loop's thread, after the loop has put its state back in order: the source whose callback
/// panicked is stopped (its callback is dropped), completions not yet dispatched are kept for
/// the next iteration, and the loop can be run again.
///
/// # Example
///
/// ```
/// use fdloop::{Loop, Timer};
/// use std::time::Duration;
///
/// let lp = Loop::new()?;
/// println!("running on {}", lp.backend());
/// lp.start_timer(Timer::after(Duration::from_millis(10)), |_lp, _id| println!("tick"));
/// lp.run()?; // returns once nothing is left to wait for
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Loop {
    pub(crate) inner: Rc<Inner>,
}

/// What the loop must do when a driver operation completes.
pub(crate) enum OpKind {
    /// The one-shot poll behind a `start_poll` registration.
    Poll(OpId),
    /// A completion-style I/O operation with its owned buffer and callback.
    Io(Box<dyn Pending>),
    /// An operation a fiber waits for (its memory is kept valid by the fiber's guard).
    Fiber(OpId),
    /// A multishot operation with its callback (see `io/multishot.rs`).
    Multi(crate::io::Multi),
}

/// A driver operation the loop pushed.
pub(crate) struct OpEntry {
    /// The driver's id (to cancel it).
    pub(crate) driver_id: OpId,
    pub(crate) kind: OpKind,
}

pub(crate) struct Inner {
    /// A process-unique serial, so that ids from another loop are recognised.
    pub(crate) serial: u32,
    pub(crate) driver: RefCell<Driver>,
    pub(crate) info: BackendInfo,
    pub(crate) shared: Arc<Shared>,
    pub(crate) ops: RefCell<OpSlab<OpEntry>>,
    pub(crate) completions: RefCell<Vec<Completion>>,
    /// Completions that a panicking callback interrupted, dispatched first next time.
    pub(crate) leftover: RefCell<VecDeque<Completion>>,
    pub(crate) timers: RefCell<Timers>,
    pub(crate) polls: RefCell<Polls>,
    pub(crate) signals: RefCell<Signals>,
    pub(crate) signal_pending: Arc<AtomicBool>,
    pub(crate) blocking: RefCell<Blocking>,
    pub(crate) fibers: RefCell<Fibers>,
    pub(crate) running: Cell<bool>,
    pub(crate) panic: RefCell<Option<Box<dyn Any + Send>>>,
    pub(crate) epoch: Instant,
}

static NEXT_SERIAL: AtomicU32 = AtomicU32::new(1);

thread_local! {
    /// The loops alive on this thread, so that fdloop's own fd types can make them forget an
    /// fd they are about to close (see [`forget_fd`]).
    static LOOPS: RefCell<Vec<Weak<Inner>>> = const { RefCell::new(Vec::new()) };
}

/// An fd owned by one of fdloop's types is about to be closed: every loop of this thread
/// forgets what its driver cached about it (kind, epoll registration), so that the fd number
/// can be reused safely. Cheap: no syscall unless the epoll backend still has it registered.
pub(crate) fn forget_fd(fd: std::os::fd::RawFd) {
    let _ = LOOPS.try_with(|loops| {
        let Ok(loops) = loops.try_borrow() else {
            return;
        };
        for inner in loops.iter().filter_map(Weak::upgrade) {
            if let Ok(mut driver) = inner.driver.try_borrow_mut() {
                driver.forget_fd(fd);
            }
        }
    });
}

impl Loop {
    /// A loop with the default configuration: the backend from `FDLOOP_BACKEND`, else io_uring
    /// where it works, else epoll.
    ///
    /// # Errors
    ///
    /// See [`LoopBuilder::build`].
    pub fn new() -> io::Result<Loop> {
        LoopBuilder::new().build()
    }

    /// A builder to choose the backend, ring size and pool sizes.
    pub fn builder() -> LoopBuilder {
        LoopBuilder::new()
    }

    pub(crate) fn from_parts(
        driver: Driver,
        info: BackendInfo,
        pool_threads: usize,
        stack_size: usize,
    ) -> Loop {
        let shared = Arc::new(Shared::new(driver.waker()));
        let epoch = Instant::now();
        let lp = Loop {
            inner: Rc::new(Inner {
                serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
                driver: RefCell::new(driver),
                info,
                shared,
                ops: RefCell::new(OpSlab::new()),
                completions: RefCell::new(Vec::with_capacity(256)),
                leftover: RefCell::new(VecDeque::new()),
                timers: RefCell::new(Timers::new()),
                polls: RefCell::new(Polls::default()),
                signals: RefCell::new(Signals::default()),
                signal_pending: Arc::new(AtomicBool::new(false)),
                blocking: RefCell::new(Blocking::new(pool_threads)),
                fibers: RefCell::new(Fibers::new(stack_size)),
                running: Cell::new(false),
                panic: RefCell::new(None),
                epoch,
            }),
        };
        LOOPS.with(|loops| {
            let mut loops = loops.borrow_mut();
            loops.retain(|w| w.strong_count() > 0);
            loops.push(Rc::downgrade(&lp.inner));
        });
        lp
    }

    /// Takes this `Loop` value apart without closing the loop (for temporary `Loop`s made over
    /// shared state).
    pub(crate) fn inner_rc(self) -> Rc<Inner> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: (FFI) `this` is never used or dropped again, so the Rc is moved out exactly once.
        unsafe { std::ptr::read(&this.inner) }
    }

    /// Which backend runs this loop, and why it was chosen.
    pub fn backend(&self) -> &BackendInfo {
        &self.inner.info
    }

    /// A handle for other threads: post closures, stop the loop.
    pub fn handle(&self) -> LoopHandle {
        LoopHandle {
            shared: self.inner.shared.clone(),
        }
    }

    /// Runs until [`Loop::stop`] is called or nothing is left to wait for: no timer, signal
    /// watch, poll registration, I/O operation or thread-pool job. Closures already posted run
    /// before it returns.
    ///
    /// # Errors
    ///
    /// * calling `run` (or `run_for`/`run_once`) from inside one of this loop's callbacks or
    ///   fibers: an `Other` error that says so;
    /// * an unexpected error from the kernel wait (io_uring_enter / epoll_wait).
    ///
    /// # Panics
    ///
    /// Re-raises a panic from a callback (see the type's docs).
    pub fn run(&self) -> io::Result<()> {
        self.run_inner(None, false)
    }

    /// Runs until [`Loop::stop`] is called or `duration` has passed, waiting even when nothing
    /// is registered (closures posted from other threads are still run).
    ///
    /// A `duration` too large to add to the current time (`Duration::MAX`) means no limit: the
    /// loop runs until stopped, and its waits carry no deadline of their own. A deadline costs
    /// the kernel a timer per blocking wait, which shows in a loop that sleeps and wakes for
    /// every posted closure (about 0.35 µs per wait in `benches/benches/post.rs` on a KVM guest).
    /// A loop with no I/O operation or poll in flight — one that only runs posted closures,
    /// timers and signal callbacks — sleeps on a futex rather than in `io_uring_enter` or
    /// `epoll_wait`, as a parked thread does.
    ///
    /// # Errors
    ///
    /// As for [`Loop::run`].
    pub fn run_for(&self, duration: Duration) -> io::Result<()> {
        let deadline = Instant::now().checked_add(duration);
        self.run_inner(Some(deadline), false)
    }

    /// Runs one iteration: fires due timers, runs posted closures, waits for at least one event
    /// (unless nothing is left to wait for) and dispatches what arrived. Returns whether anything
    /// is left to wait for.
    ///
    /// # Errors
    ///
    /// As for [`Loop::run`].
    pub fn run_once(&self) -> io::Result<bool> {
        self.run_inner(None, true)?;
        Ok(self.is_alive())
    }

    /// Makes [`Loop::run`] / [`Loop::run_for`] return at the end of the current iteration
    /// (when the loop is not running, the next run returns after one iteration). Callable from
    /// callbacks; stopping twice is the same as stopping once. From another thread, use
    /// [`LoopHandle::stop`].
    pub fn stop(&self) {
        self.inner.shared.stop.store(true, Ordering::Release);
    }

    /// Closes the loop (the same as dropping it, with errors reported): cancels every operation
    /// in flight and waits for their final completions (so every buffer lent to the kernel is
    /// back), drops pending callbacks without calling them, closes fds the loop accepted but
    /// never handed out, unregisters signal handlers, stops timers, waits for running
    /// thread-pool jobs and makes further [`LoopHandle`] calls fail. fds the loop does not own
    /// are never closed.
    ///
    /// # Errors
    ///
    /// Currently infallible in practice; the `Result` leaves room for reporting a kernel error
    /// during teardown.
    pub fn close(self) -> io::Result<()> {
        self.deinit();
        Ok(())
    }

    /// Whether anything is left to wait for.
    fn is_alive(&self) -> bool {
        let inner = &*self.inner;
        inner.driver.borrow().in_flight() > 0
            || inner.fibers.borrow().len() > 0
            || !inner.timers.borrow().is_empty()
            || !inner.signals.borrow().is_empty()
            || inner.blocking.borrow().pending() > 0
            || !inner.leftover.borrow().is_empty()
            || inner.shared.maybe_posted()
    }

    fn run_inner(&self, deadline: Option<Option<Instant>>, once: bool) -> io::Result<()> {
        let inner = &*self.inner;
        if inner.running.replace(true) {
            return Err(io::Error::other(
                "Loop::run called from inside one of the loop's own callbacks",
            ));
        }
        struct Running<'a>(&'a Cell<bool>);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _running = Running(&inner.running);
        // A stop requested before `run` (from a callback or another thread) is honoured: the
        // flag is cleared only when a run ends.
        loop {
            let limit = match deadline {
                None => None,
                Some(None) => None, // a duration too large to represent: no limit
                Some(Some(d)) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    Some(d - now)
                }
            };
            let wait_forever = deadline.is_some();
            let result = self.iteration(limit, wait_forever);
            if let Some(payload) = inner.panic.borrow_mut().take() {
                panic::resume_unwind(payload);
            }
            result?;
            if once || inner.shared.stop.load(Ordering::Acquire) {
                break;
            }
            if deadline.is_none() && !self.is_alive() {
                break;
            }
        }
        inner.shared.stop.store(false, Ordering::Release);
        Ok(())
    }

    /// One iteration: due timers → posted closures and pool results → wait → completions →
    /// signals. `limit` bounds the wait; `idle_ok` lets the wait block with nothing registered.
    fn iteration(&self, limit: Option<Duration>, idle_ok: bool) -> io::Result<()> {
        let inner = &*self.inner;
        // The cached time `Timer::after` counts from inside the loop is read again when next
        // needed (see `Loop::start_timer`).
        self.expire_now();
        self.dispatch_leftover();
        if self.panicked() {
            return Ok(());
        }
        self.run_fibers();
        self.fire_timers();
        if self.panicked() {
            return Ok(());
        }
        self.run_posted();
        if self.panicked() {
            return Ok(());
        }
        self.dispatch_signals();
        if self.panicked() {
            return Ok(());
        }

        let busy = inner.shared.stop.load(Ordering::Acquire)
            || inner.fibers.borrow().has_ready()
            || inner.signal_pending.load(Ordering::Acquire)
            || !inner.leftover.borrow().is_empty()
            || inner.shared.maybe_posted();
        let timeout = if busy {
            Some(Duration::ZERO)
        } else {
            let timer = self.next_timer_in();
            let mut t = match (timer, limit) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if t.is_none() && !idle_ok && !self.is_alive() {
                t = Some(Duration::ZERO);
            }
            t
        };

        let mut completions = std::mem::take(&mut *inner.completions.borrow_mut());
        completions.clear();
        let waited = inner.driver.borrow_mut().wait(timeout, &mut completions);
        self.expire_now();
        self.dispatch(&mut completions);
        *inner.completions.borrow_mut() = completions;
        waited?;
        if !self.panicked() {
            self.dispatch_signals();
        }
        Ok(())
    }

    fn dispatch_leftover(&self) {
        loop {
            let next = self.inner.leftover.borrow_mut().pop_front();
            let Some(c) = next else { break };
            self.complete(c);
            if self.panicked() {
                break;
            }
        }
    }

    fn dispatch(&self, completions: &mut Vec<Completion>) {
        for i in 0..completions.len() {
            self.complete(completions[i]);
            if self.panicked() {
                self.inner
                    .leftover
                    .borrow_mut()
                    .extend(completions[i + 1..].iter().copied());
                break;
            }
        }
        completions.clear();
    }

    /// Delivers one driver completion. Stale ones (a recycled slot) are dropped (I4).
    fn complete(&self, c: Completion) {
        let key = OpId::from_u64(c.user_data);
        let kind = {
            let mut ops = self.inner.ops.borrow_mut();
            if let Some(OpEntry {
                kind: OpKind::Multi(_),
                ..
            }) = ops.get(key)
            {
                drop(ops);
                return self.multi_completed(key, c);
            }
            if c.more {
                match ops.get(key) {
                    Some(OpEntry {
                        kind: OpKind::Poll(reg),
                        ..
                    }) => Some(OpKind::Poll(*reg)),
                    _ => None,
                }
            } else {
                ops.remove(key).map(|e| e.kind)
            }
        };
        match kind {
            None => {}
            Some(OpKind::Poll(reg)) => self.poll_completed(reg, key, c.result),
            Some(OpKind::Io(pending)) => {
                self.call_user(|| pending.complete(self, c.result));
            }
            Some(OpKind::Fiber(fiber)) => self.fiber_op_completed(fiber, c.result),
            Some(OpKind::Multi(_)) => {}
        }
    }

    fn run_posted(&self) {
        let shared = &self.inner.shared;
        if !shared.maybe_posted() {
            return;
        }
        let mut batch: VecDeque<Posted> = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            let batch = if q.len() <= POSTED_BUDGET {
                std::mem::take(&mut *q)
            } else {
                q.drain(..POSTED_BUDGET).collect()
            };
            shared.has_posts.store(!q.is_empty(), Ordering::Release);
            batch
        };
        while let Some(f) = batch.pop_front() {
            self.call_user(|| f(self));
            if self.panicked() {
                // Put the rest back in front, keeping their order.
                let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(f) = batch.pop_back() {
                    q.push_front(f);
                }
                shared.has_posts.store(!q.is_empty(), Ordering::Release);
                break;
            }
        }
    }

    /// Runs user code; a panic is caught and kept to be re-raised once the loop's state is
    /// consistent again. Returns `None` if `f` panicked.
    pub(crate) fn call_user<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(payload) => {
                let mut slot = self.inner.panic.borrow_mut();
                if slot.is_none() {
                    *slot = Some(payload);
                }
                None
            }
        }
    }

    pub(crate) fn panicked(&self) -> bool {
        self.inner.panic.borrow().is_some()
    }

    /// Nanoseconds on the monotonic clock since the loop was created.
    pub(crate) fn now_ns(&self) -> u64 {
        self.instant_to_ns(Instant::now())
    }

    pub(crate) fn instant_to_ns(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.inner.epoch);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Pushes a driver operation and records what to do when it completes.
    ///
    /// # Safety
    ///
    /// (I2, I3) Memory and the fd referenced by `op` stay valid until the final completion, as
    /// [`Driver::push`] requires. Memory owned by `kind` satisfies this, because the entry is kept
    /// until that completion.
    pub(crate) unsafe fn push_op(&self, op: Op, kind: OpKind) -> OpId {
        let key = self.inner.ops.borrow_mut().insert(OpEntry {
            driver_id: OpId::from_u64(u64::MAX),
            kind,
        });
        // SAFETY: (I2, I3) the caller of `push_op` keeps the memory and the fd referenced by `op`
        // valid until its final completion, which is what the driver's `push` requires.
        let driver_id = unsafe { self.inner.driver.borrow_mut().push(op, key.to_u64()) };
        if let Some(e) = self.inner.ops.borrow_mut().get_mut(key) {
            e.driver_id = driver_id;
        }
        key
    }

    /// Asks the driver to cancel the loop operation `key`; its completion still arrives.
    pub(crate) fn cancel_op(&self, key: OpId) -> bool {
        let (driver_id, multi) = match self.inner.ops.borrow_mut().get_mut(key) {
            Some(e) => {
                // A multishot operation may be between two kernel requests (its final
                // completion on the way back, to be re-armed): the flag stops the re-arm.
                let multi = match &mut e.kind {
                    OpKind::Multi(m) => {
                        m.cancelled = true;
                        true
                    }
                    _ => false,
                };
                (e.driver_id, multi)
            }
            None => return false,
        };
        self.inner.driver.borrow_mut().cancel(driver_id) || multi
    }
}

impl Loop {
    /// Tears the loop down (see [`Loop::close`]). Idempotent.
    fn deinit(&self) {
        let inner = &*self.inner;
        {
            let q = inner.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if inner.shared.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            drop(q);
        }
        let me = Rc::downgrade(&self.inner);
        let _ = LOOPS.try_with(|loops| {
            if let Ok(mut loops) = loops.try_borrow_mut() {
                loops.retain(|w| !w.ptr_eq(&me) && w.strong_count() > 0);
            }
        });
        // Unregister signal actions first so that no handler wakes a dying loop.
        inner.signals.borrow_mut().clear();
        // Unwind suspended fibers: their destructors run, and the guards of their operations
        // cancel and wait for the final completions before their stacks go (I2).
        self.unwind_fibers();
        inner.timers.borrow_mut().clear();
        inner.polls.borrow_mut().clear();
        // Every operation in flight: cancel, wait for its final completion, then free what it
        // owned (I1, I2). Accepted fds that were never handed out are closed here.
        let mut finals = Vec::new();
        inner.driver.borrow_mut().shutdown(&mut finals);
        let leftover: Vec<Completion> = inner.leftover.borrow_mut().drain(..).collect();
        for c in leftover.into_iter().chain(finals) {
            let key = OpId::from_u64(c.user_data);
            if c.more {
                // A multishot report: free what it carries (a buffer, an accepted fd).
                if let Some(OpEntry {
                    kind: OpKind::Multi(m),
                    ..
                }) = inner.ops.borrow_mut().get_mut(key)
                {
                    if let Some(p) = m.pending.as_mut() {
                        p.discard_report(c.result);
                    }
                }
                continue;
            }
            let entry = inner.ops.borrow_mut().remove(key);
            match entry {
                Some(OpEntry {
                    kind: OpKind::Io(pending),
                    ..
                }) => pending.discard(c.result),
                Some(OpEntry {
                    kind:
                        OpKind::Multi(crate::io::Multi {
                            pending: Some(pending),
                            ..
                        }),
                    ..
                }) => pending.discard(c.result),
                _ => {}
            }
        }
        // Anything still recorded never reached the kernel's completion path; drop it.
        let rest: Vec<OpId> = inner.ops.borrow().ids();
        for id in rest {
            let entry = inner.ops.borrow_mut().remove(id);
            drop(entry);
        }
        inner.blocking.borrow_mut().shutdown();
        let posted: VecDeque<Posted> =
            std::mem::take(&mut *inner.shared.queue.lock().unwrap_or_else(|e| e.into_inner()));
        drop(posted);
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.deinit();
    }
}

impl fmt::Debug for Loop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loop")
            .field("backend", &self.inner.info)
            .field("in_flight", &self.inner.driver.borrow().in_flight())
            .field("timers", &self.inner.timers.borrow().len())
            .finish()
    }
}
