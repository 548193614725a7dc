//! A hierarchical hashed timing wheel: the loop's timer store.
//!
//! # Time
//!
//! Deadlines are `u64` nanoseconds on `CLOCK_MONOTONIC` and are kept at full precision. For placement
//! the wheel rounds them down to *ticks* of 2^20 ns (≈ 1.05 ms), so all slot arithmetic is shifts and
//! masks. `elapsed` is the last tick the wheel has reached.
//!
//! # Structure
//!
//! * **Slab.** Every timer is an [`Entry`] in one `Vec`; freed entries form a free list and are reused,
//!   so a wheel that has grown to its working size never allocates again. A [`TimerKey`] is the entry's
//!   index plus a generation that is bumped whenever the entry is freed: a stale key never reaches the
//!   timer that later reuses the entry.
//! * **Lists.** Entries are linked by index into intrusive doubly-linked lists, one per wheel slot plus
//!   two extra lists (*ready* and *overflow*). Linking and unlinking are O(1).
//! * **Levels.** Six levels of 64 slots. A slot of level `l` spans 64^l ticks, so level 0 covers
//!   ≈ 67 ms at one tick per slot, level 1 ≈ 4.3 s, level 2 ≈ 4.6 min, level 3 ≈ 4.9 h,
//!   level 4 ≈ 13 d and level 5 ≈ 2.3 years. A timer due at tick `t` goes to the level given by the
//!   highest bit in which `t` differs from `elapsed`, into the slot given by the six bits of `t` at that
//!   level. Consequently every timer on level `l` lies in the same 64^(l+1)-tick block as `elapsed`, in
//!   a later slot than `elapsed`'s own: slots never wrap around, and the lowest set bit of a level's
//!   occupancy bitmap is that level's earliest slot. Any slot of a lower level is due before any slot
//!   of a higher one.
//! * **Overflow.** A timer beyond the 2^36-tick block that contains `elapsed` (more than ≈ 2.3 years
//!   ahead) waits in the unsorted overflow list, which is looked at only when all six levels are empty.
//! * **Detached entries.** [`TimerWheel::pop_expired`] unlinks a due timer but keeps its entry, key
//!   and payload ("detached") until it is rescheduled or removed, so the loop re-arms a periodic
//!   timer, or one restarted from its own callback, in the same entry: one slab holds the deadline,
//!   the links and the loop's payload (callback, period), and a key names a timer for its whole
//!   life.
//! * **Ready.** Timers whose tick is ≤ `elapsed` sit in the ready list, sorted by deadline, then by
//!   insertion order. Everything in it is due before everything in the levels.
//!
//! # Advancing and cascading
//!
//! [`TimerWheel::poll_expired`] hands out the head of the ready list while it is due. When the ready
//! list is empty it finds, through the occupancy bitmaps, the earliest occupied slot; if that slot
//! starts at or before the current tick, `elapsed` jumps straight to the slot's first tick and the slot
//! is emptied: timers due at that tick are sorted (a reused buffer, sorted in place) and appended to
//! the ready list, the others are re-placed, which always puts them on a lower level (*cascading*). A
//! timer therefore moves at most six times in its life, and a jump of hours costs a few bitmap scans,
//! never a walk over empty ticks.
//!
//! # Costs
//!
//! Insert, remove and reschedule are O(1): a slab slot, a bitmap bit and a list link. (A timer due within the
//! current tick is placed in the ready list by a scan from its tail, which in practice holds only that
//! tick's timers.) [`TimerWheel::next_deadline`] is exact; it caches the earliest entry and recomputes
//! it only when that entry leaves, by reading the ready list's head or scanning the single earliest
//! slot.

use std::cell::Cell;

