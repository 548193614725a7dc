//! Ring creation, required-feature checks, opcode probing and detection of optional features.

use std::error::Error;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use crate::Config;

/// The largest SQ the kernel accepts.
const MAX_SQ: u32 = 32768;
/// The largest CQ the kernel accepts.
const MAX_CQ: u32 = 65536;
/// The smallest ring built: ENOMEM retries stop here, and smaller CQ requests are raised to it.
const MIN_ENTRIES: u32 = 8;

/// `user_data` of the setup-time probe for `ASYNC_CANCEL` with `FD | ALL`.
pub(super) const PROBE_CANCEL_UD: u64 = u64::MAX - 2;
/// `user_data` of the setup-time probe for multishot accept.
pub(super) const PROBE_ACCEPT_UD: u64 = u64::MAX - 3;
/// `user_data` of the setup-time probe for multishot receive.
pub(super) const PROBE_RECV_UD: u64 = u64::MAX - 4;

/// Optional kernel features. Each one is used when present and emulated otherwise.
#[derive(Clone, Copy, Debug)]
pub(super) struct Features {
    /// `IORING_POLL_ADD_MULTI` (5.13); else a one-shot poll re-armed after each event.
    pub(super) multishot_poll: bool,
    /// `IORING_ACCEPT_MULTISHOT` (5.19); else a one-shot accept re-armed after each connection.
    pub(super) multishot_accept: bool,
    /// `ASYNC_CANCEL` with `IORING_ASYNC_CANCEL_FD | ALL` (5.19). Reported only: the driver
    /// cancels per operation (`user_data`), which stays exact when an fd number was closed or
    /// reused.
    pub(super) cancel_fd: bool,
    /// Multishot `RECV` with buffer selection from a provided-buffer ring (6.0); else
    /// `RecvMulti` is a one-shot `POLL_ADD` re-armed after each report, the driver receiving
    /// into the ring (not registered then) in user space.
    pub(super) multishot_recv: bool,
    /// Tests only: issue reads with `RWF_NOWAIT`, so that an empty pipe answers `-EAGAIN` and
    /// the readiness-then-retry path runs on a kernel that would otherwise just wait.
    #[cfg(test)]
    pub(super) nowait_reads: bool,
}

impl Features {
    /// A readable list for `BackendInfo::reason`.
    pub(super) fn describe(&self) -> String {
        let yes_no = |b: bool| if b { "native" } else { "emulated" };
        format!(
            "multishot poll {}, multishot accept {}, multishot recv {}, cancel by fd {}",
            yes_no(self.multishot_poll),
            yes_no(self.multishot_accept),
            yes_no(self.multishot_recv),
            yes_no(self.cancel_fd)
        )
    }
}

/// A freshly built ring and the optional setup flags it got.
pub(super) struct Ring {
    pub(super) ring: IoUring,
    pub(super) flags: &'static str,
}

/// A setup failure that keeps its errno next to a readable explanation.
///
/// `io::Error::new(kind, msg)` would drop the errno (`raw_os_error()` becomes `None`), so the
/// errno travels inside this payload and [`errno_of`] finds it again.
#[derive(Debug)]
struct SetupError {
    errno: i32,
    msg: String,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl Error for SetupError {}

/// An `io::Error` of `errno`'s kind whose text is `msg` and whose errno [`errno_of`] recovers.
pub(super) fn setup_error(errno: i32, msg: String) -> io::Error {
    io::Error::new(
        io::Error::from_raw_os_error(errno).kind(),
        SetupError { errno, msg },
    )
}

/// The errno of `e`: its raw OS error, or the one kept by [`setup_error`].
pub(super) fn errno_of(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<SetupError>())
            .map(|s| s.errno)
    })
}

/// Why `io_uring_setup` may have failed with `errno`, in words.
fn explain(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "io_uring is disabled (kernel.io_uring_disabled) or filtered by seccomp",
        libc::ENOSYS => {
            "this kernel has no io_uring (built without CONFIG_IO_URING, older than 5.1, \
             or a sandbox that does not implement it)"
        }
        libc::EOPNOTSUPP => "io_uring is not supported by this system or container runtime",
        libc::EACCES => "io_uring is restricted here",
        libc::EINVAL => "the kernel rejected every flag combination tried (too old for fdloop)",
        libc::ENOMEM => {
            "not enough memory for even the smallest ring (before 5.12 rings are charged to \
             RLIMIT_MEMLOCK)"
        }
        libc::EMFILE | libc::ENFILE => "out of file descriptors",
        _ => "unexpected error",
    }
}

