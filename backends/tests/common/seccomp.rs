//! A seccomp filter that makes the io_uring system calls fail with a chosen errno, the way a
//! container runtime's profile or a sandbox does, so that the automatic fallback can be tested
//! on a kernel that has io_uring.
//!
//! Self-contained (only `libc` and `std`) so that it can be copied into other test suites.
//! Install it only in a process (or thread) made for the purpose: a filter cannot be removed.

use std::io;

/// `AUDIT_ARCH_X86_64` from `<linux/audit.h>` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

/// Which threads the filter applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The calling thread and the threads it creates afterwards.
    ThisThread,
    /// Every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`).
    AllThreads,
}

/// The three io_uring system calls.
pub const IO_URING_ALL: &[libc::c_long] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Only `io_uring_register` (used to probe opcodes): rings can still be created.
pub const IO_URING_REGISTER: &[libc::c_long] = &[libc::SYS_io_uring_register];

/// Makes `io_uring_setup`, `io_uring_enter` and `io_uring_register` fail with `errno`.
///
/// # Errors
///
/// `Unsupported` on architectures other than x86_64 (the caller should skip with a message);
/// the `prctl` or `seccomp` error otherwise.
pub fn deny_io_uring(errno: i32, scope: Scope) -> io::Result<()> {
    deny_syscalls(IO_URING_ALL, errno, scope)
}

/// Makes the given system calls (x86_64 numbers) fail with `errno`; everything else is allowed.
///
/// # Errors
///
/// As [`deny_io_uring`]; `InvalidInput` for an errno above 0xffff or too many syscalls.
pub fn deny_syscalls(syscalls: &[libc::c_long], errno: i32, scope: Scope) -> io::Result<()> {
    if !cfg!(target_arch = "x86_64") {
        return Err(unsupported_arch());
    }
    if !(1..=libc::SECCOMP_RET_DATA as i32).contains(&errno) || syscalls.len() > 200 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "errno out of range or too many syscalls",
        ));
    }
    let mut prog = program(syscalls, errno as u32);
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: (FFI) PR_SET_NO_NEW_PRIVS takes integer arguments only. It is required to install a
    // filter without CAP_SYS_ADMIN and harmless with it.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let flags: libc::c_ulong = match scope {
        Scope::ThisThread => 0,
        Scope::AllThreads => libc::SECCOMP_FILTER_FLAG_TSYNC,
    };
    // SAFETY: (FFI) `fprog` points to `prog`, a valid BPF program of `fprog.len` instructions that
    // lives across the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    match r {
        0 => Ok(()),
        r if r < 0 => Err(io::Error::last_os_error()),
        // With TSYNC, a positive value is the id of a thread that could not be synchronised.
        tid => Err(io::Error::other(format!(
            "seccomp TSYNC failed for thread {tid}"
        ))),
    }
}

fn unsupported_arch() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "the seccomp filter is written for x86_64 only",
    )
}

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The x32 ABI (syscall numbers with bit 30 set, same arch value) is not filtered: programs
/// built for x86_64 never use it.
///
/// ```text
/// 0      ld  [arch]
/// 1      jeq AUDIT_ARCH_X86_64, next, allow     (another ABI: allow everything)
/// 2      ld  [nr]
/// 3..3+n jeq syscall_i, deny, next
/// 3+n    ret ALLOW                              (allow)
/// 4+n    ret ERRNO | errno                      (deny)
/// ```
fn program(syscalls: &[libc::c_long], errno: u32) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    // offsetof(struct seccomp_data, nr) and offsetof(struct seccomp_data, arch).
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    let n = syscalls.len();
    let allow = 3 + n;
    let deny = 4 + n;
    let mut p = Vec::with_capacity(5 + n);
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, ARCH));
    p.push(jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        AUDIT_ARCH_X86_64,
        0,
        (allow - 2) as u8,
    ));
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, NR));
    for (i, &nr) in syscalls.iter().enumerate() {
        let here = 3 + i;
        p.push(jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            nr as u32,
            (deny - here - 1) as u8,
            0,
        ));
    }
    p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ERRNO | errno));
    p
}
