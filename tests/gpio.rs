//! GPIO (`fdloop::dev::gpio`): the uAPI structures and ioctl numbers, the edge-event decoder,
//! edge events read through a `LineRequest` (fed from a pipe: the same fd-level path as a
//! kernel request fd) on both backends from fibers and callbacks, sysfs errors and attribute
//! handling against a directory tree, and a real chip when one exists — made with `gpio-sim`
//! through configfs where the kernel has it, otherwise any `/dev/gpiochip*`; without either,
//! that test prints "skipped: no /dev/gpiochip*" and passes.

mod common;

use std::cell::{Cell, RefCell};
use std::fs;
use std::io;
use std::mem::{align_of, size_of};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use fdloop::dev::gpio::cdev::{
    self, decode_edge_event, raw, Chip, EdgeDetection, EdgeEvent, EdgeKind, LineConfig,
    LineRequest, EDGE_EVENT_SIZE,
};
use fdloop::dev::gpio::sysfs::{self, Direction, Edge, SysfsGpio};
use fdloop::{Interest, Loop, Timer};

/// A `struct gpio_v2_line_event` as the kernel writes it.
fn record(ts: u64, id: u32, offset: u32, seqno: u32, line_seqno: u32) -> [u8; 48] {
    let mut r = [0u8; 48];
    r[0..8].copy_from_slice(&ts.to_ne_bytes());
    r[8..12].copy_from_slice(&id.to_ne_bytes());
    r[12..16].copy_from_slice(&offset.to_ne_bytes());
    r[16..20].copy_from_slice(&seqno.to_ne_bytes());
    r[20..24].copy_from_slice(&line_seqno.to_ne_bytes());
    r
}

fn event(ts: u64, kind: EdgeKind, offset: u32, seqno: u32, line_seqno: u32) -> EdgeEvent {
    EdgeEvent {
        offset,
        kind,
        timestamp_ns: ts,
        seqno,
        line_seqno,
    }
}

#[test]
fn uapi_struct_sizes_and_ioctl_numbers() {
    // include/uapi/linux/gpio.h
    assert_eq!(size_of::<raw::gpiochip_info>(), 68);
    assert_eq!(size_of::<raw::gpio_v2_line_attribute>(), 16);
    assert_eq!(size_of::<raw::gpio_v2_line_config_attribute>(), 24);
    assert_eq!(size_of::<raw::gpio_v2_line_config>(), 272);
    assert_eq!(size_of::<raw::gpio_v2_line_request>(), 592);
    assert_eq!(size_of::<raw::gpio_v2_line_values>(), 16);
    assert_eq!(size_of::<raw::gpio_v2_line_event>(), 48);
    assert_eq!(size_of::<raw::gpio_v2_line_info>(), 256);
    assert_eq!(EDGE_EVENT_SIZE, 48);
    // __aligned_u64 members: 8-byte alignment on every architecture.
    assert_eq!(align_of::<raw::gpio_v2_line_request>(), 8);
    assert_eq!(align_of::<raw::gpio_v2_line_event>(), 8);
    // Field offsets the kernel relies on.
    let req = raw::gpio_v2_line_request::zeroed();
    let base = &req as *const _ as usize;
    assert_eq!(&req.consumer as *const _ as usize - base, 256);
    assert_eq!(&req.config as *const _ as usize - base, 288);
    assert_eq!(&req.num_lines as *const _ as usize - base, 560);
    assert_eq!(&req.fd as *const _ as usize - base, 588);
    // _IOR / _IOWR(0xB4, nr, size) with the generic encoding (x86-64, arm64, riscv …).
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert_eq!(raw::GPIO_GET_CHIPINFO_IOCTL, 0x8044_B401);
        assert_eq!(raw::GPIO_V2_GET_LINEINFO_IOCTL, 0xC100_B405);
        assert_eq!(raw::GPIO_V2_GET_LINE_IOCTL, 0xC250_B407);
        assert_eq!(raw::GPIO_V2_LINE_SET_CONFIG_IOCTL, 0xC110_B40D);
        assert_eq!(raw::GPIO_V2_LINE_GET_VALUES_IOCTL, 0xC010_B40E);
        assert_eq!(raw::GPIO_V2_LINE_SET_VALUES_IOCTL, 0xC010_B40F);
    }
}

