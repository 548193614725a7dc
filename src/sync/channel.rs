//! An unbounded multi-producer, single-consumer channel whose senders work from any thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::park::{block, RemoteWaiter, Stop};
use super::{RecvError, RecvTimeoutError, SendError, TryRecvError};

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    receiver: bool,
    /// The receiving fiber, while it is parked.
    waiter: Option<RemoteWaiter>,
}

struct Chan<T> {
    state: Mutex<State<T>>,
}

impl<T> Chan<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No user code runs under this lock, so a poisoned lock still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates an unbounded channel: any number of [`Sender`]s (on any thread) and one
/// [`Receiver`] (on the thread that created it).
///
/// ```
/// use fdloop::{sync, Loop};
///
/// let lp = Loop::new()?;
/// let (tx, rx) = sync::channel();
/// let producer = std::thread::spawn(move || {
///     for i in 1..=10 {
///         tx.send(i).unwrap();
///     }
/// });
/// let sum = lp.spawn(move || rx.iter().sum::<u32>());
/// lp.run()?;
/// producer.join().unwrap();
/// assert_eq!(sum.join().unwrap(), 55);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
            receiver: true,
            waiter: None,
        }),
    });
    (
        Sender { chan: chan.clone() },
        Receiver {
            chan,
            local: RefCell::new(VecDeque::new()),
            _not_send: PhantomData,
        },
    )
}

/// The sending half of a [`channel`]: `Send + Sync + Clone` (for `T: Send`), usable from plain
/// threads, callbacks and fibers of any loop. The channel is disconnected for the receiver when
/// every `Sender` is gone.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Sender<T> {
    /// Sends `value`. Never blocks: the channel is unbounded.
    ///
    /// Waking the receiver costs nothing while it is busy; when it is parked, the first send
    /// wakes it — directly on the receiver's own thread, else by posting one closure to its
    /// loop — and the following sends before it runs cost only the queue push.
    ///
    /// # Errors
    ///
    /// [`SendError`] with the value when the [`Receiver`] has been dropped.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let waiter = {
            let mut st = self.chan.lock();
            if !st.receiver {
                return Err(SendError(value));
            }
            st.queue.push_back(value);
            st.waiter.take()
        };
        if let Some(w) = waiter {
            w.wake();
        }
        Ok(())
    }

    /// Whether the [`Receiver`] has been dropped (a send would fail).
    pub fn is_closed(&self) -> bool {
        !self.chan.lock().receiver
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Sender<T> {
        self.chan.lock().senders += 1;
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waiter = {
            let mut st = self.chan.lock();
            st.senders -= 1;
            if st.senders == 0 {
                st.waiter.take()
            } else {
                None
            }
        };
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// The receiving half of a [`channel`]. It is `!Send`: it stays on the thread that created it,
/// and its blocking calls park the fiber that makes them (a fiber of any loop on that thread).
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<fdloop::sync::Receiver<u32>>();
/// ```
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
    /// Messages already taken from the shared queue (one lock per batch, not per message).
    local: RefCell<VecDeque<T>>,
    _not_send: PhantomData<*const ()>,
}

/// What one look at the channel found.
enum Look<T> {
    Value(T),
    Empty,
    Disconnected,
}

impl<T> Receiver<T> {
    /// Takes the next message, or registers `waiter` (when given) to be woken by the next send.
    fn look(&self, waiter: Option<&dyn Fn() -> RemoteWaiter>) -> Look<T> {
        let mut local = self.local.borrow_mut();
        if let Some(v) = local.pop_front() {
            return Look::Value(v);
        }
        let mut st = self.chan.lock();
        if !st.queue.is_empty() {
            std::mem::swap(&mut st.queue, &mut *local);
            drop(st);
            return Look::Value(local.pop_front().expect("the batch is not empty"));
        }
        if st.senders == 0 {
            return Look::Disconnected;
        }
        if let Some(w) = waiter {
            st.waiter = Some(w());
        }
        Look::Empty
    }

    fn wait(&self, what: &str, timeout: Option<Duration>) -> Result<Option<T>, Stop> {
        block(
            what,
            timeout,
            |ctx| match self.look(Some(&|| ctx.remote_waiter())) {
                Look::Value(v) => Some(Some(v)),
                Look::Disconnected => Some(None),
                Look::Empty => None,
            },
            || self.chan.lock().waiter = None,
        )
    }

    /// Waits for the next message, parking the calling fiber meanwhile. Messages from one
    /// sender arrive in the order they were sent.
    ///
    /// # Errors
    ///
    /// [`RecvError`] when the channel is empty and every [`Sender`] is gone; also when it is
    /// empty and the loop is closing (a fiber being unwound must not suspend).
    ///
    /// # Panics
    ///
    /// Outside a fiber (use [`Receiver::try_recv`] in callbacks).
    pub fn recv(&self) -> Result<T, RecvError> {
        match self.wait("fdloop::sync::Receiver::recv", None) {
            Ok(Some(v)) => Ok(v),
            Ok(None) | Err(_) => Err(RecvError),
        }
    }

    /// Waits for the next message for at most `timeout` (never returns `Timeout` earlier).
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`] when no message came in time;
    /// [`RecvTimeoutError::Disconnected`] when the channel is empty and every sender is gone,
    /// or the loop is closing.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match self.wait("fdloop::sync::Receiver::recv_timeout", Some(timeout)) {
            Ok(Some(v)) => Ok(v),
            Ok(None) | Err(Stop::Closing) => Err(RecvTimeoutError::Disconnected),
            Err(Stop::TimedOut) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// Takes a message if one is there, without waiting; callable anywhere on the receiver's
    /// thread, callbacks included.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when no message is queued; [`TryRecvError::Disconnected`] when
    /// none is queued and every sender is gone.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        match self.look(None) {
            Look::Value(v) => Ok(v),
            Look::Empty => Err(TryRecvError::Empty),
            Look::Disconnected => Err(TryRecvError::Disconnected),
        }
    }

    /// An iterator that waits for messages ([`Receiver::recv`]) and ends when the channel is
    /// disconnected.
    ///
    /// # Panics
    ///
    /// `next` panics outside a fiber.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// An iterator over the messages queued now ([`Receiver::try_recv`]); never waits.
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }

    /// Whether every [`Sender`] is gone (messages may still be queued).
    pub fn is_disconnected(&self) -> bool {
        self.chan.lock().senders == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let queued = {
            let mut st = self.chan.lock();
            st.receiver = false;
            st.waiter = None;
            std::mem::take(&mut st.queue)
        };
        // Messages' destructors run outside the lock.
        drop(queued);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

/// Iterator of [`Receiver::iter`]: waits for each message.
#[derive(Debug)]
pub struct Iter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

/// Iterator of [`Receiver::try_iter`]: the messages queued now.
#[derive(Debug)]
pub struct TryIter<'a, T> {
    rx: &'a Receiver<T>,
}

impl<T> Iterator for TryIter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

/// Owning iterator of a [`Receiver`]: waits for each message.
#[derive(Debug)]
pub struct IntoIter<T> {
    rx: Receiver<T>,
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl<T> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;
    fn into_iter(self) -> IntoIter<T> {
        IntoIter { rx: self }
    }
}

impl<'a, T> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}
