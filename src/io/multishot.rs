//! Multishot operations for callbacks: a receive that reports every chunk into a loop-owned
//! [`BufPool`], and an accept that reports every connection.
//!
//! One push, many callbacks: the operation stays armed in the kernel (io_uring) or in the
//! driver's readiness table (epoll) and each event costs no new submission. The callback is an
//! `FnMut` kept in the loop's operation table; it is taken out while it runs (no loop state is
//! borrowed during user code) and put back afterwards, so a report costs no allocation (I6).
//!
//! **Exactly one final call.** Every multishot operation ends with exactly one final callback
//! (I1): an `Err` (`ECANCELED` after [`Loop::cancel`] / [`Loop::detach`], or the error that
//! ended it) or, for a receive, `Ok` with an empty slice at end of stream. Nothing is called
//! after it. A loop that closes with the operation in flight drops the callback without calling
//! it (as for every operation), closing connections accepted meanwhile.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};

use fdloop_backends::{bufring, BackendKind, BufRing, Completion, Op, OpId};

use super::IoId;
use crate::descriptor::Descriptor;
use crate::event_loop::{Inner, OpEntry, OpKind};
use crate::Loop;

/// What the loop does with the completions of a multishot operation.
pub(crate) trait MultiPending {
    /// A non-final completion: calls the user's callback.
    fn report(&mut self, lp: &Loop, result: i32);
    /// A non-final completion that must not reach the user (its callback panicked): frees
    /// what the kernel handed out (a buffer, an accepted fd).
    fn discard_report(&mut self, result: i32);
    /// The operation to push again instead of ending, for a final `result` that only means
    /// "the kernel stopped" (a receive whose buffers ran out).
    fn rearm(&self, result: i32) -> Option<Op>;
    /// The final completion: calls the user's callback for the last time.
    fn complete(self: Box<Self>, lp: &Loop, result: i32);
    /// The final completion when the callback must not run (closing loop, panicked callback).
    fn discard(self: Box<Self>, result: i32);
}

/// The loop's record of a multishot operation (in its operation table).
pub(crate) struct Multi {
    /// The callback state; `None` while it runs.
    pub(crate) pending: Option<Box<dyn MultiPending>>,
    /// The fd, so that `detach` can stop it.
    pub(crate) fd: RawFd,
    /// Cancellation was asked: never re-armed.
    pub(crate) cancelled: bool,
    /// Its callback panicked: reports are discarded and the final call is not made.
    pub(crate) dead: bool,
}

// ---------------------------------------------------------------------------------------------
// The buffer pool
// ---------------------------------------------------------------------------------------------

struct PoolInner {
    ring: BufRing,
    lp: Weak<Inner>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        // No operation uses the ring any more (each holds a reference to the pool). When the
        // loop is gone, so is its ring registration.
        if let Some(inner) = self.lp.upgrade() {
            if let Ok(mut driver) = inner.driver.try_borrow_mut() {
                driver.unregister_buf_ring(&self.ring);
            }
        }
    }
}

/// A pool of equal buffers that [`Loop::recv_multishot`] receives into: `count` buffers of
/// `size` bytes, owned by the loop that made it ([`Loop::buffer_pool`]).
///
/// On io_uring it is a provided-buffer ring registered with the kernel
/// (`IORING_REGISTER_PBUF_RING`): the kernel picks a free buffer for each chunk it receives.
/// On epoll the loop's driver does the same in user space. A buffer is lent to one callback call
/// and goes back to the pool when the call returns. Several receives (connections) may share
/// one pool; when it runs dry, the receives pause until buffers come back, without losing data.
///
/// Cloning is cheap (a reference count); the memory is freed when the last clone and the last
/// receive using it are gone.
#[derive(Clone)]
pub struct BufPool {
    inner: Rc<PoolInner>,
}

impl std::fmt::Debug for BufPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufPool")
            .field("count", &self.inner.ring.count())
            .field("buf_size", &self.inner.ring.buf_size())
            .finish()
    }
}

impl BufPool {
    /// How many buffers the pool has.
    pub fn count(&self) -> usize {
        usize::from(self.inner.ring.count())
    }

