//! The fiber scheduler: fiber slots, the ready queue, pooled stacks, suspending and resuming,
//! and the guard that makes lending a fiber's stack memory to the kernel sound.

use std::cell::{Cell, UnsafeCell};
use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use corosensei::{Coroutine, CoroutineResult, Yielder};
use fdloop_backends::{Op, OpId, OpSlab};

use crate::event_loop::{Inner, OpKind};
use crate::fiber::overflow::{self, GuardedStack};
use crate::fiber::stack;
use crate::fiber::JoinState;
use crate::Loop;

type Co = Coroutine<(), (), (), GuardedStack>;

/// Stacks kept for reuse (each one mapping, or two on kernels without guard regions).
const POOLED_STACKS: usize = 1024;

/// The largest fiber stack accepted (1 GiB of address space).
const MAX_STACK_SIZE: usize = 1 << 30;

/// How many fibers one iteration's fiber phase resumes at most before the loop fires timers,
/// runs posted closures and signal callbacks and polls the driver without blocking (see
/// [`Loop::run_fibers`] and the fairness rule in docs/fibers.md). Large enough that the cost of
/// that pass is spread thin over the switches; small enough that a fiber yielding in a loop
/// delays I/O by microseconds, not milliseconds.
pub(crate) const SWITCH_BUDGET: usize = 256;

/// The default fiber stack size.
pub(crate) const DEFAULT_STACK_SIZE: usize = 64 * 1024;

/// A fiber's coroutine and state, in a heap cell of its own: the fiber is resumed in place,
/// through a pointer to the cell, so its address must not change while it runs — and the slab
/// of slots may grow meanwhile (the running fiber spawns). Resuming in place also spares moving
/// the coroutine out of its slot and back on every switch, and a slot of one pointer is cheap
/// to insert and look up. Cells are pooled with the stacks.
struct CoCell {
    /// Empty once the fiber has finished or been unwound. Only the scheduler (and the unwind
    /// at close) reaches inside; everything else uses the other fields.
    co: UnsafeCell<Option<Co>>,
    /// The fiber's yielder, on its own stack; null until it first ran.
    yielder: Cell<*const Yielder<(), ()>>,
    /// Result of the last operation the fiber waited for.
    result: Cell<i32>,
    /// In the ready queue.
    queued: Cell<bool>,
    stack_size: Cell<usize>,
}

/// Owns one [`CoCell`] (a `Box` turned into a raw pointer, so that moving the slot does not
/// assert uniqueness over a cell that a running fiber is resumed through).
struct CellPtr(NonNull<CoCell>);

impl CellPtr {
    fn new(cell: Box<CoCell>) -> CellPtr {
        CellPtr(NonNull::from(Box::leak(cell)))
    }

    /// The cell, mutably: for a cell in the pool or being set up for a new fiber.
    fn cell_mut(&mut self) -> &mut CoCell {
        // SAFETY: (FFI) the pointer came from `Box::leak` in `CellPtr::new` and is owned by this
        // `CellPtr` alone; `&mut self` is that owner's exclusive access, and callers use it only
        // for cells that no slot holds (pooled, or not yet inserted), so no fiber runs from the
        // cell and no other reference to it exists.
        unsafe { self.0.as_mut() }
    }
}

