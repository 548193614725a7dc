//! inotify: file-system change notifications, from fibers and from callbacks.
//!
//! [`Inotify`] owns one inotify instance (non-blocking, close-on-exec). Watches are added with
//! [`Inotify::add_watch`]; the instance remembers the path of every watch, so that each
//! [`Event`] carries the full [`path`](Event::path) of the object it concerns and not only the
//! name the kernel reports. Events are read
//!
//! * from a fiber with [`Inotify::read_events`] (or [`Inotify::read_events_timeout`]), which
//!   suspends the fiber until at least one event is queued, or
//! * from a callback with [`Inotify::try_read_events`], which fails with `WouldBlock` when the
//!   queue is empty, after [`Loop::start_poll`](crate::Loop::start_poll) said the fd is
//!   readable.
//!
//! ```
//! use fdloop::dev::inotify::{EventKind, Inotify, WatchMask};
//! use fdloop::Loop;
//! use std::ffi::OsStr;
//!
//! let dir = std::env::temp_dir().join(format!("fdloop-inotify-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let mut inotify = Inotify::new()?;
//! inotify.add_watch(&dir, WatchMask::CREATE)?;
//! std::fs::write(dir.join("hello.txt"), b"hi")?;
//!
//! let lp = Loop::new()?;
//! let reader = lp.spawn(move || inotify.read_events()); // suspends only this fiber
//! let events = reader.join().unwrap()?; // outside fibers, `join` runs the loop
//! assert_eq!(events[0].kind, EventKind::Create);
//! assert_eq!(events[0].name.as_deref(), Some(OsStr::new("hello.txt")));
//! assert_eq!(events[0].path.as_deref(), Some(dir.join("hello.txt").as_path()));
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! With a callback:
//!
//! ```
//! use fdloop::dev::inotify::{Inotify, WatchMask};
//! use fdloop::{Interest, Loop};
//! use std::io::ErrorKind;
//! use std::os::fd::AsRawFd;
//!
//! let dir = std::env::temp_dir().join(format!("fdloop-inotify-cb-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let mut inotify = Inotify::new()?;
//! inotify.add_watch(&dir, WatchMask::CREATE | WatchMask::DELETE)?;
//! std::fs::write(dir.join("a"), b"")?;
//! std::fs::remove_file(dir.join("a"))?;
//!
//! let lp = Loop::new()?;
//! let fd = inotify.as_raw_fd();
//! let mut seen = Vec::new();
//! lp.start_poll(fd, Interest::READABLE, move |lp, _ready| {
//!     match inotify.try_read_events() {
//!         Ok(events) => seen.extend(events.into_iter().map(|e| e.kind)),
//!         Err(e) if e.kind() == ErrorKind::WouldBlock => return, // nothing queued after all
//!         Err(e) => panic!("{e}"),
//!     }
//!     if seen.len() == 2 {
//!         // Stop watching; dropping the callback then drops (closes) the Inotify.
//!         lp.detach(fd).unwrap();
//!     }
//! })?;
//! lp.run()?;
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # What the kernel does not tell you
//!
//! * **Overflow.** The kernel queues at most `/proc/sys/fs/inotify/max_queued_events` events
//!   per instance (16384 by default; the value in force when the instance was *created*
//!   counts). Beyond it, events are dropped and one event of kind [`EventKind::Overflow`]
//!   (watch descriptor −1, no path) is queued. Its consequence is on the caller: **events were
//!   lost, rescan** whatever you keep in sync with the watched trees
//!   ([`Inotify::watches`] lists them).
//! * **`IN_IGNORED`.** A watch ends when it is removed ([`Inotify::remove_watch`]), when the
//!   watched object is deleted, or when its file system is unmounted; the kernel then queues an
//!   event of kind [`EventKind::Ignored`]. When it is read, the watch leaves this instance's
//!   map (the event still carries the watch's path). Watch descriptors are not reused soon,
//!   but they are reused eventually: never keep a [`WatchId`] past its `Ignored` event.
//! * **Renames** are two events, [`EventKind::MovedFrom`] then [`EventKind::MovedTo`], with
//!   the same non-zero [`cookie`](Event::cookie). The pair may be **split across two reads**
//!   (one read returns the `MovedFrom`, the next the `MovedTo`), and a move into or out of the
//!   watched directories yields only one half. Keep an unmatched `MovedFrom` for a little while
//!   rather than concluding at once that the file left.
//! * **Paths are as of `add_watch`.** When a watched directory itself is renamed
//!   ([`EventKind::MoveSelf`]), the kernel does not say where to; paths of later events still
//!   start with the old path. Watching the same inode through two paths gives one watch
//!   descriptor; the path given last is the one reported.
//! * **Coalescing and races.** Identical consecutive events are merged into one. To watch a
//!   tree, add a watch to each new directory *and then* scan it: files created between the
//!   `mkdir` and the new watch have no event.
//! * **Limits.** `add_watch` fails with `ENOSPC` once the user's
//!   `/proc/sys/fs/inotify/max_user_watches` watches exist, and [`Inotify::new`] with `EMFILE`
//!   after `max_user_instances` instances; the errors say so.
//!
//! The kernel writes whole events only: a read into a buffer smaller than the next event fails
//! with `EINVAL` rather than returning part of it. [`Inotify`] reads into its own 16 KiB buffer,
//! far above the largest event (`sizeof(inotify_event) + NAME_MAX + 1` = 272 bytes). [`decode`]
//! parses such a buffer; it is exposed for tools that read the fd themselves.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fiber::scheduler::current_or_panic;
use crate::sys::LoopFd;
use crate::Interest;

