//! The io_uring driver.
//!
//! # Mechanism
//!
//! One ring per loop, created in the loop's thread. [`Uring::push`] turns an [`Op`] into one SQE
//! and only queues it: the SQ is handed to the kernel by the next [`Uring::wait`], which submits,
//! waits and reaps in a single `io_uring_enter` in steady state (a full SQ is submitted early so
//! that no SQE is ever lost).
//!
//! * **Setup.** The ring is built with `SINGLE_ISSUER | DEFER_TASKRUN | SUBMIT_ALL` (+ `CQSIZE`,
//!   `CLAMP`); EINVAL retries with `COOP_TASKRUN | TASKRUN_FLAG | SUBMIT_ALL`, then with no
//!   optional flag; ENOMEM retries with a ring half the size, down to 8 entries. The kernel must
//!   offer `FEAT_NODROP`, `FEAT_SUBMIT_STABLE`, `FEAT_FAST_POLL` and `FEAT_EXT_ARG`, and
//!   `IORING_REGISTER_PROBE` must list every opcode the driver emits; otherwise [`Uring::new`]
//!   fails with an error for which [`is_unavailable`] is true and that names what is missing.
//!   Multishot poll (5.13), multishot accept and cancel-by-fd (5.19) are detected by asking
//!   the kernel at setup and emulated where missing.
//! * **Identity.** The ring `user_data` of an operation's request is its [`OpId`] (slab index +
//!   generation). Its state stays in the slab until its final CQE has been seen, so an id is
//!   never reused while the kernel may still answer to it (I1, I4). A few values at the very top
//!   of the `u64` range are reserved (cancel requests, the waker's poll, setup probes): a slab
//!   index never gets that high.
//! * **Flow control.** Operations are not capped by the CQ size: a cap would let operations that
//!   never complete (idle reads on 10,000 connections, polls) hold every slot and starve the
//!   operations queued behind them. The kernel's `NODROP` keeps CQEs that do not fit the CQ, the
//!   driver enters with `GETEVENTS` on every wait, which flushes them, and multishot requests
//!   that an overflow ended are re-armed. A FIFO backlog in user space holds only what a full SQ
//!   could not take; it is submitted on the next wait.
//! * **Multishot.** A multishot poll or accept reports with `more == true`. A CQE without
//!   `F_MORE` but with a non-negative result (the kernel ended it, e.g. on CQ overflow) is
//!   reported with `more == true` too and the request is re-armed, unless the operation was
//!   cancelled (then that CQE is its final completion). A negative result is final. Where the
//!   kernel lacks multishot, a one-shot request is re-armed after each event; so is an accept
//!   that asks for the peer address (the kernel's multishot accept cannot fill one). That one
//!   is re-armed by the next `wait`, after `*addrlen` is reset to its value at `push`: the
//!   address of a reported connection stays readable until the caller waits again.
//! * **Buffer rings.** [`Uring::register_buf_ring`] registers a [`BufRing`](crate::BufRing) as
//!   a provided-buffer ring (`IORING_REGISTER_PBUF_RING`) under a buffer group of its own.
//!   [`Op::RecvMulti`] is a multishot `RECV` with `BUFFER_SELECT` on that group: each CQE with
//!   data is reported with `more == true` and its buffer id packed into the result. Data never
//!   rides on the final completion: a CQE with data but without `F_MORE` is reported and the
//!   request re-armed (or, when cancelled, followed by a final `-ECANCELED`). End of stream is
//!   a final `0` (a buffer picked for it goes straight back to the ring); an empty ring ends
//!   the request with `-ENOBUFS`, the data staying in the socket for the caller's next push.
//!   Before Linux 6.0 (no multishot receive, detected at setup) the ring is not registered:
//!   `RecvMulti` is a one-shot `POLL_ADD` re-armed after each report, and the driver receives
//!   into the ring's head buffer in user space, as the epoll driver does.
//! * **Batch wait** (`Config::batch_wait`, `IORING_FEAT_MIN_TIMEOUT`): a blocking wait that
//!   submits `n` SQEs asks for `2n` CQEs with `min_wait_usec`, so that a request/response loop
//!   submits and sleeps until the next requests in one enter. Not used when the wait must end
//!   sooner than the minimum (timers stay on time); an `-ETIME` with nothing reaped waits on.
//! * **Retries.** `-EINTR` re-issues the operation. `-EAGAIN` (an `O_NONBLOCK` fd, unless the
//!   caller passed `MSG_DONTWAIT`) arms an internal one-shot `POLL_ADD` in the operation's
//!   direction under the same `user_data`, and re-issues the operation when it fires. A connect
//!   answering `-EINPROGRESS` waits for writability and then reads `SO_ERROR`. The caller sees
//!   only the final result.
//! * **ttys.** An io_uring read on a tty waits in a kernel worker instead of returning EAGAIN,
//!   so `Read`/`Readv` (and `Write`/`Writev` on an `O_NONBLOCK` tty) without an offset on a tty
//!   go through `POLL_ADD` and, when it fires, a `read`/`write` (`readv`/`writev`) done by the
//!   driver; `-EAGAIN` polls again. A write to a blocking tty uses the native write. The fd's
//!   kind ([`FdClass`]) is looked up on first use and cached until [`Uring::cancel_fd`] or a
//!   `Close` on that fd: callers must cancel_fd (or close through the driver) before an fd
//!   number is reused. On a *blocking* tty, the `read` after a poll could block if another
//!   reader took the data first; give the loop its own non-blocking tty fd.
//! * **PRIORITY on sockets.** io_uring does not wake a poll on a socket's urgent data unless
//!   `POLLIN` is asked too, and reports the wake-up's key rather than the socket's state (a
//!   socket wake-up always carries `POLLPRI`, so normal data looks urgent). A `Poll` asking
//!   for `PRIORITY` on a socket is therefore armed as a multishot `events | POLLIN` poll, and
//!   each of its CQEs is checked with a zero-timeout `poll(2)` for the requested events: only
//!   a real answer is reported (a one-shot one cancels its kernel request and reports when
//!   that has ended). Normal traffic costs one `poll(2)` per wake-up meanwhile. kernfs/sysfs
//!   `POLLPRI` notifications need none of this. Such a `Poll` looks up the fd's kind too.
//! * **Waker.** An eventfd watched by a multishot `POLL_ADD` (re-armed when a CQE lacks
//!   `F_MORE`). Its CQEs end a wait but never appear among the completions. The multishot poll
//!   reports every `write`, so the counter is not read back; it is drained before the poll is
//!   re-armed. Blocking enters are bracketed by `WakeFd::sleep` / `WakeFd::awake`, so that
//!   wakers write only while the driver sleeps.
//! * **Signals.** A signal ends a blocked wait with EINTR, which `wait` reports as a normal
//!   return. When the same `io_uring_enter` also submitted SQEs, the kernel reports the
//!   submission count instead of EINTR and the driver cannot tell; it then waits on. Signal
//!   handlers should therefore also wake the loop through its [`Waker`], as fdloop's do.
//!
//! # Cancellation
//!
//! Cancellation is a request. An operation still in the backlog ends at once with `-ECANCELED`
//! (reported by the next `wait`, which then does not block). One in the kernel gets an
//! `ASYNC_CANCEL` for its `user_data` ([`Uring::cancel_fd`] too sends one per operation: a cancel
//! by fd number would match nothing once the number is closed, or another file's operations
//! once it is reused), and is marked so that it is never retried nor
//! re-armed. Its own final CQE decides the result: `-ECANCELED`, or the real result when the
//! operation won the race (data read, a connection accepted: the caller must adopt or close
//! it). An operation waiting in its internal poll ends with `-ECANCELED`. A cancel CQE
//! answering `-ENOENT` or `-EALREADY` only means the target's CQE comes (or came) on its own.
//!
//! # Shutdown
//!
//! [`Uring::shutdown`] (and `Drop`, when something is still in flight) cancels everything and
//! enters the ring until every operation has reported its final completion: only then may the
//! memory they use be freed (I2). Operations in the native kernel paths are cancellable, so
//! this ends; an operation stuck in an uninterruptible kernel state keeps it waiting (cancels
//! are re-sent periodically). A hang there is preferred to a use-after-free.
//!
//! # Kernel caveats
//!
//! * `SINGLE_ISSUER`: only the creating thread may submit; [`Uring`] is `!Send`.
//! * With `DEFER_TASKRUN`, completions exist only after an `io_uring_enter` with `GETEVENTS`;
//!   the driver always enters with it and never concludes "nothing completed" from a CQ peek.
//! * CQ overflow silently ends multishot requests; they are re-armed as described above.
//! * Requests belong to the submitting thread: if it exits, they end with `-ECANCELED`.
//! * **fork**: the ring's mappings are marked `MADV_DONTFORK`, and the ring fd is close-on-exec.
//!   A child of `fork()` must not use (or drop) the parent's driver: the mappings do not exist
//!   there and any access faults. Spawn children with `posix_spawn`/`Command`, or fork and exec
//!   without running loop code in between.

