//! The per-fd table of the epoll driver: what kind of file each fd is, which operations wait on
//! it (and for which readiness bits), what is registered in the epoll set, and the readiness
//! last seen.
//!
//! # Registration model
//!
//! An fd is registered in one of two ways, decided by [`FdEntry::wanted`]:
//!
//! * **Edge-triggered and persistent** (`IN | OUT | RDHUP | ET`) once a non-blocking I/O
//!   operation (`Route::Now`: sockets, non-blocking pipes, ttys, eventfd …) has used it, while
//!   no waiter needs level-triggering. The registration stays while the fd is idle, so an
//!   operation that waits costs no `epoll_ctl`; only `forget` (detach, close) removes it. The
//!   readiness reported by events is cached in [`FdEntry::ready`], cleared on `EAGAIN` (and on
//!   a short read of a stream socket or pipe), and decides whether an operation is tried at once
//!   or waits for the next edge.
//! * **Level-triggered, exactly the waiters' interest**, while a waiter needs level semantics:
//!   a `Poll` (the loop's `start_poll` is level-triggered), or an operation on a blocking fd that
//!   may only be read after a readiness report (`Route::Wait`). Removed when nobody waits (a
//!   level-triggered registration of an idle fd would report its HUP or ERR forever).
//!
//! Registrations are lazy: changing the waiters only marks the fd dirty, and
//! [`FdTable::sync`] (called for dirty fds at the start of a wait) issues at most one
//! `epoll_ctl`, none when the wanted registration did not change in the meantime. A one-shot
//! poll re-armed from its completion handler therefore costs no syscall either.

use std::io;
use std::os::fd::RawFd;

use crate::{FdClass, OpId};

/// An operation waiting for readiness on an fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Waiter {
    /// The operation.
    pub(super) id: OpId,
    /// The epoll bits it waits for (`EPOLLIN`, `EPOLLOUT`, `EPOLLPRI`, `EPOLLRDHUP`).
    pub(super) bits: u32,
    /// An I/O operation (not a `Poll`): later I/O operations for the same bits queue behind it.
    pub(super) io: bool,
    /// Needs a level-triggered registration: a `Poll`, an operation on a blocking fd that is
    /// only tried after a readiness report, or one on an fd that reported an error or hang-up.
    pub(super) level: bool,
}

/// `EPOLLET`.
pub(super) const ET: u32 = libc::EPOLLET as u32;
/// The interest of a persistent edge-triggered registration.
pub(super) const ET_INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP) as u32 | ET;
/// Readiness assumed before the first report: worth trying a syscall.
pub(super) const UNKNOWN_READY: u32 = (libc::EPOLLIN | libc::EPOLLOUT) as u32;

/// What the driver knows about one fd.
#[derive(Debug, Default)]
pub(super) struct FdEntry {
    /// Its class, computed on first use (`None`: unknown, or forgotten).
    pub(super) class: Option<FdClass>,
    /// Operations waiting for readiness, oldest first. Kept (with its capacity) when emptied.
    pub(super) waiters: Vec<Waiter>,
    /// The events registered in the epoll set, `None` when not registered.
    registered: Option<u32>,
    /// `epoll_ctl(ADD)` said EPERM: the file has no poll support (a regular file, `/dev/null`),
    /// so it counts as always ready, as `poll(2)` says. Nothing is registered for it.
    pub(super) unpollable: bool,
    /// In the dirty list.
    dirty: bool,
    /// Operations on this fd running or queued on the file pool.
    pub(super) pool_jobs: usize,
    /// The fd's close count when `class` was computed ([`crate::note_close`]).
    pub(super) closes: u32,
    /// `(st_dev, st_ino)` when `class` was computed: checked on slow paths to notice a number
    /// closed and reused behind the driver's back without a close count.
    identity: (u64, u64),
    /// A short read empties the fd (stream socket, pipe): its `IN` readiness is then cleared.
    pub(super) short_read_drains: bool,
    /// A non-blocking I/O operation used it: it gets a persistent edge-triggered registration.
    io_used: bool,
    /// A blocking socket found listening (`SO_ACCEPTCONN`), so that the check is done once.
    pub(super) listening: bool,
    /// The readiness bits (`EPOLLIN`, `EPOLLOUT`, `EPOLLRDHUP`, `EPOLLERR`, `EPOLLHUP` …) as last
    /// reported, minus what an `EAGAIN` (or a short read) showed to be gone.
    pub(super) ready: u32,
}

impl FdEntry {
    /// The registration wanted in the epoll set (see the module docs): `None` when there should
    /// be none.
    fn wanted(&self) -> Option<u32> {
        if self.unpollable {
            return None;
        }
        if self.waiters.iter().any(|w| w.level) {
            Some(self.waiters.iter().fold(0, |acc, w| acc | w.bits))
        } else if self.io_used {
            Some(ET_INTEREST)
        } else {
            None
        }
    }