    /// The size of each buffer: the most one chunk can hold.
    pub fn buf_size(&self) -> usize {
        self.inner.ring.buf_size() as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Receive
// ---------------------------------------------------------------------------------------------

struct RecvMultiOp<F> {
    fd: RawFd,
    pool: BufPool,
    callback: F,
}

impl<F> RecvMultiOp<F> {
    fn op(&self) -> Op {
        Op::RecvMulti {
            fd: self.fd,
            ring: &self.pool.inner.ring,
            flags: 0,
        }
    }
}

/// Gives a lent buffer back to the ring when dropped (also when the callback panics).
struct Lent<'a> {
    ring: &'a BufRing,
    bid: u16,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        // SAFETY: (I2) `bid` was handed out by the completion being dispatched and is recycled
        // once, here, after the only borrow of its bytes (the callback's) has ended, so no receive
        // fills it while it is read.
        unsafe { self.ring.recycle(self.bid) };
    }
}

impl<F> MultiPending for RecvMultiOp<F>
where
    F: FnMut(&Loop, io::Result<&[u8]>),
{
    fn report(&mut self, lp: &Loop, result: i32) {
        let (bid, len) = bufring::unpack(result);
        let lent = Lent {
            ring: &self.pool.inner.ring,
            bid,
        };
        // SAFETY: (I2) the driver handed `bid` out with this completion: it is out of the ring, so
        // no receive writes it, until `lent` recycles it after the slice's last use.
        let chunk = unsafe { lent.ring.chunk(bid, len) };
        (self.callback)(lp, Ok(chunk));
        drop(lent);
    }

    fn discard_report(&mut self, result: i32) {
        let (bid, _) = bufring::unpack(result);
        drop(Lent {
            ring: &self.pool.inner.ring,
            bid,
        });
    }

    fn rearm(&self, result: i32) -> Option<Op> {
        // The ring was empty when data arrived; the data is still in the socket. Every buffer
        // handed out before is back by the time the new request is submitted (the next wait):
        // buffers are lent to callbacks only while they run.
        (result == -libc::ENOBUFS).then(|| self.op())
    }

    fn complete(mut self: Box<Self>, lp: &Loop, result: i32) {
        let r = if result < 0 {
            Err(io::Error::from_raw_os_error(-result))
        } else {
            Ok(&[][..])
        };
        (self.callback)(lp, r);
    }

    fn discard(self: Box<Self>, _result: i32) {}
}

// ---------------------------------------------------------------------------------------------
// Accept
// ---------------------------------------------------------------------------------------------

struct AcceptMultiOp<F> {
    op: Op,
    callback: F,
}

impl<F> MultiPending for AcceptMultiOp<F>
where
    F: FnMut(&Loop, io::Result<OwnedFd>),
{
    fn report(&mut self, lp: &Loop, result: i32) {
        // SAFETY: (FFI) a non-final completion of a multishot accept carries the new fd it
        // returned, which nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(result) };
        (self.callback)(lp, Ok(fd));
    }

    fn discard_report(&mut self, result: i32) {
        // SAFETY: (FFI) a non-final completion of a multishot accept carries the new fd it
        // returned, which nothing else owns; nobody will receive it, so the loop closes it.
        drop(unsafe { OwnedFd::from_raw_fd(result) });
    }

    fn rearm(&self, result: i32) -> Option<Op> {
        // A connection reset before it was accepted is that connection's business, not the
        // listener's.
        (result == -libc::ECONNABORTED).then_some(self.op)
    }

    fn complete(mut self: Box<Self>, lp: &Loop, result: i32) {
        let e = if result < 0 { -result } else { libc::EIO };
        (self.callback)(lp, Err(io::Error::from_raw_os_error(e)));
    }

    fn discard(self: Box<Self>, _result: i32) {}
}