pub use ::inotify::{EventMask, WatchMask};

/// Size of the read buffer. The largest event is 16 + 256 bytes; a bigger buffer batches.
const BUF_LEN: usize = 16 * 1024;

/// Size of `struct inotify_event` without its name.
const HEADER_LEN: usize = 16;

/// A watch of an [`Inotify`] instance: the kernel's watch descriptor.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct WatchId(i32);

impl WatchId {
    /// The kernel's watch descriptor (−1 for [`EventKind::Overflow`]).
    pub fn as_raw(self) -> i32 {
        self.0
    }
}

impl fmt::Display for WatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "watch {}", self.0)
    }
}

/// What an [`Event`] reports: its main mask bit, with the two conditions a program must act
/// on — [`EventKind::Overflow`] and [`EventKind::Ignored`] — set apart.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum EventKind {
    /// `IN_ACCESS`: a file was read.
    Access,
    /// `IN_ATTRIB`: metadata changed (permissions, timestamps, links, owner …).
    Attrib,
    /// `IN_CLOSE_WRITE`: a file opened for writing was closed.
    CloseWrite,
    /// `IN_CLOSE_NOWRITE`: a file or directory not opened for writing was closed.
    CloseNowrite,
    /// `IN_CREATE`: an entry was created in a watched directory.
    Create,
    /// `IN_DELETE`: an entry was deleted from a watched directory.
    Delete,
    /// `IN_DELETE_SELF`: the watched object itself was deleted (an `Ignored` follows).
    DeleteSelf,
    /// `IN_MODIFY`: a file was written.
    Modify,
    /// `IN_MOVE_SELF`: the watched object itself was moved.
    MoveSelf,
    /// `IN_MOVED_FROM`: an entry left a watched directory (pair it with `MovedTo` by cookie).
    MovedFrom,
    /// `IN_MOVED_TO`: an entry arrived in a watched directory.
    MovedTo,
    /// `IN_OPEN`: a file or directory was opened.
    Open,
    /// `IN_UNMOUNT`: the file system of the watched object was unmounted (an `Ignored`
    /// follows).
    Unmount,
    /// `IN_IGNORED`: the watch is gone (removed, object deleted, file system unmounted). The
    /// watch has left the instance's map.
    Ignored,
    /// `IN_Q_OVERFLOW`: the kernel's queue overflowed and events were lost: rescan.
    Overflow,
    /// A mask this version does not know.
    Other,
}