    /// Whether the fd has its persistent edge-triggered registration (readiness is then only
    /// reported on changes, and [`FdEntry::ready`] is what is known).
    pub(super) fn edge_triggered(&self) -> bool {
        self.registered.is_some_and(|ev| ev & ET != 0)
    }

    /// Records a readiness report: the registered bits are as the kernel says; the others (not
    /// asked for) stay as they were known.
    pub(super) fn update_ready(&mut self, revents: u32) {
        let reported = self.registered.unwrap_or(0) & !ET | ERR_HUP;
        self.ready = (self.ready & !reported) | revents;
    }

    /// Marks the fd as used by a non-blocking I/O operation (it gets the persistent registration
    /// when it next waits).
    pub(super) fn use_for_io(&mut self) {
        self.io_used = true;
    }
}

/// Error and hang-up: always reported, whether asked for or not.
const ERR_HUP: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

/// The table, indexed by fd.
#[derive(Debug, Default)]
pub(super) struct FdTable {
    entries: Vec<FdEntry>,
    dirty: Vec<RawFd>,
}

/// `epoll_ctl`, as `Ok` or the errno.
fn ctl(epfd: RawFd, op: i32, fd: RawFd, events: u32) -> Result<(), i32> {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: (FFI) `ev` is a live epoll_event for the duration of the call (the kernel copies it);
    // epoll_ctl touches no other memory.
    let r = unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) };
    if r < 0 {
        Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(())
    }
}

