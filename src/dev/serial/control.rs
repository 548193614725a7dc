//! Settings, queues and modem lines of a [`SerialPort`]. Setting changes are applied at once
//! and read back.

use std::io;

use super::settings::{self, named, ClearBuffer, Line, Settings};
use super::{DataBits, FlowControl, Parity, SerialPort, StopBits};
use crate::sys::cvt;

impl SerialPort {
    // --- settings -----------------------------------------------------------------------

    /// Puts the tty in raw mode (`cfmakeraw`, applied at once) and reads it back: no echo, no
    /// line editing, no signals, no CR/NL translation, 8 bits. [`SerialPort::open`] already
    /// does this; adopted ptys need it. On a pty master it changes the slave's settings (the
    /// two ends share one set on Linux).
    ///
    /// # Errors
    ///
    /// `termios` errors; `Other` when the mode did not apply.
    pub fn set_raw(&self) -> io::Result<()> {
        settings::make_raw(self.raw(), &self.who())
    }

    /// Applies the line settings of `settings` (baud rate, data bits, parity, stop bits,
    /// flow control; `exclusive` and `dtr_on_open` only matter at open) in one `TCSETS2`,
    /// at once, and reads them back.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a baud rate of 0, and when the driver did not apply a setting (the
    /// message says what the tty has instead; the tty keeps what the driver chose);
    /// `ioctl(2)` errors.
    pub fn configure(&self, settings: &Settings) -> io::Result<()> {
        settings.validate().map_err(|e| named(&self.who(), e))?;
        settings::apply(self.raw(), &Line::of(settings), &self.who())
    }

    fn modify(&self, f: impl FnOnce(&mut Line)) -> io::Result<()> {
        let who = self.who();
        let mut line = settings::decode(&settings::get(self.raw()).map_err(|e| named(&who, e))?);
        f(&mut line);
        settings::apply(self.raw(), &line, &who)
    }

    /// The current settings, read from the tty (`dtr_on_open` is `None`).
    ///
    /// # Errors
    ///
    /// `ioctl(2)` errors.
    pub fn settings(&self) -> io::Result<Settings> {
        let t = settings::get(self.raw()).map_err(|e| named(&self.who(), e))?;
        let line = settings::decode(&t);
        Ok(Settings {
            baud_rate: line.baud_rate,
            data_bits: line.data_bits,
            parity: line.parity,
            stop_bits: line.stop_bits,
            flow_control: line.flow_control,
            exclusive: self.exclusive,
            dtr_on_open: None,
        })
    }

    /// The baud rate the tty has (the driver's actual rate on real hardware; a pty stores
    /// any rate and ignores it).
    ///
    /// # Errors
    ///
    /// `ioctl(2)` errors.
    pub fn baud_rate(&self) -> io::Result<u32> {
        Ok(self.settings()?.baud_rate)
    }

    /// Changes the baud rate (any rate the driver takes, via `BOTHER`), and reads it back.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for 0 or a rate the driver did not take; `ioctl(2)` errors.
    pub fn set_baud_rate(&self, baud_rate: u32) -> io::Result<()> {
        Settings::new()
            .baud_rate(baud_rate)
            .validate()
            .map_err(|e| named(&self.who(), e))?;
        self.modify(|l| l.baud_rate = baud_rate)
    }

    /// Changes the number of data bits, and reads it back.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the driver did not take it (the Linux pty driver always keeps 8
    /// data bits); `ioctl(2)` errors.
    pub fn set_data_bits(&self, data_bits: DataBits) -> io::Result<()> {
        self.modify(|l| l.data_bits = data_bits)
    }

    /// Changes the parity, and reads it back.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the driver did not take it (the Linux pty driver always keeps no
    /// parity); `ioctl(2)` errors.
    pub fn set_parity(&self, parity: Parity) -> io::Result<()> {
        self.modify(|l| l.parity = parity)
    }

    /// Changes the number of stop bits, and reads it back.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the driver did not take it; `ioctl(2)` errors.
    pub fn set_stop_bits(&self, stop_bits: StopBits) -> io::Result<()> {
        self.modify(|l| l.stop_bits = stop_bits)
    }

    /// Changes the flow control, and reads it back.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the driver did not take it; `ioctl(2)` errors.
    pub fn set_flow_control(&self, flow_control: FlowControl) -> io::Result<()> {
        self.modify(|l| l.flow_control = flow_control)
    }

    /// Bytes received and not read yet (`FIONREAD`).
    ///
    /// # Errors
    ///
    /// `ioctl(2)` errors.
    pub fn bytes_to_read(&self) -> io::Result<u32> {
        self.int_ioctl(libc::FIONREAD)
    }

    /// Bytes written and not sent yet (`TIOCOUTQ`; 0 on a pty, which has no output queue).
    ///
    /// # Errors
    ///
    /// `ioctl(2)` errors.
    pub fn bytes_to_write(&self) -> io::Result<u32> {
        self.int_ioctl(libc::TIOCOUTQ)
    }

