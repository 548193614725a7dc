//! The GPIO character device, v2 uAPI (Linux 5.10+): `/dev/gpiochipN`.
//!
//! [`Chip::open`] a chip, ask for [`Chip::chip_info`] and [`Chip::line_info`], then
//! [`Chip::request_lines`]: the kernel hands back a [`LineRequest`] with its own fd, through
//! which the lines' values are read and written ([`LineRequest::get_values`],
//! [`LineRequest::set_values`]) and, with edge detection configured, edge events are read —
//! one record per edge, with a timestamp (`CLOCK_MONOTONIC`) and sequence numbers, so no edge
//! goes unnoticed as long as the kernel's buffer does not overflow (a gap in
//! [`EdgeEvent::seqno`] shows that it did). Closing the request releases the lines.
//!
//! The request fd is non-blocking and readable when events are queued:
//! [`LineRequest::read_edge_event`] suspends a fiber until one is, and
//! [`LineRequest::try_read_edge_event`] serves callbacks registered with
//! [`Loop::start_poll`](crate::Loop::start_poll) and
//! [`Interest::READABLE`](crate::Interest::READABLE).
//!
//! ```no_run
//! use fdloop::dev::gpio::cdev::{Chip, EdgeDetection, LineConfig};
//! use fdloop::{Interest, Loop};
//! use std::os::fd::AsRawFd;
//!
//! let lp = Loop::new()?;
//! let chip = Chip::open("/dev/gpiochip0")?;
//! println!("{:?}", chip.chip_info()?);
//! let config = LineConfig::input().edge_detection(EdgeDetection::Both);
//! let mut req = chip.request_lines(&[17, 18], &config, "doorbell")?;
//! let fd = req.as_raw_fd();
//! lp.start_poll(fd, Interest::READABLE, move |_lp, _ready| {
//!     // Drain what is queued; the poll is level-triggered.
//!     while let Ok(ev) = req.try_read_edge_event() {
//!         println!("{ev:?}");
//!     }
//! })?;
//! lp.run()?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The kernel's structures and ioctl numbers are in [`raw`], with their sizes checked at
//! compile time against the kernel header's. What is tested, and how: see
//! [the parent module](super#what-is-tested-and-how).

use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::eventfd::{assert_fiber, check_timeout, retry_in_fiber};
use crate::sys::{cvt, set_nonblocking, LoopFd};
use crate::Interest;

/// The kernel's GPIO uAPI (`include/uapi/linux/gpio.h`): constants, `#[repr(C)]` structures
/// and ioctl request numbers, for callers who need what [`Chip`] and [`LineRequest`] do not
/// wrap. Field names follow the header.
#[allow(non_camel_case_types)]
pub mod raw {
    use std::mem::size_of;

    /// Size of the name and label arrays (`GPIO_MAX_NAME_SIZE`).
    pub const GPIO_MAX_NAME_SIZE: usize = 32;
    /// Most lines in one request (`GPIO_V2_LINES_MAX`).
    pub const GPIO_V2_LINES_MAX: usize = 64;
    /// Most configuration attributes in one request (`GPIO_V2_LINE_NUM_ATTRS_MAX`).
    pub const GPIO_V2_LINE_NUM_ATTRS_MAX: usize = 10;

    /// The line is in use (by a driver or another request).
    pub const GPIO_V2_LINE_FLAG_USED: u64 = 1 << 0;
    /// The line is active when physically low.
    pub const GPIO_V2_LINE_FLAG_ACTIVE_LOW: u64 = 1 << 1;
    /// Input.
    pub const GPIO_V2_LINE_FLAG_INPUT: u64 = 1 << 2;
    /// Output.
    pub const GPIO_V2_LINE_FLAG_OUTPUT: u64 = 1 << 3;
    /// Detect rising (inactive to active) edges.
    pub const GPIO_V2_LINE_FLAG_EDGE_RISING: u64 = 1 << 4;
    /// Detect falling (active to inactive) edges.
    pub const GPIO_V2_LINE_FLAG_EDGE_FALLING: u64 = 1 << 5;
    /// Open-drain output.
    pub const GPIO_V2_LINE_FLAG_OPEN_DRAIN: u64 = 1 << 6;
    /// Open-source output.
    pub const GPIO_V2_LINE_FLAG_OPEN_SOURCE: u64 = 1 << 7;
    /// Pull-up bias.
    pub const GPIO_V2_LINE_FLAG_BIAS_PULL_UP: u64 = 1 << 8;
    /// Pull-down bias.
    pub const GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN: u64 = 1 << 9;
    /// Bias disabled.
    pub const GPIO_V2_LINE_FLAG_BIAS_DISABLED: u64 = 1 << 10;

    /// [`gpio_v2_line_attribute::id`]: the union holds `flags`.
    pub const GPIO_V2_LINE_ATTR_ID_FLAGS: u32 = 1;
    /// [`gpio_v2_line_attribute::id`]: the union holds `values`.
    pub const GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES: u32 = 2;
    /// [`gpio_v2_line_attribute::id`]: the union holds `debounce_period_us`.
    pub const GPIO_V2_LINE_ATTR_ID_DEBOUNCE: u32 = 3;

    /// [`gpio_v2_line_event::id`] of a rising edge.
    pub const GPIO_V2_LINE_EVENT_RISING_EDGE: u32 = 1;
    /// [`gpio_v2_line_event::id`] of a falling edge.
    pub const GPIO_V2_LINE_EVENT_FALLING_EDGE: u32 = 2;

