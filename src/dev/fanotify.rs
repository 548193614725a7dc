//! fanotify: file-access notifications and permission decisions, from fibers and from callbacks.
//!
//! [`Fanotify`] owns one fanotify group (`fanotify_init` with `FAN_CLOEXEC | FAN_NONBLOCK`;
//! the fds of events are opened `O_RDONLY | O_CLOEXEC`). [`Fanotify::mark`] says which objects
//! to watch — one inode, a whole mount, or a whole file system ([`MarkKind`]) — and for which
//! events ([`Mask`]). Events are read
//!
//! * from a fiber with [`Fanotify::read_events`] (or [`Fanotify::read_events_timeout`]),
//!   which suspends the fiber until at least one event is queued, or
//! * from a callback with [`Fanotify::try_read_events`] (`WouldBlock` when the queue is
//!   empty), after [`Loop::start_poll`](crate::Loop::start_poll) reported the fd readable.
//!
//! ```
//! use fdloop::dev::fanotify::{Class, Fanotify, InitFlags, MarkKind, Mask};
//! use fdloop::Loop;
//!
//! let mut fan = match Fanotify::new(Class::Notification, InitFlags::empty()) {
//!     Ok(fan) => fan,
//!     Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
//!         eprintln!("{e}"); // fanotify needs CAP_SYS_ADMIN
//!         return Ok(());
//!     }
//!     Err(e) => return Err(e),
//! };
//! let file = std::env::temp_dir().join(format!("fdloop-fanotify-doc-{}", std::process::id()));
//! std::fs::write(&file, b"data")?;
//! fan.mark(&file, MarkKind::Inode, Mask::OPEN)?;
//! std::fs::read(&file)?; // an open by this process
//!
//! let lp = Loop::new()?;
//! let events = lp.spawn(move || fan.read_events()).join().unwrap()?;
//! assert!(events[0].mask.contains(Mask::OPEN));
//! assert_eq!(events[0].pid, std::process::id() as i32);
//! assert_eq!(events[0].path()?, file.canonicalize()?); // through the event's own fd
//! drop(events); // closes the events' fds
//! std::fs::remove_file(&file)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Permission events
//!
//! In a group of class [`Class::Content`] or [`Class::PreContent`], marks may ask for
//! permission events ([`Mask::OPEN_PERM`], [`Mask::ACCESS_PERM`], [`Mask::OPEN_EXEC_PERM`]):
//! the process that opens (reads, executes) a marked file **waits** until the group answers
//! with [`Fanotify::respond`]. So:
//!
//! * answer every permission event, promptly: until then the other process is stuck in its
//!   `open(2)` (killable, but stuck);
//! * a permission event dropped without an answer is **allowed** on drop, as the kernel does
//!   for every pending event when the group is closed (the group of a permission class closes
//!   when the [`Fanotify`] and the last of its permission events are gone);
//! * never mark, with a permission mask, a file that the loop's own thread may open: it would
//!   wait for itself.
//!
//! # Privileges
//!
//! fanotify needs `CAP_SYS_ADMIN` (in the initial user namespace, or, on recent kernels, in
//! the user namespace that owns the marked mount or file system). Without it `fanotify_init`
//! fails with `EPERM`, and [`Fanotify::new`] returns a `PermissionDenied` error that says so.
//! Since Linux 5.13 an unprivileged process may create a group with
//! [`InitFlags::REPORT_FID`] and use it in a limited way: inode marks only, no permission
//! events, no event fds (events identify files by file handles, in the
//! [`info`](Event::info) records), a bounded queue, and other processes' pids hidden.
//!
//! # Caveats
//!
//! * **Every event of a non-FID group carries an open fd** of the file, installed in this
//!   process when the event is read. Each counts against `RLIMIT_NOFILE` until it is dropped:
//!   handle events and drop them, do not pile them up. (A read that cannot install an fd
//!   loses that event; a permission event is then denied by the kernel.) One read returns at
//!   most one 4 KiB buffer's worth of events (about 170) to bound this.
//! * **Overflow.** The queue holds 16384 events unless [`InitFlags::UNLIMITED_QUEUE`] was
//!   given. Beyond it, events are dropped and one event of kind [`EventKind::Overflow`] (no fd)
//!   is queued: **rescan** whatever you keep in sync with the marked objects.
//! * **Merging.** Events on the same object by the same process, not yet read, are merged into
//!   one event whose mask holds every bit.
//! * The pid is the process's (thread group's) id, or the thread's with
//!   [`InitFlags::REPORT_TID`].
//!
//! [`decode`] parses a buffer read from a fanotify fd; it is exposed for tools that read the
//! fd themselves.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::ops::{BitAnd, BitOr, BitOrAssign};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fiber::scheduler::current_or_panic;
use crate::sys::{cvt, LoopFd};
use crate::Interest;

