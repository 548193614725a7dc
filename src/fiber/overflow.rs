//! Stack-overflow reports for fibers.
//!
//! Every fiber stack has a guard page at its low end (a guard region on Linux 6.13 and later, a
//! `PROT_NONE` page before: see `stack.rs`). A fiber that overflows its stack touches that page
//! and the kernel raises `SIGSEGV`. Rust's own handler
//! only knows thread stacks, so without help the process would die with a bare
//! "Segmentation fault". fdloop therefore:
//!
//! * keeps a process-wide registry of the guard pages of every fiber stack that is mapped
//!   (pooled stacks included), updated when a stack is mapped and before it is unmapped;
//! * installs, once per process and when the first fiber stack is mapped, a handler for
//!   `SIGSEGV` and `SIGBUS` (`sigaction` with `SA_SIGINFO | SA_ONSTACK`);
//! * makes sure every thread that builds a [`Loop`](crate::Loop) has an alternate signal stack
//!   (`sigaltstack`): the handler cannot run on the stack that just overflowed. Threads spawned
//!   by `std` usually have one already; otherwise fdloop maps one (64 KiB and a guard page) and
//!   unmaps it when the thread exits.
//!
//! When the faulting address lies in a fiber's guard page, the handler writes
//!
//! ```text
//! fdloop: a fiber overflowed its stack (guard page hit at 0x7f…); give it a larger stack with
//! fiber::Builder::stack_size or LoopBuilder::stack_size
//! ```
//!
//! (one line) to stderr and calls `abort()`: the process ends with `SIGABRT`, and a core dump
//! where core dumps are enabled. Unwinding is impossible at that point — the fiber has no stack
//! left to unwind on.
//!
//! Every other fault is passed on unchanged: the handler calls the action that was installed
//! before fdloop's (Rust's own handler, which reports thread-stack overflows, or any
//! function), or restores a default/ignore disposition and returns, so the faulting
//! instruction runs again and the process dies from the signal (`SIGSEGV`, `SIGBUS`) as it
//! would have without fdloop. A program that installs its own `SIGSEGV` handler after fdloop replaces this report
//! unless its handler chains to the previous one.
//!
//! Avoid overflows with a larger stack ([`crate::fiber::Builder::stack_size`],
//! [`crate::LoopBuilder::stack_size`]), or run deeply recursive code on a thread (see
//! [`unblock`](fn@crate::fiber::unblock)).
//!
//! The registry is a fixed array of atomic words (one per stack: the guard page's address with
//! its length in 4 KiB units in the low bits), read by the handler with atomic loads only.
//! It holds 262,144 stacks (2 MiB of address space, whose pages become resident only as slots
//! are used); stacks beyond that still work, only without the report.

use std::cell::Cell;
use std::cell::UnsafeCell;
use std::io;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use corosensei::stack::{DefaultStack, Stack, StackPointer};

use crate::fiber::stack;

/// Registry capacity (stacks).
const SLOTS: usize = 1 << 18;

/// The unit of a guard length in a registry word; guard pages are aligned to at least this,
/// so the low bits of their address are free to hold the length.
const UNIT: usize = 4096;

/// One word per registered stack: `guard_start | guard_len_in_units` (the length is in
/// `1..UNIT`); 0 marks a free slot.
static GUARDS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

/// Slots at or above this index have never been used; the handler scans below it.
static HIGH: AtomicUsize = AtomicUsize::new(0);

/// Free slots below `HIGH`. Writers (mapping or unmapping a stack, never the signal handler)
/// serialise on it.
static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// Registers the guard range `[start, start + len)`; returns its slot, or `None` when the
/// registry is full or the range cannot be encoded.
fn register(start: usize, len: usize) -> Option<usize> {
    let units = len.div_ceil(UNIT);
    if start == 0 || start % UNIT != 0 || units == 0 || units >= UNIT {
        return None;
    }
    let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
    let slot = match free.pop() {
        Some(slot) => slot,
        None => {
            let high = HIGH.load(Ordering::Relaxed);
            if high == SLOTS {
                return None;
            }
            high
        }
    };
    GUARDS[slot].store(start | units, Ordering::Release);
    if slot == HIGH.load(Ordering::Relaxed) {
        // Published after the slot's word, so a reader that sees the new bound sees the word.
        HIGH.store(slot + 1, Ordering::Release);
    }
    Some(slot)
}

