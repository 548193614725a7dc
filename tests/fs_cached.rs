//! The page-cache fast path of positional reads (`preadv2(RWF_NOWAIT)` before the backend), on
//! both backends: fully and partly cached ranges, the end of the file, vectored reads,
//! `O_DIRECT` files, files adopted from `std`, fds that refuse the fast path, and fairness (a
//! fiber whose reads all hit the cache still lets the loop run).

mod common;

use std::cell::Cell;
use std::io::{IoSliceMut, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use common::{in_fiber, pattern};
use fdloop::fs::{File, OpenOptions};
use fdloop::{Loop, Timer};

/// The seed of this file's data pattern ([`pattern`]).
const SEED: u64 = 0x2545_f491_4f6c_dd1d;

const LEN: usize = 256 * 1024;

/// A file of `LEN` pattern bytes, synced to disk, removed when dropped.
struct TestFile(PathBuf);

impl TestFile {
    fn new(tag: &str) -> TestFile {
        let p = common::temp_path(tag);
        std::fs::write(&p, pattern(SEED, LEN)).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
        TestFile(p)
    }

    fn path(&self) -> PathBuf {
        self.0.clone()
    }

    /// Asks the kernel to drop the cached pages of `[offset, offset + len)` (clean after the
    /// sync, so they can go). Whether they really go does not matter to the tests: the reads
    /// must return the file's bytes either way.
    fn evict(&self, offset: usize, len: usize) {
        let f = std::fs::File::open(&self.0).unwrap();
        // SAFETY: (FFI) fadvise takes no pointers; `f` is open across the call.
        let r = unsafe {
            libc::posix_fadvise(
                f.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(r, 0);
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[repr(C, align(4096))]
struct Aligned([u8; 16384]);

backend_tests! {
    // Offsets past 4 GiB in a sparse file: the fast path passes the 64-bit offset to the
    // raw `preadv2` system call (as a low/high pair) and must read the right bytes.
    fn offsets_past_4_gib(lp: &Loop) {
        let p = common::temp_path("cached-far");
        let far: u64 = (5 << 30) + 4093; // crosses a page boundary too
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(&p).unwrap();
            f.write_all_at(b"far away", far).unwrap();
            f.write_all_at(b"near", 10).unwrap();
        }
        let p2 = p.clone();
        in_fiber(lp, move || {
            let f = File::open(&p2).unwrap();
            for _ in 0..2 {
                // The second round is served from the page cache the first one filled.
                let mut buf = [0u8; 8];
                assert_eq!(f.read_at(&mut buf, far).unwrap(), 8);
                assert_eq!(&buf, b"far away");
                let mut buf = [0u8; 4];
                assert_eq!(f.read_at(&mut buf, 10).unwrap(), 4);
                assert_eq!(&buf, b"near");
                let mut buf = [1u8; 4];
                assert_eq!(f.read_at(&mut buf, 1 << 32).unwrap(), 4);
                assert_eq!(buf, [0; 4], "a hole reads as zeros");
            }
        });
        let _ = std::fs::remove_file(&p);
    }

    fn partly_cached_ranges_read_whole(lp: &Loop) {
        let t = TestFile::new("cached-partly");
        let p = t.path();
        let want = pattern(SEED, LEN);
        // Warm the first half, drop the second: a read across the middle is a partial hit.
        std::fs::read(&p).unwrap();
        t.evict(LEN / 2, LEN / 2);
        let w = want.clone();
        in_fiber(lp, move || {
            let f = File::open(&p).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let at = LEN / 2 - 8 * 1024;
            assert_eq!(f.read_at(&mut buf, at as u64).unwrap(), buf.len());
            assert_eq!(buf, w[at..at + buf.len()]);
            // Cold everywhere: the whole read goes to the backend.
            let n = buf.len();
            assert_eq!(f.read_at(&mut buf, (LEN - n) as u64).unwrap(), n);
            assert_eq!(buf, w[LEN - buf.len()..]);
            let mut whole = vec![0u8; LEN];
            f.read_exact_at(&mut whole, 0).unwrap();
            assert_eq!(whole, w);
        });
        t.evict(0, LEN);
        let p = t.path();
        let got = in_fiber(lp, move || {
            let mut f = File::open(&p).unwrap();
            let mut v = Vec::new();
            f.read_to_end(&mut v).unwrap();
            v
        });
        assert_eq!(got, want);
    }

    fn the_end_of_the_file(lp: &Loop) {
        let t = TestFile::new("cached-end");
        let p = t.path();
        let want = pattern(SEED, LEN);
        std::fs::read(&p).unwrap();
        in_fiber(lp, move || {
            let f = File::open(&p).unwrap();
            let mut buf = [0u8; 100];
            assert_eq!(f.read_at(&mut buf, LEN as u64).unwrap(), 0);
            assert_eq!(f.read_at(&mut buf, LEN as u64 + 4096).unwrap(), 0);
            assert_eq!(f.read_at(&mut buf, LEN as u64 - 10).unwrap(), 10);
            assert_eq!(buf[..10], want[LEN - 10..]);
            assert_eq!(f.read_at(&mut [], 5).unwrap(), 0);
            let e = f.read_at(&mut buf, u64::MAX).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        });
    }

    fn vectored_reads_at_the_cursor(lp: &Loop) {
        let t = TestFile::new("cached-vectored");
        let p = t.path();
        let want = pattern(SEED, LEN);
        std::fs::read(&p).unwrap();
        in_fiber(lp, move || {
            let mut f = File::open(&p).unwrap();
            f.seek(SeekFrom::Start(1000)).unwrap();
            let (mut a, mut b) = ([0u8; 3000], [0u8; 5000]);
            let mut total = 0;
            // A short read is allowed; together the calls fill both buffers in order.
            while total < 8000 {
                let (x, y) = if total < 3000 {
                    (&mut a[total..], &mut b[..])
                } else {
                    (&mut a[3000..], &mut b[total - 3000..])
                };
                let n = f
                    .read_vectored(&mut [IoSliceMut::new(x), IoSliceMut::new(y)])
                    .unwrap();
                assert!(n > 0);
                total += n;
            }
            assert_eq!(a[..], want[1000..4000]);
            assert_eq!(b[..], want[4000..9000]);
            assert_eq!(f.stream_position().unwrap(), 9000);
        });
    }

    fn direct_files_and_adopted_files(lp: &Loop) {
        let t = TestFile::new("cached-direct");
        let p = t.path();
        let want = pattern(SEED, LEN);
        let w = want.clone();
        in_fiber(lp, move || {
            match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&p) {
                Ok(f) => {
                    let mut page = Aligned([0; 16384]);
                    assert_eq!(f.read_at(&mut page.0, 16384).unwrap(), 16384);
                    assert_eq!(page.0[..], w[16384..32768]);
                }
                // A file system without O_DIRECT (tmpfs before 6.6).
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL)),
            }
            let std_file = std::fs::File::open(&p).unwrap();
            let f = File::from(std_file);
            let mut buf = [0u8; 4096];
            assert_eq!(f.read_at(&mut buf, 8192).unwrap(), 4096);
            assert_eq!(buf[..], w[8192..12288]);
        });
    }

    fn fds_that_refuse_the_fast_path(lp: &Loop) {
        // A pipe adopted as a File: positional reads fail with ESPIPE, as `pread` does, and
        // keep failing the same way (the fast path is dropped, the backend answers).
        let (r, w) = common::pipe();
        drop(w);
        in_fiber(lp, move || {
            let f = File::from(r);
            let mut buf = [0u8; 16];
            for _ in 0..3 {
                let e = f.read_at(&mut buf, 0).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::ESPIPE));
            }
        });
    }

    fn cache_hits_do_not_starve_the_loop(lp: &Loop) {
        let t = TestFile::new("cached-fair");
        let p = t.path();
        std::fs::read(&p).unwrap();
        // Opened first: the open itself suspends the fiber, which would let the others run.
        let f = in_fiber(lp, move || File::open(&p).unwrap());
        let other_ran = Rc::new(Cell::new(false));
        let timer_fired = Rc::new(Cell::new(false));
        let tf = timer_fired.clone();
        lp.start_timer(Timer::after(Duration::ZERO), move |_, _| tf.set(true));
        let (o, tf) = (other_ran.clone(), timer_fired.clone());
        let reader = lp.spawn(move || {
            let mut buf = [0u8; 4096];
            // Every read is served by the cache; the reader must still let the other fiber
            // and the timer run before it is done. It yields every 64 hits, and the
            // scheduler runs a whole iteration (timers included) at the latest after 256
            // resumptions: 64 × 256 hits, twice over.
            for i in 0..(2 * 64 * 256 + 1000u64) {
                let off = (i * 4096) % LEN as u64;
                assert_eq!(f.read_at(&mut buf, off).unwrap(), 4096);
            }
            (o.get(), tf.get())
        });
        let o = other_ran.clone();
        lp.spawn(move || o.set(true));
        lp.run().unwrap();
        assert_eq!(reader.join().unwrap(), (true, true));
    }
}
