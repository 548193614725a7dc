//! The sysfs GPIO interface (`/sys/class/gpio`): obsolete since Linux 4.8, but still what many
//! boards, images and scripts use. Prefer [`super::cdev`] where the kernel has it.
//!
//! A line is [`export`]ed by its global number, which makes a directory `gpioN` with the
//! attribute files `direction`, `edge`, `active_low` and `value`. With `edge` set to something
//! other than `none`, the `value` file announces each change with `POLLPRI`;
//! [`Pin::wait_edge`] (fibers) and [`Pin::watch`] (callbacks) wait for it through
//! [`crate::dev::kernfs::Attribute`] and re-read the value from offset 0,
//! as the kernel's documentation asks. Changes that happen before the re-read coalesce, and
//! carry no timestamp: use the character device when every edge matters.
//!
//! A line stays exported after the program exits; [`unexport`] it when done. A [`Pin`] does not
//! unexport on drop (another program may be using the line).
//!
//! ```no_run
//! use fdloop::dev::gpio::sysfs::{self, Direction, Edge};
//! use fdloop::Loop;
//!
//! let lp = Loop::new()?;
//! lp.spawn(|| {
//!     let pin = sysfs::export(17).unwrap();
//!     pin.set_direction(Direction::In).unwrap();
//!     pin.set_edge(Edge::Both).unwrap();
//!     loop {
//!         let high = pin.wait_edge(None).unwrap(); // suspends this fiber only
//!         println!("gpio 17 is now {}", if high { "high" } else { "low" });
//!     }
//! });
//! lp.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! What is tested, and how: see [the parent module](super#what-is-tested-and-how).

use std::cell::Cell;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dev::kernfs::{self, Attribute};
use crate::Loop;

/// Where the kernel puts the sysfs GPIO interface.
pub const DEFAULT_ROOT: &str = "/sys/class/gpio";

/// A line's direction, as written to its `direction` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// An input.
    In,
    /// An output (initially low).
    Out,
    /// An output, initially high (set atomically, without a glitch to low).
    High,
    /// An output, initially low.
    Low,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::High => "high",
            Direction::Low => "low",
        }
    }
}

/// Which changes of an input's value make its `value` file notify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Edge {
    /// None: [`Pin::wait_edge`] would wait forever.
    None,
    /// Low to high.
    Rising,
    /// High to low.
    Falling,
    /// Both.
    Both,
}

impl Edge {
    fn as_str(self) -> &'static str {
        match self {
            Edge::None => "none",
            Edge::Rising => "rising",
            Edge::Falling => "falling",
            Edge::Both => "both",
        }
    }

    fn parse(s: &str) -> Option<Edge> {
        match s {
            "none" => Some(Edge::None),
            "rising" => Some(Edge::Rising),
            "falling" => Some(Edge::Falling),
            "both" => Some(Edge::Both),
            _ => None,
        }
    }
}

/// The sysfs GPIO interface under a root directory: [`DEFAULT_ROOT`], or another one (a
/// container's bind mount, a test tree).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysfsGpio {
    root: PathBuf,
}

impl Default for SysfsGpio {
    fn default() -> SysfsGpio {
        SysfsGpio::new()
    }
}

/// Exports GPIO `number` under [`DEFAULT_ROOT`] and opens it: see [`SysfsGpio::export`].
///
/// # Errors
///
/// As for [`SysfsGpio::export`].
pub fn export(number: u32) -> io::Result<Pin> {
    SysfsGpio::new().export(number)
}

/// Unexports GPIO `number` under [`DEFAULT_ROOT`]: see [`SysfsGpio::unexport`].
///
/// # Errors
///
/// As for [`SysfsGpio::unexport`].
pub fn unexport(number: u32) -> io::Result<()> {
    SysfsGpio::new().unexport(number)
}

impl SysfsGpio {
    /// The interface at [`DEFAULT_ROOT`].
    pub fn new() -> SysfsGpio {
        SysfsGpio::at(DEFAULT_ROOT)
    }

