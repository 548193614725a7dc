//! A fiber that overflows its stack is reported on stderr and aborts the process; any other
//! fault still kills the process with `SIGSEGV` (fdloop's handler passes it on).
//!
//! Each case runs in a child process: this test binary, re-run with `FDLOOP_OVERFLOW_CHILD`
//! naming the case and `FDLOOP_BACKEND` naming the backend.

use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use fdloop::{fiber, Loop};

const CASE_ENV: &str = "FDLOOP_OVERFLOW_CHILD";
/// Exit code of a child whose forced backend is unavailable here.
const UNAVAILABLE: i32 = 77;
const MESSAGE: &str = "fdloop: a fiber overflowed its stack (guard page hit at 0x";
const HINT: &str = "give it a larger stack with fiber::Builder::stack_size or \
                    LoopBuilder::stack_size";

/// Recursion that cannot be turned into a loop: each frame keeps a buffer alive across the
/// recursive call.
fn recurse(depth: u64) -> u64 {
    let buf = black_box([depth as u8; 128]);
    if depth == 0 {
        return u64::from(buf[0]);
    }
    black_box(recurse(black_box(depth - 1))) + u64::from(buf[127])
}

fn segv_action() -> usize {
    let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: (FFI) a null new action only queries; `old` is writable memory for one sigaction.
    let r = unsafe { libc::sigaction(libc::SIGSEGV, std::ptr::null(), old.as_mut_ptr()) };
    assert_eq!(r, 0);
    // SAFETY: (FFI) zero-initialised and filled in by the kernel.
    unsafe { old.assume_init() }.sa_sigaction
}

/// Reads from an address in the never-mapped first page (a null-pointer dereference; the
/// address is not 0 only so that debug assertions do not turn it into a panic first).
fn null_read() -> u8 {
    let p = black_box(16usize) as *const u8;
    // SAFETY: (FFI) deliberately invalid: the read faults, and the fault is what this test is
    // about.
    unsafe { std::ptr::read_volatile(p) }
}

/// The child side; does nothing in a normal test run.
#[test]
fn child() {
    let Ok(case) = std::env::var(CASE_ENV) else {
        return;
    };
    // No core dumps from the crashes below.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: (FFI) `no_core` is a valid rlimit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };

    if case == "fiber-own-altstack" {
        // Take away the alternate signal stack std gave this thread: building the loop must
        // provide one.
        let off = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: (FFI) disabling the alternate stack of this thread; nothing runs on it now.
        assert_eq!(unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) }, 0);
    }
    let before = segv_action();
    let lp = match Loop::new() {
        Ok(lp) => lp,
        Err(e) => {
            eprintln!("backend unavailable: {e}");
            std::process::exit(UNAVAILABLE);
        }
    };
    eprintln!("child: {case} on {}", lp.backend().kind.short_name());
    match case.as_str() {
        "fiber" | "fiber-own-altstack" => {
            let h = fiber::Builder::new()
                .stack_size(16 * 1024)
                .spawn_on(&lp, || recurse(black_box(u64::MAX)))
                .unwrap();
            let _ = lp.run();
            eprintln!("child: the fiber returned {:?}", h.join().map_err(drop));
            std::process::exit(3);
        }
        "null" | "null-in-fiber" => {
            // A fiber stack, so that fdloop's handler is installed.
            let h = lp.spawn(|| 1);
            lp.run().unwrap();
            assert_eq!(h.join().unwrap(), 1);
            let after = segv_action();
            assert_ne!(before, after, "fdloop did not install its SIGSEGV handler");
            eprintln!("child: fdloop's handler is installed");
            let v = if case == "null" {
                null_read()
            } else {
                let h = lp.spawn(null_read);
                let _ = lp.run();
                h.join().unwrap_or(0)
            };
            eprintln!("child: the read returned {v}");
            std::process::exit(3);
        }
        other => panic!("unknown case {other}"),
    }
}

/// Runs the child for `case` on `backend`; `None` when the backend is unavailable here.
fn run_child(case: &str, backend: &str) -> Option<Output> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CASE_ENV, case)
        .env("FDLOOP_BACKEND", backend)
        .output()
        .unwrap();
    if out.status.code() == Some(UNAVAILABLE) {
        eprintln!(
            "skipped on {backend}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(out)
}

fn check_overflow(case: &str, backend: &str) {
    let Some(out) = run_child(case, backend) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "expected SIGABRT, got {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains(MESSAGE), "stderr:\n{stderr}");
    assert!(stderr.contains(HINT), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("on {backend}")),
        "stderr:\n{stderr}"
    );
}

fn check_plain_segv(case: &str, backend: &str) {
    let Some(out) = run_child(case, backend) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "expected SIGSEGV, got {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        stderr.contains("fdloop's handler is installed"),
        "stderr:\n{stderr}"
    );
    assert!(!stderr.contains(MESSAGE), "stderr:\n{stderr}");
}

macro_rules! both_backends {
    ($($name:ident => $check:ident($case:literal);)*) => {$(
        mod $name {
            #[test]
            fn uring() {
                super::$check($case, "uring");
            }
            #[test]
            fn epoll() {
                super::$check($case, "epoll");
            }
        }
    )*};
}

both_backends! {
    fiber_overflow_is_reported => check_overflow("fiber");
    fiber_overflow_is_reported_on_an_altstack_fdloop_maps => check_overflow("fiber-own-altstack");
    null_read_outside_fibers_still_segfaults => check_plain_segv("null");
    null_read_inside_a_fiber_still_segfaults => check_plain_segv("null-in-fiber");
}
