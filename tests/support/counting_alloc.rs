//! A counting global allocator for the allocation tests (`tests/alloc.rs`,
//! `tests/alloc_fiber.rs`): between [`start`] and [`stop`] it counts the allocations of the
//! calling thread and, separately, of every thread of the process. While a measurement is on,
//! the first few allocations of the measured thread print a backtrace (captured under a
//! re-entrancy guard), so that a failure says where it comes from.
//!
//! Declaring a global allocator makes the including test binary one of its own; its cases run
//! one after the other in a single `#[test]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Allocations during one measurement.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// On the calling (measured) thread.
    pub thread: u64,
    /// On every thread of the process, the measured one included.
    pub all: u64,
}

impl Counts {
    /// On the other threads.
    #[allow(dead_code)] // used by one of the two including binaries
    pub fn others(&self) -> u64 {
        self.all.saturating_sub(self.thread)
    }
}

/// Starts counting: the calling thread's allocations, and every thread's. `traces`: how many of
/// the calling thread's allocations print a backtrace.
pub fn start(traces: u32) {
    COUNT.with(|c| c.set(0));
    TRACES_LEFT.with(|t| t.set(traces));
    ALL_COUNT.store(0, Ordering::SeqCst);
    MEASURING.store(true, Ordering::SeqCst);
    TRACK.with(|t| t.set(true));
}

/// Stops counting and returns what was counted since [`start`].
pub fn stop() -> Counts {
    TRACK.with(|t| t.set(false));
    MEASURING.store(false, Ordering::SeqCst);
    Counts {
        thread: COUNT.with(|c| c.get()),
        all: ALL_COUNT.load(Ordering::SeqCst),
    }
}

/// The allocator: [`System`], plus the counts.
pub struct Counting;

#[global_allocator]
static GLOBAL: Counting = Counting;

thread_local! {
    /// Count this thread's allocations (between the two marks).
    static TRACK: Cell<bool> = const { Cell::new(false) };
    /// This thread's allocations while `TRACK` was on.
    static COUNT: Cell<u64> = const { Cell::new(0) };
    /// Backtraces still to print in the current measurement.
    static TRACES_LEFT: Cell<u32> = const { Cell::new(0) };
    /// Set while the allocator itself is allocating (a backtrace): not counted, no recursion.
    static IN_HOOK: Cell<bool> = const { Cell::new(false) };
}

/// A measurement is on: count every thread's allocations.
static MEASURING: AtomicBool = AtomicBool::new(false);
static ALL_COUNT: AtomicU64 = AtomicU64::new(0);

fn record(size: usize) {
    // `try_with`: const-initialised thread-locals without destructors are always accessible,
    // but a failure must never panic inside the allocator.
    if IN_HOOK.try_with(|h| h.get()).unwrap_or(true) {
        return;
    }
    if MEASURING.load(Ordering::Relaxed) {
        ALL_COUNT.fetch_add(1, Ordering::Relaxed);
    }
    if !TRACK.try_with(|t| t.get()).unwrap_or(false) {
        return;
    }
    let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    let print = TRACES_LEFT
        .try_with(|t| {
            let left = t.get();
            t.set(left.saturating_sub(1));
            left > 0
        })
        .unwrap_or(false);
    if print {
        let _ = IN_HOOK.try_with(|h| h.set(true));
        let bt = Backtrace::force_capture();
        eprintln!("allocation of {size} bytes on the measured thread:\n{bt}");
        let _ = IN_HOOK.try_with(|h| h.set(false));
    }
}

// SAFETY: (FFI) every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is `System`'s; `record` only touches thread-locals and atomics (and,
// guarded against re-entrance, captures and prints a backtrace, which allocates through this same
// allocator without being counted).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: (FFI) the caller of `alloc` passes a non-zero-sized layout, which is forwarded to
        // `System.alloc` unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: (FFI) the caller of `alloc_zeroed` passes a non-zero-sized layout, which is
        // forwarded to `System.alloc_zeroed` unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: (FFI) the caller of `realloc` passes a `ptr` that this allocator, that is
        // `System`, allocated with `layout`, and a valid `new_size`, forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: (FFI) the caller of `dealloc` passes a `ptr` that this allocator, that is
        // `System`, allocated with `layout`, forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}
