//! Provided-buffer rings: a pool of equal buffers that [`Op::RecvMulti`](crate::Op::RecvMulti)
//! picks from.
//!
//! A [`BufRing`] is `count` buffers of `size` bytes plus a ring of buffer descriptors in the
//! layout of io_uring's provided-buffer rings (`IORING_REGISTER_PBUF_RING`, kernel 5.19). The
//! owner adds buffers at the tail ([`BufRing::recycle`]); the consumer takes them at the head:
//! the kernel on io_uring (after [`Driver::register_buf_ring`](crate::Driver::register_buf_ring)),
//! the driver itself on epoll, one buffer per received chunk. A buffer handed
//! out by a completion belongs to the caller until it recycles it.
//!
//! A completion of `RecvMulti` with data packs the buffer id and the byte count in its `result`
//! ([`unpack`]): that is why buffers are at most [`MAX_BUF_SIZE`] bytes and a ring holds at most
//! [`MAX_BUFFERS`] buffers.

use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

use crate::sys::to_result;

/// The most buffers one ring holds.
pub const MAX_BUFFERS: u16 = 1 << 14;
/// The largest buffer size.
pub const MAX_BUF_SIZE: u32 = 1 << 16;
/// Bits of the byte count in a packed result.
const LEN_BITS: u32 = 17;

/// Packs a buffer id and a byte count (`1..=MAX_BUF_SIZE`) into a completion result.
pub fn pack(bid: u16, len: u32) -> i32 {
    debug_assert!(bid < MAX_BUFFERS && len <= MAX_BUF_SIZE);
    ((u32::from(bid) << LEN_BITS) | len) as i32
}

/// The buffer id and the byte count of a positive `RecvMulti` result.
pub fn unpack(result: i32) -> (u16, u32) {
    let r = result as u32;
    ((r >> LEN_BITS) as u16, r & ((1 << LEN_BITS) - 1))
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: (FFI) an anonymous private mapping takes no pointer to existing memory (the
        // address hint is null); the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // fork: the child must not share the pages the kernel writes into (as for the ring).
        // SAFETY: (FFI) `p..p+len` is the mapping just made; MADV_DONTFORK only changes what fork
        // copies.
        unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) };
        Ok(Mapping {
            ptr: NonNull::new(p.cast())
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: (FFI) the mapping was made by `Mapping::new` with this length and is unmapped
        // once, here.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A pool of `count` buffers of `size` bytes and the ring that hands them to a multishot
/// receive. See the [module docs](self).
///
/// `!Send`: it belongs to its loop's thread. It must outlive every operation that uses it and,
/// on io_uring, its registration (see [`Driver::register_buf_ring`](crate::Driver::register_buf_ring)).
pub struct BufRing {
    ring: Mapping,
    data: Mapping,
    /// Ring entries (a power of two, ≥ `count`).
    entries: u16,
    count: u16,
    size: u32,
    /// The producer's tail (published to the ring's shared tail).
    tail: Cell<u16>,
    /// The consumer's head when the driver consumes in user space (epoll).
    head: Cell<u16>,
    /// The io_uring buffer group while registered.
    group: Cell<Option<u16>>,
}

impl BufRing {
    /// `count` buffers of `size` bytes, all in the ring.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for `count` outside `1..=MAX_BUFFERS` or `size` outside
    /// `1..=MAX_BUF_SIZE`; the `mmap(2)` error (`ENOMEM`) when the memory cannot be had.
    pub fn new(count: u16, size: u32) -> io::Result<BufRing> {
        if count == 0 || count > MAX_BUFFERS || size == 0 || size > MAX_BUF_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a buffer ring holds 1..={MAX_BUFFERS} buffers of 1..={MAX_BUF_SIZE} bytes, \
                     not {count} of {size}"
                ),
            ));
        }
        let entries = count.next_power_of_two();
        let ring = Mapping::new(usize::from(entries) * std::mem::size_of::<BufRingEntry>())?;
        let data = Mapping::new(usize::from(count) * size as usize)?;
        let r = BufRing {
            ring,
            data,
            entries,
            count,
            size,
            tail: Cell::new(0),
            head: Cell::new(0),
            group: Cell::new(None),
        };
        for bid in 0..count {
            r.put(bid);
        }
        r.publish();
        Ok(r)
    }

    /// How many buffers.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The size of each buffer.
    pub fn buf_size(&self) -> u32 {
        self.size
    }

    /// The io_uring buffer group, while registered.
    pub fn group(&self) -> Option<u16> {
        self.group.get()
    }

    pub(crate) fn set_group(&self, group: Option<u16>) {
        self.group.set(group);
    }

    /// Address of the descriptor ring (page-aligned) and its entry count, for registration.
    pub(crate) fn ring_addr(&self) -> (u64, u16) {
        (self.ring.ptr.as_ptr() as u64, self.entries)
    }

    fn entry(&self, index: u16) -> *mut BufRingEntry {
        let i = usize::from(index & (self.entries - 1));
        // SAFETY: (FFI) `i < entries` and the mapping holds `entries` descriptors, so the offset
        // stays inside it.
        unsafe { self.ring.ptr.as_ptr().cast::<BufRingEntry>().add(i) }
    }

    /// The ring's shared tail (the `resv` field of descriptor 0, as the kernel defines it).
    fn shared_tail(&self) -> &AtomicU16 {
        // SAFETY: (FFI) descriptor 0 lives as long as `self`; its `resv` u16 is 2-aligned and only
        // ever accessed atomically (by us and by the kernel).
        unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entry(0)).cast_mut()) }
    }

    /// Writes buffer `bid`'s descriptor at the tail (not yet visible to the consumer).
    fn put(&self, bid: u16) {
        let t = self.tail.get();
        let e = self.entry(t);
        // SAFETY: (FFI) the slot at the tail is in the mapping and not read by the consumer until
        // `publish` (the ring holds at most `count ≤ entries` buffers, and this one was out of it);
        // only addr, len and bid are written, since `resv` of descriptor 0 is the shared tail.
        unsafe {
            (*e).set_addr(self.data.ptr.as_ptr() as u64 + u64::from(bid) * u64::from(self.size));
            (*e).set_len(self.size);
            (*e).set_bid(bid);
        }
        self.tail.set(t.wrapping_add(1));
    }

    fn publish(&self) {
        self.shared_tail().store(self.tail.get(), Ordering::Release);
    }

    /// Gives buffer `bid` back to the ring, to be picked again.
    ///
    /// # Safety
    ///
    /// (I2) `bid` was handed out by a completion and not recycled since: a buffer in the ring
    /// twice could be filled twice at once.
    pub unsafe fn recycle(&self, bid: u16) {
        debug_assert!(bid < self.count);
        self.put(bid);
        self.publish();
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    ///
    /// (I2) `bid` is out of the ring (handed out by a completion and not recycled yet), so
    /// nothing writes it while the slice lives; `len ≤ buf_size()`.
    pub unsafe fn chunk(&self, bid: u16, len: u32) -> &[u8] {
        debug_assert!(bid < self.count && len <= self.size);
        let off = usize::from(bid) * self.size as usize;
        // SAFETY: (I2, FFI) `off + len` is in bounds of the data mapping (`bid < count`, `len ≤
        // size`, the caller's contract) and the memory is initialised (the mapping is zero-filled
        // and written only by receives); buffer `bid` is out of the ring, so no receive writes it
        // while the slice lives.
        unsafe { std::slice::from_raw_parts(self.data.ptr.as_ptr().add(off), len as usize) }
    }
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("count", &self.count)
            .field("size", &self.size)
            .field("group", &self.group.get())
            .finish()
    }
}

