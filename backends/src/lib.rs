//! The kernel mechanisms under fdloop.
//!
//! This crate knows nothing of callbacks or fibers. It takes operations tagged with a caller's
//! `u64` and hands back [`Completion`]s. Two drivers implement one contract:
//!
//! * [`uring`] — an io_uring ring (the `io-uring` crate);
//! * [`epoll`] — an epoll set, readiness-then-syscall, plus a small thread pool for regular files.
//!
//! [`Driver`] is a closed enum over the two, chosen once at start-up by [`Driver::new`].
//!
//! # The contract
//!
//! * **Exactly one final completion (I1).** Every operation given to [`Driver::push`] yields exactly
//!   one completion with `more == false`. Multishot operations may yield any number of completions
//!   with `more == true` before it. This holds when the operation is cancelled (`-ECANCELED`),
//!   fails (`-errno`), or the driver shuts down ([`Driver::shutdown`]).
//! * **Memory and fds (I2, I3).** `push` is `unsafe`: the caller promises that every buffer, iovec,
//!   msghdr and address the operation points to stays valid and unmoved, and that the fd stays
//!   open, until that final completion has been returned by [`Driver::wait`]. Building an [`Op`]
//!   is safe.
//! * **Cancellation is a request.** [`Driver::cancel`] and [`Driver::cancel_fd`] ask for an early
//!   end; the target still reports its own final completion, which may be a success (a read that
//!   had already consumed data, an accept that had produced an fd: the caller must adopt or close
//!   such results).
//! * **Waiting.** [`Driver::wait`] submits what is queued and returns once at least one completion
//!   is ready, the timeout has passed, or a [`Waker`] was woken from any thread.
//! * **No busy loops.** A driver never spins: with nothing ready, `wait` blocks in the kernel.
//!
//! # Choosing a driver
//!
//! [`BackendChoice::Auto`] builds the real ring with the real flags, probes every opcode the
//! uring driver emits, and falls back to epoll when io_uring is unavailable (ENOSYS, EPERM,
//! EOPNOTSUPP, EACCES, or EINVAL after retrying without optional flags). Resource errors (ENOMEM
//! after retrying a smaller ring, EMFILE, ENFILE) are reported, not hidden. The environment
//! variable `FDLOOP_BACKEND=auto|uring|epoll` (read by [`BackendChoice::from_env`]) forces a choice;
//! a forced choice that fails is an error. [`Driver::info`] says which driver runs and why.

#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

pub mod bufring;
pub mod epoll;
mod fdclass;
mod slab;
mod sys;
#[cfg(test)]
mod test_fds;
pub mod uring;
mod waker;

pub use bufring::BufRing;
pub use fdclass::{note_close, FdClass};
pub use slab::{OpId, OpSlab};
pub use waker::Waker;

/// Poll interest and result bits. They are the `poll(2)` bits, shared by both drivers.
pub mod interest {
    /// Data to read (`POLLIN`).
    pub const READABLE: u32 = libc::POLLIN as u32;
    /// Room to write (`POLLOUT`).
    pub const WRITABLE: u32 = libc::POLLOUT as u32;
    /// Exceptional condition (`POLLPRI`): TCP urgent data, sysfs/kernfs change notification.
    pub const PRIORITY: u32 = libc::POLLPRI as u32;
    /// Peer closed its writing half (`POLLRDHUP`).
    pub const RDHUP: u32 = libc::POLLRDHUP as u32;
    /// Error condition (`POLLERR`); always reported, never needs asking for.
    pub const ERROR: u32 = libc::POLLERR as u32;
    /// Hang-up (`POLLHUP`); always reported, never needs asking for.
    pub const HUP: u32 = libc::POLLHUP as u32;
    /// Invalid fd (`POLLNVAL`).
    pub const INVALID: u32 = libc::POLLNVAL as u32;
}