impl Drop for CellPtr {
    fn drop(&mut self) {
        // SAFETY: (FFI) the pointer came from `Box::leak` in `CellPtr::new` and is owned by this
        // `CellPtr` alone, and no fiber runs from the cell (a slot is removed only once its fiber
        // has returned or been unwound, or when the loop's state is dropped).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

pub(crate) struct Slot {
    co: CellPtr,
}

impl Slot {
    fn cell(&self) -> &CoCell {
        // SAFETY: (FFI) the slot owns the cell (see `CellPtr`), so it is live for as long as `self`
        // is borrowed. A shared reference is sound even while the scheduler holds the coroutine
        // mutably: that goes through the `UnsafeCell` field, and every other field is a `Cell`.
        unsafe { self.co.0.as_ref() }
    }
}

/// A loop's fibers.
pub(crate) struct Fibers {
    slots: OpSlab<Slot>,
    ready: VecDeque<OpId>,
    stacks: Vec<GuardedStack>,
    /// Empty coroutine cells for reuse.
    cells: Vec<CellPtr>,
    pub(crate) stack_size: usize,
}

impl Fibers {
    pub(crate) fn new(stack_size: usize) -> Fibers {
        overflow::ensure_altstack();
        Fibers {
            slots: OpSlab::new(),
            ready: VecDeque::new(),
            stacks: Vec::new(),
            cells: Vec::new(),
            stack_size,
        }
    }

    /// Fibers that have not finished.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    fn take_stack(&mut self, size: usize) -> io::Result<GuardedStack> {
        if size > MAX_STACK_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a fiber stack of {size} bytes is too large (at most {MAX_STACK_SIZE} bytes)"
                ),
            ));
        }
        if size == self.stack_size {
            if let Some(s) = self.stacks.pop() {
                return Ok(s);
            }
        }
        GuardedStack::new(size).map_err(|e| {
            let hint = if e.raw_os_error() != Some(libc::ENOMEM) {
                ""
            } else if stack::guard_regions() {
                " — out of memory, or of memory mappings (vm.max_map_count)"
            } else {
                " — on this kernel each fiber stack is two memory mappings (stack + guard \
                 page; Linux 6.13 and later make it one) and the kernel limits mappings per \
                 process (vm.max_map_count, 65530 by default); raise it with \
                 `sysctl vm.max_map_count=…`, or use fewer fibers"
            };
            io::Error::new(
                e.kind(),
                format!("cannot map a {size}-byte fiber stack: {e}{hint}"),
            )
        })
    }

    /// A fiber has finished: its stack and its cell go back to the pools.
    fn recycle(&mut self, slot: Slot) {
        let mut ptr = slot.co;
        let cell = ptr.cell_mut();
        if let Some(co) = cell.co.get_mut().take() {
            if cell.stack_size.get() == self.stack_size && self.stacks.len() < POOLED_STACKS {
                self.stacks.push(co.into_stack());
            }
        }
        if self.cells.len() < POOLED_STACKS {
            self.cells.push(ptr);
        }
    }
}

/// What the running fiber needs to reach its loop.
#[derive(Clone, Copy)]
pub(crate) struct Current {
    /// The loop that resumed the fiber; valid while the fiber runs (set on every resume).
    pub(crate) lp: *const Loop,
    pub(crate) fiber: OpId,
    yielder: *const Yielder<(), ()>,
    /// The fiber is being unwound because its loop is closing: it must not suspend.
    pub(crate) closing: bool,
}

thread_local! {
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
    /// Set by `yield_now` just before it suspends: the scheduler, which has the fiber at hand,
    /// queues it again itself (or, with no other fiber ready, resumes it at once).
    static YIELDED: Cell<bool> = const { Cell::new(false) };
}

/// The running fiber, if any.
#[inline]
pub(crate) fn current() -> Option<Current> {
    CURRENT.with(Cell::get)
}

/// The running fiber, or a panic that says what to do.
#[inline]
pub(crate) fn current_or_panic(what: &str) -> Current {
    match current() {
        Some(cur) => cur,
        None => not_in_fiber(what),
    }
}

#[cold]
#[inline(never)]
fn not_in_fiber(what: &str) -> ! {
    panic!(
        "{what} must be called inside a fiber: start one with Loop::spawn (or \
         fdloop::fiber::spawn from another fiber); from callbacks, use the callback APIs of \
         Loop instead"
    )
}

/// Suspends the running fiber until something makes it ready again.
///
/// # Panics
///
/// Outside a fiber.
#[inline]
pub(crate) fn suspend() {
    suspend_current(&current_or_panic("suspending"));
}

