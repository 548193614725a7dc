//! External libraries that own a socket and want to be called back: libmosquitto, c-ares,
//! libcurl's multi interface, libssh2 and the like.
//!
//! Such a library exposes an fd (`mosquitto_socket`), functions to call when it is readable or
//! writable (`mosquitto_loop_read` / `mosquitto_loop_write`), a question about whether it has
//! something to send (`mosquitto_want_write`), and a function to call now and then for
//! keep-alives, time-outs and reconnections (`mosquitto_loop_misc`). Wrap it in a type that
//! implements [`ExternalSource`] and hand it to [`Loop::attach_external`]: the loop watches the
//! fd with [`Loop::start_poll`] (level-triggered on both backends) and calls
//! [`ExternalSource::housekeeping`] from a periodic timer.
//!
//! After **every** call into the source (readable, writable, housekeeping, and
//! [`Loop::with_external`]) the loop asks again for [`ExternalSource::fd`] and
//! [`ExternalSource::wants_write`]:
//!
//! * a new fd (a reconnection, also one that got the same fd number back) replaces the old one:
//!   the old registration is removed before anything else can reuse the number, then the new
//!   fd is watched;
//! * `None` (not connected) stops the watch; housekeeping goes on;
//! * `WRITABLE` is watched exactly while `wants_write()` is true, so a flushed library is not
//!   called in a loop for a socket that is always writable.
//!
//! # Rules
//!
//! * **The library owns its fd.** fdloop never closes it, not even on detach or when the loop
//!   is dropped (dropping the source is what closes it, if the source's `Drop` does). The loop
//!   registers its own close-on-exec duplicate of the fd (one more fd per attached source), so
//!   its registration never depends on what the library does with its fd number, and can
//!   always be removed. The duplicate keeps the library's socket open until the loop notices
//!   that the library let go of it: right after the callback or [`Loop::with_external`] call
//!   in which that happened, else at the next callback (one housekeeping period at most).
//! * **Callbacks must not block**: keep the library's socket non-blocking (libmosquitto does
//!   after `mosquitto_connect_async`), and do not wait for the network inside a callback.
//! * **Level-triggered**: a library that reads only part of what is there is called again in
//!   the next iteration. Hang-ups and errors are reported as readable (the library's read sees
//!   the end of file or the error); a library that neither closes its socket nor reports `None`
//!   after that is called again in every iteration.
//! * **Call the library through the loop.** A call made elsewhere (say, a publish from a timer)
//!   can change `wants_write()` or the fd; make it inside [`Loop::with_external`], which looks
//!   again right after. Otherwise the change is noticed at the next callback, at the latest one
//!   housekeeping period later.
//! * **A socket closed behind the loop's back** (the library closed it but still reports its
//!   number, or someone else closed it) is noticed at the next callback: before dispatching a
//!   readiness event the loop checks that the fd still names the file it watches, and after
//!   every call into the source it checks again. The problem is reported **once** (per fd
//!   number) to [`ExternalSource::on_error`], the watch is removed, and housekeeping continues
//!   (that is where libraries reconnect). Another fd number returned by `fd()` is watched at
//!   once. The same number is watched again only for a file that appeared there *during* a
//!   call into the source (a reconnection that got the number back); a file that was already
//!   there when the call began belongs to whoever reused the number, and is left alone. An fd
//!   that cannot be watched at all (a regular file: `EPERM`), or whose watch fails, is treated
//!   the same way: one report, no retry. A library should still report `None` as soon as it
//!   closes its socket: another thread may reuse a closed number at any time, even during a
//!   call.
//! * An attached source keeps the loop alive (its housekeeping timer): [`Loop::run`] returns
//!   only after [`Loop::detach_external`] or [`Loop::stop`].
//! * A panic in one of the source's methods (or in a [`Loop::with_external`] closure) detaches
//!   the source and drops it; a panic in a loop callback then unwinds out of [`Loop::run`] as
//!   usual.
//!
//! Costs: a readiness event takes two `fstat` calls on top of the library's own work; changing
//! the `WRITABLE` interest allocates one small closure and takes a few syscalls; a new fd takes
//! a `dup` and, later, a `close`.
//!
//! # Example
//!
//! A tiny "library" over a socketpair: it sends `ping` from a buffer, flushed when the socket is
//! writable, and reads the answer.
//!
//! ```
//! use fdloop::external::{ExternalOptions, ExternalSource};
//! use fdloop::Loop;
//! use std::io::{self, Read, Write};
//! use std::os::fd::{AsRawFd, RawFd};
//! use std::os::unix::net::UnixStream;
//! use std::time::Duration;
//!
//! struct Lib {
//!     sock: UnixStream,
//!     out: Vec<u8>,
//!     got: Vec<u8>,
//! }
//!
//! impl ExternalSource for Lib {
//!     fn fd(&mut self) -> Option<RawFd> {
//!         Some(self.sock.as_raw_fd())
//!     }
//!     fn on_readable(&mut self, lp: &Loop) -> io::Result<()> {
//!         let mut buf = [0; 64];
//!         match self.sock.read(&mut buf) {
//!             Ok(n) => self.got.extend_from_slice(&buf[..n]),
//!             Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
//!             Err(e) => return Err(e),
//!         }
//!         if self.got == b"pong" {
//!             lp.stop();
//!         }
//!         Ok(())
//!     }
//!     fn on_writable(&mut self, _lp: &Loop) -> io::Result<()> {
//!         let n = self.sock.write(&self.out)?;
//!         self.out.drain(..n);
//!         Ok(())
//!     }
//!     fn wants_write(&mut self) -> bool {
//!         !self.out.is_empty()
//!     }
//!     fn housekeeping(&mut self, _lp: &Loop) -> io::Result<()> {
//!         Ok(()) // keep-alives, time-outs, reconnections
//!     }
//! }
//!
//! let lp = Loop::new()?;
//! let (sock, mut server) = UnixStream::pair()?;
//! sock.set_nonblocking(true)?;
//! let lib = Lib { sock, out: b"ping".to_vec(), got: Vec::new() };
//! let every = Duration::from_millis(100);
//! let id = lp.attach_external(lib, ExternalOptions { housekeeping_every: every })?;
//!
//! // The other end answers `ping` with `pong`.
//! let server = std::thread::spawn(move || {
//!     let mut buf = [0; 4];
//!     server.read_exact(&mut buf).unwrap();
//!     assert_eq!(&buf, b"ping");
//!     server.write_all(b"pong").unwrap();
//! });
//!
//! lp.run_for(Duration::from_secs(10))?; // until `lp.stop()`
//! server.join().unwrap();
//! let lib = lp.detach_external(&id)?.expect("detached from outside its callbacks");
//! assert_eq!(lib.got, b"pong");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::cell::Cell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::time::Duration;