/// One operation for a driver. Building one is safe; handing it to [`Driver::push`] is not.
///
/// Results (in [`Completion::result`]) are what the matching syscall returns, or `-errno`:
/// byte counts for I/O, the new fd for `Accept`, `0` for `Connect`/`Close`/`Fsync`/`Nop`, and the
/// returned event bits (see [`interest`]) for `Poll`.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Completes at once with result 0. Useful to test the plumbing.
    Nop,
    /// Wait until `fd` reports one of `events` (see [`interest`]); `ERROR` and `HUP` are always
    /// reported. One-shot polls are level-checked when armed: if the condition already holds they
    /// complete at once. A multishot poll stays armed and reports with `more == true` until
    /// cancelled; on io_uring it reports once per wake-up (edge-like), on epoll once per `wait`
    /// while the condition holds (level). Callers who want level semantics on both drivers re-arm
    /// one-shot polls.
    Poll {
        /// The fd to watch.
        fd: RawFd,
        /// Interest bits from [`interest`].
        events: u32,
        /// Keep reporting until cancelled.
        multishot: bool,
    },
    /// `read(2)` at the file position, or `pread(2)` at `offset`.
    Read {
        /// Source fd.
        fd: RawFd,
        /// Destination buffer.
        buf: *mut u8,
        /// Its length.
        len: u32,
        /// `Some` for positional I/O on files.
        offset: Option<u64>,
    },
    /// `write(2)` at the file position, or `pwrite(2)` at `offset`.
    Write {
        /// Destination fd.
        fd: RawFd,
        /// Source buffer.
        buf: *const u8,
        /// Its length.
        len: u32,
        /// `Some` for positional I/O on files.
        offset: Option<u64>,
    },
    /// `readv(2)` / `preadv(2)`.
    Readv {
        /// Source fd.
        fd: RawFd,
        /// The iovec array.
        iov: *const libc::iovec,
        /// Its length.
        iovcnt: u32,
        /// `Some` for positional I/O on files.
        offset: Option<u64>,
    },
    /// `writev(2)` / `pwritev(2)`.
    Writev {
        /// Destination fd.
        fd: RawFd,
        /// The iovec array.
        iov: *const libc::iovec,
        /// Its length.
        iovcnt: u32,
        /// `Some` for positional I/O on files.
        offset: Option<u64>,
    },
    /// `recv(2)`.
    Recv {
        /// A socket.
        fd: RawFd,
        /// Destination buffer.
        buf: *mut u8,
        /// Its length.
        len: u32,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `send(2)`. Drivers add `MSG_NOSIGNAL`: a closed peer gives `-EPIPE`, never `SIGPIPE`.
    Send {
        /// A socket.
        fd: RawFd,
        /// Source buffer.
        buf: *const u8,
        /// Its length.
        len: u32,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// Multishot `recv(2)` into buffers picked from a [`BufRing`]: one completion per received
    /// chunk, with `more == true` and a result that packs the buffer id and the byte count
    /// ([`bufring::unpack`]); that buffer belongs to the caller until it recycles it
    /// ([`BufRing::recycle`]). The final completion never carries data: `0` at end of stream,
    /// `-ENOBUFS` when the ring was empty when data arrived (the data stays in the socket:
    /// recycle buffers and push again), `-ECANCELED`, or another `-errno`.
    ///
    /// The ring must have been given to [`Driver::register_buf_ring`]. On io_uring the kernel
    /// picks the buffers (Linux 6.0; before, the driver polls and receives in user space). On
    /// epoll the driver receives into the ring's head buffer when the socket is readable.
    RecvMulti {
        /// A socket.
        fd: RawFd,
        /// The buffers; the pointer must stay valid until the final completion (I2).
        ring: *const BufRing,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `recvmsg(2)`.
    RecvMsg {
        /// A socket.
        fd: RawFd,
        /// The message header (and everything it points to).
        msg: *mut libc::msghdr,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `sendmsg(2)`. Drivers add `MSG_NOSIGNAL`.
    SendMsg {
        /// A socket.
        fd: RawFd,
        /// The message header (and everything it points to).
        msg: *const libc::msghdr,
        /// `MSG_*` flags.
        flags: i32,
    },
    /// `accept4(2)`; the new fd is always `SOCK_CLOEXEC`. `addr`/`addrlen` may both be null.
    /// A multishot accept reports each new connection with `more == true`; on io_uring it needs
    /// kernel 5.19 and silently becomes a re-armed one-shot accept where it is missing.
    Accept {
        /// A listening socket.
        fd: RawFd,
        /// Where to store the peer address, or null.
        addr: *mut libc::sockaddr_storage,
        /// In: size of `*addr`; out: the address length. Null when `addr` is.
        addrlen: *mut libc::socklen_t,
        /// Extra `accept4` flags (`SOCK_NONBLOCK`).
        flags: i32,
        /// Keep accepting until cancelled.
        multishot: bool,
    },
    /// `connect(2)`; completes when the connection is established or has failed.
    Connect {
        /// A socket.
        fd: RawFd,
        /// The address to connect to.
        addr: *const libc::sockaddr_storage,
        /// Its length.
        addrlen: libc::socklen_t,
    },
    /// `close(2)`. The caller transfers the fd; it is closed even when the result is an error.
    Close {
        /// The fd to close.
        fd: RawFd,
    },
    /// `fsync(2)`, or `fdatasync(2)` when `datasync`.
    Fsync {
        /// A file.
        fd: RawFd,
        /// Only data, not metadata.
        datasync: bool,
    },
}

impl Op {
    /// The fd this operation targets, if any.
    pub fn fd(&self) -> Option<RawFd> {
        match *self {
            Op::Nop => None,
            Op::Poll { fd, .. }
            | Op::Read { fd, .. }
            | Op::Write { fd, .. }
            | Op::Readv { fd, .. }
            | Op::Writev { fd, .. }
            | Op::Recv { fd, .. }
            | Op::RecvMulti { fd, .. }
            | Op::Send { fd, .. }
            | Op::RecvMsg { fd, .. }
            | Op::SendMsg { fd, .. }
            | Op::Accept { fd, .. }
            | Op::Connect { fd, .. }
            | Op::Close { fd }
            | Op::Fsync { fd, .. } => Some(fd),
        }
    }

    /// Whether this operation may report more than once.
    pub fn is_multishot(&self) -> bool {
        matches!(
            self,
            Op::Poll {
                multishot: true,
                ..
            } | Op::Accept {
                multishot: true,
                ..
            } | Op::RecvMulti { .. }
        )
    }

    /// Whether `result`, from this operation's syscall, is a report of a multishot operation
    /// that goes on (rather than its end): any non-negative result, except end of stream (`0`)
    /// for [`Op::RecvMulti`].
    pub fn goes_on_after(&self, result: i32) -> bool {
        match self {
            Op::RecvMulti { .. } => result > 0,
            _ => self.is_multishot() && result >= 0,
        }
    }
}

/// What a driver reports for an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The caller's tag given to [`Driver::push`].
    pub user_data: u64,
    /// The syscall result, or `-errno`.
    pub result: i32,
    /// `true` when more completions follow for this operation (multishot); `false` on the final one.
    pub more: bool,
}

impl Completion {
    /// The result as an `io::Result`.
    pub fn io_result(&self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }
}

/// Which driver runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// io_uring.
    Uring,
    /// epoll (+ a thread pool for regular files).
    Epoll,
}

impl BackendKind {
    /// The name `FDLOOP_BACKEND` uses for it: `uring` or `epoll`.
    pub fn short_name(self) -> &'static str {
        match self {
            BackendKind::Uring => "uring",
            BackendKind::Epoll => "epoll",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Uring => "io_uring",
            BackendKind::Epoll => "epoll",
        })
    }
}

