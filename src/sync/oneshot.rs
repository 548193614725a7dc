//! A one-shot value: a [`Promise`] set once from any thread, a [`Future`] a fiber waits on.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::park::{block, RemoteWaiter, Stop};
use super::{Canceled, WaitTimeoutError};

struct State<T> {
    value: Option<T>,
    promise: bool,
    future: bool,
    waiter: Option<RemoteWaiter>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No user code runs under this lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates a one-shot pair: the [`Promise`] (`Send`, any thread) sets the value once, the
/// [`Future`] (stays on its thread) waits for it in a fiber.
///
/// ```
/// use fdloop::{sync, Loop};
///
/// let lp = Loop::new()?;
/// let (promise, future) = sync::oneshot();
/// std::thread::spawn(move || promise.set(6 * 7).unwrap());
/// let h = lp.spawn(move || future.wait());
/// lp.run()?;
/// assert_eq!(h.join().unwrap(), Ok(42));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn oneshot<T>() -> (Promise<T>, Future<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            value: None,
            promise: true,
            future: true,
            waiter: None,
        }),
    });
    (
        Promise {
            shared: shared.clone(),
        },
        Future {
            shared,
            _not_send: PhantomData,
        },
    )
}

/// The setting half of a [`oneshot`]: `Send + Sync` (for `T: Send`), usable from any thread.
/// Dropping it without [`Promise::set`] cancels the [`Future`].
pub struct Promise<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Promise<T> {
    /// Sets the value and wakes the fiber waiting for it (directly on its own thread, else with
    /// one closure posted to its loop).
    ///
    /// # Errors
    ///
    /// The value back when the [`Future`] has been dropped.
    pub fn set(self, value: T) -> Result<(), T> {
        let waiter = {
            let mut st = self.shared.lock();
            if !st.future {
                return Err(value);
            }
            st.value = Some(value);
            st.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
        Ok(())
    }

    /// Whether the [`Future`] has been dropped (nobody will read the value).
    pub fn is_canceled(&self) -> bool {
        !self.shared.lock().future
    }
}

impl<T> Drop for Promise<T> {
    fn drop(&mut self) {
        let waiter = {
            let mut st = self.shared.lock();
            st.promise = false;
            st.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Promise<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Promise").finish_non_exhaustive()
    }
}

/// The waiting half of a [`oneshot`]. It is `!Send`: it stays on the thread that created it.
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<fdloop::sync::Future<u32>>();
/// ```
pub struct Future<T> {
    shared: Arc<Shared<T>>,
    _not_send: PhantomData<*const ()>,
}

impl<T> Future<T> {
    fn wait_inner(&mut self, what: &str, timeout: Option<Duration>) -> Result<Option<T>, Stop> {
        let shared = &self.shared;
        block(
            what,
            timeout,
            |ctx| {
                let mut st = shared.lock();
                if let Some(v) = st.value.take() {
                    return Some(Some(v));
                }
                if !st.promise {
                    return Some(None);
                }
                st.waiter = Some(ctx.remote_waiter());
                None
            },
            || shared.lock().waiter = None,
        )
    }

    /// Waits for the value, parking the calling fiber.
    ///
    /// # Errors
    ///
    /// [`Canceled`] when the [`Promise`] was dropped without a value, or the value was already
    /// taken, or when the value is not there and the loop is closing.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn wait(mut self) -> Result<T, Canceled> {
        match self.wait_inner("fdloop::sync::Future::wait", None) {
            Ok(Some(v)) => Ok(v),
            Ok(None) | Err(_) => Err(Canceled),
        }
    }

    /// Waits for the value for at most `timeout` (never returns `Timeout` earlier). After a
    /// timeout the future may be waited on again.
    ///
    /// # Errors
    ///
    /// [`WaitTimeoutError::Timeout`] when the value did not come in time;
    /// [`WaitTimeoutError::Canceled`] as for [`Future::wait`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<T, WaitTimeoutError> {
        match self.wait_inner("fdloop::sync::Future::wait_timeout", Some(timeout)) {
            Ok(Some(v)) => Ok(v),
            Ok(None) | Err(Stop::Closing) => Err(WaitTimeoutError::Canceled),
            Err(Stop::TimedOut) => Err(WaitTimeoutError::Timeout),
        }
    }

    /// Takes the value if it is there, without waiting; callable anywhere on the future's
    /// thread.
    ///
    /// # Errors
    ///
    /// [`Canceled`] when the value is not there and the [`Promise`] is gone.
    pub fn try_take(&mut self) -> Result<Option<T>, Canceled> {
        let mut st = self.shared.lock();
        match st.value.take() {
            Some(v) => Ok(Some(v)),
            None if st.promise => Ok(None),
            None => Err(Canceled),
        }
    }
}

impl<T> Drop for Future<T> {
    fn drop(&mut self) {
        let value = {
            let mut st = self.shared.lock();
            st.future = false;
            st.waiter = None;
            st.value.take()
        };
        drop(value);
    }
}

impl<T> fmt::Debug for Future<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Future").finish_non_exhaustive()
    }
}