/// The user-space consumer: one `recv(2)` of `fd` into the buffer at the head of `ring`.
/// Returns the packed result ([`pack`]) and takes the buffer out of the ring on data, `0` at
/// end of stream, `-ENOBUFS` when the ring is empty, or `-errno`.
///
/// # Safety
///
/// (I2, I3) `ring` points to a live [`BufRing`] that is not registered with io_uring, and `fd`
/// is open.
pub(crate) unsafe fn recv_into(ring: *const BufRing, fd: RawFd, flags: i32) -> i32 {
    // SAFETY: (I2) the caller of `recv_into` keeps the ring alive and unmoved until the receive's
    // final completion, so the pointer is valid for this call.
    let ring = unsafe { &*ring };
    let head = ring.head.get();
    if head == ring.tail.get() {
        return -libc::ENOBUFS;
    }
    let e = ring.entry(head);
    // SAFETY: (FFI) `e` is a descriptor in the mapping between head and tail: a buffer of the ring,
    // which nobody else reads or writes until it is handed out.
    let (addr, len, bid) = unsafe { ((*e).addr(), (*e).len(), (*e).bid()) };
    let r = loop {
        // SAFETY: (I2, I3) `addr..addr+len` is buffer `bid` of the ring's data mapping, which the
        // caller keeps alive, and it is not registered with io_uring, so only this receive writes
        // it; the caller keeps `fd` open.
        let n = unsafe { libc::recv(fd, addr as *mut libc::c_void, len as usize, flags) };
        let r = to_result(n);
        if r != -libc::EINTR {
            break r;
        }
    };
    if r > 0 {
        ring.head.set(head.wrapping_add(1));
        pack(bid, r as u32)
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trips_at_the_limits() {
        for (bid, len) in [(0, 1), (MAX_BUFFERS - 1, MAX_BUF_SIZE), (7, 4096)] {
            let r = pack(bid, len);
            assert!(r > 0);
            assert_eq!(unpack(r), (bid, len));
        }
    }

    #[test]
    fn limits_are_checked() {
        assert!(BufRing::new(0, 16).is_err());
        assert!(BufRing::new(MAX_BUFFERS + 1, 16).is_err());
        assert!(BufRing::new(4, MAX_BUF_SIZE + 1).is_err());
        let r = BufRing::new(3, 16).unwrap();
        assert_eq!((r.count(), r.buf_size(), r.group()), (3, 16, None));
    }
}