/// Which driver to build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// io_uring where it works, else epoll.
    #[default]
    Auto,
    /// io_uring or an error.
    Uring,
    /// epoll.
    Epoll,
}

/// The environment variable that forces a backend.
pub const BACKEND_ENV: &str = "FDLOOP_BACKEND";

impl BackendChoice {
    /// Parses `auto`, `uring` (or `io_uring`) and `epoll`, ignoring ASCII case.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for anything else, naming the accepted values.
    pub fn parse(s: &str) -> io::Result<BackendChoice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(BackendChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(BackendChoice::Uring),
            "epoll" => Ok(BackendChoice::Epoll),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{BACKEND_ENV}={other:?} is not a backend: use auto, uring or epoll"),
            )),
        }
    }

    /// The choice from `FDLOOP_BACKEND`, or `None` when it is unset.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the variable is set to something [`BackendChoice::parse`] rejects.
    pub fn from_env() -> io::Result<Option<BackendChoice>> {
        match std::env::var_os(BACKEND_ENV) {
            None => Ok(None),
            Some(v) => match v.to_str() {
                Some(s) => BackendChoice::parse(s).map(Some),
                None => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{BACKEND_ENV} is not valid UTF-8: use auto, uring or epoll"),
                )),
            },
        }
    }
}

