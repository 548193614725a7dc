//! fdloop's echo handlers, shared by `echo_fdloop`, `idle` and `memory`.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use fdloop::{BufPool, Loop, Timer};

use crate::set_nodelay;

/// Buffers in the receive pool shared by every connection of [`accept_callbacks`]. The kernel
/// fills one per connection that has data before the loop runs the callbacks that give them
/// back, so the pool needs about one buffer per connection active in a batch: with fewer, a
/// receive ends with `ENOBUFS` and is re-armed, which costs a submission (an `epoll_ctl` on
/// epoll) per re-arm.
pub const POOL_BUFFERS: usize = 1024;
/// Bytes per pool buffer: more than any burst of the echo workloads (16 × 64 B pipelined,
/// 1 KiB messages).
pub const POOL_BUFFER_SIZE: usize = 4096;

/// How a callback server receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receive {
    /// One `Loop::recv_multishot` per connection, into a pool of buffers shared by all
    /// connections: one submission per connection, and the kernel receives as soon as data
    /// lands.
    Multishot,
    /// One `Loop::recv` per request into the connection's own buffer, submitted again once the
    /// response is sent: a submission per round trip, and the receive runs when the loop gets
    /// to it.
    Single,
}

/// What [`accept_with`] hands each connection to receive with.
#[derive(Clone)]
enum Rx {
    Pool(BufPool),
    /// The size of each connection's own buffer.
    Own(usize),
}

/// Accepts connections on `listener` with one `Loop::accept_multishot`, and echoes each with
/// `Loop::send` after receiving as `receive` says: into a pool of `buf_size`-byte buffers
/// shared by all connections (at most [`POOL_BUFFER_SIZE`] each), or into a buffer of that
/// size per connection. `accepted` counts the connections.
pub fn accept_callbacks(
    lp: &Loop,
    listener: Rc<TcpListener>,
    buf_size: usize,
    receive: Receive,
    accepted: Rc<Cell<usize>>,
) {
    let size = buf_size.min(POOL_BUFFER_SIZE);
    let rx = match receive {
        Receive::Single => Rx::Own(size),
        Receive::Multishot => match lp.buffer_pool(POOL_BUFFERS, size) {
            Ok(pool) => Rx::Pool(pool),
            Err(e) => {
                eprintln!("buffer pool: {e}");
                std::process::exit(1);
            }
        },
    };
    accept_with(lp, listener, rx, accepted);
}

fn accept_with(lp: &Loop, listener: Rc<TcpListener>, rx: Rx, accepted: Rc<Cell<usize>>) {
    let l2 = listener.clone();
    lp.accept_multishot(&*listener, move |lp, res| match res {
        Ok(fd) => {
            set_nodelay(fd.as_raw_fd());
            accepted.set(accepted.get() + 1);
            match &rx {
                Rx::Pool(pool) => serve(lp, fd, pool),
                Rx::Own(size) => receive_one(lp, fd, vec![0; *size]),
            }
        }
        Err(e) => {
            // The last call: out of fds (EMFILE) and the like. Back off, then accept again.
            eprintln!("accept: {e}");
            let mut again = Some((l2.clone(), rx.clone(), accepted.clone()));
            lp.start_timer(Timer::after(Duration::from_millis(10)), move |lp, _| {
                if let Some((l, rx, a)) = again.take() {
                    accept_with(lp, l, rx, a);
                }
            });
        }
    });
}

/// [`Receive::Single`]: receives one request into `buf` (up to its length), then
/// [`respond`]s. End of stream or an error drops `fd`, closing it.
fn receive_one(lp: &Loop, fd: OwnedFd, buf: Vec<u8>) {
    let raw = fd.as_raw_fd();
    lp.recv(raw, buf, move |lp, res, buf| {
        if let Ok(1..) = res {
            respond(lp, fd, buf);
        }
    });
}