/// log2 of the tick length in nanoseconds.
const TICK_SHIFT: u32 = 20;
/// log2 of the number of slots per level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Number of levels.
const LEVELS: usize = 6;
/// Ticks spanned by the whole wheel, as a power of two.
const WHEEL_BITS: u32 = SLOT_BITS * LEVELS as u32;
/// The list of timers due at or before `elapsed`, sorted.
const READY: u16 = (LEVELS * SLOTS) as u16;
/// The list of timers beyond the wheel's span.
const OVERFLOW: u16 = READY + 1;
/// Number of lists: one per slot, plus ready and overflow.
const LIST_COUNT: usize = OVERFLOW as usize + 1;
/// `Entry::list` of a free entry.
const FREE: u16 = u16::MAX;
/// `Entry::list` of a detached entry: live (its key and payload stay valid) but in no list, so it
/// has no deadline until it is rescheduled.
const DETACHED: u16 = u16::MAX - 1;
/// The null link.
const NIL: u32 = u32::MAX;
/// Slab size from which huge pages are requested.
const HUGE_PAGE_FROM: usize = 4 << 20;
/// The huge page size asked for (x86-64 and aarch64 with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Advises the kernel to back the whole huge pages inside `[start, start + len)` with
/// transparent huge pages (`MADV_HUGEPAGE`). Only advice: nothing is mapped, unmapped or
/// changed, and failure (THP disabled, an old kernel) is ignored.
fn advise_huge_pages(start: *const u8, len: usize) {
    let begin = (start as usize).next_multiple_of(HUGE_PAGE);
    let end = (start as usize + len) / HUGE_PAGE * HUGE_PAGE;
    if end <= begin {
        return;
    }
    // SAFETY: (FFI) `[begin, end)` lies inside the slab's live allocation (rounded inwards to whole
    // huge pages), which this wheel owns; MADV_HUGEPAGE changes only how the kernel backs those
    // pages, never their contents or validity, so no Rust reference is affected.
    let _ = unsafe { libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE) };
}

/// Identifies a timer in a [`TimerWheel`]; stale keys (of a removed or fired timer) are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct TimerKey {
    /// Slab index of the entry.
    index: u32,
    /// Generation of the entry when the timer was inserted.
    generation: u32,
}

impl TimerKey {
    #[cfg(test)]
    /// The entry's slab index.
    pub(crate) fn index(self) -> u32 {
        self.index
    }

    /// Packs the key into a `u64` (generation in the high half).
    pub(crate) fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    #[cfg(test)] // the loop keeps its own count and keys; the model tests use these
    /// Unpacks a key made by [`TimerKey::to_u64`].
    pub(crate) fn from_u64(v: u64) -> TimerKey {
        TimerKey {
            index: v as u32,
            generation: (v >> 32) as u32,
        }
    }
}

/// Head and tail of an intrusive list.
#[derive(Clone, Copy)]
struct List {
    /// First entry, or `NIL`.
    head: u32,
    /// Last entry, or `NIL`.
    tail: u32,
}

impl List {
    /// The empty list.
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
    };
}

/// One slab entry: a live timer, or a link in the free list. Aligned to a cache line so that an
/// entry with a payload of up to 40 bytes (the loop's) is exactly one line: starting, stopping or
/// firing a timer touches one line of its own.
#[repr(align(64))]
struct Entry<T> {
    /// Deadline in nanoseconds.
    deadline: u64,
    /// Previous entry in the list, or `NIL`.
    prev: u32,
    /// Next entry in the list (the free list for a free entry), or `NIL`.
    next: u32,
    /// Bumped each time the entry is freed.
    generation: u32,
    /// The list the entry is linked into (`level * 64 + slot`, `READY`, `OVERFLOW`), or `FREE`.
    list: u16,
    /// The timer's payload; `None` exactly when the entry is free.
    value: Option<T>,
}

/// A hierarchical timing wheel holding timers with a payload `T`; see the module documentation.
pub(crate) struct TimerWheel<T> {
    /// The slab.
    entries: Vec<Entry<T>>,
    /// First free entry, or `NIL`.
    free_head: u32,
    /// Number of scheduled timers (linked into a list).
    len: usize,
    /// Number of live entries: scheduled plus detached.
    live: usize,
    /// Every list, indexed by `Entry::list`.
    lists: Box<[List]>,
    /// Per level, bit `s` is set iff slot `s` is non-empty.
    occupied: [u64; LEVELS],
    /// The last tick reached: slots hold ticks after it, the ready list ticks at or before it.
    elapsed: u64,
    /// The wheel's time in nanoseconds (the largest `now` seen).
    now_ns: u64,
    /// A lower bound of the ticks in the overflow list (meaningful only when the list is non-empty).
    overflow_low: u64,
    /// The entry holding the earliest deadline, or `None` when unknown (recomputed on demand).
    min_cache: Cell<Option<u32>>,
    /// Reused buffer of `(deadline, position, index)` for timers moving to the ready list.
    batch: Vec<(u64, u32, u32)>,
}

