//! Files for fibers: [`File`] and [`OpenOptions`] mirror `std::fs`, but their reads, writes and
//! syncs suspend only the calling fiber.
//!
//! ```
//! use fdloop::{fs, Loop};
//! use std::io::{Read, Seek, SeekFrom, Write};
//!
//! let path = std::env::temp_dir().join(format!("fdloop-fs-doc-{}", std::process::id()));
//! let lp = Loop::new()?;
//! let p = path.clone();
//! let h = lp.spawn(move || -> std::io::Result<String> {
//!     let mut f = fs::File::create(&p)?;
//!     f.write_all(b"hello, file")?;
//!     f.write_all_at(b"F", 7)?; // positional: the cursor does not move
//!     f.sync_data()?;
//!     let mut f = fs::File::open(&p)?;
//!     f.seek(SeekFrom::Start(7))?;
//!     let mut s = String::new();
//!     f.read_to_string(&mut s)?;
//!     Ok(s)
//! });
//! lp.run()?;
//! assert_eq!(h.join().unwrap()?, "File");
//! std::fs::remove_file(&path)?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # How the I/O runs
//!
//! * On **io_uring**, reads, writes (vectored too) and syncs are submitted to the ring: they are
//!   truly asynchronous, and many fibers can have operations on the same file in flight.
//! * On **epoll**, regular files cannot be polled, so the backend runs their operations on its
//!   small file thread pool and the fiber is resumed when the thread is done (a read of cached
//!   data may complete at once). Other fibers and callbacks keep running meanwhile; the number
//!   of file operations running in parallel is bounded by that pool.
//! * On both backends, a **positional read** (`read_at`, `read_exact_at`, and `Read` at the
//!   cursor) first tries `preadv2(…, RWF_NOWAIT)` on the loop's thread: data in the page cache
//!   is copied at once, without a trip through the ring or the pool; otherwise (`EAGAIN`) the
//!   read goes to the backend as above. A partial hit keeps what was cached and asks the
//!   backend for the rest (a vectored read returns the cached part as a short read). Files
//!   opened with `O_DIRECT` skip this step, and so does an fd that refuses it (a file system
//!   without `RWF_NOWAIT`, a non-regular file). A fiber whose reads keep hitting the cache
//!   yields to the loop every 64 hits, so it cannot starve timers, I/O or other fibers.
//! * On both backends, opening a file, [`File::metadata`], [`File::set_len`] and
//!   [`File::set_permissions`] run on the loop's thread pool through [`crate::fiber::unblock`]
//!   (`openat` and `statx` may wait for the disk or the network).
//!
//! Every call that does I/O must run inside a fiber and panics elsewhere, with a message that
//! says so.
//!
//! # Buffers
//!
//! The buffers you pass are lent to the kernel (or to a pool thread) for the duration of the
//! call, and may live on the fiber's own stack. That is sound: a fiber's stack is never freed
//! while an operation it pushed is in flight — if the fiber is unwound because its loop closes,
//! the operation is cancelled and its final completion awaited before the stack goes.
//!
//! # The cursor
//!
//! A [`File`] keeps its own cursor; `Read`, `Write` and `Seek` use positional I/O
//! (`pread`/`pwrite`) at it and move it, and never touch the kernel's file position. In append
//! mode, writes go to the end of the file (`O_APPEND`) and leave the cursor after the data
//! written, as with `std`. `&File` implements `Read`, `Write` and `Seek` too, sharing the
//! `File`'s cursor; see [`File`] for what happens when several fibers use it at once.
//! [`File::read_at`] and [`File::write_at`] ignore the cursor: use them for concurrent access.

use std::cell::Cell;
use std::ffi::CString;
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Read, Seek, SeekFrom, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::fiber::{self, ops, scheduler};
use crate::sys::{cvt, LoopFd};

/// The largest file position the kernel accepts (`off_t` is signed).
const MAX_POS: u64 = i64::MAX as u64;

/// Panics with the usual advice unless the caller runs inside a fiber.
fn need_fiber(what: &str) {
    scheduler::current_or_panic(what);
}

/// An error about a path: the OS error, with the path in its message. Its
/// [`source`](std::error::Error::source) is the original `io::Error` (with its `raw_os_error`).
#[derive(Debug)]
struct PathError {
    what: &'static str,
    path: PathBuf,
    err: io::Error,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.what, self.path.display(), self.err)
    }
}

impl std::error::Error for PathError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.err)
    }
}

