//! The epoll driver: readiness, then a non-blocking syscall; a thread pool for regular files.
//!
//! It gives the same completion contract as the io_uring driver (see the crate docs): every
//! pushed operation yields exactly one final completion (I1), also when cancelled or at
//! shutdown.
//!
//! # Mechanism
//!
//! * One epoll set (`EPOLL_CLOEXEC`). The [`Waker`]'s eventfd sits in it (level-triggered)
//!   under a reserved token; the pool's finished jobs wake the loop through the same eventfd.
//!   A blocking `epoll_wait` is bracketed by `WakeFd::sleep` / `WakeFd::awake`, so that wakers
//!   write only while the driver sleeps.
//! * A **per-fd table** (indexed by fd): the fd's class (`fstat` + `fcntl`, computed on first
//!   use and cached), the operations waiting for it with the poll bits each one needs, what is
//!   registered in epoll, and the readiness last seen. See `epoll/fds.rs` for the registration
//!   model:
//!   - an fd used by a non-blocking I/O operation gets **one persistent edge-triggered
//!     registration** (`IN | OUT | RDHUP | ET`), kept while the fd is idle and removed only by
//!     `cancel_fd`, `forget_fd` or `Close`. Readiness reported by events is **cached per fd**
//!     and cleared when a syscall says `EAGAIN`, and when a read of a stream socket or pipe
//!     comes back short (the fd is drained: as tokio assumes) or a write does (it is full). An
//!     operation is tried at once when its readiness is known or unknown, and waits for the
//!     next edge without a syscall when it is known to be gone;
//!   - an fd with a waiter that needs level-triggering (a `Poll`, an operation on a blocking fd
//!     that may only be read after a report, a multishot accept, or any waiter on an fd that
//!     reported an error or hang-up) is registered **level-triggered with exactly its waiters'
//!     interest**, as before, and removed when nobody waits.
//!
//!   Registrations are **lazy**: a change of waiters marks the fd dirty, and the next
//!   [`Epoll::wait`] issues one `epoll_ctl` per dirty fd whose registration really changed. A
//!   request/response connection costs its `recv` and `send` and a share of one `epoll_wait`;
//!   a one-shot poll re-armed from its completion handler costs no syscall.
//! * A `wait` that already has completions to return (operations that finished when pushed)
//!   skips the kernel when the previous `wait` asked it, so that readiness is still collected
//!   at least on every second `wait`.
//! * **Stream operations** (pipes, sockets, ttys, eventfd …) are tried as a syscall when pushed;
//!   on `EAGAIN` the operation waits for `IN` (reads, recv, accept) or `OUT` (writes, send,
//!   connect) and is retried when the fd reports. Sockets are always used with `MSG_DONTWAIT`;
//!   `Send`/`SendMsg` also get `MSG_NOSIGNAL`. `Connect` waits for `OUT` after `EINPROGRESS` and
//!   completes with `SO_ERROR`. A read (or write) pushed while an older one waits on the same
//!   fd queues behind it, so that they complete in the order they were pushed. A read of
//!   nothing (`Read`/`Readv` of 0 bytes) is a plain `read(2)`/`readv(2)`, which answers at once.
//! * **Multishot receive** (`RecvMulti`): when the socket is readable, the driver receives into
//!   the buffer at the head of the operation's [`BufRing`](crate::BufRing) (`bufring.rs`) and
//!   reports it; an empty ring ends the operation with `-ENOBUFS`, end of stream with `0`.
//! * **Blocking fds** (no `O_NONBLOCK`) must not block the loop thread (I5): a read on a blocking
//!   pipe or tty waits for `IN`, then reads with `preadv2(RWF_NOWAIT)` where the kernel supports
//!   it, else with a plain read, once per readiness report. An accept on a blocking socket
//!   waits for `IN` first too, once the socket is known to listen (`SO_ACCEPTCONN`, asked once
//!   per fd; otherwise `EINVAL` at once, as `accept4(2)` answers). Writes to blocking pipes and
//!   ttys, and connects on blocking sockets, go to the pool.
//! * **Regular files** cannot be polled (epoll refuses them with `EPERM`): their reads and
//!   writes, every positional operation and `Fsync` run on a small thread pool
//!   (module `epoll/files.rs`). That is the honest fallback for files on epoll. Positional reads
//!   first try `preadv2(RWF_NOWAIT)` on the loop thread, which succeeds when the data is cached.
//!   An fd that epoll refuses is treated as always ready, as `poll(2)` does: a one-shot `Poll`
//!   completes at once with the `IN`/`OUT` bits asked for, a multishot one reports them once.
//!
//! # Caveats
//!
//! * `Poll` is **level-triggered**: a multishot `Poll` reports on every `wait` while its
//!   condition holds (io_uring reports once per wake-up). A sysfs/kernfs fd polled for
//!   `PRIORITY` keeps reporting until it is re-read from offset 0.
//! * **`O_NONBLOCK` belongs to the open file description**, shared with every dup and with other
//!   processes. The driver never changes it; it reads it once per fd and caches it with the
//!   fd's class. Change it only while nothing is in flight on the fd, then call
//!   [`Epoll::cancel_fd`] so it is read again.
//! * **Detach before close.** epoll registers the open file description, not the fd number: an
//!   fd closed behind the driver's back while it is registered (and still open in a dup or a
//!   child) keeps reporting, and its cached class, readiness and registration would apply to
//!   whatever reuses the number: a new file there is not in the set, and an operation on it
//!   that has to wait would not hear of its readiness. Close fds with [`Op::Close`], or call
//!   [`Epoll::cancel_fd`] / [`Epoll::forget_fd`] (or [`crate::note_close`], from any thread)
//!   first (I3). What the driver catches on its own: a close count that changed, and, before
//!   an operation queues behind an older one on the same fd, a different file on the number
//!   (one `fstat`): the older operations then end with `ECANCELED` and the new file starts
//!   afresh.
//! * A blocking fd shared with another reader can race: after a readiness report the other
//!   reader may take the data, and a plain `read` (on files without `RWF_NOWAIT` support, such
//!   as ttys) or `accept4` on a blocking fd would then wait. Make such fds non-blocking.
//! * `Recv`/`RecvMsg` with `MSG_WAITALL` return what is there when the fd is ready (they are
//!   issued with `MSG_DONTWAIT`).
//! * A pool job cannot be stopped once it runs: cancelling it waits for its real result, and
//!   [`Epoll::shutdown`] (and drop) block until it returns. A write to a blocking pipe whose
//!   reader never reads, or a blocking connect to a silent host, holds shutdown that long.
//! * `Close` runs `close(2)` on the loop thread (it can linger on a socket with `SO_LINGER`).

