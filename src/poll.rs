//! Readiness of any fd: [`Loop::start_poll`], [`Loop::stop_poll`] and [`Loop::detach`].
//!
//! Polls are **level-triggered on both backends**: as long as the fd is readable (say) and the
//! callback does not drain it, the callback runs again in the next iteration. This is what a
//! foreign library that reads only part of its socket needs. Internally each registration keeps
//! one one-shot poll in flight and re-arms it after the callback returns; a one-shot poll is
//! checked when armed, which gives level semantics on io_uring, and the epoll backend re-arms
//! without a syscall.
//!
//! Registrations are keyed by fd *and* generation: after [`Loop::detach`] (or a `stop_poll`
//! that removes the last interest) a late completion for the old registration is dropped, never
//! delivered to whoever uses the fd number next.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::ops::{BitOr, BitOrAssign};
use std::os::fd::RawFd;

use fdloop_backends::{interest as bits, FdClass, Op, OpId, OpSlab};

use crate::descriptor::Descriptor;
use crate::event_loop::OpKind;
use crate::sys::{check_fd, cvt};
use crate::Loop;

/// What to wait for on an fd.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interest(u32);

impl Interest {
    /// Data to read, a connection to accept, or end-of-file.
    pub const READABLE: Interest = Interest(bits::READABLE);
    /// Room to write, or a connection established.
    pub const WRITABLE: Interest = Interest(bits::WRITABLE);
    /// An exceptional condition (`POLLPRI`): TCP urgent data, a sysfs/kernfs attribute that
    /// changed (GPIO `value`, `cgroup.events`).
    pub const PRIORITY: Interest = Interest(bits::PRIORITY);
    /// The peer shut down its writing half (`POLLRDHUP`).
    pub const READ_HUP: Interest = Interest(bits::RDHUP);

