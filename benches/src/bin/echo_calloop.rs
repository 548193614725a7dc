//! calloop's echo server: one `EventLoop`, a level-triggered `Generic` source per
//! connection whose callback reads and writes back.
//!
//! ```text
//! echo_calloop [--addr 127.0.0.1:0]
//! ```
//!
//! calloop's `Generic` callback cannot change its own interest, so a write that would block
//! (never seen with the load generator's workloads, whose in-flight bytes per connection stay
//! far below the socket buffer) waits with `poll(2)` and is reported on stderr.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use calloop::generic::Generic;
use calloop::{EventLoop, Interest, LoopHandle, Mode, PostAction};
use fdloop_bench::{ready, Args, ECHO_BUF};

struct Data {
    buf: Vec<u8>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let addr: String = args.get("addr", "127.0.0.1:0".to_string());
    let mut event_loop: EventLoop<'static, Data> =
        EventLoop::try_new().map_err(io::Error::other)?;
    let handle = event_loop.handle();
    let listener = fdloop_bench::listen(&addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let h = handle.clone();
    handle
        .insert_source(
            Generic::new(listener, Interest::READ, Mode::Level),
            move |_, listener, _data| {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => add_conn(&h, stream)?,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    }
                }
                Ok(PostAction::Continue)
            },
        )
        .map_err(|e| io::Error::other(e.error))?;
    ready(local);
    let mut data = Data {
        buf: vec![0; ECHO_BUF],
    };
    event_loop
        .run(None, &mut data, |_| {})
        .map_err(io::Error::other)
}

fn add_conn(h: &LoopHandle<'static, Data>, stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    h.insert_source(
        Generic::new(stream, Interest::READ, Mode::Level),
        |_, stream, data| {
            let mut s: &TcpStream = stream;
            match s.read(&mut data.buf) {
                Ok(0) => Ok(PostAction::Remove),
                Ok(n) => match write_all(s, &data.buf[..n]) {
                    Ok(()) => Ok(PostAction::Continue),
                    Err(_) => Ok(PostAction::Remove),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(PostAction::Continue),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(PostAction::Continue),
                Err(_) => Ok(PostAction::Remove),
            }
        },
    )
    .map_err(|e| io::Error::other(e.error))?;
    Ok(())
}

fn write_all(mut s: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match s.write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                eprintln!("echo_calloop: a write would block; waiting with poll(2)");
                let mut p = libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: (FFI) `p` is one live pollfd.
                unsafe { libc::poll(&mut p, 1, -1) };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