mod fds;
mod files;
mod syscalls;
#[cfg(test)]
mod tests;

use std::io;
use std::marker::PhantomData;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::fds::{FdTable, Waiter};
use self::files::FilePool;
use self::syscalls::{Attempt, Route};
use crate::sys::{cvt, to_result};
use crate::waker::WakeFd;
use crate::{BackendInfo, BackendKind, Completion, Config, FdClass, Op, OpId, OpSlab, Waker};

/// The `epoll_event.u64` of the wake-up eventfd (fds use their own number).
const WAKE_TOKEN: u64 = u64::MAX;
/// Events taken from the kernel per `epoll_wait`.
const EVENT_CAPACITY: usize = 256;
/// Connections a multishot accept on a non-blocking listener takes per readiness report.
const ACCEPT_BATCH: usize = 64;
/// The poll bits a `Poll` may wait for (the rest of `events` is ignored).
const POLL_BITS: u32 = (libc::POLLIN
    | libc::POLLPRI
    | libc::POLLOUT
    | libc::POLLRDNORM
    | libc::POLLRDBAND
    | libc::POLLWRNORM
    | libc::POLLWRBAND
    | libc::POLLRDHUP) as u32;
/// Always reported to a `Poll`, whether asked for or not.
const ALWAYS_REPORTED: u32 = (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) as u32;
/// What a file without poll support reports (the kernel's `DEFAULT_POLLMASK`).
const ALWAYS_READY: u32 =
    (libc::POLLIN | libc::POLLOUT | libc::POLLRDNORM | libc::POLLWRNORM) as u32;
/// Error conditions that make a waiting operation retry its syscall (which then reports them).
const ERR_HUP: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
/// The peer shut its side down: reads return 0 at once.
const RDHUP: u32 = libc::EPOLLRDHUP as u32;

/// Where an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for readiness: a waiter in the fd table.
    Waiting,
    /// A `connect` that returned `EINPROGRESS`, waiting for `OUT`.
    Connecting,
    /// On the file pool, queued or running.
    Pool,
    /// Its final completion is in the ready list, not yet returned by `wait`.
    Done,
}

/// An operation in flight.
struct Entry {
    op: Op,
    user_data: u64,
    state: State,
}

/// A completion not yet returned by `wait`.
#[derive(Clone, Copy)]
struct Ready {
    id: OpId,
    result: i32,
    more: bool,
}

/// The epoll driver. `!Send`: it belongs to its loop's thread (I7).
pub struct Epoll {
    info: BackendInfo,
    epfd: OwnedFd,
    wake: Arc<WakeFd>,
    ops: OpSlab<Entry>,
    fds: FdTable,
    /// Completions to return at the end of the next `wait`, in order.
    ready: Vec<Ready>,
    /// The kernel's event buffer, reused (I6).
    events: Vec<libc::epoll_event>,
    pool: FilePool,
    /// Operations in [`State::Pool`].
    pool_jobs: usize,
    /// Buffer for the pool's finished jobs, reused (I6).
    pool_done: Vec<(OpId, i32)>,
    /// Buffer for ids (cancel by fd, shutdown), reused.
    scratch: Vec<OpId>,
    /// Buffer for fds (rebuilding the set), reused.
    scratch_fds: Vec<RawFd>,
    /// `epoll_pwait2` is available (cleared on `ENOSYS`).
    pwait2: bool,
    /// A registration could not be removed (see `FdTable::drop_stale`), or an fd number was
    /// found reused behind the driver's back: rebuild the set.
    rebuild: bool,
    /// The last `wait` asked the kernel for events (see `wait`).
    polled_last: bool,
    /// `Poll` operations in flight.
    polls: usize,
    _not_send: PhantomData<*mut ()>,
}