impl Loop {
    /// A pool of `count` buffers of `size` bytes for [`Loop::recv_multishot`], owned by this
    /// loop (see [`BufPool`]). On io_uring it is registered with the kernel as a
    /// provided-buffer ring.
    ///
    /// ```
    /// use fdloop::Loop;
    /// use std::io::Write;
    /// use std::os::unix::net::UnixStream;
    ///
    /// let lp = Loop::new()?;
    /// let pool = lp.buffer_pool(16, 4096)?;
    /// let (a, mut b) = UnixStream::pair()?;
    /// b.write_all(b"hello")?;
    /// drop(b);
    /// let mut got = Vec::new();
    /// lp.recv_multishot(&a, &pool, move |_lp, chunk| match chunk {
    ///     Ok(bytes) if !bytes.is_empty() => got.extend_from_slice(bytes),
    ///     Ok(_) => assert_eq!(got, b"hello"), // end of stream: the final call
    ///     Err(e) => panic!("{e}"),            // or an error: the final call
    /// })?;
    /// lp.run()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// * `InvalidInput`: `count` not in `1..=16384` or `size` not in `1..=65536`;
    /// * `ENOMEM` when the memory cannot be mapped;
    /// * io_uring: the kernel's registration error (`ENOMEM` when locked memory runs out).
    pub fn buffer_pool(&self, count: usize, size: usize) -> io::Result<BufPool> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a buffer pool has 1..={} buffers of 1..={} bytes, not {count} of {size}",
                    bufring::MAX_BUFFERS,
                    bufring::MAX_BUF_SIZE
                ),
            )
        };
        let count = u16::try_from(count).map_err(|_| bad())?;
        let size = u32::try_from(size).map_err(|_| bad())?;
        let inner = Rc::new(PoolInner {
            ring: BufRing::new(count, size)?,
            lp: Rc::downgrade(&self.inner),
        });
        // SAFETY: (I2) the ring lives in the Rc allocation, unmoved, until the pool's last clone
        // drops, which unregisters it first when the loop (and its driver) is still there.
        unsafe {
            self.inner
                .driver
                .borrow_mut()
                .register_buf_ring(&inner.ring)?
        };
        Ok(BufPool { inner })
    }

    /// Receives from a socket into `pool` until end of stream, an error or cancellation,
    /// calling `callback` once per chunk with the received bytes: `Ok(chunk)`, non-empty,
    /// whose buffer goes back to the pool when the call returns (copy what you keep).
    ///
    /// The **last call** is exactly one of: `Ok(&[])` at end of stream, or `Err(e)`. After it,
    /// the callback is dropped. Chunks arrive in order, each at most
    /// [`BufPool::buf_size`] bytes.
    ///
    /// On io_uring this is one multishot `RECV` with buffer selection: no submission per chunk
    /// (Linux 6.0; before, a poll re-armed per chunk and a `recv` by the loop, as on epoll).
    /// When the pool runs dry the kernel ends the request (`ENOBUFS`) and the loop re-arms it
    /// as soon as buffers are back (at the latest when the current callbacks have returned): no
    /// data is lost and the callback does not see it. On epoll the loop's driver receives into
    /// a pool buffer whenever the socket is readable.
    ///
    /// # Errors
    ///
    /// Returned: `InvalidInput` when `pool` belongs to another loop (the callback is then never
    /// called). Delivered to the callback as its last call: the `recv(2)` error
    /// (`ECONNRESET`, `ENOTSOCK` …), or `ECANCELED` after [`Loop::cancel`] / [`Loop::detach`].
    pub fn recv_multishot<F>(
        &self,
        socket: impl Descriptor,
        pool: &BufPool,
        callback: F,
    ) -> io::Result<IoId>
    where
        F: FnMut(&Loop, io::Result<&[u8]>) + 'static,
    {
        if !Weak::ptr_eq(&pool.inner.lp, &Rc::downgrade(&self.inner)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the buffer pool belongs to another loop",
            ));
        }
        let fd = socket.raw_fd();
        let pending = Box::new(RecvMultiOp {
            fd,
            pool: pool.clone(),
            callback,
        });
        let op = pending.op();
        // SAFETY: (I2, I3) the ring lives in the pool, which `pending` keeps alive while the loop
        // keeps `pending` in its operation table (until the final completion); the caller keeps
        // `socket` open until the callback's last call.
        Ok(unsafe { self.push_multi(fd, op, pending) })
    }

    /// Accepts connections on a listening socket until cancelled, calling `callback` with each
    /// new connection (`Ok(fd)`; close-on-exec, and non-blocking on the epoll backend). Peer
    /// addresses are not collected (ask the socket: `getpeername`).
    ///
    /// The **last call** is exactly one `Err(e)`: `ECANCELED` after [`Loop::cancel`] /
    /// [`Loop::detach`], or the error that ended accepting (`EMFILE`, `ENFILE` …: back off and
    /// call `accept_multishot` again). A connection aborted before it was accepted
    /// (`ECONNABORTED`) is skipped.
    ///
    /// On io_uring this is one multishot `ACCEPT` (Linux 5.19; re-armed one-shot accepts on
    /// older kernels). On epoll, up to 64 connections are accepted per readiness report.
    ///
    /// # Errors
    ///
    /// Delivered to the callback as its last call (see above).
    pub fn accept_multishot<F>(&self, listener: impl Descriptor, callback: F) -> IoId
    where
        F: FnMut(&Loop, io::Result<OwnedFd>) + 'static,
    {
        let fd = listener.raw_fd();
        let flags = match self.inner.info.kind {
            BackendKind::Epoll => libc::SOCK_NONBLOCK,
            BackendKind::Uring => 0,
        };
        let op = Op::Accept {
            fd,
            addr: std::ptr::null_mut(),
            addrlen: std::ptr::null_mut(),
            flags,
            multishot: true,
        };
        let pending = Box::new(AcceptMultiOp { op, callback });
        // SAFETY: (I2, I3) the operation references no memory (null address pointers); the caller
        // keeps `listener` open until the callback's last call.
        unsafe { self.push_multi(fd, op, pending) }
    }

    /// Pushes a multishot operation and records it.
    ///
    /// # Safety
    ///
    /// (I2, I3) What `op` references stays valid and unmoved while the loop keeps `pending`
    /// (until the final completion), and `fd` stays open until then, as `push_op` requires.
    unsafe fn push_multi(&self, fd: RawFd, op: Op, pending: Box<dyn MultiPending>) -> IoId {
        let kind = OpKind::Multi(Multi {
            pending: Some(pending),
            fd,
            cancelled: false,
            dead: false,
        });
        // SAFETY: (I2, I3) the caller of `push_multi` keeps what `op` references valid while the
        // loop keeps `pending`, which is until the final completion, and `fd` open, which is what
        // `push_op` requires.
        let key = unsafe { self.push_op(op, kind) };
        IoId {
            serial: self.inner.serial,
            key,
        }
    }

    /// Delivers a completion of the multishot operation `key` (see the module docs).
    pub(crate) fn multi_completed(&self, key: OpId, c: Completion) {
        let (pending, cancelled, dead) = {
            let mut ops = self.inner.ops.borrow_mut();
            let Some(OpEntry {
                kind: OpKind::Multi(m),
                ..
            }) = ops.get_mut(key)
            else {
                return;
            };
            (m.pending.take(), m.cancelled, m.dead)
        };
        let Some(mut pending) = pending else {
            return;
        };
        if c.more {
            let mut dead_now = dead;
            if dead {
                pending.discard_report(c.result);
            } else if self.call_user(|| pending.report(self, c.result)).is_none() {
                // The callback panicked: stop the operation, and never call it again.
                dead_now = true;
            }
            let driver_id = {
                let mut ops = self.inner.ops.borrow_mut();
                match ops.get_mut(key) {
                    Some(OpEntry {
                        kind: OpKind::Multi(m),
                        driver_id,
                    }) => {
                        m.pending = Some(pending);
                        m.dead = dead_now;
                        m.cancelled |= dead_now;
                        Some(*driver_id)
                    }
                    _ => None,
                }
            };
            if dead_now && !dead {
                if let Some(id) = driver_id {
                    self.inner.driver.borrow_mut().cancel(id);
                }
            }
            return;
        }
        if !cancelled {
            if let Some(op) = pending.rearm(c.result) {
                // SAFETY: (I2, I3) `pending` owns (or keeps alive) what `op` references and goes
                // back into the entry, which the loop keeps until the final completion; the
                // operation was not cancelled nor its fd detached, so the caller still keeps the fd
                // open.
                let driver_id = unsafe { self.inner.driver.borrow_mut().push(op, key.to_u64()) };
                if let Some(OpEntry {
                    kind: OpKind::Multi(m),
                    driver_id: id,
                }) = self.inner.ops.borrow_mut().get_mut(key)
                {
                    *id = driver_id;
                    m.pending = Some(pending);
                }
                return;
            }
        }
        self.inner.ops.borrow_mut().remove(key);
        if dead {
            pending.discard(c.result);
        } else {
            self.call_user(|| pending.complete(self, c.result));
        }
    }

    /// Marks the multishot operations on `fd` cancelled, so that none is re-armed after a
    /// `detach` (their final completions may already be on their way back). Costs a scan of
    /// the operation table when multishot operations exist.
    pub(crate) fn cancel_multishot_on(&self, fd: RawFd) {
        let mut ops = self.inner.ops.borrow_mut();
        for (_, e) in ops.iter_mut() {
            if let OpKind::Multi(m) = &mut e.kind {
                if m.fd == fd {
                    m.cancelled = true;
                }
            }
        }
    }
}