use fdloop_backends::interest as bits;

use crate::sys::cvt;
use crate::{Interest, Loop, Readiness, Timer, TimerId};

/// A library that owns a socket and wants to be called back; see the [module docs](self).
///
/// Every method runs on the loop's thread and must not block. The loop asks for
/// [`fd`](ExternalSource::fd) and [`wants_write`](ExternalSource::wants_write) after each
/// callback.
pub trait ExternalSource {
    /// The library's current fd, or `None` while it is not connected. It may change at any
    /// call (a reconnection). The fd stays owned by the library.
    fn fd(&mut self) -> Option<RawFd>;

    /// The fd is readable, or reported a hang-up or an error (the read will tell). Read what
    /// is convenient: the loop calls again while data is left (level-triggered).
    ///
    /// # Errors
    ///
    /// An error is handed to [`ExternalSource::on_error`]; the source stays attached.
    fn on_readable(&mut self, lp: &Loop) -> io::Result<()>;

    /// The fd is writable (only asked for while [`ExternalSource::wants_write`] is true).
    ///
    /// # Errors
    ///
    /// As for [`ExternalSource::on_readable`].
    fn on_writable(&mut self, lp: &Loop) -> io::Result<()>;

    /// Whether the library has data queued for its socket. Asked after every callback.
    fn wants_write(&mut self) -> bool;

