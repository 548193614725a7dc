//! Serial ports and ttys, over real pty pairs in raw mode, on both backends. There is no serial
//! hardware here: line settings are stored by ptys but have no effect.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::Duration;

use fdloop::dev::serial::{
    pty_pair, set_raw, DataBits, FlowControl, Parity, SerialPort, Settings, StopBits,
};
use fdloop::{Interest, Loop};

const MIB: usize = 1 << 20;

/// Byte `i` of a stream: a pattern that catches lost, repeated and reordered chunks, and
/// covers every byte value (including `\r`, `\n`, `0x03` and XON/XOFF, which a cooked tty
/// would change).
fn pattern(seed: u8, i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 11)) as u8 ^ seed
}

fn check(seed: u8, data: &[u8]) {
    assert_eq!(data.len(), MIB);
    for (i, &b) in data.iter().enumerate() {
        assert_eq!(b, pattern(seed, i), "byte {i} differs");
    }
}

fn pattern_buf(seed: u8) -> Vec<u8> {
    (0..MIB).map(|i| pattern(seed, i)).collect()
}

/// Writes `data` in uneven chunks.
fn write_chunks(mut w: impl Write, data: &[u8]) {
    let mut off = 0;
    let mut step = 1;
    while off < data.len() {
        let end = (off + step).min(data.len());
        w.write_all(&data[off..end]).unwrap();
        off = end;
        step = step * 3 % 65_537 + 1;
    }
}

/// Reads until `n` bytes came, or end-of-file.
fn read_n(mut r: impl Read, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 7_000];
    while out.len() < n {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        out.extend_from_slice(&buf[..k]);
    }
    out
}

