//! [`LoopHandle`]: the part of a loop that other threads may hold.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};

use fdloop_backends::Waker;

use crate::Loop;

/// A closure posted to a loop from another thread.
pub(crate) type Posted = Box<dyn FnOnce(&Loop) + Send>;

/// State shared between a loop and its handles.
pub(crate) struct Shared {
    pub(crate) queue: Mutex<VecDeque<Posted>>,
    /// Whether `queue` may be non-empty: set after a push (under the lock), cleared by the loop
    /// when it drains the queue (under the lock). Lets the loop skip the lock when idle; a post
    /// that races with a clear also wakes the loop, which then looks again.
    pub(crate) has_posts: AtomicBool,
    pub(crate) waker: Waker,
    pub(crate) stop: AtomicBool,
    pub(crate) closed: AtomicBool,
    /// The loop's thread (`Shared` is made on it, with the loop).
    pub(crate) thread: ThreadId,
}

impl Shared {
    pub(crate) fn new(waker: Waker) -> Shared {
        Shared {
            queue: Mutex::new(VecDeque::new()),
            has_posts: AtomicBool::new(false),
            waker,
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            thread: thread::current().id(),
        }
    }

    pub(crate) fn post(&self, f: Posted) -> io::Result<()> {
        {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            // Checked under the lock: `close` sets `closed` and then drains under the same lock,
            // so a closure is either run or refused, never silently dropped.
            if self.closed.load(Ordering::Acquire) {
                return Err(closed_error());
            }
            q.push_back(f);
            self.has_posts.store(true, Ordering::Release);
        }
        self.notify();
        Ok(())
    }

    /// Makes the loop look at `has_posts` soon. From the loop's own thread nothing is needed:
    /// the loop is not blocked in its driver (this code runs on that thread), and it looks at
    /// `has_posts` before it next waits (a closure posted by a callback or a fiber runs in the
    /// next iteration without a wake-up). From any other thread, the waker (which writes its
    /// eventfd only when the loop sleeps in the kernel); no wake-up is lost because `has_posts`
    /// is stored (under the queue's lock) before it, and the loop reads it after its wait
    /// returns.
    fn notify(&self) {
        if self.thread != thread::current().id() {
            self.waker.wake();
        }
    }
}

impl Shared {
    /// Whether closures may be waiting (cheap: no lock).
    pub(crate) fn maybe_posted(&self) -> bool {
        self.has_posts.load(Ordering::Acquire)
    }
}

pub(crate) fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the loop has been closed")
}

/// A handle to a [`Loop`] that any thread may hold: `Send + Sync + Clone`.
///
/// It posts closures to run on the loop's thread and stops the loop. A handle does not keep
/// [`Loop::run`] going by itself: a loop with nothing else to wait for returns from `run` even if
/// handles exist (use [`Loop::run_for`], or keep a source such as a timer running).
///
/// ```
/// use fdloop::Loop;
/// use std::time::Duration;
///
/// let lp = Loop::new()?;
/// let handle = lp.handle();
/// std::thread::spawn(move || {
///     handle.post(|lp| {
///         println!("hello from the loop thread");
///         lp.stop();
///     }).unwrap();
/// });
/// lp.run_for(Duration::from_secs(5))?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct LoopHandle {
    pub(crate) shared: Arc<Shared>,
}

impl LoopHandle {
    /// Runs `f` on the loop's thread during one of its next iterations. Closures posted by one
    /// thread run in the order they were posted.
    ///
    /// # Errors
    ///
    /// `NotConnected` when the loop has been closed or dropped; `f` is not run.
    pub fn post<F>(&self, f: F) -> io::Result<()>
    where
        F: FnOnce(&Loop) + Send + 'static,
    {
        self.shared.post(Box::new(f))
    }

    /// Makes the loop's `run` (or `run_for`) return after its current iteration, from any thread.
    /// Stopping twice is the same as stopping once.
    ///
    /// # Errors
    ///
    /// `NotConnected` when the loop has been closed or dropped.
    pub fn stop(&self) -> io::Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        self.shared.stop.store(true, Ordering::Release);
        self.shared.waker.wake();
        Ok(())
    }

    /// Spawns a fiber running `f` on this loop, from any thread: the fiber starts when the loop
    /// runs the posted request, in one of its next iterations.
    ///
    /// ```
    /// use fdloop::{fiber, Loop};
    /// use std::time::Duration;
    ///
    /// let lp = Loop::new()?;
    /// let handle = lp.handle();
    /// let client = std::thread::spawn(move || {
    ///     let h = handle.spawn(|| {
    ///         fiber::sleep(Duration::from_millis(1)); // parks the fiber, not the loop
    ///         21 * 2
    ///     })?;
    ///     let v = h.join().unwrap(); // blocks this thread (not the loop's)
    ///     handle.stop()?;
    ///     Ok::<_, std::io::Error>(v)
    /// });
    /// lp.run_for(Duration::from_secs(10))?;
    /// assert_eq!(client.join().unwrap()?, 42);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// `NotConnected` when the loop has been closed or dropped. Later failures (the loop
    /// closing before the fiber finishes, a stack that cannot be mapped) are reported by
    /// [`RemoteJoinHandle::join`].
    ///
    /// [`RemoteJoinHandle::join`]: crate::sync::RemoteJoinHandle::join
    pub fn spawn<F, T>(&self, f: F) -> io::Result<crate::sync::RemoteJoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (handle, post) = crate::sync::remote::remote_spawn(self.shared.thread, f);
        self.shared.post(Box::new(post))?;
        Ok(handle)
    }

    /// Whether the loop has been closed or dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle")
            .field("closed", &self.is_closed())
            .finish()
    }
}