/// Suspends the running fiber `cur` and has the scheduler make it ready again (`yield_now`).
#[inline(always)]
pub(crate) fn yield_current(cur: &Current) {
    YIELDED.with(|y| y.set(true));
    suspend_current(cur);
}

/// [`suspend`] with the running fiber's [`Current`] at hand.
#[inline(always)]
pub(crate) fn suspend_current(cur: &Current) {
    assert!(
        !cur.closing,
        "a fiber must not block while its loop is closing"
    );
    // SAFETY: (I7) the yielder lives on this fiber's own stack, which is the stack we are running
    // on, on the loop's thread; it is valid for as long as this fiber runs.
    let yielder = unsafe { &*cur.yielder };
    yielder.suspend(());
}

impl Loop {
    /// Spawns a fiber with `stack_size` bytes of stack.
    pub(crate) fn spawn_fiber<T, F>(
        &self,
        stack_size: usize,
        f: F,
    ) -> io::Result<(OpId, Rc<JoinState<T>>)>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        // One borrow for the whole spawn: building the coroutine only writes its closure onto
        // the new stack (no user code runs).
        let mut fibers = self.inner.fibers.borrow_mut();
        let stack = fibers.take_stack(stack_size)?;
        let state: Rc<JoinState<T>> = Rc::new(JoinState::new());
        let st = state.clone();
        let co = Co::with_stack(stack, move |yielder: &Yielder<(), ()>, ()| {
            CURRENT.with(|c| {
                if let Some(mut cur) = c.get() {
                    cur.yielder = yielder;
                    c.set(Some(cur));
                }
            });
            let result = panic::catch_unwind(AssertUnwindSafe(f));
            if result.is_err() && current().is_some_and(|c| c.closing) {
                // The loop is closing and unwinds this fiber: let the unwind go on.
                if let Err(payload) = result {
                    panic::resume_unwind(payload);
                }
                unreachable!();
            }
            st.finish(result);
        });
        let ptr = match fibers.cells.pop() {
            Some(mut ptr) => {
                let cell = ptr.cell_mut();
                *cell.co.get_mut() = Some(co);
                *cell.yielder.get_mut() = std::ptr::null();
                *cell.result.get_mut() = 0;
                *cell.queued.get_mut() = true;
                *cell.stack_size.get_mut() = stack_size;
                ptr
            }
            None => CellPtr::new(Box::new(CoCell {
                co: UnsafeCell::new(Some(co)),
                yielder: Cell::new(std::ptr::null()),
                result: Cell::new(0),
                queued: Cell::new(true),
                stack_size: Cell::new(stack_size),
            })),
        };
        let id = fibers.slots.insert(Slot { co: ptr });
        fibers.ready.push_back(id);
        Ok((id, state))
    }

    /// Queues fiber `id` to run in the next fiber phase (no effect if it is queued already or
    /// has finished).
    pub(crate) fn make_ready(&self, id: OpId) {
        self.inner.make_ready(id);
    }

    /// The fiber phase of an iteration. It first runs every fiber that was ready when the phase
    /// began, in the order they became ready (the first pass: as many resumptions as there were
    /// ready fibers). Then it goes on, back to back, with the fibers made ready meanwhile (a
    /// `yield_now`, a join, a channel send), while the phase has resumed fewer than
    /// [`SWITCH_BUDGET`] fibers and nothing else is waiting that costs nothing to notice (a
    /// posted closure, a signal, a `stop()`). Timers and I/O completions are looked at when the
    /// phase ends, so fibers that keep each other ready delay them by at most one budget of
    /// resumptions (or one first pass, when more fibers than that were ready at once).
    pub(crate) fn run_fibers(&self) {
        let inner = &*self.inner;
        // What runs around the phase (nothing, or the fiber of another loop that runs this
        // one) is restored once at its end, also if the phase unwinds; in between, `CURRENT`
        // is set before each resume and not reset after it (no user code runs there).
        struct Restore(Option<Current>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(current());
        let first_pass = inner.fibers.borrow().ready.len();
        let mut resumed = 0;
        // A fiber that yielded while no other fiber was ready: it is resumed next without going
        // through the queue (where it would have been alone).
        let mut next = None;
        loop {
            if resumed >= first_pass && (resumed >= SWITCH_BUDGET || inner.other_work()) {
                break;
            }
            resumed += 1;
            let (id, cell, mut yielder, again) = match next.take() {
                Some((id, cell, yielder)) => (id, cell, yielder, true),
                None => {
                    let mut fibers = inner.fibers.borrow_mut();
                    let Some(id) = fibers.ready.pop_front() else {
                        break;
                    };
                    let Some(slot) = fibers.slots.get(id) else {
                        continue;
                    };
                    let c = slot.cell();
                    c.queued.set(false);
                    (id, slot.co.0, c.yielder.get(), false)
                }
            };
            // SAFETY: (I7, FFI) the cell belongs to the live slot `id` and stays where it is until
            // the slot is removed, which happens below, after the fiber returned (or when the loop
            // closes, never while one of its fibers runs). Nothing else reaches the coroutine
            // inside: the scheduler, on the loop's own thread, is its only user, and a fiber is
            // never resumed while it runs (a loop's `run` does not nest, so neither does this phase
            // for one loop).
            let Some(co) = (unsafe { &mut *cell.as_ref().co.get() }) else {
                continue;
            };
            if !again {
                // (Resuming the fiber that just yielded, `CURRENT` still describes it.)
                CURRENT.with(|c| {
                    c.set(Some(Current {
                        lp: self,
                        fiber: id,
                        yielder,
                        closing: false,
                    }));
                });
            }
            let outcome = co.resume(());
            let yielded = YIELDED.with(|y| y.replace(false));
            match outcome {
                CoroutineResult::Yield(()) => {
                    // SAFETY: (FFI) the fiber suspended, so its slot (the cell's owner) is still
                    // there; only `Cell` fields are touched.
                    let c = unsafe { cell.as_ref() };
                    if yielder.is_null() {
                        // First suspension: keep the yielder the fiber published.
                        yielder = current().map_or(std::ptr::null(), |c| c.yielder);
                        c.yielder.set(yielder);
                    }
                    if yielded {
                        let mut fibers = inner.fibers.borrow_mut();
                        if fibers.ready.is_empty() {
                            // Not queued (the queue is empty), so not made ready by anyone else
                            // while it ran: it is the only ready fiber.
                            next = Some((id, cell, yielder));
                        } else if !c.queued.get() {
                            c.queued.set(true);
                            fibers.ready.push_back(id);
                        }
                    }
                }
                CoroutineResult::Return(()) => {
                    let mut fibers = inner.fibers.borrow_mut();
                    if let Some(slot) = fibers.slots.remove(id) {
                        fibers.recycle(slot);
                    }
                }
            }
        }
        if let Some((id, _, _)) = next {
            inner.make_ready(id);
        }
    }

    /// Unwinds every suspended fiber (the loop is closing). Their destructors run; operations
    /// they had in flight are cancelled and waited for by their guards.
    pub(crate) fn unwind_fibers(&self) {
        loop {
            // The slot stays while the fiber unwinds: its guards may read the result of an
            // operation that completed just before.
            let taken = {
                let mut fibers = self.inner.fibers.borrow_mut();
                let Some(id) = fibers.slots.ids().into_iter().next() else {
                    break;
                };
                fibers.slots.get_mut(id).map(|slot| {
                    let yielder = slot.cell().yielder.get();
                    // The fiber is suspended, not running: its cell is ours to empty.
                    (id, slot.co.take(), yielder)
                })
            };
            let Some((id, co, yielder)) = taken else {
                break;
            };
            if let Some(mut co) = co {
                let previous = CURRENT.with(|c| {
                    c.replace(Some(Current {
                        lp: self,
                        fiber: id,
                        yielder,
                        closing: true,
                    }))
                });
                let r = panic::catch_unwind(AssertUnwindSafe(|| co.force_unwind()));
                CURRENT.with(|c| c.set(previous));
                drop(r);
                drop(co);
            }
            let slot = self.inner.fibers.borrow_mut().slots.remove(id);
            drop(slot);
        }
        self.inner.fibers.borrow_mut().ready.clear();
    }

    /// A loop operation pushed by fiber `fiber` completed.
    pub(crate) fn fiber_op_completed(&self, fiber: OpId, result: i32) {
        if let Some(slot) = self.inner.fibers.borrow().slots.get(fiber) {
            slot.cell().result.set(result);
        }
        self.make_ready(fiber);
    }
}

