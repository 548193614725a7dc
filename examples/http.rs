//! A small HTTP/1.1 server: one fiber per connection, keep-alive, pipelining.
//!
//! ```sh
//! cargo run --release --example http -- [--backend auto|uring|epoll] [--addr 127.0.0.1:7000]
//!                                       [--threads N]
//! curl -i http://127.0.0.1:7000/
//! ```
//!
//! `GET /` (and `HEAD /`) answers `hello from fdloop`; anything else is a 404. Once it listens
//! it prints one line, `READY <address> <backend>`, then serves until SIGINT or SIGTERM and
//! exits with status 0. The flags are those of the `echo` example, without `--style`.
//!
//! Requests are parsed with `httparse` straight from the connection's buffer: every complete
//! request in it is answered (pipelined requests arriving in one read get their responses in
//! one write), and a request cut across reads waits for the rest. Connections stay open unless
//! the client says `Connection: close`, or speaks HTTP/1.0 without `Connection: keep-alive`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use fdloop::loops::Loops;
use fdloop::net::{TcpListener, TcpStream};
use fdloop::{fiber, BackendChoice, BackendKind, Loop, LoopBuilder, Signal};

const USAGE: &str = "usage: http [--backend auto|uring|epoll] [--addr HOST:PORT] [--threads N]";

const BODY: &[u8] = b"hello from fdloop\n";
const NOT_FOUND: &[u8] = b"not found\n";

/// A connection's read buffer starts at this size…
const BUF: usize = 8 * 1024;
/// …and grows, for a large request, up to this size (larger requests are refused).
const MAX_REQUEST: usize = 64 * 1024;
/// Headers per request.
const MAX_HEADERS: usize = 32;
/// How long to wait before accepting again after an error such as `EMFILE` (out of fds).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// How long a closing connection keeps reading what the client still sends (see `linger`).
const LINGER: Duration = Duration::from_secs(1);

struct Args {
    /// `None`: automatic (honours `FDLOOP_BACKEND`).
    backend: Option<BackendChoice>,
    addr: SocketAddr,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
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
            "--backend" => {
                args.backend = match value.as_str() {
                    "auto" => None,
                    "uring" | "io_uring" => Some(BackendChoice::Uring),
                    "epoll" => Some(BackendChoice::Epoll),
                    _ => return Err(format!("unknown backend {value:?}")),
                }
            }
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
                eprintln!("http: {msg}");
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
            eprintln!("http: {e}");
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
    let listener = TcpListener::bind(args.addr)?;
    let addr = listener.local_addr()?;
    lp.spawn(move || accept(listener));
    stop_on_signals(&lp)?;
    ready(addr, lp.backend().kind)?;
    lp.run()?;
    lp.close() // unwinds the connection fibers: their sockets close
}

fn serve_on_loops(args: &Args) -> io::Result<()> {
    // All listeners are bound before the loops start, on the port the first one got.
    let first = TcpListener::bind_reuseport(args.addr)?;
    let addr = first.local_addr()?;
    let mut listeners = vec![Some(first)];
    for _ in 1..args.threads {
        listeners.push(Some(TcpListener::bind_reuseport(addr)?));
    }
    let listeners = Mutex::new(listeners);
    let (tx, rx) = mpsc::channel();
    let loops = Loops::builder()
        .threads(args.threads)
        .name("http")
        .loop_builder(loop_builder(args))
        .start(move |lp, index| {
            let _ = tx.send(lp.backend().kind);
            let listener = listeners.lock().unwrap_or_else(|e| e.into_inner())[index]
                .take()
                .expect("one listener per loop");
            lp.spawn(move || accept(listener));
        })?;
    let backend = rx
        .recv()
        .map_err(|_| io::Error::other("no loop thread started"))?;

    let control = loop_builder(args).build()?;
    stop_on_signals(&control)?;
    ready(addr, backend)?;
    control.run()?;
    loops.stop_all();
    loops.join()
}