    /// Called every [`ExternalOptions::housekeeping_every`], connected or not: keep-alives,
    /// time-outs, and reconnecting after a disconnection (`mosquitto_loop_misc`,
    /// `mosquitto_reconnect_async`).
    ///
    /// # Errors
    ///
    /// As for [`ExternalSource::on_readable`].
    fn housekeeping(&mut self, lp: &Loop) -> io::Result<()>;

    /// An error from one of the callbacks above, or from the loop itself: the fd was closed
    /// behind the loop, or it cannot be watched. The loop reports such a watch problem once
    /// and stops watching that fd. The default writes the error to standard error.
    fn on_error(&mut self, lp: &Loop, err: io::Error) {
        let _ = lp;
        eprintln!("fdloop: external source: {err}");
    }
}

/// How [`Loop::attach_external`] drives a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExternalOptions {
    /// The period of [`ExternalSource::housekeeping`] (the first call is one period after
    /// attaching). libmosquitto wants about one second; its keep-alive is counted in seconds.
    pub housekeeping_every: Duration,
}

impl Default for ExternalOptions {
    /// Housekeeping every second.
    fn default() -> Self {
        ExternalOptions {
            housekeeping_every: Duration::from_secs(1),
        }
    }
}

/// Identifies an attached source, for [`Loop::detach_external`] and [`Loop::with_external`].
///
/// It does not keep the source alive: once the source is detached (or its loop is dropped)
/// the id is stale and every call with it fails with `NotFound`.
pub struct ExternalId<S> {
    state: Weak<State<S>>,
    _source: PhantomData<fn() -> S>,
}

impl<S> Clone for ExternalId<S> {
    fn clone(&self) -> Self {
        ExternalId {
            state: self.state.clone(),
            _source: PhantomData,
        }
    }
}

impl<S> fmt::Debug for ExternalId<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attached = self.state.upgrade().is_some_and(|s| s.attached.get());
        f.debug_struct("ExternalId")
            .field("attached", &attached)
            .finish()
    }
}

/// `(st_dev, st_ino)`: which open file an fd number names.
type Ident = (u64, u64);

/// What is watched.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Watch {
    /// The library's fd, and the file it named when the watch started.
    fd: RawFd,
    ident: Ident,
    /// The loop's own duplicate of `fd` (close-on-exec), which is what is registered. Owned by
    /// the watch: closed when the watch ends.
    dup: RawFd,
    writable: bool,
    /// The generation of the poll callback registered for it.
    generation: u64,
}

/// An attached source and what the loop knows about it. The poll and timer callbacks hold it
/// (strongly); [`ExternalId`] holds it weakly.
struct State<S> {
    /// The loop's serial, to refuse ids from another loop.
    serial: u32,
    attached: Cell<bool>,
    /// The source; `None` while one of its methods runs (taken out, so that no borrow is held
    /// across user code), and after detaching.
    source: Cell<Option<S>>,
    timer: Cell<Option<TimerId>>,
    watch: Cell<Option<Watch>>,
    /// The generation of the poll callback that is registered now (0: none). A callback's
    /// guard clears it when the loop drops the callback (the registration is gone).
    live: Cell<u64>,
    next_generation: Cell<u64>,
    /// The fd number whose problem was reported to `on_error`: not reported again until
    /// `fd()` returns `None` or a watch starts.
    reported: Cell<Option<RawFd>>,
}

/// The fd number the loop follows (watched, or reported) and the file it named just before a
/// call into the source. A new file at that number after the call is the library's only if it
/// appeared during the call.
type Before = Option<(RawFd, Option<Ident>)>;

impl<S> Drop for State<S> {
    fn drop(&mut self) {
        // The loop is gone (or has dropped every callback of this source): only the duplicate
        // is left to close.
        if let Some(w) = self.watch.get() {
            close_dup(w.dup);
        }
    }
}

/// Owned by a poll callback: tells the state when the loop drops that callback.
struct PollRef<S> {
    state: Rc<State<S>>,
    generation: u64,
}