    /// `struct gpiochip_info`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct gpiochip_info {
        /// The kernel's name of the chip (NUL-padded).
        pub name: [u8; GPIO_MAX_NAME_SIZE],
        /// A functional name, may be empty (NUL-padded).
        pub label: [u8; GPIO_MAX_NAME_SIZE],
        /// Number of lines.
        pub lines: u32,
    }

    /// `struct gpio_v2_line_values`: `bits` and `mask` are indexed by position in the
    /// request's `offsets`.
    #[repr(C, align(8))]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct gpio_v2_line_values {
        /// Values (1: active).
        pub bits: u64,
        /// Which lines to get or set.
        pub mask: u64,
    }

    /// The anonymous union of `struct gpio_v2_line_attribute`.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    pub union gpio_v2_line_attribute_value {
        /// With `GPIO_V2_LINE_ATTR_ID_FLAGS`.
        pub flags: u64,
        /// With `GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES`.
        pub values: u64,
        /// With `GPIO_V2_LINE_ATTR_ID_DEBOUNCE`.
        pub debounce_period_us: u32,
    }

    /// `struct gpio_v2_line_attribute`.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    pub struct gpio_v2_line_attribute {
        /// `GPIO_V2_LINE_ATTR_ID_*`.
        pub id: u32,
        /// Zero.
        pub padding: u32,
        /// The value, as chosen by `id`.
        pub value: gpio_v2_line_attribute_value,
    }

    /// `struct gpio_v2_line_config_attribute`.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    pub struct gpio_v2_line_config_attribute {
        /// The attribute.
        pub attr: gpio_v2_line_attribute,
        /// The lines it applies to, by position in the request's `offsets`.
        pub mask: u64,
    }

    /// `struct gpio_v2_line_config`.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    pub struct gpio_v2_line_config {
        /// Default flags of all lines (`GPIO_V2_LINE_FLAG_*`).
        pub flags: u64,
        /// How many of `attrs` are used.
        pub num_attrs: u32,
        /// Zero.
        pub padding: [u32; 5],
        /// Per-line attributes.
        pub attrs: [gpio_v2_line_config_attribute; GPIO_V2_LINE_NUM_ATTRS_MAX],
    }

    /// `struct gpio_v2_line_request`.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    pub struct gpio_v2_line_request {
        /// The lines, by offset on the chip.
        pub offsets: [u32; GPIO_V2_LINES_MAX],
        /// Consumer label (NUL-terminated).
        pub consumer: [u8; GPIO_MAX_NAME_SIZE],
        /// Configuration.
        pub config: gpio_v2_line_config,
        /// How many of `offsets` are used.
        pub num_lines: u32,
        /// Suggested event buffer size (0: the kernel's default, 16 per line).
        pub event_buffer_size: u32,
        /// Zero.
        pub padding: [u32; 5],
        /// Filled in by the kernel: the request's fd.
        pub fd: i32,
    }

    /// `struct gpio_v2_line_info`.
    #[repr(C, align(8))]
    #[derive(Clone, Copy)]
    pub struct gpio_v2_line_info {
        /// The line's name (NUL-padded), may be empty.
        pub name: [u8; GPIO_MAX_NAME_SIZE],
        /// Its consumer's label (NUL-padded), may be empty.
        pub consumer: [u8; GPIO_MAX_NAME_SIZE],
        /// The offset to ask about (filled in by the caller).
        pub offset: u32,
        /// How many of `attrs` are used.
        pub num_attrs: u32,
        /// `GPIO_V2_LINE_FLAG_*`.
        pub flags: u64,
        /// Attributes (debounce period …).
        pub attrs: [gpio_v2_line_attribute; GPIO_V2_LINE_NUM_ATTRS_MAX],
        /// Reserved.
        pub padding: [u32; 4],
    }

    /// `struct gpio_v2_line_event`: one record read from a request fd.
    #[repr(C, align(8))]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct gpio_v2_line_event {
        /// When, in nanoseconds (`CLOCK_MONOTONIC` by default).
        pub timestamp_ns: u64,
        /// `GPIO_V2_LINE_EVENT_RISING_EDGE` or `GPIO_V2_LINE_EVENT_FALLING_EDGE`.
        pub id: u32,
        /// The line's offset on the chip.
        pub offset: u32,
        /// Sequence number among all the request's events.
        pub seqno: u32,
        /// Sequence number among this line's events.
        pub line_seqno: u32,
        /// Reserved.
        pub padding: [u32; 6],
    }

    // The sizes in the kernel's header (x86-64, arm64 and every other architecture: the header
    // pads explicitly so that they are the same everywhere).
    const _: () = assert!(size_of::<gpiochip_info>() == 68);
    const _: () = assert!(size_of::<gpio_v2_line_values>() == 16);
    const _: () = assert!(size_of::<gpio_v2_line_attribute>() == 16);
    const _: () = assert!(size_of::<gpio_v2_line_config_attribute>() == 24);
    const _: () = assert!(size_of::<gpio_v2_line_config>() == 272);
    const _: () = assert!(size_of::<gpio_v2_line_request>() == 592);
    const _: () = assert!(size_of::<gpio_v2_line_info>() == 256);
    const _: () = assert!(size_of::<gpio_v2_line_event>() == 48);

    #[cfg(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))]
    mod enc {
        pub const READ: u32 = 2;
        pub const WRITE: u32 = 4;
        pub const SIZE_BITS: u32 = 13;
    }
    #[cfg(not(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "sparc",
        target_arch = "sparc64"
    )))]
    mod enc {
        pub const READ: u32 = 2;
        pub const WRITE: u32 = 1;
        pub const SIZE_BITS: u32 = 14;
    }

    /// `_IOC(dir, type, nr, size)` as in `include/uapi/asm-generic/ioctl.h` (and the
    /// architectures that override it).
    const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
        assert!(size < (1 << enc::SIZE_BITS));
        (dir << (16 + enc::SIZE_BITS)) | ((size as u32) << 16) | (ty << 8) | nr
    }

    /// `_IOR(type, nr, size)`.
    pub const fn ior(ty: u32, nr: u32, size: usize) -> u32 {
        ioc(enc::READ, ty, nr, size)
    }

    /// `_IOWR(type, nr, size)`.
    pub const fn iowr(ty: u32, nr: u32, size: usize) -> u32 {
        ioc(enc::READ | enc::WRITE, ty, nr, size)
    }

    /// `GPIO_GET_CHIPINFO_IOCTL`: `_IOR(0xB4, 0x01, struct gpiochip_info)`.
    pub const GPIO_GET_CHIPINFO_IOCTL: u32 = ior(0xB4, 0x01, size_of::<gpiochip_info>());
    /// `GPIO_V2_GET_LINEINFO_IOCTL`: `_IOWR(0xB4, 0x05, struct gpio_v2_line_info)`.
    pub const GPIO_V2_GET_LINEINFO_IOCTL: u32 = iowr(0xB4, 0x05, size_of::<gpio_v2_line_info>());
    /// `GPIO_V2_GET_LINE_IOCTL`: `_IOWR(0xB4, 0x07, struct gpio_v2_line_request)`.
    pub const GPIO_V2_GET_LINE_IOCTL: u32 = iowr(0xB4, 0x07, size_of::<gpio_v2_line_request>());
    /// `GPIO_V2_LINE_SET_CONFIG_IOCTL`: `_IOWR(0xB4, 0x0D, struct gpio_v2_line_config)`.
    pub const GPIO_V2_LINE_SET_CONFIG_IOCTL: u32 =
        iowr(0xB4, 0x0D, size_of::<gpio_v2_line_config>());
    /// `GPIO_V2_LINE_GET_VALUES_IOCTL`: `_IOWR(0xB4, 0x0E, struct gpio_v2_line_values)`.
    pub const GPIO_V2_LINE_GET_VALUES_IOCTL: u32 =
        iowr(0xB4, 0x0E, size_of::<gpio_v2_line_values>());
    /// `GPIO_V2_LINE_SET_VALUES_IOCTL`: `_IOWR(0xB4, 0x0F, struct gpio_v2_line_values)`.
    pub const GPIO_V2_LINE_SET_VALUES_IOCTL: u32 =
        iowr(0xB4, 0x0F, size_of::<gpio_v2_line_values>());

    impl gpio_v2_line_config {
        /// All zero: no flags, no attributes.
        pub const fn zeroed() -> gpio_v2_line_config {
            gpio_v2_line_config {
                flags: 0,
                num_attrs: 0,
                padding: [0; 5],
                attrs: [gpio_v2_line_config_attribute {
                    attr: gpio_v2_line_attribute {
                        id: 0,
                        padding: 0,
                        value: gpio_v2_line_attribute_value { flags: 0 },
                    },
                    mask: 0,
                }; GPIO_V2_LINE_NUM_ATTRS_MAX],
            }
        }
    }

    impl gpio_v2_line_request {
        /// All zero.
        pub const fn zeroed() -> gpio_v2_line_request {
            gpio_v2_line_request {
                offsets: [0; GPIO_V2_LINES_MAX],
                consumer: [0; GPIO_MAX_NAME_SIZE],
                config: gpio_v2_line_config::zeroed(),
                num_lines: 0,
                event_buffer_size: 0,
                padding: [0; 5],
                fd: 0,
            }
        }
    }
}