    fn int_ioctl(&self, request: libc::Ioctl) -> io::Result<u32> {
        let mut n: libc::c_int = 0;
        // SAFETY: (FFI) these requests write one int into the live `n`.
        cvt(unsafe { libc::ioctl(self.raw(), request, &mut n) })
            .map_err(|e| named(&self.who(), e))?;
        Ok(n.max(0) as u32)
    }

    /// Discards received data not read yet, written data not sent yet, or both
    /// (`tcflush(3)`).
    ///
    /// # Errors
    ///
    /// `tcflush(3)` errors.
    pub fn clear(&self, which: ClearBuffer) -> io::Result<()> {
        let queue = match which {
            ClearBuffer::Input => libc::TCIFLUSH,
            ClearBuffer::Output => libc::TCOFLUSH,
            ClearBuffer::All => libc::TCIOFLUSH,
        };
        // SAFETY: (FFI) tcflush takes no pointers.
        cvt(unsafe { libc::tcflush(self.raw(), queue) })
            .map(drop)
            .map_err(|e| named(&self.who(), e))
    }

    // --- modem lines (meaningless on ptys, which have none) -----------------------------

    fn set_line(&self, bit: libc::c_int, level: bool) -> io::Result<()> {
        let request = if level {
            libc::TIOCMBIS
        } else {
            libc::TIOCMBIC
        };
        // SAFETY: (FFI) TIOCMBIS/TIOCMBIC read one int from the live `bit`.
        cvt(unsafe { libc::ioctl(self.raw(), request, &bit) })
            .map(drop)
            .map_err(|e| self.modem_error(e))
    }

    fn get_line(&self, bit: libc::c_int) -> io::Result<bool> {
        let mut lines: libc::c_int = 0;
        // SAFETY: (FFI) TIOCMGET writes one int into the live `lines`.
        cvt(unsafe { libc::ioctl(self.raw(), libc::TIOCMGET, &mut lines) })
            .map_err(|e| self.modem_error(e))?;
        Ok(lines & bit != 0)
    }

    fn modem_error(&self, e: io::Error) -> io::Error {
        match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EINVAL) => io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "{}: this tty has no modem control lines (ptys have none)",
                    self.who()
                ),
            ),
            _ => named(&self.who(), e),
        }
    }

    /// Sets DTR (Data Terminal Ready). Many boards reset on a DTR edge.
    ///
    /// # Errors
    ///
    /// `Unsupported` on a tty without modem lines (a pty); `ioctl(2)` errors.
    pub fn write_dtr(&self, level: bool) -> io::Result<()> {
        self.set_line(libc::TIOCM_DTR, level)
    }

    /// Sets RTS (Request To Send). Under hardware flow control the driver drives it.
    ///
    /// # Errors
    ///
    /// `Unsupported` on a tty without modem lines (a pty); `ioctl(2)` errors.
    pub fn write_rts(&self, level: bool) -> io::Result<()> {
        self.set_line(libc::TIOCM_RTS, level)
    }

    /// Reads CTS (Clear To Send).
    ///
    /// # Errors
    ///
    /// `Unsupported` on a tty without modem lines (a pty); `ioctl(2)` errors.
    pub fn read_cts(&self) -> io::Result<bool> {
        self.get_line(libc::TIOCM_CTS)
    }

    /// Reads DSR (Data Set Ready).
    ///
    /// # Errors
    ///
    /// `Unsupported` on a tty without modem lines (a pty); `ioctl(2)` errors.
    pub fn read_dsr(&self) -> io::Result<bool> {
        self.get_line(libc::TIOCM_DSR)
    }

    /// Reads RI (Ring Indicator).
    ///
    /// # Errors
    ///
    /// `Unsupported` on a tty without modem lines (a pty); `ioctl(2)` errors.
    pub fn read_ri(&self) -> io::Result<bool> {
        self.get_line(libc::TIOCM_RNG)
    }

    /// Reads CD (Carrier Detect).
    ///
    /// # Errors
    ///
    /// `Unsupported` on a tty without modem lines (a pty); `ioctl(2)` errors.
    pub fn read_cd(&self) -> io::Result<bool> {
        self.get_line(libc::TIOCM_CAR)
    }

    /// Starts (`true`) or stops (`false`) sending a break (`TIOCSBRK` / `TIOCCBRK`); neither
    /// blocks. Time the break with [`fiber::sleep`](crate::fiber::sleep) or a timer.
    ///
    /// # Errors
    ///
    /// `ioctl(2)` errors.
    pub fn set_break(&self, on: bool) -> io::Result<()> {
        let request = if on { libc::TIOCSBRK } else { libc::TIOCCBRK };
        // SAFETY: (FFI) TIOCSBRK/TIOCCBRK take no argument.
        cvt(unsafe { libc::ioctl(self.raw(), request) })
            .map(drop)
            .map_err(|e| named(&self.who(), e))
    }
}