#[test]
fn edge_event_decoder() {
    let r = record(123_456_789, 1, 17, 1, 1);
    assert_eq!(
        decode_edge_event(&r).unwrap(),
        event(123_456_789, EdgeKind::Rising, 17, 1, 1)
    );
    let f = record(u64::MAX, 2, 0, u32::MAX, 7);
    assert_eq!(
        decode_edge_event(&f).unwrap(),
        event(u64::MAX, EdgeKind::Falling, 0, u32::MAX, 7)
    );
    // Padding is reserved: ignored. Bytes after the first record are ignored.
    let mut padded = [0xFFu8; 60];
    padded[..24].copy_from_slice(&r[..24]);
    assert_eq!(decode_edge_event(&padded).unwrap().offset, 17);
    // Truncated records and unknown ids are errors, not panics.
    for len in [0, 1, 8, 24, 47] {
        let e = decode_edge_event(&r[..len]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("truncated"), "{e}");
    }
    for id in [0, 3, u32::MAX] {
        let e = decode_edge_event(&record(1, id, 2, 3, 4)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains(&format!("id {id}")), "{e}");
    }
    // Every length and many byte patterns: never a panic.
    let mut x = 0x9E37_79B9u32;
    for len in 0..=100 {
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let _ = decode_edge_event(&buf);
    }
}

/// A pipe whose read end is adopted as a line request for `offsets`.
fn fake_request(offsets: &[u32]) -> (LineRequest, OwnedFd) {
    let (r, w) = common::pipe();
    (LineRequest::from_fd(r, offsets).unwrap(), w)
}

fn write_records(w: &OwnedFd, records: &[[u8; 48]]) {
    let bytes: Vec<u8> = records.iter().flatten().copied().collect();
    common::write_fd(w, &bytes);
}