fn path_error(what: &'static str, path: &Path, err: io::Error) -> io::Error {
    io::Error::new(
        err.kind(),
        PathError {
            what,
            path: path.to_path_buf(),
            err,
        },
    )
}

fn invalid_seek() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "invalid seek to a negative or overflowing position",
    )
}

/// The kernel's file position of `fd` (`lseek(fd, 0, SEEK_CUR)`), if it has one.
fn kernel_pos(fd: RawFd) -> Option<u64> {
    // SAFETY: (FFI) lseek takes no pointers; SEEK_CUR with offset 0 does not move the position.
    let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
    u64::try_from(pos).ok()
}

/// The status flags of `fd`'s open file description (`O_APPEND`, `O_DIRECT` …).
fn status_flags(fd: RawFd) -> io::Result<i32> {
    // SAFETY: (FFI) F_GETFL takes no pointer argument.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })
}

/// How many page-cache hits in a row a thread's fibers may take before the one that scores
/// the next yields: a fiber whose reads are all served by the cache never suspends otherwise,
/// and would keep timers, I/O and the other fibers waiting.
const CACHED_STREAK_MAX: u32 = 64;

thread_local! {
    /// Page-cache hits of the fast path on this thread since a fiber last suspended for one.
    static CACHED_STREAK: Cell<u32> = const { Cell::new(0) };
}

/// What the `RWF_NOWAIT` attempt of a positional read found.
enum Cached {
    /// `n` bytes came from the page cache (possibly fewer than asked, possibly 0).
    Read(usize),
    /// Nothing could be read without blocking; the read must go to the backend.
    Miss,
    /// This fd cannot do non-blocking positional reads (not a regular file, a file system
    /// without `RWF_NOWAIT`, an old kernel): do not try again.
    Never,
}

/// One `preadv2(fd, iov, offset, RWF_NOWAIT)`: served from the page cache or refused at once,
/// never waiting for the disk.
///
/// # Safety
///
/// (FFI) `iov` points to `cnt` `iovec`s whose buffers are writable and stay alive across the call.
unsafe fn read_cached(fd: RawFd, iov: *const libc::iovec, cnt: usize, offset: u64) -> Cached {
    let Ok(off) = libc::off_t::try_from(offset) else {
        return Cached::Miss; // the backend reports EINVAL
    };
    // At most IOV_MAX (1024) slices; reading fewer is a short read, which is allowed.
    let cnt = cnt.min(1024) as libc::c_int;
    // The raw system call rather than glibc's `preadv2`, which wraps it in a thread-cancellation
    // point (two extra calls around the syscall, ≈ 2 % of a warm 4 KiB read); fdloop's threads
    // are never cancelled. The offset goes as the (low, high) pair of the syscall ABI: the kernel
    // joins them on 32-bit targets and ignores the high word on 64-bit ones.
    let (lo, hi) = (off as libc::c_long, ((off as u64) >> 32) as libc::c_long);
    // SAFETY: (I5, FFI) the caller guarantees that `iov` points to `cnt` `iovec`s whose buffers are
    // writable and alive across the call; `fd` is open for the call (the caller holds the `File`).
    // RWF_NOWAIT keeps the loop thread from blocking: it is the non-blocking attempt io_uring makes
    // inline on the submitting thread before it hands a read to a worker.
    let r = unsafe {
        libc::syscall(
            libc::SYS_preadv2,
            libc::c_long::from(fd),
            iov,
            libc::c_long::from(cnt),
            lo,
            hi,
            libc::c_long::from(libc::RWF_NOWAIT),
        )
    };
    if r >= 0 {
        return Cached::Read(r as usize);
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ESPIPE | libc::EINVAL) => Cached::Never,
        // EAGAIN (not cached), EINTR, and real errors, which the backend's read reports.
        _ => Cached::Miss,
    }
}

/// A read served by the page cache: counts it, and lets the loop run every
/// [`CACHED_STREAK_MAX`] hits.
fn cached_hit() {
    let streak = CACHED_STREAK.with(|s| {
        let v = s.get() + 1;
        s.set(if v >= CACHED_STREAK_MAX { 0 } else { v });
        v
    });
    if streak >= CACHED_STREAK_MAX {
        fiber::yield_now();
    }
}

/// A read that went to the backend (the fiber suspended): the streak starts over.
fn cached_miss() {
    CACHED_STREAK.with(|s| s.set(0));
}

