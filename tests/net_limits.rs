//! Process-wide conditions for fdloop::net, each in a child process (this test binary run again
//! with `FDLOOP_NET_LIMITS_CHILD` set), one after the other:
//!
//! * `EMFILE` on accept: the child lowers `RLIMIT_NOFILE`, uses up its fds, sees `accept` fail
//!   with `EMFILE`, frees a few fds and shows that the listener serves again;
//! * no `SIGPIPE`: with `SIGPIPE` back at its default action (which kills the process), writes
//!   to closed TCP and Unix connections fail with `BrokenPipe` — and a control child shows that
//!   a plain `send(2)` without `MSG_NOSIGNAL` would have been killed.
//!
//! The parent prints each child's result and asserts on it.

mod common;

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

use fdloop::net::{Shutdown, TcpListener, TcpStream, UnixStream};
use fdloop::{fiber, BackendChoice, Loop};

const CHILD_ENV: &str = "FDLOOP_NET_LIMITS_CHILD";

#[test]
fn limits() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child(&mode);
        return;
    }
    for mode in [
        "emfile:uring",
        "emfile:epoll",
        "sigpipe:uring",
        "sigpipe:epoll",
        "sigpipe-control:epoll",
    ] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["limits", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mode)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let result = stdout
            .lines()
            .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
            .unwrap_or("");
        println!("{mode}: {} — {result}", out.status);
        if mode.starts_with("sigpipe-control") {
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGPIPE),
                "the control child should have been killed by SIGPIPE\n{stdout}\n{stderr}"
            );
            continue;
        }
        assert!(
            out.status.success(),
            "child {mode} failed: {}\n{stdout}\n{stderr}",
            out.status
        );
        if result.starts_with("skipped") {
            continue;
        }
        match mode.split(':').next().unwrap() {
            "emfile" => assert_eq!(
                result,
                "accept=EMFILE listener-kept-working=yes fresh-connection=yes"
            ),
            _ => assert_eq!(
                result,
                "tcp=BrokenPipe tcp-vectored=BrokenPipe unix=BrokenPipe unix-fds=BrokenPipe"
            ),
        }
    }
}

fn child(mode: &str) {
    let (what, backend) = mode.split_once(':').unwrap();
    let choice = match backend {
        "uring" => BackendChoice::Uring,
        _ => BackendChoice::Epoll,
    };
    let Some(lp) = common::new_loop(choice) else {
        println!("RESULT skipped: io_uring is unavailable here");
        return;
    };
    let result = match what {
        "emfile" => emfile(&lp),
        "sigpipe" => no_sigpipe(&lp),
        _ => sigpipe_control(),
    };
    println!("RESULT {result}");
}

/// The highest open fd number.
fn highest_fd() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .max()
        .unwrap()
}

fn set_fd_limit(soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: (FFI) `lim` is a live rlimit for the kernel to fill.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = soft.min(lim.rlim_max);
    // SAFETY: (FFI) `lim` is a valid rlimit; lowering the soft limit is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

fn emfile(lp: &Loop) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = lp.spawn(move || {
        // A client whose connection waits in the listener's queue.
        let mut client = TcpStream::connect(addr).unwrap();
        // Leave a few fds, then use them all up.
        set_fd_limit(highest_fd() as u64 + 1 + 8);
        let mut hogs: Vec<OwnedFd> = Vec::new();
        loop {
            match client.as_fd().try_clone_to_owned() {
                Ok(fd) => hogs.push(fd),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                    break;
                }
            }
        }
        let err = listener.accept().unwrap_err();
        let first = if err.raw_os_error() == Some(libc::EMFILE) {
            "EMFILE".to_string()
        } else {
            format!("{err}")
        };
        // Free some fds: the queued connection is served.
        hogs.truncate(hogs.len().saturating_sub(4));
        let (mut conn, _) = listener.accept().unwrap();
        client.write_all(b"served").unwrap();
        let mut buf = [0u8; 6];
        conn.read_exact(&mut buf).unwrap();
        let kept = if &buf == b"served" { "yes" } else { "no" };
        // And a new connection too.
        let c2 = fiber::spawn(move || TcpStream::connect(addr).unwrap());
        let (conn2, _) = listener.accept().unwrap();
        let c2 = c2.join().unwrap();
        let fresh = if conn2.peer_addr().unwrap() == c2.local_addr().unwrap() {
            "yes"
        } else {
            "no"
        };
        drop(hogs);
        format!("accept={first} listener-kept-working={kept} fresh-connection={fresh}")
    });
    lp.run().unwrap();
    h.join().unwrap()
}

fn kind_of<T>(r: io::Result<T>) -> String {
    match r {
        Ok(_) => "Ok".into(),
        Err(e) => format!("{:?}", e.kind()),
    }
}

fn no_sigpipe(lp: &Loop) -> String {
    // SAFETY: (FFI) the default action for SIGPIPE, in this child process only: a write that raised
    // SIGPIPE would now kill it, and the parent would see that.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = lp.spawn(move || {
        let srv = fiber::spawn(move || drop(listener.accept().unwrap()));
        let mut client = TcpStream::connect(addr).unwrap();
        srv.join().unwrap();
        // The peer is gone: a reset first, then EPIPE.
        let tcp = loop {
            match client.write(&[1u8; 512]) {
                Ok(n) => {
                    assert!(n > 0);
                    fiber::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                Err(e) => break Err::<(), _>(e),
            }
        };
        let tcp_v = client.write_vectored(&[IoSlice::new(b"a"), IoSlice::new(b"b")]);
        let (mut a, b) = UnixStream::pair().unwrap();
        drop(b);
        let unix = a.write(b"x");
        let (p, _q) = UnixStream::pair().unwrap();
        let unix_fds = a.send_with_fds(b"x", &[p.as_fd()]);
        a.shutdown(Shutdown::Both).unwrap();
        format!(
            "tcp={} tcp-vectored={} unix={} unix-fds={}",
            kind_of(tcp),
            kind_of(tcp_v),
            kind_of(unix),
            kind_of(unix_fds)
        )
    });
    lp.run().unwrap();
    h.join().unwrap()
}

/// A plain `send(2)` without `MSG_NOSIGNAL` to a closed peer, with SIGPIPE at its default
/// action: the process dies, which is what the parent expects to see.
fn sigpipe_control() -> String {
    // SAFETY: (FFI) signal(2) takes no pointers; it restores the default action for SIGPIPE in this
    // child process only, so a write that raised SIGPIPE would kill it, which is what the parent
    // checks.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(b);
    // SAFETY: (FFI) a live one-byte buffer and an open socket.
    let r = unsafe { libc::send(a.as_raw_fd(), b"x".as_ptr().cast(), 1, 0) };
    format!("survived a plain send to a closed peer: {r}")
}
