//! The automatic fallback at the `Loop` level: where io_uring is refused (seccomp making its
//! system calls fail with ENOSYS or EPERM, as a container profile does), `Loop::new()` comes up
//! on epoll, says why, and works; a forced io_uring is an error that says so.
//!
//! A seccomp filter cannot be removed, so each filtered case runs in a child process: this test
//! binary re-executed with `--exact child_entry`, the role in `ROLE_ENV`.

mod common;
#[allow(dead_code)]
#[path = "../backends/tests/common/seccomp.rs"]
mod seccomp;

use std::cell::{Cell, RefCell};
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{pipe_nonblocking, read_fd, temp_path, write_fd};
use fdloop::{BackendChoice, BackendKind, Interest, Loop, Timer};
use seccomp::Scope;

const ROLE_ENV: &str = "FDLOOP_LOOP_FALLBACK_CHILD_ROLE";
const BACKEND_ENV: &str = "FDLOOP_BACKEND";
const CHILD_TEST: &str = "child_entry";

/// The bound on waits for things that should happen promptly (never asserted as a duration).
const LIMIT: Duration = Duration::from_secs(20);

fn errno_by_name(name: &str) -> i32 {
    match name {
        "ENOSYS" => libc::ENOSYS,
        "EPERM" => libc::EPERM,
        other => panic!("unknown errno {other}"),
    }
}

/// Runs `child_entry` in a fresh process with `role` (and `envs`); returns its stdout, or
/// `None` when the child skipped (unsupported architecture).
fn run_child(role: &str, envs: &[(&str, &OsStr)]) -> Option<String> {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        CHILD_TEST,
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(ROLE_ENV, role)
    .env_remove(BACKEND_ENV);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // `output()` ends by itself: every wait in the child is bounded by `LIMIT`.
    let out = cmd.output().expect("spawn the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child {role} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    if stdout.contains(&format!("CHILD-SKIP {role}")) {
        eprintln!("{role}: skipped in the child: {stdout}");
        return None;
    }
    assert!(
        stdout.contains(&format!("CHILD-DONE {role}")),
        "child {role} did not run its checks:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    print!("{stdout}");
    Some(stdout)
}

/// The entry point of child processes; does nothing in a normal run.
#[test]
#[ignore = "run in a child process by the other tests of this file"]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let (kind, arg) = role.split_once(':').unwrap_or((role.as_str(), ""));
    let done = match kind {
        "auto" => child_auto(errno_by_name(arg)),
        "forced-env-uring" => child_forced_env_uring(errno_by_name(arg)),
        "forced-env-epoll" => child_forced_env_epoll(errno_by_name(arg)),
        other => panic!("unknown child role {other}"),
    };
    if done {
        println!("CHILD-DONE {role}");
    } else {
        println!("CHILD-SKIP {role}: the seccomp filter supports x86_64 only");
    }
}

/// Makes the io_uring system calls fail with `errno` in every thread; `false` means "skip".
fn filter(errno: i32) -> bool {
    match seccomp::deny_io_uring(errno, Scope::AllThreads) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::Unsupported => false,
        Err(e) => panic!("installing the seccomp filter: {e}"),
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOSYS => "ENOSYS",
        libc::EPERM => "EPERM",
        _ => "?",
    }
}

/// Whether `reason` names `errno`: by name, by its text, or by number.
fn mentions(reason: &str, errno: i32) -> bool {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    reason.contains(errno_name(errno))
        || reason.contains(&text)
        || reason.contains(&format!("os error {errno}"))
}

/// Runs `lp` until `done()` holds (checked every millisecond) or `LIMIT` passes; returns
/// `done()`.
fn run_until(lp: &Loop, done: impl Fn() -> bool + 'static) -> bool {
    let done = Rc::new(done);
    let d = done.clone();
    let checker = lp.start_timer(Timer::every(Duration::from_millis(1)), move |lp, _| {
        if d() {
            lp.stop();
        }
    });
    if !done() {
        lp.run_for(LIMIT).unwrap();
    }
    let _ = lp.stop_timer(checker);
    done()
}

