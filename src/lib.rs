//! # fdloop — one event loop for every Linux file descriptor
//!
//! A [`Loop`] owns one io_uring ring or, where io_uring is unavailable (old kernel, seccomp in a
//! container, `kernel.io_uring_disabled`), one epoll set — chosen automatically when the loop is
//! built, forced with `FDLOOP_BACKEND=epoll|uring` or [`LoopBuilder::backend`], and reported by
//! [`Loop::backend`]. Every kind of fd works through it: sockets, pipes, ttys, regular files
//! (asynchronous on io_uring), eventfd, timerfd, signalfd, inotify, and `POLLPRI` sources such
//! as sysfs attributes.
//!
//! ```
//! use fdloop::{Interest, Loop, Timer};
//! use std::io::Write;
//! use std::os::fd::AsRawFd;
//! use std::os::unix::net::UnixStream;
//! use std::time::Duration;
//!
//! let lp = Loop::new()?;
//! println!("backend: {}", lp.backend());
//!
//! // A timer.
//! lp.start_timer(Timer::after(Duration::from_millis(5)), |_lp, _id| println!("timer fired"));
//!
//! // Readiness of any fd (level-triggered on both backends).
//! let (mut tx, rx) = UnixStream::pair()?;
//! tx.write_all(b"x")?;
//! let fd = rx.as_raw_fd();
//! lp.start_poll(fd, Interest::READABLE, move |lp, ready| {
//!     assert!(ready.is_readable());
//!     lp.detach(fd).unwrap();
//! })?;
//!
//! // A closure from another thread.
//! let handle = lp.handle();
//! std::thread::spawn(move || handle.post(|_lp| println!("posted")).unwrap());
//!
//! lp.run_for(Duration::from_millis(50))?;
//! drop(rx);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! ## The pieces
//!
//! * [`Loop`]: `run` / `run_for` / `run_once` / `stop`, `close` (and Drop);
//! * timers: [`Loop::start_timer`], [`Loop::stop_timer`], [`Loop::restart_timer`],
//!   [`Loop::update_now`] ([`Timer`]);
//! * signals: [`Loop::start_signal`], [`Loop::stop_signal`] ([`Signal`]);
//! * readiness: [`Loop::start_poll`], [`Loop::stop_poll`], [`Loop::detach`] ([`Interest`],
//!   [`Readiness`]);
//! * completion I/O with owned buffers: [`Loop::read`], [`Loop::read_at`], [`Loop::write`],
//!   [`Loop::write_at`], [`Loop::recv`], [`Loop::send`], [`Loop::accept`], [`Loop::connect`],
//!   [`Loop::cancel`];
//! * other threads: [`LoopHandle::post`], [`LoopHandle::stop`];
//! * the thread pool: [`Loop::spawn_blocking`];
//! * fibers: [`Loop::spawn`] and the [`fiber`] module, with [`pipe`], [`net`], [`fs`] and
//!   [`sync`] types whose blocking calls suspend only the calling fiber;
//! * thread-per-core: [`loops::Loops`] runs one loop per thread.
//!
//! ## Rules of the road
//!
//! * A `Loop` is `!Send`: one loop per thread. Its methods take `&self` and every callback
//!   receives `&Loop`, so callbacks may start and stop anything, including their own source.
//! * fdloop never closes an fd it does not own. Detach an fd ([`Loop::detach`]) before you
//!   close it.
//! * Signals: fdloop's handler only sets a flag and wakes the loop; no signal needs to be
//!   blocked. If you use `signalfd` yourself, the signal must be blocked in *every* thread,
//!   and the blocked mask is inherited by child processes (unblock it in `pre_exec`).
//! * `fork()`: a child must not use a loop created by its parent; it may build its own.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

mod builder;
mod descriptor;
pub mod dev;
mod event_loop;
pub mod external;
pub mod fiber;
pub mod fs;
mod handle;
mod io;
pub mod loops;
pub mod net;
mod pipe;
pub(crate) mod poll;
mod pool;
mod signal;
pub mod sync;
mod sys;
mod timer;

pub use builder::LoopBuilder;
pub use descriptor::Descriptor;
pub use event_loop::Loop;
pub use fdloop_backends::{BackendChoice, BackendInfo, BackendKind};
pub use handle::LoopHandle;
pub use io::{BufPool, IoId};
pub use pipe::{pipe, PipeReader, PipeWriter};
pub use poll::{Interest, Readiness};
pub use pool::QUEUE_CAPACITY;
pub use signal::{Signal, SignalId};
pub use timer::{Timer, TimerId};