mod ops;
mod setup;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, EnterFlags, IoUring};

use crate::waker::WakeFd;
use crate::{BackendInfo, BackendKind, Completion, Config, FdClass, Op, OpId, OpSlab, Waker};
use ops::{Action, OpState, Stage, Step};
use setup::Features;

/// `user_data` of cancel requests; their CQEs are ignored.
const CANCEL_UD: u64 = u64::MAX;
/// `user_data` of the waker's poll.
const WAKER_UD: u64 = u64::MAX - 1;
/// The lowest reserved `user_data` (see also `setup::PROBE_*_UD`). An `OpId` packs a slab index
/// in the low 32 bits; the slab never holds `u32::MAX - 4` entries, so ids stay below.
const RESERVED_MIN: u64 = u64::MAX - 4;

/// How often `shutdown` re-sends cancels while nothing completes.
const SHUTDOWN_TICK: Duration = Duration::from_millis(100);
/// Quiet ticks of `shutdown` between re-sent cancels.
const SHUTDOWN_RECANCEL_TICKS: u32 = 10;

/// A cancel request waiting for room in the SQ.
#[derive(Clone, Copy, Debug)]
enum Cancel {
    /// The request whose `user_data` is this.
    Op(u64),
}

impl Cancel {
    fn sqe(self) -> squeue::Entry {
        let entry = match self {
            Cancel::Op(ud) => opcode::AsyncCancel::new(ud).build(),
        };
        entry.user_data(CANCEL_UD)
    }
}