/// Runs `f` on the loop's thread pool with a `std::fs::File` view of `fd`.
fn with_std_file<T, F>(fd: &Arc<LoopFd>, f: F) -> io::Result<T>
where
    F: FnOnce(&std::fs::File) -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let fd = fd.clone();
    fiber::unblock(move || {
        // SAFETY: (I3, FFI) `fd` (an `Arc<LoopFd>` moved into this job) keeps the fd open for the
        // whole job, even if the fiber that asked is unwound meanwhile; `ManuallyDrop` keeps this
        // view from closing it.
        let file = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd.as_raw_fd()) });
        f(&file)
    })
}

/// Options and flags for opening a [`File`], like [`std::fs::OpenOptions`] together with
/// [`std::os::unix::fs::OpenOptionsExt`].
///
/// ```
/// use fdloop::{fs::OpenOptions, Loop};
///
/// let path = std::env::temp_dir().join(format!("fdloop-openoptions-doc-{}", std::process::id()));
/// let lp = Loop::new()?;
/// let p = path.clone();
/// let h = lp.spawn(move || {
///     OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).map(drop)
/// });
/// lp.run()?;
/// h.join().unwrap()?;
/// std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    append: bool,
    truncate: bool,
    create: bool,
    create_new: bool,
    mode: u32,
    custom_flags: i32,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions::new()
    }
}

impl OpenOptions {
    /// Every option off, mode `0o666` (before the umask).
    pub fn new() -> OpenOptions {
        OpenOptions {
            read: false,
            write: false,
            append: false,
            truncate: false,
            create: false,
            create_new: false,
            mode: 0o666,
            custom_flags: 0,
        }
    }

    /// Read access.
    pub fn read(&mut self, read: bool) -> &mut OpenOptions {
        self.read = read;
        self
    }

    /// Write access.
    pub fn write(&mut self, write: bool) -> &mut OpenOptions {
        self.write = write;
        self
    }

    /// Append mode (implies write access): every write goes to the end of the file
    /// (`O_APPEND`), whatever the cursor — also [`File::write_at`], as on Linux's `pwrite`.
    pub fn append(&mut self, append: bool) -> &mut OpenOptions {
        self.append = append;
        self
    }

    /// Truncates an existing file to length 0 (needs write access).
    pub fn truncate(&mut self, truncate: bool) -> &mut OpenOptions {
        self.truncate = truncate;
        self
    }

    /// Creates the file if it does not exist (needs write or append access).
    pub fn create(&mut self, create: bool) -> &mut OpenOptions {
        self.create = create;
        self
    }

    /// Creates the file, failing with `AlreadyExists` if it exists (`O_CREAT | O_EXCL`; needs
    /// write or append access). `create` and `truncate` are then ignored.
    pub fn create_new(&mut self, create_new: bool) -> &mut OpenOptions {
        self.create_new = create_new;
        self
    }

    /// The permission bits of a file created by this open (before the umask); `0o666` by
    /// default.
    pub fn mode(&mut self, mode: u32) -> &mut OpenOptions {
        self.mode = mode;
        self
    }

    /// Extra `open(2)` flags (`O_NOFOLLOW`, `O_DIRECT`, `O_NOATIME` …). The access mode bits are
    /// ignored; `O_CLOEXEC` is always set. Setting `O_NONBLOCK` is allowed but pointless on
    /// regular files.
    pub fn custom_flags(&mut self, flags: i32) -> &mut OpenOptions {
        self.custom_flags = flags;
        self
    }