/// Size of the read buffer: bounds the event fds installed by one read.
const BUF_LEN: usize = 4096;

/// `FAN_EVENT_METADATA_LEN`: size of `struct fanotify_event_metadata`.
pub const METADATA_LEN: usize = 24;

/// `FAN_PRE_ACCESS` (Linux 6.14), not in every libc.
const FAN_PRE_ACCESS: u64 = 0x0010_0000;

macro_rules! flag_type {
    (
        $(#[$meta:meta])*
        $name:ident: $int:ty {
            $( $(#[$fmeta:meta])* $flag:ident = $value:expr; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name($int);

        impl $name {
            $( $(#[$fmeta])* pub const $flag: $name = $name($value); )*

            /// No bit set.
            pub const fn empty() -> $name {
                $name(0)
            }

            /// The raw bits.
            pub const fn bits(self) -> $int {
                self.0
            }

            /// From raw bits, keeping those this version does not name.
            pub const fn from_bits_retain(bits: $int) -> $name {
                $name(bits)
            }

            /// Whether every bit of `other` is set in `self`.
            pub const fn contains(self, other: $name) -> bool {
                self.0 & other.0 == other.0
            }

            /// Whether `self` and `other` share a bit.
            pub const fn intersects(self, other: $name) -> bool {
                self.0 & other.0 != 0
            }

            /// Whether no bit is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
        }

        impl BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name {
                $name(self.0 | rhs.0)
            }
        }

        impl BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: $name) {
                self.0 |= rhs.0;
            }
        }

        impl BitAnd for $name {
            type Output = $name;
            fn bitand(self, rhs: $name) -> $name {
                $name(self.0 & rhs.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut names: Vec<String> = Vec::new();
                let mut left = self.0;
                $(
                    // Single bits only: the combinations (CLOSE, MOVE) are listed as parts.
                    if ($value as $int).count_ones() == 1 && self.0 & $value == $value {
                        names.push(stringify!($flag).to_string());
                        left &= !$value;
                    }
                )*
                if left != 0 {
                    names.push(format!("{left:#x}"));
                }
                if names.is_empty() {
                    names.push("empty".to_string());
                }
                write!(f, "{}({})", stringify!($name), names.join(" | "))
            }
        }
    };
}

flag_type! {
    /// Event bits: what a mark asks for, and what an event reports.
    Mask: u64 {
        /// A file was read.
        ACCESS = libc::FAN_ACCESS;
        /// A file was written.
        MODIFY = libc::FAN_MODIFY;
        /// Metadata changed (FID groups only).
        ATTRIB = libc::FAN_ATTRIB;
        /// A file opened for writing was closed.
        CLOSE_WRITE = libc::FAN_CLOSE_WRITE;
        /// A file or directory not opened for writing was closed.
        CLOSE_NOWRITE = libc::FAN_CLOSE_NOWRITE;
        /// A file or directory was opened.
        OPEN = libc::FAN_OPEN;
        /// An entry left a directory (FID groups only).
        MOVED_FROM = libc::FAN_MOVED_FROM;
        /// An entry arrived in a directory (FID groups only).
        MOVED_TO = libc::FAN_MOVED_TO;
        /// An entry was created (FID groups only).
        CREATE = libc::FAN_CREATE;
        /// An entry was deleted (FID groups only).
        DELETE = libc::FAN_DELETE;
        /// A marked object was deleted (FID groups only).
        DELETE_SELF = libc::FAN_DELETE_SELF;
        /// A marked object was moved (FID groups only).
        MOVE_SELF = libc::FAN_MOVE_SELF;
        /// A file was opened to be executed.
        OPEN_EXEC = libc::FAN_OPEN_EXEC;
        /// The queue overflowed: events were lost.
        Q_OVERFLOW = libc::FAN_Q_OVERFLOW;
        /// A file-system error (FID groups, filesystem marks).
        FS_ERROR = libc::FAN_FS_ERROR;
        /// Permission to open (Content and PreContent classes).
        OPEN_PERM = libc::FAN_OPEN_PERM;
        /// Permission to read (Content and PreContent classes).
        ACCESS_PERM = libc::FAN_ACCESS_PERM;
        /// Permission to open for execution (Content and PreContent classes).
        OPEN_EXEC_PERM = libc::FAN_OPEN_EXEC_PERM;
        /// Permission before a range of a file is accessed (PreContent class, Linux 6.14).
        PRE_ACCESS = FAN_PRE_ACCESS;
        /// Report events on the direct children of a marked directory too.
        EVENT_ON_CHILD = libc::FAN_EVENT_ON_CHILD;
        /// A rename (FID groups with directory names).
        RENAME = libc::FAN_RENAME;
        /// Report events on directories too (and, in events, the subject is a directory).
        ONDIR = libc::FAN_ONDIR;
        /// `CLOSE_WRITE | CLOSE_NOWRITE`.
        CLOSE = libc::FAN_CLOSE;
        /// `MOVED_FROM | MOVED_TO`.
        MOVE = libc::FAN_MOVE;
    }
}

impl Mask {
    /// Every permission-event bit.
    pub const ALL_PERM: Mask = Mask(
        libc::FAN_OPEN_PERM | libc::FAN_ACCESS_PERM | libc::FAN_OPEN_EXEC_PERM | FAN_PRE_ACCESS,
    );
}

flag_type! {
    /// Optional `fanotify_init` flags (`FAN_CLOEXEC | FAN_NONBLOCK` are always set).
    InitFlags: u32 {
        /// No limit on the queue (needs `CAP_SYS_ADMIN`).
        UNLIMITED_QUEUE = libc::FAN_UNLIMITED_QUEUE;
        /// No limit on the number of marks (needs `CAP_SYS_ADMIN`).
        UNLIMITED_MARKS = libc::FAN_UNLIMITED_MARKS;
        /// Permission answers may ask for an audit record.
        ENABLE_AUDIT = libc::FAN_ENABLE_AUDIT;
        /// A pidfd of the process in each event's info records.
        REPORT_PIDFD = libc::FAN_REPORT_PIDFD;
        /// Events carry the thread id instead of the process id.
        REPORT_TID = libc::FAN_REPORT_TID;
        /// Events identify objects by file handle (info records) instead of an fd; allowed
        /// unprivileged, for inode marks.
        REPORT_FID = libc::FAN_REPORT_FID;
        /// Events carry the file handle of the directory.
        REPORT_DIR_FID = libc::FAN_REPORT_DIR_FID;
        /// Events carry the entry's name (with `REPORT_DIR_FID`).
        REPORT_NAME = libc::FAN_REPORT_NAME;
        /// Events carry the target's file handle too (with the three above).
        REPORT_TARGET_FID = libc::FAN_REPORT_TARGET_FID;
    }
}

/// The group's class: notification only, or permission decisions too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Class {
    /// `FAN_CLASS_NOTIF`: notifications, no permission events.
    Notification,
    /// `FAN_CLASS_CONTENT`: permission decisions once the content is final.
    Content,
    /// `FAN_CLASS_PRE_CONTENT`: permission decisions before the content is final
    /// (hierarchical storage managers).
    PreContent,
}

impl Class {
    fn bits(self) -> u32 {
        match self {
            Class::Notification => libc::FAN_CLASS_NOTIF,
            Class::Content => libc::FAN_CLASS_CONTENT,
            Class::PreContent => libc::FAN_CLASS_PRE_CONTENT,
        }
    }
}

/// What a mark covers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MarkKind {
    /// `FAN_MARK_INODE`: the file or directory at the path.
    Inode,
    /// `FAN_MARK_MOUNT`: the whole mount that holds the path.
    Mount,
    /// `FAN_MARK_FILESYSTEM`: the whole file system that holds the path.
    Filesystem,
}

impl MarkKind {
    fn bits(self) -> u32 {
        match self {
            MarkKind::Inode => libc::FAN_MARK_INODE,
            MarkKind::Mount => libc::FAN_MARK_MOUNT,
            MarkKind::Filesystem => libc::FAN_MARK_FILESYSTEM,
        }
    }
}

/// The answer to a permission event.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Response {
    /// `FAN_ALLOW`: the operation proceeds.
    Allow,
    /// `FAN_DENY`: the operation fails with `EPERM`.
    Deny,
}

impl Response {
    fn bits(self) -> u32 {
        match self {
            Response::Allow => libc::FAN_ALLOW,
            Response::Deny => libc::FAN_DENY,
        }
    }
}

/// What kind of event an [`Event`] is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum EventKind {
    /// A notification: nobody waits for it.
    Notification,
    /// A permission event: a process waits until [`Fanotify::respond`] answers it.
    Permission,
    /// `FAN_Q_OVERFLOW`: the queue overflowed and events were lost: rescan.
    Overflow,
}