/// How to build a driver.
#[derive(Clone, Debug)]
pub struct Config {
    /// Which driver.
    pub backend: BackendChoice,
    /// Submission-queue entries of the ring (io_uring); rounded up to a power of two, at most 32768.
    pub ring_entries: u32,
    /// Completion-queue entries (io_uring); `None` means 4 × `ring_entries`, at most 65536.
    /// The uring driver keeps in-flight operations below this and queues the excess in user space.
    pub cq_entries: Option<u32>,
    /// Threads of the epoll driver's pool for regular-file operations.
    pub file_threads: usize,
    /// io_uring batch wait (kernel 6.12, `IORING_FEAT_MIN_TIMEOUT`; ignored elsewhere and on
    /// epoll): a `wait` that submits `n` operations and must block waits for `2n` completions
    /// (or the first one, if none has come by then) for at most this long, before it returns
    /// with what has arrived; never longer than its own timeout. A
    /// request/response server then submits its responses and sleeps until the next request in
    /// one `io_uring_enter` instead of two (the responses' own completions no longer end the
    /// wait at once). The price: completions of the submitted operations are handed out up to
    /// this much later when nothing else happens meanwhile. `None` (the default): off.
    pub batch_wait: Option<Duration>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            backend: BackendChoice::Auto,
            ring_entries: 256,
            cq_entries: None,
            file_threads: 4,
            batch_wait: None,
        }
    }
}

/// Which driver runs, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// The driver.
    pub kind: BackendKind,
    /// A human sentence: "forced by FDLOOP_BACKEND=epoll", "io_uring_setup failed with EPERM
    /// (Operation not permitted): io_uring is disabled or filtered here", "io_uring available
    /// (SINGLE_ISSUER|DEFER_TASKRUN)" …
    pub reason: String,
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.kind, self.reason)
    }
}

/// The driver of one loop: a closed enum over the two kernel mechanisms.
///
/// A `Driver` is `!Send` (it is owned by its loop's thread); only its [`Waker`] crosses threads.
pub enum Driver {
    /// io_uring.
    Uring(uring::Uring),
    /// epoll.
    Epoll(epoll::Epoll),
}