/// Accepts connections forever, one fiber each.
fn accept(listener: TcpListener) {
    loop {
        match listener.accept() {
            Ok((conn, _peer)) => {
                if let Err(e) = fiber::Builder::new().spawn(move || serve(conn)) {
                    eprintln!("http: {e}");
                    fiber::sleep(ACCEPT_BACKOFF);
                }
            }
            Err(e) => {
                eprintln!("http: accept: {e}");
                fiber::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// What to do after looking at the start of the buffer.
enum Step {
    /// A request was answered; it took `used` bytes.
    Answered { used: usize, keep_alive: bool },
    /// The request is incomplete: at least `need` bytes are needed (when known).
    Incomplete { need: Option<usize> },
    /// The request was refused with an error response: close the connection.
    Refused,
}

/// Serves one connection until the client closes it, asks to, or sends something invalid.
fn serve(conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; BUF];
    let mut len = 0; // bytes of `buf` that hold data
    let mut out = Vec::with_capacity(1024);
    loop {
        // Answer every complete request in the buffer.
        let mut start = 0;
        let mut close = false;
        let mut need = None;
        while start < len {
            match answer(&buf[start..len], &mut out) {
                Step::Answered { used, keep_alive } => {
                    start += used;
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Step::Incomplete { need: n } => {
                    need = n;
                    break;
                }
                Step::Refused => {
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if (&conn).write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
        if close {
            linger(&conn);
            return;
        }
        // Keep the incomplete request at the front, and make room for the rest of it.
        buf.copy_within(start..len, 0);
        len -= start;
        let want = need.unwrap_or(len + 1);
        if want > buf.len() {
            if want > MAX_REQUEST {
                respond(
                    &mut out,
                    "413 Payload Too Large",
                    b"",
                    false,
                    Connection::Close,
                );
                let _ = (&conn).write_all(&out);
                linger(&conn);
                return;
            }
            buf.resize(want.next_power_of_two().min(MAX_REQUEST), 0);
        }
        match (&conn).read(&mut buf[len..]) {
            Ok(0) => return, // the client closed the connection
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Parses the request at the start of `data` and appends its response to `out`.
fn answer(data: &[u8], out: &mut Vec<u8>) -> Step {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(data) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => {
            // The head alone may not outgrow the largest buffer.
            let need = (data.len() >= MAX_REQUEST).then_some(MAX_REQUEST + 1);
            return Step::Incomplete { need };
        }
        Err(httparse::Error::TooManyHeaders) => {
            respond(
                out,
                "431 Request Header Fields Too Large",
                b"",
                false,
                Connection::Close,
            );
            return Step::Refused;
        }
        Err(_) => {
            respond(out, "400 Bad Request", b"", false, Connection::Close);
            return Step::Refused;
        }
    };
    let http10 = req.version == Some(0);
    let mut keep_alive = !http10;
    let mut body_len = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
            match parsed {
                Some(n) => body_len = n,
                None => {
                    respond(out, "400 Bad Request", b"", false, Connection::Close);
                    return Step::Refused;
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Request bodies in chunks are not supported by this small server.
            respond(out, "501 Not Implemented", b"", false, Connection::Close);
            return Step::Refused;
        }
    }
    // The body (if any) is skipped, but it must have arrived.
    let used = head.saturating_add(body_len);
    if data.len() < used {
        return Step::Incomplete { need: Some(used) };
    }
    let method = req.method.unwrap_or("");
    let head_only = method == "HEAD";
    // HTTP/1.1 keeps connections by default; an HTTP/1.0 client that asked is told it is kept.
    let connection = match (keep_alive, http10) {
        (false, _) => Connection::Close,
        (true, true) => Connection::KeepAlive,
        (true, false) => Connection::Default,
    };
    if (method == "GET" || head_only) && req.path == Some("/") {
        respond(out, "200 OK", BODY, head_only, connection);
    } else {
        respond(out, "404 Not Found", NOT_FOUND, head_only, connection);
    }
    Step::Answered { used, keep_alive }
}

/// The `Connection` header of a response.
#[derive(Clone, Copy)]
enum Connection {
    /// None: the protocol's default (keep-alive in HTTP/1.1).
    Default,
    KeepAlive,
    Close,
}

/// Appends a response. `head_only`: the headers of `body` without it (HEAD).
fn respond(out: &mut Vec<u8>, status: &str, body: &[u8], head_only: bool, connection: Connection) {
    let connection = match connection {
        Connection::Default => "",
        Connection::KeepAlive => "Connection: keep-alive\r\n",
        Connection::Close => "Connection: close\r\n",
    };
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nServer: fdloop\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n{connection}\r\n",
        body.len(),
    );
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// Closes a connection gracefully: no more writes, then read (and drop) what the client still
/// sends for a while, so that closing with unread data does not reset the connection before
/// the client has read the last response.
fn linger(conn: &TcpStream) {
    let _ = conn.shutdown(Shutdown::Write);
    let _ = conn.set_read_timeout(Some(LINGER));
    let mut sink = [0u8; 1024];
    let mut left = MAX_REQUEST;
    while left > 0 {
        match (&*conn).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}
