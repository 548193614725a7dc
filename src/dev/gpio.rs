//! GPIO lines: the character device ([`cdev`], the current interface) and the sysfs interface
//! ([`sysfs`], obsolete since Linux 4.8 but still common on boards and in old images).
//!
//! | | [`cdev`]: `/dev/gpiochipN` | [`sysfs`]: `/sys/class/gpio` |
//! |---|---|---|
//! | naming a line | chip + offset on the chip | one global number (changes with probe order) |
//! | edges | every edge is a record, with a timestamp and sequence numbers | "it changed" (`POLLPRI`); changes before the re-read coalesce, no timestamp |
//! | several lines | one request, values read and written at once | one directory per line |
//! | bias, debounce, drive | yes | no |
//! | release | closing the request fd | `unexport` (a line stays exported if the program dies) |
//! | kernel | v2 uAPI: Linux 5.10+, `CONFIG_GPIO_CDEV` | `CONFIG_GPIO_SYSFS` |
//!
//! Both are usable from fibers (blocking-looking calls that suspend only the fiber:
//! [`cdev::LineRequest::read_edge_event`], [`sysfs::Pin::wait_edge`]) and from callbacks
//! ([`cdev::LineRequest::try_read_edge_event`] with [`Loop::start_poll`](crate::Loop::start_poll),
//! [`sysfs::Pin::watch`]), on both backends. `examples/gpio.rs` prints the edges of a line given
//! on the command line, with either interface.
//!
//! ```no_run
//! use fdloop::dev::gpio::cdev::{Chip, EdgeDetection, LineConfig};
//! use fdloop::Loop;
//!
//! let lp = Loop::new()?;
//! lp.spawn(|| {
//!     let chip = Chip::open("/dev/gpiochip0").unwrap();
//!     let config = LineConfig::input().edge_detection(EdgeDetection::Both);
//!     let mut req = chip.request_lines(&[17], &config, "button").unwrap();
//!     loop {
//!         let ev = req.read_edge_event().unwrap(); // suspends this fiber only
//!         println!("line {} {:?} at {} ns", ev.offset, ev.kind, ev.timestamp_ns);
//!     }
//! });
//! lp.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # What is tested, and how
//!
//! The reference test machine's kernel (Linux 6.18) has no GPIO support at all (`CONFIG_GPIOLIB`
//! off, no loadable modules, no configfs), so neither `gpio-sim` nor `gpio-mockup` can provide
//! a chip there, and `/sys/class/gpio` does not exist. `tests/gpio.rs` checks:
//!
//! * the `#[repr(C)]` ioctl structures: their sizes (also asserted at compile time against
//!   the kernel header's), key field offsets, and the ioctl numbers; the encoding of a
//!   [`cdev::LineConfig`] into a request (flags, output values, debounce) and its validation
//!   (unit tests in `cdev`);
//! * the edge-event record decoder ([`cdev::decode_edge_event`]) with hand-made records,
//!   including truncated and malformed ones, and arbitrary bytes of every length up to 100;
//! * on both backends, [`cdev::LineRequest::read_edge_event`] (fiber, with a timeout) and
//!   [`cdev::LineRequest::try_read_edge_event`] (callback, 20 events drained in one
//!   callback), fed with records written into a pipe adopted with
//!   [`cdev::LineRequest::from_fd`] — the same fd-level path as a kernel request fd;
//! * the error for a GPIO number that does not exist ("gpio 9999: no such GPIO (export
//!   failed: …)"), and [`cdev::Chip::open`] on a missing path and on a file that is not a
//!   GPIO chip;
//! * the sysfs attribute logic (export, direction, edge, active_low, value, unexport, and the
//!   errors of [`sysfs::Pin::wait_edge`] and [`sysfs::Pin::watch`]) against a directory tree
//!   built in a temporary directory ([`sysfs::SysfsGpio::at`]);
//! * a real chip, on both backends: with `gpio-sim` available in configfs, a simulated chip
//!   is created and chip info, line info, a busy line, edge events (driven through the
//!   simulator's `pull` attribute) and output values are checked; with only some
//!   `/dev/gpiochip*`, chip and line info; with neither, the test prints "skipped: no
//!   /dev/gpiochip*" and passes.
//!
//! The `POLLPRI` path that a sysfs `value` file uses (kernfs notifications, re-read from
//! offset 0) is exercised for real with the cgroup v2 `cgroup.events` file in
//! `tests/pollpri.rs` (see [`super::kernfs`]).

pub mod cdev;
pub mod sysfs;