impl FdTable {
    /// The entry of `fd`, if the table has one.
    pub(super) fn get_mut(&mut self, fd: RawFd) -> Option<&mut FdEntry> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
    }

    /// The entry of `fd`, created if needed, with its class computed (`fstat` + `fcntl`) on first
    /// use. An fd that is not open gives `EBADF` and no entry is created.
    pub(super) fn entry(&mut self, fd: RawFd) -> io::Result<&mut FdEntry> {
        let i = usize::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        let closes = crate::fdclass::close_count(fd);
        let known = self
            .entries
            .get(i)
            .is_some_and(|e| e.class.is_some() && e.closes == closes);
        if !known {
            let probe = crate::fdclass::probe(fd)?;
            if i >= self.entries.len() {
                self.entries.resize_with(i + 1, FdEntry::default);
            }
            let e = &mut self.entries[i];
            if e.class.is_some() && e.closes != closes {
                // The number was closed (on any thread) and now names another file: what was
                // known about the old one is void. Its registration went with the close.
                e.registered = None;
                e.unpollable = false;
                e.io_used = false;
            }
            if e.registered.is_none() {
                e.ready = UNKNOWN_READY;
            }
            e.class = Some(probe.class);
            e.listening = false;
            e.identity = probe.identity;
            e.short_read_drains = probe.short_read_drains;
            e.closes = closes;
        }
        Ok(&mut self.entries[i])
    }

    /// The events registered for `fd` in the epoll set, as the table knows them.
    #[cfg(test)]
    pub(super) fn registration(&self, fd: RawFd) -> Option<u32> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.entries.get(i))
            .and_then(|e| e.registered)
    }

    /// Whether `fd` still names the file its entry describes (one `fstat`: for slow paths).
    /// `false` when it was closed and its number reused behind the driver's back, or closed.
    pub(super) fn same_file(&mut self, fd: RawFd) -> bool {
        let Some(e) = self.get_mut(fd) else {
            return true;
        };
        if e.class.is_none() {
            return true;
        }
        crate::fdclass::identity(fd).is_ok_and(|id| id == e.identity)
    }

    /// `fd` now names another file than its entry describes (closed and reused without a close
    /// count): forgets what was known, registration included, without touching the epoll set
    /// (`EPOLL_CTL_DEL` would now name the new file). Its waiters must have been taken. Returns
    /// whether a registration was on record: the old file may still sit in the set (if it is
    /// open elsewhere), and only a rebuilt set drops it.
    pub(super) fn invalidate(&mut self, fd: RawFd) -> bool {
        let Some(e) = self.get_mut(fd) else {
            return false;
        };
        debug_assert!(e.waiters.is_empty());
        e.class = None;
        e.unpollable = false;
        e.io_used = false;
        e.ready = UNKNOWN_READY;
        e.registered.take().is_some()
    }

    /// Records that `fd`'s waiters changed; its registration is brought up to date by the next
    /// [`FdTable::sync`].
    pub(super) fn mark_dirty(&mut self, fd: RawFd) {
        if let Some(e) = self.get_mut(fd) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(fd);
            }
        }
    }

    /// Adds a waiter to `fd` (whose entry must exist) and marks it dirty.
    pub(super) fn add_waiter(&mut self, fd: RawFd, waiter: Waiter) {
        if let Some(e) = self.get_mut(fd) {
            e.waiters.push(waiter);
        }
        self.mark_dirty(fd);
    }

    /// Removes the waiter `id` from `fd`; returns whether it was there.
    pub(super) fn remove_waiter(&mut self, fd: RawFd, id: OpId) -> bool {
        let Some(e) = self.get_mut(fd) else {
            return false;
        };
        let Some(pos) = e.waiters.iter().position(|w| w.id == id) else {
            return false;
        };
        e.waiters.remove(pos);
        self.mark_dirty(fd);
        true
    }

    /// Whether an I/O operation already waits on `fd` for some of `bits` (a new one must queue
    /// behind it, so that reads and writes on one fd complete in the order they were pushed).
    pub(super) fn has_io_waiter(&self, fd: RawFd, bits: u32) -> bool {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.entries.get(i))
            .is_some_and(|e| e.waiters.iter().any(|w| w.io && w.bits & bits != 0))
    }

    /// Removes the registration of `fd` if it has no waiter any more, whatever the table says:
    /// for events that arrive for an fd nobody waits for. Returns `true` when it cannot be
    /// removed: the number was closed while its file stays open elsewhere (a dup, a child), so
    /// `EPOLL_CTL_DEL` answers `EBADF` and level-triggered epoll would report it forever; the
    /// caller then rebuilds the epoll set.
    pub(super) fn drop_stale(&mut self, epfd: RawFd, fd: RawFd) -> bool {
        let unknown = self.get_mut(fd).is_none_or(|e| e.waiters.is_empty());
        if !unknown {
            return false;
        }
        if let Some(e) = self.get_mut(fd) {
            e.registered = None;
        }
        ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0) == Err(libc::EBADF)
    }

    /// The fds registered in the epoll set, with their events (to rebuild the set).
    pub(super) fn registered(&self) -> impl Iterator<Item = (RawFd, u32)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.registered.map(|ev| (i as RawFd, ev)))
    }

    /// Marks `fd` as not registered (its ADD into a rebuilt set failed).
    pub(super) fn set_unregistered(&mut self, fd: RawFd) {
        if let Some(e) = self.get_mut(fd) {
            e.registered = None;
        }
    }

    /// Takes the next dirty fd.
    pub(super) fn pop_dirty(&mut self) -> Option<RawFd> {
        let fd = self.dirty.pop()?;
        if let Some(e) = self.get_mut(fd) {
            e.dirty = false;
        }
        Some(fd)
    }

    /// Brings `fd`'s registration in `epfd` up to date with its waiters: ADD, MOD or DEL, or
    /// nothing when it already matches. `ENOENT` on MOD (the fd was closed and its registration
    /// dropped by the kernel) retries with ADD; `EEXIST` on ADD retries with MOD.
    ///
    /// On failure the fd is left unregistered and the errno is returned: `EPERM` means the file
    /// cannot be polled, `EBADF` that the fd is closed. The caller deals with the waiters.
    pub(super) fn sync(&mut self, epfd: RawFd, fd: RawFd) -> Result<(), i32> {
        let Some(e) = self.get_mut(fd) else {
            return Ok(());
        };
        let want = e.wanted();
        if want == e.registered {
            return Ok(());
        }
        let result = match (e.registered, want) {
            (Some(_), None) => {
                // A failed DEL (EBADF, ENOENT) means the kernel already dropped it.
                let _ = ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0);
                Ok(())
            }
            (None, Some(ev)) => match ctl(epfd, libc::EPOLL_CTL_ADD, fd, ev) {
                Err(libc::EEXIST) => ctl(epfd, libc::EPOLL_CTL_MOD, fd, ev),
                r => r,
            },
            (Some(_), Some(ev)) => match ctl(epfd, libc::EPOLL_CTL_MOD, fd, ev) {
                Err(libc::ENOENT) => ctl(epfd, libc::EPOLL_CTL_ADD, fd, ev),
                r => r,
            },
            (None, None) => Ok(()),
        };
        e.registered = match result {
            Ok(()) => want,
            Err(_) => None,
        };
        result
    }

    /// Forgets `fd`: removes its registration from `epfd` at once (the caller may close the fd
    /// right after) and drops its cached class. Its waiters must have been taken already; its
    /// count of pool jobs is kept (running jobs still finish).
    pub(super) fn forget(&mut self, epfd: RawFd, fd: RawFd) {
        if let Some(e) = self.get_mut(fd) {
            debug_assert!(e.waiters.is_empty());
            if e.registered.take().is_some() {
                let _ = ctl(epfd, libc::EPOLL_CTL_DEL, fd, 0);
            }
            e.class = None;
            e.unpollable = false;
            e.io_used = false;
            e.ready = UNKNOWN_READY;
        }
    }
}
