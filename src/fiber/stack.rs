//! Fiber stacks: corosensei's `DefaultStack` (one private anonymous mapping, registered with
//! valgrind, whose lowest page is the guard page), with the guard turned into a guard region.
//!
//! `DefaultStack` maps its guard page `PROT_NONE`, which splits it off the stack: two mappings
//! per stack, so the kernel's limit on mappings per process (`vm.max_map_count`, 65,530 by
//! default) allows about 32,000 stacks. On Linux 6.13 and later, fdloop installs a guard region
//! on that page (`madvise(MADV_GUARD_INSTALL)`: any access raises `SIGSEGV`, as `PROT_NONE`
//! does) after making the page read-write like the rest, so the stack is one mapping again and
//! stacks mapped next to each other merge: the limit no longer bounds the number of fibers. The
//! page is unguarded only between those two calls, before anything runs on the stack; a stack
//! whose page cannot be guarded again is unmapped, never used.
//!
//! Where the kernel refuses a guard region (`EINVAL`: a kernel before 6.13, or a mapping locked
//! by `mlockall(MCL_FUTURE)`), the stack stays as `DefaultStack` made it, and the first refusal
//! stops later stacks of the process from trying.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use corosensei::stack::{DefaultStack, Stack};

/// `MADV_GUARD_INSTALL` from `<asm-generic/mman-common.h>` (Linux 6.13), which the libc crate
/// does not define yet.
const MADV_GUARD_INSTALL: libc::c_int = 102;

/// Whether guard regions are still worth trying: cleared by the first `EINVAL`.
static GUARD_REGIONS: AtomicBool = AtomicBool::new(true);

/// Whether new stacks get guard regions (one mapping each) rather than `PROT_NONE` guard pages
/// (two mappings each): true until the kernel has refused a guard region.
pub(crate) fn guard_regions() -> bool {
    GUARD_REGIONS.load(Ordering::Relaxed)
}

/// Maps a stack with at least `size` usable bytes (see [`DefaultStack::new`]) whose lowest
/// page, `page` bytes, is its guard: a guard region inside the stack's mapping where the kernel
/// has them, else a `PROT_NONE` mapping of its own.
///
/// # Errors
///
/// The OS error of mapping the stack (`ENOMEM`: out of memory or of mappings).
pub(crate) fn map(size: usize, page: usize) -> io::Result<DefaultStack> {
    let stack = DefaultStack::new(size)?;
    if guard_regions() {
        // On error, `stack` is dropped: unmapped, never used.
        merge_guard(&stack, page)?;
    }
    Ok(stack)
}

/// Makes `stack`'s `PROT_NONE` guard page read-write, so that it merges into the stack's
/// mapping, and installs a guard region on it; puts `PROT_NONE` back if the kernel refuses.
///
/// # Errors
///
/// When `PROT_NONE` cannot be put back (`ENOMEM`: splitting the mapping again would exceed
/// `vm.max_map_count`). The stack then has no guard and must not be used.
fn merge_guard(stack: &DefaultStack, page: usize) -> io::Result<()> {
    // `limit()` is the start of the mapping, where the guard page is (the trait's limit
    // includes guard pages).
    let at = stack.limit().get() as *mut libc::c_void;
    // SAFETY: (FFI) the guard page of this stack's own mapping. Nothing runs on the stack yet,
    // so nothing can touch the page while it is unguarded; the caller drops the stack unless
    // this returns with the page guarded (a guard region, or PROT_NONE again).
    if unsafe { libc::mprotect(at, page, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
        return Ok(()); // still PROT_NONE
    }
    // SAFETY: (FFI) the same page, in the stack's now single read-write mapping.
    if unsafe { libc::madvise(at, page, MADV_GUARD_INSTALL) } == 0 {
        return Ok(());
    }
    if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        GUARD_REGIONS.store(false, Ordering::Relaxed);
    }
    // SAFETY: (FFI) the same page, back to what `DefaultStack` made it.
    if unsafe { libc::mprotect(at, page, libc::PROT_NONE) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::ptr;

    use crate::fiber::overflow::page_size as page;

    /// The permissions (`rw-p`, `---p` …) of this process's mappings that overlap
    /// `[start, end)`, lowest first.
    fn mappings_in(start: usize, end: usize) -> Vec<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        maps.lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                let (a, b) = fields.next()?.split_once('-')?;
                let a = usize::from_str_radix(a, 16).ok()?;
                let b = usize::from_str_radix(b, 16).ok()?;
                (a < end && b > start).then(|| fields.next().unwrap_or("").to_string())
            })
            .collect()
    }

    #[test]
    fn merging_the_guard_makes_the_stack_one_mapping() {
        let page = page();
        let s = DefaultStack::new(16 * page).expect("map");
        let (lo, hi) = (s.limit().get(), s.base().get());
        // What `DefaultStack` makes, and what kernels without guard regions keep.
        assert_eq!(mappings_in(lo, lo + page), ["---p"]);
        assert_eq!(mappings_in(lo + page, hi), ["rw-p"]);
        merge_guard(&s, page).expect("guarded");
        let expected: &[&str] = if guard_regions() {
            &["rw-p"]
        } else {
            &["---p", "rw-p"]
        };
        assert_eq!(mappings_in(lo, hi), expected);
        // SAFETY: the usable part, [lo + page, hi), is ours and writable.
        unsafe { ptr::write_bytes((lo + page) as *mut u8, 0xa5, hi - lo - page) };
    }

    #[test]
    fn mapped_stacks_are_one_mapping_where_the_kernel_has_guard_regions() {
        let page = page();
        let s = map(16 * page, page).expect("map");
        let (lo, hi) = (s.limit().get(), s.base().get());
        let n = mappings_in(lo, hi).len();
        assert_eq!(n, if guard_regions() { 1 } else { 2 });
    }
}