impl EventKind {
    /// The kind of an event with mask `mask`.
    pub fn from_mask(mask: Mask) -> EventKind {
        if mask.contains(Mask::Q_OVERFLOW) {
            EventKind::Overflow
        } else if mask.intersects(Mask::ALL_PERM) {
            EventKind::Permission
        } else {
            EventKind::Notification
        }
    }
}

/// The group of a permission event, to answer it (or allow it when dropped unanswered).
struct Pending {
    /// A duplicate of the group's fd, shared by the group's permission events.
    group: Arc<OwnedFd>,
    /// The event's fd number, which identifies the event to the kernel.
    fd: RawFd,
    answered: AtomicBool,
}

impl Pending {
    fn answer(&self, response: Response) -> io::Result<()> {
        if self.answered.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "this permission event was already answered",
            ));
        }
        let msg = libc::fanotify_response {
            fd: self.fd,
            response: response.bits(),
        };
        let len = std::mem::size_of::<libc::fanotify_response>();
        // SAFETY: (FFI) `msg` is a live `fanotify_response` of `len` bytes; the group fd is open
        // while `self.group` is held.
        let n = unsafe {
            libc::write(
                self.group.as_raw_fd(),
                (&msg as *const libc::fanotify_response).cast(),
                len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("answering fanotify permission event (fd {}): {e}", self.fd),
            ));
        }
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered.load(Ordering::Acquire) {
            let _ = self.answer(Response::Allow);
        }
    }
}