impl<T> TimerWheel<T> {
    /// Creates an empty wheel whose time is `now_ns`.
    pub(crate) fn new(now_ns: u64) -> Self {
        TimerWheel {
            entries: Vec::new(),
            free_head: NIL,
            len: 0,
            live: 0,
            lists: vec![List::EMPTY; LIST_COUNT].into_boxed_slice(),
            occupied: [0; LEVELS],
            elapsed: now_ns >> TICK_SHIFT,
            now_ns,
            overflow_low: 0,
            min_cache: Cell::new(None),
            // Sized up front so that the first cascades of a steady loop do not allocate (I6);
            // it only grows past this when more timers fall due in one tick.
            batch: Vec::with_capacity(64),
        }
    }

    #[cfg(test)] // the loop counts detached entries too (`live_count`); the model tests use this
    /// Number of scheduled timers.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)] // the loop counts detached entries too (`live_count`); the model tests use this
    /// Whether no timer is scheduled.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of live entries: scheduled timers plus detached entries.
    pub(crate) fn live_count(&self) -> usize {
        self.live
    }

    /// Adds a timer due at `deadline_ns`. A deadline at or before the wheel's time fires at the next
    /// [`poll_expired`](Self::poll_expired). O(1).
    ///
    /// # Panics
    ///
    /// If the wheel already holds 2^32 - 1 timers.
    pub(crate) fn insert(&mut self, deadline_ns: u64, value: T) -> TimerKey {
        let key = self.alloc(deadline_ns, value);
        self.schedule(key.index, deadline_ns);
        key
    }

    /// Links the detached entry `idx` (its deadline set) into its list and counts it as
    /// scheduled.
    fn schedule(&mut self, idx: u32, deadline_ns: u64) {
        debug_assert_eq!(self.entries[idx as usize].list, DETACHED);
        self.len += 1;
        let tick = deadline_ns >> TICK_SHIFT;
        if tick <= self.elapsed {
            let mut after = self.lists[READY as usize].tail;
            while after != NIL && self.entries[after as usize].deadline > deadline_ns {
                after = self.entries[after as usize].prev;
            }
            self.link_after(READY, after, idx);
        } else {
            let list = self.list_for(tick);
            self.link_back(list, idx);
        }
        match self.min_cache.get() {
            Some(min) if deadline_ns < self.entries[min as usize].deadline => {
                self.min_cache.set(Some(idx));
            }
            None if self.len == 1 => self.min_cache.set(Some(idx)),
            _ => {}
        }
    }

    /// Removes a timer (scheduled or detached) and returns its payload, or `None` if `key` is
    /// stale. O(1).
    #[inline(always)]
    pub(crate) fn remove(&mut self, key: TimerKey) -> Option<T> {
        let idx = self.live(key)?;
        self.detach(idx);
        Some(self.free(idx))
    }

    /// Gives a live timer (scheduled or detached) the deadline `deadline_ns`, keeping its key and
    /// payload. Returns `false` if `key` is stale. O(1), like a remove and an insert.
    pub(crate) fn reschedule(&mut self, key: TimerKey, deadline_ns: u64) -> bool {
        let Some(idx) = self.live(key) else {
            return false;
        };
        self.detach(idx);
        self.entries[idx as usize].deadline = deadline_ns;
        self.schedule(idx, deadline_ns);
        true
    }

    /// Whether `key` names a scheduled timer (not a detached or stale one).
    pub(crate) fn is_scheduled(&self, key: TimerKey) -> bool {
        self.live(key)
            .is_some_and(|idx| self.entries[idx as usize].list != DETACHED)
    }