impl Epoll {
    /// Creates the epoll set and the wake-up eventfd. The pool's threads start on first use.
    ///
    /// # Errors
    ///
    /// `epoll_create1`, `eventfd` or `epoll_ctl` failures (EMFILE, ENFILE, ENOMEM).
    pub fn new(config: &Config, reason: String) -> io::Result<Epoll> {
        // SAFETY: (FFI) epoll_create1 takes no pointers; the result is checked before use.
        let raw = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: (FFI) `raw` is an fd that epoll_create1 just returned and nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let wake = WakeFd::new()?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE_TOKEN,
        };
        // SAFETY: (FFI) `ev` is a live epoll_event that the kernel copies; `raw` and the eventfd
        // are open and ours.
        cvt(unsafe { libc::epoll_ctl(raw, libc::EPOLL_CTL_ADD, wake.fd(), &mut ev) })?;
        Ok(Epoll {
            info: BackendInfo {
                kind: BackendKind::Epoll,
                reason,
            },
            epfd,
            pool: FilePool::new(config.file_threads, Waker::new(Arc::clone(&wake))),
            wake,
            ops: OpSlab::new(),
            fds: FdTable::default(),
            ready: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENT_CAPACITY],
            pool_jobs: 0,
            pool_done: Vec::new(),
            scratch: Vec::new(),
            scratch_fds: Vec::new(),
            pwait2: true,
            rebuild: false,
            polled_last: false,
            polls: 0,
            _not_send: PhantomData,
        })
    }

    /// Replaces the epoll set by a fresh one holding the waker and every registration the table
    /// knows. The only way to drop a registration whose fd number was closed while its file
    /// stays open elsewhere: `EPOLL_CTL_DEL` needs the number. Rare (a caller closed a watched
    /// fd without detaching it first); O(registered fds).
    fn rebuild_set(&mut self) -> io::Result<()> {
        // SAFETY: (FFI) epoll_create1 takes no pointers; the result is checked before use.
        let raw = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: (FFI) `raw` is an fd that epoll_create1 just returned and nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE_TOKEN,
        };
        // SAFETY: (FFI) `ev` is a live epoll_event that the kernel copies; `raw` and the eventfd
        // are open and ours.
        cvt(unsafe { libc::epoll_ctl(raw, libc::EPOLL_CTL_ADD, self.wake.fd(), &mut ev) })?;
        let mut failed = std::mem::take(&mut self.scratch_fds);
        failed.clear();
        for (fd, events) in self.fds.registered() {
            let mut ev = libc::epoll_event {
                events,
                u64: fd as u64,
            };
            // SAFETY: (FFI) `ev` is a live epoll_event that the kernel copies; a number that is no
            // longer open only makes the call fail, which is handled below.
            if unsafe { libc::epoll_ctl(raw, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                failed.push(fd);
            }
        }
        for &fd in &failed {
            self.fds.set_unregistered(fd);
            self.fds.mark_dirty(fd);
        }
        failed.clear();
        self.scratch_fds = failed;
        // A wake-up that raced with the swap is not lost: the eventfd stays readable, and a
        // level-triggered ADD reports a readable fd at once.
        self.epfd = epfd;
        Ok(())
    }

    /// Which driver runs, and why.
    pub fn info(&self) -> &BackendInfo {
        &self.info
    }

    /// Starts `op`; see [`Driver::push`](crate::Driver::push). Non-blocking syscalls are tried
    /// at once; their results are returned by the next [`Epoll::wait`], which then does not
    /// block.
    ///
    /// # Safety
    ///
    /// (I2, I3) Every pointer in `op` must stay valid (the memory unmoved and, for reads, not
    /// otherwise accessed) and `op`'s fd must stay open until the final completion for the returned
    /// id has been returned by [`Epoll::wait`] or [`Epoll::shutdown`]. For `Close`, the fd is
    /// transferred to the driver.
    pub unsafe fn push(&mut self, op: Op, user_data: u64) -> OpId {
        // `start` moves it on: to `Done` (finished at once), `Pool` or `Connecting`.
        let id = self.ops.insert(Entry {
            op,
            user_data,
            state: State::Waiting,
        });
        if matches!(op, Op::Poll { .. }) {
            self.polls += 1;
        }
        // SAFETY: (I2, I3) the caller of `push` keeps `op`'s memory valid and unmoved and its fd
        // open until its final completion, which is what `start` requires.
        unsafe { self.start(id, op) };
        id
    }

    /// Asks `id` to end early; see [`Driver::cancel`](crate::Driver::cancel).
    pub fn cancel(&mut self, id: OpId) -> bool {
        let Some(entry) = self.ops.get(id) else {
            return false;
        };
        match entry.state {
            State::Done => {}
            State::Waiting | State::Connecting => {
                if let Some(fd) = entry.op.fd() {
                    self.fds.remove_waiter(fd, id);
                }
                self.finish(id, -libc::ECANCELED);
            }
            State::Pool => {
                if self.pool.cancel(id) {
                    self.pool_jobs -= 1;
                    self.finish(id, -libc::ECANCELED);
                }
                // Otherwise it runs: its real result is its final completion.
            }
        }
        true
    }

    /// Asks every operation on `fd` to end early and forgets the fd (its class and its epoll
    /// registration, removed at once); returns how many operations were still pending. See
    /// [`Driver::cancel_fd`](crate::Driver::cancel_fd).
    pub fn cancel_fd(&mut self, fd: RawFd) -> usize {
        self.cancel_on_fd(fd, None)
    }

    /// Forgets `fd` before its owner closes it; see [`Driver::forget_fd`](crate::Driver::forget_fd).
    /// Waiters left on it (a caller bug) are cancelled.
    pub fn forget_fd(&mut self, fd: RawFd) {
        self.cancel_on_fd(fd, None);
    }

    /// Waits for completions; see [`Driver::wait`](crate::Driver::wait).
    ///
    /// # Errors
    ///
    /// Unexpected errors of `epoll_wait` itself (never `EINTR`, which returns `Ok`).
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            if self.rebuild {
                self.rebuild = false;
                // On failure (EMFILE) the old set stays; a stale event will ask again.
                let _ = self.rebuild_set();
            }
            self.apply_dirty();
            self.collect_pool();
            if !self.ready.is_empty() && self.polled_last && self.polls == 0 {
                // Completions are there already (operations that finished when pushed): return
                // them without asking the kernel, every other time, so that readiness is still
                // collected at least on every second wait. A request/response connection then
                // costs one epoll_wait per round trip, not two. Not while a `Poll` is in flight:
                // level-triggered polls see, in every wait, each condition that holds.
                self.polled_last = false;
                self.deliver(out);
                return Ok(());
            }
            self.polled_last = true;
            let wait_for = if !self.ready.is_empty() {
                Some(Duration::ZERO)
            } else {
                // A timeout too large for an `Instant` is as good as none.
                deadline.map(|d| d.saturating_duration_since(Instant::now()))
            };
            let blocks = wait_for.is_none_or(|d| !d.is_zero());
            if self.ops.is_empty() && self.ready.is_empty() && !self.rebuild {
                // No operation waits on anything: only a wake-up (or the timeout) can end this
                // wait, and a futex serves that for less (see `WakeFd::futex_sleep`); a wait
                // that must not block has nothing to ask the kernel. Readiness that arrives
                // meanwhile on persistent registrations stays queued in the epoll set for the
                // next `epoll_wait` (the waker's eventfd too, drained then).
                if blocks {
                    self.wake.futex_sleep(wait_for);
                }
                return Ok(());
            }
            // A wake-up that came while running (a pool job that finished since
            // `collect_pool`, a post): do not block (see `WakeFd::sleep`).
            let notified = blocks && !self.wake.sleep();
            let sleeping = blocks && !notified;
            let wait_for = if notified {
                Some(Duration::ZERO)
            } else {
                wait_for
            };
            let waited = syscalls::epoll_wait(
                self.epfd.as_raw_fd(),
                &mut self.events,
                wait_for,
                &mut self.pwait2,
            );
            if sleeping {
                self.wake.awake();
            }
            let n = match waited {
                Ok(n) => n,
                Err(e) => {
                    self.collect_pool();
                    self.deliver(out);
                    return if e.raw_os_error() == Some(libc::EINTR) {
                        Ok(())
                    } else {
                        Err(e)
                    };
                }
            };
            let mut woken = notified;
            for i in 0..n {
                let ev = self.events[i];
                let (token, revents) = (ev.u64, ev.events);
                if token == WAKE_TOKEN {
                    // Drained before the pool's results are collected below, so a job that
                    // finishes after `collect_pool` makes the eventfd readable again.
                    self.wake.drain();
                    woken = true;
                } else {
                    self.on_event(token as RawFd, revents);
                }
            }
            if self.rebuild {
                self.rebuild = false;
                // On failure (EMFILE) the old set stays; the stale event will ask again.
                let _ = self.rebuild_set();
            }
            self.collect_pool();
            let progressed = !self.ready.is_empty();
            self.deliver(out);
            if progressed || woken || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            // Every readiness report ended in EAGAIN (or a clamped millisecond timeout ended):
            // wait again for the rest of the timeout.
        }
    }

    /// A handle that wakes [`Epoll::wait`] from any thread.
    pub fn waker(&self) -> Waker {
        Waker::new(Arc::clone(&self.wake))
    }

    /// Operations pushed whose final completion has not been returned yet.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Cancels everything, blocks until running pool jobs finish, and appends every final
    /// completion to `out`. Afterwards [`Epoll::in_flight`] is 0.
    pub fn shutdown(&mut self, out: &mut Vec<Completion>) {
        let mut ids = mem::take(&mut self.scratch);
        ids.clear();
        ids.extend(self.ops.iter().map(|(id, _)| id));
        for &id in &ids {
            self.cancel(id);
        }
        ids.clear();
        self.scratch = ids;
        if self.pool_jobs > 0 {
            self.pool.wait_idle();
            self.collect_pool();
        }
        self.apply_dirty();
        self.deliver(out);
        debug_assert!(self.ops.is_empty());
    }

    // ---- starting operations ----

    /// Starts the operation `id` (already in the slab as `op`).
    ///
    /// # Safety
    ///
    /// (I2, I3) Every pointer in `op` must stay valid and unmoved, and `op`'s fd open, until the
    /// final completion for `id` has been returned by [`Epoll::wait`] or [`Epoll::shutdown`] (the
    /// contract of [`Epoll::push`]).
    unsafe fn start(&mut self, id: OpId, op: Op) {
        let fd = match op {
            Op::Nop => return self.finish(id, 0),
            Op::Close { fd } => return self.close(id, fd),
            _ => op.fd().unwrap_or(-1),
        };
        let (class, unpollable) = match self.fds.entry(fd) {
            Ok(e) => (e.class.unwrap_or(FdClass::File), e.unpollable),
            Err(e) => return self.finish(id, -e.raw_os_error().unwrap_or(libc::EBADF)),
        };
        if let Op::Poll { events, .. } = op {
            let waiter = Waiter {
                id,
                bits: events & POLL_BITS,
                io: false,
                level: true,
            };
            if !unpollable || self.unpollable_ready(waiter) {
                self.fds.add_waiter(fd, waiter);
            }
            return;
        }
        // SAFETY: (I2, I3) the caller of `start` keeps `op`'s buffer and iovecs valid and its fd
        // open; a zero-length read writes nothing.
        if let Some(r) = unsafe { syscalls::empty_read(&op) } {
            // read(2) of nothing answers at once, whatever the fd holds (as io_uring does).
            return self.finish(id, r);
        }
        match syscalls::route(&op, class) {
            // SAFETY: (I2, I3) the caller of `start` keeps `op`'s memory valid and its fd open
            // until its final completion, which the pool produces only after the job has run or was
            // taken out of the queue.
            Route::Pool => unsafe { self.send_to_pool(id, op) },
            Route::Wait(bits) => {
                if matches!(op, Op::Accept { .. }) && !self.listening(fd) {
                    // accept4 on a socket that does not listen fails at once: waiting for
                    // readiness first would hang on an idle connection.
                    return self.finish(id, -libc::EINVAL);
                }
                let waiter = Waiter {
                    id,
                    bits,
                    io: true,
                    level: true,
                };
                let Some(queued) = self.queue_behind(fd, bits) else {
                    // SAFETY: (I2, I3) `op` is the operation our caller pushed, its memory valid
                    // and its fd open until its final completion, which it has not had; the fd
                    // starts afresh.
                    return unsafe { self.start(id, op) };
                };
                // SAFETY: (I2, I3, I5) the caller of `start` keeps `op`'s memory valid and its fd
                // open until its final completion; `attempt` never blocks the loop thread (see
                // `syscalls`).
                if queued || unsafe { self.drive(id, class, false) } {
                    self.fds.add_waiter(fd, waiter);
                }
            }
            Route::Now(bits) => {
                // An older operation for the same direction goes first (order of completion =
                // order of push for reads, and for writes, on one fd).
                let Some(queued) = self.queue_behind(fd, bits) else {
                    // SAFETY: (I2, I3) `op` is the operation our caller pushed, its memory valid
                    // and its fd open until its final completion, which it has not had; the fd
                    // starts afresh.
                    return unsafe { self.start(id, op) };
                };
                let Some(entry) = self.fds.get_mut(fd) else {
                    return self.finish(id, -libc::EBADF);
                };
                entry.use_for_io();
                // With the edge-triggered registration in place, readiness known to be gone
                // is waited for without a syscall that would say EAGAIN.
                let known_not_ready =
                    entry.edge_triggered() && entry.ready & (bits | ERR_HUP | RDHUP) == 0;
                // SAFETY: (I2, I3, I5) the caller of `start` keeps `op`'s memory valid and its fd
                // open until its final completion; `attempt` never blocks the loop thread (see
                // `syscalls`).
                if queued || known_not_ready || unsafe { self.drive(id, class, false) } {
                    // A multishot accept may stop after a batch with connections left: it
                    // needs to hear again of what is still there.
                    self.add_io_waiter(fd, id, bits, op.is_multishot());
                }
            }
        }
    }

    /// Whether the (blocking) socket `fd` listens; asked once per fd, then remembered.
    fn listening(&mut self, fd: RawFd) -> bool {
        let Some(entry) = self.fds.get_mut(fd) else {
            return true;
        };
        if !entry.listening {
            entry.listening = syscalls::is_listening(fd);
        }
        entry.listening
    }

    /// Whether a new I/O operation for `bits` on `fd` must queue behind an older one. Slow path:
    /// before queueing, checks (one `fstat`) that the number still names the file the older
    /// operations wait on; if it was closed and reused behind the driver's back, they end with
    /// `ECANCELED` (as if the number had been detached) and `None` says to start the new
    /// operation afresh.
    fn queue_behind(&mut self, fd: RawFd, bits: u32) -> Option<bool> {
        if !self.fds.has_io_waiter(fd, bits) {
            return Some(false);
        }
        if self.fds.same_file(fd) {
            return Some(true);
        }
        self.number_reused(fd);
        None
    }

    /// `fd`'s number was closed and reused behind the driver's back (noticed by
    /// [`Epoll::queue_behind`]): its waiters (of the old file) end with `ECANCELED`, what was
    /// known about it is dropped, and the set is rebuilt if the old file was registered (it may
    /// still be open elsewhere, reporting under this number). The next operation on it computes
    /// its class anew.
    fn number_reused(&mut self, fd: RawFd) {
        if let Some(entry) = self.fds.get_mut(fd) {
            let mut waiters = mem::take(&mut entry.waiters);
            for w in waiters.drain(..) {
                self.finish(w.id, -libc::ECANCELED);
            }
            if let Some(entry) = self.fds.get_mut(fd) {
                entry.waiters = waiters;
            }
        }
        if self.fds.invalidate(fd) {
            self.rebuild = true;
        }
    }

    /// `fd` was just handed out by the kernel (an accepted connection): whatever the table knew
    /// under that number belongs to a file that was closed behind the driver's back (a
    /// connection dropped without `Close`, `cancel_fd` or a close count), so it is dropped as
    /// [`Epoll::number_reused`] does. This keeps the common server pattern (drop a connection,
    /// accept the next one under the same number) safe with persistent registrations.
    fn fresh_number(&mut self, fd: i32) {
        // A changed close count means the close went through fdloop: the next use of the
        // number refreshes its entry (`FdTable::entry`) without rebuilding the set.
        let stale =
            |e: &fds::FdEntry| e.class.is_some() && e.closes == crate::fdclass::close_count(fd);
        if fd >= 0 && self.fds.get_mut(fd).is_some_and(|e| stale(e)) {
            self.number_reused(fd);
        }
    }

    /// Parks the I/O operation `id` on `fd` until `bits` (or an error) is reported. An fd that
    /// has reported an error or a hang-up gets a level-triggered registration while the
    /// operation waits, so that a condition reported before the operation was pushed still
    /// reaches it (a pty master whose slave is gone reports HUP but never OUT). `level` asks for
    /// a level-triggered registration anyway.
    fn add_io_waiter(&mut self, fd: RawFd, id: OpId, bits: u32, level: bool) {
        let level = level || self.fds.get_mut(fd).is_some_and(|e| e.ready & ERR_HUP != 0);
        self.fds.add_waiter(
            fd,
            Waiter {
                id,
                bits,
                io: true,
                level,
            },
        );
    }

    /// Runs the syscall of the waiting (or just pushed) I/O operation `id` without blocking;
    /// returns `true` when it must (keep) waiting for readiness. A multishot accept reports each
    /// new connection and goes on.
    ///
    /// # Safety
    ///
    /// (I2, I3) `id`'s operation was pushed with its memory valid and unmoved and its fd open until
    /// its final completion, which it has not had yet.
    unsafe fn drive(&mut self, id: OpId, class: FdClass, ready: bool) -> bool {
        let Some(entry) = self.ops.get(id) else {
            return false;
        };
        let op = entry.op;
        let connecting = entry.state == State::Connecting;
        let multishot = op.is_multishot();
        // More than one accept per report only where accept4 cannot block.
        let rounds = if multishot && class.is_nonblocking() {
            ACCEPT_BATCH
        } else {
            1
        };
        for _ in 0..rounds {
            // SAFETY: (I2, I3, I5) `op`'s memory stays valid and its fd open until its final
            // completion (our caller's promise); `attempt` never blocks the loop thread: it only
            // reads blocking fds after readiness (`ready`) or with RWF_NOWAIT.
            let attempt = unsafe { syscalls::attempt(&op, class, ready, connecting) };
            // SAFETY: (I2) `op`'s iovecs and msghdr stay valid until its final completion, which
            // has not happened yet (our caller's promise).
            unsafe { self.note_attempt(&op, attempt) };
            if let (Op::Accept { .. }, Attempt::Done(new_fd)) = (&op, attempt) {
                self.fresh_number(new_fd);
            }
            match attempt {
                Attempt::Done(r) if multishot && op.goes_on_after(r) => {
                    self.report(id, r);
                    // A short receive drained the socket: wait for the next edge rather than
                    // try a receive that would say EAGAIN.
                    let dir = syscalls::direction(&op);
                    let fd = op.fd().unwrap_or(-1);
                    if dir != 0 && self.fds.get_mut(fd).is_some_and(|e| e.ready & dir == 0) {
                        return true;
                    }
                }
                Attempt::Done(r) => {
                    self.finish(id, r);
                    return false;
                }
                Attempt::Again => return true,
                Attempt::InProgress => {
                    self.set_state(id, State::Connecting);
                    return true;
                }
            }
        }
        true
    }

    /// Updates the readiness known for `op`'s fd after an attempt: `EAGAIN` clears the bits the
    /// operation needs; a short read (or write) of a stream socket or pipe shows it drained
    /// (or full), as tokio and mio assume, so that the next operation waits for the next edge
    /// instead of trying a syscall that would say `EAGAIN`.
    ///
    /// # Safety
    ///
    /// (I2) `op`'s iovecs and msghdr are valid for reads.
    unsafe fn note_attempt(&mut self, op: &Op, attempt: Attempt) {
        let Some(fd) = op.fd() else {
            return;
        };
        let Some(entry) = self.fds.get_mut(fd) else {
            return;
        };
        match attempt {
            Attempt::Again => {
                entry.ready &= !syscalls::direction(op);
            }
            Attempt::Done(r) if r > 0 && entry.short_read_drains => {
                // A multishot receive packs the buffer id with the byte count.
                let n = match op {
                    Op::RecvMulti { .. } => crate::bufring::unpack(r).1 as i32,
                    _ => r,
                };
                // SAFETY: (I2) `op`'s iovecs, msghdr and buffer ring are valid for reads (our
                // caller's promise).
                if let Some((bits, asked)) = unsafe { syscalls::stream_transfer(op) } {
                    if (n as usize) < asked {
                        entry.ready &= !bits;
                    }
                }
            }
            Attempt::Done(_) | Attempt::InProgress => {}
        }
    }

    /// Sends `op` to the file pool (after the cached-read fast path).
    ///
    /// # Safety
    ///
    /// (I2, I3) `op` was pushed with its memory valid and unmoved and its fd open until its final
    /// completion, which it has not had yet.
    unsafe fn send_to_pool(&mut self, id: OpId, op: Op) {
        // SAFETY: (I2, I3, I5) `op`'s memory is valid and its fd open (our caller's promise); a
        // RWF_NOWAIT read does not block the loop thread.
        if let Some(r) = unsafe { syscalls::file_read_nowait(&op) } {
            return self.finish(id, r);
        }
        // SAFETY: (I2, I3) `op`'s memory stays valid and its fd open until its final completion,
        // which `collect_pool` produces only after the job has run, or `cancel` after it was taken
        // out of the queue.
        match unsafe { self.pool.submit(id, op) } {
            Ok(()) => {
                self.set_state(id, State::Pool);
                self.pool_jobs += 1;
                if let Some(e) = op.fd().and_then(|fd| self.fds.get_mut(fd)) {
                    e.pool_jobs += 1;
                }
            }
            Err(e) => self.finish(id, -e.raw_os_error().unwrap_or(libc::EAGAIN)),
        }
    }

    /// `Op::Close`: ends what is still on the fd (a caller bug), forgets the fd, closes it.
    fn close(&mut self, id: OpId, fd: RawFd) {
        self.cancel_on_fd(fd, Some(id));
        // SAFETY: (I3, FFI) the fd was transferred to us by the `Close` operation and nothing of
        // ours uses it any more: its operations were just cancelled and its registration removed.
        let r = unsafe { libc::close(fd) };
        self.finish(id, to_result(r as isize));
    }

    /// Cancels every operation on `fd` except `except` and forgets the fd; returns how many
    /// operations were still pending.
    fn cancel_on_fd(&mut self, fd: RawFd, except: Option<OpId>) -> usize {
        let mut ids = mem::take(&mut self.scratch);
        ids.clear();
        if let Some(entry) = self.fds.get_mut(fd) {
            ids.extend(entry.waiters.iter().map(|w| w.id));
            if entry.pool_jobs > 0 {
                // Rare (files, blocking writes): a scan of the slab.
                ids.extend(
                    self.ops
                        .iter()
                        .filter(|(_, e)| e.state == State::Pool && e.op.fd() == Some(fd))
                        .map(|(id, _)| id),
                );
            }
        }
        ids.retain(|&id| Some(id) != except);
        let n = ids.len();
        for &id in &ids {
            self.cancel(id);
        }
        ids.clear();
        self.scratch = ids;
        self.fds.forget(self.epfd.as_raw_fd(), fd);
        n
    }

    /// For a waiter on an fd that cannot be polled (always ready): a `Poll` reports the
    /// `IN`/`OUT` bits it asked for (one-shot: completes; multishot: reports once and stays
    /// parked), other operations move to the pool. Returns whether the waiter stays parked.
    fn unpollable_ready(&mut self, w: Waiter) -> bool {
        let Some(entry) = self.ops.get(w.id) else {
            return false;
        };
        match entry.op {
            Op::Poll {
                events, multishot, ..
            } => {
                let mask = events & ALWAYS_READY;
                if mask == 0 {
                    true
                } else if multishot {
                    self.report(w.id, mask as i32);
                    true
                } else {
                    self.finish(w.id, mask as i32);
                    false
                }
            }
            op => {
                // SAFETY: (I2, I3) the operation was pushed with its memory valid and its fd open
                // until its final completion, and it is still in flight.
                unsafe { self.send_to_pool(w.id, op) };
                false
            }
        }
    }

    // ---- waiting ----

    /// Brings the epoll registrations of dirty fds up to date.
    fn apply_dirty(&mut self) {
        let epfd = self.epfd.as_raw_fd();
        while let Some(fd) = self.fds.pop_dirty() {
            if let Err(errno) = self.fds.sync(epfd, fd) {
                self.registration_failed(fd, errno);
            }
        }
    }

    /// `epoll_ctl` refused `fd`: with `EPERM` the file cannot be polled and counts as always
    /// ready; with anything else (`EBADF` …) its waiters complete with the error.
    fn registration_failed(&mut self, fd: RawFd, errno: i32) {
        let Some(entry) = self.fds.get_mut(fd) else {
            return;
        };
        let mut waiters = mem::take(&mut entry.waiters);
        if errno == libc::EPERM {
            entry.unpollable = true;
            // Its reads and writes now go to the pool.
            entry.class = Some(FdClass::File);
            waiters.retain(|&w| self.unpollable_ready(w));
            if let Some(entry) = self.fds.get_mut(fd) {
                entry.waiters = waiters;
            }
        } else {
            for w in waiters.drain(..) {
                self.finish(w.id, -errno);
            }
            if let Some(entry) = self.fds.get_mut(fd) {
                entry.waiters = waiters;
            }
            self.fds.forget(self.epfd.as_raw_fd(), fd);
        }
    }

    /// `fd` reported `revents`: polls report, other waiters retry their syscall.
    fn on_event(&mut self, fd: RawFd, revents: u32) {
        let Some(entry) = self.fds.get_mut(fd) else {
            return;
        };
        if entry.class.is_some() {
            entry.update_ready(revents);
        }
        let Some(class) = entry.class.filter(|_| !entry.waiters.is_empty()) else {
            if entry.class.is_some() && entry.edge_triggered() {
                // An idle fd with its persistent registration: the readiness is noted above.
                return;
            }
            // Only a caller who closed a registered fd behind our back gets here (I3).
            if self.fds.drop_stale(self.epfd.as_raw_fd(), fd) {
                self.rebuild = true;
            }
            return;
        };
        let mut waiters = mem::take(&mut entry.waiters);
        // Readiness bits already used up in this round (an attempt said EAGAIN, or a blocking
        // fd was read once): other waiters for them wait for the next report.
        let mut used = 0u32;
        let before = waiters.len();
        waiters.retain(|&w| self.on_ready(w, class, revents, &mut used));
        let changed = waiters.len() != before;
        if let Some(entry) = self.fds.get_mut(fd) {
            debug_assert!(entry.waiters.is_empty());
            entry.waiters = waiters;
        }
        if changed {
            self.fds.mark_dirty(fd);
        }
    }

    /// One waiter of an fd that reported `revents`; returns whether it keeps waiting.
    fn on_ready(&mut self, w: Waiter, class: FdClass, revents: u32, used: &mut u32) -> bool {
        let Some(entry) = self.ops.get(w.id) else {
            return false;
        };
        let op = entry.op;
        if let Op::Poll {
            events, multishot, ..
        } = op
        {
            let result = revents & (events | ALWAYS_REPORTED);
            if result == 0 {
                return true;
            }
            if multishot {
                self.report(w.id, result as i32);
                return true;
            }
            self.finish(w.id, result as i32);
            return false;
        }
        if revents & (w.bits | ERR_HUP) == 0 || *used & w.bits != 0 {
            return true;
        }
        // SAFETY: (I2, I3, I5) the operation was pushed with its memory valid and its fd open until
        // its final completion, and it is still in flight; the fd has just reported readiness, so a
        // blocking fd is read at most once here (see `used`) and the read does not block the loop
        // thread.
        let mut keep = unsafe { self.drive(w.id, class, true) };
        if keep && revents & w.bits == 0 && revents & ERR_HUP != 0 {
            // A hang-up (or error) without the readiness the operation needs, and the syscall
            // still says EAGAIN: a pty master whose slave side is gone reports POLLHUP but never
            // POLLOUT. Level-triggered epoll would report it forever: end the operation.
            let result = if w.bits & syscalls::OUT != 0 {
                -libc::EPIPE
            } else {
                -libc::EIO
            };
            self.finish(w.id, result);
            keep = false;
        }
        if keep || matches!(syscalls::route(&op, class), Route::Wait(_)) {
            *used |= w.bits;
        }
        keep
    }

    /// Moves the pool's finished jobs to the ready list.
    fn collect_pool(&mut self) {
        if self.pool_jobs == 0 {
            return;
        }
        self.pool.take_done(&mut self.pool_done);
        let mut done = mem::take(&mut self.pool_done);
        for &(id, result) in &done {
            self.pool_jobs -= 1;
            self.finish(id, result);
        }
        done.clear();
        self.pool_done = done;
    }

    /// Appends the ready completions to `out`, freeing the slots of final ones.
    fn deliver(&mut self, out: &mut Vec<Completion>) {
        for r in self.ready.drain(..) {
            let Some(entry) = self.ops.get(r.id) else {
                continue;
            };
            out.push(Completion {
                user_data: entry.user_data,
                result: r.result,
                more: r.more,
            });
            if !r.more {
                if matches!(entry.op, Op::Poll { .. }) {
                    self.polls -= 1;
                }
                self.ops.remove(r.id);
            }
        }
    }

    // ---- bookkeeping ----

    /// Queues the final completion of `id`.
    fn finish(&mut self, id: OpId, result: i32) {
        if let Some(e) = self.ops.get_mut(id) {
            if e.state == State::Pool {
                if let Some(f) = e.op.fd().and_then(|fd| self.fds.get_mut(fd)) {
                    f.pool_jobs -= 1;
                }
            }
            e.state = State::Done;
        }
        self.ready.push(Ready {
            id,
            result,
            more: false,
        });
    }

    /// Queues a `more` completion of the multishot operation `id`.
    fn report(&mut self, id: OpId, result: i32) {
        self.ready.push(Ready {
            id,
            result,
            more: true,
        });
    }

    fn set_state(&mut self, id: OpId, state: State) {
        if let Some(e) = self.ops.get_mut(id) {
            e.state = state;
        }
    }
}

impl Drop for Epoll {
    /// Cancels and waits for whatever is in flight (discarding the completions); the pool then
    /// stops and joins its threads.
    fn drop(&mut self) {
        if !self.ops.is_empty() {
            let mut discard = Vec::new();
            self.shutdown(&mut discard);
        }
    }
}

impl std::fmt::Debug for Epoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoll")
            .field("info", &self.info)
            .field("epfd", &self.epfd.as_raw_fd())
            .field("in_flight", &self.ops.len())
            .finish()
    }
}
