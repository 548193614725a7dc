//! [`Settings`] and the `termios2` code that applies, reads back and verifies them.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

pub use serialport::{ClearBuffer, DataBits, FlowControl, Parity, StopBits};

use crate::sys::cvt;

/// How to open and configure a serial port: line settings plus how to open it.
///
/// The default is 115200 baud, 8 data bits, no parity, 1 stop bit ("8N1"), no flow control,
/// exclusive access, and DTR left as the kernel sets it on open. Build one with the methods:
///
/// ```
/// use fdloop::dev::serial::{Parity, Settings, StopBits};
///
/// let s = Settings::new().baud_rate(9600).parity(Parity::Even).stop_bits(StopBits::Two);
/// assert_eq!(s.baud_rate, 9600);
/// assert_eq!(Settings::default().baud_rate, 115_200);
/// ```
///
/// The fields can be read (and, on a value you own, assigned) directly; the struct is
/// `#[non_exhaustive]`, so start from [`Settings::new`] rather than a struct literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Symbols per second. Any rate the driver accepts (set with `BOTHER`, so not only the
    /// standard `Bxxx` ones); 0 is refused (on a tty, rate 0 means "hang up").
    pub baud_rate: u32,
    /// Bits per character.
    pub data_bits: DataBits,
    /// Parity bit.
    pub parity: Parity,
    /// Stop bits.
    pub stop_bits: StopBits,
    /// Flow control: none, software (XON/XOFF) or hardware (RTS/CTS).
    pub flow_control: FlowControl,
    /// Whether [`SerialPort::open`](super::SerialPort::open) takes the port exclusively
    /// (`TIOCEXCL` and an exclusive `flock`), so that a second open fails. Default `true`.
    pub exclusive: bool,
    /// The DTR level to set right after opening; `None` (the default) leaves it as the kernel
    /// set it (Linux raises DTR on open). Ignored by ptys.
    pub dtr_on_open: Option<bool>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            baud_rate: 115_200,
            data_bits: DataBits::Eight,
            parity: Parity::None,
            stop_bits: StopBits::One,
            flow_control: FlowControl::None,
            exclusive: true,
            dtr_on_open: None,
        }
    }
}

impl Settings {
    /// The defaults: 115200 8N1, no flow control, exclusive.
    pub fn new() -> Settings {
        Settings::default()
    }

    /// Sets the baud rate.
    #[must_use]
    pub fn baud_rate(mut self, baud_rate: u32) -> Settings {
        self.baud_rate = baud_rate;
        self
    }

    /// Sets the number of data bits.
    #[must_use]
    pub fn data_bits(mut self, data_bits: DataBits) -> Settings {
        self.data_bits = data_bits;
        self
    }

    /// Sets the parity.
    #[must_use]
    pub fn parity(mut self, parity: Parity) -> Settings {
        self.parity = parity;
        self
    }

    /// Sets the number of stop bits.
    #[must_use]
    pub fn stop_bits(mut self, stop_bits: StopBits) -> Settings {
        self.stop_bits = stop_bits;
        self
    }

    /// Sets the flow control.
    #[must_use]
    pub fn flow_control(mut self, flow_control: FlowControl) -> Settings {
        self.flow_control = flow_control;
        self
    }

    /// Whether to open the port exclusively (the default) or shared.
    #[must_use]
    pub fn exclusive(mut self, exclusive: bool) -> Settings {
        self.exclusive = exclusive;
        self
    }

    /// Sets DTR to `level` right after opening (see [`Settings::dtr_on_open`](#structfield.dtr_on_open)).
    #[must_use]
    pub fn dtr_on_open(mut self, level: bool) -> Settings {
        self.dtr_on_open = Some(level);
        self
    }

    pub(crate) fn validate(&self) -> io::Result<()> {
        if self.baud_rate == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a baud rate of 0 is not allowed (on a tty it means \"hang up\")",
            ));
        }
        Ok(())
    }
}

/// The line settings a `termios2` holds (what [`Settings`] describes, without how to open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) baud_rate: u32,
    pub(crate) data_bits: DataBits,
    pub(crate) parity: Parity,
    pub(crate) stop_bits: StopBits,
    pub(crate) flow_control: FlowControl,
}

impl Line {
    pub(crate) fn of(s: &Settings) -> Line {
        Line {
            baud_rate: s.baud_rate,
            data_bits: s.data_bits,
            parity: s.parity,
            stop_bits: s.stop_bits,
            flow_control: s.flow_control,
        }
    }

