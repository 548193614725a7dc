//! Wake-ups from one io_uring driver to another with `IORING_OP_MSG_RING` (Linux 5.18).
//!
//! A loop thread that posts to another io_uring loop does not write the target's eventfd: it
//! queues a `MSG_RING` SQE aimed at the target's ring, which its own next `io_uring_enter` (the
//! one it makes anyway to wait) submits. The kernel posts a CQE with [`MSG_WAKE_UD`] straight
//! into the target's ring, which ends the target's wait; the target has no eventfd to read nor
//! poll to re-arm. One syscall per hand-over instead of three (write, enter, read).
//!
//! * **Target ring fd.** Each [`WakeFd`] of an io_uring driver owns a duplicate of its ring fd
//!   (set at setup when the kernel has `MSG_RING` and `IOSQE_CQE_SKIP_SUCCESS`). The sender
//!   keeps an `Arc` of the target's `WakeFd` until the SQE has been submitted: the kernel
//!   resolves the fd number at submission and holds the file from then on.
//! * **Failures.** The SQE carries `IOSQE_CQE_SKIP_SUCCESS`: a delivered message costs the
//!   sender no CQE (which would end its next wait early). A failed one (the kernel could not
//!   allocate its CQE) reports [`MSG_SENT_UD`] to the sender, which then wakes every possible
//!   target through its eventfd ([`WakeFd::wake_all_rings`]): no wake-up is lost.
//! * **Delivery.** The SQE leaves with the sender's next `io_uring_enter`. The layers above
//!   send only from a thread whose loop is running (it waits again soon) and
//!   [`Uring::flush_messages`](super::Uring::flush_messages) submits what is left when a run
//!   ends.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use io_uring::types::Fd;
use io_uring::{opcode, squeue, IoUring, Probe};

use crate::waker::WakeFd;

/// `user_data` of the CQE a message posts into its target ring.
pub(super) const MSG_WAKE_UD: u64 = u64::MAX - 4;
/// `user_data` of a `MSG_RING` request in the sender's ring (its CQE comes only on failure).
pub(super) const MSG_SENT_UD: u64 = u64::MAX - 5;

/// Whether the kernel can deliver wake-ups with `MSG_RING` as this module does.
pub(super) fn supported(ring: &IoUring) -> bool {
    if !ring.params().is_feature_skip_cqe_on_success() {
        return false;
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).is_ok()
        && probe.is_supported(opcode::MsgRingData::CODE)
}

/// A duplicate of `ring`'s fd, close-on-exec, for its waker to own.
pub(super) fn dup_ring_fd(ring: &IoUring) -> io::Result<OwnedFd> {
    // SAFETY: the ring fd is open for as long as `ring` lives, which covers this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(ring.as_raw_fd()) };
    fd.try_clone_to_owned()
}

/// Messages queued in the SQ and not submitted yet.
#[derive(Default)]
pub(super) struct Outbox {
    /// The targets' wakers: they keep the target ring fds open until submission.
    held: Vec<Arc<WakeFd>>,
}

impl Outbox {
    /// The SQE that wakes `target`, if it can be woken with `MSG_RING`. The caller pushes it and,
    /// on success, calls [`Outbox::hold`].
    pub(super) fn sqe(target: &WakeFd) -> Option<squeue::Entry> {
        let fd = target.ring_fd()?;
        Some(
            opcode::MsgRingData::new(Fd(fd), 0, MSG_WAKE_UD, None)
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(MSG_SENT_UD),
        )
    }

    /// Keeps `target` (and its ring fd) alive until the SQE is submitted.
    pub(super) fn hold(&mut self, target: &Arc<WakeFd>) {
        self.held.push(Arc::clone(target));
    }

    /// Whether messages wait for submission.
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The SQ has been submitted (it is empty): the kernel holds the target files now.
    pub(super) fn submitted(&mut self) {
        self.held.clear();
    }

    /// The sender's CQE of a message: it failed (successes post none).
    pub(super) fn failed(res: i32) {
        if res < 0 {
            WakeFd::wake_all_rings();
        }
    }
}
