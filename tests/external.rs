//! `fdloop::external` with a fake "library" over real sockets (socketpairs and TCP loopback):
//! partial reads, buffered writes, reconnections, a socket closed behind the loop, an fd that
//! cannot be polled, detaching from inside a callback, panics.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fdloop::external::{ExternalId, ExternalOptions, ExternalSource};
use fdloop::{BackendChoice, BackendKind, Loop};

/// What the fake library saw.
#[derive(Default)]
struct Log {
    readable: Cell<usize>,
    writable: Cell<usize>,
    housekeeping: Cell<usize>,
    connections: Cell<usize>,
    errors: RefCell<Vec<String>>,
    got: RefCell<Vec<u8>>,
    out_left: Cell<usize>,
    dropped: Cell<bool>,
}

trait Stream: Read + Write + AsRawFd {
    /// Gives up the stream and its fd: the caller owns the number.
    fn into_raw(self: Box<Self>) -> RawFd;
}
impl<T: Read + Write + AsRawFd + IntoRawFd> Stream for T {
    fn into_raw(self: Box<Self>) -> RawFd {
        (*self).into_raw_fd()
    }
}

type Sock = Rc<RefCell<Option<Box<dyn Stream>>>>;
type Hook = Box<dyn FnMut(&Loop)>;
type Dialer = Box<dyn FnMut() -> Box<dyn Stream>>;

#[derive(Clone, Copy, Debug)]
enum Reconnect {
    /// Close the old socket, then open the new one (it usually gets the same number back).
    CloseThenOpen,
    /// Open the new socket, then close the old one (another number).
    OpenThenClose,
}

/// A fake library in the shape of libmosquitto: one socket, an output buffer, a periodic
/// housekeeping call that reconnects when asked to.
struct Fake {
    log: Rc<Log>,
    /// Shared with the test, which can close the socket behind the loop's back.
    sock: Sock,
    /// What `fd()` reports: kept when the socket is closed behind the loop.
    fd: Option<RawFd>,
    out: Vec<u8>,
    /// Bytes read per `on_readable`.
    chunk: usize,
    dial: Dialer,
    reconnect: Option<Reconnect>,
    reconnect_on_error: bool,
    /// Closes the socket (keeping the number in `fd`) on reading this byte.
    close_on: Option<u8>,
    on_read: Option<Hook>,
    panic_on_read: bool,
}

impl Fake {
    fn new(log: &Rc<Log>, mut dial: Dialer) -> (Fake, Sock) {
        let first = dial();
        log.connections.set(1);
        let fd = Some(first.as_raw_fd());
        let sock: Sock = Rc::new(RefCell::new(Some(first)));
        let fake = Fake {
            log: log.clone(),
            sock: sock.clone(),
            fd,
            out: Vec::new(),
            chunk: 64 * 1024,
            dial,
            reconnect: None,
            reconnect_on_error: false,
            close_on: None,
            on_read: None,
            panic_on_read: false,
        };
        (fake, sock)
    }

    fn connect(&mut self, order: Reconnect) {
        let old = match order {
            Reconnect::CloseThenOpen => {
                drop(self.sock.borrow_mut().take());
                None
            }
            Reconnect::OpenThenClose => self.sock.borrow_mut().take(),
        };
        let new = (self.dial)();
        self.fd = Some(new.as_raw_fd());
        *self.sock.borrow_mut() = Some(new);
        drop(old);
        self.log.connections.set(self.log.connections.get() + 1);
    }
}

impl std::fmt::Debug for Fake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fake").field("fd", &self.fd).finish()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.log.dropped.set(true);
    }
}

impl ExternalSource for Fake {
    fn fd(&mut self) -> Option<RawFd> {
        self.fd
    }