backend_tests! {
    fn edge_events_in_a_fiber(lp: &Loop) {
        let (mut req, w) = fake_request(&[5, 6]);
        assert_eq!(req.offsets(), &[5, 6]);
        would_block(req.try_read_edge_event());
        // Two records in one read, then one more later, then a malformed one and a good one.
        write_records(&w, &[record(10, 1, 5, 1, 1), record(20, 2, 6, 2, 1)]);
        let w = Rc::new(w);
        let w2 = w.clone();
        lp.start_timer(Timer::after(Duration::from_millis(5)), move |_, _| {
            write_records(&w2, &[record(30, 1, 6, 3, 2)]);
        });
        let w3 = w.clone();
        let h = lp.spawn(move || {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(req.read_edge_event().unwrap());
            }
            write_records(&w3, &[record(40, 9, 5, 4, 2), record(50, 2, 5, 5, 3)]);
            let bad = req.read_edge_event().unwrap_err();
            assert_eq!(bad.kind(), io::ErrorKind::InvalidData);
            got.push(req.read_edge_event().unwrap());
            // A timeout ends a wait with WouldBlock.
            req.set_timeout(Some(Duration::from_millis(10))).unwrap();
            let quiet = req.read_edge_event().map_err(|e| e.kind());
            (got, quiet)
        });
        lp.run().unwrap();
        let (got, quiet) = h.join().unwrap();
        assert_eq!(
            got,
            vec![
                event(10, EdgeKind::Rising, 5, 1, 1),
                event(20, EdgeKind::Falling, 6, 2, 1),
                event(30, EdgeKind::Rising, 6, 3, 2),
                event(50, EdgeKind::Falling, 5, 5, 3),
            ]
        );
        assert_eq!(quiet, Err(io::ErrorKind::WouldBlock));
    }

    fn edge_events_from_a_callback(lp: &Loop) {
        let (req, w) = fake_request(&[17]);
        let fd = req.as_raw_fd();
        let got: Rc<RefCell<Vec<EdgeEvent>>> = Rc::default();
        let calls = Rc::new(Cell::new(0));
        let (g, c) = (got.clone(), calls.clone());
        let req = RefCell::new(req);
        lp.start_poll(fd, Interest::READABLE, move |lp, _| {
            c.set(c.get() + 1);
            let mut req = req.borrow_mut();
            loop {
                match req.try_read_edge_event() {
                    Ok(ev) => g.borrow_mut().push(ev),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            if g.borrow().len() == 20 {
                lp.detach(fd).unwrap();
            }
        }).unwrap();
        // The writer stays open (a closed one would be end-of-file).
        let w = Rc::new(w);
        let w2 = w.clone();
        // 20 events (more than one read's worth of 16) in one write, then nothing.
        let records: Vec<[u8; 48]> =
            (1..=20).map(|i| record(i * 100, 1 + (i as u32 % 2), 17, i as u32, i as u32)).collect();
        lp.start_timer(Timer::after(Duration::from_millis(2)), move |_, _| write_records(&w2, &records));
        lp.run().unwrap();
        let got = got.borrow();
        assert_eq!(got.len(), 20);
        assert!(got.iter().enumerate().all(|(i, e)| e.seqno == i as u32 + 1 && e.offset == 17));
        assert_eq!(got[0].kind, EdgeKind::Falling);
        assert_eq!(got[1].kind, EdgeKind::Rising);
        assert_eq!(calls.get(), 1, "the callback drained everything at once");
    }

    fn sysfs_gpio_that_does_not_exist(lp: &Loop) {
        let _ = lp;
        let err = sysfs::export(9999).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{msg}");
        assert!(msg.starts_with("gpio 9999: no such GPIO (export failed: "), "{msg}");
        if !Path::new(sysfs::DEFAULT_ROOT).exists() {
            assert!(msg.contains("CONFIG_GPIO_SYSFS"), "{msg}");
        }
    }

    fn sysfs_attributes_on_a_directory_tree(lp: &Loop) {
        let root = common::temp_path("gpio-sysfs");
        let pin_dir = root.join("gpio17");
        fs::create_dir_all(&pin_dir).unwrap();
        for (name, content) in [("export", ""), ("unexport", "")] {
            fs::write(root.join(name), content).unwrap();
        }
        for (name, content) in [("direction", "in\n"), ("edge", "none\n"), ("active_low", "0\n"), ("value", "1\n")] {
            fs::write(pin_dir.join(name), content).unwrap();
        }
        let gpio = SysfsGpio::at(&root);
        let pin = gpio.export(17).unwrap();
        assert_eq!(fs::read_to_string(root.join("export")).unwrap(), "17");
        assert_eq!(pin.number(), 17);
        assert_eq!(pin.path(), pin_dir);
        assert_eq!(pin.direction().unwrap(), Direction::In);
        pin.set_direction(Direction::High).unwrap();
        assert_eq!(fs::read_to_string(pin_dir.join("direction")).unwrap(), "high");
        fs::write(pin_dir.join("direction"), "out\n").unwrap();
        assert_eq!(pin.direction().unwrap(), Direction::Out);
        assert!(!pin.active_low().unwrap());
        pin.set_active_low(true).unwrap();
        assert!(pin.active_low().unwrap());
        assert!(pin.value().unwrap());
        pin.set_value(false).unwrap();
        assert!(!pin.value().unwrap());
        assert_eq!(pin.edge().unwrap(), Edge::None);

        // Waiting with edge "none" would never end: refused with advice.
        let h = lp.spawn(move || {
            let e = pin.wait_edge(None).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("set_edge"), "{e}");
            pin.set_edge(Edge::Both).unwrap();
            // A regular file cannot notify: a clear error instead of a hang.
            let e = pin.wait_edge(None).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
            pin
        });
        lp.run().unwrap();
        let pin = h.join().unwrap();
        assert_eq!(fs::read_to_string(pin_dir.join("edge")).unwrap(), "both");
        fs::write(pin_dir.join("edge"), "sideways\n").unwrap();
        assert_eq!(pin.edge().unwrap_err().kind(), io::ErrorKind::InvalidData);
        fs::write(pin_dir.join("edge"), "none\n").unwrap();
        assert_eq!(pin.edge().unwrap(), Edge::None);
        assert_eq!(pin.watch(lp, |_, _| {}).unwrap_err().kind(), io::ErrorKind::InvalidInput);

        // Numbers whose directory never appears, or that were never exported.
        let e = gpio.export(18).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("gpio 18: no such GPIO (export failed: "), "{e}");
        let e = gpio.open(19).unwrap_err();
        assert!(e.to_string().contains("gpio 19: not exported"), "{e}");
        gpio.unexport(17).unwrap();
        assert_eq!(fs::read_to_string(root.join("unexport")).unwrap(), "17");
        fs::remove_dir_all(&root).unwrap();
    }

    fn chardev_open_errors(lp: &Loop) {
        let _ = lp;
        let e = Chip::open("/dev/null").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("not a GPIO character device"), "{e}");
        let e = Chip::open("/dev/gpiochip999").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("/dev/gpiochip999"), "{e}");
        // A line request fd that is not one: value ioctls fail, cleanly.
        let (req, _w) = fake_request(&[1]);
        assert!(req.get_values().is_err());
        assert_eq!(req.get_value(2).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert!(LineRequest::from_fd(common::pipe().0, &[]).is_err());
    }

    fn real_chip(lp: &Loop) {
        let sim = GpioSim::create();
        let path = match (&sim, cdev::chip_paths().unwrap_or_default().first()) {
            (Some(sim), _) => sim.dev.clone(),
            (None, Some(p)) => p.clone(),
            (None, None) => {
                eprintln!("skipped: no /dev/gpiochip* (and no gpio-sim in configfs to create one)");
                return;
            }
        };
        let chip = Chip::open(&path).unwrap();
        let info = chip.chip_info().unwrap();
        assert!(info.lines > 0, "{info:?}");
        let line = chip.line_info(0).unwrap();
        assert_eq!(line.offset, 0);
        assert_eq!(chip.line_info(info.lines).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let Some(sim) = sim else {
            eprintln!("{}: {info:?}; no gpio-sim: line requests not exercised", path.display());
            return;
        };
        // An input with edge detection; gpio-sim's pull attribute drives it.
        let config = LineConfig::input().edge_detection(EdgeDetection::Both);
        let mut req = chip.request_lines(&[0], &config, "fdloop-test").unwrap();
        assert!(chip.line_info(0).unwrap().is_used());
        assert_eq!(chip.line_info(0).unwrap().consumer, "fdloop-test");
        let e = chip.request_lines(&[0], &config, "second").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy, "{e}");
        assert!(e.to_string().contains("fdloop-test"), "{e}");
        assert!(!req.get_value(0).unwrap());
        let pull = sim.pull(0);
        let h = lp.spawn(move || {
            fs::write(&pull, "pull-up").unwrap();
            let rise = req.read_edge_event().unwrap();
            fs::write(&pull, "pull-down").unwrap();
            let fall = req.read_edge_event().unwrap();
            (rise, fall, req)
        });
        lp.run().unwrap();
        let (rise, fall, req) = h.join().unwrap();
        assert_eq!((rise.kind, rise.offset, rise.seqno), (EdgeKind::Rising, 0, 1));
        assert_eq!((fall.kind, fall.line_seqno), (EdgeKind::Falling, 2));
        assert!(fall.timestamp_ns >= rise.timestamp_ns);
        assert!(!req.get_value(0).unwrap());
        drop(req);
        // An output: values read back.
        let out = chip.request_lines(&[1, 2], &LineConfig::output_bits(0b10), "fdloop-out").unwrap();
        assert_eq!(out.get_values().unwrap(), vec![false, true]);
        out.set_values(&[(1, true), (2, false)]).unwrap();
        assert_eq!(out.get_values().unwrap(), vec![true, false]);
        drop(out);
        drop(chip);
        drop(sim);
    }
}