use raw::*;

/// Size of one edge-event record (`struct gpio_v2_line_event`).
pub const EDGE_EVENT_SIZE: usize = mem::size_of::<gpio_v2_line_event>();

/// Events read per `read(2)` at most.
const EVENTS_PER_READ: usize = 16;

/// The paths of the GPIO chips (`/dev/gpiochip*`), in order of their number.
///
/// # Errors
///
/// Errors listing `/dev`.
pub fn chip_paths() -> io::Result<Vec<PathBuf>> {
    let mut chips: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix("gpiochip")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    chips.sort();
    Ok(chips.into_iter().map(|(_, p)| p).collect())
}

fn name_from(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// What [`Chip::chip_info`] says about a chip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChipInfo {
    /// The kernel's name (`gpiochip0`).
    pub name: String,
    /// A functional name (a driver or part number), may be empty.
    pub label: String,
    /// Number of lines; offsets are `0..lines`.
    pub lines: u32,
}

/// What [`Chip::line_info`] says about a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineInfo {
    /// The offset on the chip.
    pub offset: u32,
    /// The line's name (from the device tree or ACPI), may be empty.
    pub name: String,
    /// The label of whoever uses the line, may be empty.
    pub consumer: String,
    /// `GPIO_V2_LINE_FLAG_*` bits (see [`raw`]).
    pub flags: u64,
    /// The debounce period, when one is set.
    pub debounce: Option<Duration>,
}

impl LineInfo {
    /// Whether the line is in use (by a kernel driver or a request).
    pub fn is_used(&self) -> bool {
        self.flags & GPIO_V2_LINE_FLAG_USED != 0
    }

    /// Whether the line is an output.
    pub fn is_output(&self) -> bool {
        self.flags & GPIO_V2_LINE_FLAG_OUTPUT != 0
    }

    /// Whether the line is active-low.
    pub fn is_active_low(&self) -> bool {
        self.flags & GPIO_V2_LINE_FLAG_ACTIVE_LOW != 0
    }
}

/// A GPIO chip (`/dev/gpiochipN`).
#[derive(Debug)]
pub struct Chip {
    fd: OwnedFd,
    path: PathBuf,
}

