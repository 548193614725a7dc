//! A TCP echo server, written with fibers or with callbacks, on one loop or one loop per thread.
//!
//! ```sh
//! cargo run --release --example echo -- [--style fiber|callback] [--backend auto|uring|epoll]
//!                                       [--addr 127.0.0.1:7000] [--threads N]
//! nc 127.0.0.1 7000
//! ```
//!
//! Once it listens it prints one line, `READY <address> <backend>` (the bound address, so
//! `--addr 127.0.0.1:0` shows the port the kernel chose; the backend is `io_uring` or `epoll`),
//! then serves until SIGINT or SIGTERM and exits with status 0.
//!
//! * `--style fiber` (the default): one fiber per connection, straight-line `read` then
//!   `write_all` on a buffer on the fiber's own stack.
//! * `--style callback`: `Loop::accept`, then `recv` and `send` with an owned buffer that goes
//!   from one operation to the next, one buffer per connection for its whole life.
//! * `--backend auto` (the default) lets `FDLOOP_BACKEND` decide, else io_uring where it works.
//! * `--threads N` (default 1) runs N loops on N threads (`fdloop::loops::Loops`), each with its
//!   own listening socket on the same address (`SO_REUSEPORT`): the kernel spreads the
//!   connections. The main thread then only waits for the signals on a loop of its own.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use fdloop::loops::Loops;
use fdloop::net::{TcpListener, TcpStream};
use fdloop::{fiber, BackendChoice, BackendKind, Loop, LoopBuilder, Signal, Timer};

const USAGE: &str = "usage: echo [--style fiber|callback] [--backend auto|uring|epoll] \
                     [--addr HOST:PORT] [--threads N]";

/// The size of a connection's buffer.
const BUF: usize = 4096;

/// How long to wait before accepting again after an error such as `EMFILE` (out of fds), which
/// would repeat at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Fiber,
    Callback,
}

