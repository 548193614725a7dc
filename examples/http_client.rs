//! Fetches one URL with fiber I/O and prints the status line and the body.
//!
//! ```sh
//! cargo run --example http_client -- [--backend auto|uring|epoll] [--timeout SECONDS] [URL]
//! ```
//!
//! The URL is `http://host[:port][/path]` (default `http://127.0.0.1:7000/`, where the `http`
//! example listens). The request runs in a fiber: `fdloop::net::TcpStream::connect` (a host
//! name is resolved on the loop's thread pool), then a `std::io::BufReader` over the stream
//! reads the status line and the headers, and the body by `Content-Length`, in chunks
//! (`Transfer-Encoding: chunked`), or up to the end of the connection.
//!
//! Output: the status line, then the body. Exit status: 0 for a response of status 2xx or 3xx,
//! 1 when the request failed (connection, timeout, malformed response), 2 for a bad command
//! line, 3 for a response of status 400 or more (its body is still printed).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use fdloop::net::TcpStream;
use fdloop::{BackendChoice, Loop};

const USAGE: &str =
    "usage: http_client [--backend auto|uring|epoll] [--timeout SECONDS] [http://host:port/path]";

/// The longest header line, and the most headers, accepted from a server.
const MAX_LINE: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;

struct Args {
    backend: Option<BackendChoice>,
    timeout: Duration,
    url: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        backend: None,
        timeout: Duration::from_secs(30),
        url: "http://127.0.0.1:7000/".to_string(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--help" | "-h" => return Err(String::new()),
            "--backend" => {
                let value = it.next().ok_or("--backend needs a value")?;
                args.backend = match value.as_str() {
                    "auto" => None,
                    "uring" | "io_uring" => Some(BackendChoice::Uring),
                    "epoll" => Some(BackendChoice::Epoll),
                    _ => return Err(format!("unknown backend {value:?}")),
                }
            }
            "--timeout" => {
                let value = it.next().ok_or("--timeout needs a value")?;
                args.timeout = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .ok_or_else(|| format!("--timeout {value}: not a positive number"))?;
            }
            _ if arg.starts_with("--") => return Err(format!("unknown flag {arg}")),
            _ => args.url = arg,
        }
    }
    Ok(args)
}

/// The parts of an `http://` URL.
struct Url {
    host: String,
    port: u16,
    /// What goes into the `Host` header.
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    // `[v6 address]:port`, `host:port` or `host`.
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url}: unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("{url}: junk after ']'")),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?,
        None => 80,
    };
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok(Url {
        host: host.to_string(),
        port,
        authority: authority.to_string(),
        path,
    })
}

/// A response: its status line and code, and its body.
struct Response {
    status_line: String,
    code: u16,
    body: Vec<u8>,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("http_client: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let url = match parse_url(&args.url) {
        Ok(url) => url,
        Err(msg) => {
            eprintln!("http_client: {msg}");
            return ExitCode::from(2);
        }
    };
    match run(&args, url) {
        Ok(resp) => {
            let mut out = io::stdout().lock();
            let printed = writeln!(out, "{}", resp.status_line)
                .and_then(|()| out.write_all(&resp.body))
                .and_then(|()| out.flush());
            if let Err(e) = printed {
                eprintln!("http_client: stdout: {e}");
                return ExitCode::FAILURE;
            }
            if resp.code >= 400 {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("http_client: {}: {e}", args.url);
            ExitCode::FAILURE
        }
    }
}

/// Builds the loop and fetches `url` in a fiber.
fn run(args: &Args, url: Url) -> io::Result<Response> {
    let lp = match args.backend {
        Some(choice) => Loop::builder().backend(choice).build()?,
        None => Loop::new()?,
    };
    let timeout = args.timeout;
    let fetching = lp.spawn(move || fetch(&url, timeout));
    lp.run()?;
    fetching
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the fetching fiber panicked")))
}

/// Fetches `url` (inside a fiber). `timeout` bounds the connection and each read and write.
fn fetch(url: &Url, timeout: Duration) -> io::Result<Response> {
    let addrs = resolve(url)?;
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "the host has no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or(last)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;

    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: fdloop-http-client\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        url.path, url.authority
    );
    (&stream).write_all(request.as_bytes())?;

    let mut reader = BufReader::new(&stream);
    let status_line = read_line(&mut reader)?;
    let code = parse_status(&status_line)?;

    let mut content_length = None;
    let mut chunked = false;
    for n in 0.. {
        let line = read_line(&mut reader)?;
        if line.is_empty() {
            break;
        }
        if n == MAX_HEADERS {
            return Err(invalid("too many headers"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("malformed header line {line:?}")))?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let len = value
                .parse::<u64>()
                .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?;
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }

    let mut body = Vec::new();
    if (100..200).contains(&code) || code == 204 || code == 304 {
        // No body.
    } else if chunked {
        read_chunked(&mut reader, &mut body)?;
    } else if let Some(len) = content_length {
        (&mut reader).take(len).read_to_end(&mut body)?;
        if body.len() as u64 != len {
            return Err(invalid(format!(
                "the connection closed after {} of {len} body bytes",
                body.len()
            )));
        }
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response {
        status_line,
        code,
        body,
    })
}

/// The addresses of the URL's host: a literal address at once, a name on the thread pool.
fn resolve(url: &Url) -> io::Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    if let Ok(ip) = url.host.parse::<std::net::IpAddr>() {
        return Ok(vec![std::net::SocketAddr::new(ip, url.port)]);
    }
    let (host, port) = (url.host.clone(), url.port);
    // getaddrinfo blocks: run it on the loop's thread pool, parking only this fiber.
    fdloop::fiber::unblock(move || (host.as_str(), port).to_socket_addrs().map(Vec::from_iter))
}

/// Reads one line ending in CRLF (or LF) and returns it without the line end.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    (&mut *reader)
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_LINE {
            invalid("a header line is too long")
        } else {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed in the middle of the response head",
            )
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| invalid("a header line is not UTF-8"))
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status(line: &str) -> io::Result<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(invalid(format!("not an HTTP/1 status line: {line:?}")));
    }
    code.parse()
        .map_err(|_| invalid(format!("bad status code {code:?}")))
}

/// Reads a chunked body: `size[;extensions]` CRLF, data CRLF, …, `0` CRLF, trailers, CRLF.
fn read_chunked(reader: &mut impl BufRead, body: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let line = read_line(reader)?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to an empty line.
            while !read_line(reader)?.is_empty() {}
            return Ok(());
        }
        let before = body.len();
        (&mut *reader).take(size).read_to_end(body)?;
        if (body.len() - before) as u64 != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed in the middle of a chunk",
            ));
        }
        if !read_line(reader)?.is_empty() {
            return Err(invalid("a chunk is longer than its size"));
        }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}
