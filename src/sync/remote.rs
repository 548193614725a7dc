//! [`RemoteJoinHandle`]: a fiber spawned from another thread, joined from a plain thread.

use std::cell::RefCell;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, ThreadId};

use crate::fiber::{current, Builder};
use crate::Loop;

struct State<T> {
    result: Mutex<Option<thread::Result<T>>>,
    done: Condvar,
    loop_thread: ThreadId,
}

impl<T> State<T> {
    fn lock(&self) -> MutexGuard<'_, Option<thread::Result<T>>> {
        // Only moves of the result happen under this lock.
        self.result.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, r: thread::Result<T>) {
        let mut slot = self.lock();
        if slot.is_none() {
            *slot = Some(r);
        }
        drop(slot);
        self.done.notify_all();
    }
}

/// The owner of a fiber's result on the loop's side: finishes the handle when dropped unused
/// (the loop closed before the fiber ran or finished).
struct Completer<T> {
    state: Arc<State<T>>,
    finished: bool,
}

impl<T> Completer<T> {
    fn run<F: FnOnce() -> T>(mut self, f: F) {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            // The loop is closing and unwinds this fiber: the unwind must go on (`self` is
            // dropped on the way and reports the closed loop).
            Err(payload) if current().is_some_and(|c| c.closing) => panic::resume_unwind(payload),
            r => {
                self.state.finish(r);
                self.finished = true;
            }
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if !self.finished {
            self.state.finish(Err(Box::new(String::from(
                "the fiber did not finish: its loop was closed first",
            ))));
        }
    }
}

/// A handle on a fiber spawned with [`crate::LoopHandle::spawn`]: `Send + Sync`, for any
/// thread except the loop's own. Dropping it detaches the fiber, which runs on.
pub struct RemoteJoinHandle<T> {
    state: Arc<State<T>>,
}

impl<T> RemoteJoinHandle<T> {
    /// Blocks the calling OS thread until the fiber finishes, and returns its value or the
    /// payload of its panic. The loop must be running (on its own thread) for this to return.
    /// Called inside a fiber of another loop, it blocks that loop's whole thread meanwhile;
    /// poll [`RemoteJoinHandle::is_finished`] there instead, or send the result back through a
    /// [`crate::sync::oneshot`].
    ///
    /// # Errors
    ///
    /// `Err(payload)` when the fiber panicked; `Err` with a `String` payload when its loop was
    /// closed before the fiber finished (or before it started), or when the fiber could not
    /// be spawned (its stack could not be mapped).
    ///
    /// # Panics
    ///
    /// On the loop's own thread, where blocking would stop the loop for good: there, spawn with
    /// [`Loop::spawn`] or [`crate::fiber::spawn`] and wait with the fiber
    /// [`crate::fiber::JoinHandle`].
    pub fn join(self) -> thread::Result<T> {
        assert!(
            thread::current().id() != self.state.loop_thread,
            "RemoteJoinHandle::join called on the loop's own thread would block the loop \
             forever; on that thread, spawn with Loop::spawn or fdloop::fiber::spawn and wait \
             with the fiber JoinHandle"
        );
        let mut slot = self.state.lock();
        loop {
            if let Some(r) = slot.take() {
                return r;
            }
            slot = self
                .state
                .done
                .wait(slot)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether the fiber has finished (returned, panicked, or was dropped by a closing loop).
    pub fn is_finished(&self) -> bool {
        self.state.lock().is_some()
    }
}

impl<T> fmt::Debug for RemoteJoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteJoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// The handle, and the closure to post to the loop (on thread `loop_thread`) that spawns the
/// fiber running `f`.
pub(crate) fn remote_spawn<F, T>(
    loop_thread: ThreadId,
    f: F,
) -> (RemoteJoinHandle<T>, impl FnOnce(&Loop) + Send + 'static)
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let state = Arc::new(State {
        result: Mutex::new(None),
        done: Condvar::new(),
        loop_thread,
    });
    let completer = Completer {
        state: state.clone(),
        finished: false,
    };
    let post = move |lp: &Loop| {
        // Shared with the fiber so that a failed spawn can still report its error.
        let job = Rc::new(RefCell::new(Some((f, completer))));
        let j = job.clone();
        let spawned = Builder::new().spawn_on(lp, move || {
            let taken = j.borrow_mut().take();
            if let Some((f, completer)) = taken {
                completer.run(f);
            }
        });
        if let Err(e) = spawned {
            let taken = job.borrow_mut().take();
            if let Some((_, mut completer)) = taken {
                completer
                    .state
                    .finish(Err(Box::new(format!("cannot spawn the fiber: {e}"))));
                completer.finished = true;
            }
        }
    };
    (RemoteJoinHandle { state }, post)
}