    fn on_readable(&mut self, lp: &Loop) -> io::Result<()> {
        self.log.readable.set(self.log.readable.get() + 1);
        if self.panic_on_read {
            panic!("the fake library panics");
        }
        if let Some(f) = self.on_read.as_mut() {
            f(lp);
        }
        let mut buf = vec![0u8; self.chunk];
        let r = match self.sock.borrow_mut().as_mut() {
            Some(s) => s.read(&mut buf),
            None => {
                self.log
                    .errors
                    .borrow_mut()
                    .push("on_readable called without a socket".into());
                return Ok(());
            }
        };
        match r {
            Ok(0) => {
                // End of file: the library disconnects.
                drop(self.sock.borrow_mut().take());
                self.fd = None;
                Ok(())
            }
            Ok(n) => {
                self.log.got.borrow_mut().extend_from_slice(&buf[..n]);
                if self.close_on.is_some_and(|b| buf[..n].contains(&b)) {
                    // Closed, but still reported by fd(): behind the loop's back.
                    drop(self.sock.borrow_mut().take());
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn on_writable(&mut self, _lp: &Loop) -> io::Result<()> {
        self.log.writable.set(self.log.writable.get() + 1);
        let r = match self.sock.borrow_mut().as_mut() {
            Some(s) => s.write(&self.out),
            None => {
                self.log
                    .errors
                    .borrow_mut()
                    .push("on_writable called without a socket".into());
                return Ok(());
            }
        };
        match r {
            Ok(n) => {
                self.out.drain(..n);
                self.log.out_left.set(self.out.len());
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn wants_write(&mut self) -> bool {
        self.fd.is_some() && !self.out.is_empty()
    }

    fn housekeeping(&mut self, _lp: &Loop) -> io::Result<()> {
        self.log.housekeeping.set(self.log.housekeeping.get() + 1);
        if let Some(order) = self.reconnect.take() {
            self.connect(order);
        }
        Ok(())
    }

    fn on_error(&mut self, _lp: &Loop, err: io::Error) {
        self.log.errors.borrow_mut().push(err.to_string());
        if self.reconnect_on_error {
            self.reconnect = Some(Reconnect::CloseThenOpen);
        }
    }
}

/// Dials socketpairs; the test's ends are pushed to `peers`.
fn socketpair_dialer(peers: &Rc<RefCell<Vec<UnixStream>>>) -> Dialer {
    let peers = peers.clone();
    Box::new(move || {
        let (lib, peer) = UnixStream::pair().unwrap();
        lib.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        peers.borrow_mut().push(peer);
        Box::new(lib)
    })
}

fn every(ms: u64) -> ExternalOptions {
    ExternalOptions {
        housekeeping_every: Duration::from_millis(ms),
    }
}

/// Runs the loop in short slices until `cond` holds (at most 10 s).
fn run_until(lp: &Loop, cond: impl FnMut() -> bool) {
    common::run_until_within(lp, Duration::from_secs(10), "condition", cond);
}

/// Reads what is available on a non-blocking stream.
fn drain(s: &mut impl Read, into: &mut Vec<u8>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: (FFI) F_GETFD takes no pointer; it only asks whether `fd` is open.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Reads until the peer's end of connection (or a reset); bounded by a 10 s read timeout.
fn assert_closed_by_peer(s: &mut impl Read) {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the end of the connection, got {e}"),
        }
    }
}

/// After the library's first socket was closed (or its number reused) behind the loop's back
/// and its peer written to: over 50 ms of loop iterations and two housekeeping ticks, the loop
/// reports it exactly once (an error containing `error`), never calls the library to read it,
/// does not spin (one iteration per 5 ms tick, give or take an event), and lets go of the
/// socket: the peer sees the end of the connection.
fn expect_let_go(lp: &Loop, log: &Log, peers: &RefCell<Vec<UnixStream>>, error: &str) {
    let readable = log.readable.get();
    let housekeeping = log.housekeeping.get();
    let start = Instant::now();
    let mut iterations = 0;
    while start.elapsed() < Duration::from_millis(50) {
        lp.run_once().unwrap();
        iterations += 1;
    }
    run_until(lp, || log.housekeeping.get() >= housekeeping + 2);
    assert_eq!(log.errors.borrow().len(), 1, "{:?}", log.errors.borrow());
    assert!(
        log.errors.borrow()[0].contains(error),
        "{:?}",
        log.errors.borrow()
    );
    assert_eq!(
        log.readable.get(),
        readable,
        "the library was called for a file it lost"
    );
    assert!(iterations < 100, "{iterations} iterations in 50 ms");
    peers.borrow()[0].set_nonblocking(false).unwrap();
    peers.borrow()[0]
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_closed_by_peer(&mut peers.borrow_mut()[0]);
}

/// The library reconnects from housekeeping: the loop picks up the new fd and serves it, with
/// no further error; then the source is detached.
fn expect_reconnect(lp: &Loop, id: &ExternalId<Fake>, log: &Log, peers: &RefCell<Vec<UnixStream>>) {
    lp.with_external(id, |lib| lib.reconnect = Some(Reconnect::CloseThenOpen))
        .unwrap();
    run_until(lp, || log.connections.get() == 2);
    peers.borrow_mut()[1].write_all(b"z").unwrap();
    run_until(lp, || *log.got.borrow() == b"xz");
    assert_eq!(log.errors.borrow().len(), 1, "{:?}", log.errors.borrow());
    assert!(lp.detach_external(id).unwrap().is_some());
}

/// Serializes the tests of this file: some close an fd behind the loop and check what becomes
/// of its number, which any other test of this process could otherwise take at any moment.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `backend_tests!` (one test per backend), run one at a time (see [`one_at_a_time`]); the
/// lock is taken before the loop is built, since building one opens fds.
macro_rules! serial_backend_tests {
    ($(fn $name:ident($lp:ident : &Loop) $body:block)*) => {$(
        mod $name {
            use super::*;
            fn body($lp: &Loop) $body
            #[test]
            fn uring() {
                let _one = one_at_a_time();
                if let Some(lp) = common::new_loop(BackendChoice::Uring) {
                    assert_eq!(lp.backend().kind, BackendKind::Uring);
                    body(&lp);
                }
            }
            #[test]
            fn epoll() {
                let _one = one_at_a_time();
                let lp = common::new_loop(BackendChoice::Epoll).unwrap();
                assert_eq!(lp.backend().kind, BackendKind::Epoll);
                body(&lp);
            }
        }
    )*};
}

serial_backend_tests! {
    fn partial_reads_are_called_again(lp: &Loop) {
        let log = Rc::new(Log::default());
        let peers = Rc::default();
        let (mut fake, _sock) = Fake::new(&log, socketpair_dialer(&peers));
        fake.chunk = 1;
        peers.borrow_mut()[0].write_all(b"0123456789").unwrap();
        let id = lp.attach_external(fake, every(10_000)).unwrap();
        run_until(lp, || log.got.borrow().len() == 10);
        assert_eq!(&*log.got.borrow(), b"0123456789");
        // One byte per call, and level-triggered: exactly one call per byte.
        assert_eq!(log.readable.get(), 10);
        assert_eq!(log.writable.get(), 0);
        lp.run_for(Duration::from_millis(20)).unwrap();
        assert_eq!(log.readable.get(), 10, "called again with nothing to read");
        assert!(log.errors.borrow().is_empty(), "{:?}", log.errors.borrow());
        assert!(lp.detach_external(&id).unwrap().is_some());
    }

    fn buffered_writes_until_flushed(lp: &Loop) {
        let log = Rc::new(Log::default());
        let peers = Rc::default();
        let (mut fake, _sock) = Fake::new(&log, socketpair_dialer(&peers));
        let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        fake.out = data.clone();
        log.out_left.set(data.len());
        let id = lp.attach_external(fake, every(10_000)).unwrap();
        let mut received = Vec::new();
        run_until(lp, || {
            drain(&mut peers.borrow_mut()[0], &mut received);
            received.len() == data.len()
        });
        assert!(received == data, "the peer received other bytes");
        assert_eq!(log.out_left.get(), 0);
        // More than one socket buffer: flushed over several writable calls.
        assert!(log.writable.get() > 1, "writable calls: {}", log.writable.get());
        // Flushed: WRITABLE is no longer watched, so no more calls for an always-writable socket.
        let calls = log.writable.get();
        lp.run_for(Duration::from_millis(20)).unwrap();
        assert_eq!(log.writable.get(), calls, "writable calls after the flush");

        // Data queued from outside the callbacks: with_external looks at wants_write again.
        lp.with_external(&id, |lib| lib.out.extend_from_slice(b"more")).unwrap();
        let mut more = Vec::new();
        run_until(lp, || {
            drain(&mut peers.borrow_mut()[0], &mut more);
            more == b"more"
        });
        assert!(log.errors.borrow().is_empty(), "{:?}", log.errors.borrow());
        assert!(lp.detach_external(&id).unwrap().is_some());
    }

    fn reconnect_on_the_same_number(lp: &Loop) {
        reconnect(lp, Reconnect::CloseThenOpen);
    }

    fn reconnect_on_another_number(lp: &Loop) {
        reconnect(lp, Reconnect::OpenThenClose);
    }

    fn closed_behind_the_loop_is_reported_once(lp: &Loop) {
        let log = Rc::new(Log::default());
        let peers: Rc<RefCell<Vec<UnixStream>>> = Rc::default();
        let (fake, sock) = Fake::new(&log, socketpair_dialer(&peers));
        let id = lp.attach_external(fake, every(5)).unwrap();
        peers.borrow_mut()[0].write_all(b"x").unwrap();
        run_until(lp, || *log.got.borrow() == b"x");

        // Closed behind the loop's back: fd() keeps reporting the number.
        drop(sock.borrow_mut().take());
        // On io_uring the armed poll still holds the socket, so this write succeeds and the
        // poll fires: the event must not reach the library. (On epoll it fails with EPIPE.)
        let _ = peers.borrow_mut()[0].write(b"y");
        expect_let_go(lp, &log, &peers, "closed behind the loop");
        // The library reconnects from housekeeping; the loop picks up the new fd.
        expect_reconnect(lp, &id, &log, &peers);
    }

    fn closed_behind_and_the_number_reused(lp: &Loop) {
        let log = Rc::new(Log::default());
        let peers: Rc<RefCell<Vec<UnixStream>>> = Rc::default();
        let (fake, sock) = Fake::new(&log, socketpair_dialer(&peers));
        let id = lp.attach_external(fake, every(5)).unwrap();
        peers.borrow_mut()[0].write_all(b"x").unwrap();
        run_until(lp, || *log.got.borrow() == b"x");

        // The library's socket is closed behind the loop's back and its number now names a
        // pipe with data in it (dup2 does both at once), while fd() still reports the number.
        let (r, w) = common::pipe();
        common::write_fd(&w, b"not for the library");
        // The socket's number is owned here from now on; dup2 closes the socket and hands the
        // number to the pipe, and `reused` owns it after that.
        let number = sock.borrow_mut().take().unwrap().into_raw();
        // SAFETY: (FFI) dup2 takes two ints; it closes the socket that `number` names (owned
        // here) and makes the number a duplicate of the pipe, atomically.
        let duped = unsafe { libc::dup2(r.as_raw_fd(), number) };
        let dup_error = io::Error::last_os_error();
        // SAFETY: (FFI) `number` is owned here and nothing else owns it: after a successful dup2
        // it names a fresh duplicate of the pipe; after a failed one, still the socket, which
        // `reused` then closes.
        let reused = unsafe { std::os::fd::OwnedFd::from_raw_fd(number) };
        assert_eq!(duped, number, "dup2: {dup_error}");
        let _ = peers.borrow_mut()[0].write(b"y");
        expect_let_go(lp, &log, &peers, "now names another file");
        // The library reconnects (on another number: the pipe holds the old one).
        expect_reconnect(lp, &id, &log, &peers);
        // Nobody read the pipe.
        assert_eq!(common::read_fd(&reused, 64), b"not for the library");
    }

    fn closed_inside_a_callback_then_recovers(lp: &Loop) {
        let log = Rc::new(Log::default());
        let peers: Rc<RefCell<Vec<UnixStream>>> = Rc::default();
        let (mut fake, _sock) = Fake::new(&log, socketpair_dialer(&peers));
        fake.close_on = Some(b'C');
        fake.reconnect_on_error = true;
        let id = lp.attach_external(fake, every(5)).unwrap();
        peers.borrow_mut()[0].write_all(b"aC").unwrap();
        // Reported right after the callback that closed it; housekeeping reconnects.
        run_until(lp, || log.connections.get() == 2);
        assert_eq!(log.errors.borrow().len(), 1, "{:?}", log.errors.borrow());
        assert!(log.errors.borrow()[0].contains("closed behind the loop"));
        let calls = log.readable.get();
        peers.borrow_mut()[1].write_all(b"b").unwrap();
        run_until(lp, || *log.got.borrow() == b"aCb");
        assert_eq!(log.readable.get(), calls + 1);
        assert_eq!(log.errors.borrow().len(), 1, "{:?}", log.errors.borrow());
        assert!(lp.detach_external(&id).unwrap().is_some());
    }

    fn closed_while_its_file_lives_on_elsewhere(lp: &Loop) {
        // A child process that inherited the library's socket keeps the file open after the
        // library closes its fd: the loop must still be able to let go of it (epoll cannot
        // remove a registration whose fd number is closed).
        let log = Rc::new(Log::default());
        let peers: Rc<RefCell<Vec<UnixStream>>> = Rc::default();
        let (mut fake, sock) = Fake::new(&log, socketpair_dialer(&peers));
        fake.close_on = Some(b'C');
        let inherited = {
            let fd = sock.borrow().as_ref().unwrap().as_raw_fd();
            // SAFETY: (FFI) F_DUPFD_CLOEXEC takes no pointer; the new fd is owned by `inherited`.
            let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
            assert!(d >= 0);
            // SAFETY: (FFI) a fresh fd that nothing else owns.
            unsafe { std::os::fd::OwnedFd::from_raw_fd(d) }
        };
        let inode = socket_inode(inherited.as_raw_fd());
        let id = lp.attach_external(fake, every(5)).unwrap();
        peers.borrow_mut()[0].write_all(b"aC").unwrap();
        run_until(lp, || log.errors.borrow().len() == 1);
        assert!(log.errors.borrow()[0].contains("closed behind the loop"));
        // The file stays readable (through `inherited`), and nothing of the loop is left on it.
        peers.borrow_mut()[0].write_all(b"more").unwrap();
        let readable = log.readable.get();
        lp.run_for(Duration::from_millis(20)).unwrap();
        assert_eq!(log.readable.get(), readable);
        assert_eq!(log.errors.borrow().len(), 1, "{:?}", log.errors.borrow());
        assert_eq!(fds_of(inode), 1, "only the inherited fd is left");
        assert!(
            epoll_watchers(inode).is_empty(),
            "epoll sets still watch the closed socket: {:?}",
            epoll_watchers(inode)
        );
        assert!(lp.detach_external(&id).unwrap().is_some());
        drop(inherited);
    }

    fn unpollable_fd_is_reported_once(lp: &Loop) {
        let log = Rc::new(Log::default());
        let peers: Rc<RefCell<Vec<UnixStream>>> = Rc::default();
        let (mut fake, _sock) = Fake::new(&log, socketpair_dialer(&peers));
        let path = common::temp_path("external-file");
        let file = std::fs::File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        // The library reports a regular file: it cannot be polled.
        fake.fd = Some(file.as_raw_fd());
        let id = lp.attach_external(fake, every(5)).unwrap();
        assert_eq!(log.errors.borrow().len(), 1, "{:?}", log.errors.borrow());
        run_until(lp, || log.housekeeping.get() >= 5);
        assert_eq!(log.errors.borrow().len(), 1, "{:?}", log.errors.borrow());
        assert_eq!(log.readable.get(), 0);
        // Back to its socket: watched.
        let sock_fd = peers.borrow().len();
        assert_eq!(sock_fd, 1);
        lp.with_external(&id, |lib| lib.fd = lib.sock.borrow().as_ref().map(|s| s.as_raw_fd()))
            .unwrap();
        peers.borrow_mut()[0].write_all(b"ok").unwrap();
        run_until(lp, || *log.got.borrow() == b"ok");
        assert_eq!(log.errors.borrow().len(), 1, "{:?}", log.errors.borrow());
        assert!(is_open(file.as_raw_fd()));
        assert!(lp.detach_external(&id).unwrap().is_some());
    }

    fn detach_from_inside_its_callback(lp: &Loop) {
        let log = Rc::new(Log::default());
        let peers: Rc<RefCell<Vec<UnixStream>>> = Rc::default();
        let (mut fake, _sock) = Fake::new(&log, socketpair_dialer(&peers));
        let slot: Rc<RefCell<Option<ExternalId<Fake>>>> = Rc::default();
        let s = slot.clone();
        let results: Rc<RefCell<Vec<String>>> = Rc::default();
        let r = results.clone();
        fake.on_read = Some(Box::new(move |lp: &Loop| {
            let id = s.borrow().clone().unwrap();
            let busy = lp.with_external(&id, |_| ()).unwrap_err();
            r.borrow_mut().push(format!("{:?}", busy.kind()));
            let detached = lp.detach_external(&id).unwrap();
            r.borrow_mut().push(format!("detached: {}", detached.is_some()));
        }));
        let inode = socket_inode(fake.fd.unwrap());
        let id = lp.attach_external(fake, every(10_000)).unwrap();
        *slot.borrow_mut() = Some(id.clone());
        peers.borrow_mut()[0].write_all(b"q").unwrap();
        run_until(lp, || log.dropped.get());
        assert_eq!(*results.borrow(), ["ResourceBusy", "detached: false"]);
        // Read once, then dropped when its callback returned; nothing else keeps the loop.
        assert_eq!(log.readable.get(), 1);
        assert_eq!(*log.got.borrow(), b"q");
        assert!(!lp.run_once().unwrap());
        assert_eq!(fds_of(inode), 1, "the loop's duplicate was not closed");
        assert_eq!(lp.detach_external(&id).unwrap_err().kind(), io::ErrorKind::NotFound);
        slot.borrow_mut().take();
    }

    fn detach_from_outside_keeps_the_fd(lp: &Loop) {
        let log = Rc::new(Log::default());
        let peers: Rc<RefCell<Vec<UnixStream>>> = Rc::default();
        let (fake, _sock) = Fake::new(&log, socketpair_dialer(&peers));
        let inode = socket_inode(fake.fd.unwrap());
        assert_eq!(fds_of(inode), 1);
        let id = lp.attach_external(fake, every(5)).unwrap();
        // The loop watches a duplicate of its own.
        assert_eq!(fds_of(inode), 2);
        run_until(lp, || log.housekeeping.get() >= 2);
        let lib = lp.detach_external(&id).unwrap().expect("not in use");
        assert_eq!(fds_of(inode), 1, "the loop's duplicate was not closed");
        assert!(!log.dropped.get());
        let fd = lib.fd.unwrap();
        assert!(is_open(fd), "fdloop closed the library's fd");
        peers.borrow_mut()[0].write_all(b"after").unwrap();
        assert!(!lp.run_once().unwrap(), "something of the source is left in the loop");
        assert_eq!(log.readable.get(), 0);
        // The socket still works for its owner.
        let mut buf = [0u8; 5];
        lib.sock.borrow_mut().as_mut().unwrap().read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"after");
        assert_eq!(lp.with_external(&id, |_| ()).unwrap_err().kind(), io::ErrorKind::NotFound);
        drop(lib);
        assert!(log.dropped.get());
    }

    fn panic_in_a_callback_detaches(lp: &Loop) {
        let log = Rc::new(Log::default());
        let peers: Rc<RefCell<Vec<UnixStream>>> = Rc::default();
        let (mut fake, _sock) = Fake::new(&log, socketpair_dialer(&peers));
        fake.panic_on_read = true;
        let inode = socket_inode(fake.fd.unwrap());
        let id = lp.attach_external(fake, every(10_000)).unwrap();
        peers.borrow_mut()[0].write_all(b"p").unwrap();
        let r = panic::catch_unwind(AssertUnwindSafe(|| lp.run_for(Duration::from_secs(10))));
        assert!(r.is_err(), "the panic did not reach run");
        assert!(log.dropped.get());
        // The socket itself lives on in the test's handle; the loop's duplicate is gone.
        assert_eq!(fds_of(inode), 1);
        assert_eq!(lp.detach_external(&id).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(!lp.run_once().unwrap(), "something of the source is left in the loop");
    }

    fn bad_input_and_foreign_ids(lp: &Loop) {
        let log = Rc::new(Log::default());
        let peers: Rc<RefCell<Vec<UnixStream>>> = Rc::default();
        let (fake, _sock) = Fake::new(&log, socketpair_dialer(&peers));
        let err = lp.attach_external(fake, every(0)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(log.dropped.get());

        let (fake, _sock) = Fake::new(&log, socketpair_dialer(&peers));
        let id = lp.attach_external(fake, every(10_000)).unwrap();
        let other = Loop::builder().backend(fdloop::BackendChoice::Epoll).build().unwrap();
        assert_eq!(other.detach_external(&id).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(lp.detach_external(&id).unwrap().is_some());
        // Dropping the loop drops an attached source (and never closes its fd itself).
        let (fake, sock) = Fake::new(&log, socketpair_dialer(&peers));
        let fd = sock.borrow().as_ref().unwrap().as_raw_fd();
        log.dropped.set(false);
        let id = other.attach_external(fake, every(10_000)).unwrap();
        let inode = socket_inode(fd);
        assert_eq!(fds_of(inode), 2);
        drop(other);
        assert!(log.dropped.get());
        assert_eq!(fds_of(inode), 1, "the loop's duplicate was not closed");
        assert!(is_open(fd), "the loop closed the library's fd");
        assert!(format!("{id:?}").contains("attached: false"));
    }
}

/// The inode number of the socket `fd`.
fn socket_inode(fd: RawFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .unwrap()
        .ino()
}

/// How many fds of this process name the socket with inode `inode`.
fn fds_of(inode: u64) -> usize {
    let name = format!("socket:[{inode}]");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == name))
        .count()
}

/// The epoll sets of this process that have a registration for the file with inode `inode`
/// (from `/proc/self/fdinfo`), as `(epoll fd, registered fd number)`.
fn epoll_watchers(inode: u64) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:[eventpoll]" {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{name}")) else {
            continue;
        };
        for line in info.lines().filter(|l| l.starts_with("tfd:")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let ino = words
                .iter()
                .position(|w| w.starts_with("ino:"))
                .and_then(|i| u64::from_str_radix(words[i].trim_start_matches("ino:"), 16).ok());
            if ino == Some(inode) {
                found.push((name.clone(), words[1].to_string()));
            }
        }
    }
    found
}

/// A reconnection over TCP loopback: the loop follows the new fd, and lets go of the old
/// socket (its peer sees the end of the connection).
fn reconnect(lp: &Loop, order: Reconnect) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dial = Box::new(move || -> Box<dyn Stream> {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nonblocking(true).unwrap();
        Box::new(s)
    });
    let log = Rc::new(Log::default());
    let (fake, _sock) = Fake::new(&log, dial);
    let first_fd = fake.fd.unwrap();
    let id = lp.attach_external(fake, every(5)).unwrap();
    let (mut s1, _) = listener.accept().unwrap();
    s1.write_all(b"a").unwrap();
    run_until(lp, || *log.got.borrow() == b"a");

    lp.with_external(&id, |lib| lib.reconnect = Some(order))
        .unwrap();
    run_until(lp, || log.connections.get() == 2);
    let (mut s2, _) = listener.accept().unwrap();
    let second_fd = lp.with_external(&id, |lib| lib.fd.unwrap()).unwrap();
    if let Reconnect::OpenThenClose = order {
        assert_ne!(first_fd, second_fd);
    }
    s2.write_all(b"b").unwrap();
    run_until(lp, || *log.got.borrow() == b"ab");

    // Nothing of the loop keeps the old socket open.
    s1.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_closed_by_peer(&mut s1);
    // And the new one is watched for writing too.
    lp.with_external(&id, |lib| lib.out.extend_from_slice(b"out"))
        .unwrap();
    s2.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    run_until(lp, || {
        drain(&mut s2, &mut got);
        got == b"out"
    });
    assert!(log.errors.borrow().is_empty(), "{:?}", log.errors.borrow());
    assert!(lp.detach_external(&id).unwrap().is_some());
}