struct Args {
    style: Style,
    /// `None`: automatic (honours `FDLOOP_BACKEND`).
    backend: Option<BackendChoice>,
    addr: SocketAddr,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        style: Style::Fiber,
        backend: None,
        addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--style" => {
                args.style = match value.as_str() {
                    "fiber" => Style::Fiber,
                    "callback" => Style::Callback,
                    _ => return Err(format!("unknown style {value:?}")),
                }
            }
            "--backend" => args.backend = parse_backend(&value)?,
            "--addr" => {
                args.addr = value
                    .to_socket_addrs()
                    .map_err(|e| format!("--addr {value}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("--addr {value}: no address"))?;
            }
            "--threads" => {
                args.threads = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--threads {value}: not a positive number"))?;
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn parse_backend(value: &str) -> Result<Option<BackendChoice>, String> {
    match value {
        "auto" => Ok(None),
        "uring" | "io_uring" => Ok(Some(BackendChoice::Uring)),
        "epoll" => Ok(Some(BackendChoice::Epoll)),
        _ => Err(format!("unknown backend {value:?}")),
    }
}

fn loop_builder(args: &Args) -> LoopBuilder {
    match args.backend {
        Some(choice) => Loop::builder().backend(choice),
        None => Loop::builder(),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("echo: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let served = if args.threads == 1 {
        serve_on_one_loop(&args)
    } else {
        serve_on_loops(&args)
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Stops `lp` on SIGINT and SIGTERM.
fn stop_on_signals(lp: &Loop) -> io::Result<()> {
    for signal in [Signal::INT, Signal::TERM] {
        lp.start_signal(signal, |lp, _| lp.stop())?;
    }
    Ok(())
}

/// The one line that says the server listens.
fn ready(addr: SocketAddr, backend: BackendKind) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "READY {addr} {backend}")?;
    out.flush()
}

fn serve_on_one_loop(args: &Args) -> io::Result<()> {
    let lp = loop_builder(args).build()?;
    let addr = match args.style {
        Style::Fiber => {
            let listener = TcpListener::bind(args.addr)?;
            let addr = listener.local_addr()?;
            lp.spawn(move || accept_fibers(listener));
            addr
        }
        Style::Callback => {
            let listener = std::net::TcpListener::bind(args.addr)?;
            listener.set_nonblocking(true)?;
            let addr = listener.local_addr()?;
            accept_callbacks(&lp, Rc::new(listener));
            addr
        }
    };
    stop_on_signals(&lp)?;
    ready(addr, lp.backend().kind)?;
    lp.run()?;
    // Unwinds the connection fibers (or drops the callbacks), which closes the connections.
    lp.close()
}

fn serve_on_loops(args: &Args) -> io::Result<()> {
    // Every listener is bound here, before any loop starts, so that a port chosen by the
    // kernel for the first one is shared by the others.
    let first = TcpListener::bind_reuseport(args.addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![Some(first)];
    for _ in 1..args.threads {
        listeners.push(Some(TcpListener::bind_reuseport(addr)?));
    }
    let listeners = Mutex::new(listeners);
    let (tx, rx) = mpsc::channel();
    let style = args.style;
    let loops = Loops::builder()
        .threads(args.threads)
        .name("echo")
        .loop_builder(loop_builder(args))
        .start(move |lp, index| {
            let _ = tx.send(lp.backend().kind);
            let listener = listeners.lock().unwrap_or_else(|e| e.into_inner())[index]
                .take()
                .expect("one listener per loop");
            match style {
                Style::Fiber => {
                    lp.spawn(move || accept_fibers(listener));
                }
                Style::Callback => {
                    let listener = std::net::TcpListener::from(OwnedFd::from(listener));
                    accept_callbacks(lp, Rc::new(listener));
                }
            }
        })?;
    let backend = rx
        .recv()
        .map_err(|_| io::Error::other("no loop thread started"))?;

    // The main thread waits for the signals on a loop of its own.
    let control = loop_builder(args).build()?;
    stop_on_signals(&control)?;
    ready(addr, backend)?;
    control.run()?;
    loops.stop_all();
    loops.join()
}

// --- fibers ------------------------------------------------------------------------------

/// Accepts connections forever, one fiber each.
fn accept_fibers(listener: TcpListener) {
    loop {
        match listener.accept() {
            Ok((conn, _peer)) => {
                if let Err(e) = fiber::Builder::new().spawn(move || echo_fiber(conn)) {
                    // Out of memory mappings for stacks: the connection is dropped (closed).
                    eprintln!("echo: {e}");
                    fiber::sleep(ACCEPT_BACKOFF);
                }
            }
            Err(e) => {
                eprintln!("echo: accept: {e}");
                fiber::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Echoes until the client closes.
fn echo_fiber(mut conn: TcpStream) {
    let mut buf = [0u8; BUF]; // on the fiber's stack, lent to the kernel by each read
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

// --- callbacks ---------------------------------------------------------------------------

/// Accepts one connection, starts echoing on it, and accepts the next.
fn accept_callbacks(lp: &Loop, listener: Rc<std::net::TcpListener>) {
    let next = listener.clone();
    lp.accept(&*listener, move |lp, res| match res {
        Ok((conn, _peer)) => {
            receive(lp, Rc::new(conn), vec![0; BUF]);
            accept_callbacks(lp, next);
        }
        Err(e) => {
            eprintln!("echo: accept: {e}");
            lp.start_timer(Timer::after(ACCEPT_BACKOFF), move |lp, _| {
                accept_callbacks(lp, next.clone())
            });
        }
    });
}

/// Receives into `buf` (its length is the room offered), then sends back what arrived.
fn receive(lp: &Loop, conn: Rc<OwnedFd>, buf: Vec<u8>) {
    let c = conn.clone();
    lp.recv(&*conn, buf, move |lp, res, buf| match res {
        Ok(0) | Err(_) => {} // end of stream or error: the last Rc closes the socket
        Ok(_) => send_all(lp, c, buf), // `buf` is cut to what was received
    });
}

/// Sends all of `buf` (a send may be short), then receives again into the same buffer.
fn send_all(lp: &Loop, conn: Rc<OwnedFd>, buf: Vec<u8>) {
    let c = conn.clone();
    lp.send(&*conn, buf, move |lp, res, mut buf| match res {
        Ok(n) if n < buf.len() => {
            buf.drain(..n);
            send_all(lp, c, buf);
        }
        Ok(_) => {
            buf.resize(BUF, 0); // within its capacity: no allocation
            receive(lp, c, buf);
        }
        Err(_) => {}
    });
}