/// One fanotify event.
pub struct Event {
    /// What happened (several bits when events were merged).
    pub mask: Mask,
    /// The process (or, with [`InitFlags::REPORT_TID`], the thread) that caused it; 0 or
    /// hidden in some unprivileged cases.
    pub pid: i32,
    /// An fd of the object, read-only, close-on-exec; closed when dropped. `None` for an
    /// overflow and in FID groups (`FAN_NOFD`). It is only a view: answering a permission
    /// event does not need it, so it may be taken.
    pub fd: Option<OwnedFd>,
    /// The event's kind.
    pub kind: EventKind,
    /// The info records that follow the metadata (file handles, names, pidfd) in groups made
    /// with `REPORT_*` flags; empty otherwise.
    pub info: Vec<u8>,
    pending: Option<Pending>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("mask", &self.mask)
            .field("pid", &self.pid)
            .field("fd", &self.fd)
            .field("kind", &self.kind)
            .field("info_len", &self.info.len())
            .finish()
    }
}

impl Event {
    /// The path of the event's file, from `/proc/self/fd/N`. (The file may have been renamed
    /// or deleted since; a deleted file's path ends with `" (deleted)"`.)
    ///
    /// # Errors
    ///
    /// `NotFound` when the event has no fd (an overflow, a FID group, or the fd was taken);
    /// `readlink(2)` errors (`/proc` not mounted …).
    pub fn path(&self) -> io::Result<PathBuf> {
        let fd = self.fd.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "this fanotify event carries no fd, hence no path",
            )
        })?;
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    /// Whether this is a permission event still waiting for an answer.
    pub fn needs_response(&self) -> bool {
        self.pending
            .as_ref()
            .is_some_and(|p| !p.answered.load(Ordering::Acquire))
    }
}