    /// The interface at `root` (a directory with `export`, `unexport` and `gpioN`).
    pub fn at(root: impl Into<PathBuf>) -> SysfsGpio {
        SysfsGpio { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn pin_dir(&self, number: u32) -> PathBuf {
        self.root.join(format!("gpio{number}"))
    }

    /// Exports GPIO `number` (writes it to `export`) and opens it. A line that is already
    /// exported is opened as it is.
    ///
    /// # Errors
    ///
    /// * `NotFound`, "gpio N: no such GPIO (export failed: …)", when the kernel refuses the
    ///   number (`EINVAL`), when the interface does not exist here (no `CONFIG_GPIO_SYSFS`; the
    ///   message says so), or when `gpioN` did not appear;
    /// * `ResourceBusy`, "gpio N: busy …", when a kernel driver or a character-device user
    ///   holds the line;
    /// * `PermissionDenied` without the rights to write `export`;
    /// * the errors of [`SysfsGpio::open`].
    pub fn export(&self, number: u32) -> io::Result<Pin> {
        let export = self.root.join("export");
        let dir = self.pin_dir(number);
        if let Err(e) = fs::write(&export, number.to_string()) {
            let no_such = |detail: String| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("gpio {number}: no such GPIO (export failed: {detail})"),
                )
            };
            return match e.raw_os_error() {
                Some(libc::EBUSY) if dir.exists() => self.open(number),
                Some(libc::EBUSY) => Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "gpio {number}: busy (export failed: {e}): a kernel driver or a user of \
                         the GPIO character device holds the line"
                    ),
                )),
                Some(libc::ENOENT) if !self.root.exists() => Err(no_such(format!(
                    "{}: {e}; this kernel has no sysfs GPIO interface (CONFIG_GPIO_SYSFS): use \
                     the character device, fdloop::dev::gpio::cdev",
                    export.display()
                ))),
                Some(libc::EACCES) | Some(libc::EPERM) => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "gpio {number}: export failed: {}: {e} (GPIO access usually needs root \
                         or membership of the group udev gives /sys/class/gpio)",
                        export.display()
                    ),
                )),
                Some(libc::EINVAL) | Some(libc::ENOENT) | Some(libc::ENODEV) => {
                    Err(no_such(e.to_string()))
                }
                _ => Err(io::Error::new(
                    e.kind(),
                    format!("gpio {number}: export failed: {}: {e}", export.display()),
                )),
            };
        }
        if !dir.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "gpio {number}: no such GPIO (export failed: {} did not appear)",
                    dir.display()
                ),
            ));
        }
        self.open(number)
    }

    /// Unexports GPIO `number` (writes it to `unexport`). Its [`Pin`]s keep their open
    /// `value` file, whose reads then fail.
    ///
    /// # Errors
    ///
    /// `NotFound` ("gpio N: not exported …") when the kernel refuses (`EINVAL`); the errors of
    /// writing the `unexport` file.
    pub fn unexport(&self, number: u32) -> io::Result<()> {
        let path = self.root.join("unexport");
        fs::write(&path, number.to_string()).map_err(|e| match e.raw_os_error() {
            Some(libc::EINVAL) => io::Error::new(
                io::ErrorKind::NotFound,
                format!("gpio {number}: not exported (unexport failed: {e})"),
            ),
            _ => io::Error::new(
                e.kind(),
                format!("gpio {number}: unexport failed: {}: {e}", path.display()),
            ),
        })
    }

    /// Opens GPIO `number`, which must be exported already. The `value` file is opened for
    /// reading and writing, or for reading only when writing is not permitted (then
    /// [`Pin::set_value`] fails).
    ///
    /// # Errors
    ///
    /// `NotFound` ("gpio N: not exported") when `gpioN` does not exist; the errors of opening
    /// its `value` file.
    pub fn open(&self, number: u32) -> io::Result<Pin> {
        let dir = self.pin_dir(number);
        if !dir.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "gpio {number}: not exported ({} does not exist)",
                    dir.display()
                ),
            ));
        }
        let path = dir.join("value");
        let value = match Attribute::open_writable(&path) {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Attribute::open(&path)?,
            Err(e) => return Err(e),
        };
        Ok(Pin {
            number,
            dir,
            value,
            edge: Cell::new(None),
        })
    }
}

/// An exported sysfs GPIO line. Its `value` file stays open; the other attributes are opened
/// when used. All reads and writes are sysfs accesses, done inline (they take microseconds).
#[derive(Debug)]
pub struct Pin {
    number: u32,
    dir: PathBuf,
    value: Attribute,
    /// The edge last set or read through this pin.
    edge: Cell<Option<Edge>>,
}

impl Pin {
    /// The GPIO number.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The line's directory (`/sys/class/gpio/gpioN`).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The open `value` attribute.
    pub fn value_attribute(&self) -> &Attribute {
        &self.value
    }

