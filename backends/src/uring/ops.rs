//! Per-operation state, and how each step of an operation becomes an SQE or a syscall.

use std::mem;

use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::{Fd, FsyncFlags};

use super::setup::Features;
use crate::sys::to_result;
use crate::Op;

/// Where an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// In user space, no SQE: waiting in the backlog for room in the ring, or for the next
    /// `wait` (the deferred re-arm of an accept that fills an address).
    Backlog,
    /// One SQE of it (the current [`Step`]) is in the SQ or in the kernel, its final CQE unseen.
    Kernel,
    /// Ended in user space (cancelled in the backlog) with this result; the final completion is
    /// handed out by the next `wait`.
    Ready(i32),
}

/// Which request stands for the operation in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// The operation's own opcode.
    Native,
    /// An internal one-shot `POLL_ADD` in the operation's direction: after `-EAGAIN`, for a tty,
    /// or for a connect in progress. When it fires, the operation goes on (see `after_poll`).
    Poll,
}

/// The driver's state of one operation. It stays in the slab until its final CQE has been
/// seen (I1, I4), so its `OpId` (the ring `user_data`) is never reused early.
#[derive(Debug)]
pub(super) struct OpState {
    /// The operation as pushed.
    pub(super) op: Op,
    /// The caller's tag.
    pub(super) user_data: u64,
    /// Driven by poll + a non-blocking syscall (ttys).
    pub(super) tty: bool,
    /// A `PRIORITY` poll on a socket: armed as a multishot `events | POLLIN` poll whose CQEs
    /// are checked with `poll(2)` (see the module docs).
    pub(super) pri_check: bool,
    /// The current (or next) request.
    pub(super) step: Step,
    /// Where it is.
    pub(super) stage: Stage,
    /// Cancellation was asked: no retry, no re-arm.
    pub(super) cancelled: bool,
    /// For a multishot accept that fills a peer address: `*addrlen` as pushed (the address
    /// buffer's capacity), restored before each re-arm. 0 otherwise.
    pub(super) addr_cap: libc::socklen_t,
    /// The result of a one-shot `pri_check` poll, reported once its kernel request has ended.
    pub(super) held: Option<i32>,
}

impl OpState {
    pub(super) fn new(op: Op, user_data: u64) -> OpState {
        OpState {
            op,
            user_data,
            tty: false,
            pri_check: false,
            step: Step::Native,
            stage: Stage::Backlog,
            cancelled: false,
            addr_cap: 0,
            held: None,
        }
    }

    /// The SQE for the current step, tagged `ud`.
    pub(super) fn sqe(&self, ud: u64, f: &Features) -> squeue::Entry {
        let entry = match (self.step, self.op.fd(), readiness(&self.op)) {
            (Step::Poll, Some(fd), Some(events)) => opcode::PollAdd::new(Fd(fd), events).build(),
            _ => match self.op {
                Op::Poll { fd, events, .. } if self.pri_check => {
                    opcode::PollAdd::new(Fd(fd), events | libc::POLLIN as u32)
                        .multi(true)
                        .build()
                }
                _ => native(&self.op, f),
            },
        };
        entry.user_data(ud)
    }
}

/// What a CQE leads to, decided while the operation's state is borrowed.
pub(super) enum Action {
    /// Report a non-final completion.
    Report(i32),
    /// Report a non-final completion and re-arm the request.
    ReportAndRearm(i32),
    /// Submit the operation's current step.
    Issue,
    /// Report the final completion and forget the operation.
    Finish(i32),
    /// Report a non-final completion, then the final one (a multishot receive's last data
    /// followed by its end).
    ReportAndFinish(i32, i32),
    /// Cancel the operation's own kernel request (its result is held until that ends).
    CancelSelf,
    /// Nothing to do.
    Nothing,
}