    /// The payload of a live timer (scheduled or detached).
    pub(crate) fn get_mut(&mut self, key: TimerKey) -> Option<&mut T> {
        let idx = self.live(key)?;
        self.entries[idx as usize].value.as_mut()
    }

    /// Whether `key` names a live timer (scheduled or detached).
    pub(crate) fn contains(&self, key: TimerKey) -> bool {
        self.live(key).is_some()
    }

    #[cfg(test)] // the loop keeps its own count and keys; the model tests use these
    /// The deadline of a live timer.
    pub(crate) fn deadline(&self, key: TimerKey) -> Option<u64> {
        let idx = self.live(key)?;
        Some(self.entries[idx as usize].deadline)
    }

    /// The exact earliest deadline of all timers, or `None` when there are none.
    ///
    /// O(1) while the earliest timer is unchanged; after it fires or is removed, the next call reads
    /// the ready list's head or scans the one earliest slot.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let idx = match self.min_cache.get() {
            Some(idx) => idx,
            None => {
                let idx = self.find_min();
                self.min_cache.set(Some(idx));
                idx
            }
        };
        Some(self.entries[idx as usize].deadline)
    }

    #[cfg(test)] // the loop detaches with `pop_expired`; the model tests use this
    /// Removes and returns one timer whose deadline is ≤ `now_ns`: the earliest one, ties in
    /// insertion order. Returns `None` when no timer is due.
    ///
    /// Advances the wheel's time to `now_ns` (a `now_ns` below the wheel's time counts as the wheel's
    /// time), cascading the slots it reaches. Amortised O(1) per timer; empty stretches are skipped
    /// through the occupancy bitmaps.
    pub(crate) fn poll_expired(&mut self, now_ns: u64) -> Option<(TimerKey, u64, T)> {
        let (key, deadline) = self.pop_expired(now_ns)?;
        Some((key, deadline, self.free(key.index)))
    }

    /// As [`poll_expired`](Self::poll_expired), but the timer is *detached* instead of removed:
    /// its key and payload stay valid (see [`get_mut`](Self::get_mut)) until it is
    /// [`reschedule`](Self::reschedule)d or [`remove`](Self::remove)d. This is how a periodic
    /// timer is re-armed without a second slab or a new key.
    pub(crate) fn pop_expired(&mut self, now_ns: u64) -> Option<(TimerKey, u64)> {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ns;
        loop {
            let head = self.lists[READY as usize].head;
            if head != NIL {
                // Everything in the slots is due after the ready list's head.
                let entry = &self.entries[head as usize];
                if entry.deadline > now {
                    return None;
                }
                let key = TimerKey {
                    index: head,
                    generation: entry.generation,
                };
                let deadline = entry.deadline;
                self.detach(head);
                return Some((key, deadline));
            }
            if !self.advance(now >> TICK_SHIFT) {
                return None;
            }
        }
    }

    /// Returns the index of the live entry `key` names.
    fn live(&self, key: TimerKey) -> Option<u32> {
        let entry = self.entries.get(key.index as usize)?;
        (entry.generation == key.generation && entry.list != FREE).then_some(key.index)
    }

    /// Takes an unlinked entry from the free list (or grows the slab) and fills it.
    fn alloc(&mut self, deadline: u64, value: T) -> TimerKey {
        let index = self.free_head;
        let key = if index != NIL {
            let entry = &mut self.entries[index as usize];
            self.free_head = entry.next;
            entry.deadline = deadline;
            entry.value = Some(value);
            TimerKey {
                index,
                generation: entry.generation,
            }
        } else {
            let index = self.entries.len();
            assert!(index < NIL as usize, "too many timers");
            if index == self.entries.capacity() {
                self.grow();
            }
            self.entries.push(Entry {
                deadline,
                prev: NIL,
                next: NIL,
                generation: 0,
                list: FREE,
                value: Some(value),
            });
            TimerKey {
                index: index as u32,
                generation: 0,
            }
        };
        // Detached until `schedule` links it.
        self.entries[key.index as usize].list = DETACHED;
        self.live += 1;
        key
    }

    /// Doubles the slab's capacity. A slab of several megabytes asks the kernel for transparent
    /// huge pages: with a million timers the slab is 64 MiB, and with 4 KiB pages nearly every
    /// timer started or stopped at random would also miss the TLB.
    #[cold]
    fn grow(&mut self) {
        self.entries.reserve(self.entries.capacity().max(16));
        let bytes = self.entries.capacity() * std::mem::size_of::<Entry<T>>();
        if bytes >= HUGE_PAGE_FROM {
            advise_huge_pages(self.entries.as_ptr().cast(), bytes);
        }
    }

    /// Unlinks a live entry if it is scheduled, leaving it detached.
    #[inline(always)]
    fn detach(&mut self, idx: u32) {
        if self.entries[idx as usize].list == DETACHED {
            return;
        }
        if self.min_cache.get() == Some(idx) {
            self.min_cache.set(None);
        }
        self.unlink(idx);
        self.entries[idx as usize].list = DETACHED;
        self.len -= 1;
    }

    /// Frees a detached entry, returning its payload.
    #[inline(always)]
    fn free(&mut self, idx: u32) -> T {
        let entry = &mut self.entries[idx as usize];
        debug_assert_eq!(entry.list, DETACHED);
        entry.list = FREE;
        entry.generation = entry.generation.wrapping_add(1);
        entry.next = self.free_head;
        self.free_head = idx;
        self.live -= 1;
        entry.value.take().expect("a live timer has a value")
    }

    /// The list for a timer due at `tick` (> `elapsed`); marks its slot occupied.
    fn list_for(&mut self, tick: u64) -> u16 {
        let diff = self.elapsed ^ tick;
        let level = (63 - diff.leading_zeros()) / SLOT_BITS;
        if level as usize >= LEVELS {
            if self.lists[OVERFLOW as usize].head == NIL || tick < self.overflow_low {
                self.overflow_low = tick;
            }
            return OVERFLOW;
        }
        let slot = (tick >> (level * SLOT_BITS)) as usize & (SLOTS - 1);
        self.occupied[level as usize] |= 1 << slot;
        (level as usize * SLOTS + slot) as u16
    }

    /// Appends `idx` to `list`.
    fn link_back(&mut self, list: u16, idx: u32) {
        let tail = self.lists[list as usize].tail;
        self.link_after(list, tail, idx);
    }

    /// Links `idx` into `list` after `after` (`NIL`: at the front).
    fn link_after(&mut self, list: u16, after: u32, idx: u32) {
        let next = if after == NIL {
            self.lists[list as usize].head
        } else {
            self.entries[after as usize].next
        };
        let entry = &mut self.entries[idx as usize];
        entry.prev = after;
        entry.next = next;
        entry.list = list;
        if after == NIL {
            self.lists[list as usize].head = idx;
        } else {
            self.entries[after as usize].next = idx;
        }
        if next == NIL {
            self.lists[list as usize].tail = idx;
        } else {
            self.entries[next as usize].prev = idx;
        }
    }

    /// Unlinks `idx` from its list, clearing the slot's occupancy bit when the slot empties.
    #[inline(always)]
    fn unlink(&mut self, idx: u32) {
        let Entry {
            prev, next, list, ..
        } = self.entries[idx as usize];
        let l = list as usize;
        if prev == NIL {
            self.lists[l].head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.lists[l].tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        if list < READY && prev == NIL && next == NIL {
            self.occupied[l / SLOTS] &= !(1 << (l % SLOTS));
        }
    }

    /// Processes the earliest occupied slot if it starts at or before `target` (a tick); otherwise
    /// moves `elapsed` up to `target`. Returns whether a slot was processed.
    fn advance(&mut self, target: u64) -> bool {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let shift = level as u32 * SLOT_BITS;
            let block = self.elapsed >> (shift + SLOT_BITS) << (shift + SLOT_BITS);
            let slot = u64::from(occupied.trailing_zeros());
            let start = block | (slot << shift);
            if start > target {
                break;
            }
            debug_assert!(start > self.elapsed);
            self.elapsed = start;
            let list = level * SLOTS + slot as usize;
            self.occupied[level] &= !(1 << slot);
            let head = self.lists[list].head;
            self.lists[list] = List::EMPTY;
            self.cascade(head);
            return true;
        }
        let levels_empty = self.occupied.iter().all(|&bits| bits == 0);
        if levels_empty
            && self.lists[OVERFLOW as usize].head != NIL
            && self.overflow_low >> WHEEL_BITS << WHEEL_BITS <= target
        {
            return self.advance_overflow(target);
        }
        self.elapsed = self.elapsed.max(target);
        false
    }

    /// With all levels empty: moves the overflow timers of the earliest 2^36-tick block into the
    /// wheel if that block starts at or before `target`.
    fn advance_overflow(&mut self, target: u64) -> bool {
        let mut low = u64::MAX;
        let mut idx = self.lists[OVERFLOW as usize].head;
        while idx != NIL {
            let entry = &self.entries[idx as usize];
            low = low.min(entry.deadline >> TICK_SHIFT);
            idx = entry.next;
        }
        self.overflow_low = low;
        let block = low >> WHEEL_BITS;
        if block << WHEEL_BITS > target {
            self.elapsed = self.elapsed.max(target);
            return false;
        }
        debug_assert!(block << WHEEL_BITS > self.elapsed);
        self.elapsed = block << WHEEL_BITS;
        let mut low = u64::MAX;
        let mut moved = NIL;
        let mut moved_tail = NIL;
        let mut idx = self.lists[OVERFLOW as usize].head;
        while idx != NIL {
            let entry = &self.entries[idx as usize];
            let next = entry.next;
            let tick = entry.deadline >> TICK_SHIFT;
            if tick >> WHEEL_BITS == block {
                // Chain the moved entries through `next`, keeping their order.
                self.unlink(idx);
                self.entries[idx as usize].next = NIL;
                if moved_tail == NIL {
                    moved = idx;
                } else {
                    self.entries[moved_tail as usize].next = idx;
                }
                moved_tail = idx;
            } else {
                low = low.min(tick);
            }
            idx = next;
        }
        self.overflow_low = low;
        self.cascade(moved);
        true
    }

    /// Re-places the chain of entries starting at `head` (linked through `next`, already detached
    /// from their list) after `elapsed` moved: timers now due go to the ready list, sorted; the others
    /// to their (lower) level.
    fn cascade(&mut self, head: u32) {
        let mut batch = std::mem::take(&mut self.batch);
        let mut idx = head;
        while idx != NIL {
            let entry = &self.entries[idx as usize];
            let next = entry.next;
            let deadline = entry.deadline;
            let tick = deadline >> TICK_SHIFT;
            if tick <= self.elapsed {
                // The position keeps ties in list order, which is insertion order.
                batch.push((deadline, batch.len() as u32, idx));
            } else {
                let list = self.list_for(tick);
                self.link_back(list, idx);
            }
            idx = next;
        }
        batch.sort_unstable();
        for &(_, _, idx) in &batch {
            self.link_back(READY, idx);
        }
        batch.clear();
        self.batch = batch;
    }

    /// Finds the entry with the earliest deadline (the wheel is not empty).
    fn find_min(&self) -> u32 {
        let ready = self.lists[READY as usize].head;
        if ready != NIL {
            return ready;
        }
        // The lowest level's first slot is due before every other slot and the overflow.
        let list = match self.occupied.iter().position(|&bits| bits != 0) {
            Some(level) => level * SLOTS + self.occupied[level].trailing_zeros() as usize,
            None => OVERFLOW as usize,
        };
        let mut best = self.lists[list].head;
        let mut idx = best;
        while idx != NIL {
            let entry = &self.entries[idx as usize];
            if entry.deadline < self.entries[best as usize].deadline {
                best = idx;
            }
            idx = entry.next;
        }
        debug_assert!(best != NIL);
        best
    }
}

#[cfg(test)]
#[path = "wheel/tests.rs"]
mod tests;

#[cfg(test)]
#[path = "wheel/proptests.rs"]
mod proptests;