/// A timer, a watched pipe, a file read and a posted closure, all on `lp`.
fn loop_works(lp: &Loop) {
    // A timer.
    let timer = Rc::new(Cell::new(false));
    let t = timer.clone();
    lp.start_timer(Timer::after(Duration::from_millis(1)), move |_, _| {
        t.set(true)
    });

    // A pipe watched for readability.
    let (r, w) = pipe_nonblocking();
    write_fd(&w, b"through the pipe");
    let piped = Rc::new(Cell::new(false));
    let p = piped.clone();
    let rfd = r.as_raw_fd();
    lp.start_poll(rfd, Interest::READABLE, move |lp, ready| {
        assert!(ready.is_readable(), "{ready:?}");
        assert_eq!(read_fd(&r, 64), b"through the pipe");
        p.set(true);
        lp.detach(rfd).unwrap();
    })
    .unwrap();

    // A regular file read with read_at.
    let path = temp_path("fallback-read-at");
    let content = b"0123456789 file content";
    std::fs::write(&path, content).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let read: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
    let rd = read.clone();
    // `file` stays open until the end of this function, after the callback has run.
    lp.read_at(file.as_raw_fd(), vec![0; 64], 3, move |_, res, buf| {
        let n = res.expect("read_at");
        assert_eq!(n, buf.len());
        *rd.borrow_mut() = Some(buf);
    });

    // A closure posted from another thread.
    let posted = Arc::new(AtomicBool::new(false));
    let handle = lp.handle();
    let ps = posted.clone();
    let poster = std::thread::spawn(move || {
        handle
            .post(move |_| ps.store(true, Ordering::SeqCst))
            .unwrap();
    });

    let (t, p, rd, ps) = (timer.clone(), piped.clone(), read.clone(), posted.clone());
    let all = run_until(lp, move || {
        t.get() && p.get() && rd.borrow().is_some() && ps.load(Ordering::SeqCst)
    });
    poster.join().unwrap();
    let got = read.borrow_mut().take();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    assert!(
        all,
        "timer {}, pipe {}, read_at {}, posted {}",
        timer.get(),
        piped.get(),
        got.is_some(),
        posted.load(Ordering::SeqCst)
    );
    assert_eq!(got.unwrap(), &content[3..]);
}

fn child_auto(errno: i32) -> bool {
    if !filter(errno) {
        return false;
    }
    let lp = Loop::new().unwrap_or_else(|e| {
        panic!(
            "Loop::new() must fall back to epoll on {}: {e}",
            errno_name(errno)
        )
    });
    let info = lp.backend().clone();
    println!("Loop::new() under seccomp {}: {info}", errno_name(errno));
    assert_eq!(info.kind, BackendKind::Epoll, "no fallback: {info}");
    assert!(
        mentions(&info.reason, errno),
        "the reason does not name {}: {:?}",
        errno_name(errno),
        info.reason
    );
    loop_works(&lp);
    lp.close().unwrap();

    match Loop::builder().backend(BackendChoice::Uring).build() {
        Ok(lp) => panic!("a forced io_uring must fail here, got {}", lp.backend()),
        Err(e) => {
            println!("forced io_uring: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains("io_uring") && msg.contains("unavailable"),
                "the error does not say that io_uring is unavailable: {msg}"
            );
        }
    }
    true
}

fn child_forced_env_uring(errno: i32) -> bool {
    if !filter(errno) {
        return false;
    }
    assert_eq!(std::env::var(BACKEND_ENV).as_deref(), Ok("uring"));
    match Loop::new() {
        Ok(lp) => panic!(
            "{BACKEND_ENV}=uring must fail under the filter, got {}",
            lp.backend()
        ),
        Err(e) => {
            println!("{BACKEND_ENV}=uring: {e}");
            assert!(
                e.to_string().contains(BACKEND_ENV),
                "the error does not name {BACKEND_ENV}: {e}"
            );
        }
    }
    true
}

fn child_forced_env_epoll(errno: i32) -> bool {
    if !filter(errno) {
        return false;
    }
    let lp = Loop::new().expect("FDLOOP_BACKEND=epoll");
    println!("{BACKEND_ENV}=epoll: {}", lp.backend());
    assert_eq!(lp.backend().kind, BackendKind::Epoll);
    assert!(
        lp.backend().reason.contains(BACKEND_ENV),
        "the reason does not name {BACKEND_ENV}: {}",
        lp.backend()
    );
    loop_works(&lp);
    lp.close().unwrap();
    true
}

#[test]
fn enosys_loop_new_falls_back_to_epoll_and_works() {
    run_child("auto:ENOSYS", &[]);
}

#[test]
fn eperm_loop_new_falls_back_to_epoll_and_works() {
    run_child("auto:EPERM", &[]);
}

#[test]
fn eperm_forced_uring_by_env_is_an_error() {
    run_child(
        "forced-env-uring:EPERM",
        &[(BACKEND_ENV, OsStr::new("uring"))],
    );
}

#[test]
fn eperm_forced_epoll_by_env_works() {
    run_child(
        "forced-env-epoll:EPERM",
        &[(BACKEND_ENV, OsStr::new("epoll"))],
    );
}

#[test]
fn loop_works_on_the_default_backend_without_filter() {
    // The same checks without seccomp, on whatever `Loop::new()` picks here (which is what
    // FDLOOP_BACKEND says, if set), so that a failure above is clearly due to the fallback.
    let lp = Loop::new().unwrap();
    println!("Loop::new() here: {}", lp.backend());
    loop_works(&lp);
    lp.close().unwrap();
}