impl Chip {
    /// Opens the chip at `path` (close-on-exec) and checks that it is one.
    ///
    /// # Errors
    ///
    /// `NotFound` (listing the chips that exist), `PermissionDenied` (GPIO access usually
    /// needs root or a `gpio` group), `InvalidInput` when `path` is not a GPIO character
    /// device.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Chip> {
        let path = path.as_ref();
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        let open = |flags| {
            // SAFETY: (FFI) `c` is a NUL-terminated path that outlives the call.
            cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })
        };
        let fd = match open(libc::O_RDWR) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => open(libc::O_RDONLY),
            other => other,
        };
        let fd = fd.map_err(|e| {
            let extra = if e.kind() == io::ErrorKind::NotFound {
                let chips = chip_paths().unwrap_or_default();
                if chips.is_empty() {
                    " (there is no /dev/gpiochip* here)".to_owned()
                } else {
                    let list: Vec<String> = chips.iter().map(|p| p.display().to_string()).collect();
                    format!(" (chips here: {})", list.join(", "))
                }
            } else {
                String::new()
            };
            io::Error::new(e.kind(), format!("{}: {e}{extra}", path.display()))
        })?;
        // SAFETY: (FFI) open returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let chip = Chip {
            fd,
            path: path.to_path_buf(),
        };
        chip.chip_info().map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::ENODEV) => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a GPIO character device ({e})", path.display()),
            ),
            _ => e,
        })?;
        Ok(chip)
    }

    /// The path it was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The chip's name, label and number of lines (`GPIO_GET_CHIPINFO_IOCTL`).
    ///
    /// # Errors
    ///
    /// `ioctl(2)` errors (`ENODEV` when the chip was removed).
    pub fn chip_info(&self) -> io::Result<ChipInfo> {
        let mut info = gpiochip_info {
            name: [0; GPIO_MAX_NAME_SIZE],
            label: [0; GPIO_MAX_NAME_SIZE],
            lines: 0,
        };
        // SAFETY: (FFI) `info` is a gpiochip_info, the type this request writes; it outlives the
        // call.
        cvt(unsafe { libc::ioctl(self.fd.as_raw_fd(), GPIO_GET_CHIPINFO_IOCTL as _, &mut info) })?;
        Ok(ChipInfo {
            name: name_from(&info.name),
            label: name_from(&info.label),
            lines: info.lines,
        })
    }

    /// What the kernel knows about line `offset` (`GPIO_V2_GET_LINEINFO_IOCTL`).
    ///
    /// # Errors
    ///
    /// `InvalidInput` (EINVAL) for an offset the chip does not have.
    pub fn line_info(&self, offset: u32) -> io::Result<LineInfo> {
        // SAFETY: (FFI) gpio_v2_line_info is plain old data (integers, arrays, a union of
        // integers); all-zero is a valid value.
        let mut info: gpio_v2_line_info = unsafe { mem::zeroed() };
        info.offset = offset;
        // SAFETY: (FFI) `info` is a gpio_v2_line_info, the type this request reads and writes; it
        // outlives the call.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                GPIO_V2_GET_LINEINFO_IOCTL as _,
                &mut info,
            )
        };
        cvt(r).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{}: line {offset}: {e}", self.path.display()),
            )
        })?;
        let n = (info.num_attrs as usize).min(GPIO_V2_LINE_NUM_ATTRS_MAX);
        let debounce = info.attrs[..n]
            .iter()
            .find(|a| a.id == GPIO_V2_LINE_ATTR_ID_DEBOUNCE)
            // SAFETY: (FFI) the id says the union holds debounce_period_us; every bit pattern is a
            // valid u32.
            .map(|a| Duration::from_micros(u64::from(unsafe { a.value.debounce_period_us })));
        Ok(LineInfo {
            offset: info.offset,
            name: name_from(&info.name),
            consumer: name_from(&info.consumer),
            flags: info.flags,
            debounce,
        })
    }

    /// Requests `offsets` with `config`, labelled `consumer` (shown by `gpioinfo` and in
    /// [`LineInfo::consumer`]). The lines stay requested until the [`LineRequest`] is
    /// dropped.
    ///
    /// # Errors
    ///
    /// * `InvalidInput` for a request [`LineConfig::to_raw_request`] refuses (no offsets, more
    ///   than 64, duplicates, a consumer label over 31 bytes, edge detection on an output …),
    ///   or an offset the chip does not have (the message says how many lines it has);
    /// * `ResourceBusy` when a line is in use (the message names its consumer);
    /// * other `ioctl(2)` errors (`EINVAL` for a configuration the driver cannot do, such as a
    ///   bias on a chip without pull resistors; `EIO`).
    pub fn request_lines(
        &self,
        offsets: &[u32],
        config: &LineConfig,
        consumer: &str,
    ) -> io::Result<LineRequest> {
        let mut req = config.to_raw_request(offsets, consumer)?;
        // SAFETY: (FFI) `req` is a gpio_v2_line_request, the type this request reads and writes; it
        // outlives the call.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), GPIO_V2_GET_LINE_IOCTL as _, &mut req) };
        if let Err(e) = cvt(r) {
            return Err(self.explain_request_error(offsets, e));
        }
        if req.fd <= 0 {
            return Err(io::Error::other(format!(
                "{}: the kernel returned no line request fd",
                self.path.display()
            )));
        }
        // SAFETY: (FFI) the kernel created this fd for us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(req.fd) };
        LineRequest::from_fd(fd, offsets)
    }

    fn explain_request_error(&self, offsets: &[u32], e: io::Error) -> io::Error {
        let path = self.path.display();
        match e.raw_os_error() {
            Some(libc::EBUSY) => {
                let users: Vec<String> = offsets
                    .iter()
                    .filter_map(|&o| self.line_info(o).ok())
                    .filter(|i| i.is_used())
                    .map(|i| {
                        if i.consumer.is_empty() {
                            format!("line {} (used)", i.offset)
                        } else {
                            format!("line {} (used by {:?})", i.offset, i.consumer)
                        }
                    })
                    .collect();
                io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("{path}: lines busy: {} ({e})", users.join(", ")),
                )
            }
            Some(libc::EINVAL) => {
                let lines = self.chip_info().map(|i| i.lines).unwrap_or(u32::MAX);
                if let Some(bad) = offsets.iter().find(|&&o| o >= lines) {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{path}: no line {bad}: the chip has {lines} lines (0..{lines})"),
                    )
                } else {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{path}: the chip refused the line configuration ({e})"),
                    )
                }
            }
            _ => io::Error::new(e.kind(), format!("{path}: line request failed: {e}")),
        }
    }
}

