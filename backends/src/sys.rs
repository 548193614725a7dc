//! The one place where a `-1` from libc becomes an `io::Error`.

use std::io;

/// Turns a libc return value into `io::Result`: `-1` means `errno` holds the error.
pub(crate) fn cvt<T: IsMinusOne>(ret: T) -> io::Result<T> {
    if ret.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`], but as the kernel-style `-errno` / value that completions carry.
pub(crate) fn to_result(ret: isize) -> i32 {
    if ret < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        ret.min(i32::MAX as isize) as i32
    }
}

/// Integer types that libc uses for "-1 on error".
pub(crate) trait IsMinusOne {
    fn is_minus_one(&self) -> bool;
}

macro_rules! impl_is_minus_one {
    ($($t:ty)*) => {$(
        impl IsMinusOne for $t {
            fn is_minus_one(&self) -> bool { *self == -1 }
        }
    )*};
}
impl_is_minus_one!(i32 i64 isize);