    /// Whether every bit of `other` is in `self`.
    pub fn contains(self, other: Interest) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` without the bits of `other`.
    pub fn remove(self, other: Interest) -> Interest {
        Interest(self.0 & !other.0)
    }

    /// Whether no bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The `poll(2)` bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    fn valid() -> u32 {
        bits::READABLE | bits::WRITABLE | bits::PRIORITY | bits::RDHUP
    }
}

impl BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        Interest(self.0 | rhs.0)
    }
}

impl BitOrAssign for Interest {
    fn bitor_assign(&mut self, rhs: Interest) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (bits::READABLE, "READABLE"),
            (bits::WRITABLE, "WRITABLE"),
            (bits::PRIORITY, "PRIORITY"),
            (bits::RDHUP, "READ_HUP"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, n)| *n)
            .collect();
        write!(f, "Interest({})", set.join(" | "))
    }
}

/// What an fd reported to a [`Loop::start_poll`] callback.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    bits: u32,
    error: Option<i32>,
}

impl Readiness {
    /// Data to read (or end-of-file, or a pending connection).
    pub fn is_readable(&self) -> bool {
        self.bits & bits::READABLE != 0
    }
    /// Room to write.
    pub fn is_writable(&self) -> bool {
        self.bits & bits::WRITABLE != 0
    }
    /// An exceptional condition (`POLLPRI`).
    pub fn is_priority(&self) -> bool {
        self.bits & bits::PRIORITY != 0
    }
    /// The peer hung up (`POLLHUP`), or shut down its writing half (`POLLRDHUP`).
    pub fn is_hup(&self) -> bool {
        self.bits & (bits::HUP | bits::RDHUP) != 0
    }
    /// An error condition on the fd (`POLLERR`; kernfs files also raise it with `PRIORITY`), or
    /// the watch itself failed (see [`Readiness::watch_error`]).
    pub fn is_error(&self) -> bool {
        self.bits & (bits::ERROR | bits::INVALID) != 0 || self.error.is_some()
    }
    /// When the watch itself failed (the fd was closed, or cannot be polled), the error. The
    /// registration has then been removed: no further callbacks follow.
    pub fn watch_error(&self) -> Option<io::Error> {
        self.error.map(io::Error::from_raw_os_error)
    }
    /// The raw `poll(2)` bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    pub(crate) fn from_bits(bits: u32) -> Readiness {
        Readiness { bits, error: None }
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("readable", &self.is_readable())
            .field("writable", &self.is_writable())
            .field("priority", &self.is_priority())
            .field("hup", &self.is_hup())
            .field("error", &self.is_error())
            .field("watch_error", &self.error)
            .finish()
    }
}

/// Bits reported whatever the interest.
pub(crate) const ALWAYS: u32 = bits::ERROR | bits::HUP | bits::INVALID;

type PollCallback = Box<dyn FnMut(&Loop, Readiness)>;

struct Registration {
    fd: RawFd,
    interest: u32,
    /// Identity of the open file when registered, to notice an fd number reused behind the
    /// loop's back.
    ident: (u64, u64),
    /// Taken out while the callback runs.
    callback: Option<PollCallback>,
    /// The loop operation of the armed one-shot poll.
    armed: Option<OpId>,
}

/// The loop's poll registrations.
#[derive(Default)]
pub(crate) struct Polls {
    regs: OpSlab<Registration>,
    by_fd: HashMap<RawFd, OpId>,
}

impl Polls {
    pub(crate) fn clear(&mut self) {
        for id in self.regs.ids() {
            self.regs.remove(id);
        }
        self.by_fd.clear();
    }
}

fn identity(fd: RawFd) -> io::Result<(u64, u64)> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: (FFI) `st` is a writable stat buffer that outlives the call.
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: (FFI) fstat succeeded and filled `st`.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

fn not_watched(fd: RawFd) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("fd {fd} is not watched by this loop for that interest (never started, or already stopped)"),
    )
}

impl Loop {
    /// Calls `callback` whenever `fd` reports one of `interest` (level-triggered). Errors and
    /// hang-ups are always reported. If `fd` is already watched, `interest` is added to what is
    /// watched and `callback` replaces the previous one.
    ///
    /// The fd stays owned by the caller: fdloop never closes it. Call [`Loop::detach`] (or
    /// [`Loop::stop_poll`]) before closing it.
    ///
    /// ```
    /// use fdloop::{Interest, Loop};
    /// use std::io::{Read, Write};
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let lp = Loop::new()?;
    /// let (mut a, mut b) = UnixStream::pair()?;
    /// a.write_all(b"ping")?;
    /// let fd = b.as_raw_fd();
    /// lp.start_poll(fd, Interest::READABLE, move |lp, ready| {
    ///     assert!(ready.is_readable());
    ///     let mut buf = [0; 4];
    ///     b.read_exact(&mut buf).unwrap();
    ///     lp.detach(fd).unwrap();
    /// })?;
    /// lp.run()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// * `InvalidInput` for a negative fd or an empty interest;
    /// * `EBADF` for a closed fd;
    /// * `PermissionDenied` (EPERM) for files that cannot be polled — regular files and
    ///   directories are always "ready" and epoll refuses them: read them with
    ///   [`Loop::read_at`], which is asynchronous on both backends. (sysfs, procfs and cgroup
    ///   attribute files *can* be polled, for [`Interest::PRIORITY`].)
    pub fn start_poll<F>(
        &self,
        fd: impl Descriptor,
        interest: Interest,
        callback: F,
    ) -> io::Result<()>
    where
        F: FnMut(&Loop, Readiness) + 'static,
    {
        let fd = fd.raw_fd();
        check_fd(fd)?;
        if interest.0 & Interest::valid() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "start_poll needs at least one interest",
            ));
        }
        check_pollable(fd)?;
        let ident = identity(fd)?;
        let existing = self.inner.polls.borrow().by_fd.get(&fd).copied();
        if let Some(reg_id) = existing {
            let same = {
                let polls = self.inner.polls.borrow();
                polls.regs.get(reg_id).map(|r| r.ident == ident)
            };
            if same == Some(true) {
                let old_cb = {
                    let mut polls = self.inner.polls.borrow_mut();
                    let reg = polls.regs.get_mut(reg_id).expect("registration exists");
                    reg.interest |= interest.0;
                    reg.callback.replace(Box::new(callback))
                };
                drop(old_cb);
                self.rearm(reg_id);
                return Ok(());
            }
            // The fd number now names another file (the old one was closed behind the loop's
            // back): everything the loop and the driver knew about the number is stale.
            self.detach(fd)?;
        }
        let reg_id = {
            let mut polls = self.inner.polls.borrow_mut();
            let id = polls.regs.insert(Registration {
                fd,
                interest: interest.0,
                ident,
                callback: Some(Box::new(callback)),
                armed: None,
            });
            polls.by_fd.insert(fd, id);
            id
        };
        self.arm(reg_id);
        Ok(())
    }

    /// Stops watching `fd` for `interest`. When nothing is left, the registration and its
    /// callback are removed.
    ///
    /// # Errors
    ///
    /// `NotFound` when `fd` is not watched for any of `interest` (never started or already
    /// stopped); `InvalidInput` for a negative fd.
    pub fn stop_poll(&self, fd: impl Descriptor, interest: Interest) -> io::Result<()> {
        let fd = fd.raw_fd();
        if fd < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {fd} is not a file descriptor"),
            ));
        }
        let reg_id = self
            .inner
            .polls
            .borrow()
            .by_fd
            .get(&fd)
            .copied()
            .ok_or_else(|| not_watched(fd))?;
        let left = {
            let mut polls = self.inner.polls.borrow_mut();
            let reg = polls.regs.get_mut(reg_id).ok_or_else(|| not_watched(fd))?;
            if reg.interest & interest.0 == 0 {
                return Err(not_watched(fd));
            }
            reg.interest &= !interest.0;
            reg.interest & Interest::valid()
        };
        if left == 0 {
            self.remove_registration(reg_id);
        } else {
            self.rearm(reg_id);
        }
        Ok(())
    }

    /// Cancels everything this loop has on `fd` — its poll registration and every I/O
    /// operation in flight on it (their callbacks receive `ECANCELED`, or their real result if
    /// they won the race, together with their buffers) — and forgets the fd. The fd is **not**
    /// closed: that stays the owner's job, and should happen after `detach`.
    ///
    /// Detaching an fd the loop does not know is not an error.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a negative fd.
    pub fn detach(&self, fd: impl Descriptor) -> io::Result<()> {
        let fd = fd.raw_fd();
        if fd < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {fd} is not a file descriptor"),
            ));
        }
        let reg = self.inner.polls.borrow().by_fd.get(&fd).copied();
        if let Some(reg_id) = reg {
            self.remove_registration(reg_id);
        }
        // Multishot operations on the fd are not re-armed any more.
        self.cancel_multishot_on(fd);
        // Also makes the driver forget what it cached about the fd (kind, epoll registration),
        // so the number can be reused safely once the owner closes it.
        self.inner.driver.borrow_mut().cancel_fd(fd);
        Ok(())
    }

    fn remove_registration(&self, reg_id: OpId) {
        let removed = {
            let mut polls = self.inner.polls.borrow_mut();
            let reg = polls.regs.remove(reg_id);
            if let Some(r) = &reg {
                if polls.by_fd.get(&r.fd) == Some(&reg_id) {
                    polls.by_fd.remove(&r.fd);
                }
            }
            reg
        };
        if let Some(reg) = removed {
            if let Some(op) = reg.armed {
                self.cancel_op(op);
            }
            drop(reg);
        }
    }

    /// Arms the registration's one-shot poll.
    fn arm(&self, reg_id: OpId) {
        let (fd, events) = {
            let polls = self.inner.polls.borrow();
            match polls.regs.get(reg_id) {
                Some(r) if r.armed.is_none() => (r.fd, r.interest),
                _ => return,
            }
        };
        let op = Op::Poll {
            fd,
            events,
            multishot: false,
        };
        // SAFETY: (I2, I3) a poll references no memory (I2); the fd stays open while registered
        // because the caller must detach before closing, and a closed fd only makes the poll fail
        // (I3).
        let key = unsafe { self.push_op(op, OpKind::Poll(reg_id)) };
        if let Some(r) = self.inner.polls.borrow_mut().regs.get_mut(reg_id) {
            r.armed = Some(key);
        }
    }

    /// Replaces the armed poll by one with the registration's current interest.
    fn rearm(&self, reg_id: OpId) {
        let armed = {
            let mut polls = self.inner.polls.borrow_mut();
            polls.regs.get_mut(reg_id).and_then(|r| r.armed.take())
        };
        if let Some(op) = armed {
            // Its completion (ECANCELED or an event) no longer matches `armed` and is ignored.
            self.cancel_op(op);
        }
        self.arm(reg_id);
    }

    /// The one-shot poll `op` of registration `reg_id` completed with `result`.
    pub(crate) fn poll_completed(&self, reg_id: OpId, op: OpId, result: i32) {
        let (callback, interest) = {
            let mut polls = self.inner.polls.borrow_mut();
            let Some(reg) = polls.regs.get_mut(reg_id) else {
                return;
            };
            if reg.armed != Some(op) {
                return; // superseded by a re-arm
            }
            reg.armed = None;
            if result == -libc::ECANCELED {
                return;
            }
            (reg.callback.take(), reg.interest)
        };
        let Some(mut callback) = callback else {
            return;
        };
        let readiness = if result < 0 {
            Readiness {
                bits: bits::ERROR,
                error: Some(-result),
            }
        } else {
            Readiness {
                bits: result as u32 & (interest | ALWAYS),
                error: None,
            }
        };
        let ok = self.call_user(|| callback(self, readiness)).is_some();
        let keep = ok && readiness.error.is_none();
        let dropped = {
            let mut polls = self.inner.polls.borrow_mut();
            match polls.regs.get_mut(reg_id) {
                Some(reg) if keep && reg.callback.is_none() => {
                    reg.callback = Some(callback);
                    None
                }
                _ => Some(callback),
            }
        };
        drop(dropped);
        if keep {
            self.arm(reg_id);
        } else {
            self.remove_registration(reg_id);
        }
    }
}

/// Regular files and directories cannot be polled (epoll refuses them; io_uring reports them
/// always ready). Files of pseudo filesystems (sysfs, procfs, cgroup) can, so the check asks
/// the kernel rather than looking at the file type alone.
fn check_pollable(fd: RawFd) -> io::Result<()> {
    if FdClass::of(fd)? != FdClass::File {
        return Ok(());
    }
    if FdClass::can_poll(fd)? {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "fd {fd} is a regular file or directory, which is always ready and cannot be polled \
             (epoll_ctl gives EPERM); read it with Loop::read_at instead"
        ),
    ))
}