fn expect_err<T: std::fmt::Debug>(r: io::Result<T>) -> io::Error {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

backend_tests! {
    fn fibers_one_mib_each_way(lp: &Loop) {
        let (master, slave) = pty_pair().unwrap();
        assert!(master.is_pty_master());
        assert!(!slave.is_pty_master());
        let master = Rc::new(master);
        let slave = Rc::new(slave);

        let (m, s) = (master.clone(), slave.clone());
        let w1 = lp.spawn(move || write_chunks(&*m, &pattern_buf(1)));
        let w2 = lp.spawn(move || write_chunks(&*s, &pattern_buf(2)));
        let (m, s) = (master.clone(), slave.clone());
        let r1 = lp.spawn(move || read_n(&*s, MIB));
        let r2 = lp.spawn(move || read_n(&*m, MIB));
        lp.run().unwrap();
        w1.join().unwrap();
        w2.join().unwrap();
        check(1, &r1.join().unwrap());
        check(2, &r2.join().unwrap());
    }

    fn callbacks_one_mib_each_way(lp: &Loop) {
        let (master, slave) = pty_pair().unwrap();
        let ends = [Rc::new(master), Rc::new(slave)];
        // Per end: what it sends (seed) and what it received.
        let received: [Rc<RefCell<Vec<u8>>>; 2] = Default::default();
        let done = Rc::new(Cell::new(0));
        for (me, seed) in [(0usize, 10u8), (1, 20)] {
            let port = ends[me].clone();
            let out = pattern_buf(seed);
            let got = received[me].clone();
            let done = done.clone();
            let mut sent = 0usize;
            let mut buf = vec![0u8; 5_000];
            let fd = port.as_raw_fd();
            lp.start_poll(fd, Interest::READABLE | Interest::WRITABLE, move |lp, ready| {
                assert!(ready.watch_error().is_none(), "{ready:?}");
                if ready.is_writable() && sent < MIB {
                    match port.try_write(&out[sent..(sent + 3_001).min(MIB)]) {
                        Ok(n) => sent += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("write: {e}"),
                    }
                    if sent == MIB {
                        lp.stop_poll(fd, Interest::WRITABLE).unwrap();
                    }
                }
                if ready.is_readable() {
                    loop {
                        match port.try_read(&mut buf) {
                            Ok(0) => panic!("unexpected end-of-file"),
                            Ok(n) => got.borrow_mut().extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => panic!("read: {e}"),
                        }
                    }
                    if got.borrow().len() == MIB {
                        done.set(done.get() + 1);
                        lp.stop_poll(fd, Interest::READABLE).unwrap();
                    }
                }
            })
            .unwrap();
        }
        lp.run().unwrap();
        assert_eq!(done.get(), 2);
        check(20, &received[0].borrow());
        check(10, &received[1].borrow());
    }

    fn hangup_is_eof_in_fibers(lp: &Loop) {
        let (master, slave) = pty_pair().unwrap();
        let reader = lp.spawn(move || {
            let mut all = Vec::new();
            (&master).read_to_end(&mut all).unwrap(); // Ok(0) ends it
            // Still end-of-file on the next read, not an error.
            assert_eq!((&master).read(&mut [0u8; 8]).unwrap(), 0);
            all
        });
        lp.spawn(move || {
            (&slave).write_all(b"last words").unwrap();
            drop(slave); // the only slave fd: the master hangs up
        });
        lp.run().unwrap();
        assert_eq!(reader.join().unwrap(), b"last words");
    }

    fn hangup_is_eof_in_callbacks(lp: &Loop) {
        let (master, slave) = pty_pair().unwrap();
        let mut slave = Some(slave);
        // Data written before the hang-up is read first.
        slave.as_ref().unwrap().try_write(b"bye").unwrap();
        let master = Rc::new(master);
        let got = Rc::new(RefCell::new(Vec::new()));
        let eof = Rc::new(Cell::new(false));
        let (m, g, e) = (master.clone(), got.clone(), eof.clone());
        let fd = master.as_raw_fd();
        lp.start_poll(fd, Interest::READABLE, move |lp, _ready| {
            // Close the slave from the loop, after the first readiness.
            drop(slave.take());
            let mut buf = [0u8; 64];
            loop {
                match m.try_read(&mut buf) {
                    Ok(0) => {
                        e.set(true);
                        lp.detach(fd).unwrap();
                        return;
                    }
                    Ok(n) => g.borrow_mut().extend_from_slice(&buf[..n]),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                    Err(err) => panic!("read: {err}"),
                }
            }
        })
        .unwrap();
        lp.run().unwrap();
        assert!(eof.get());
        assert_eq!(&*got.borrow(), b"bye");
    }

    fn hangup_is_eof_with_owned_buffers(lp: &Loop) {
        let (master, slave) = pty_pair().unwrap();
        drop(slave);
        let master = Rc::new(master);
        let m = master.clone();
        let result = Rc::new(RefCell::new(None));
        let r = result.clone();
        master.read_owned(lp, vec![0u8; 16], move |_lp, res, buf| {
            *r.borrow_mut() = Some((res.map_err(|e| e.to_string()), buf));
            drop(m);
        });
        lp.run().unwrap();
        let (res, buf) = result.borrow_mut().take().unwrap();
        assert_eq!(res, Ok(0));
        assert!(buf.is_empty());
    }

    fn master_write_after_hangup_is_broken_pipe(lp: &Loop) {
        let (master, slave) = pty_pair().unwrap();
        drop(slave);
        let h = lp.spawn(move || {
            let chunk = [0u8; 4096];
            // The kernel takes a few KiB into the gone slave's buffer, then only reports HUP.
            loop {
                if let Err(e) = (&master).write(&chunk) {
                    return e;
                }
            }
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap().kind(), io::ErrorKind::BrokenPipe);
    }

    fn slave_reads_eof_when_master_closes(lp: &Loop) {
        let (master, slave) = pty_pair().unwrap();
        master.try_write(b"abc").unwrap();
        let h = lp.spawn(move || {
            let mut buf = [0u8; 3];
            (&slave).read_exact(&mut buf).unwrap();
            // Closing the master hangs the slave up (and discards what it has not read).
            drop(master);
            let mut rest = Vec::new();
            (&slave).read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty());
            // Writing to a hung-up slave fails.
            let e = (&slave).write(b"x").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO));
            buf
        });
        lp.run().unwrap();
        assert_eq!(&h.join().unwrap(), b"abc");
    }

    fn read_timeout_fires_and_port_stays_usable(lp: &Loop) {
        let (master, slave) = pty_pair().unwrap();
        let master = Rc::new(master);
        master.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        assert_eq!(master.read_timeout(), Some(Duration::from_millis(20)));
        let m = master.clone();
        let h = lp.spawn(move || {
            let mut buf = [0u8; 16];
            let e = (&*m).read(&mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
            // Now the other end writes; the next read gets it.
            (&slave).write_all(b"late").unwrap();
            let n = (&*m).read(&mut buf).unwrap();
            let got = buf[..n].to_vec();
            drop(slave);
            got
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), b"late");
        assert_eq!(
            master.set_read_timeout(Some(Duration::ZERO)).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    fn loop_read_and_write_with_owned_buffers(lp: &Loop) {
        let (master, slave) = pty_pair().unwrap();
        let master = Rc::new(master);
        let slave = Rc::new(slave);
        let got = Rc::new(RefCell::new(Vec::new()));
        let (m, s, g) = (master.clone(), slave.clone(), got.clone());
        lp.write(&*slave, b"owned buffers".to_vec(), move |lp, res, _buf| {
            assert_eq!(res.unwrap(), 13);
            let m2 = m.clone();
            lp.read(&*m, vec![0u8; 64], move |_lp, res, buf| {
                assert_eq!(res.unwrap(), buf.len());
                g.borrow_mut().extend_from_slice(&buf);
                drop((m2, s));
            });
        });
        lp.run().unwrap();
        assert_eq!(&*got.borrow(), b"owned buffers");
    }

    fn settings_are_applied_and_read_back(lp: &Loop) {
        let _ = lp;
        let (master, slave) = pty_pair().unwrap();
        let path = slave.path().unwrap().to_path_buf();
        assert!(path.starts_with("/dev/pts"), "{path:?}");
        let s = Settings::new()
            .baud_rate(250_000) // not a standard Bxxx rate: BOTHER
            .stop_bits(StopBits::Two)
            .flow_control(FlowControl::Software)
            .exclusive(false);
        let port = SerialPort::open(&path, &s).unwrap();
        assert_eq!(port.path(), Some(path.as_path()));
        assert_eq!(port.settings().unwrap(), s);
        port.set_baud_rate(9_600).unwrap();
        port.set_stop_bits(StopBits::One).unwrap();
        port.set_flow_control(FlowControl::Hardware).unwrap();
        port.set_flow_control(FlowControl::None).unwrap();
        assert_eq!(port.baud_rate().unwrap(), 9_600);
        assert_eq!(
            port.settings().unwrap(),
            Settings::new().baud_rate(9_600).exclusive(false)
        );
        port.configure(&Settings::new()).unwrap();
        assert_eq!(port.baud_rate().unwrap(), 115_200);
        assert_eq!(
            port.set_baud_rate(0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );

        // The Linux pty driver forces 8 data bits and no parity: the read-back catches the
        // change that `tcsetattr` would have reported as a success.
        let e = port.set_data_bits(DataBits::Seven).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains("Eight data bits instead of Seven"),
            "{e}"
        );
        let e = port.set_parity(Parity::Even).unwrap_err();
        assert!(e.to_string().contains("parity None instead of Even"), "{e}");
        let e = expect_err(SerialPort::open(
            &path,
            &Settings::new().parity(Parity::Odd).exclusive(false),
        ));
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().starts_with(&*path.to_string_lossy()), "{e}");

        // A pty has no modem lines and no output queue.
        assert_eq!(
            port.write_dtr(true).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        assert_eq!(
            port.read_cts().unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        assert_eq!(port.bytes_to_write().unwrap(), 0);
        set_raw(&master).unwrap();
        port.set_raw().unwrap();
    }

    fn open_by_path_exchanges_data(lp: &Loop) {
        // Open the slave by its path, as a program opens a serial port; the master plays the
        // device. The master stays open until the end: closing it would hang the slave up and
        // discard what the slave had not read yet.
        let (master, slave) = pty_pair().unwrap();
        let master = Rc::new(master);
        let path = slave.path().unwrap().to_path_buf();
        let port = SerialPort::open(&path, &Settings::new()).unwrap();
        let h = lp.spawn(move || {
            (&port).write_all(b"PING\n").unwrap();
            port.drain().unwrap(); // a pty has no output queue: returns at once
            let mut buf = [0u8; 5];
            (&port).read_exact(&mut buf).unwrap();
            buf
        });
        let m = master.clone();
        lp.spawn(move || {
            let mut buf = [0u8; 5];
            (&*m).read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"PING\n");
            (&*m).write_all(b"PONG\n").unwrap();
        });
        lp.run().unwrap();
        assert_eq!(&h.join().unwrap(), b"PONG\n");
        drop((slave, master));
    }

    fn second_exclusive_open_is_busy(lp: &Loop) {
        let _ = lp;
        let (_master, slave) = pty_pair().unwrap();
        let path = slave.path().unwrap().to_path_buf();
        let first = SerialPort::open(&path, &Settings::new()).unwrap();
        let e = expect_err(SerialPort::open(&path, &Settings::new()));
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy, "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
        assert!(msg.contains("busy"), "{msg}");
        // A shared open cannot join an exclusive one either.
        let e = expect_err(SerialPort::open(&path, &Settings::new().exclusive(false)));
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy, "{e}");
        drop(first);
        // Once the first is closed, the port can be opened again.
        drop(SerialPort::open(&path, &Settings::new()).unwrap());
    }
}

#[test]
fn missing_device_names_the_path() {
    let e = expect_err(SerialPort::open(
        "/dev/ttyUSB9-fdloop-missing",
        &Settings::new(),
    ));
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    let msg = e.to_string();
    assert!(
        msg.starts_with("/dev/ttyUSB9-fdloop-missing: No such file or directory"),
        "{msg}"
    );
}

#[test]
fn regular_file_is_not_a_terminal() {
    let path = common::temp_path("serial-regular");
    std::fs::write(&path, b"not a tty").unwrap();
    let e = expect_err(SerialPort::open(&path, &Settings::new()));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let msg = e.to_string();
    assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
    assert!(msg.contains("is not a terminal"), "{msg}");
}

#[test]
fn dev_null_is_not_a_terminal() {
    let e = expect_err(SerialPort::open("/dev/null", &Settings::new()));
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(
        e.to_string().starts_with("/dev/null is not a terminal"),
        "{e}"
    );
}

#[test]
fn zero_baud_is_refused() {
    let (_master, slave) = pty_pair().unwrap();
    let e = expect_err(SerialPort::open(
        slave.path().unwrap(),
        &Settings::new().baud_rate(0),
    ));
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn adopting_a_socket_is_refused() {
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = OwnedFd::from(a);
    let raw = fd.as_raw_fd();
    let e = expect_err(SerialPort::from_pty(fd));
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(
        e.to_string(),
        format!("fd {raw} (a socket) is not a terminal (serial ports and ptys are; ENOTTY)")
    );
    let (a, _b) = UnixStream::pair().unwrap();
    let e = expect_err(SerialPort::try_from(OwnedFd::from(a)));
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    let (a, _b) = UnixStream::pair().unwrap();
    assert_eq!(set_raw(&a).unwrap_err().kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn adopting_pty_fds_and_giving_them_back() {
    let (master, slave) = pty_pair().unwrap();
    let slave_path = slave.path().unwrap().to_path_buf();
    // Round trip through OwnedFd: the master is detected again, the slave gets its name.
    let master = SerialPort::from_pty(OwnedFd::from(master)).unwrap();
    let slave = SerialPort::try_from(OwnedFd::from(slave)).unwrap();
    assert!(master.is_pty_master());
    assert!(!slave.is_pty_master());
    assert_eq!(master.path(), None);
    assert_eq!(slave.path(), Some(slave_path.as_path()));
    slave.try_write(b"x").unwrap();
    let mut buf = [0u8; 4];
    // Raw mode and non-blocking survived the round trip: no echo, one byte, then EAGAIN.
    let mut n = 0;
    while n == 0 {
        match master.try_read(&mut buf) {
            Ok(k) => n = k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(&buf[..n], b"x");
    assert_eq!(
        slave.try_read(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
}

#[test]
#[should_panic(expected = "must be called inside a fiber")]
fn fiber_read_outside_a_fiber_panics() {
    let (master, _slave) = pty_pair().unwrap();
    let _ = (&master).read(&mut [0u8; 1]);
}