impl<S> Drop for PollRef<S> {
    fn drop(&mut self) {
        if self.state.live.get() == self.generation {
            self.state.live.set(0);
        }
    }
}

/// The source, taken out of its slot while it is called. Puts it back when dropped — unless it
/// was detached meanwhile (then it is dropped), or a panic is unwinding (then the whole source
/// is detached and dropped, as the loop does with any callback that panics).
struct InUse<'a, S: ExternalSource + 'static> {
    lp: &'a Loop,
    state: &'a Rc<State<S>>,
    source: Option<S>,
}

impl<S: ExternalSource + 'static> InUse<'_, S> {
    fn get(&mut self) -> &mut S {
        self.source
            .as_mut()
            .expect("the source is held while in use")
    }
}

impl<S: ExternalSource + 'static> Drop for InUse<'_, S> {
    fn drop(&mut self) {
        let Some(source) = self.source.take() else {
            return;
        };
        if std::thread::panicking() {
            self.state.shut_down(self.lp);
            drop(source);
        } else if self.state.attached.get() {
            self.state.source.set(Some(source));
        } else {
            drop(source);
        }
    }
}

/// A close-on-exec duplicate of `fd`, owned by the caller.
fn dup(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: (FFI) F_DUPFD_CLOEXEC takes an int, no pointer; it fails with EBADF if `fd` is
    // closed.
    cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })
}

/// Closes a duplicate made by [`dup`], after every loop of this thread forgot it.
fn close_dup(fd: RawFd) {
    crate::event_loop::forget_fd(fd);
    // SAFETY: (I3) `fd` is a duplicate this module made and owns; the loop has detached it
    // (cancelling what it had in flight on it) or is gone, and nothing else knows the number, so it
    // is closed exactly once and with nothing in flight.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

fn identity(fd: RawFd) -> io::Result<Ident> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: (FFI) `st` is a writable stat buffer that outlives the call; fstat only asks the
    // kernel about `fd` and fails with EBADF if it is not open.
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: (FFI) fstat succeeded and filled `st`.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

fn not_attached() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "no such external source: it was detached, its loop is gone, or it belongs to another loop",
    )
}

fn closed_behind(fd: RawFd, err: &io::Error) -> io::Error {
    io::Error::other(format!(
        "fd {fd} of the external source was closed behind the loop ({err}); it is not watched \
         until fd() changes or a new file appears there during a call into the source"
    ))
}

fn reused_behind(fd: RawFd) -> io::Error {
    io::Error::other(format!(
        "fd {fd} of the external source was closed behind the loop and now names another file; \
         it is not watched until fd() changes or a new file appears there during a call into \
         the source"
    ))
}

fn watch_failed(fd: RawFd, err: &io::Error) -> io::Error {
    io::Error::new(
        err.kind(),
        format!(
            "cannot watch fd {fd} of the external source ({err}); it is not watched until fd() \
             names another file"
        ),
    )
}

impl<S: ExternalSource + 'static> State<S> {
    /// The watch whose registration is still in the loop.
    fn current(&self) -> Option<Watch> {
        self.watch
            .get()
            .filter(|w| w.generation != 0 && w.generation == self.live.get())
    }

    fn new_generation(&self) -> u64 {
        let g = self.next_generation.get() + 1;
        self.next_generation.set(g);
        g
    }

    /// Ends the watch `w`: removes its registration (if the loop still has it), makes the loop
    /// forget the duplicate, and closes the duplicate.
    fn unwatch(&self, lp: &Loop, w: Watch) {
        // The duplicate is ours alone, still open, and registered nowhere else: detaching it
        // removes exactly our registration, whatever the library did with its own fd.
        let _ = lp.detach(w.dup);
        self.live.set(0);
        self.watch.set(None);
        close_dup(w.dup);
    }

    /// Detaches everything: the timer, the watch. The source itself is left to the caller.
    fn shut_down(&self, lp: &Loop) {
        self.attached.set(false);
        if let Some(t) = self.timer.take() {
            let _ = lp.stop_timer(t);
        }
        if let Some(w) = self.watch.get() {
            self.unwatch(lp, w);
        }
    }

    /// Before a call into the source: which file the followed fd number names now.
    fn before_call(&self) -> Before {
        let followed = self.watch.get().map(|w| w.fd).or(self.reported.get());
        followed.map(|fd| (fd, identity(fd).ok()))
    }

    /// Reports a problem with the fd number `fd` once.
    fn report(&self, lp: &Loop, src: &mut S, fd: RawFd, err: io::Error) {
        if self.reported.get() == Some(fd) {
            return;
        }
        self.reported.set(Some(fd));
        src.on_error(lp, err);
    }
}

