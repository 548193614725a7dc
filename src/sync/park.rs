//! Parking a fiber until a condition holds, and waking it from the loop's thread or from any
//! other thread. Every blocking call of [`crate::sync`] goes through [`block`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use fdloop_backends::OpId;

use crate::event_loop::Inner;
use crate::fiber::scheduler::{current_or_panic, suspend};
use crate::fiber::{current, with_loop};
use crate::handle::Shared;
use crate::timer::Action;
use crate::{Loop, TimerId};

/// Why [`block`] returned without its condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The deadline passed.
    TimedOut,
    /// The loop is closing and unwinds the fiber, which must not suspend.
    Closing,
}

/// What a poll function of [`block`] may use to register the running fiber as a waiter.
pub(crate) struct Ctx<'a> {
    lp: &'a Loop,
    fiber: OpId,
}

impl Ctx<'_> {
    /// A waiter for primitives that live on the loop's thread.
    pub(crate) fn local_waiter(&self) -> LocalWaiter {
        LocalWaiter {
            inner: Rc::downgrade(&self.lp.inner),
            fiber: self.fiber,
        }
    }

    /// A waiter that any thread may wake.
    pub(crate) fn remote_waiter(&self) -> RemoteWaiter {
        remember(self.lp);
        RemoteWaiter {
            serial: self.lp.inner.serial,
            shared: self.lp.inner.shared.clone(),
            fiber: self.fiber,
        }
    }
}

