//! A hand-written mio echo server (epoll, edge-triggered): the floor of what a readiness
//! loop costs.
//!
//! ```text
//! echo_mio [--addr 127.0.0.1:0]
//! ```

use std::io::{self, Read, Write};

use fdloop_bench::{ready, Args, ECHO_BUF};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet written back (only under back-pressure).
    pending: Vec<u8>,
    writable_wanted: bool,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let addr: String = args.get("addr", "127.0.0.1:0".to_string());
    let std_listener = fdloop_bench::listen(&addr)?;
    std_listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(std_listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    ready(listener.local_addr()?);
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nodelay(true)?;
                            let i = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            poll.registry()
                                .register(&mut stream, Token(i), Interest::READABLE)?;
                            conns[i] = Some(Conn {
                                stream,
                                pending: Vec::new(),
                                writable_wanted: false,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let i = ev.token().0;
            let Some(conn) = conns.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            let alive = serve(conn, &mut buf, &poll, Token(i));
            if !alive {
                if let Some(mut c) = conns[i].take() {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
                free.push(i);
            }
        }
    }
}

/// Reads until `WouldBlock` (edge-triggered), echoing what it reads. Returns false when the
/// connection is finished.
fn serve(conn: &mut Conn, buf: &mut [u8], poll: &Poll, token: Token) -> bool {
    if !flush(conn) {
        return false;
    }
    while conn.pending.is_empty() {
        match conn.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => match conn.stream.write(&buf[..n]) {
                Ok(w) if w == n => {}
                Ok(w) => conn.pending.extend_from_slice(&buf[w..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.pending.extend_from_slice(&buf[..n])
                }
                Err(_) => return false,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    let want = !conn.pending.is_empty();
    if want != conn.writable_wanted {
        // Under back-pressure: stop reading until the backlog is written.
        let interest = if want {
            Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if poll
            .registry()
            .reregister(&mut conn.stream, token, interest)
            .is_err()
        {
            return false;
        }
        conn.writable_wanted = want;
    }
    true
}

/// Writes the backlog; false on error.
fn flush(conn: &mut Conn) -> bool {
    while !conn.pending.is_empty() {
        match conn.stream.write(&conn.pending) {
            Ok(n) => {
                conn.pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