/// A poll callback of generation `generation`.
fn poll_callback<S: ExternalSource + 'static>(
    state: &Rc<State<S>>,
    generation: u64,
) -> impl FnMut(&Loop, Readiness) + 'static {
    let guard = PollRef {
        state: state.clone(),
        generation,
    };
    move |lp, ready| on_ready(lp, &guard.state, guard.generation, ready)
}

/// Watches `fd` (not watched now) for reading, and writing if `write`.
fn watch_fd<S: ExternalSource + 'static>(
    lp: &Loop,
    state: &Rc<State<S>>,
    fd: RawFd,
    ident: Ident,
    write: bool,
) -> io::Result<()> {
    let generation = state.new_generation();
    let mut interest = Interest::READABLE;
    if write {
        interest |= Interest::WRITABLE;
    }
    // The loop watches its own duplicate: the registration then never depends on what the
    // library does with its fd (closing it, getting the number back for another socket), and
    // can always be removed — epoll cannot remove a registration whose fd was closed while its
    // file lives on (in a child process that inherited the socket, say).
    let dup = dup(fd)?;
    if let Err(e) = lp.start_poll(dup, interest, poll_callback(state, generation)) {
        let _ = lp.detach(dup);
        close_dup(dup);
        return Err(e);
    }
    state.live.set(generation);
    state.watch.set(Some(Watch {
        fd,
        ident,
        dup,
        writable: write,
        generation,
    }));
    Ok(())
}

/// Adds or removes `WRITABLE` on the live watch `w`.
fn set_writable<S: ExternalSource + 'static>(
    lp: &Loop,
    state: &Rc<State<S>>,
    w: Watch,
    write: bool,
) -> io::Result<()> {
    if write {
        // Adds the interest; the callback is replaced (the old one is dropped by the loop, its
        // guard sees that it is no longer the live generation once `live` is updated).
        let generation = state.new_generation();
        lp.start_poll(w.dup, Interest::WRITABLE, poll_callback(state, generation))?;
        state.live.set(generation);
        state.watch.set(Some(Watch {
            writable: true,
            generation,
            ..w
        }));
    } else {
        lp.stop_poll(w.dup, Interest::WRITABLE)?;
        state.watch.set(Some(Watch {
            writable: false,
            ..w
        }));
    }
    Ok(())
}