/// Parks the running fiber until `poll` returns `Some`, the optional timeout passes, or the
/// loop closes.
///
/// `poll` checks the condition; when it returns `None` it must have registered the fiber (with
/// [`Ctx::local_waiter`] or [`Ctx::remote_waiter`]) so that whoever changes the condition makes
/// it ready. `poll` runs again after every wake-up, spurious ones included. `abandon` undoes
/// the registration when the wait ends without the condition: timeout, closing loop, or the
/// fiber being unwound while parked.
///
/// The timeout uses one of the loop's internal timers (no fd, no thread), stopped on every
/// way out; the wait never ends before it has passed.
///
/// # Panics
///
/// Outside a fiber, with the advice of [`current_or_panic`] naming `what`.
pub(crate) fn block<R>(
    what: &str,
    timeout: Option<Duration>,
    mut poll: impl FnMut(&Ctx<'_>) -> Option<R>,
    abandon: impl FnMut(),
) -> Result<R, Stop> {
    let cur = current_or_panic(what);
    let fiber = cur.fiber;
    let start = with_loop(|lp| {
        let r = poll(&Ctx { lp, fiber });
        (r, lp.now_ns())
    });
    let now = match start {
        (Some(r), _) => return Ok(r),
        (None, now) => now,
    };
    // From here on the fiber is registered: every way out goes through the guard.
    let mut guard = Abandon {
        abandon,
        timer: None,
        armed: true,
    };
    if cur.closing {
        return Err(Stop::Closing);
    }
    let deadline = timeout.map(|d| now.saturating_add(dur_ns(d)));
    if let Some(deadline) = deadline {
        if deadline <= now {
            return Err(Stop::TimedOut);
        }
        guard.timer = Some(with_loop(|lp| {
            lp.start_internal_timer(deadline, Action::Wake(fiber))
        }));
    }
    loop {
        suspend();
        // Re-read the loop on every wake-up: the fiber may be resumed by a moved `Loop` value.
        let (r, now) = with_loop(|lp| (poll(&Ctx { lp, fiber }), lp.now_ns()));
        if let Some(r) = r {
            guard.armed = false;
            return Ok(r);
        }
        if deadline.is_some_and(|d| now >= d) {
            return Err(Stop::TimedOut);
        }
    }
}

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Stops the timeout timer and, unless disarmed, withdraws the fiber's registration. Runs on
/// every way out of [`block`] after the fiber registered, unwinding included.
struct Abandon<F: FnMut()> {
    abandon: F,
    timer: Option<TimerId>,
    armed: bool,
}

impl<F: FnMut()> Drop for Abandon<F> {
    fn drop(&mut self) {
        if let Some(timer) = self.timer {
            if current().is_some() {
                with_loop(|lp| {
                    if lp.timer_pending(timer) {
                        let _ = lp.stop_timer(timer);
                    }
                });
            }
        }
        if self.armed {
            (self.abandon)();
        }
    }
}

/// Runs `f` with a `Loop` value over `inner` that does not close the loop when it goes.
fn with_inner<R>(inner: Rc<Inner>, f: impl FnOnce(&Loop) -> R) -> R {
    struct Temporary(Option<Loop>);
    impl Drop for Temporary {
        fn drop(&mut self) {
            if let Some(lp) = self.0.take() {
                drop(lp.inner_rc());
            }
        }
    }
    let t = Temporary(Some(Loop { inner }));
    f(t.0.as_ref().expect("the temporary loop is present"))
}

/// A parked fiber of a loop on this thread.
pub(crate) struct LocalWaiter {
    inner: Weak<Inner>,
    fiber: OpId,
}

impl LocalWaiter {
    /// Makes the fiber ready (no effect if it or its loop is gone).
    pub(crate) fn wake(&self) {
        if current().is_some() {
            let done = with_loop(|lp| {
                let same = Rc::as_ptr(&lp.inner) == self.inner.as_ptr();
                if same {
                    lp.make_ready(self.fiber);
                }
                same
            });
            if done {
                return;
            }
        }
        if let Some(inner) = self.inner.upgrade() {
            with_inner(inner, |lp| lp.make_ready(self.fiber));
        }
    }
}

thread_local! {
    /// The loops of this thread that have fibers parked on a cross-thread primitive, by serial:
    /// how a wake-up from a callback of the same thread reaches its loop without a post.
    static LOOPS: RefCell<Vec<(u32, Weak<Inner>)>> = const { RefCell::new(Vec::new()) };
}

fn remember(lp: &Loop) {
    let serial = lp.inner.serial;
    LOOPS.with(|loops| {
        let mut loops = loops.borrow_mut();
        if loops.iter().any(|(s, _)| *s == serial) {
            return;
        }
        loops.retain(|(_, w)| w.strong_count() > 0);
        loops.push((serial, Rc::downgrade(&lp.inner)));
    });
}

/// The loop with `serial` if it lives on this thread.
fn local_loop(serial: u32) -> Option<Rc<Inner>> {
    LOOPS
        .try_with(|loops| {
            loops
                .borrow()
                .iter()
                .find(|(s, _)| *s == serial)
                .and_then(|(_, w)| w.upgrade())
        })
        .ok()
        .flatten()
}

/// A parked fiber that any thread may wake: `Send`.
pub(crate) struct RemoteWaiter {
    serial: u32,
    shared: Arc<Shared>,
    fiber: OpId,
}

impl RemoteWaiter {
    /// Makes the fiber ready: directly when called on its loop's thread (from a fiber or a
    /// callback), else by posting one closure to its loop. No effect if the loop is gone.
    pub(crate) fn wake(self) {
        let fiber = self.fiber;
        if current().is_some() {
            let done = with_loop(|lp| {
                let same = lp.inner.serial == self.serial;
                if same {
                    lp.make_ready(fiber);
                }
                same
            });
            if done {
                return;
            }
        }
        if let Some(inner) = local_loop(self.serial) {
            with_inner(inner, |lp| lp.make_ready(fiber));
            return;
        }
        // Another thread: the loop may be closed, in which case nobody is left to wake.
        let _ = self
            .shared
            .post(Box::new(move |lp: &Loop| lp.make_ready(fiber)));
    }
}

/// A node of a [`WaitQueue`]: one parked fiber and whether it was notified.
pub(crate) struct Node {
    waiter: LocalWaiter,
    notified: Cell<bool>,
}

impl Node {
    pub(crate) fn notified(&self) -> bool {
        self.notified.get()
    }
}

/// A FIFO of parked fibers of this thread (for `Condvar`, `Notify` and `Mutex`).
#[derive(Default)]
pub(crate) struct WaitQueue {
    nodes: RefCell<VecDeque<Rc<Node>>>,
}

impl WaitQueue {
    pub(crate) fn push(&self, waiter: LocalWaiter) -> Rc<Node> {
        let node = Rc::new(Node {
            waiter,
            notified: Cell::new(false),
        });
        self.nodes.borrow_mut().push_back(node.clone());
        node
    }

    /// Notifies the longest waiting fiber; `false` if none waits.
    pub(crate) fn notify_one(&self) -> bool {
        let node = self.nodes.borrow_mut().pop_front();
        match node {
            Some(node) => {
                node.notified.set(true);
                node.waiter.wake();
                true
            }
            None => false,
        }
    }

    /// Notifies every fiber waiting now.
    pub(crate) fn notify_all(&self) {
        let nodes = std::mem::take(&mut *self.nodes.borrow_mut());
        for node in nodes {
            node.notified.set(true);
            node.waiter.wake();
        }
    }

    /// Takes `node` out of the queue (it gave up waiting); `false` if it was not there (it
    /// had been notified).
    pub(crate) fn remove(&self, node: &Rc<Node>) -> bool {
        let mut nodes = self.nodes.borrow_mut();
        match nodes.iter().position(|n| Rc::ptr_eq(n, node)) {
            Some(i) => {
                nodes.remove(i);
                true
            }
            None => false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.borrow().len()
    }
}