impl EventKind {
    /// The kind of an event with raw mask `mask`.
    pub fn from_mask(mask: u32) -> EventKind {
        let m = EventMask::from_bits_retain(mask);
        let table = [
            (EventMask::Q_OVERFLOW, EventKind::Overflow),
            (EventMask::IGNORED, EventKind::Ignored),
            (EventMask::UNMOUNT, EventKind::Unmount),
            (EventMask::CREATE, EventKind::Create),
            (EventMask::MODIFY, EventKind::Modify),
            (EventMask::MOVED_FROM, EventKind::MovedFrom),
            (EventMask::MOVED_TO, EventKind::MovedTo),
            (EventMask::DELETE, EventKind::Delete),
            (EventMask::DELETE_SELF, EventKind::DeleteSelf),
            (EventMask::MOVE_SELF, EventKind::MoveSelf),
            (EventMask::ATTRIB, EventKind::Attrib),
            (EventMask::CLOSE_WRITE, EventKind::CloseWrite),
            (EventMask::CLOSE_NOWRITE, EventKind::CloseNowrite),
            (EventMask::OPEN, EventKind::Open),
            (EventMask::ACCESS, EventKind::Access),
        ];
        table
            .iter()
            .find(|(bit, _)| m.contains(*bit))
            .map_or(EventKind::Other, |(_, kind)| *kind)
    }
}

/// One decoded inotify event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Event {
    /// The watch that reported it (−1 for [`EventKind::Overflow`]).
    pub watch: WatchId,
    /// What happened.
    pub kind: EventKind,
    /// The kernel's mask, with its auxiliary bits ([`EventMask::ISDIR`] …).
    pub mask: EventMask,
    /// Links the two halves of a rename ([`EventKind::MovedFrom`] and
    /// [`EventKind::MovedTo`]); 0 for other events.
    pub cookie: u32,
    /// The name of the entry, for events about an entry of a watched directory; `None` for
    /// events about the watched object itself.
    pub name: Option<OsString>,
    /// The watch's path joined with `name`; `None` when the watch is not known to this
    /// instance (an overflow, or a watch added through another handle of the fd).
    pub path: Option<PathBuf>,
}

impl Event {
    /// Whether the event concerns a directory (`IN_ISDIR`).
    pub fn is_dir(&self) -> bool {
        self.mask.contains(EventMask::ISDIR)
    }
}

/// One `struct inotify_event` as the kernel wrote it, borrowed from the read buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RawEvent<'a> {
    /// The watch descriptor.
    pub wd: i32,
    /// The event mask (`IN_*` bits).
    pub mask: u32,
    /// The rename cookie.
    pub cookie: u32,
    /// The entry's name without the kernel's NUL padding, if any.
    pub name: Option<&'a [u8]>,
}

impl RawEvent<'_> {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        EventKind::from_mask(self.mask)
    }
}

/// Decodes a buffer filled by `read(2)` on an inotify fd into its events.
///
/// Safe on any input: a record is yielded only when it lies entirely inside `buf`; decoding
/// stops at the first incomplete one, which [`Decoder::rest`] then returns. The kernel only
/// writes whole records, so `rest` is empty for a buffer it filled.
///
/// ```
/// use fdloop::dev::inotify::{decode, EventKind};
///
/// // wd 1, IN_CREATE, cookie 0, name "a" padded to 4 bytes.
/// let mut buf = Vec::new();
/// for v in [1u32, 0x100, 0, 4] {
///     buf.extend_from_slice(&v.to_ne_bytes());
/// }
/// buf.extend_from_slice(b"a\0\0\0");
/// let events: Vec<_> = decode(&buf).collect();
/// assert_eq!(events.len(), 1);
/// assert_eq!(events[0].kind(), EventKind::Create);
/// assert_eq!(events[0].name, Some(&b"a"[..]));
/// ```
pub fn decode(buf: &[u8]) -> Decoder<'_> {
    Decoder { buf }
}