/// Pushes `op` for the running fiber, suspends it until the operation's final completion
/// and returns the result (`-errno` or a value).
///
/// # Safety
///
/// (I2, I3) Memory and the fd that `op` references must stay valid until this function returns or
/// unwinds. Memory on the calling fiber's stack qualifies: the guard in this function keeps the
/// fiber's stack alive until the final completion, even when the fiber is unwound.
pub(crate) unsafe fn fiber_io(op: Op, timeout: Option<Duration>) -> i32 {
    // SAFETY: (I2, I3) the caller keeps the memory and the fd that `op` references valid until this
    // function returns or unwinds, which is what `fiber_io_adopting` requires.
    unsafe { fiber_io_adopting(op, timeout, None) }
}

/// [`fiber_io`] for operations whose success creates something the caller must adopt (an
/// accepted fd, fds received with `SCM_RIGHTS`): if the fiber is unwound and the operation
/// wins the race with its cancellation, `orphan` is called with the result to release it.
///
/// # Safety
///
/// (I2, I3) Memory and the fd that `op` references must stay valid until this function returns or
/// unwinds (memory on the calling fiber's stack qualifies, see [`fiber_io`]); `orphan` may only use
/// memory that outlives this call.
pub(crate) unsafe fn fiber_io_adopting(
    op: Op,
    timeout: Option<Duration>,
    orphan: Option<&dyn Fn(i32)>,
) -> i32 {
    let cur = current_or_panic("fdloop fiber I/O");
    if cur.closing {
        return -libc::ECANCELED;
    }
    // SAFETY: (I7) `cur.lp` was set by the loop when it resumed this fiber, on this thread, and the
    // `Loop` stays in place while the fiber runs: fibers and the `Loop` never leave the loop's
    // thread.
    let lp = unsafe { &*cur.lp };
    // SAFETY: (I2, I3) the caller keeps the memory and the fd that `op` references valid until this
    // function returns or unwinds, and the guard below waits for the final completion on every path
    // out of this function, keeping the fiber's stack alive until then.
    let key = unsafe { lp.push_op(op, OpKind::Fiber(cur.fiber)) };
    let mut guard = InFlight {
        inner: lp.inner.clone(),
        key,
        fiber: cur.fiber,
        orphan,
        armed: true,
    };
    let timer = timeout.map(|t| {
        let deadline = lp.now_ns().saturating_add(dur_ns(t));
        lp.start_internal_timer(deadline, crate::timer::Action::Cancel(key))
    });
    while guard.inner.ops.borrow().get(key).is_some() {
        suspend();
    }
    // Completed: disarm the guard (dropping it releases its `Rc<Inner>`; forgetting it would
    // leak the loop).
    guard.armed = false;
    drop(guard);
    // Re-read the loop: the fiber may have been resumed by a `run` on a moved `Loop`.
    let cur = current_or_panic("fdloop fiber I/O");
    // SAFETY: (I7) `cur.lp` was re-read from the running fiber: the loop set it when it resumed
    // this fiber, on this thread, and the `Loop` stays in place while the fiber runs.
    let lp = unsafe { &*cur.lp };
    let mut result = lp
        .inner
        .fibers
        .borrow()
        .slots
        .get(cur.fiber)
        .map_or(0, |s| s.cell().result.get());
    if let Some(t) = timer {
        if lp.timer_pending(t) {
            let _ = lp.stop_timer(t);
        } else if result == -libc::ECANCELED {
            // Our timer cancelled it. ETIME (not ETIMEDOUT, which the kernel reports for dead
            // TCP connections) tells the two apart.
            result = -libc::ETIME;
        }
    }
    result
}

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Keeps an operation's memory valid: if the fiber is unwound while the operation is in flight,
/// dropping this guard cancels it and waits — without suspending — for its final completion.
struct InFlight<'a> {
    inner: Rc<Inner>,
    key: OpId,
    fiber: OpId,
    orphan: Option<&'a dyn Fn(i32)>,
    /// Still in flight: dropping cancels and waits.
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let result = self.inner.cancel_and_wait(self.key).or_else(|| {
            // Completed before the unwind: the result was delivered to the fiber's slot.
            let fibers = self.inner.fibers.borrow();
            fibers.slots.get(self.fiber).map(|s| s.cell().result.get())
        });
        if let (Some(result), Some(orphan)) = (result, self.orphan) {
            orphan(result);
        }
    }
}