/// Frees `slot`; called before the stack is unmapped, so the handler never matches an address
/// that has been reused for something else.
fn unregister(slot: usize) {
    let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
    GUARDS[slot].store(0, Ordering::Release);
    free.push(slot);
}

/// Whether `addr` lies in a registered guard range. Async-signal-safe: atomic loads only.
fn in_guard(addr: usize) -> bool {
    let high = HIGH.load(Ordering::Acquire).min(SLOTS);
    GUARDS[..high].iter().any(|slot| {
        let word = slot.load(Ordering::Acquire);
        let start = word & !(UNIT - 1);
        let len = (word & (UNIT - 1)) * UNIT;
        word != 0 && addr >= start && addr - start < len
    })
}

pub(super) fn page_size() -> usize {
    // SAFETY: (FFI) sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(UNIT).max(UNIT)
}

/// A fiber stack whose guard page is in the registry for as long as it is mapped.
pub(crate) struct GuardedStack {
    stack: DefaultStack,
    slot: Option<usize>,
}

impl GuardedStack {
    /// Maps a stack of at least `size` bytes (see [`stack::map`]) and registers its guard
    /// page; installs the fault handler on first use.
    pub(crate) fn new(size: usize) -> io::Result<GuardedStack> {
        install_handler();
        let page = page_size();
        let stack = stack::map(size, page)?;
        // The guard is the mapping's lowest page; `limit()` is the start of the mapping (the
        // trait's limit includes guard pages).
        let slot = register(stack.limit().get(), page);
        Ok(GuardedStack { stack, slot })
    }
}

impl Drop for GuardedStack {
    fn drop(&mut self) {
        // Runs before the field `stack` is dropped (and unmapped).
        if let Some(slot) = self.slot {
            unregister(slot);
        }
    }
}

// SAFETY: (FFI) every method forwards to `DefaultStack`, which upholds the trait's contract (a
// guard page and at least MIN_STACK_SIZE usable bytes); the wrapper changes nothing about the
// memory.
unsafe impl Stack for GuardedStack {
    #[inline]
    fn base(&self) -> StackPointer {
        self.stack.base()
    }

    #[inline]
    fn limit(&self) -> StackPointer {
        self.stack.limit()
    }
}

/// An action saved by `sigaction`, written once before the handler is installed and read by
/// the handler afterwards.
struct SavedAction {
    ready: AtomicBool,
    action: UnsafeCell<MaybeUninit<libc::sigaction>>,
}

// SAFETY: (FFI) `action` is written once, inside `INSTALL.call_once`, before `ready` is set with
// Release ordering; it is only read after `ready` has been seen true with Acquire ordering, and
// never written again.
unsafe impl Sync for SavedAction {}

impl SavedAction {
    const fn new() -> SavedAction {
        SavedAction {
            ready: AtomicBool::new(false),
            action: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// The saved action, once it has been saved. Async-signal-safe.
    fn get(&self) -> Option<&libc::sigaction> {
        if self.ready.load(Ordering::Acquire) {
            // SAFETY: (FFI) initialised before `ready` was set, and immutable since (see `Sync`).
            Some(unsafe { (*self.action.get()).assume_init_ref() })
        } else {
            None
        }
    }
}

static PREV_SEGV: SavedAction = SavedAction::new();
static PREV_BUS: SavedAction = SavedAction::new();
static INSTALL: Once = Once::new();

fn saved(sig: libc::c_int) -> Option<&'static libc::sigaction> {
    match sig {
        libc::SIGSEGV => PREV_SEGV.get(),
        libc::SIGBUS => PREV_BUS.get(),
        _ => None,
    }
}

/// Installs the `SIGSEGV`/`SIGBUS` handler, once per process. Failures leave the default
/// behaviour (no report) in place.
fn install_handler() {
    INSTALL.call_once(|| {
        for (sig, slot) in [(libc::SIGSEGV, &PREV_SEGV), (libc::SIGBUS, &PREV_BUS)] {
            let mut old = MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: (FFI) a null new action only queries; `old` is writable memory for one
            // sigaction.
            if unsafe { libc::sigaction(sig, ptr::null(), old.as_mut_ptr()) } != 0 {
                continue;
            }
            // SAFETY: (FFI) we are inside `call_once`: nobody else writes `slot.action`, and no
            // reader looks at it before `ready` is set below.
            unsafe { (*slot.action.get()).write(old.assume_init()) };
            slot.ready.store(true, Ordering::Release);

            // SAFETY: (FFI) all-zero is a valid sigaction (empty mask, no flags).
            let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
            new.sa_sigaction = on_fault as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            // SAFETY: (FFI) `new.sa_mask` is a live sigset_t.
            unsafe { libc::sigemptyset(&mut new.sa_mask) };
            // SAFETY: (FFI) `new` is a fully initialised sigaction whose handler has the SA_SIGINFO
            // signature; the old action is not needed (saved above).
            unsafe { libc::sigaction(sig, &new, ptr::null_mut()) };
        }
    });
}

/// The message, split around the address.
const MSG_HEAD: &[u8] = b"fdloop: a fiber overflowed its stack (guard page hit at 0x";
const MSG_TAIL: &[u8] = b"); give it a larger stack with fiber::Builder::stack_size or \
LoopBuilder::stack_size\n";

/// Writes all of `buf` to stderr with write(2). Async-signal-safe.
fn write_stderr(mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: (FFI) write(2) is async-signal-safe; `buf` is live for `buf.len()` bytes.
        let n = unsafe { libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), buf.len()) };
        if n > 0 {
            buf = &buf[n as usize..];
            continue;
        }
        // SAFETY: (FFI) errno is thread-local; reading it is async-signal-safe.
        let errno = unsafe { *libc::__errno_location() };
        if n == 0 || errno != libc::EINTR {
            return;
        }
    }
}