/// The iterator of [`decode`].
#[derive(Clone, Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// The bytes not decoded: empty once every record was yielded, or an incomplete record.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

impl<'a> Iterator for Decoder<'a> {
    type Item = RawEvent<'a>;

    fn next(&mut self) -> Option<RawEvent<'a>> {
        let buf = self.buf;
        let wd = u32_at(buf, 0)? as i32;
        let mask = u32_at(buf, 4)?;
        let cookie = u32_at(buf, 8)?;
        let len = usize::try_from(u32_at(buf, 12)?).ok()?;
        let end = HEADER_LEN.checked_add(len)?;
        let name = buf.get(HEADER_LEN..end)?;
        self.buf = &buf[end..];
        let name = name.split(|&b| b == 0).next().filter(|n| !n.is_empty());
        Some(RawEvent {
            wd,
            mask,
            cookie,
            name,
        })
    }
}

/// An inotify instance for a loop (see the [module documentation](self)).
pub struct Inotify {
    fd: LoopFd,
    /// Watch descriptor → watched path, until the watch's `IN_IGNORED` is read.
    watches: HashMap<i32, PathBuf>,
    /// The read buffer, 8-byte aligned.
    buf: Box<[u64]>,
}

impl fmt::Debug for Inotify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inotify")
            .field("fd", &self.fd.as_raw_fd())
            .field("watches", &self.watches)
            .finish()
    }
}

