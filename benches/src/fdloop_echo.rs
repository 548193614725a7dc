//! fdloop's echo handlers, shared by `echo_fdloop`, `idle` and `memory`.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use fdloop::{Loop, Timer};

use crate::set_nodelay;

/// Accepts connections on `listener` with `Loop::accept`, one at a time, and echoes each with
/// [`recv_next`] / [`send_rest`] using a `buf_size`-byte buffer. `accepted` counts them.
pub fn accept_callbacks(
    lp: &Loop,
    listener: Rc<TcpListener>,
    buf_size: usize,
    accepted: Rc<Cell<usize>>,
) {
    let l2 = listener.clone();
    lp.accept(&*listener, move |lp, res| {
        match res {
            Ok((fd, _peer)) => {
                set_nodelay(fd.as_raw_fd());
                accepted.set(accepted.get() + 1);
                recv_next(lp, Rc::new(fd), vec![0; buf_size]);
            }
            Err(e) => {
                // Out of fds (EMFILE) and the like: back off instead of spinning.
                eprintln!("accept: {e}");
                let mut again = Some((l2, accepted));
                lp.start_timer(Timer::after(Duration::from_millis(10)), move |lp, _| {
                    if let Some((l, a)) = again.take() {
                        accept_callbacks(lp, l, buf_size, a);
                    }
                });
                return;
            }
        }
        accept_callbacks(lp, l2, buf_size, accepted);
    });
}

/// Receives into `buf` (its whole capacity), then echoes.
pub fn recv_next(lp: &Loop, conn: Rc<OwnedFd>, mut buf: Vec<u8>) {
    // `recv` reads up to `buf.len()` bytes and hands the buffer back truncated to what it read.
    // Every byte up to the capacity was initialised once (`vec![0; n]`) and truncating a
    // `Vec<u8>` does not de-initialise memory, so the length is restored without writing the
    // buffer again (a `resize` would memset up to the whole buffer per round trip).
    // SAFETY: see above: bytes 0..capacity are initialised u8s.
    unsafe { buf.set_len(buf.capacity()) };
    let fd = conn.as_raw_fd();
    lp.recv(fd, buf, move |lp, res, buf| match res {
        Ok(n) if n > 0 => send_rest(lp, conn, buf),
        _ => close(lp, &conn),
    });
}

/// Sends all of `buf`, then receives again.
pub fn send_rest(lp: &Loop, conn: Rc<OwnedFd>, buf: Vec<u8>) {
    let fd = conn.as_raw_fd();
    lp.send(fd, buf, move |lp, res, mut buf| match res {
        Ok(n) if n == buf.len() => recv_next(lp, conn, buf),
        Ok(n) if n > 0 => {
            // A short send: send the rest (rare; only under back-pressure).
            buf.drain(..n);
            send_rest(lp, conn, buf);
        }
        _ => close(lp, &conn),
    });
}

fn close(lp: &Loop, conn: &Rc<OwnedFd>) {
    // Detach before the fd is closed (when the last Rc goes, which is now: no operation of
    // this connection is in flight once its callback runs).
    let _ = lp.detach(conn.as_raw_fd());
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