    /// Bits on the wire per character: start, data, parity and stop bits.
    pub(crate) fn bits_per_char(&self) -> u32 {
        1 + u32::from(u8::from(self.data_bits))
            + u32::from(self.parity != Parity::None)
            + u32::from(u8::from(self.stop_bits))
    }
}

/// `TCGETS2`: the tty's settings, with the exact baud rates.
pub(crate) fn get(fd: RawFd) -> io::Result<libc::termios2> {
    let mut t = MaybeUninit::<libc::termios2>::uninit();
    // SAFETY: (FFI) TCGETS2 writes one `termios2` into the pointed-to buffer, which is live and
    // large enough.
    cvt(unsafe { libc::ioctl(fd, libc::TCGETS2, t.as_mut_ptr()) })?;
    // SAFETY: (FFI) the ioctl succeeded and filled the struct.
    Ok(unsafe { t.assume_init() })
}

/// `TCSETS2` (applies at once, like `TCSANOW`).
fn set(fd: RawFd, t: &libc::termios2) -> io::Result<()> {
    // SAFETY: (FFI) TCSETS2 only reads one `termios2` from the pointer, which is live.
    cvt(unsafe { libc::ioctl(fd, libc::TCSETS2, t as *const libc::termios2) }).map(drop)
}

/// Writes `line` into `t` the way serialport does at open.
fn encode(t: &mut libc::termios2, line: &Line) {
    match line.parity {
        Parity::None => {
            t.c_cflag &= !(libc::PARENB | libc::PARODD);
            t.c_iflag &= !libc::INPCK;
            t.c_iflag |= libc::IGNPAR;
        }
        Parity::Odd => {
            t.c_cflag |= libc::PARENB | libc::PARODD;
            t.c_iflag |= libc::INPCK;
            t.c_iflag &= !libc::IGNPAR;
        }
        Parity::Even => {
            t.c_cflag &= !libc::PARODD;
            t.c_cflag |= libc::PARENB;
            t.c_iflag |= libc::INPCK;
            t.c_iflag &= !libc::IGNPAR;
        }
    }
    match line.flow_control {
        FlowControl::None => {
            t.c_iflag &= !(libc::IXON | libc::IXOFF);
            t.c_cflag &= !libc::CRTSCTS;
        }
        FlowControl::Software => {
            t.c_iflag |= libc::IXON | libc::IXOFF;
            t.c_cflag &= !libc::CRTSCTS;
        }
        FlowControl::Hardware => {
            t.c_iflag &= !(libc::IXON | libc::IXOFF);
            t.c_cflag |= libc::CRTSCTS;
        }
    }
    t.c_cflag &= !libc::CSIZE;
    t.c_cflag |= match line.data_bits {
        DataBits::Five => libc::CS5,
        DataBits::Six => libc::CS6,
        DataBits::Seven => libc::CS7,
        DataBits::Eight => libc::CS8,
    };
    match line.stop_bits {
        StopBits::One => t.c_cflag &= !libc::CSTOPB,
        StopBits::Two => t.c_cflag |= libc::CSTOPB,
    }
    // BOTHER: the rate is the number in c_ospeed / c_ispeed, not a Bxxx code.
    t.c_cflag &= !(libc::CBAUD | libc::CIBAUD);
    t.c_cflag |= libc::BOTHER;
    t.c_ispeed = line.baud_rate;
    t.c_ospeed = line.baud_rate;
}

