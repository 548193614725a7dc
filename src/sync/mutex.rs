//! A fiber-aware [`Mutex`] and its [`Condvar`], for the fibers of one loop.

use std::cell::{Cell, RefCell, RefMut};
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::time::Duration;

use super::park::{block, Node, Stop, WaitQueue};
use super::{Canceled, WaitTimeoutError};

/// A mutual-exclusion lock for fibers: [`Mutex::lock`] parks the calling fiber (not the
/// thread) while another fiber holds the lock, so a fiber may keep it across blocking calls
/// (I/O, [`crate::fiber::sleep`], [`crate::fiber::yield_now`] …).
///
/// The lock is fair: fibers get it in the order they asked for it, each release handing it to
/// the longest-waiting fiber, and a fiber that calls `lock` meanwhile queues behind them.
///
/// A `Mutex` is `!Send`: it serves the fibers (and callbacks, with [`Mutex::try_lock`]) of the
/// loop on its own thread; share it between them with an `Rc`. To share data with other
/// threads, send messages through a [`crate::sync::channel`].
///
/// ```
/// use fdloop::{fiber, sync::Mutex, Loop};
/// use std::rc::Rc;
///
/// let lp = Loop::new()?;
/// let total = Rc::new(Mutex::new(0));
/// for _ in 0..10 {
///     let total = total.clone();
///     lp.spawn(move || {
///         let mut n = total.lock().unwrap();
///         let seen = *n;
///         fiber::yield_now(); // others run, but cannot enter
///         *n = seen + 1;
///     });
/// }
/// lp.run()?;
/// assert_eq!(*total.try_lock().unwrap(), 10);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<fdloop::sync::Mutex<u32>>();
/// ```
pub struct Mutex<T> {
    locked: Cell<bool>,
    /// Fibers waiting for the lock, in order. Non-empty only while `locked`: a release hands
    /// the lock to the first of them (it stays locked).
    waiters: WaitQueue,
    value: RefCell<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T> Mutex<T> {
    /// A new, unlocked mutex.
    pub fn new(value: T) -> Mutex<T> {
        Mutex {
            locked: Cell::new(false),
            waiters: WaitQueue::default(),
            value: RefCell::new(value),
            _not_send: PhantomData,
        }
    }

    fn guard(&self) -> MutexGuard<'_, T> {
        MutexGuard {
            mutex: self,
            value: self.value.borrow_mut(),
        }
    }

    /// Releases the lock: hands it to the longest-waiting fiber, or unlocks.
    fn release(&self) {
        if !self.waiters.notify_one() {
            self.locked.set(false);
        }
    }

    fn lock_inner(&self, what: &str, timeout: Option<Duration>) -> Result<(), Stop> {
        let node: RefCell<Option<Rc<Node>>> = RefCell::new(None);
        block(
            what,
            timeout,
            |ctx| {
                let mut node = node.borrow_mut();
                match &*node {
                    Some(n) => n.notified().then_some(()),
                    None if !self.locked.get() => {
                        self.locked.set(true);
                        Some(())
                    }
                    None => {
                        *node = Some(self.waiters.push(ctx.local_waiter()));
                        None
                    }
                }
            },
            || {
                if let Some(n) = node.borrow_mut().take() {
                    if !self.waiters.remove(&n) {
                        // The lock was handed to this fiber, which gives up: pass it on.
                        self.release();
                    }
                }
            },
        )
    }

    /// Acquires the lock, parking the calling fiber until it is this fiber's turn.
    ///
    /// # Errors
    ///
    /// [`Canceled`] when the lock is held and the loop is closing (a fiber being unwound must
    /// not suspend). A free lock is taken even then.
    ///
    /// # Panics
    ///
    /// Outside a fiber (use [`Mutex::try_lock`] in callbacks). Locking twice from the same fiber
    /// without releasing parks that fiber for good.
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, Canceled> {
        match self.lock_inner("fdloop::sync::Mutex::lock", None) {
            Ok(()) => Ok(self.guard()),
            Err(_) => Err(Canceled),
        }
    }

    /// Acquires the lock, waiting at most `timeout` (never gives up earlier).
    ///
    /// # Errors
    ///
    /// [`WaitTimeoutError::Timeout`] when the lock did not come in time;
    /// [`WaitTimeoutError::Canceled`] as for [`Mutex::lock`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<'_, T>, WaitTimeoutError> {
        match self.lock_inner("fdloop::sync::Mutex::lock_timeout", Some(timeout)) {
            Ok(()) => Ok(self.guard()),
            Err(Stop::TimedOut) => Err(WaitTimeoutError::Timeout),
            Err(Stop::Closing) => Err(WaitTimeoutError::Canceled),
        }
    }

    /// Acquires the lock if it is free (and no fiber is queued for it), without waiting.
    /// Callable anywhere on the mutex's thread, callbacks included.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        if self.locked.get() {
            return None;
        }
        self.locked.set(true);
        Some(self.guard())
    }

    /// Whether a fiber (or callback) holds the lock, or it has been handed to a waiting fiber.
    pub fn is_locked(&self) -> bool {
        self.locked.get()
    }

    /// The data, through an exclusive borrow (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// The data, consuming the mutex.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Mutex<T> {
        Mutex::new(T::default())
    }
}