/// CQE handling of a `PRIORITY` poll on a socket (`pri_check`): the kernel request is a
/// multishot `events | POLLIN` poll, and each of its CQEs is checked with `poll(2)` for the
/// requested events, because io_uring neither wakes a poll on a socket's urgent data unless
/// `POLLIN` is asked too, nor tells urgent from normal data (a socket wake-up always carries
/// `POLLPRI`).
pub(super) fn pri_action(st: &mut OpState, res: i32, more: bool) -> Action {
    let Op::Poll {
        fd,
        events,
        multishot,
    } = st.op
    else {
        return Action::Finish(res);
    };
    if res >= 0 && st.held.is_none() {
        let now = poll_now(fd, events);
        if now != 0 {
            return match (multishot, more) {
                (true, true) => Action::Report(now),
                (true, false) if !st.cancelled => Action::ReportAndRearm(now),
                (false, true) => {
                    // Report once the kernel request is gone; the real result wins over a
                    // cancel asked meanwhile.
                    st.held = Some(now);
                    if st.cancelled {
                        Action::Nothing
                    } else {
                        st.cancelled = true;
                        Action::CancelSelf
                    }
                }
                _ => Action::Finish(now),
            };
        }
        // Woken by normal data only.
        if more {
            return Action::Nothing;
        }
        if !st.cancelled {
            return Action::Issue;
        }
    }
    if more {
        return Action::Nothing;
    }
    Action::Finish(match st.held {
        Some(held) => held,
        None if st.cancelled && (res >= 0 || res == -libc::ECANCELED) => -libc::ECANCELED,
        None => res,
    })
}

/// CQE handling of a multishot receive into a buffer ring ([`Op::RecvMulti`]). Data is always
/// reported with `more == true` (packed with its buffer id); the final completion carries none.
/// A kernel request that ended with data but without `F_MORE` (a CQ overflow, the kernel's
/// fairness limit) is re-armed, unless cancelled.
pub(super) fn recv_multi_action(st: &mut OpState, res: i32, flags: u32, more: bool) -> Action {
    let Op::RecvMulti { ring, .. } = st.op else {
        return Action::Finish(res);
    };
    let bid = io_uring::cqueue::buffer_select(flags);
    if res > 0 {
        let Some(bid) = bid else {
            // Data without a buffer cannot happen with BUFFER_SELECT; end rather than lie.
            return if more {
                Action::Nothing
            } else {
                Action::Finish(-libc::EIO)
            };
        };
        let packed = crate::bufring::pack(bid, res as u32);
        return match (more, st.cancelled) {
            (true, _) => Action::Report(packed),
            (false, false) => Action::ReportAndRearm(packed),
            (false, true) => Action::ReportAndFinish(packed, -libc::ECANCELED),
        };
    }
    if let Some(bid) = bid {
        // A buffer picked for no data goes straight back.
        // SAFETY: (I2) the caller of `push` keeps the ring valid and unmoved until the operation's
        // final completion, which this CQE does not precede; the kernel handed `bid` out with this
        // CQE and nobody else holds it, so it goes back to the ring once, here.
        unsafe { (*ring).recycle(bid) };
    }
    if more {
        return Action::Nothing;
    }
    match retry_step(&st.op, res) {
        Some(step) if !st.cancelled => {
            st.step = step;
            Action::Issue
        }
        _ if st.cancelled && is_retry_result(res) => Action::Finish(-libc::ECANCELED),
        _ => Action::Finish(res),
    }
}

/// Whether poll bits `revents` report a hang-up or error but not the readiness `op` waits for.
pub(super) fn hung_up_without(op: &Op, revents: i32) -> bool {
    let revents = revents as u32;
    let trouble = (libc::POLLHUP | libc::POLLERR) as u32;
    matches!(readiness(op), Some(want) if revents & want == 0 && revents & trouble != 0)
}

/// The result of an operation whose fd hung up while it waited: `EPIPE` for writes, `EIO`
/// for reads (what a read on a hung-up pty master reports).
pub(super) fn hang_up_result(op: &Op) -> i32 {
    if readiness(op) == Some(libc::POLLOUT as u32) {
        -libc::EPIPE
    } else {
        -libc::EIO
    }
}

/// The poll events an operation waits for before it is retried; `None` for operations that
/// never retry on readiness.
pub(super) fn readiness(op: &Op) -> Option<u32> {
    match op {
        Op::Read { .. }
        | Op::Readv { .. }
        | Op::Recv { .. }
        | Op::RecvMulti { .. }
        | Op::RecvMsg { .. }
        | Op::Accept { .. } => Some(libc::POLLIN as u32),
        Op::Write { .. }
        | Op::Writev { .. }
        | Op::Send { .. }
        | Op::SendMsg { .. }
        | Op::Connect { .. } => Some(libc::POLLOUT as u32),
        Op::Nop | Op::Poll { .. } | Op::Close { .. } | Op::Fsync { .. } => None,
    }
}

