//! The server examples, run as child processes: `echo` (both styles) and `http` (with the
//! `http_client` example and with a raw socket), each on both backends, stopped by a signal.
//!
//! `cargo test` builds the examples into `target/<profile>/examples/`; a test run that did not
//! (`cargo test --test examples`) builds the missing ones with `cargo build --example`. Every
//! wait is bounded, and a child still running when a test fails is killed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use fdloop::{BackendChoice, Loop};

/// The bound on every wait for a child (start-up, an answer, the exit after a signal).
const LIMIT: Duration = Duration::from_secs(30);
/// The bound on building a missing example.
const BUILD_LIMIT: Duration = Duration::from_secs(900);

/// The backends to run on: io_uring only where it works here.
fn backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    match Loop::builder().backend(BackendChoice::Uring).build() {
        Ok(_) => v.push("uring"),
        Err(e) => eprintln!("skipped on io_uring: unavailable here: {e}"),
    }
    v.push("epoll");
    v
}

/// Examples are built one at a time (two cargo processes would wait for each other's lock).
static BUILD: Mutex<()> = Mutex::new(());

/// The path of example `name`, built first if it is missing.
fn example(name: &str) -> PathBuf {
    // …/target/<profile>/deps/examples-<hash> → …/target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        build_example(name, profile_dir.file_name().and_then(|p| p.to_str()));
        assert!(
            path.exists(),
            "{} is missing after building it",
            path.display()
        );
    }
    path
}

fn build_example(name: &str, profile: Option<&str>) {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("building example {name}: {cmd:?}");
    let mut child = Running::spawn(&mut cmd);
    let status = child.wait(BUILD_LIMIT);
    assert!(status.success(), "building example {name} failed: {status}");
}

/// A child process that is killed (and reaped) if it is still running when this is dropped.
struct Running(Child);

impl Running {
    fn spawn(cmd: &mut Command) -> Running {
        Running(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        )
    }

    /// Waits for the child to exit, at most `limit`; panics (and kills it) beyond.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child {} still running after {limit:?}",
                self.0.id()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.0.id()).expect("pid fits pid_t");
        // SAFETY: (FFI) kill(2) takes no pointers; `pid` is our own child, not yet reaped (we own
        // its `Child` and have not waited for it), so the number cannot name another process.
        let r = unsafe { libc::kill(pid, signal) };
        assert_eq!(r, 0, "kill: {}", io::Error::last_os_error());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts a server example and reads its `READY <addr> <backend>` line.
fn start_server(name: &str, args: &[&str]) -> (Running, SocketAddr, String) {
    let mut child = Running::spawn(
        Command::new(example(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    // Read the line on a thread of its own, so that the wait is bounded.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let line = match rx.recv_timeout(LIMIT) {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => panic!("{name}: reading its stdout: {e}"),
        Err(_) => panic!("{name} {args:?}: no READY line within {LIMIT:?}"),
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(
        words.len() == 3 && words[0] == "READY",
        "{name}: unexpected first line {line:?}"
    );
    let addr: SocketAddr = words[1].parse().expect("READY gives an address");
    assert_ne!(addr.port(), 0, "READY gives the bound port");
    (child, addr, words[2].to_string())
}

/// The backend name the READY line shows for a `--backend` value.
fn shown(backend: &str) -> &'static str {
    match backend {
        "uring" => "io_uring",
        _ => "epoll",
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, LIMIT).expect("connect");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
    s
}

fn echo_round_trips(addr: SocketAddr) {
    // Two clients at once, messages from one byte to larger than one buffer.
    let mut a = connect(addr);
    let mut b = connect(addr);
    for (i, len) in [1usize, 5, 100, 4096, 10_000, 100_000]
        .into_iter()
        .enumerate()
    {
        for (c, s) in [&mut a, &mut b].into_iter().enumerate() {
            let msg: Vec<u8> = (0..len).map(|j| (i * 7 + j + c) as u8).collect();
            s.write_all(&msg).unwrap();
            let mut got = vec![0u8; len];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, msg, "echoed bytes differ (message {i}, client {c})");
        }
    }
    // End of stream from the client: the server closes its side too.
    a.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn echo_serves_and_exits_on_sigterm() {
    for backend in backends() {
        for style in ["fiber", "callback"] {
            for threads in ["1", "2"] {
                let args = [
                    "--style",
                    style,
                    "--backend",
                    backend,
                    "--addr",
                    "127.0.0.1:0",
                    "--threads",
                    threads,
                ];
                let (mut server, addr, shown_backend) = start_server("echo", &args);
                assert_eq!(shown_backend, shown(backend));
                echo_round_trips(addr);
                // A client still connected when the signal comes does not hold the exit up.
                let _idle = connect(addr);
                server.signal(libc::SIGTERM);
                let status = server.wait(LIMIT);
                assert!(status.success(), "echo {args:?} exited with {status}");
            }
        }
    }
}

/// Reads one response (head and `Content-Length` body) from `r`.
fn read_response(r: &mut impl BufRead) -> (String, Vec<String>, Vec<u8>) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().unwrap();
            }
        }
        headers.push(line);
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (status.trim_end().to_string(), headers, body)
}

#[test]
fn http_serves_keep_alive_and_pipelining_and_exits_on_sigint() {
    let client = example("http_client");
    for backend in backends() {
        let (mut server, addr, shown_backend) =
            start_server("http", &["--backend", backend, "--addr", "127.0.0.1:0"]);
        assert_eq!(shown_backend, shown(backend));

        // The client example, on the same backend.
        let mut fetch = Running::spawn(
            Command::new(&client)
                .args(["--backend", backend, "--timeout", "30"])
                .arg(format!("http://{addr}/"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped()),
        );
        let mut out = fetch.0.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut s = String::new();
            let _ = tx.send(out.read_to_string(&mut s).map(|_| s));
        });
        let status = fetch.wait(LIMIT);
        let printed = rx.recv_timeout(LIMIT).expect("client output").unwrap();
        assert!(status.success(), "http_client exited with {status}");
        assert_eq!(printed, "HTTP/1.1 200 OK\nhello from fdloop\n");

        // Two requests pipelined in one write, on one keep-alive connection, then a third that
        // asks to close; one request is cut across two writes.
        let mut s = connect(addr);
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: test\r\n\r\nGET /missing HTTP/1.1\r\nHost: test\r\n\r\n",
        )
        .unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let (status, _, body) = read_response(&mut r);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, b"hello from fdloop\n");
        let (status, _, _) = read_response(&mut r);
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        s.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
        s.flush().unwrap();
        thread::sleep(Duration::from_millis(20)); // lets the first part arrive alone
        s.write_all(b"st: test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (status, headers, body) = read_response(&mut r);
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, b"hello from fdloop\n");
        assert!(headers.iter().any(|h| h == "Connection: close"));
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the server closes after Connection: close");

        // HTTP/1.0 closes by default.
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let all = String::from_utf8(all).unwrap();
        assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all:?}");
        assert!(all.ends_with("\r\n\r\nhello from fdloop\n"), "{all:?}");

        let _idle = connect(addr);
        server.signal(libc::SIGINT);
        let status = server.wait(LIMIT);
        assert!(status.success(), "http exited with {status}");
    }
}