impl AsFd for Chip {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Chip {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Pull resistors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Bias {
    /// Leave as it is.
    #[default]
    AsIs,
    /// Pull up.
    PullUp,
    /// Pull down.
    PullDown,
    /// No pull.
    Disabled,
}

/// How an output drives the line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Drive {
    /// Drives both levels.
    #[default]
    PushPull,
    /// Drives low only.
    OpenDrain,
    /// Drives high only.
    OpenSource,
}

/// Which edges of an input produce events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EdgeDetection {
    /// None: no events.
    #[default]
    None,
    /// Inactive to active.
    Rising,
    /// Active to inactive.
    Falling,
    /// Both.
    Both,
}

/// The configuration of the lines of one request (the same for all of them, except the
/// initial output values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineConfig {
    /// `None`: input; `Some(bits)`: output with these initial values (bit *i* for
    /// `offsets[i]`).
    output: Option<u64>,
    active_low: bool,
    bias: Bias,
    drive: Drive,
    edge: EdgeDetection,
    debounce: Option<Duration>,
    event_buffer_size: u32,
}

impl LineConfig {
    /// Inputs.
    pub fn input() -> LineConfig {
        LineConfig {
            output: None,
            active_low: false,
            bias: Bias::AsIs,
            drive: Drive::PushPull,
            edge: EdgeDetection::None,
            debounce: None,
            event_buffer_size: 0,
        }
    }

    /// Outputs, all initially `value` (`true`: active).
    pub fn output(value: bool) -> LineConfig {
        LineConfig {
            output: Some(if value { u64::MAX } else { 0 }),
            ..LineConfig::input()
        }
    }

    /// Outputs with one initial value per line: bit *i* of `bits` for `offsets[i]`.
    pub fn output_bits(bits: u64) -> LineConfig {
        LineConfig {
            output: Some(bits),
            ..LineConfig::input()
        }
    }

    /// Active when physically low (values and edges are inverted).
    pub fn active_low(mut self, active_low: bool) -> LineConfig {
        self.active_low = active_low;
        self
    }

    /// Pull resistors.
    pub fn bias(mut self, bias: Bias) -> LineConfig {
        self.bias = bias;
        self
    }

    /// Output drive.
    pub fn drive(mut self, drive: Drive) -> LineConfig {
        self.drive = drive;
        self
    }

    /// Which edges produce events (inputs only).
    pub fn edge_detection(mut self, edge: EdgeDetection) -> LineConfig {
        self.edge = edge;
        self
    }

    /// Debounce period (inputs only; microsecond resolution; done in hardware or by the
    /// kernel).
    pub fn debounce(mut self, period: Duration) -> LineConfig {
        self.debounce = (!period.is_zero()).then_some(period);
        self
    }

    /// Suggested size of the kernel's event buffer, in events (0: the default, 16 per line).
    pub fn event_buffer_size(mut self, events: u32) -> LineConfig {
        self.event_buffer_size = events;
        self
    }