impl Driver {
    /// Builds the driver `config` asks for. `config.backend` is used as given: callers that honour
    /// `FDLOOP_BACKEND` resolve it first (see [`BackendChoice::from_env`]).
    ///
    /// # Errors
    ///
    /// * a forced `Uring` where io_uring is unavailable: the setup error, with what happened;
    /// * resource errors (ENOMEM after a smaller ring, EMFILE, ENFILE) on either path;
    /// * epoll or eventfd creation failures.
    pub fn new(config: &Config) -> io::Result<Driver> {
        match config.backend {
            BackendChoice::Epoll => {
                let reason = "chosen by configuration".to_string();
                Ok(Driver::Epoll(epoll::Epoll::new(config, reason)?))
            }
            BackendChoice::Uring => match uring::Uring::new(config) {
                Ok(u) => Ok(Driver::Uring(u)),
                Err(e) => Err(io::Error::new(
                    e.kind(),
                    format!("io_uring was required but is unavailable: {e}"),
                )),
            },
            BackendChoice::Auto => match uring::Uring::new(config) {
                Ok(u) => Ok(Driver::Uring(u)),
                Err(e) if uring::is_unavailable(&e) => {
                    let reason = format!("io_uring unavailable, fell back: {e}");
                    Ok(Driver::Epoll(epoll::Epoll::new(config, reason)?))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Which driver runs, and why.
    pub fn info(&self) -> &BackendInfo {
        match self {
            Driver::Uring(d) => d.info(),
            Driver::Epoll(d) => d.info(),
        }
    }

    /// Queues `op`; its completions will carry `user_data`. Never fails: errors (a bad fd, an
    /// unsupported combination) arrive as the operation's final completion. Operations beyond
    /// what the kernel can take at once are queued in user space.
    ///
    /// # Safety
    ///
    /// (I2, I3) Every pointer in `op` must stay valid (and the memory it points to unmoved and,
    /// for reads, not otherwise accessed) and `op`'s fd must stay open until the final completion
    /// for the returned [`OpId`] has been returned by [`Driver::wait`] or [`Driver::shutdown`].
    /// For `Close`, the fd is transferred to the driver.
    pub unsafe fn push(&mut self, op: Op, user_data: u64) -> OpId {
        match self {
            // SAFETY: (I2, I3) the caller of `push` keeps `op`'s memory valid and unmoved and its
            // fd open until its final completion, which is what `Uring::push` requires.
            Driver::Uring(d) => unsafe { d.push(op, user_data) },
            // SAFETY: (I2, I3) the caller of `push` keeps `op`'s memory valid and unmoved and its
            // fd open until its final completion, which is what `Epoll::push` requires.
            Driver::Epoll(d) => unsafe { d.push(op, user_data) },
        }
    }

    /// Makes `ring`'s buffers available to [`Op::RecvMulti`] on this driver: io_uring registers
    /// it as a provided-buffer ring (`IORING_REGISTER_PBUF_RING`) under a new buffer group
    /// where the kernel has multishot receive (6.0); epoll, and io_uring before 6.0 (which
    /// receives in user space), need nothing.
    ///
    /// # Safety
    ///
    /// (I2) `ring` must stay valid and unmoved until [`Driver::unregister_buf_ring`] or the
    /// driver's drop, whichever comes first.
    ///
    /// # Errors
    ///
    /// io_uring: the registration error (`ENOMEM`), or `EBUSY` when the ring is already
    /// registered or 65,535 groups are in use.
    pub unsafe fn register_buf_ring(&mut self, ring: &BufRing) -> io::Result<()> {
        match self {
            // SAFETY: (I2) the caller of `register_buf_ring` keeps `ring` valid and unmoved until
            // it is unregistered or the driver is dropped, which is what `Uring::register_buf_ring`
            // requires.
            Driver::Uring(d) => unsafe { d.register_buf_ring(ring) },
            Driver::Epoll(_) => Ok(()),
        }
    }

    /// Undoes [`Driver::register_buf_ring`]; a ring that is not registered is left alone. No
    /// operation may use the ring any more (none in flight).
    pub fn unregister_buf_ring(&mut self, ring: &BufRing) {
        if let Driver::Uring(d) = self {
            d.unregister_buf_ring(ring);
        }
    }

    /// Asks for the operation `id` to end early. Returns `false` when `id` is not in flight any
    /// more (already finally completed, or stale). When it returns `true` the operation's final
    /// completion is still to come: `-ECANCELED`, or its real result if it won the race.
    pub fn cancel(&mut self, id: OpId) -> bool {
        match self {
            Driver::Uring(d) => d.cancel(id),
            Driver::Epoll(d) => d.cancel(id),
        }
    }

    /// Asks every operation in flight on `fd` to end early; returns how many were asked. Their
    /// final completions are still to come. Also forgets what the driver cached about `fd` (its
    /// kind, its epoll registration), so the fd number may be reused afterwards.
    pub fn cancel_fd(&mut self, fd: RawFd) -> usize {
        match self {
            Driver::Uring(d) => d.cancel_fd(fd),
            Driver::Epoll(d) => d.cancel_fd(fd),
        }
    }

    /// The owner of `fd` is about to close it: forget what the driver cached about it (its
    /// kind, its epoll registration) so that the number can be reused by another file. Cheap
    /// (no scan, at most one `epoll_ctl`). Operations still in flight on `fd` are a caller bug
    /// (I3); the epoll driver cancels them, the uring driver leaves them to the kernel, which
    /// holds its own reference to the file.
    pub fn forget_fd(&mut self, fd: RawFd) {
        match self {
            Driver::Uring(d) => d.forget_fd(fd),
            Driver::Epoll(d) => d.forget_fd(fd),
        }
    }

    /// Submits what is queued, then waits until at least one completion is ready, `timeout` has
    /// passed (`None`: no limit; `Some(ZERO)`: do not block), or a [`Waker`] fired. Appends every
    /// ready completion to `out` (it is not cleared). Interruptions by signals (EINTR) end the
    /// wait early without an error, so that the caller can look at its signal flags.
    ///
    /// # Errors
    ///
    /// Only unexpected kernel errors of the wait itself; operation errors are completions.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        match self {
            Driver::Uring(d) => d.wait(timeout, out),
            Driver::Epoll(d) => d.wait(timeout, out),
        }
    }

    /// A handle that wakes this driver's `wait` from any thread.
    pub fn waker(&self) -> Waker {
        match self {
            Driver::Uring(d) => d.waker(),
            Driver::Epoll(d) => d.waker(),
        }
    }

    /// Operations pushed whose final completion has not been returned yet.
    pub fn in_flight(&self) -> usize {
        match self {
            Driver::Uring(d) => d.in_flight(),
            Driver::Epoll(d) => d.in_flight(),
        }
    }

    /// Cancels everything in flight and waits (blocking) for every final completion, appending
    /// them to `out`. Afterwards [`Driver::in_flight`] is 0. Dropping a driver does the same and
    /// discards the completions.
    pub fn shutdown(&mut self, out: &mut Vec<Completion>) {
        match self {
            Driver::Uring(d) => d.shutdown(out),
            Driver::Epoll(d) => d.shutdown(out),
        }
    }

    /// The kind of driver.
    pub fn kind(&self) -> BackendKind {
        self.info().kind
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("info", self.info())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}