/// After a call into the source: follows its fd and its write interest. `before` is what the
/// followed fd number named before the call.
fn refresh<S: ExternalSource + 'static>(
    lp: &Loop,
    state: &Rc<State<S>>,
    src: &mut S,
    before: Before,
) {
    if !state.attached.get() {
        return;
    }
    let live = state.current();
    if let (None, Some(w)) = (live, state.watch.get()) {
        // The registration vanished (the loop removes a failed watch): close the duplicate.
        state.unwatch(lp, w);
    }
    let Some(fd) = src.fd().filter(|&fd| fd >= 0) else {
        if let Some(w) = live {
            state.unwatch(lp, w);
        }
        state.reported.set(None);
        return;
    };
    let ident = identity(fd);
    // The number the loop was following: watched, or reported.
    let followed = live.map(|w| w.fd).or(state.reported.get()) == Some(fd);
    let live = match live {
        Some(w) if w.fd == fd && ident.as_ref().ok() == Some(&w.ident) => Some(w),
        Some(w) => {
            // Another fd, the same number closed, or the same number naming another file: the
            // old registration goes.
            state.unwatch(lp, w);
            None
        }
        None => None,
    };
    let ident = match ident {
        Ok(ident) => ident,
        Err(e) => {
            state.report(lp, src, fd, closed_behind(fd, &e));
            return;
        }
    };
    if live.is_none() && followed {
        // The followed number names a file that is not the one watched. It is the library's
        // if it appeared during the call (a reconnection that got the number back); if it was
        // there before, the library's file was closed behind the loop and someone else reused
        // the number.
        let appeared = matches!(before, Some((b, was)) if b == fd && was != Some(ident));
        if !appeared {
            state.report(lp, src, fd, reused_behind(fd));
            return;
        }
    }
    if !state.attached.get() {
        return;
    }
    let write = src.wants_write();
    match live {
        Some(w) if w.writable == write => {}
        Some(w) => {
            if let Err(e) = set_writable(lp, state, w, write) {
                state.unwatch(lp, w);
                state.report(lp, src, fd, watch_failed(fd, &e));
            }
        }
        None => match watch_fd(lp, state, fd, ident, write) {
            Ok(()) => state.reported.set(None),
            Err(e) => state.report(lp, src, fd, watch_failed(fd, &e)),
        },
    }
}

/// The poll callback: the fd of watch generation `generation` reported `ready`.
fn on_ready<S: ExternalSource + 'static>(
    lp: &Loop,
    state: &Rc<State<S>>,
    generation: u64,
    ready: Readiness,
) {
    if !state.attached.get() || state.live.get() != generation {
        return;
    }
    let Some(w) = state.watch.get() else {
        return;
    };
    let Some(source) = state.source.take() else {
        return;
    };
    let mut held = InUse {
        lp,
        state,
        source: Some(source),
    };
    let src = held.get();
    let failed = ready.watch_error().or_else(|| {
        (ready.bits() & bits::INVALID != 0).then(|| io::Error::from_raw_os_error(libc::EBADF))
    });
    if let Some(err) = failed {
        // The watch itself failed (the loop removes a failed registration; POLLNVAL means the
        // fd is closed): report once, and do not watch that file again.
        state.unwatch(lp, w);
        state.report(lp, src, w.fd, watch_failed(w.fd, &err));
        let now = Some((w.fd, identity(w.fd).ok()));
        refresh(lp, state, src, now);
        return;
    }
    // The event is for the file registered; if the number was closed or names another file
    // now, the library must not be called for it.
    let now = identity(w.fd).ok();
    if now != Some(w.ident) {
        refresh(lp, state, src, Some((w.fd, now)));
        return;
    }
    if ready.is_readable() || ready.is_hup() || ready.is_error() {
        if let Err(e) = src.on_readable(lp) {
            src.on_error(lp, e);
        }
    }
    if ready.is_writable() && state.attached.get() && src.fd() == Some(w.fd) {
        if let Err(e) = src.on_writable(lp) {
            src.on_error(lp, e);
        }
    }
    refresh(lp, state, src, Some((w.fd, now)));
}

/// The housekeeping timer's callback.
fn on_housekeeping<S: ExternalSource + 'static>(lp: &Loop, state: &Rc<State<S>>) {
    if !state.attached.get() {
        return;
    }
    let Some(source) = state.source.take() else {
        return;
    };
    let mut held = InUse {
        lp,
        state,
        source: Some(source),
    };
    let src = held.get();
    let before = state.before_call();
    if let Err(e) = src.housekeeping(lp) {
        src.on_error(lp, e);
    }
    refresh(lp, state, src, before);
}