/// SQ and CQ sizes for `config`: powers of two, CQ ≥ SQ, within the kernel's limits.
fn sizes(config: &Config) -> (u32, u32) {
    let sq = config.ring_entries.clamp(1, MAX_SQ).next_power_of_two();
    let cq = config
        .cq_entries
        .unwrap_or_else(|| sq.saturating_mul(4))
        .clamp(MIN_ENTRIES, MAX_CQ)
        .next_power_of_two();
    (sq.min(cq), cq)
}

/// The flag sets tried in order; EINVAL moves to the next one.
const MODES: [&str; 3] = [
    "SINGLE_ISSUER|DEFER_TASKRUN|SUBMIT_ALL",
    "COOP_TASKRUN|TASKRUN_FLAG|SUBMIT_ALL",
    "no optional flags",
];

/// Builds the ring in the calling thread (with `SINGLE_ISSUER`, that thread becomes the only one
/// allowed to submit).
///
/// EINVAL retries with fewer optional flags, ENOMEM with a ring half the size (down to
/// [`MIN_ENTRIES`]); every other error is returned with its errno and an explanation.
pub(super) fn create(config: &Config) -> io::Result<Ring> {
    let (mut sq, mut cq) = sizes(config);
    let mut mode = 0;
    loop {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp().dontfork();
        match mode {
            0 => {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_submit_all();
            }
            1 => {
                b.setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .setup_submit_all();
            }
            _ => {}
        }
        let e = match b.build(sq) {
            Ok(ring) => {
                return Ok(Ring {
                    ring,
                    flags: MODES[mode],
                })
            }
            Err(e) => e,
        };
        match e.raw_os_error() {
            Some(libc::EINVAL) if mode + 1 < MODES.len() => mode += 1,
            Some(libc::ENOMEM) if sq > MIN_ENTRIES || cq > MIN_ENTRIES => {
                if sq > MIN_ENTRIES {
                    sq /= 2;
                }
                cq = (cq / 2).max(sq).max(MIN_ENTRIES);
            }
            Some(errno) => {
                return Err(setup_error(
                    errno,
                    format!("io_uring_setup failed: {e}: {}", explain(errno)),
                ))
            }
            None => return Err(e),
        }
    }
}

/// Fails with an ENOSYS-coded error naming the first required feature the ring lacks.
pub(super) fn check_features(ring: &IoUring) -> io::Result<()> {
    let p = ring.params();
    let required = [
        (p.is_feature_nodrop(), "IORING_FEAT_NODROP", "5.5"),
        (
            p.is_feature_submit_stable(),
            "IORING_FEAT_SUBMIT_STABLE",
            "5.5",
        ),
        (p.is_feature_fast_poll(), "IORING_FEAT_FAST_POLL", "5.7"),
        (p.is_feature_ext_arg(), "IORING_FEAT_EXT_ARG", "5.11"),
    ];
    for (present, name, since) in required {
        if !present {
            return Err(setup_error(
                libc::ENOSYS,
                format!("io_uring lacks {name} (needs kernel {since} or later)"),
            ));
        }
    }
    Ok(())
}

/// Every opcode the driver emits, with its name for error messages.
const REQUIRED_OPCODES: [(u8, &str); 15] = [
    (opcode::Nop::CODE, "NOP"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::Read::CODE, "READ"),
    (opcode::Write::CODE, "WRITE"),
    (opcode::Readv::CODE, "READV"),
    (opcode::Writev::CODE, "WRITEV"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::RecvMsg::CODE, "RECVMSG"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Connect::CODE, "CONNECT"),
    (opcode::Close::CODE, "CLOSE"),
    (opcode::Fsync::CODE, "FSYNC"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
];

/// Probes the ring (`IORING_REGISTER_PROBE`) and fails with an "unavailable" error naming the
/// first opcode the driver needs that the kernel lacks (or the probe itself, before 5.6).
pub(super) fn probe_opcodes(ring: &IoUring) -> io::Result<()> {
    let mut probe = Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        let (errno, why) = match e.raw_os_error() {
            Some(libc::EINVAL) | None => (libc::ENOSYS, "the kernel is older than 5.6"),
            Some(errno @ (libc::EPERM | libc::EACCES)) => (
                errno,
                "io_uring_register is filtered (seccomp) or restricted here",
            ),
            Some(errno) => (errno, explain(errno)),
        };
        return Err(setup_error(
            errno,
            format!("io_uring cannot be probed (IORING_REGISTER_PROBE failed: {e}): {why}"),
        ));
    }
    for (code, name) in REQUIRED_OPCODES {
        if !probe.is_supported(code) {
            return Err(setup_error(
                libc::ENOSYS,
                format!("io_uring lacks the opcode IORING_OP_{name}"),
            ));
        }
    }
    Ok(())
}