    fn invalid(msg: String) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, msg)
    }

    /// The `struct gpio_v2_line_config` for `num_lines` lines.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for edge detection, debounce or an input-only setting on outputs, for
    /// open-drain/open-source on inputs, and for a debounce period over `u32::MAX` µs.
    pub fn to_raw_config(&self, num_lines: usize) -> io::Result<gpio_v2_line_config> {
        let all = if num_lines >= 64 {
            u64::MAX
        } else {
            (1u64 << num_lines) - 1
        };
        let mut flags = match self.output {
            None => GPIO_V2_LINE_FLAG_INPUT,
            Some(_) => GPIO_V2_LINE_FLAG_OUTPUT,
        };
        if self.active_low {
            flags |= GPIO_V2_LINE_FLAG_ACTIVE_LOW;
        }
        flags |= match self.bias {
            Bias::AsIs => 0,
            Bias::PullUp => GPIO_V2_LINE_FLAG_BIAS_PULL_UP,
            Bias::PullDown => GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN,
            Bias::Disabled => GPIO_V2_LINE_FLAG_BIAS_DISABLED,
        };
        flags |= match self.edge {
            EdgeDetection::None => 0,
            EdgeDetection::Rising => GPIO_V2_LINE_FLAG_EDGE_RISING,
            EdgeDetection::Falling => GPIO_V2_LINE_FLAG_EDGE_FALLING,
            EdgeDetection::Both => GPIO_V2_LINE_FLAG_EDGE_RISING | GPIO_V2_LINE_FLAG_EDGE_FALLING,
        };
        let is_output = self.output.is_some();
        if is_output && self.edge != EdgeDetection::None {
            return Err(LineConfig::invalid(
                "edge detection needs input lines, not outputs".into(),
            ));
        }
        if is_output && self.debounce.is_some() {
            return Err(LineConfig::invalid(
                "debounce needs input lines, not outputs".into(),
            ));
        }
        match (self.drive, is_output) {
            (Drive::PushPull, _) => {}
            (_, false) => {
                return Err(LineConfig::invalid(
                    "open-drain/open-source drive needs output lines".into(),
                ))
            }
            (Drive::OpenDrain, true) => flags |= GPIO_V2_LINE_FLAG_OPEN_DRAIN,
            (Drive::OpenSource, true) => flags |= GPIO_V2_LINE_FLAG_OPEN_SOURCE,
        }
        let mut config = gpio_v2_line_config::zeroed();
        config.flags = flags;
        let mut n = 0;
        if let Some(bits) = self.output {
            config.attrs[n] = gpio_v2_line_config_attribute {
                attr: gpio_v2_line_attribute {
                    id: GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES,
                    padding: 0,
                    value: gpio_v2_line_attribute_value { values: bits & all },
                },
                mask: all,
            };
            n += 1;
        }
        if let Some(period) = self.debounce {
            let us = u32::try_from(period.as_micros().max(1)).map_err(|_| {
                LineConfig::invalid(format!("debounce period {period:?} is too long"))
            })?;
            config.attrs[n] = gpio_v2_line_config_attribute {
                attr: gpio_v2_line_attribute {
                    id: GPIO_V2_LINE_ATTR_ID_DEBOUNCE,
                    padding: 0,
                    value: gpio_v2_line_attribute_value {
                        debounce_period_us: us,
                    },
                },
                mask: all,
            };
            n += 1;
        }
        config.num_attrs = n as u32;
        Ok(config)
    }

    /// The `struct gpio_v2_line_request` that [`Chip::request_lines`] passes to the kernel.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for no offsets, more than 64, a repeated offset, a `consumer` longer
    /// than 31 bytes or containing a NUL, and the cases of [`LineConfig::to_raw_config`].
    pub fn to_raw_request(
        &self,
        offsets: &[u32],
        consumer: &str,
    ) -> io::Result<gpio_v2_line_request> {
        if offsets.is_empty() {
            return Err(LineConfig::invalid("no lines requested".into()));
        }
        if offsets.len() > GPIO_V2_LINES_MAX {
            return Err(LineConfig::invalid(format!(
                "{} lines requested; one request takes at most {GPIO_V2_LINES_MAX}",
                offsets.len()
            )));
        }
        for (i, o) in offsets.iter().enumerate() {
            if offsets[..i].contains(o) {
                return Err(LineConfig::invalid(format!("line {o} is requested twice")));
            }
        }
        if consumer.len() >= GPIO_MAX_NAME_SIZE || consumer.as_bytes().contains(&0) {
            return Err(LineConfig::invalid(format!(
                "consumer label {consumer:?}: at most {} bytes, no NUL",
                GPIO_MAX_NAME_SIZE - 1
            )));
        }
        let mut req = gpio_v2_line_request::zeroed();
        req.offsets[..offsets.len()].copy_from_slice(offsets);
        req.consumer[..consumer.len()].copy_from_slice(consumer.as_bytes());
        req.config = self.to_raw_config(offsets.len())?;
        req.num_lines = offsets.len() as u32;
        req.event_buffer_size = self.event_buffer_size;
        Ok(req)
    }
}

/// Rising or falling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EdgeKind {
    /// Inactive to active (low to high unless active-low).
    Rising,
    /// Active to inactive.
    Falling,
}

/// One edge, read from a [`LineRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EdgeEvent {
    /// The line's offset on the chip.
    pub offset: u32,
    /// Rising or falling.
    pub kind: EdgeKind,
    /// When, in nanoseconds of `CLOCK_MONOTONIC` (as the kernel measured it, close to the
    /// interrupt).
    pub timestamp_ns: u64,
    /// Sequence number among all the events of the request (from 1). A gap means the kernel's
    /// buffer overflowed and events were lost.
    pub seqno: u32,
    /// Sequence number among the events of this line (from 1).
    pub line_seqno: u32,
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes the edge-event record (`struct gpio_v2_line_event`, [`EDGE_EVENT_SIZE`] bytes, in
/// the machine's byte order) at the start of `record`. Pure and bounds-checked: any input
/// gives `Ok` or `Err`, never a panic. Bytes after the first record are ignored.
///
/// # Errors
///
/// `InvalidData` when `record` is shorter than [`EDGE_EVENT_SIZE`], or when the event id is
/// neither rising (1) nor falling (2).
pub fn decode_edge_event(record: &[u8]) -> io::Result<EdgeEvent> {
    let short = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "truncated GPIO edge event: {} bytes, a record has {EDGE_EVENT_SIZE}",
                record.len()
            ),
        )
    };
    if record.len() < EDGE_EVENT_SIZE {
        return Err(short());
    }
    let timestamp_ns = u64_at(record, 0).ok_or_else(short)?;
    let id = u32_at(record, 8).ok_or_else(short)?;
    let offset = u32_at(record, 12).ok_or_else(short)?;
    let seqno = u32_at(record, 16).ok_or_else(short)?;
    let line_seqno = u32_at(record, 20).ok_or_else(short)?;
    let kind = match id {
        GPIO_V2_LINE_EVENT_RISING_EDGE => EdgeKind::Rising,
        GPIO_V2_LINE_EVENT_FALLING_EDGE => EdgeKind::Falling,
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown GPIO edge event id {other}"),
            ))
        }
    };
    Ok(EdgeEvent {
        offset,
        kind,
        timestamp_ns,
        seqno,
        line_seqno,
    })
}

/// Lines requested from a [`Chip`], and the fd through which their values and edge events
/// pass. Dropping it releases the lines.
pub struct LineRequest {
    fd: LoopFd,
    offsets: Vec<u32>,
    /// Records read but not yet returned: `buf[pos..len]`.
    buf: [u8; EDGE_EVENT_SIZE * EVENTS_PER_READ],
    pos: usize,
    len: usize,
    timeout: Option<Duration>,
}

impl fmt::Debug for LineRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineRequest")
            .field("fd", &self.fd.as_raw_fd())
            .field("offsets", &self.offsets)
            .field(
                "buffered_events",
                &((self.len - self.pos) / EDGE_EVENT_SIZE),
            )
            .finish()
    }
}

