//! Choosing a driver: the automatic fallback to epoll where io_uring is filtered (seccomp), the
//! errors that must not be hidden, and `FDLOOP_BACKEND` parsing.
//!
//! A seccomp filter cannot be removed, so each filtered case runs in a child process: this test
//! binary re-executed with `--exact child_entry`, the role in `FDLOOP_TEST_CHILD_ROLE`.

mod common;

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use common::seccomp::{self, Scope};
use common::*;
use fdloop_backends::{BackendChoice, BackendKind, Config, Driver, Op, BACKEND_ENV};

const ROLE_ENV: &str = "FDLOOP_TEST_CHILD_ROLE";
const EXPECT_ENV: &str = "FDLOOP_TEST_CHILD_EXPECT";
const CHILD_TEST: &str = "child_entry";

const ERRNOS: &[(&str, i32)] = &[
    ("ENOSYS", libc::ENOSYS),
    ("EPERM", libc::EPERM),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("EACCES", libc::EACCES),
    ("EINVAL", libc::EINVAL),
    ("ENOMEM", libc::ENOMEM),
    ("EMFILE", libc::EMFILE),
];

fn errno_by_name(name: &str) -> i32 {
    ERRNOS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("unknown errno {name}"))
        .1
}

/// Runs `child_entry` in a fresh process with `role` (and `envs`); returns its stdout.
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
    .env_remove(BACKEND_ENV)
    .env_remove(EXPECT_ENV);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child {role} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    if stdout.contains(&format!("CHILD-SKIP {role}")) {
        eprintln!("{}: skipped in the child: {stdout}", test_name());
        return None;
    }
    assert!(
        stdout.contains(&format!("CHILD-DONE {role}")),
        "child {role} did not run its checks:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
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
        "unavailable" => child_unavailable(errno_by_name(arg), seccomp::IO_URING_ALL),
        "probe" => child_unavailable(errno_by_name(arg), seccomp::IO_URING_REGISTER),
        "resource" => child_resource(errno_by_name(arg)),
        "env" => {
            child_env();
            true
        }
        other => panic!("unknown child role {other}"),
    };
    if done {
        println!("CHILD-DONE {role}");
    } else {
        println!("CHILD-SKIP {role}: the seccomp filter supports x86_64 only");
    }
}

/// Installs the filter; `false` means "skip" (another architecture).
fn filter(errno: i32, which: &[libc::c_long]) -> bool {
    match seccomp::deny_syscalls(which, errno, Scope::AllThreads) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::Unsupported => false,
        Err(e) => panic!("installing the seccomp filter: {e}"),
    }
}

/// Whether `reason` mentions `errno` by name, by its text, or by number.
fn mentions(reason: &str, errno: i32) -> bool {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    reason.contains(errno_name(errno))
        || reason.contains(&text)
        || reason.contains(&format!("os error {errno}"))
}

fn pipe_round_trip(driver: Driver) {
    let (r, w) = pipe();
    let mut buf = [0u8; 16];
    let msg = b"round trip";
    let mut h = Harness::from_driver(driver);
    // SAFETY: (I2, I3) `buf`, `msg` and the pipe are declared before the harness, so they outlive
    // the read's final completion.
    let rt = unsafe {
        h.push(Op::Read {
            fd: r.as_raw_fd(),
            buf: buf.as_mut_ptr(),
            len: 16,
            offset: None,
        })
    };
    h.expect_quiet(rt, ms(20), "empty pipe");
    // SAFETY: (I2, I3) `buf`, `msg` and the pipe are declared before the harness, so they outlive
    // the write's final completion.
    let wt = unsafe {
        h.push(Op::Write {
            fd: w.as_raw_fd(),
            buf: msg.as_ptr(),
            len: msg.len() as u32,
            offset: None,
        })
    };
    h.run_until_all(&[rt, wt]);
    assert_count(h.fin(rt), msg.len(), "read");
    assert_count(h.fin(wt), msg.len(), "write");
    assert_eq!(&buf[..msg.len()], msg);
}

fn child_unavailable(errno: i32, which: &[libc::c_long]) -> bool {
    if !filter(errno, which) {
        return false;
    }
    if which.contains(&libc::SYS_io_uring_setup) {
        let e = kernel_io_uring().expect_err("io_uring_setup still works under the filter");
        assert_eq!(
            e.raw_os_error(),
            Some(errno),
            "the filter returns another errno"
        );
    }

    let d = Driver::new(&Config::default())
        .unwrap_or_else(|e| panic!("Auto must fall back to epoll on {}: {e}", errno_name(errno)));
    let info = d.info().clone();
    println!("Auto under seccomp {}: {info}", errno_name(errno));
    assert_eq!(
        info.kind,
        BackendKind::Epoll,
        "Auto did not fall back: {info}"
    );
    assert!(
        mentions(&info.reason, errno),
        "the reason does not mention {}: {:?}",
        errno_name(errno),
        info.reason
    );
    pipe_round_trip(d);

    let forced = Driver::new(&Config {
        backend: BackendChoice::Uring,
        ..Config::default()
    });
    match forced {
        Ok(d) => panic!("a forced Uring must fail here, got {:?}", d.info()),
        Err(e) => println!("forced Uring: {e}"),
    }
    true
}