/// How long a `wait` may block.
#[derive(Clone, Copy)]
enum Limit {
    /// Not at all.
    Now,
    /// Until this instant.
    Until(Instant),
    /// Until something happens.
    Forever,
}

/// The io_uring driver of one loop. See the [module docs](self).
pub struct Uring {
    /// Boxed: the ring's bookkeeping is large, and `Driver` should not carry it inline.
    ring: Box<IoUring>,
    info: BackendInfo,
    features: Features,
    /// Every operation whose final completion has not been returned yet.
    ops: OpSlab<OpState>,
    /// Operations waiting for room in the ring, oldest first. May hold stale ids (operations
    /// cancelled meanwhile), which are skipped.
    backlog: VecDeque<OpId>,
    /// Cancel requests that did not fit in the SQ; while any waits, operations wait too, so
    /// that a cancel by fd cannot hit an operation pushed after it.
    cancels: VecDeque<Cancel>,
    /// Operations ended in user space, to be reported by the next `wait`.
    ready: Vec<OpId>,
    /// Multishot accepts with a peer address, re-armed by the next `wait` (not earlier: the
    /// caller reads the address of the connection just reported until then).
    deferred: Vec<OpId>,
    /// Operation requests in the SQ or the kernel (the waker and cancels not counted).
    in_kernel: usize,
    /// The most operation requests allowed in the kernel at once.
    limit: usize,
    /// `FdClass` per fd number, computed on first use by a tty-eligible operation or a
    /// `PRIORITY` poll.
    classes: Vec<Option<(FdClass, u32)>>,
    wake: Arc<WakeFd>,
    /// The waker's poll is in the SQ or the kernel.
    waker_armed: bool,
    /// Reaped CQEs (reused; capacity = CQ size).
    cqes: Vec<cqueue::Entry>,
    /// Reused list for `cancel_fd` and `shutdown`.
    scratch: Vec<OpId>,
    /// Buffer groups given back by `unregister_buf_ring`, and the next never-used one.
    free_groups: Vec<u16>,
    next_group: u16,
    /// `Config::batch_wait` in µs where the kernel has `IORING_FEAT_MIN_TIMEOUT`, else 0.
    batch_wait_us: u32,
    _not_send: PhantomData<*mut ()>,
}