/// Whether the caller asked for a non-blocking attempt (`MSG_DONTWAIT`): then `-EAGAIN` is
/// its answer, not a reason to wait.
fn dont_wait(op: &Op) -> bool {
    match *op {
        Op::Recv { flags, .. }
        | Op::RecvMulti { flags, .. }
        | Op::Send { flags, .. }
        | Op::RecvMsg { flags, .. }
        | Op::SendMsg { flags, .. } => flags & libc::MSG_DONTWAIT != 0,
        _ => false,
    }
}

/// What to do after a final CQE with result `res` instead of reporting it: `Some(step)` to go
/// on with that step, `None` to report `res`.
///
/// * `-EINTR` re-issues the operation (a connect waits for writability instead: it goes on in
///   the background);
/// * `-EAGAIN` (an `O_NONBLOCK` fd) waits for readiness, then re-issues;
/// * `-EINPROGRESS` of a connect waits for writability, then reads `SO_ERROR`.
pub(super) fn retry_step(op: &Op, res: i32) -> Option<Step> {
    match (op, -res) {
        // EAGAIN from a connect is a Unix listener's full backlog: waiting for writability
        // would report success for a socket that never connected, so it is reported as is.
        (Op::Connect { .. }, libc::EAGAIN) => None,
        (Op::Connect { .. }, libc::EINTR | libc::EINPROGRESS) => Some(Step::Poll),
        (Op::Nop | Op::Poll { .. } | Op::Close { .. }, _) => None,
        (_, libc::EINTR) => Some(Step::Native),
        (_, libc::EAGAIN) if readiness(op).is_some() && !dont_wait(op) => Some(Step::Poll),
        _ => None,
    }
}

/// Whether `res` is one that [`retry_step`] would have retried: for a cancelled operation it
/// becomes `-ECANCELED` (the operation did nothing).
pub(super) fn is_retry_result(res: i32) -> bool {
    matches!(-res, libc::EINTR | libc::EAGAIN | libc::EINPROGRESS)
}

/// The native SQE of `op` (without `user_data`).
fn native(op: &Op, f: &Features) -> squeue::Entry {
    // `-1` as the offset means "the current file position" (IORING_FEAT_RW_CUR_POS).
    let pos = |offset: Option<u64>| offset.unwrap_or(u64::MAX);
    #[cfg(test)]
    let rw_flags = if f.nowait_reads { libc::RWF_NOWAIT } else { 0 };
    #[cfg(not(test))]
    let rw_flags = 0;
    match *op {
        Op::Nop => opcode::Nop::new().build(),
        Op::Poll {
            fd,
            events,
            multishot,
        } => opcode::PollAdd::new(Fd(fd), events)
            .multi(multishot && f.multishot_poll)
            .build(),
        Op::Read {
            fd,
            buf,
            len,
            offset,
        } => opcode::Read::new(Fd(fd), buf, len)
            .offset(pos(offset))
            .rw_flags(rw_flags)
            .build(),
        Op::Write {
            fd,
            buf,
            len,
            offset,
        } => opcode::Write::new(Fd(fd), buf, len)
            .offset(pos(offset))
            .build(),
        Op::Readv {
            fd,
            iov,
            iovcnt,
            offset,
        } => opcode::Readv::new(Fd(fd), iov, iovcnt)
            .offset(pos(offset))
            .rw_flags(rw_flags)
            .build(),
        Op::Writev {
            fd,
            iov,
            iovcnt,
            offset,
        } => opcode::Writev::new(Fd(fd), iov, iovcnt)
            .offset(pos(offset))
            .build(),
        Op::Recv {
            fd,
            buf,
            len,
            flags,
        } => opcode::Recv::new(Fd(fd), buf, len).flags(flags).build(),
        Op::Send {
            fd,
            buf,
            len,
            flags,
        } => opcode::Send::new(Fd(fd), buf, len)
            .flags(flags | libc::MSG_NOSIGNAL)
            .build(),
        Op::RecvMulti { fd, ring, flags } => {
            // SAFETY: (I2) the caller of `push` keeps the ring valid and unmoved until the
            // operation's final completion; an unregistered ring gives group 0xffff, which no
            // registered ring has: the kernel answers ENOBUFS.
            let group = unsafe { (*ring).group() }.unwrap_or(u16::MAX);
            opcode::RecvMulti::new(Fd(fd), group).flags(flags).build()
        }
        Op::RecvMsg { fd, msg, flags } => opcode::RecvMsg::new(Fd(fd), msg)
            .flags(flags as u32)
            .build(),
        Op::SendMsg { fd, msg, flags } => opcode::SendMsg::new(Fd(fd), msg)
            .flags((flags | libc::MSG_NOSIGNAL) as u32)
            .build(),
        // The kernel's multishot accept cannot fill an address: with one, the emulation (a
        // one-shot accept re-armed per connection) fills it for each connection.
        Op::Accept {
            fd,
            addr,
            flags,
            multishot: true,
            ..
        } if f.multishot_accept && addr.is_null() => opcode::AcceptMulti::new(Fd(fd))
            .flags(flags | libc::SOCK_CLOEXEC)
            .build(),
        Op::Accept {
            fd,
            addr,
            addrlen,
            flags,
            ..
        } => opcode::Accept::new(Fd(fd), addr.cast(), addrlen)
            .flags(flags | libc::SOCK_CLOEXEC)
            .build(),
        Op::Connect { fd, addr, addrlen } => {
            opcode::Connect::new(Fd(fd), addr.cast(), addrlen).build()
        }
        Op::Close { fd } => opcode::Close::new(Fd(fd)).build(),
        Op::Fsync { fd, datasync } => opcode::Fsync::new(Fd(fd))
            .flags(if datasync {
                FsyncFlags::DATASYNC
            } else {
                FsyncFlags::empty()
            })
            .build(),
    }
}