/// `addr` in lower-case hex, into `out`; returns the digits. Allocation-free.
fn hex(addr: usize, out: &mut [u8; 2 * size_of::<usize>()]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut i = out.len();
    let mut v = addr;
    loop {
        i -= 1;
        out[i] = DIGITS[v & 0xf];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    &out[i..]
}

extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: (FFI) errno is thread-local; reading and restoring it is async-signal-safe.
    let errno = unsafe { *libc::__errno_location() };
    let addr = if info.is_null() {
        0
    } else {
        // SAFETY: (FFI) the kernel passes a valid siginfo to an SA_SIGINFO handler; for SIGSEGV and
        // SIGBUS `si_addr` is the faulting address.
        unsafe { (*info).si_addr() as usize }
    };
    if addr != 0 && in_guard(addr) {
        let mut digits = [0u8; 2 * size_of::<usize>()];
        write_stderr(MSG_HEAD);
        write_stderr(hex(addr, &mut digits));
        write_stderr(MSG_TAIL);
        // SAFETY: (FFI) abort(3) is async-signal-safe; the fiber cannot continue without a stack.
        unsafe { libc::abort() };
    }
    chain(sig, info, ctx);
    // SAFETY: (FFI) errno is thread-local; restoring the value read on entry is async-signal-safe.
    unsafe { *libc::__errno_location() = errno };
}

/// Passes a fault that is not a fiber overflow on to the action installed before ours.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let Some(prev) = saved(sig) else {
        reset_default(sig);
        return;
    };
    let handler = prev.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Put the old disposition back and return: the faulting instruction runs again and
        // the kernel applies it (for a real fault, that kills the process with this signal).
        // SAFETY: (FFI) sigaction(2) is async-signal-safe; `prev` is a complete saved sigaction.
        if unsafe { libc::sigaction(sig, prev, ptr::null_mut()) } != 0 {
            reset_default(sig);
        }
    } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: (FFI) the previous owner installed this address with SA_SIGINFO, so it is a
        // function with this signature; we call it with the arguments the kernel gave us, as the
        // kernel would have.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute::<usize, _>(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: (FFI) without SA_SIGINFO the previous handler has the one-argument signature.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute::<usize, _>(handler) };
        f(sig);
    }
}

fn reset_default(sig: libc::c_int) {
    // SAFETY: (FFI) signal(2) with SIG_DFL is async-signal-safe (it is sigaction underneath).
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// Size of the alternate signal stacks fdloop maps (plus one guard page).
const ALT_STACK_SIZE: usize = 64 * 1024;

/// An alternate signal stack mapped by fdloop for this thread; unmapped at thread exit.
struct AltStack {
    map: *mut libc::c_void,
    len: usize,
    /// The usable part (above the guard page).
    sp: *mut libc::c_void,
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let mut cur = MaybeUninit::<libc::stack_t>::zeroed();
        // SAFETY: (FFI) a null new stack only queries; `cur` is writable memory for one stack_t.
        let queried = unsafe { libc::sigaltstack(ptr::null(), cur.as_mut_ptr()) } == 0;
        // SAFETY: (FFI) zero-initialised and possibly filled in by the kernel: a valid stack_t.
        let cur = unsafe { cur.assume_init() };
        if !queried || cur.ss_sp != self.sp {
            // Someone replaced it meanwhile; leaking the mapping is safer than unmapping a
            // stack that might still be installed.
            return;
        }
        let off = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: (FFI) disables this thread's alternate signal stack (ours); no handler runs on it
        // now, since we are running on the thread's normal stack.
        if unsafe { libc::sigaltstack(&off, ptr::null_mut()) } == 0 {
            // SAFETY: (FFI) `map`/`len` is the mapping created in `ensure_altstack`, no longer in
            // use.
            unsafe { libc::munmap(self.map, self.len) };
        }
    }
}