impl Loop {
    /// Attaches a library's socket to the loop: its fd is watched (readable, and writable while
    /// [`ExternalSource::wants_write`]), and [`ExternalSource::housekeeping`] runs every
    /// `options.housekeeping_every`. The fd is looked at right away; a problem with it goes
    /// to [`ExternalSource::on_error`], as later ones do. See the [module docs](crate::external)
    /// for the rules.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `options.housekeeping_every` is zero (the source is dropped).
    pub fn attach_external<S>(
        &self,
        source: S,
        options: ExternalOptions,
    ) -> io::Result<ExternalId<S>>
    where
        S: ExternalSource + 'static,
    {
        if options.housekeeping_every.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ExternalOptions::housekeeping_every must not be zero",
            ));
        }
        let state = Rc::new(State {
            serial: self.inner.serial,
            attached: Cell::new(true),
            source: Cell::new(None),
            timer: Cell::new(None),
            watch: Cell::new(None),
            live: Cell::new(0),
            next_generation: Cell::new(0),
            reported: Cell::new(None),
        });
        let st = state.clone();
        let timer = self.start_timer(Timer::every(options.housekeeping_every), move |lp, _id| {
            on_housekeeping(lp, &st)
        });
        state.timer.set(Some(timer));
        let id = ExternalId {
            state: Rc::downgrade(&state),
            _source: PhantomData,
        };
        let mut held = InUse {
            lp: self,
            state: &state,
            source: Some(source),
        };
        refresh(self, &state, held.get(), None);
        drop(held);
        Ok(id)
    }

    /// Detaches a source: its fd is no longer watched (it is not closed) and housekeeping
    /// stops. Returns the source — or `None` when called from inside one of the source's own
    /// methods, which already holds it as `self`: the source is then dropped when that method
    /// returns.
    ///
    /// # Errors
    ///
    /// `NotFound` when the source is already detached, its loop is gone, or `id` belongs to
    /// another loop.
    pub fn detach_external<S>(&self, id: &ExternalId<S>) -> io::Result<Option<S>>
    where
        S: ExternalSource + 'static,
    {
        let state = self.external_state(id)?;
        let source = state.source.take();
        state.shut_down(self);
        Ok(source)
    }

    /// Runs `f` with the attached source — to call into the library from outside its
    /// callbacks (publish a message, subscribe …) — then looks again at its fd and write
    /// interest, as after a callback.
    ///
    /// ```
    /// # use fdloop::external::{ExternalOptions, ExternalSource};
    /// # use fdloop::Loop;
    /// # use std::{io, os::fd::RawFd};
    /// struct Idle(u32);
    /// impl ExternalSource for Idle {
    ///     fn fd(&mut self) -> Option<RawFd> { None }
    ///     fn on_readable(&mut self, _: &Loop) -> io::Result<()> { Ok(()) }
    ///     fn on_writable(&mut self, _: &Loop) -> io::Result<()> { Ok(()) }
    ///     fn wants_write(&mut self) -> bool { false }
    ///     fn housekeeping(&mut self, _: &Loop) -> io::Result<()> { Ok(()) }
    /// }
    /// let lp = Loop::new()?;
    /// let id = lp.attach_external(Idle(0), ExternalOptions::default())?;
    /// lp.with_external(&id, |idle| idle.0 += 1)?;
    /// assert_eq!(lp.detach_external(&id)?.unwrap().0, 1);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// * `NotFound` as for [`Loop::detach_external`];
    /// * `ResourceBusy` when called from inside one of the source's own methods (which has it
    ///   as `self` already).
    pub fn with_external<S, R>(
        &self,
        id: &ExternalId<S>,
        f: impl FnOnce(&mut S) -> R,
    ) -> io::Result<R>
    where
        S: ExternalSource + 'static,
    {
        let state = self.external_state(id)?;
        let Some(source) = state.source.take() else {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the external source is in use: with_external was called from inside one of its \
                 own methods, which has it as `self`",
            ));
        };
        let mut held = InUse {
            lp: self,
            state: &state,
            source: Some(source),
        };
        let before = state.before_call();
        let r = f(held.get());
        refresh(self, &state, held.get(), before);
        drop(held);
        Ok(r)
    }

    fn external_state<S>(&self, id: &ExternalId<S>) -> io::Result<Rc<State<S>>> {
        id.state
            .upgrade()
            .filter(|s| s.serial == self.inner.serial && s.attached.get())
            .ok_or_else(not_attached)
    }
}