    /// The `open(2)` flags, or `InvalidInput` for combinations that make no sense (the same
    /// rules as `std`).
    fn flags(&self) -> io::Result<i32> {
        let access = match (self.read, self.write, self.append) {
            (true, false, false) => libc::O_RDONLY,
            (false, true, false) => libc::O_WRONLY,
            (true, true, false) => libc::O_RDWR,
            (false, _, true) => libc::O_WRONLY | libc::O_APPEND,
            (true, _, true) => libc::O_RDWR | libc::O_APPEND,
            (false, false, false) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "no access mode: set read, write or append",
                ))
            }
        };
        let writable = self.write || self.append;
        if !writable && (self.truncate || self.create || self.create_new) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "creating or truncating a file needs write or append access",
            ));
        }
        if self.append && self.truncate && !self.create_new {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a file cannot be opened in append mode and truncated",
            ));
        }
        let creation = match (self.create, self.truncate, self.create_new) {
            (_, _, true) => libc::O_CREAT | libc::O_EXCL,
            (false, false, false) => 0,
            (true, false, false) => libc::O_CREAT,
            (false, true, false) => libc::O_TRUNC,
            (true, true, false) => libc::O_CREAT | libc::O_TRUNC,
        };
        Ok(libc::O_CLOEXEC | access | creation | (self.custom_flags & !libc::O_ACCMODE))
    }

    /// Opens `path` with these options. The `openat(2)` runs on the loop's thread pool while the
    /// fiber waits.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a meaningless combination of options or a path with a NUL byte; the
    /// `open(2)` error otherwise (`NotFound`, `PermissionDenied`, `AlreadyExists` for
    /// `create_new` …), whose message names the path.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn open<P: AsRef<Path>>(&self, path: P) -> io::Result<File> {
        need_fiber("fdloop::fs::OpenOptions::open");
        self.open_sized(path.as_ref(), false).map(|(f, _)| f)
    }

    /// Opens `path` on the loop's thread pool; with `size`, also asks for the file's size in
    /// the same job (`fstat(2)`, `None` if that fails).
    fn open_sized(&self, path: &Path, size: bool) -> io::Result<(File, Option<u64>)> {
        let flags = self.flags()?;
        let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "file name contained an unexpected NUL byte",
            )
        })?;
        let mode = self.mode as libc::c_uint;
        let (fd, len) = fiber::unblock(move || {
            let fd = loop {
                // SAFETY: (FFI) `cpath` is a NUL-terminated string that lives across the call.
                let fd = unsafe { libc::open(cpath.as_ptr(), flags, mode) };
                if fd >= 0 {
                    // SAFETY: (FFI) `fd` was just returned by open and nothing else owns it.
                    break unsafe { OwnedFd::from_raw_fd(fd) };
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            };
            let len = if size {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                // SAFETY: (FFI) `st` is a writable `stat` buffer that lives across the call, and
                // `fd` is open.
                let r = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
                // SAFETY: (FFI) fstat succeeded, so it filled `st`.
                (r == 0).then(|| unsafe { st.assume_init() }.st_size as u64)
            } else {
                None
            };
            Ok((fd, len))
        })
        .map_err(|e| path_error("cannot open", path, e))?;
        let (append, direct) = (flags & libc::O_APPEND != 0, flags & libc::O_DIRECT != 0);
        Ok((File::adopt(fd, 0, append, direct), len))
    }
}

/// An open file whose I/O suspends only the calling fiber; the fiber counterpart of
/// [`std::fs::File`].
///
/// Files are opened close-on-exec and blocking (the backends never need `O_NONBLOCK` for
/// them). `File` is `Send` and `Sync`: it may move to another loop's thread.
///
/// # The cursor, and `&File`
///
/// The cursor lives in the `File` (not in the kernel): `Read`/`Write` do positional I/O at it
/// and then move it; `Seek` only sets it (`SeekFrom::End` asks for the file's size). `&File`
/// implements `Read`, `Write` and `Seek` on the **same** cursor, as `&std::fs::File` shares the
/// kernel's. Each call reads the cursor when it starts and sets it to where its I/O ended when it
/// finishes; so two fibers doing cursor I/O through `&File` at the same time may read (or
/// overwrite) the same bytes, and the cursor ends where the last one to finish left it. Use
/// [`File::read_at`] / [`File::write_at`] for concurrent access, or give each fiber its own
/// cursor with [`File::try_clone`].
///
/// Dropping a `File` closes its fd, after telling the loops of the thread to forget what they
/// knew about the fd number, so that the number can be reused by any kind of file.
pub struct File {
    fd: Arc<LoopFd>,
    pos: AtomicU64,
    append: bool,
    /// Positional reads try `preadv2(RWF_NOWAIT)` first (see the module docs); cleared for
    /// `O_DIRECT` files and for fds that refuse it.
    try_cached: AtomicBool,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("fd", &self.fd.as_raw_fd())
            .field("pos", &self.pos.load(Ordering::Relaxed))
            .field("append", &self.append)
            .finish()
    }
}

impl File {
    /// Takes ownership of `fd` with the cursor at `pos`. `direct`: opened with `O_DIRECT`
    /// (reads skip the page-cache fast path).
    fn adopt(fd: OwnedFd, pos: u64, append: bool, direct: bool) -> File {
        // The number may have been something else before: make sure no loop of this thread
        // still treats it as that.
        crate::event_loop::forget_fd(fd.as_raw_fd());
        File {
            fd: Arc::new(LoopFd::new(fd)),
            pos: AtomicU64::new(pos),
            append,
            try_cached: AtomicBool::new(!direct),
        }
    }