fn child_resource(errno: i32) -> bool {
    if !filter(errno, seccomp::IO_URING_ALL) {
        return false;
    }
    match Driver::new(&Config::default()) {
        Ok(d) => panic!(
            "{} is a resource error: it must be reported, not hidden by a fallback ({})",
            errno_name(errno),
            d.info()
        ),
        Err(e) => println!("Auto under seccomp {}: {e}", errno_name(errno)),
    }
    true
}

fn child_env() {
    let expect = std::env::var(EXPECT_ENV).expect("expectation");
    let got = BackendChoice::from_env();
    println!(
        "{BACKEND_ENV}={:?} -> {got:?}",
        std::env::var_os(BACKEND_ENV)
    );
    match (expect.as_str(), got) {
        ("none", Ok(None)) => {}
        ("auto", Ok(Some(BackendChoice::Auto))) => {}
        ("uring", Ok(Some(BackendChoice::Uring))) => {}
        ("epoll", Ok(Some(BackendChoice::Epoll))) => {
            let d = Driver::new(&Config {
                backend: BackendChoice::Epoll,
                ..Config::default()
            })
            .expect("epoll driver");
            assert_eq!(d.kind(), BackendKind::Epoll);
        }
        ("error", Err(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            let msg = e.to_string();
            for v in ["auto", "uring", "epoll"] {
                assert!(msg.contains(v), "the error does not name {v}: {msg}");
            }
        }
        (want, got) => panic!("{BACKEND_ENV}: expected {want}, got {got:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Seccomp cases
// ---------------------------------------------------------------------------------------------

#[test]
fn seccomp_enosys_falls_back_to_epoll() {
    run_child("unavailable:ENOSYS", &[]);
}

#[test]
fn seccomp_eperm_falls_back_to_epoll() {
    run_child("unavailable:EPERM", &[]);
}

#[test]
fn seccomp_eopnotsupp_falls_back_to_epoll() {
    run_child("unavailable:EOPNOTSUPP", &[]);
}

#[test]
fn seccomp_eacces_falls_back_to_epoll() {
    run_child("unavailable:EACCES", &[]);
}

#[test]
fn seccomp_einval_falls_back_to_epoll() {
    run_child("unavailable:EINVAL", &[]);
}

#[test]
fn seccomp_probe_eperm_falls_back_to_epoll() {
    // The ring is created, but io_uring_register (the opcode probe) is refused.
    run_child("probe:EPERM", &[]);
}

#[test]
fn seccomp_enomem_is_reported() {
    run_child("resource:ENOMEM", &[]);
}

#[test]
fn seccomp_emfile_is_reported() {
    run_child("resource:EMFILE", &[]);
}

// ---------------------------------------------------------------------------------------------
// Without seccomp
// ---------------------------------------------------------------------------------------------

#[test]
fn auto_uses_io_uring_where_the_kernel_allows_it() {
    let d = Driver::new(&Config::default()).expect("Auto");
    println!("Auto here: {}", d.info());
    assert!(!d.info().reason.is_empty());
    match kernel_io_uring() {
        Ok(()) => assert_eq!(d.kind(), BackendKind::Uring, "{}", d.info()),
        Err(e) => {
            assert_eq!(d.kind(), BackendKind::Epoll, "{}", d.info());
            eprintln!("io_uring_setup fails here ({e}): only the fallback was checked");
        }
    }
    pipe_round_trip(d);
}

#[test]
fn forced_epoll_says_so() {
    let d = Driver::new(&Config {
        backend: BackendChoice::Epoll,
        ..Config::default()
    })
    .expect("epoll");
    assert_eq!(d.kind(), BackendKind::Epoll);
    assert!(!d.info().reason.is_empty());
}

#[test]
fn parse_rejects_unknown_names() {
    for bad in ["bogus", "kqueue", "uring2", "epoll,uring"] {
        let e = BackendChoice::parse(bad).expect_err(bad);
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}: {e}");
        let msg = e.to_string();
        for v in ["auto", "uring", "epoll"] {
            assert!(
                msg.contains(v),
                "the error for {bad:?} does not name {v}: {msg}"
            );
        }
    }
}

#[test]
fn parse_accepts_the_documented_spellings() {
    let cases = [
        ("auto", BackendChoice::Auto),
        ("", BackendChoice::Auto),
        ("AUTO", BackendChoice::Auto),
        ("uring", BackendChoice::Uring),
        ("io_uring", BackendChoice::Uring),
        ("Io_Uring", BackendChoice::Uring),
        ("epoll", BackendChoice::Epoll),
        (" EPOLL ", BackendChoice::Epoll),
    ];
    for (s, want) in cases {
        assert_eq!(BackendChoice::parse(s).unwrap(), want, "{s:?}");
    }
}

#[test]
fn from_env_reads_fdloop_backend() {
    let cases: [(Option<&[u8]>, &str); 6] = [
        (None, "none"),
        (Some(b"epoll"), "epoll"),
        (Some(b"URING"), "uring"),
        (Some(b"auto"), "auto"),
        (Some(b"bogus"), "error"),
        (Some(b"\xffepoll"), "error"),
    ];
    for (value, expect) in cases {
        let mut envs: Vec<(&str, &OsStr)> = vec![(EXPECT_ENV, OsStr::new(expect))];
        if let Some(v) = value {
            envs.push((BACKEND_ENV, OsStr::from_bytes(v)));
        }
        run_child("env", &envs);
    }
}