/// Detects the optional features by asking the kernel, and arms the waker's poll.
///
/// * cancel by fd: an `ASYNC_CANCEL` with `FD | ALL` on the ring's own fd (nothing runs there)
///   answers a count or `-ENOENT` where supported, `-EINVAL` before 5.19;
/// * multishot accept: on the ring fd (not a socket) it answers `-ENOTSOCK` where supported,
///   `-EINVAL` before 5.19;
/// * multishot receive: on the ring fd it answers `-ENOTSOCK` where supported, `-EINVAL`
///   before 6.0;
/// * multishot poll: the waker's multishot `POLL_ADD` on `waker_fd` (an empty eventfd) stays
///   armed where supported and fails with `-EINVAL` at submission before 5.13.
///
/// Returns the features and whether the waker's poll is armed (if not, the caller arms a
/// one-shot one).
pub(super) fn detect(ring: &mut IoUring, waker_fd: RawFd, waker_ud: u64) -> (Features, bool) {
    let ring_fd = ring.as_raw_fd();
    let sqes: [squeue::Entry; 4] = [
        opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(ring_fd)).all())
            .build()
            .user_data(PROBE_CANCEL_UD),
        opcode::AcceptMulti::new(Fd(ring_fd))
            .build()
            .user_data(PROBE_ACCEPT_UD),
        opcode::RecvMulti::new(Fd(ring_fd), u16::MAX)
            .build()
            .user_data(PROBE_RECV_UD),
        opcode::PollAdd::new(Fd(waker_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(waker_ud),
    ];
    for sqe in &sqes {
        // SAFETY: (I2, I3) these SQEs point to no memory, and their fds (the ring's and the waker's
        // eventfd) stay open as long as the ring.
        if unsafe { ring.submission().push(sqe) }.is_err() {
            let _ = ring.submit();
            // SAFETY: (I2, I3) these SQEs point to no memory, and their fds (the ring's and the
            // waker's eventfd) stay open as long as the ring.
            let _ = unsafe { ring.submission().push(sqe) };
        }
    }
    let mut features = Features {
        multishot_poll: true,
        multishot_accept: false,
        cancel_fd: false,
        multishot_recv: false,
        #[cfg(test)]
        nowait_reads: false,
    };
    let mut waker_armed = true;
    let mut seen = 0;
    // Both probes complete at submission; the timeout only guards against the unexpected.
    let ts = Timespec::from(Duration::from_secs(1));
    for _ in 0..3 {
        let args = SubmitArgs::new().timespec(&ts);
        let _ = ring.submitter().submit_with_args(3 - seen, &args);
        for cqe in ring.completion() {
            let res = cqe.result();
            match cqe.user_data() {
                PROBE_CANCEL_UD => {
                    seen += 1;
                    features.cancel_fd = res >= 0 || res == -libc::ENOENT;
                }
                PROBE_ACCEPT_UD => {
                    seen += 1;
                    features.multishot_accept = res == -libc::ENOTSOCK;
                }
                PROBE_RECV_UD => {
                    seen += 1;
                    features.multishot_recv = res == -libc::ENOTSOCK;
                }
                ud if ud == waker_ud && !cqueue::more(cqe.flags()) => {
                    waker_armed = false;
                    if res == -libc::EINVAL {
                        features.multishot_poll = false;
                    }
                }
                _ => {}
            }
        }
        if seen >= 3 {
            break;
        }
    }
    (features, waker_armed)
}