impl Inotify {
    /// A new inotify instance (`inotify_init1(IN_NONBLOCK | IN_CLOEXEC)`).
    ///
    /// # Errors
    ///
    /// `EMFILE` when the user already has `/proc/sys/fs/inotify/max_user_instances` instances
    /// or the process is out of fds (the message says which limits); `ENFILE`, `ENOMEM`.
    pub fn new() -> io::Result<Inotify> {
        let inotify = ::inotify::Inotify::init().map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EMFILE) => {
                    " (the per-user limit of inotify instances, \
                     /proc/sys/fs/inotify/max_user_instances, or the open-file limit \
                     RLIMIT_NOFILE is reached)"
                }
                _ => "",
            };
            io::Error::new(e.kind(), format!("inotify_init1: {e}{hint}"))
        })?;
        Ok(Inotify {
            fd: LoopFd::new(OwnedFd::from(inotify)),
            watches: HashMap::new(),
            buf: vec![0u64; BUF_LEN / 8].into_boxed_slice(),
        })
    }

    /// Watches `path` for the events in `mask`. Watching an inode that is already watched
    /// returns the same [`WatchId`] and replaces its mask (or extends it, with
    /// [`WatchMask::MASK_ADD`]).
    ///
    /// # Errors
    ///
    /// Each error names `path`: `NotFound` for a missing path, `PermissionDenied`, `ENOSPC`
    /// when the user's `/proc/sys/fs/inotify/max_user_watches` is reached (the message says
    /// so), `InvalidInput` for an empty mask or a path containing a NUL byte.
    pub fn add_watch(&mut self, path: impl AsRef<Path>, mask: WatchMask) -> io::Result<WatchId> {
        let path = path.as_ref();
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "inotify_add_watch {}: the path contains a NUL byte",
                    path.display()
                ),
            )
        })?;
        // SAFETY: (FFI) `c_path` is a NUL-terminated string that outlives the call; the fd is ours.
        let wd =
            unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), c_path.as_ptr(), mask.bits()) };
        if wd < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::ENOSPC) => {
                    " (the per-user limit of inotify watches, \
                     /proc/sys/fs/inotify/max_user_watches, is reached)"
                }
                Some(libc::EINVAL) => " (an empty or invalid mask)",
                _ => "",
            };
            return Err(io::Error::new(
                e.kind(),
                format!("inotify_add_watch {}: {e}{hint}", path.display()),
            ));
        }
        self.watches.insert(wd, path.to_path_buf());
        Ok(WatchId(wd))
    }

    /// Ends watch `id`. The kernel then queues an [`EventKind::Ignored`] event for it; the
    /// watch's path stays known until that event is read, so that events already queued keep
    /// their paths.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `id` is not an active watch of this instance (never added, or
    /// already gone).
    pub fn remove_watch(&mut self, id: WatchId) -> io::Result<()> {
        // SAFETY: (FFI) no pointers; the fd is ours.
        let r = unsafe { libc::inotify_rm_watch(self.fd.as_raw_fd(), id.0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("inotify_rm_watch: {id} is not an active watch of this instance ({e})"),
            ));
        }
        Ok(())
    }

    /// The path watch `id` was added with, while it is known (until its
    /// [`EventKind::Ignored`] event is read).
    pub fn watch_path(&self, id: WatchId) -> Option<&Path> {
        self.watches.get(&id.0).map(PathBuf::as_path)
    }

    /// The watches known to this instance and their paths: what to rescan after an
    /// [`EventKind::Overflow`].
    pub fn watches(&self) -> impl Iterator<Item = (WatchId, &Path)> + '_ {
        self.watches
            .iter()
            .map(|(&wd, p)| (WatchId(wd), p.as_path()))
    }

    /// Reads the queued events without waiting: for callbacks, after
    /// [`Loop::start_poll`](crate::Loop::start_poll) reported the fd readable.
    ///
    /// # Errors
    ///
    /// `WouldBlock` when no event is queued; `read(2)` errors otherwise.
    pub fn try_read_events(&mut self) -> io::Result<Vec<Event>> {
        let n = self.read_raw()?;
        Ok(self.convert(n))
    }

    /// Suspends the calling fiber until at least one event is queued, and returns the queued
    /// events (as many as one 16 KiB read holds).
    ///
    /// # Errors
    ///
    /// `read(2)` and poll errors; `ECANCELED` when the loop is closing.
    ///
    /// # Panics
    ///
    /// Outside a fiber (use [`Inotify::try_read_events`] from callbacks).
    pub fn read_events(&mut self) -> io::Result<Vec<Event>> {
        self.read_events_until(None)
    }

    /// As [`Inotify::read_events`], waiting at most `timeout` (a timeout too large to
    /// represent waits forever).
    ///
    /// # Errors
    ///
    /// `WouldBlock` when `timeout` passed without an event; otherwise as
    /// [`Inotify::read_events`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn read_events_timeout(&mut self, timeout: Duration) -> io::Result<Vec<Event>> {
        self.read_events_until(Instant::now().checked_add(timeout))
    }

    fn read_events_until(&mut self, deadline: Option<Instant>) -> io::Result<Vec<Event>> {
        current_or_panic("fdloop::dev::inotify::Inotify::read_events");
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

    /// Turns the first `n` bytes of the buffer into events and keeps the watch map current.
    fn convert(&mut self, n: usize) -> Vec<Event> {
        // SAFETY: (FFI) the `u64` buffer is `len * 8` initialised bytes; `u8` has no alignment or
        // validity requirement, and the shared borrow of `self.buf` lasts as long as `bytes`.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>(), self.buf.len() * 8)
        };
        let bytes = &bytes[..n.min(bytes.len())];
        let watches = &mut self.watches;
        decode(bytes)
            .map(|raw| {
                let kind = raw.kind();
                let name = raw.name.map(|n| OsString::from_vec(n.to_vec()));
                let path = watches.get(&raw.wd).map(|dir| match &name {
                    Some(n) => dir.join(n),
                    None => dir.clone(),
                });
                if kind == EventKind::Ignored {
                    watches.remove(&raw.wd);
                }
                Event {
                    watch: WatchId(raw.wd),
                    kind,
                    mask: EventMask::from_bits_retain(raw.mask),
                    cookie: raw.cookie,
                    name,
                    path,
                }
            })
            .collect()
    }
}

impl AsFd for Inotify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Inotify {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
