//! fd accounting of the multishot operations. It counts the process's fds, so it runs as one
//! test, one backend after the other, with no other test opening or closing fds meanwhile.

mod common;

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use common::fd_count;
use fdloop::{BackendChoice, Loop};

fn run_until(lp: &Loop, done: impl FnMut() -> bool) {
    common::run_until_within(lp, Duration::from_secs(10), "condition", done);
}

/// Accepted connections are handed out once each and closed by their owner; a cancelled
/// multishot accept leaves nothing open.
fn accepted_fds_are_owned_once(lp: &Loop, name: &str) {
    let before = fd_count();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted: Rc<RefCell<Vec<OwnedFd>>> = Rc::default();
    let finals = Rc::new(Cell::new(0));
    let (acc, fin) = (accepted.clone(), finals.clone());
    let id = lp.accept_multishot(&listener, move |_, r| match r {
        Ok(fd) => acc.borrow_mut().push(fd),
        Err(_) => fin.set(fin.get() + 1),
    });
    let clients: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
    run_until(lp, || accepted.borrow().len() == 5);
    lp.cancel(id).unwrap();
    run_until(lp, || finals.get() == 1);
    accepted.borrow_mut().clear();
    drop(clients);
    drop(listener);
    assert_eq!(fd_count(), before, "{name}: accept_multishot leaked an fd");
}

/// Closing a loop with a multishot accept (a connection waiting in the backlog) and a multishot
/// receive in flight calls nothing and leaks nothing: connections accepted during the
/// shutdown are closed by the loop.
fn close_ends_multishot_operations(choice: BackendChoice) {
    let before = fd_count();
    let Some(lp) = common::new_loop(choice) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, mut b) = UnixStream::pair().unwrap();
    let pool = lp.buffer_pool(4, 64).unwrap();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    lp.accept_multishot(&listener, move |_, _| c.set(c.get() + 1));
    let chunks = Rc::new(Cell::new(0));
    let finals = Rc::new(Cell::new(0));
    let (ch, fi) = (chunks.clone(), finals.clone());
    lp.recv_multishot(&a, &pool, move |_, r| match r {
        Ok(c) if !c.is_empty() => ch.set(ch.get() + 1),
        _ => fi.set(fi.get() + 1),
    })
    .unwrap();
    b.write_all(b"x").unwrap();
    run_until(&lp, || chunks.get() == 1);
    let waiting = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    lp.close().unwrap();
    assert_eq!(finals.get(), 0, "{choice:?}: a call after close");
    assert_eq!(
        calls.get(),
        0,
        "{choice:?}: a connection handed out during close"
    );
    drop((waiting, listener, a, b, pool));
    assert_eq!(fd_count(), before, "{choice:?}: fds leaked");
}

#[test]
fn multishot_fd_accounting() {
    for choice in [BackendChoice::Uring, BackendChoice::Epoll] {
        if let Some(lp) = common::new_loop(choice) {
            let name = lp.backend().kind.short_name();
            accepted_fds_are_owned_once(&lp, name);
            lp.close().unwrap();
        }
        close_ends_multishot_operations(choice);
    }
}