/// Reads the line settings back out of `t`.
pub(crate) fn decode(t: &libc::termios2) -> Line {
    let data_bits = match t.c_cflag & libc::CSIZE {
        libc::CS5 => DataBits::Five,
        libc::CS6 => DataBits::Six,
        libc::CS7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = if t.c_cflag & libc::PARENB == 0 {
        Parity::None
    } else if t.c_cflag & libc::PARODD != 0 {
        Parity::Odd
    } else {
        Parity::Even
    };
    let stop_bits = if t.c_cflag & libc::CSTOPB != 0 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let flow_control = if t.c_cflag & libc::CRTSCTS != 0 {
        FlowControl::Hardware
    } else if t.c_iflag & (libc::IXON | libc::IXOFF) == libc::IXON | libc::IXOFF {
        FlowControl::Software
    } else {
        FlowControl::None
    };
    Line {
        baud_rate: t.c_ospeed,
        data_bits,
        parity,
        stop_bits,
        flow_control,
    }
}

/// Applies `line` (`TCSETS2`) and reads it back: `tcsetattr`-style calls report success when
/// *any* part applied, so a driver that refused or adjusted a setting is only noticed that way.
/// `who` names the port in errors.
pub(crate) fn apply(fd: RawFd, line: &Line, who: &str) -> io::Result<()> {
    let mut t = get(fd).map_err(|e| named(who, e))?;
    encode(&mut t, line);
    set(fd, &t).map_err(|e| named(who, e))?;
    verify(fd, line, who)
}

/// Checks that the tty's settings are `line`.
pub(crate) fn verify(fd: RawFd, line: &Line, who: &str) -> io::Result<()> {
    let t = get(fd).map_err(|e| named(who, e))?;
    let actual = decode(&t);
    if actual == *line && t.c_ispeed == line.baud_rate {
        return Ok(());
    }
    let mut what = Vec::new();
    if actual.baud_rate != line.baud_rate || t.c_ispeed != line.baud_rate {
        what.push(format!(
            "{} baud instead of {} (the driver does not support that rate)",
            actual.baud_rate, line.baud_rate
        ));
    }
    if actual.data_bits != line.data_bits {
        what.push(format!(
            "{:?} data bits instead of {:?}",
            actual.data_bits, line.data_bits
        ));
    }
    if actual.parity != line.parity {
        what.push(format!(
            "parity {:?} instead of {:?}",
            actual.parity, line.parity
        ));
    }
    if actual.stop_bits != line.stop_bits {
        what.push(format!(
            "{:?} stop bits instead of {:?}",
            actual.stop_bits, line.stop_bits
        ));
    }
    if actual.flow_control != line.flow_control {
        what.push(format!(
            "flow control {:?} instead of {:?}",
            actual.flow_control, line.flow_control
        ));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{who}: settings did not apply as asked: the tty now has {}",
            what.join(", ")
        ),
    ))
}

/// Puts the tty in raw mode (`cfmakeraw`, `TCSANOW`) and checks that it took.
pub(crate) fn make_raw(fd: RawFd, who: &str) -> io::Result<()> {
    let mut t = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: (FFI) tcgetattr writes one `termios` into the live buffer.
    cvt(unsafe { libc::tcgetattr(fd, t.as_mut_ptr()) }).map_err(|e| not_tty_or(who, e))?;
    // SAFETY: (FFI) tcgetattr succeeded and filled the struct.
    let mut t = unsafe { t.assume_init() };
    // SAFETY: (FFI) cfmakeraw only modifies the struct it is given, which is live.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: (FFI) tcsetattr only reads the live struct.
    cvt(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) }).map_err(|e| named(who, e))?;
    let mut back = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: (FFI) tcgetattr writes one `termios` into the live buffer `back`.
    cvt(unsafe { libc::tcgetattr(fd, back.as_mut_ptr()) }).map_err(|e| named(who, e))?;
    // SAFETY: (FFI) tcgetattr succeeded and filled the struct.
    let back = unsafe { back.assume_init() };
    let raw = back.c_iflag
        & (libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON)
        == 0
        && back.c_oflag & libc::OPOST == 0
        && back.c_lflag & (libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN)
            == 0
        && back.c_cflag & (libc::CSIZE | libc::PARENB) == libc::CS8
        && back.c_cc[libc::VMIN] == 1
        && back.c_cc[libc::VTIME] == 0;
    if raw {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{who}: raw mode did not apply (iflag {:#o}, oflag {:#o}, lflag {:#o}, cflag {:#o})",
            back.c_iflag, back.c_oflag, back.c_lflag, back.c_cflag
        )))
    }
}

/// `e`, with `who` (a path or "fd N") in front of its message.
pub(crate) fn named(who: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{who}: {e}"))
}

/// `ENOTTY` as "… is not a terminal" (`InvalidInput`); other errors named.
pub(crate) fn not_tty_or(who: &str, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ENOTTY) {
        not_a_terminal(who)
    } else {
        named(who, e)
    }
}

/// The error for an fd or path that is not a tty.
pub(crate) fn not_a_terminal(who: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{who} is not a terminal (serial ports and ptys are; ENOTTY)"),
    )
}