    /// Opens `path` read-only.
    ///
    /// # Errors
    ///
    /// As for [`OpenOptions::open`]: `NotFound` (with the path in the message) and the like.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn open<P: AsRef<Path>>(path: P) -> io::Result<File> {
        OpenOptions::new().read(true).open(path)
    }

    /// Opens `path` write-only, creating it if needed and truncating it if it exists.
    ///
    /// # Errors
    ///
    /// As for [`OpenOptions::open`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn create<P: AsRef<Path>>(path: P) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    }

    /// Opens `path` read-write, creating it; fails if it exists.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` when `path` exists; otherwise as for [`OpenOptions::open`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn create_new<P: AsRef<Path>>(path: P) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
    }

    /// A blank [`OpenOptions`] (everything off), to open a file in another way.
    pub fn options() -> OpenOptions {
        OpenOptions::new()
    }

    /// Reads up to `buf.len()` bytes at `offset` (`pread(2)`), without using or moving the
    /// cursor. 0 means `offset` is at or past the end of the file (or `buf` is empty).
    ///
    /// # Errors
    ///
    /// The OS error: `EISDIR` for a directory, `EBADF` for a file not opened for reading, `EIO` …
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        need_fiber("fdloop::fs::File::read_at");
        self.pread(buf, offset)
    }

    /// Writes up to `buf.len()` bytes at `offset` (`pwrite(2)`), without using or moving the
    /// cursor. Writing past the end of the file extends it (the gap reads as zeros). In append
    /// mode, Linux writes at the end of the file whatever `offset` says.
    ///
    /// # Errors
    ///
    /// The OS error: `EBADF` for a file not opened for writing, `ENOSPC`, `EFBIG` …
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        need_fiber("fdloop::fs::File::write_at");
        ops::write(self.raw(), buf, Some(offset), None)
    }

    /// Reads exactly `buf.len()` bytes at `offset`, without using or moving the cursor.
    ///
    /// # Errors
    ///
    /// `UnexpectedEof` when the file ends first (the contents of `buf` are then unspecified);
    /// otherwise as for [`File::read_at`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        need_fiber("fdloop::fs::File::read_exact_at");
        while !buf.is_empty() {
            match self.pread(buf, offset) {
                Ok(0) => break,
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if buf.is_empty() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "failed to fill whole buffer",
            ))
        }
    }

    /// Writes all of `buf` at `offset`, without using or moving the cursor.
    ///
    /// # Errors
    ///
    /// `WriteZero` when a write writes nothing; otherwise as for [`File::write_at`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        need_fiber("fdloop::fs::File::write_all_at");
        while !buf.is_empty() {
            match ops::write(self.raw(), buf, Some(offset), None) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write whole buffer",
                    ))
                }
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Flushes the file's data and metadata to the device (`fsync(2)`).
    ///
    /// # Errors
    ///
    /// The OS error (`EIO`, `ENOSPC`, `EINVAL` for files that cannot be synced …).
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn sync_all(&self) -> io::Result<()> {
        need_fiber("fdloop::fs::File::sync_all");
        ops::fsync(self.raw(), false)
    }

    /// Flushes the file's data, and only the metadata needed to read it back, to the device
    /// (`fdatasync(2)`).
    ///
    /// # Errors
    ///
    /// As for [`File::sync_all`].
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn sync_data(&self) -> io::Result<()> {
        need_fiber("fdloop::fs::File::sync_data");
        ops::fsync(self.raw(), true)
    }

    /// The file's metadata (`statx(2)`, on the loop's thread pool).
    ///
    /// # Errors
    ///
    /// The OS error (`EIO`, `EOVERFLOW` …).
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn metadata(&self) -> io::Result<std::fs::Metadata> {
        need_fiber("fdloop::fs::File::metadata");
        with_std_file(&self.fd, |f| f.metadata())
    }

    /// Truncates or extends the file to `size` bytes (`ftruncate(2)`, on the loop's thread
    /// pool); an extension reads as zeros. The cursor does not move.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a size beyond `i64::MAX` or a file not opened for writing (`EINVAL`);
    /// the OS error otherwise.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn set_len(&self, size: u64) -> io::Result<()> {
        need_fiber("fdloop::fs::File::set_len");
        with_std_file(&self.fd, move |f| f.set_len(size))
    }

    /// Changes the file's permissions (`fchmod(2)`, on the loop's thread pool).
    ///
    /// # Errors
    ///
    /// The OS error (`EPERM` when the caller does not own the file …).
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    pub fn set_permissions(&self, perm: std::fs::Permissions) -> io::Result<()> {
        need_fiber("fdloop::fs::File::set_permissions");
        with_std_file(&self.fd, move |f| f.set_permissions(perm))
    }

    /// A new `File` for the same open file (`dup`, close-on-exec). It shares the kernel's open
    /// file description (access mode, `O_APPEND`, locks), but **not** the cursor: its cursor
    /// starts where this one is and moves independently (unlike `std::fs::File::try_clone`,
    /// whose clones share the kernel's cursor). Works outside fibers too.
    ///
    /// # Errors
    ///
    /// `EMFILE` / `ENFILE` when out of fds.
    pub fn try_clone(&self) -> io::Result<File> {
        let fd = self.fd.as_fd().try_clone_to_owned()?;
        let direct = !self.try_cached.load(Ordering::Relaxed);
        Ok(File::adopt(
            fd,
            self.pos.load(Ordering::Relaxed),
            self.append,
            direct,
        ))
    }

    /// Converts into a [`std::fs::File`] whose kernel file position is set to this `File`'s
    /// cursor (when the file is seekable). Works outside fibers too.
    pub fn into_std(self) -> std::fs::File {
        std::fs::File::from(self.into_owned_fd())
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Takes the fd out, after setting the kernel's file position to the cursor.
    fn into_owned_fd(self) -> OwnedFd {
        let File { fd, pos, .. } = self;
        let pos = pos.into_inner();
        let fd = match Arc::try_unwrap(fd) {
            Ok(fd) => fd.into_owned(),
            // Only a thread-pool job of an unwound fiber can still hold it: hand out a dup.
            Err(shared) => shared
                .as_fd()
                .try_clone_to_owned()
                .unwrap_or_else(|e| panic!("cannot duplicate the file's fd: {e}")),
        };
        if let Ok(pos) = i64::try_from(pos) {
            // SAFETY: (FFI) lseek takes no pointers; a failure (unseekable fd) changes nothing.
            unsafe { libc::lseek(fd.as_raw_fd(), pos, libc::SEEK_SET) };
        }
        fd
    }

    /// A positional read in a fiber: the page-cache fast path, then the backend for what it
    /// did not serve.
    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut got = 0;
        if !buf.is_empty() && self.try_cached.load(Ordering::Relaxed) {
            let iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: (FFI) `iov` describes `buf`, which is writable and outlives the call, and
            // `read_cached` asks for nothing more.
            match unsafe { read_cached(self.raw(), &iov, 1, offset) } {
                Cached::Read(n) if n == buf.len() => {
                    cached_hit();
                    return Ok(n);
                }
                // Short: the end of the file, or only part of the range is cached. 0 is never
                // taken for the end of the file here: the backend's read says.
                Cached::Read(n) => got = n,
                Cached::Miss => {}
                Cached::Never => self.try_cached.store(false, Ordering::Relaxed),
            }
        }
        cached_miss();
        match ops::read(self.raw(), &mut buf[got..], Some(offset + got as u64), None) {
            Ok(n) => Ok(got + n),
            // The cached part was read: report it; the error comes back on the next call.
            Err(_) if got > 0 => Ok(got),
            Err(e) => Err(e),
        }
    }

    /// [`File::pread`], vectored. A partial page-cache hit is returned as a short read (the
    /// slices are the caller's and are not advanced).
    fn preadv(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        if self.try_cached.load(Ordering::Relaxed) && bufs.iter().any(|b| !b.is_empty()) {
            // SAFETY: (FFI) `IoSliceMut` is ABI-compatible with `iovec` (std guarantees it on
            // Unix); the buffers are writable and outlive the call, and `read_cached` asks for
            // nothing more.
            match unsafe { read_cached(self.raw(), bufs.as_ptr().cast(), bufs.len(), offset) } {
                Cached::Read(n) if n > 0 => {
                    cached_hit();
                    return Ok(n);
                }
                Cached::Read(_) | Cached::Miss => {}
                Cached::Never => self.try_cached.store(false, Ordering::Relaxed),
            }
        }
        cached_miss();
        ops::readv(self.raw(), bufs, Some(offset), None)
    }

    /// The cursor after a write of `n` bytes that started at `pos`.
    fn after_write(&self, pos: u64, n: usize) {
        let new = if self.append {
            // O_APPEND wrote at the end, and the kernel's position (read and written by the
            // non-positional write) is now just after the data.
            kernel_pos(self.raw()).unwrap_or(pos + n as u64)
        } else {
            pos + n as u64
        };
        self.pos.store(new, Ordering::Relaxed);
    }

    fn read_cursor(&self, buf: &mut [u8]) -> io::Result<usize> {
        need_fiber("fdloop::fs::File::read");
        let pos = self.pos.load(Ordering::Relaxed);
        let n = self.pread(buf, pos)?;
        self.pos.store(pos + n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn read_cursor_vectored(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        need_fiber("fdloop::fs::File::read_vectored");
        let pos = self.pos.load(Ordering::Relaxed);
        let n = self.preadv(bufs, pos)?;
        self.pos.store(pos + n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn write_cursor(&self, buf: &[u8]) -> io::Result<usize> {
        need_fiber("fdloop::fs::File::write");
        let pos = self.pos.load(Ordering::Relaxed);
        let offset = (!self.append).then_some(pos);
        let n = ops::write(self.raw(), buf, offset, None)?;
        self.after_write(pos, n);
        Ok(n)
    }

    fn write_cursor_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        need_fiber("fdloop::fs::File::write_vectored");
        let pos = self.pos.load(Ordering::Relaxed);
        let offset = (!self.append).then_some(pos);
        let n = ops::writev(self.raw(), bufs, offset, None)?;
        self.after_write(pos, n);
        Ok(n)
    }

    fn seek_cursor(&self, from: SeekFrom) -> io::Result<u64> {
        let new = match from {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::Current(d) => self.pos.load(Ordering::Relaxed).checked_add_signed(d),
            SeekFrom::End(d) => {
                need_fiber("fdloop::fs::File::seek (SeekFrom::End)");
                self.metadata()?.len().checked_add_signed(d)
            }
        };
        match new {
            Some(p) if p <= MAX_POS => {
                self.pos.store(p, Ordering::Relaxed);
                Ok(p)
            }
            _ => Err(invalid_seek()),
        }
    }

    /// `read_to_end` with room reserved for `hint` bytes; reads at the cursor until a read
    /// returns 0, probing with a small stack buffer before growing a full vector.
    fn read_to_end_hinted(&self, buf: &mut Vec<u8>, hint: Option<u64>) -> io::Result<usize> {
        let start = buf.len();
        if let Some(h) = hint.and_then(|h| usize::try_from(h).ok()) {
            buf.try_reserve_exact(h)
                .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        }
        loop {
            if buf.len() == buf.capacity() {
                let mut probe = [0u8; 32];
                match self.read_cursor(&mut probe) {
                    Ok(0) => return Ok(buf.len() - start),
                    Ok(n) => buf.extend_from_slice(&probe[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                let grow = buf.capacity().clamp(8 * 1024, 64 * 1024 * 1024);
                buf.try_reserve(grow)
                    .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
            }
            let old = buf.len();
            buf.resize(buf.capacity(), 0);
            match self.read_cursor(&mut buf[old..]) {
                Ok(0) => {
                    buf.truncate(old);
                    return Ok(old - start);
                }
                Ok(n) => buf.truncate(old + n),
                Err(e) => {
                    buf.truncate(old);
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// How many bytes lie between the cursor and the end of the file, if known.
    fn remaining_hint(&self) -> Option<u64> {
        let len = self.metadata().ok()?.len();
        Some(len.saturating_sub(self.pos.load(Ordering::Relaxed)))
    }
}

fn to_string(bytes: Vec<u8>, buf: &mut String) -> io::Result<usize> {
    let s = String::from_utf8(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })?;
    buf.push_str(&s);
    Ok(s.len())
}

impl Read for &File {
    /// Reads at the cursor and moves it by the number of bytes read (0 at end-of-file).
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_cursor(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.read_cursor_vectored(bufs)
    }

    /// Reads to the end of the file, with room reserved for the rest of the file first.
    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        need_fiber("fdloop::fs::File::read_to_end");
        let hint = self.remaining_hint();
        self.read_to_end_hinted(buf, hint)
    }

    fn read_to_string(&mut self, buf: &mut String) -> io::Result<usize> {
        let mut bytes = Vec::new();
        self.read_to_end(&mut bytes)?;
        to_string(bytes, buf)
    }
}

impl Read for File {
    /// Reads at the cursor and moves it by the number of bytes read (0 at end-of-file).
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_cursor(buf)
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.read_cursor_vectored(bufs)
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        (&*self).read_to_end(buf)
    }

    fn read_to_string(&mut self, buf: &mut String) -> io::Result<usize> {
        (&*self).read_to_string(buf)
    }
}

impl Write for &File {
    /// Writes at the cursor (at the end in append mode) and moves the cursor after the data.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_cursor(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_cursor_vectored(bufs)
    }

    /// Nothing to do: `File` has no buffer (use [`File::sync_data`] to reach the device).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for File {
    /// Writes at the cursor (at the end in append mode) and moves the cursor after the data.
    ///
    /// # Panics
    ///
    /// Outside a fiber.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_cursor(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.write_cursor_vectored(bufs)
    }

    /// Nothing to do: `File` has no buffer (use [`File::sync_data`] to reach the device).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for &File {
    /// Sets the cursor. `SeekFrom::End` asks for the file's size ([`File::metadata`]); the
    /// others do no I/O and work outside fibers too. Seeking past the end is allowed.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a position below 0 or above `i64::MAX`; for `SeekFrom::End`, the
    /// error of [`File::metadata`].
    ///
    /// # Panics
    ///
    /// `SeekFrom::End` outside a fiber.
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.seek_cursor(pos)
    }
}

impl Seek for File {
    /// As for `&File`.
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.seek_cursor(pos)
    }
}

impl AsFd for File {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for File {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

impl IntoRawFd for File {
    /// Gives up the fd, with the kernel's file position set to the cursor.
    fn into_raw_fd(self) -> RawFd {
        self.into_owned_fd().into_raw_fd()
    }
}

impl From<File> for OwnedFd {
    /// Gives up the fd, with the kernel's file position set to the cursor.
    fn from(f: File) -> OwnedFd {
        f.into_owned_fd()
    }
}

impl From<File> for std::fs::File {
    /// As [`File::into_std`].
    fn from(f: File) -> std::fs::File {
        f.into_std()
    }
}

impl From<OwnedFd> for File {
    /// Adopts an open file; the cursor starts at the kernel's file position (0 if it has
    /// none), and append mode follows the fd's `O_APPEND`. Nothing about the fd is changed.
    fn from(fd: OwnedFd) -> File {
        let raw = fd.as_raw_fd();
        let flags = status_flags(raw).unwrap_or(libc::O_DIRECT);
        let (append, direct) = (flags & libc::O_APPEND != 0, flags & libc::O_DIRECT != 0);
        File::adopt(fd, kernel_pos(raw).unwrap_or(0), append, direct)
    }
}

impl From<std::fs::File> for File {
    /// As `From<OwnedFd>`: the cursor continues where the `std` file's position was.
    fn from(f: std::fs::File) -> File {
        File::from(OwnedFd::from(f))
    }
}

/// Reads a whole file into a vector, like [`std::fs::read`]: the open and the size query run
/// together on the loop's thread pool, then one read (or a few) fills the vector.
///
/// # Errors
///
/// As for [`File::open`] (the message names the path) and [`Read::read_to_end`].
///
/// # Panics
///
/// Outside a fiber.
pub fn read<P: AsRef<Path>>(path: P) -> io::Result<Vec<u8>> {
    need_fiber("fdloop::fs::read");
    let (file, hint) = OpenOptions::new()
        .read(true)
        .open_sized(path.as_ref(), true)?;
    let mut bytes = Vec::new();
    file.read_to_end_hinted(&mut bytes, hint)?;
    Ok(bytes)
}

/// Reads a whole file into a string, like [`std::fs::read_to_string`].
///
/// # Errors
///
/// As for [`read`]; `InvalidData` when the file is not UTF-8.
///
/// # Panics
///
/// Outside a fiber.
pub fn read_to_string<P: AsRef<Path>>(path: P) -> io::Result<String> {
    let mut s = String::new();
    to_string(read(path)?, &mut s)?;
    Ok(s)
}

/// Writes `contents` to a file, creating it or truncating it first, like [`std::fs::write`].
///
/// # Errors
///
/// As for [`File::create`] (the message names the path) and [`Write::write_all`].
///
/// # Panics
///
/// Outside a fiber.
pub fn write<P: AsRef<Path>, C: AsRef<[u8]>>(path: P, contents: C) -> io::Result<()> {
    need_fiber("fdloop::fs::write");
    File::create(path)?.write_all(contents.as_ref())
}