    fn read_attr(&self, name: &str) -> io::Result<String> {
        let path = self.dir.join(name);
        fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("gpio {}: reading {}: {e}", self.number, path.display()),
                )
            })
    }

    fn write_attr(&self, name: &str, value: &str) -> io::Result<()> {
        let path = self.dir.join(name);
        fs::write(&path, value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "gpio {}: writing {value:?} to {}: {e}",
                    self.number,
                    path.display()
                ),
            )
        })
    }

    fn unexpected(&self, name: &str, got: &str) -> io::Error {
        unexpected(self.number, name, got)
    }

    /// The direction: [`Direction::In`] or [`Direction::Out`].
    ///
    /// # Errors
    ///
    /// Errors reading `direction`; `InvalidData` for an unexpected content.
    pub fn direction(&self) -> io::Result<Direction> {
        match self.read_attr("direction")?.as_str() {
            "in" => Ok(Direction::In),
            "out" => Ok(Direction::Out),
            other => Err(self.unexpected("direction", other)),
        }
    }

    /// Sets the direction ([`Direction::High`]/[`Direction::Low`]: output with that initial
    /// value).
    ///
    /// # Errors
    ///
    /// Errors writing `direction`; the kernel refuses some changes (`EPERM` when the line's
    /// direction is fixed, `EIO` …).
    pub fn set_direction(&self, direction: Direction) -> io::Result<()> {
        self.write_attr("direction", direction.as_str())
    }

    /// Which edges make `value` notify.
    ///
    /// # Errors
    ///
    /// Errors reading `edge` (it does not exist for lines that cannot interrupt);
    /// `InvalidData` for an unexpected content.
    pub fn edge(&self) -> io::Result<Edge> {
        let s = self.read_attr("edge")?;
        let edge = Edge::parse(&s).ok_or_else(|| self.unexpected("edge", &s))?;
        self.edge.set(Some(edge));
        Ok(edge)
    }

    /// Sets which edges make `value` notify (the line must be an input).
    ///
    /// # Errors
    ///
    /// Errors writing `edge`: `EIO` or `EINVAL` when the line cannot interrupt or is an output.
    pub fn set_edge(&self, edge: Edge) -> io::Result<()> {
        self.write_attr("edge", edge.as_str())?;
        self.edge.set(Some(edge));
        Ok(())
    }

    /// Whether the line is active-low (`value` is then inverted).
    ///
    /// # Errors
    ///
    /// Errors reading `active_low`; `InvalidData` for an unexpected content.
    pub fn active_low(&self) -> io::Result<bool> {
        match self.read_attr("active_low")?.as_str() {
            "0" => Ok(false),
            "1" => Ok(true),
            other => Err(self.unexpected("active_low", other)),
        }
    }

    /// Makes the line active-low or active-high.
    ///
    /// # Errors
    ///
    /// Errors writing `active_low`.
    pub fn set_active_low(&self, active_low: bool) -> io::Result<()> {
        self.write_attr("active_low", if active_low { "1" } else { "0" })
    }

    /// The value (`true`: active), read from offset 0 of the open `value` file.
    ///
    /// # Errors
    ///
    /// Read errors (`ENODEV` after the line was unexported …); `InvalidData` for an unexpected
    /// content.
    pub fn value(&self) -> io::Result<bool> {
        let mut buf = [0u8; 8];
        let n = self.value.read_raw(&mut buf)?;
        parse_value(self.number, &buf[..n])
    }

    /// Drives an output line.
    ///
    /// # Errors
    ///
    /// `EPERM` for an input; `EBADF` when `value` could only be opened read-only.
    pub fn set_value(&self, value: bool) -> io::Result<()> {
        self.value
            .write_value(if value { "1" } else { "0" })
            .map_err(|e| io::Error::new(e.kind(), format!("gpio {}: {e}", self.number)))
    }

    fn check_edge(&self) -> io::Result<()> {
        let edge = match self.edge.get() {
            Some(e) => e,
            None => self.edge()?,
        };
        if edge == Edge::None {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "gpio {}: edge is \"none\", so no change is ever reported: call \
                     Pin::set_edge first",
                    self.number
                ),
            ));
        }
        Ok(())
    }

    /// Waits for the next edge allowed by [`Pin::set_edge`] and returns the value read just
    /// after it. Suspends only the calling fiber. An edge that happened since the last read of
    /// the value (including before this call) ends the wait at once.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the edge is [`Edge::None`]; `WouldBlock` when `timeout` passed; the
    /// errors of [`kernfs::Attribute::wait_change`] and [`Pin::value`].
    ///
    /// # Panics
    ///
    /// Outside a fiber: from callbacks use [`Pin::watch`].
    pub fn wait_edge(&self, timeout: Option<Duration>) -> io::Result<bool> {
        crate::dev::eventfd::assert_fiber("gpio::sysfs::Pin::wait_edge", "Pin::watch");
        self.check_edge()?;
        let mut buf = [0u8; 8];
        let n = self.value.wait_change_raw(&mut buf, timeout)?;
        parse_value(self.number, &buf[..n])
    }

    /// Calls `callback` with the new value after each edge allowed by [`Pin::set_edge`],
    /// through [`kernfs::watch`]. The watch owns the pin; stop it with [`kernfs::Watch::stop`].
    /// After an error has been passed to `callback`, the watch has stopped.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the edge is [`Edge::None`]; the errors of [`kernfs::watch`].
    pub fn watch<F>(self, lp: &Loop, mut callback: F) -> io::Result<kernfs::Watch>
    where
        F: FnMut(&Loop, io::Result<bool>) + 'static,
    {
        self.check_edge()?;
        let number = self.number;
        kernfs::watch(lp, self.value, move |lp, r| {
            callback(lp, r.and_then(|s| parse_value(number, s.as_bytes())))
        })
    }
}

fn unexpected(number: u32, name: &str, got: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("gpio {number}: unexpected {name} {got:?}"),
    )
}

/// `value` holds "0" or "1" and a newline.
fn parse_value(number: u32, buf: &[u8]) -> io::Result<bool> {
    match buf.first() {
        Some(b'0') => Ok(false),
        Some(b'1') => Ok(true),
        _ => Err(unexpected(number, "value", &String::from_utf8_lossy(buf))),
    }
}

impl AsFd for Pin {
    /// The `value` file.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.value.as_fd()
    }
}

impl AsRawFd for Pin {
    /// The `value` file.
    fn as_raw_fd(&self) -> RawFd {
        self.value.as_raw_fd()
    }
}
