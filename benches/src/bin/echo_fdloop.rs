//! fdloop's echo server, single-threaded.
//!
//! ```text
//! echo_fdloop [--addr 127.0.0.1:0] [--style callback|fiber] [--backend uring|epoll]
//! ```
//!
//! * `callback`: completion I/O with owned buffers (`Loop::accept` / `recv` / `send`); one
//!   16 KiB `Vec` per connection goes round recv → send → recv.
//! * `fiber`: one fiber per connection (`fdloop::net::TcpStream`, `Read` / `Write`), the
//!   16 KiB buffer on the fiber's stack.
//!
//! Prints `READY <addr>` once listening, then serves until killed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use fdloop::{BackendChoice, BackendKind, Loop};
use fdloop_bench::{ready, set_nodelay, Args, ECHO_BUF};

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let addr: String = args.get("addr", "127.0.0.1:0".to_string());
    let style: String = args.get("style", "callback".to_string());
    let backend = match args.get_str("backend").unwrap_or("uring") {
        "uring" | "io_uring" => BackendChoice::Uring,
        "epoll" => BackendChoice::Epoll,
        other => {
            eprintln!("--backend: uring or epoll, not {other:?}");
            std::process::exit(2);
        }
    };
    let lp = Loop::builder().backend(backend).build()?;
    let listener = fdloop_bench::listen(&addr)?;
    let local = listener.local_addr()?;
    eprintln!("echo_fdloop: {style} on {}", lp.backend());
    match style.as_str() {
        "callback" => {
            if lp.backend().kind == BackendKind::Epoll {
                listener.set_nonblocking(true)?;
            }
            let listener = Rc::new(listener);
            accept_next(&lp, listener);
        }
        "fiber" => {
            let listener = fdloop::net::TcpListener::from_std(listener)?;
            lp.spawn(move || loop {
                match listener.accept() {
                    Ok((conn, _)) => {
                        set_nodelay(conn.as_raw_fd());
                        fdloop::fiber::spawn(move || echo_fiber(conn));
                    }
                    Err(e) => {
                        eprintln!("accept: {e}");
                        fdloop::fiber::sleep(std::time::Duration::from_millis(10));
                    }
                }
            });
        }
        other => {
            eprintln!("--style: callback or fiber, not {other:?}");
            std::process::exit(2);
        }
    }
    ready(local);
    lp.run()
}

fn echo_fiber(mut conn: fdloop::net::TcpStream) {
    let mut buf = [0u8; ECHO_BUF];
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

fn accept_next(lp: &Loop, listener: Rc<TcpListener>) {
    let l2 = listener.clone();
    lp.accept(&*listener, move |lp, res| {
        match res {
            Ok((fd, _peer)) => {
                set_nodelay(fd.as_raw_fd());
                recv_next(lp, Rc::new(fd), vec![0; ECHO_BUF]);
            }
            Err(e) => eprintln!("accept: {e}"),
        }
        accept_next(lp, l2);
    });
}

fn recv_next(lp: &Loop, conn: Rc<OwnedFd>, mut buf: Vec<u8>) {
    // `recv` reads up to `buf.len()` bytes, and hands the buffer back truncated to what it
    // read. Every byte up to the capacity was initialised once (`vec![0; ECHO_BUF]`) and
    // truncating a `Vec<u8>` does not de-initialise memory, so the length can be restored
    // without writing the buffer again (a `resize` would memset up to 16 KiB per round trip).
    debug_assert_eq!(buf.capacity(), ECHO_BUF);
    // SAFETY: see above: bytes 0..capacity are initialised u8s.
    unsafe { buf.set_len(buf.capacity()) };
    let fd = conn.as_raw_fd();
    lp.recv(fd, buf, move |lp, res, buf| match res {
        Ok(n) if n > 0 => send_rest(lp, conn, buf),
        _ => close(lp, &conn),
    });
}

fn send_rest(lp: &Loop, conn: Rc<OwnedFd>, buf: Vec<u8>) {
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
    // Detach before the fd is closed (when the last Rc goes, which is now: no operation of this
    // connection is in flight once its callback runs).
    let _ = lp.detach(conn.as_raw_fd());
}