impl LineRequest {
    /// Adopts a line-request fd obtained elsewhere (from `GPIO_V2_GET_LINE_IOCTL` called by
    /// other code), for the lines `offsets` in the order they were requested. Sets
    /// `O_NONBLOCK` on it.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for no offsets or more than 64; `fcntl(2)` errors.
    pub fn from_fd(fd: OwnedFd, offsets: &[u32]) -> io::Result<LineRequest> {
        if offsets.is_empty() || offsets.len() > GPIO_V2_LINES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a line request has 1 to {GPIO_V2_LINES_MAX} lines, not {}",
                    offsets.len()
                ),
            ));
        }
        set_nonblocking(fd.as_raw_fd())?;
        Ok(LineRequest {
            fd: LoopFd::new(fd),
            offsets: offsets.to_vec(),
            buf: [0; EDGE_EVENT_SIZE * EVENTS_PER_READ],
            pos: 0,
            len: 0,
            timeout: None,
        })
    }

    /// The requested lines, in request order (value bit *i* is `offsets()[i]`).
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }

    fn index_of(&self, offset: u32) -> io::Result<usize> {
        self.offsets
            .iter()
            .position(|&o| o == offset)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "line {offset} is not part of this request (lines {:?})",
                        self.offsets
                    ),
                )
            })
    }

    fn all_mask(&self) -> u64 {
        let n = self.offsets.len();
        if n >= 64 {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }

    /// The values of all lines as a bitmap (bit *i*: `offsets()[i]`, 1: active).
    ///
    /// # Errors
    ///
    /// `ioctl(2)` errors (`EIO` from the driver, `ENODEV` when the chip is gone).
    pub fn get_bits(&self) -> io::Result<u64> {
        let mut v = gpio_v2_line_values {
            bits: 0,
            mask: self.all_mask(),
        };
        // SAFETY: (FFI) `v` is a gpio_v2_line_values, the type this request reads and writes; it
        // outlives the call.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                GPIO_V2_LINE_GET_VALUES_IOCTL as _,
                &mut v,
            )
        })?;
        Ok(v.bits & self.all_mask())
    }

    /// The values of all lines (`true`: active), in request order.
    ///
    /// # Errors
    ///
    /// As for [`LineRequest::get_bits`].
    pub fn get_values(&self) -> io::Result<Vec<bool>> {
        let bits = self.get_bits()?;
        Ok((0..self.offsets.len())
            .map(|i| bits >> i & 1 == 1)
            .collect())
    }

    /// The value of line `offset`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when `offset` is not in the request; as for [`LineRequest::get_bits`].
    pub fn get_value(&self, offset: u32) -> io::Result<bool> {
        let i = self.index_of(offset)?;
        Ok(self.get_bits()? >> i & 1 == 1)
    }

    /// Sets the lines of `mask` to `bits` (bit *i*: `offsets()[i]`); the others keep their
    /// value.
    ///
    /// # Errors
    ///
    /// `EPERM` when a line is an input; other `ioctl(2)` errors.
    pub fn set_bits(&self, bits: u64, mask: u64) -> io::Result<()> {
        let mut v = gpio_v2_line_values {
            bits,
            mask: mask & self.all_mask(),
        };
        // SAFETY: (FFI) `v` is a gpio_v2_line_values, the type this request reads; it outlives the
        // call.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                GPIO_V2_LINE_SET_VALUES_IOCTL as _,
                &mut v,
            )
        })
        .map(drop)
    }

    /// Sets each `(offset, value)` (`true`: active) at once; other lines keep their value.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an offset not in the request; as for [`LineRequest::set_bits`].
    pub fn set_values(&self, values: &[(u32, bool)]) -> io::Result<()> {
        let (mut bits, mut mask) = (0u64, 0u64);
        for &(offset, value) in values {
            let i = self.index_of(offset)?;
            mask |= 1 << i;
            if value {
                bits |= 1 << i;
            }
        }
        self.set_bits(bits, mask)
    }

    /// Sets line `offset`.
    ///
    /// # Errors
    ///
    /// As for [`LineRequest::set_values`].
    pub fn set_value(&self, offset: u32, value: bool) -> io::Result<()> {
        self.set_values(&[(offset, value)])
    }

    /// Changes the configuration of the requested lines (`GPIO_V2_LINE_SET_CONFIG_IOCTL`),
    /// for example from input to output, without releasing them.
    ///
    /// # Errors
    ///
    /// The cases of [`LineConfig::to_raw_config`]; `ioctl(2)` errors.
    pub fn reconfigure(&self, config: &LineConfig) -> io::Result<()> {
        let mut raw = config.to_raw_config(self.offsets.len())?;
        // SAFETY: (FFI) `raw` is a gpio_v2_line_config, the type this request reads; it outlives
        // the call.
        cvt(unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                GPIO_V2_LINE_SET_CONFIG_IOCTL as _,
                &mut raw,
            )
        })
        .map(drop)
    }

    /// Sets how long [`LineRequest::read_edge_event`] may wait (`None`: forever). A read
    /// that times out fails with `WouldBlock`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a zero duration.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        check_timeout(timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// Waits for the next edge event and returns it. Suspends only the calling fiber. Events
    /// come only with edge detection configured; the kernel queues them (16 per line by
    /// default) until read.
    ///
    /// # Errors
    ///
    /// `WouldBlock` after the timeout; `InvalidData` for a malformed record; `ECANCELED` when
    /// the loop is closing; `read(2)` errors (`ENODEV` when the chip is gone).
    ///
    /// # Panics
    ///
    /// Outside a fiber: from a callback use [`LineRequest::try_read_edge_event`] with
    /// [`Loop::start_poll`](crate::Loop::start_poll).
    pub fn read_edge_event(&mut self) -> io::Result<EdgeEvent> {
        assert_fiber(
            "gpio::cdev::LineRequest::read_edge_event",
            "LineRequest::try_read_edge_event",
        );
        let fd = self.fd.as_raw_fd();
        let timeout = self.timeout;
        retry_in_fiber(fd, Interest::READABLE, timeout, || {
            self.try_read_edge_event()
        })
    }

    /// Returns the next edge event without waiting: a buffered one, or one read from the fd
    /// (which reads up to 16 at once).
    ///
    /// # Errors
    ///
    /// `WouldBlock` when no event is queued; `InvalidData` for a malformed or truncated record
    /// (the rest of that read is dropped); `read(2)` errors.
    pub fn try_read_edge_event(&mut self) -> io::Result<EdgeEvent> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
            // SAFETY: (FFI) `self.buf` is a live writable buffer of the given length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the GPIO line request fd reached end-of-file",
                ));
            }
            self.len = n as usize;
        }
        let record = &self.buf[self.pos..self.len];
        match decode_edge_event(record) {
            Ok(ev) => {
                self.pos += EDGE_EVENT_SIZE;
                Ok(ev)
            }
            Err(e) => {
                if record.len() < EDGE_EVENT_SIZE {
                    self.pos = self.len;
                } else {
                    self.pos += EDGE_EVENT_SIZE;
                }
                Err(e)
            }
        }
    }
}