impl<T: fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Mutex");
        match self.try_lock() {
            Some(g) => d.field("data", &&*g),
            None => d.field("data", &format_args!("<locked>")),
        };
        d.field("waiters", &self.waiters.len()).finish()
    }
}

/// Access to the data of a locked [`Mutex`]; dropping it releases the lock (to the
/// longest-waiting fiber, if any).
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
    value: RefMut<'a, T>,
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // The next owner only runs later, after `value` (the borrow) has been dropped too.
        self.mutex.release();
    }
}

impl<T: fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.value, f)
    }
}

/// Whether [`Condvar::wait_timeout`] returned because its timeout passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// `true` when the wait ended by timeout rather than by a notification.
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

/// A condition variable for fibers, used with a [`Mutex`]: [`Condvar::wait`] releases the
/// lock, parks the fiber until [`Condvar::notify_one`] / [`Condvar::notify_all`], and takes
/// the lock again. Wake-ups are in FIFO order; check the condition in a loop (or use
/// [`Condvar::wait_while`]), as with any condition variable.
///
/// `!Send`, like [`Mutex`]: for the fibers of one loop.
///
/// ```
/// use fdloop::{sync::{Condvar, Mutex}, Loop};
/// use std::rc::Rc;
///
/// let lp = Loop::new()?;
/// let pair = Rc::new((Mutex::new(false), Condvar::new()));
/// let p = pair.clone();
/// let waiter = lp.spawn(move || {
///     let (ready, cv) = &*p;
///     let guard = cv.wait_while(ready.lock().unwrap(), |r| !*r).unwrap();
///     *guard
/// });
/// let p = pair.clone();
/// lp.spawn(move || {
///     *p.0.lock().unwrap() = true;
///     p.1.notify_one();
/// });
/// lp.run()?;
/// assert!(waiter.join().unwrap());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Default)]
pub struct Condvar {
    waiters: WaitQueue,
    _not_send: PhantomData<*const ()>,
}

impl Condvar {
    /// A condition variable with no waiters.
    pub fn new() -> Condvar {
        Condvar::default()
    }

    /// Queues the fiber, releases the lock, parks until notified (or the timeout), then
    /// re-acquires the lock. `Ok(true)` when notified.
    fn wait_inner<'a, T>(
        &self,
        what: &str,
        guard: MutexGuard<'a, T>,
        timeout: Option<Duration>,
    ) -> Result<(MutexGuard<'a, T>, bool), Canceled> {
        let mutex = guard.mutex;
        let mut guard = Some(guard);
        let node: RefCell<Option<Rc<Node>>> = RefCell::new(None);
        let r = block(
            what,
            timeout,
            |ctx| {
                let mut node = node.borrow_mut();
                match &*node {
                    Some(n) => n.notified().then_some(()),
                    None => {
                        *node = Some(self.waiters.push(ctx.local_waiter()));
                        // Queued first, released second: a notification sent as soon as the
                        // lock is free finds this fiber.
                        drop(guard.take());
                        None
                    }
                }
            },
            || {
                if let Some(n) = node.borrow_mut().take() {
                    if !self.waiters.remove(&n) {
                        // Notified, but giving up: pass the notification on.
                        self.waiters.notify_one();
                    }
                }
            },
        );
        // On `Closing` the guard (if still held) is dropped here: the lock is released.
        drop(guard);
        let notified = match r {
            Ok(()) => true,
            Err(Stop::TimedOut) => false,
            Err(Stop::Closing) => return Err(Canceled),
        };
        let guard = mutex.lock()?;
        Ok((guard, notified))
    }

    /// Releases `guard`'s lock, parks the calling fiber until notified, and re-acquires the
    /// lock.
    ///
    /// # Errors
    ///
    /// [`Canceled`] when the loop is closing (a fiber being unwound must not suspend); the lock
    /// is then released.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> Result<MutexGuard<'a, T>, Canceled> {
        self.wait_inner("fdloop::sync::Condvar::wait", guard, None)
            .map(|(g, _)| g)
    }

    /// Waits (as [`Condvar::wait`]) while `condition` holds for the data.
    ///
    /// # Errors
    ///
    /// As for [`Condvar::wait`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn wait_while<'a, T>(
        &self,
        mut guard: MutexGuard<'a, T>,
        mut condition: impl FnMut(&mut T) -> bool,
    ) -> Result<MutexGuard<'a, T>, Canceled> {
        while condition(&mut guard) {
            guard = self
                .wait_inner("fdloop::sync::Condvar::wait_while", guard, None)?
                .0;
        }
        Ok(guard)
    }

    /// As [`Condvar::wait`], giving up after `timeout` (never earlier); the lock is re-acquired
    /// in both cases (which may take longer).
    ///
    /// # Errors
    ///
    /// As for [`Condvar::wait`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> Result<(MutexGuard<'a, T>, WaitTimeoutResult), Canceled> {
        self.wait_inner("fdloop::sync::Condvar::wait_timeout", guard, Some(timeout))
            .map(|(g, notified)| (g, WaitTimeoutResult(!notified)))
    }

    /// Wakes the longest-waiting fiber, if any (a notification with no waiter is lost).
    pub fn notify_one(&self) {
        self.waiters.notify_one();
    }

    /// Wakes every fiber waiting now.
    pub fn notify_all(&self) {
        self.waiters.notify_all();
    }
}

impl fmt::Debug for Condvar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condvar")
            .field("waiters", &self.waiters.len())
            .finish()
    }
}