/// Sends `buf` back, then receives the next request into the same buffer, grown back to its
/// capacity (which zeroes the bytes past the request: at most [`POOL_BUFFER_SIZE`]).
fn respond(lp: &Loop, fd: OwnedFd, buf: Vec<u8>) {
    let raw = fd.as_raw_fd();
    lp.send(raw, buf, move |lp, res, mut buf| match res {
        Ok(n) if n == buf.len() => {
            buf.resize(buf.capacity(), 0);
            receive_one(lp, fd, buf);
        }
        Ok(n) if n > 0 => {
            // A short send: send the rest (rare; only under back-pressure).
            buf.drain(..n);
            respond(lp, fd, buf);
        }
        _ => {}
    });
}

/// One echoed connection: bytes received while a send is in flight wait in `pending`.
struct Conn {
    fd: OwnedFd,
    sending: Cell<bool>,
    pending: RefCell<Vec<u8>>,
    /// The send buffer between sends (reused: no allocation per round trip).
    spare: RefCell<Vec<u8>>,
}

/// Echoes `fd` until end of stream or an error.
pub fn serve(lp: &Loop, fd: OwnedFd, pool: &BufPool) {
    let conn = Rc::new(Conn {
        fd,
        sending: Cell::new(false),
        pending: RefCell::new(Vec::new()),
        spare: RefCell::new(Vec::new()),
    });
    let c = conn.clone();
    let started = lp.recv_multishot(&conn.fd, pool, move |lp, res| match res {
        Ok(chunk) if !chunk.is_empty() => echo(lp, &c, chunk),
        // The last call: end of stream, or an error.
        _ => close(lp, &c),
    });
    if let Err(e) = started {
        eprintln!("recv_multishot: {e}");
        close(lp, &conn);
    }
}

fn echo(lp: &Loop, conn: &Rc<Conn>, chunk: &[u8]) {
    if conn.sending.get() {
        conn.pending.borrow_mut().extend_from_slice(chunk);
        return;
    }
    let mut buf = std::mem::take(&mut *conn.spare.borrow_mut());
    buf.clear();
    buf.extend_from_slice(chunk);
    conn.sending.set(true);
    send_rest(lp, conn.clone(), buf);
}

/// Sends all of `buf`, then what arrived meanwhile.
fn send_rest(lp: &Loop, conn: Rc<Conn>, buf: Vec<u8>) {
    let fd = conn.fd.as_raw_fd();
    lp.send(fd, buf, move |lp, res, mut buf| match res {
        Ok(n) if n == buf.len() => {
            buf.clear();
            let mut pending = conn.pending.borrow_mut();
            if pending.is_empty() {
                drop(pending);
                conn.sending.set(false);
                *conn.spare.borrow_mut() = buf;
            } else {
                std::mem::swap(&mut buf, &mut *pending);
                drop(pending);
                send_rest(lp, conn, buf);
            }
        }
        Ok(n) if n > 0 => {
            // A short send: send the rest (rare; only under back-pressure).
            buf.drain(..n);
            send_rest(lp, conn, buf);
        }
        _ => close(lp, &conn),
    });
}

fn close(lp: &Loop, conn: &Rc<Conn>) {
    // Cancels what is in flight on the connection; the fd is closed when the last reference
    // goes (after the final callbacks).
    let _ = lp.detach(conn.fd.as_raw_fd());
}

/// A fiber's echo loop: read, write back, until end-of-file or an error. The buffer is on
/// the fiber's stack.
pub fn echo_fiber<const N: usize>(mut conn: fdloop::net::TcpStream) {
    let mut buf = [0u8; N];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Accepts connections in a fiber and spawns one [`echo_fiber`] per connection.
pub fn accept_fibers<const N: usize>(
    listener: fdloop::net::TcpListener,
    accepted: Rc<Cell<usize>>,
) {
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                set_nodelay(conn.as_raw_fd());
                accepted.set(accepted.get() + 1);
                fdloop::fiber::spawn(move || echo_fiber::<N>(conn));
            }
            Err(e) => {
                eprintln!("accept: {e}");
                fdloop::fiber::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}