/// One `struct fanotify_event_metadata` record as the kernel wrote it, borrowed from the read
/// buffer. The fd is a raw number: whoever decodes a buffer the kernel filled owns those fds
/// and must close them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RawEvent<'a> {
    /// The event bits.
    pub mask: u64,
    /// The fd of the object, or `FAN_NOFD` (−1).
    pub fd: i32,
    /// The pid (or tid).
    pub pid: i32,
    /// The info records after the metadata, up to `event_len`.
    pub info: &'a [u8],
}

impl RawEvent<'_> {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        EventKind::from_mask(Mask(self.mask))
    }
}

/// Why [`decode`] stopped before the end of its buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DecodeError {
    /// Fewer bytes left than the record needs.
    Truncated {
        /// Bytes the record needs (its metadata, or its `event_len`).
        needed: usize,
        /// Bytes left in the buffer.
        available: usize,
    },
    /// `vers` is not `FANOTIFY_METADATA_VERSION` (3): another ABI.
    Version(u8),
    /// `event_len` is shorter than the metadata.
    EventLen(u32),
    /// `metadata_len` is shorter than the metadata this version knows, or longer than the
    /// event.
    MetadataLen(u16),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { needed, available } => write!(
                f,
                "truncated fanotify record: {needed} bytes needed, {available} left"
            ),
            DecodeError::Version(v) => write!(
                f,
                "fanotify metadata version {v}, this code knows version {}",
                libc::FANOTIFY_METADATA_VERSION
            ),
            DecodeError::EventLen(n) => write!(f, "fanotify event_len {n} is too small"),
            DecodeError::MetadataLen(n) => write!(f, "fanotify metadata_len {n} is out of range"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for io::Error {
    fn from(e: DecodeError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Decodes a buffer filled by `read(2)` on a fanotify fd into its records.
///
/// Safe on any input: every length is checked against the buffer and the metadata version
/// must be `FANOTIFY_METADATA_VERSION`. The first malformed record is yielded as an `Err`,
/// and decoding stops there.
///
/// ```
/// use fdloop::dev::fanotify::{decode, EventKind, METADATA_LEN};
///
/// // One FAN_Q_OVERFLOW record: event_len 24, version 3, metadata_len 24, fd FAN_NOFD.
/// let mut buf = Vec::new();
/// buf.extend_from_slice(&(METADATA_LEN as u32).to_ne_bytes());
/// buf.extend_from_slice(&[3, 0]);
/// buf.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
/// buf.extend_from_slice(&0x4000u64.to_ne_bytes());
/// buf.extend_from_slice(&(-1i32).to_ne_bytes());
/// buf.extend_from_slice(&0i32.to_ne_bytes());
/// let records: Vec<_> = decode(&buf).collect::<Result<_, _>>().unwrap();
/// assert_eq!(records[0].kind(), EventKind::Overflow);
/// assert_eq!(records[0].fd, -1);
/// ```
pub fn decode(buf: &[u8]) -> Records<'_> {
    Records { buf, failed: false }
}

/// The iterator of [`decode`].
#[derive(Clone, Debug)]
pub struct Records<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Records<'a> {
    /// The bytes not decoded yet (after an error: from the malformed record on).
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn record(&mut self) -> Result<RawEvent<'a>, DecodeError> {
        let buf = self.buf;
        let Some(meta) = buf.first_chunk::<METADATA_LEN>() else {
            return Err(DecodeError::Truncated {
                needed: METADATA_LEN,
                available: buf.len(),
            });
        };
        let event_len = u32::from_ne_bytes([meta[0], meta[1], meta[2], meta[3]]);
        let vers = meta[4];
        let metadata_len = u16::from_ne_bytes([meta[6], meta[7]]);
        let mask = u64::from_ne_bytes([
            meta[8], meta[9], meta[10], meta[11], meta[12], meta[13], meta[14], meta[15],
        ]);
        let fd = i32::from_ne_bytes([meta[16], meta[17], meta[18], meta[19]]);
        let pid = i32::from_ne_bytes([meta[20], meta[21], meta[22], meta[23]]);
        if vers != libc::FANOTIFY_METADATA_VERSION {
            return Err(DecodeError::Version(vers));
        }
        let len = usize::try_from(event_len).unwrap_or(usize::MAX);
        if len < METADATA_LEN {
            return Err(DecodeError::EventLen(event_len));
        }
        if len > buf.len() {
            return Err(DecodeError::Truncated {
                needed: len,
                available: buf.len(),
            });
        }
        let meta_len = usize::from(metadata_len);
        if meta_len < METADATA_LEN || meta_len > len {
            return Err(DecodeError::MetadataLen(metadata_len));
        }
        self.buf = &buf[len..];
        Ok(RawEvent {
            mask,
            fd,
            pid,
            info: &buf[meta_len..len],
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RawEvent<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let r = self.record();
        self.failed = r.is_err();
        Some(r)
    }
}

/// A fanotify group for a loop (see the [module documentation](self)).
pub struct Fanotify {
    fd: LoopFd,
    /// A duplicate of the group fd for answering permission events (permission classes only).
    responder: Option<Arc<OwnedFd>>,
    /// The read buffer, 8-byte aligned.
    buf: Box<[u64]>,
}

impl fmt::Debug for Fanotify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fanotify")
            .field("fd", &self.fd.as_raw_fd())
            .field("permission_class", &self.responder.is_some())
            .finish()
    }
}