fn would_block<T: std::fmt::Debug>(r: io::Result<T>) {
    assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
}

/// A simulated chip made through gpio-sim's configfs interface
/// (Documentation/admin-guide/gpio/gpio-sim.rst), removed on drop.
struct GpioSim {
    config: PathBuf,
    /// `/dev/gpiochipN`.
    dev: PathBuf,
    /// `/sys/devices/platform/<dev_name>/<chip_name>`.
    sysfs: PathBuf,
}

impl GpioSim {
    fn create() -> Option<GpioSim> {
        let base = Path::new("/sys/kernel/config/gpio-sim");
        if !base.is_dir() {
            return None;
        }
        let config = base.join(format!(
            "fdloop-test-{}",
            std::process::id() as u64 * 10 + next()
        ));
        let bank = config.join("bank0");
        let made = (|| -> io::Result<GpioSim> {
            fs::create_dir(&config)?;
            fs::create_dir(&bank)?;
            fs::write(bank.join("num_lines"), "4")?;
            fs::write(config.join("live"), "1")?;
            let chip = fs::read_to_string(bank.join("chip_name"))?
                .trim()
                .to_owned();
            let dev_name = fs::read_to_string(config.join("dev_name"))?
                .trim()
                .to_owned();
            Ok(GpioSim {
                config: config.clone(),
                dev: Path::new("/dev").join(&chip),
                sysfs: Path::new("/sys/devices/platform").join(dev_name).join(chip),
            })
        })();
        match made {
            Ok(sim) => Some(sim),
            Err(e) => {
                eprintln!("gpio-sim: cannot create a chip: {e}");
                let _ = fs::remove_dir(&bank);
                let _ = fs::remove_dir(&config);
                None
            }
        }
    }

    fn pull(&self, offset: u32) -> PathBuf {
        self.sysfs.join(format!("sim_gpio{offset}")).join("pull")
    }
}

fn next() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for GpioSim {
    fn drop(&mut self) {
        let _ = fs::write(self.config.join("live"), "0");
        let _ = fs::remove_dir(self.config.join("bank0"));
        let _ = fs::remove_dir(&self.config);
    }
}