impl AsFd for LineRequest {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for LineRequest {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // The values every GPIO library uses on x86-64 / arm64.
        assert_eq!(GPIO_GET_CHIPINFO_IOCTL, 0x8044_B401);
        assert_eq!(GPIO_V2_GET_LINEINFO_IOCTL, 0xC100_B405);
        assert_eq!(GPIO_V2_GET_LINE_IOCTL, 0xC250_B407);
        assert_eq!(GPIO_V2_LINE_SET_CONFIG_IOCTL, 0xC110_B40D);
        assert_eq!(GPIO_V2_LINE_GET_VALUES_IOCTL, 0xC010_B40E);
        assert_eq!(GPIO_V2_LINE_SET_VALUES_IOCTL, 0xC010_B40F);
    }

    #[test]
    fn request_encoding() {
        let cfg = LineConfig::input()
            .edge_detection(EdgeDetection::Both)
            .bias(Bias::PullUp)
            .active_low(true)
            .debounce(Duration::from_millis(5))
            .event_buffer_size(32);
        let req = cfg.to_raw_request(&[3, 7], "unit").unwrap();
        assert_eq!(&req.offsets[..3], &[3, 7, 0]);
        assert_eq!(req.num_lines, 2);
        assert_eq!(&req.consumer[..5], b"unit\0");
        assert_eq!(req.event_buffer_size, 32);
        assert_eq!(
            req.config.flags,
            GPIO_V2_LINE_FLAG_INPUT
                | GPIO_V2_LINE_FLAG_ACTIVE_LOW
                | GPIO_V2_LINE_FLAG_BIAS_PULL_UP
                | GPIO_V2_LINE_FLAG_EDGE_RISING
                | GPIO_V2_LINE_FLAG_EDGE_FALLING
        );
        assert_eq!(req.config.num_attrs, 1);
        let a = req.config.attrs[0];
        assert_eq!((a.attr.id, a.mask), (GPIO_V2_LINE_ATTR_ID_DEBOUNCE, 0b11));
        // SAFETY: (FFI) the id says the union holds debounce_period_us; every bit pattern is a
        // valid u32.
        assert_eq!(unsafe { a.attr.value.debounce_period_us }, 5000);

        let out = LineConfig::output_bits(0b101).drive(Drive::OpenDrain);
        let req = out.to_raw_request(&[1, 2, 3], "o").unwrap();
        assert_eq!(
            req.config.flags,
            GPIO_V2_LINE_FLAG_OUTPUT | GPIO_V2_LINE_FLAG_OPEN_DRAIN
        );
        let a = req.config.attrs[0];
        assert_eq!(
            (a.attr.id, a.mask),
            (GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES, 0b111)
        );
        // SAFETY: (FFI) the id says the union holds values; every bit pattern is a valid u64.
        assert_eq!(unsafe { a.attr.value.values }, 0b101);
        let all = LineConfig::output(true)
            .to_raw_request(&(0..64).collect::<Vec<_>>(), "")
            .unwrap();
        // SAFETY: (FFI) the id says the union holds values; every bit pattern is a valid u64.
        assert_eq!(unsafe { all.config.attrs[0].attr.value.values }, u64::MAX);
    }

    #[test]
    fn request_validation() {
        let bad = |r: io::Result<gpio_v2_line_request>| {
            let e = r.map(drop).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            e.to_string()
        };
        let input = LineConfig::input();
        assert!(bad(input.to_raw_request(&[], "x")).contains("no lines"));
        assert!(bad(input.to_raw_request(&(0..65).collect::<Vec<_>>(), "x")).contains("at most 64"));
        assert!(bad(input.to_raw_request(&[4, 5, 4], "x")).contains("line 4 is requested twice"));
        assert!(bad(input.to_raw_request(&[1], &"c".repeat(32))).contains("at most 31"));
        assert!(bad(input.to_raw_request(&[1], "a\0b")).contains("no NUL"));
        let edge_out = LineConfig::output(false).edge_detection(EdgeDetection::Rising);
        assert!(bad(edge_out.to_raw_request(&[1], "x")).contains("edge detection"));
        let drain_in = LineConfig::input().drive(Drive::OpenDrain);
        assert!(bad(drain_in.to_raw_request(&[1], "x")).contains("output"));
        let long = LineConfig::input().debounce(Duration::from_secs(5000));
        assert!(bad(long.to_raw_request(&[1], "x")).contains("too long"));
        // 31 bytes is the longest label.
        input.to_raw_request(&[1], &"c".repeat(31)).unwrap();
    }
}