impl CellPtr {
    /// Takes the coroutine out of a cell whose fiber is not running.
    fn take(&mut self) -> Option<Co> {
        // SAFETY: (FFI) `&mut self` is the slot's own access to its cell; callers hold it only for
        // fibers that are suspended or finished, so no `&mut Co` from `run_fibers` is alive.
        unsafe { (*self.0.as_ref().co.get()).take() }
    }
}

impl Inner {
    /// Whether work other than fibers is waiting that costs nothing to notice (atomic flags):
    /// the fiber phase ends early for it.
    #[inline]
    fn other_work(&self) -> bool {
        self.shared.maybe_posted()
            || self.signal_pending.load(Ordering::Relaxed)
            || self.shared.stop.load(Ordering::Relaxed)
    }

    /// See [`Loop::make_ready`].
    #[inline]
    pub(crate) fn make_ready(&self, id: OpId) {
        let mut fibers = self.fibers.borrow_mut();
        let Some(slot) = fibers.slots.get(id) else {
            return;
        };
        let c = slot.cell();
        if !c.queued.get() {
            c.queued.set(true);
            fibers.ready.push_back(id);
        }
    }

    /// Cancels loop operation `key` and drives the driver until its final completion has
    /// arrived (other completions are kept for the next dispatch). Blocks: used only where
    /// suspending is impossible (a fiber being unwound).
    /// Returns the operation's final result, or `None` when it had already been dispatched.
    pub(crate) fn cancel_and_wait(&self, key: OpId) -> Option<i32> {
        let driver_id = self.ops.borrow().get(key).map(|e| e.driver_id)?;
        let user_data = key.to_u64();
        // Completed, but kept for a later dispatch (after a panic or another guard's wait)?
        let kept = {
            let mut leftover = self.leftover.borrow_mut();
            let pos = leftover
                .iter()
                .position(|c| c.user_data == user_data && !c.more);
            pos.and_then(|p| leftover.remove(p))
        };
        if let Some(c) = kept {
            self.ops.borrow_mut().remove(key);
            return Some(c.result);
        }
        self.driver.borrow_mut().cancel(driver_id);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let r = self
                .driver
                .borrow_mut()
                .wait(Some(Duration::from_millis(100)), &mut buf);
            let mut result = None;
            for c in buf.drain(..) {
                if c.user_data == user_data && !c.more {
                    self.ops.borrow_mut().remove(key);
                    result = Some(c.result);
                } else {
                    self.leftover.borrow_mut().push_back(c);
                }
            }
            if result.is_some() {
                return result;
            }
            if r.is_err() {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}