fn path_error(what: &str, path: &Path, e: io::Error, hint: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}{hint}", path.display()))
}

impl Fanotify {
    /// A new fanotify group of `class`, with `flags` besides `FAN_CLOEXEC | FAN_NONBLOCK`.
    ///
    /// # Errors
    ///
    /// * `PermissionDenied` (`EPERM`) without `CAP_SYS_ADMIN`; the message says that fanotify
    ///   needs it, or `InitFlags::REPORT_FID` for limited unprivileged use;
    /// * `EINVAL` for flags this kernel does not know or cannot combine (the permission
    ///   classes with FID reporting on older kernels);
    /// * `EMFILE` when the user has 128 groups (`/proc/sys/fs/fanotify/max_user_groups`) or
    ///   the process is out of fds; `ENOSYS` on a kernel without fanotify.
    pub fn new(class: Class, flags: InitFlags) -> io::Result<Fanotify> {
        let init = class.bits() | flags.bits() | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
        let event_f_flags = (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint;
        // SAFETY: (FFI) no pointers.
        let raw = unsafe { libc::fanotify_init(init, event_f_flags) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) => {
                    ": fanotify needs CAP_SYS_ADMIN (or InitFlags::REPORT_FID mode for limited \
                     unprivileged use: inode marks only, no permission events, no event fds)"
                }
                Some(libc::EINVAL) => ": flags unknown to this kernel, or not allowed together",
                Some(libc::EMFILE) => {
                    ": too many fanotify groups for this user \
                     (/proc/sys/fs/fanotify/max_user_groups) or too many open files"
                }
                Some(libc::ENOSYS) => ": this kernel has no fanotify",
                _ => "",
            };
            return Err(io::Error::new(
                e.kind(),
                format!("fanotify_init: {e}{hint}"),
            ));
        }
        // SAFETY: (FFI) fanotify_init returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let responder = match class {
            Class::Notification => None,
            Class::Content | Class::PreContent => {
                // SAFETY: (FFI) F_DUPFD_CLOEXEC takes no pointer; `fd` is open.
                let dup = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
                // SAFETY: (FFI) a fresh fd that nothing else owns.
                Some(Arc::new(unsafe { OwnedFd::from_raw_fd(dup) }))
            }
        };
        Ok(Fanotify {
            fd: LoopFd::new(fd),
            responder,
            buf: vec![0u64; BUF_LEN / 8].into_boxed_slice(),
        })
    }

    fn mark_raw(
        &mut self,
        what: &str,
        flags: u32,
        path: Option<&Path>,
        mask: Mask,
    ) -> io::Result<()> {
        let c_path = match path {
            Some(p) => Some(CString::new(p.as_os_str().as_bytes()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{what} {}: the path contains a NUL byte", p.display()),
                )
            })?),
            None => None,
        };
        let ptr = c_path.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: (FFI) `ptr` is null (FAN_MARK_FLUSH ignores the path) or a NUL-terminated string
        // that outlives the call; the fd is ours.
        let r = unsafe {
            libc::fanotify_mark(self.fd.as_raw_fd(), flags, mask.bits(), libc::AT_FDCWD, ptr)
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL)
                    if mask.intersects(Mask::ALL_PERM) && self.responder.is_none() =>
                {
                    " (permission events need Class::Content or Class::PreContent)"
                }
                Some(libc::EINVAL) => " (a mask this kernel or this group cannot use)",
                Some(libc::EPERM) => {
                    " (mount and filesystem marks, and marks in groups without FID \
                     reporting, need CAP_SYS_ADMIN)"
                }
                Some(libc::ENOSPC) => " (the user's limit of fanotify marks is reached)",
                Some(libc::ENOENT) if flags & libc::FAN_MARK_REMOVE != 0 => {
                    " (no such mark: the path exists but is not marked with that kind)"
                }
                _ => "",
            };
            return Err(match path {
                Some(p) => path_error(what, p, e, hint),
                None => io::Error::new(e.kind(), format!("{what}: {e}{hint}")),
            });
        }
        Ok(())
    }

    /// Marks `path` (an inode, or the mount or file system that holds it) for the events in
    /// `mask`; marking again adds to the mask.
    ///
    /// # Errors
    ///
    /// Each error names `path`: `NotFound`; `EINVAL` for permission bits in a notification
    /// group or bits this kernel or group cannot report; `EPERM` for mount and filesystem marks
    /// without `CAP_SYS_ADMIN`; `ENOSPC` past the user's mark limit; `EXDEV`/`ENODEV` for FID
    /// groups on file systems without file handles.
    pub fn mark(&mut self, path: impl AsRef<Path>, kind: MarkKind, mask: Mask) -> io::Result<()> {
        self.mark_raw(
            "fanotify_mark(ADD)",
            libc::FAN_MARK_ADD | kind.bits(),
            Some(path.as_ref()),
            mask,
        )
    }

    /// Removes the bits of `mask` from the mark of `kind` on `path`; the mark goes when its
    /// mask is empty.
    ///
    /// # Errors
    ///
    /// Each error names `path`: `NotFound` when the path or the mark does not exist.
    pub fn unmark(&mut self, path: impl AsRef<Path>, kind: MarkKind, mask: Mask) -> io::Result<()> {
        self.mark_raw(
            "fanotify_mark(REMOVE)",
            libc::FAN_MARK_REMOVE | kind.bits(),
            Some(path.as_ref()),
            mask,
        )
    }

    /// Removes every mark of `kind` of this group.
    ///
    /// # Errors
    ///
    /// `fanotify_mark(2)` errors (`EINVAL` on a kernel without filesystem marks).
    pub fn flush(&mut self, kind: MarkKind) -> io::Result<()> {
        self.mark_raw(
            "fanotify_mark(FLUSH)",
            libc::FAN_MARK_FLUSH | kind.bits(),
            None,
            Mask::empty(),
        )
    }

    /// Answers permission event `event` of this group. Each permission event must be answered
    /// once; one dropped unanswered is allowed.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `event` is not a permission event of this group or was already
    /// answered; `write(2)` errors (`ENOENT` when the kernel no longer waits for it).
    pub fn respond(&self, event: &Event, response: Response) -> io::Result<()> {
        let pending = event.pending.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a permission event: {:?}", event.mask),
            )
        })?;
        match &self.responder {
            Some(own) if Arc::ptr_eq(own, &pending.group) => pending.answer(response),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "this permission event belongs to another fanotify group",
            )),
        }
    }

    /// Reads the queued events without waiting: for callbacks, after
    /// [`Loop::start_poll`](crate::Loop::start_poll) reported the fd readable.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when no event is queued; `read(2)` errors (`EMFILE` when no fd could be
    /// installed for the first event); `InvalidData` when the kernel's records cannot be
    /// decoded (the events decoded before are dropped: their fds closed, permission events
    /// allowed).
    pub fn try_read_events(&mut self) -> io::Result<Vec<Event>> {
        let n = self.read_raw()?;
        // SAFETY: (FFI) the `u64` buffer is `len * 8` initialised bytes; `u8` has no alignment or
        // validity requirement, and the shared borrow of `self.buf` lasts as long as `bytes`.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.buf.len() * 8)
        };
        let bytes = &bytes[..n.min(bytes.len())];
        let mut events = Vec::new();
        let mut error = None;
        for record in decode(bytes) {
            match record {
                Ok(raw) => events.push(self.adopt(raw)),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        match error {
            Some(e) => Err(e.into()),
            None => Ok(events),
        }
    }

    /// Turns a record that the kernel just wrote into an event that owns its fd.
    fn adopt(&self, raw: RawEvent<'_>) -> Event {
        let fd = (raw.fd >= 0).then(|| {
            // SAFETY: (FFI) the kernel installed this fd in this process for this record, which is
            // decoded exactly once; nothing else owns it.
            unsafe { OwnedFd::from_raw_fd(raw.fd) }
        });
        let kind = raw.kind();
        let pending = match (&self.responder, kind) {
            (Some(group), EventKind::Permission) => Some(Pending {
                group: group.clone(),
                fd: raw.fd,
                answered: AtomicBool::new(false),
            }),
            _ => None,
        };
        Event {
            mask: Mask(raw.mask),
            pid: raw.pid,
            fd,
            kind,
            info: raw.info.to_vec(),
            pending,
        }
    }

    /// Suspends the calling fiber until at least one event is queued, and returns the queued
    /// events (as many as one 4 KiB read holds).
    ///
    /// # Errors
    ///
    /// As [`Fanotify::try_read_events`] (never `WouldBlock`); `ECANCELED` when the loop is
    /// closing.
    ///
    /// # Panics
    ///
    /// Outside a fiber (use [`Fanotify::try_read_events`] from callbacks).
    pub fn read_events(&mut self) -> io::Result<Vec<Event>> {
        self.read_events_until(None)
    }

    /// As [`Fanotify::read_events`], waiting at most `timeout` (a timeout too large to
    /// represent waits forever).
    ///
    /// # Errors
    ///
    /// `WouldBlock` when `timeout` passed without an event; otherwise as
    /// [`Fanotify::read_events`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn read_events_timeout(&mut self, timeout: Duration) -> io::Result<Vec<Event>> {
        self.read_events_until(Instant::now().checked_add(timeout))
    }

    fn read_events_until(&mut self, deadline: Option<Instant>) -> io::Result<Vec<Event>> {
        current_or_panic("fdloop::dev::fanotify::Fanotify::read_events");
        loop {
            match self.try_read_events() {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            let timeout = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(io::Error::from(io::ErrorKind::WouldBlock)),
                },
            };
            crate::fiber::wait(self.fd.as_raw_fd(), Interest::READABLE, timeout)?;
        }
    }

    /// One non-blocking `read(2)` into the buffer; the byte count.
    fn read_raw(&mut self) -> io::Result<usize> {
        let len = self.buf.len() * 8;
        loop {
            // SAFETY: (FFI) the buffer is `len` writable bytes owned by `self`; the fd is ours.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast::<libc::c_void>(),
                    len,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl AsFd for Fanotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Fanotify {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