/// Goes on with `op` after its internal poll fired, in user space: the non-blocking syscall of a
/// tty operation, or `SO_ERROR` of a connect. Returns the result or `-errno` (`-EAGAIN`: poll
/// again).
///
/// # Safety
///
/// (I2, I3) `op`'s buffers (or iovecs) must be valid for the syscall and its fd open, which holds
/// for an operation still in the slab.
pub(super) unsafe fn after_poll(op: &Op) -> i32 {
    match *op {
        // SAFETY: (I2, I3) the caller of `after_poll` guarantees that `buf[..len]` is valid and
        // writable and that `fd` is open, as for any operation still in the slab.
        Op::Read { fd, buf, len, .. } => to_result(unsafe { libc::read(fd, buf.cast(), len as _) }),
        Op::Write { fd, buf, len, .. } => {
            // SAFETY: (I2, I3) the caller of `after_poll` guarantees that `buf[..len]` is valid for
            // reads and that `fd` is open, as for any operation still in the slab.
            to_result(unsafe { libc::write(fd, buf.cast(), len as _) })
        }
        Op::Readv {
            fd, iov, iovcnt, ..
        } => {
            let n = iovcnt.min(libc::c_int::MAX as u32) as libc::c_int;
            // SAFETY: (I2, I3) the caller of `after_poll` guarantees that the iovec array and the
            // buffers it names are valid and writable and that `fd` is open.
            to_result(unsafe { libc::readv(fd, iov, n) })
        }
        Op::Writev {
            fd, iov, iovcnt, ..
        } => {
            let n = iovcnt.min(libc::c_int::MAX as u32) as libc::c_int;
            // SAFETY: (I2, I3) the caller of `after_poll` guarantees that the iovec array and the
            // buffers it names are valid for reads and that `fd` is open.
            to_result(unsafe { libc::writev(fd, iov, n) })
        }
        Op::Connect { fd, .. } => so_error(fd),
        _ => -libc::EINVAL,
    }
}

/// What `poll(2)` reports for `events` on `fd` right now (0: nothing, or the call failed).
pub(super) fn poll_now(fd: i32, events: u32) -> i32 {
    let mut pfd = libc::pollfd {
        fd,
        events: events as libc::c_short,
        revents: 0,
    };
    // SAFETY: (I5, FFI) `pfd` is one live pollfd for the call; a zero timeout never blocks the loop
    // thread.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    if r > 0 {
        i32::from(pfd.revents as u16)
    } else {
        0
    }
}

/// The pending error of a socket (`0`: connected), as `-errno`.
fn so_error(fd: i32) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: (FFI) `err` and `len` are live, correctly sized out-parameters for the call.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        to_result(-1)
    } else {
        -err
    }
}
