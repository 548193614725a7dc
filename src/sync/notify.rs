//! [`Notify`]: wake one or all parked fibers, with a stored permit.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::Duration;

use super::park::{block, Node, Stop, WaitQueue};
use super::{Canceled, WaitTimeoutError};

/// Parks fibers until another fiber (or a callback) notifies them; no data, no lock.
///
/// [`Notify::notify_one`] wakes the longest-waiting fiber or, when none waits, stores one
/// permit that the next [`Notify::notified`] consumes at once (permits do not add up), so a
/// notification sent just before a fiber starts waiting is not lost.
/// [`Notify::notify_waiters`] wakes every fiber waiting now and stores nothing.
///
/// `!Send`: for the fibers and callbacks of the loop on its own thread (share it with an
/// `Rc`). Across threads, use a [`crate::sync::channel`] or [`crate::sync::oneshot`].
///
/// ```
/// use fdloop::{sync::Notify, Loop};
/// use std::cell::RefCell;
/// use std::rc::Rc;
///
/// let lp = Loop::new()?;
/// let notify = Rc::new(Notify::new());
/// let items = Rc::new(RefCell::new(Vec::new()));
/// let (n, it) = (notify.clone(), items.clone());
/// let consumer = lp.spawn(move || {
///     let mut got = Vec::new();
///     while got.len() < 3 {
///         n.notified().unwrap();
///         got.extend(it.borrow_mut().drain(..));
///     }
///     got
/// });
/// lp.spawn(move || {
///     for i in 0..3 {
///         items.borrow_mut().push(i);
///         notify.notify_one();
///         fdloop::fiber::yield_now();
///     }
/// });
/// lp.run()?;
/// assert_eq!(consumer.join().unwrap(), vec![0, 1, 2]);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Default)]
pub struct Notify {
    permit: Cell<bool>,
    waiters: WaitQueue,
    _not_send: PhantomData<*const ()>,
}

impl Notify {
    /// A `Notify` with no permit and no waiters.
    pub fn new() -> Notify {
        Notify::default()
    }

    fn wait(&self, what: &str, timeout: Option<Duration>) -> Result<(), Stop> {
        let node: RefCell<Option<Rc<Node>>> = RefCell::new(None);
        block(
            what,
            timeout,
            |ctx| {
                let mut node = node.borrow_mut();
                match &*node {
                    Some(n) => n.notified().then_some(()),
                    None if self.permit.replace(false) => Some(()),
                    None => {
                        *node = Some(self.waiters.push(ctx.local_waiter()));
                        None
                    }
                }
            },
            || {
                if let Some(n) = node.borrow_mut().take() {
                    if !self.waiters.remove(&n) {
                        // Notified, but giving up: pass the notification on.
                        self.notify_one();
                    }
                }
            },
        )
    }

    /// Parks the calling fiber until notified (or takes the stored permit at once).
    ///
    /// # Errors
    ///
    /// [`Canceled`] when no permit is stored and the loop is closing (a fiber being unwound
    /// must not suspend).
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn notified(&self) -> Result<(), Canceled> {
        self.wait("fdloop::sync::Notify::notified", None)
            .map_err(|_| Canceled)
    }

    /// As [`Notify::notified`], giving up after `timeout` (never earlier).
    ///
    /// # Errors
    ///
    /// [`WaitTimeoutError::Timeout`] when no notification came in time;
    /// [`WaitTimeoutError::Canceled`] as for [`Notify::notified`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn notified_timeout(&self, timeout: Duration) -> Result<(), WaitTimeoutError> {
        self.wait("fdloop::sync::Notify::notified_timeout", Some(timeout))
            .map_err(|s| match s {
                Stop::TimedOut => WaitTimeoutError::Timeout,
                Stop::Closing => WaitTimeoutError::Canceled,
            })
    }

    /// Wakes the longest-waiting fiber or, if none waits, stores a permit for the next one.
    pub fn notify_one(&self) {
        if !self.waiters.notify_one() {
            self.permit.set(true);
        }
    }

    /// Wakes every fiber waiting now; stores no permit.
    pub fn notify_waiters(&self) {
        self.waiters.notify_all();
    }
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notify")
            .field("permit", &self.permit.get())
            .field("waiters", &self.waiters.len())
            .finish()
    }
}
