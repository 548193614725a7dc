//! [`WaitGroup`]: wait for a number of tasks to finish.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::park::{block, RemoteWaiter, Stop};
use super::{Canceled, WaitTimeoutError};

struct State {
    count: usize,
    /// Bumped each time `count` reaches zero, so that a waiter woken by it returns even if the
    /// count has gone up again before the waiter ran.
    generation: u64,
    next_ticket: u64,
    waiters: Vec<(u64, RemoteWaiter)>,
}

struct Inner {
    state: Mutex<State>,
}

/// Waits until a count of outstanding tasks drops to zero: [`WaitGroup::add`] before starting
/// tasks, [`WaitGroup::done`] as each finishes, [`WaitGroup::wait`] in a fiber.
///
/// A `WaitGroup` is `Send + Sync + Clone` (clones share the count): tasks may call `done` from
/// fibers of any loop, callbacks, pool jobs or plain threads; waiting parks a fiber, and the
/// last `done` wakes every waiter (directly on its own thread, else with one posted closure
/// per waiting fiber).
///
/// ```
/// use fdloop::{fiber, sync::WaitGroup, Loop};
/// use std::time::Duration;
///
/// let lp = Loop::new()?;
/// let wg = WaitGroup::new();
/// for i in 0..3 {
///     wg.add(1);
///     let wg = wg.clone();
///     lp.spawn(move || {
///         fiber::sleep(Duration::from_millis(i));
///         wg.done();
///     });
/// }
/// wg.add(1);
/// let w = wg.clone();
/// std::thread::spawn(move || w.done());
/// let h = lp.spawn(move || wg.wait());
/// lp.run()?;
/// assert_eq!(h.join().unwrap(), Ok(()));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct WaitGroup {
    inner: Arc<Inner>,
}

impl Default for WaitGroup {
    fn default() -> WaitGroup {
        WaitGroup::new()
    }
}

impl WaitGroup {
    /// A group with a count of zero.
    pub fn new() -> WaitGroup {
        WaitGroup {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    count: 0,
                    generation: 0,
                    next_ticket: 0,
                    waiters: Vec::new(),
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No user code runs under this lock.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `n` to the count.
    ///
    /// # Panics
    ///
    /// If the count would overflow `usize`.
    pub fn add(&self, n: usize) {
        let mut st = self.lock();
        st.count = st
            .count
            .checked_add(n)
            .expect("fdloop::sync::WaitGroup count overflow");
    }

    /// Subtracts one from the count; when it reaches zero, wakes every waiting fiber.
    ///
    /// # Panics
    ///
    /// If the count is already zero (more `done` than `add`).
    pub fn done(&self) {
        let waiters = {
            let mut st = self.lock();
            assert!(
                st.count > 0,
                "fdloop::sync::WaitGroup::done called more times than the count added"
            );
            st.count -= 1;
            if st.count > 0 {
                return;
            }
            st.generation = st.generation.wrapping_add(1);
            std::mem::take(&mut st.waiters)
        };
        for (_, w) in waiters {
            w.wake();
        }
    }

    /// The current count.
    pub fn count(&self) -> usize {
        self.lock().count
    }

    fn wait_inner(&self, what: &str, timeout: Option<Duration>) -> Result<(), Stop> {
        let mut start: Option<u64> = None;
        let ticket = std::cell::Cell::new(None::<u64>);
        block(
            what,
            timeout,
            |ctx| {
                let mut st = self.lock();
                let generation = *start.get_or_insert(st.generation);
                if st.count == 0 || st.generation != generation {
                    return Some(());
                }
                if ticket.get().is_none() {
                    // Registered once: the list is only emptied together with a generation
                    // change, so a registered fiber stays registered until it can return.
                    let t = st.next_ticket;
                    st.next_ticket = t.wrapping_add(1);
                    st.waiters.push((t, ctx.remote_waiter()));
                    ticket.set(Some(t));
                }
                None
            },
            || {
                if let Some(t) = ticket.get() {
                    self.lock().waiters.retain(|(x, _)| *x != t);
                }
            },
        )
    }

    /// Parks the calling fiber until the count is zero (at once if it is zero now).
    ///
    /// # Errors
    ///
    /// [`Canceled`] when the count is not zero and the loop is closing (a fiber being unwound
    /// must not suspend).
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn wait(&self) -> Result<(), Canceled> {
        self.wait_inner("fdloop::sync::WaitGroup::wait", None)
            .map_err(|_| Canceled)
    }

    /// As [`WaitGroup::wait`], giving up after `timeout` (never earlier).
    ///
    /// # Errors
    ///
    /// [`WaitTimeoutError::Timeout`] when the count did not reach zero in time;
    /// [`WaitTimeoutError::Canceled`] as for [`WaitGroup::wait`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), WaitTimeoutError> {
        self.wait_inner("fdloop::sync::WaitGroup::wait_timeout", Some(timeout))
            .map_err(|s| match s {
                Stop::TimedOut => WaitTimeoutError::Timeout,
                Stop::Closing => WaitTimeoutError::Canceled,
            })
    }
}

impl fmt::Debug for WaitGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitGroup")
            .field("count", &self.count())
            .finish()
    }
}