impl Uring {
    /// Builds the ring in the calling thread; see the module docs for the setup sequence.
    ///
    /// # Errors
    ///
    /// * io_uring unavailable ([`is_unavailable`] is true): setup refused (ENOSYS, EPERM,
    ///   EOPNOTSUPP, EACCES, EINVAL after the retries), a required feature or opcode missing;
    /// * resources: ENOMEM at the smallest ring, EMFILE, ENFILE.
    pub fn new(config: &Config) -> io::Result<Uring> {
        let wake = WakeFd::new()?;
        let setup::Ring { mut ring, flags } = setup::create(config)?;
        setup::check_features(&ring)?;
        setup::probe_opcodes(&ring)?;
        let (features, waker_armed) = setup::detect(&mut ring, wake.fd(), WAKER_UD);
        let sq = ring.params().sq_entries();
        let cq = ring.params().cq_entries();
        let batch_wait_us = match config.batch_wait {
            Some(d) if ring.params().is_feature_min_timeout() => {
                u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)
            }
            _ => 0,
        };
        let reason = format!(
            "io_uring available (setup flags {flags}, {sq} SQ / {cq} CQ entries; {})",
            features.describe()
        );
        let mut uring = Uring {
            ring: Box::new(ring),
            info: BackendInfo {
                kind: BackendKind::Uring,
                reason,
            },
            features,
            ops: OpSlab::new(),
            backlog: VecDeque::new(),
            cancels: VecDeque::new(),
            ready: Vec::new(),
            deferred: Vec::new(),
            in_kernel: 0,
            // No cap by CQ size: operations that never complete (idle reads, polls) would hold
            // the slots and starve everything queued behind them. NODROP keeps overflowed CQEs.
            limit: usize::MAX,
            classes: Vec::new(),
            wake,
            waker_armed,
            cqes: Vec::with_capacity(cq as usize),
            scratch: Vec::new(),
            free_groups: Vec::new(),
            next_group: 0,
            batch_wait_us,
            _not_send: PhantomData,
        };
        if !uring.waker_armed {
            uring.arm_waker();
        }
        Ok(uring)
    }

    /// Which driver runs, and why.
    pub fn info(&self) -> &BackendInfo {
        &self.info
    }

    /// Queues `op`; see [`crate::Driver::push`]. No syscall, except when the SQ is full (then
    /// it is submitted) and on the first tty-eligible operation on an fd (its kind is looked up).
    ///
    /// # Safety
    ///
    /// (I2, I3) Every pointer in `op` must stay valid (and the memory unmoved and, for reads, not
    /// otherwise accessed), and its fd open, until the final completion for the returned id has
    /// been returned by [`Uring::wait`] or [`Uring::shutdown`]. For `Close`, the fd is
    /// transferred to the driver.
    pub unsafe fn push(&mut self, op: Op, user_data: u64) -> OpId {
        let mut st = OpState::new(op, user_data);
        st.tty = self.driven_by_poll(&op)
            || (matches!(op, Op::RecvMulti { .. }) && !self.features.multishot_recv);
        if st.tty {
            st.step = Step::Poll;
        }
        st.pri_check = match op {
            Op::Poll { fd, events, .. }
                if events & crate::interest::PRIORITY != 0 && self.features.multishot_poll =>
            {
                matches!(self.class_of(fd), Some(FdClass::Socket { .. }))
            }
            _ => false,
        };
        if let Op::Close { fd } = op {
            self.forget_class(fd);
        }
        st.addr_cap = match op {
            Op::Accept {
                multishot: true,
                addr,
                addrlen,
                ..
            } if !addr.is_null() && !addrlen.is_null() => {
                // SAFETY: (I2) the caller of `push` keeps `addrlen`, when non-null, valid and
                // unmoved until the accept's final completion, so it can be read here.
                unsafe { addrlen.read() }
            }
            _ => 0,
        };
        let bad_offset = match op {
            Op::Read { offset, .. }
            | Op::Write { offset, .. }
            | Op::Readv { offset, .. }
            | Op::Writev { offset, .. } => offset.is_some_and(|o| o > i64::MAX as u64),
            _ => false,
        };
        if bad_offset {
            // pread/pwrite answer EINVAL for a negative offset; io_uring would read u64::MAX
            // as "the current position".
            st.stage = Stage::Ready(-libc::EINVAL);
            let id = self.ops.insert(st);
            self.ready.push(id);
            return id;
        }
        if self.positional_on_a_stream(&op) {
            // pread/pwrite answer ESPIPE here; io_uring would ignore the offset and read the
            // stream, so answer like the syscall (and like the epoll driver) does.
            st.stage = Stage::Ready(-libc::ESPIPE);
            let id = self.ops.insert(st);
            self.ready.push(id);
            return id;
        }
        let id = self.ops.insert(st);
        if self.backlog.is_empty() {
            self.issue(id);
        } else {
            self.backlog.push_back(id);
        }
        id
    }

    /// Asks operation `id` to end early; see [`crate::Driver::cancel`].
    pub fn cancel(&mut self, id: OpId) -> bool {
        let Some(st) = self.ops.get_mut(id) else {
            return false;
        };
        if st.cancelled {
            return true;
        }
        st.cancelled = true;
        match st.stage {
            Stage::Backlog => {
                st.stage = Stage::Ready(-libc::ECANCELED);
                self.ready.push(id);
            }
            Stage::Kernel => self.push_cancel(Cancel::Op(id.to_u64())),
            Stage::Ready(_) => {}
        }
        true
    }

    /// Asks every operation on `fd` to end early and forgets the fd's cached kind; see
    /// [`crate::Driver::cancel_fd`]. Returns how many operations were asked (including ones
    /// already being cancelled).
    pub fn cancel_fd(&mut self, fd: RawFd) -> usize {
        self.forget_class(fd);
        let mut ids = std::mem::take(&mut self.scratch);
        ids.clear();
        ids.extend(
            self.ops
                .iter()
                .filter(|(_, st)| st.op.fd() == Some(fd) && !matches!(st.stage, Stage::Ready(_)))
                .map(|(id, _)| id),
        );
        // One cancel per operation, by its user_data. A cancel by fd number would match
        // nothing when the number was already closed, or the operations of another file that
        // reuses it (the kernel resolves the number at cancel time).
        for &id in &ids {
            self.cancel(id);
        }
        let n = ids.len();
        self.scratch = ids;
        n
    }

    /// Submits what is queued, waits, and appends the completions to `out`; see
    /// [`crate::Driver::wait`]. Does not block when completions are already available
    /// (including operations ended in user space).
    ///
    /// # Errors
    ///
    /// Unexpected errors of `io_uring_enter` (never ETIME or EINTR; EBUSY and EAGAIN only when
    /// they persist after reaping).
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        let start = out.len();
        let limit = match timeout {
            Some(d) if d.is_zero() => Limit::Now,
            Some(d) => Instant::now()
                .checked_add(d)
                .map_or(Limit::Forever, Limit::Until),
            None => Limit::Forever,
        };
        let mut woken = false;
        let mut submit = true;
        loop {
            self.prepare(out);
            let ready = out.len() > start || woken || !self.ring.completion().is_empty();
            let (min_complete, block_for) = match limit {
                _ if ready => (0, None),
                Limit::Now => (0, None),
                Limit::Forever => (1, None),
                Limit::Until(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        (0, None)
                    } else {
                        (1, Some(left))
                    }
                }
            };
            // Nothing in the kernel and nothing to submit: only a wake-up (or the timeout) can
            // end this wait, and a futex serves that for less than the ring's wait and the
            // eventfd's poll, on both sides (see `WakeFd::futex_sleep`).
            if min_complete > 0 && self.nothing_in_kernel() && self.ring.completion().is_empty() {
                self.wake.futex_sleep(block_for);
                return Ok(());
            }
            // A wake-up that came while running: do not block (see `WakeFd::sleep`).
            let (min_complete, block_for) = if min_complete > 0 && !self.wake.sleep() {
                woken = true;
                (0, None)
            } else {
                (min_complete, block_for)
            };
            let mut stop = min_complete == 0;
            // Not when the wait must end sooner than the batch wait (a timer): the kernel would
            // sleep for the whole minimum.
            let batch = min_complete == 1
                && submit
                && self.batch_wait_us > 0
                && !self.ring.submission().is_empty()
                && block_for.is_none_or(|d| d.as_micros() > u128::from(self.batch_wait_us));
            // A wait that must not block, with nothing to submit and no operation in the
            // kernel, could only reap the waker's CQEs (already in the CQ, or posted at the next
            // enter): no syscall. A loop busy with posted closures between two sleeps then costs
            // no enter per iteration.
            let r = if min_complete == 0 && self.nothing_in_kernel() {
                Ok(0)
            } else if batch {
                self.enter_batch(block_for)
            } else {
                self.enter(min_complete, block_for, submit)
            };
            if min_complete > 0 {
                self.wake.awake();
            }
            if let Err(e) = r {
                match e.raw_os_error() {
                    // A batch wait's minimum time ended with nothing to show: wait on normally
                    // (the SQ was submitted).
                    Some(libc::ETIME) if batch => submit = true,
                    Some(libc::ETIME | libc::EINTR) => stop = true,
                    // The kernel could not take the SQEs (or flush an overflow) now: reap, then
                    // wait without submitting; the SQEs stay queued for the next wait.
                    Some(libc::EBUSY | libc::EAGAIN) if submit => submit = false,
                    _ => {
                        self.reap(out);
                        return Err(e);
                    }
                }
            }
            woken |= self.reap(out);
            if stop || woken || out.len() > start {
                return Ok(());
            }
            if let Limit::Until(deadline) = limit {
                if Instant::now() >= deadline {
                    return Ok(());
                }
            }
            // Only internal steps completed (a retry armed, a multishot re-armed): wait on.
        }
    }

    /// No operation in the kernel or in the SQ, and no cancel waiting to be submitted: only the
    /// waker's poll is armed.
    fn nothing_in_kernel(&mut self) -> bool {
        self.in_kernel == 0 && self.cancels.is_empty() && self.ring.submission().is_empty()
    }

    /// A handle that wakes this driver's `wait` from any thread.
    pub fn waker(&self) -> Waker {
        Waker::new(self.wake.clone())
    }

    /// Operations pushed whose final completion has not been returned yet.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Cancels everything and waits (blocking) until every operation has reported its final
    /// completion, appending them to `out`; afterwards [`Uring::in_flight`] is 0. See the
    /// module docs about operations the kernel cannot interrupt.
    pub fn shutdown(&mut self, out: &mut Vec<Completion>) {
        let mut ids = std::mem::take(&mut self.scratch);
        ids.clear();
        ids.extend(self.ops.iter().map(|(id, _)| id));
        for &id in &ids {
            self.cancel(id);
        }
        let mut quiet = 0u32;
        while !self.ops.is_empty() {
            let before = self.ops.len();
            if self.wait(Some(SHUTDOWN_TICK), out).is_err() {
                // A persistent enter error must not turn this into a busy loop.
                std::thread::sleep(Duration::from_millis(1));
            }
            if self.ops.len() < before {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet % SHUTDOWN_RECANCEL_TICKS == 0 {
                ids.clear();
                ids.extend(
                    self.ops
                        .iter()
                        .filter(|(_, st)| st.stage == Stage::Kernel)
                        .map(|(id, _)| id),
                );
                for &id in &ids {
                    self.push_cancel(Cancel::Op(id.to_u64()));
                }
            }
        }
        self.scratch = ids;
    }

    /// Registers `ring` as a provided-buffer ring under a new buffer group; see
    /// [`Driver::register_buf_ring`](crate::Driver::register_buf_ring).
    ///
    /// # Safety
    ///
    /// (I2) `ring` stays valid and unmoved until [`Uring::unregister_buf_ring`] or the driver's
    /// drop.
    ///
    /// # Errors
    ///
    /// The registration error (`ENOMEM`), or `EBUSY` when `ring` is registered already or
    /// every group (the last one is reserved) is in use. Without multishot receive (before
    /// Linux 6.0) nothing is registered: the driver consumes the ring in user space.
    pub unsafe fn register_buf_ring(&mut self, ring: &crate::BufRing) -> io::Result<()> {
        if ring.group().is_some() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        if !self.features.multishot_recv {
            // Without multishot receive the driver consumes the ring in user space.
            return Ok(());
        }
        let group = match self.free_groups.pop() {
            Some(g) => g,
            None if self.next_group < u16::MAX => {
                self.next_group += 1;
                self.next_group - 1
            }
            None => return Err(io::Error::from_raw_os_error(libc::EBUSY)),
        };
        let (addr, entries) = ring.ring_addr();
        // SAFETY: (I2, FFI) `addr` is the ring's page-aligned descriptor mapping of `entries`
        // entries, which the caller of this function keeps valid and unmoved until it is
        // unregistered or the driver is dropped (this function's contract); the kernel reads it
        // only while registered.
        let r = unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(addr, entries, group, 0)
        };
        match r {
            Ok(()) => {
                ring.set_group(Some(group));
                Ok(())
            }
            Err(e) => {
                self.free_groups.push(group);
                Err(e)
            }
        }
    }

    /// Unregisters `ring` (nothing happens if it is not registered). No operation may use it.
    pub fn unregister_buf_ring(&mut self, ring: &crate::BufRing) {
        if let Some(group) = ring.group() {
            // An error leaves the group registered: it is then never handed out again.
            if self.ring.submitter().unregister_buf_ring(group).is_ok() {
                self.free_groups.push(group);
            }
            ring.set_group(None);
        }
    }

    /// Whether `op` is driven by poll + a syscall in user space (ttys; see the module docs).
    fn driven_by_poll(&mut self, op: &Op) -> bool {
        let (fd, write) = match *op {
            Op::Read {
                fd, offset: None, ..
            }
            | Op::Readv {
                fd, offset: None, ..
            } => (fd, false),
            Op::Write {
                fd, offset: None, ..
            }
            | Op::Writev {
                fd, offset: None, ..
            } => (fd, true),
            _ => return false,
        };
        match self.class_of(fd) {
            Some(FdClass::Tty { nonblocking }) => nonblocking || !write,
            _ => false,
        }
    }

    /// Whether `op` is positional I/O on an fd that has no file position (pipe, socket, tty).
    fn positional_on_a_stream(&mut self, op: &Op) -> bool {
        let fd = match *op {
            Op::Read {
                fd,
                offset: Some(_),
                ..
            }
            | Op::Write {
                fd,
                offset: Some(_),
                ..
            }
            | Op::Readv {
                fd,
                offset: Some(_),
                ..
            }
            | Op::Writev {
                fd,
                offset: Some(_),
                ..
            } => fd,
            _ => return false,
        };
        match self.class_of(fd) {
            None | Some(FdClass::File) => false,
            Some(_) => !FdClass::is_seekable(fd),
        }
    }

    /// The cached kind of `fd`, looked up on a miss (errors are not cached).
    fn class_of(&mut self, fd: RawFd) -> Option<FdClass> {
        let idx = usize::try_from(fd).ok()?;
        let closes = crate::fdclass::close_count(fd);
        if let Some(Some((class, seen))) = self.classes.get(idx) {
            if *seen == closes {
                return Some(*class);
            }
        }
        let class = FdClass::of(fd).ok()?;
        if idx >= self.classes.len() {
            self.classes.resize(idx + 1, None);
        }
        self.classes[idx] = Some((class, closes));
        Some(class)
    }

    /// Forgets the cached kind of `fd` before its owner closes it; see
    /// [`Driver::forget_fd`](crate::Driver::forget_fd). In-flight operations keep their own
    /// reference to the file in the kernel and are left alone.
    pub fn forget_fd(&mut self, fd: RawFd) {
        self.forget_class(fd);
    }

    fn forget_class(&mut self, fd: RawFd) {
        if let Some(slot) = usize::try_from(fd)
            .ok()
            .and_then(|idx| self.classes.get_mut(idx))
        {
            *slot = None;
        }
    }

    /// Puts `sqe` in the SQ, submitting a full SQ first. `false` if it still does not fit.
    fn push_sqe(&mut self, sqe: &squeue::Entry) -> bool {
        // SAFETY: (I1, I2, I3) an SQE built here points only to memory of an operation in
        // `self.ops`, which the caller of `push` keeps valid and unmoved, with its fd open, until
        // the operation's final completion; the operation leaves `self.ops` only after its final
        // CQE. Poll and cancel SQEs point to no memory.
        if unsafe { self.ring.submission().push(sqe) }.is_ok() {
            return true;
        }
        // Errors leave the SQEs queued; the caller then keeps the work in user space.
        let _ = self.enter(0, None, true);
        // SAFETY: (I1, I2, I3) the SQE points only to memory of an operation in `self.ops` (or, for
        // poll and cancel SQEs, to none), which stays valid and unmoved, with its fd open, until
        // its final CQE, before which the operation does not leave `self.ops`.
        unsafe { self.ring.submission().push(sqe) }.is_ok()
    }

    /// Sends a cancel request, or queues it when the SQ is full.
    fn push_cancel(&mut self, cancel: Cancel) {
        if !self.cancels.is_empty() || !self.push_sqe(&cancel.sqe()) {
            self.cancels.push_back(cancel);
        }
    }

    /// Submits the current step of operation `id` if the ring has room, else puts it at the end
    /// of the backlog.
    fn issue(&mut self, id: OpId) {
        let Some(st) = self.ops.get(id) else {
            return;
        };
        let fits = self.in_kernel < self.limit && self.cancels.is_empty() && {
            let sqe = st.sqe(id.to_u64(), &self.features);
            self.push_sqe(&sqe)
        };
        let Some(st) = self.ops.get_mut(id) else {
            return;
        };
        if fits {
            st.stage = Stage::Kernel;
            self.in_kernel += 1;
        } else {
            st.stage = Stage::Backlog;
            self.backlog.push_back(id);
        }
    }

    /// Moves backlog operations into the ring while it has room.
    fn refill(&mut self) {
        while self.in_kernel < self.limit {
            let Some(&id) = self.backlog.front() else {
                break;
            };
            let sqe = match self.ops.get(id) {
                Some(st) if st.stage == Stage::Backlog => st.sqe(id.to_u64(), &self.features),
                _ => {
                    self.backlog.pop_front();
                    continue;
                }
            };
            if !self.push_sqe(&sqe) {
                break;
            }
            self.backlog.pop_front();
            if let Some(st) = self.ops.get_mut(id) {
                st.stage = Stage::Kernel;
            }
            self.in_kernel += 1;
        }
    }

    /// Arms the waker's poll (multishot where the kernel has it).
    fn arm_waker(&mut self) {
        let sqe = opcode::PollAdd::new(Fd(self.wake.fd()), libc::POLLIN as u32)
            .multi(self.features.multishot_poll)
            .build()
            .user_data(WAKER_UD);
        self.waker_armed = self.push_sqe(&sqe);
    }

    /// Work before entering: completions made in user space, queued cancels, the waker's poll,
    /// the backlog.
    fn prepare(&mut self, out: &mut Vec<Completion>) {
        for i in 0..self.ready.len() {
            let id = self.ready[i];
            if let Some(st) = self.ops.remove(id) {
                if let Stage::Ready(result) = st.stage {
                    out.push(Completion {
                        user_data: st.user_data,
                        result,
                        more: false,
                    });
                }
            }
        }
        self.ready.clear();
        for i in 0..self.deferred.len() {
            let id = self.deferred[i];
            let Some(st) = self.ops.get(id) else {
                continue;
            };
            if st.stage != Stage::Backlog {
                continue;
            }
            if let Op::Accept { addrlen, .. } = st.op {
                // SAFETY: (I2) the caller of `push` keeps `addrlen` valid and unmoved until the
                // accept's final completion, and was done with the previous address when it called
                // `wait`.
                unsafe { addrlen.write(st.addr_cap) };
            }
            self.issue(id);
        }
        self.deferred.clear();
        while let Some(&cancel) = self.cancels.front() {
            if !self.push_sqe(&cancel.sqe()) {
                break;
            }
            self.cancels.pop_front();
        }
        if !self.waker_armed {
            self.arm_waker();
        }
        if self.cancels.is_empty() {
            self.refill();
        }
    }

    /// One `io_uring_enter`: submits the SQ (if `submit`), runs deferred work and waits for
    /// `min_complete` CQEs, at most `timeout`.
    fn enter(
        &mut self,
        min_complete: u32,
        timeout: Option<Duration>,
        submit: bool,
    ) -> io::Result<usize> {
        let to_submit = if submit {
            self.ring.submission().len() as u32
        } else {
            0
        };
        let ts = timeout.map(|d| {
            Timespec::new()
                .sec(d.as_secs().min(i64::MAX as u64 / 2))
                .nsec(d.subsec_nanos())
        });
        let args = match &ts {
            Some(ts) => SubmitArgs::new().timespec(ts),
            None => SubmitArgs::new(),
        };
        // GETEVENTS always: with DEFER_TASKRUN it is what runs completions, and it flushes a CQ
        // overflow. EXT_ARG: `args` carries the timeout.
        let flags = (EnterFlags::GETEVENTS | EnterFlags::EXT_ARG).bits();
        // SAFETY: (I2, I3, FFI) `args` is a valid `io_uring_getevents_arg` (SubmitArgs is
        // repr(transparent)) whose timespec outlives the call; the SQEs submitted point to memory
        // kept valid and unmoved, with their fds open, until their operations' final CQEs.
        unsafe {
            self.ring
                .submitter()
                .enter(to_submit, min_complete, flags, Some(&args))
        }
    }

    /// The batch wait (see `Config::batch_wait`): submits the SQ and waits for twice as many
    /// completions as it submitted (request/response: each response sent is likely answered
    /// by a new request), for at most `batch_wait_us`; then returns with what has arrived, or
    /// waits for the first one up to `timeout`.
    fn enter_batch(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let to_submit = self.ring.submission().len() as u32;
        // The minimum wait applies only with a general timeout (without one, the kernel treats
        // the minimum as the timeout): an hour stands for "none" (an ETIME then waits on).
        let d = timeout.unwrap_or(Duration::from_secs(3600));
        let ts = Timespec::new()
            .sec(d.as_secs().min(i64::MAX as u64 / 2))
            .nsec(d.subsec_nanos());
        let args = SubmitArgs::new()
            .timespec(&ts)
            .min_wait_usec(self.batch_wait_us);
        let flags = (EnterFlags::GETEVENTS | EnterFlags::EXT_ARG).bits();
        // SAFETY: (I2, I3, FFI) `args` is a valid `io_uring_getevents_arg` (SubmitArgs is
        // repr(transparent)) whose timespec and minimum wait outlive the call; the SQEs submitted
        // point to memory kept valid and unmoved, with their fds open, until their operations'
        // final CQEs.
        unsafe {
            self.ring
                .submitter()
                .enter(to_submit, to_submit.saturating_mul(2), flags, Some(&args))
        }
    }

    /// Handles every CQE in the CQ now. Returns whether the waker fired.
    fn reap(&mut self, out: &mut Vec<Completion>) -> bool {
        self.cqes.clear();
        let room = self.cqes.capacity();
        self.cqes.extend(self.ring.completion().take(room));
        let mut woken = false;
        for i in 0..self.cqes.len() {
            let cqe = &self.cqes[i];
            let (ud, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
            woken |= self.on_cqe(ud, res, flags, out);
        }
        woken
    }

    /// Handles one CQE. Returns whether it was the waker's.
    fn on_cqe(&mut self, ud: u64, res: i32, flags: u32, out: &mut Vec<Completion>) -> bool {
        let more = cqueue::more(flags);
        if ud == WAKER_UD {
            if !more {
                self.wake.drain();
                self.waker_armed = false;
                if res == -libc::EINVAL && self.features.multishot_poll {
                    self.features.multishot_poll = false;
                }
                self.arm_waker();
            }
            return res >= 0;
        }
        if ud >= RESERVED_MIN {
            return false;
        }
        let id = OpId::from_u64(ud);
        let Some(st) = self.ops.get_mut(id) else {
            return false;
        };
        debug_assert_eq!(st.stage, Stage::Kernel);
        if !more {
            self.in_kernel = self.in_kernel.saturating_sub(1);
        }
        let action = match st.step {
            Step::Poll if st.cancelled => Action::Finish(-libc::ECANCELED),
            Step::Poll if res < 0 => Action::Finish(res),
            Step::Poll if st.tty && matches!(st.op, Op::RecvMulti { .. }) => {
                let Op::RecvMulti { fd, ring, flags } = st.op else {
                    unreachable!()
                };
                // SAFETY: (I2, I3) the caller of `push` keeps the ring valid and unmoved until the
                // receive's final completion, and it is not registered with io_uring (the kernel
                // lacks multishot receive), so only this user-space receive fills it; the fd stays
                // open until then.
                match unsafe { crate::bufring::recv_into(ring, fd, flags | libc::MSG_DONTWAIT) } {
                    r if r > 0 => Action::ReportAndRearm(r),
                    r if r == -libc::EAGAIN || r == -libc::EINTR => Action::Issue,
                    r => Action::Finish(r),
                }
            }
            Step::Poll if st.tty || matches!(st.op, Op::Connect { .. }) => {
                // SAFETY: (I2, I3) the operation is in `self.ops`, not finished yet, so the caller
                // of `push` still keeps its buffers valid and unmoved and its fd open.
                match unsafe { ops::after_poll(&st.op) } {
                    r if r == -libc::EAGAIN && ops::hung_up_without(&st.op, res) => {
                        // A hang-up (or error) without the readiness the operation needs, and
                        // the syscall still says EAGAIN: a pty master whose slave side is
                        // gone reports POLLHUP but never POLLOUT. Retrying would spin.
                        Action::Finish(ops::hang_up_result(&st.op))
                    }
                    r if r == -libc::EAGAIN || r == -libc::EINTR => Action::Issue,
                    r => Action::Finish(r),
                }
            }
            Step::Poll => {
                st.step = Step::Native;
                Action::Issue
            }
            Step::Native if st.pri_check => ops::pri_action(st, res, more),
            Step::Native if matches!(st.op, Op::RecvMulti { .. }) => {
                ops::recv_multi_action(st, res, flags, more)
            }
            Step::Native if more => Action::Report(res),
            Step::Native => match ops::retry_step(&st.op, res) {
                Some(step) if !st.cancelled => {
                    st.step = step;
                    Action::Issue
                }
                _ if st.op.is_multishot() && res >= 0 && !st.cancelled => {
                    Action::ReportAndRearm(res)
                }
                _ if st.cancelled && ops::is_retry_result(res) => Action::Finish(-libc::ECANCELED),
                _ => Action::Finish(res),
            },
        };
        let (user_data, rearm_later) = (st.user_data, st.addr_cap != 0);
        match action {
            Action::Report(result) => out.push(Completion {
                user_data,
                result,
                more: true,
            }),
            Action::ReportAndRearm(result) => {
                out.push(Completion {
                    user_data,
                    result,
                    more: true,
                });
                if rearm_later {
                    if let Some(st) = self.ops.get_mut(id) {
                        st.stage = Stage::Backlog;
                    }
                    self.deferred.push(id);
                } else {
                    self.issue(id);
                }
            }
            Action::Issue => self.issue(id),
            Action::CancelSelf => self.push_cancel(Cancel::Op(ud)),
            Action::Nothing => {}
            Action::Finish(result) => {
                self.ops.remove(id);
                out.push(Completion {
                    user_data,
                    result,
                    more: false,
                });
            }
            Action::ReportAndFinish(report, result) => {
                self.ops.remove(id);
                out.push(Completion {
                    user_data,
                    result: report,
                    more: true,
                });
                out.push(Completion {
                    user_data,
                    result,
                    more: false,
                });
            }
        }
        false
    }
}

impl Drop for Uring {
    /// Cancels and waits for whatever is still in flight (memory safety, I2), discarding the
    /// completions. The waker's poll needs no waiting: it points to no memory.
    fn drop(&mut self) {
        if !self.ops.is_empty() {
            let mut discarded = Vec::new();
            self.shutdown(&mut discarded);
        }
    }
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("info", &self.info)
            .field("in_flight", &self.ops.len())
            .field("in_kernel", &self.in_kernel)
            .field("backlog", &self.backlog.len())
            .finish()
    }
}

/// Whether `e` (from [`Uring::new`]) means "io_uring is unavailable here", so that falling back
/// to epoll is right: ENOSYS, EPERM, EOPNOTSUPP, EACCES or EINVAL. Resource errors (ENOMEM,
/// EMFILE, ENFILE) are not.
pub fn is_unavailable(e: &io::Error) -> bool {
    matches!(
        setup::errno_of(e),
        Some(libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP | libc::EACCES | libc::EINVAL)
    )
}
