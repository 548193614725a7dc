//! Fiber stacks and the kernel's limit on memory mappings per process (`vm.max_map_count`).
//!
//! On Linux 6.13 and later a fiber stack's guard page is a guard region, so a stack is one
//! mapping and neighbouring stacks merge: many more fibers than half the limit can be parked
//! at once. On older kernels the guard is a `PROT_NONE` mapping of its own, and these tests
//! check only what holds there.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Mutex;

use fdloop::sync::Notify;
use fdloop::{fiber, Loop};

/// The tests count the process's mappings: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Whether the kernel installs guard regions (`MADV_GUARD_INSTALL`, Linux 6.13).
fn kernel_has_guard_regions() -> bool {
    // SAFETY: (FFI) a fresh two-page anonymous mapping, advised and unmapped here only.
    unsafe {
        let len = 8192;
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(map, libc::MAP_FAILED, "mmap");
        let ok = libc::madvise(map, 4096, 102) == 0;
        libc::munmap(map, len);
        ok
    }
}

fn max_map_count() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .expect("read vm.max_map_count")
        .trim()
        .parse()
        .expect("a number")
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("read /proc/self/maps")
        .lines()
        .count()
}

/// Parks `n` fibers with 16 KiB stacks on one `Notify`; once all are parked, returns what
/// `measure` returns, then wakes them and runs the loop until they have finished.
fn with_parked_fibers<T: 'static>(lp: &Loop, n: usize, measure: impl FnOnce() -> T + 'static) -> T {
    let park = Rc::new(Notify::new());
    let parked = Rc::new(Cell::new(0));
    for _ in 0..n {
        let (park, parked) = (park.clone(), parked.clone());
        fiber::Builder::new()
            .stack_size(16 * 1024)
            .spawn_on(lp, move || {
                parked.set(parked.get() + 1);
                park.notified().expect("woken");
            })
            .expect("spawn a fiber");
    }
    let measured = lp.spawn(move || {
        while parked.get() < n {
            fiber::yield_now();
        }
        let m = measure();
        park.notify_waiters();
        m
    });
    lp.run().expect("run");
    measured.join().expect("the measuring fiber")
}

backend_tests! {
    fn many_parked_fibers_do_not_take_a_mapping_each(lp: &Loop) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let n = 4_000;
        let before = mappings();
        let grown = with_parked_fibers(lp, n, mappings).saturating_sub(before);
        if kernel_has_guard_regions() {
            assert!(grown < n / 4, "{n} parked fibers added {grown} mappings");
        } else {
            assert!(grown <= 2 * n + 64, "{n} parked fibers added {grown} mappings");
        }
    }

    fn more_fibers_than_half_the_mapping_limit(lp: &Loop) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let limit = max_map_count();
        if !kernel_has_guard_regions() || limit > 200_000 {
            eprintln!(
                "skipped: needs guard regions (Linux 6.13) and vm.max_map_count at most \
                 200,000 (it is {limit})"
            );
            return;
        }
        // Two mappings per stack would stop at about limit / 2.
        let n = limit / 2 + 2_000;
        let maps = with_parked_fibers(lp, n, mappings);
        assert!(maps < limit / 4, "{n} parked fibers: {maps} mappings");
    }
}
