//! Synchronisation for fibers: channels, one-shot promises, mutex, condition variable, notify,
//! wait group — and fibers spawned and joined from other threads.
//!
//! Every blocking call here parks the calling **fiber**, never the thread: the loop serves its
//! other fibers, callbacks and I/O meanwhile. Each has a `_timeout` form, driven by the loop's
//! own timers (no fd, no thread); a timeout never ends a wait early.
//!
//! ```
//! use fdloop::{fiber, sync, Loop};
//! use std::time::Duration;
//!
//! let lp = Loop::new()?;
//! let (tx, rx) = sync::channel::<String>();
//!
//! // A plain thread sends…
//! let tx2 = tx.clone();
//! let producer = std::thread::spawn(move || {
//!     for i in 0..3 {
//!         tx2.send(format!("thread {i}")).unwrap();
//!     }
//! });
//! // …and so does a fiber of the loop.
//! lp.spawn(move || {
//!     fiber::sleep(Duration::from_millis(1));
//!     tx.send("fiber".into()).unwrap();
//! });
//! // A fiber receives until every sender is gone.
//! let consumer = lp.spawn(move || rx.iter().collect::<Vec<_>>());
//!
//! lp.run()?;
//! producer.join().unwrap();
//! let got = consumer.join().unwrap();
//! assert_eq!(got.len(), 4);
//! assert!(got.contains(&"fiber".to_string()));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # What may cross threads
//!
//! | type | `Send` | where it is used |
//! |---|---|---|
//! | [`Sender`], [`Promise`], [`WaitGroup`] | yes (`+ Sync`) | any thread: fibers of any loop, callbacks, pool jobs, plain threads |
//! | [`RemoteJoinHandle`] | yes (`+ Sync`) | any thread except the loop's own |
//! | [`Receiver`], [`Future`] | no | the thread that created them; waits park a fiber of a loop on that thread |
//! | [`Mutex`], [`Condvar`], [`Notify`] | no | the fibers (and, without waiting, callbacks) of the loop on their thread |
//!
//! A wake-up that crosses threads — a [`Sender`], [`Promise`] or [`WaitGroup`] used on another
//! thread than the parked fiber's loop — posts one closure to that loop (see
//! [`crate::LoopHandle::post`]), and only when a fiber is actually parked: a burst of sends
//! to a busy receiver costs the queue pushes and at most one post. On the loop's own thread
//! the fiber is made ready directly.
//!
//! ```compile_fail
//! fn assert_send<T: Send>() {}
//! assert_send::<fdloop::sync::Receiver<u32>>();
//! ```
//!
//! # Blocking calls outside fibers
//!
//! `recv`, `wait`, `lock`, `notified` and their `_timeout` forms panic outside a fiber, with a
//! message that says how to start one; callbacks use the non-blocking forms
//! ([`Receiver::try_recv`], [`Future::try_take`], [`Mutex::try_lock`]).
//!
//! # When the loop closes
//!
//! Closing a loop ([`crate::Loop::close`] or drop) unwinds its parked fibers: their waits never
//! return, their destructors run, and their registrations are withdrawn (a mutex handed to an
//! unwound fiber passes on to the next waiter). A fiber being unwound must not suspend, so a
//! blocking call made from a destructor during that unwinding returns at once when it would
//! have to wait: [`RecvError`] / [`RecvTimeoutError::Disconnected`] for a channel,
//! [`Canceled`] (or [`WaitTimeoutError::Canceled`]) for the others. A call that can complete
//! without waiting (a queued message, a free lock) still does.
//!
//! # Spurious wake-ups
//!
//! A parked fiber may be resumed for other reasons (a stale wake-up, a timeout that raced a
//! notification). Every call here re-checks its condition and parks again until it holds or its
//! deadline has passed; none returns spuriously.

use std::error::Error;
use std::fmt;

mod channel;
mod mutex;
mod notify;
mod oneshot;
mod park;
pub(crate) mod remote;
mod wait_group;

pub use channel::{channel, IntoIter, Iter, Receiver, Sender, TryIter};
pub use mutex::{Condvar, Mutex, MutexGuard, WaitTimeoutResult};
pub use notify::Notify;
pub use oneshot::{oneshot, Future, Promise};
pub use remote::RemoteJoinHandle;
pub use wait_group::WaitGroup;

/// [`Sender::send`] failed: the [`Receiver`] is gone. Holds the message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SendError<T>(pub T);

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError { .. }")
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sending on a channel whose receiver is gone")
    }
}

impl<T> Error for SendError<T> {}

/// [`Receiver::recv`] found the channel empty and every [`Sender`] gone (or the loop closing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvError;

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("receiving on an empty channel whose senders are gone")
    }
}

impl Error for RecvError {}

/// Why [`Receiver::try_recv`] returned no message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// No message is queued now.
    Empty,
    /// No message is queued and every [`Sender`] is gone.
    Disconnected,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("receiving on an empty channel"),
            TryRecvError::Disconnected => RecvError.fmt(f),
        }
    }
}

impl Error for TryRecvError {}

/// Why [`Receiver::recv_timeout`] returned no message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// No message came before the timeout.
    Timeout,
    /// The channel is empty and every [`Sender`] is gone, or the loop is closing.
    Disconnected,
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out waiting on a channel"),
            RecvTimeoutError::Disconnected => RecvError.fmt(f),
        }
    }
}

impl Error for RecvTimeoutError {}

/// A wait was canceled: the [`Promise`] was dropped without a value, or the loop is closing
/// and the fiber, being unwound, cannot wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Canceled;

impl fmt::Display for Canceled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the wait was canceled (the other side is gone, or the loop is closing)")
    }
}

impl Error for Canceled {}

/// Why a `_timeout` wait (other than the channel's) returned without its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitTimeoutError {
    /// The timeout passed first.
    Timeout,
    /// As [`Canceled`].
    Canceled,
}

impl fmt::Display for WaitTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitTimeoutError::Timeout => f.write_str("the wait timed out"),
            WaitTimeoutError::Canceled => Canceled.fmt(f),
        }
    }
}

impl Error for WaitTimeoutError {}