thread_local! {
    /// Whether this thread was checked, and the stack fdloop mapped for it, if any.
    static ALT_CHECKED: Cell<bool> = const { Cell::new(false) };
    static ALT_STACK: Cell<Option<AltStack>> = const { Cell::new(None) };
}

/// Makes sure the calling thread has an alternate signal stack, so that the overflow handler
/// can run when a fiber's stack is exhausted. Keeps an existing one (std gives its threads
/// one); maps one otherwise. Errors are ignored: without an alternate stack an overflow is a
/// plain `SIGSEGV`, as before.
pub(crate) fn ensure_altstack() {
    if ALT_CHECKED.try_with(|c| c.replace(true)).unwrap_or(true) {
        return;
    }
    let mut cur = MaybeUninit::<libc::stack_t>::zeroed();
    // SAFETY: (FFI) a null new stack only queries; `cur` is writable memory for one stack_t.
    if unsafe { libc::sigaltstack(ptr::null(), cur.as_mut_ptr()) } != 0 {
        return;
    }
    // SAFETY: (FFI) zero-initialised and filled in by the kernel: a valid stack_t.
    let cur = unsafe { cur.assume_init() };
    if cur.ss_flags & libc::SS_DISABLE == 0 {
        return;
    }
    let page = page_size();
    // SAFETY: (FFI) getauxval takes no pointers; it returns 0 for an unknown entry.
    let min = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
    let size = ALT_STACK_SIZE
        .max(min.saturating_mul(4))
        .next_multiple_of(page);
    let len = size + page;
    // SAFETY: (FFI) an anonymous private mapping at an address of the kernel's choosing.
    let map = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return;
    }
    // SAFETY: (FFI) the lowest page of the mapping we just created becomes the guard page.
    let guarded = unsafe { libc::mprotect(map, page, libc::PROT_NONE) } == 0;
    // SAFETY: (FFI) `page` is within the `len`-byte mapping.
    let sp = unsafe { map.cast::<u8>().add(page).cast::<libc::c_void>() };
    let new = libc::stack_t {
        ss_sp: sp,
        ss_flags: 0,
        ss_size: size,
    };
    // SAFETY: (FFI) `sp..sp + size` is readable and writable and stays mapped until the `AltStack`
    // below is dropped at thread exit, which disables it first.
    if !guarded || unsafe { libc::sigaltstack(&new, ptr::null_mut()) } != 0 {
        // SAFETY: (FFI) our own mapping, not installed anywhere.
        unsafe { libc::munmap(map, len) };
        return;
    }
    let alt = AltStack { map, len, sp };
    // If thread-local storage is already being torn down, the closure (and `alt` with it) is
    // dropped unused, which disables and unmaps the stack again: no leak, nothing dangling.
    let _ = ALT_STACK.try_with(|s| s.set(Some(alt)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_matches_only_registered_ranges() {
        let a = register(0x7000_0000_0000, 4096).unwrap();
        assert!(in_guard(0x7000_0000_0000));
        assert!(in_guard(0x7000_0000_0fff));
        assert!(!in_guard(0x7000_0000_1000));
        assert!(!in_guard(0x6fff_ffff_ffff));
        unregister(a);
        assert!(!in_guard(0x7000_0000_0000));
        assert!(register(0x1234, 4096).is_none());
    }

    #[test]
    fn hex_digits() {
        let mut buf = [0u8; 2 * size_of::<usize>()];
        assert_eq!(hex(0, &mut buf), b"0");
        assert_eq!(hex(0x7f12_ab00, &mut buf), b"7f12ab00");
        assert_eq!(hex(usize::MAX, &mut buf).len(), 2 * size_of::<usize>());
    }
}
