//! Files for fibers on both backends: positional and cursor I/O, seeking, append mode, vectored
//! I/O, a large read, concurrent positional reads, syncs, metadata, errors, and fd-number reuse.

mod common;

use std::cell::Cell;
use std::io::{self, IoSlice, IoSliceMut, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use common::{in_fiber, pattern};
use fdloop::fs::{self, File, OpenOptions};
use fdloop::{fiber, pipe, Loop};

/// The seed of this file's data pattern ([`pattern`]).
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// A temp path removed (file or directory) when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(tag: &str) -> TempPath {
        TempPath(common::temp_path(tag))
    }

    fn path(&self) -> PathBuf {
        self.0.clone()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn file_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<File>();
    assert_send_sync::<OpenOptions>();
}

fn contents(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

backend_tests! {
    fn write_at_and_read_at_at_offsets(lp: &Loop) {
        let t = TempPath::new("at");
        let p = t.path();
        in_fiber(lp, move || {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .unwrap();
            assert_eq!(f.write_at(b"hello", 0).unwrap(), 5);
            f.write_all_at(b"world", 10).unwrap(); // leaves a hole of zeros
            let mut buf = [0xffu8; 15];
            f.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(&buf, b"hello\0\0\0\0\0world");
            let mut small = [0u8; 3];
            assert_eq!(f.read_at(&mut small, 11).unwrap(), 3);
            assert_eq!(&small, b"orl");
            // At and past the end: 0 bytes.
            assert_eq!(f.read_at(&mut small, 15).unwrap(), 0);
            assert_eq!(f.read_at(&mut small, 1 << 40).unwrap(), 0);
            // A short read at the end.
            assert_eq!(f.read_at(&mut small, 13).unwrap(), 2);
            let e = f.read_exact_at(&mut small, 14).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            // Positional I/O does not move the cursor.
            let mut g = &f;
            assert_eq!(g.stream_position().unwrap(), 0);
        });
        assert_eq!(contents(&t.0), b"hello\0\0\0\0\0world");
    }

    fn read_write_seek_sequences(lp: &Loop) {
        let t = TempPath::new("seek");
        let p = t.path();
        in_fiber(lp, move || {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&p)
                .unwrap();
            f.write_all(b"0123456789").unwrap();
            assert_eq!(f.stream_position().unwrap(), 10);
            assert_eq!(f.seek(SeekFrom::Start(2)).unwrap(), 2);
            let mut buf = [0u8; 3];
            f.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"234");
            assert_eq!(f.seek(SeekFrom::Current(-2)).unwrap(), 3);
            f.write_all(b"ab").unwrap();
            assert_eq!(f.seek(SeekFrom::Current(1)).unwrap(), 6);
            assert_eq!(f.seek(SeekFrom::Current(-1)).unwrap(), 5);
            assert_eq!(f.seek(SeekFrom::End(-3)).unwrap(), 7);
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, "789");
            assert_eq!(f.read(&mut buf).unwrap(), 0, "at end-of-file");
            // Past the end, then write: the gap reads as zeros.
            assert_eq!(f.seek(SeekFrom::End(2)).unwrap(), 12);
            f.write_all(b"X").unwrap();
            assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 13);
            // Invalid seeks leave the cursor alone.
            let e = f.seek(SeekFrom::Current(-100)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            let e = f.seek(SeekFrom::Start(u64::MAX)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert_eq!(f.stream_position().unwrap(), 13);
            // `&File` shares the cursor.
            f.rewind().unwrap();
            let mut r = &f;
            let mut two = [0u8; 2];
            r.read_exact(&mut two).unwrap();
            assert_eq!(&two, b"01");
            assert_eq!(f.stream_position().unwrap(), 2);
            // `try_clone` starts at the same place and moves on its own.
            let mut c = f.try_clone().unwrap();
            assert_ne!(c.as_raw_fd(), f.as_raw_fd());
            c.read_exact(&mut two).unwrap();
            assert_eq!(&two, b"2a");
            assert_eq!(f.stream_position().unwrap(), 2);
            assert_eq!(c.stream_position().unwrap(), 4);
        });
        assert_eq!(contents(&t.0), b"012ab56789\0\0X");
    }

    fn append_mode_writes_at_the_end(lp: &Loop) {
        let t = TempPath::new("append");
        std::fs::write(&t.0, b"abc").unwrap();
        let p = t.path();
        in_fiber(lp, move || {
            let mut f = OpenOptions::new().read(true).append(true).open(&p).unwrap();
            assert_eq!(f.stream_position().unwrap(), 0);
            f.write_all(b"def").unwrap();
            assert_eq!(f.stream_position().unwrap(), 6, "the cursor follows the data");
            f.rewind().unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, "abcdef");
            // Seeking does not change where writes go.
            f.seek(SeekFrom::Start(1)).unwrap();
            f.write_all(b"g").unwrap();
            assert_eq!(f.stream_position().unwrap(), 7);
            let n = f.write_vectored(&[IoSlice::new(b"h"), IoSlice::new(b"ij")]).unwrap();
            assert_eq!(n, 3);
            assert_eq!(f.stream_position().unwrap(), 10);
            // A second appender on its own open file.
            let mut g = OpenOptions::new().append(true).open(&p).unwrap();
            g.write_all(b"K").unwrap();
            f.write_all(b"L").unwrap();
            assert_eq!(f.stream_position().unwrap(), 12);
            // Append and truncate do not mix.
            let e = OpenOptions::new().append(true).truncate(true).open(&p).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        });
        assert_eq!(contents(&t.0), b"abcdefghijKL");
    }

    fn vectored_read_and_write(lp: &Loop) {
        let t = TempPath::new("vectored");
        let p = t.path();
        in_fiber(lp, move || {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .open(&p)
                .unwrap();
            let n = f
                .write_vectored(&[IoSlice::new(b"one "), IoSlice::new(b""), IoSlice::new(b"two")])
                .unwrap();
            assert_eq!(n, 7);
            assert_eq!(f.stream_position().unwrap(), 7);
            f.rewind().unwrap();
            let (mut a, mut b, mut c) = ([0u8; 2], [0u8; 3], [0u8; 8]);
            let n = f
                .read_vectored(&mut [
                    IoSliceMut::new(&mut a),
                    IoSliceMut::new(&mut b),
                    IoSliceMut::new(&mut c),
                ])
                .unwrap();
            assert_eq!(n, 7);
            assert_eq!((&a, &b, &c[..2]), (b"on", b"e t", &b"wo"[..]));
            assert_eq!(f.stream_position().unwrap(), 7);
            // Through `&File` too.
            let mut r = &f;
            r.seek(SeekFrom::Start(4)).unwrap();
            let mut d = [0u8; 3];
            assert_eq!(r.read_vectored(&mut [IoSliceMut::new(&mut d)]).unwrap(), 3);
            assert_eq!(&d, b"two");
        });
        assert_eq!(contents(&t.0), b"one two");
    }

    fn read_to_end_of_a_4_mib_file(lp: &Loop) {
        let t = TempPath::new("big");
        let data = pattern(SEED, 4 << 20);
        std::fs::write(&t.0, &data).unwrap();
        let p = t.path();
        let (whole, tail, via_read) = in_fiber(lp, move || {
            let mut f = File::open(&p).unwrap();
            let mut whole = Vec::new();
            assert_eq!(f.read_to_end(&mut whole).unwrap(), 4 << 20);
            // From the middle, appended to what the vector holds.
            f.seek(SeekFrom::Start((4 << 20) - 1000)).unwrap();
            let mut tail = b"prefix".to_vec();
            assert_eq!(f.read_to_end(&mut tail).unwrap(), 1000);
            (whole, tail, fs::read(&p).unwrap())
        });
        assert!(whole == data, "read_to_end content differs");
        assert_eq!(&tail[..6], b"prefix");
        assert!(tail[6..] == data[data.len() - 1000..]);
        assert!(via_read == data, "fs::read content differs");
    }

    fn sixteen_fibers_read_at_concurrently(lp: &Loop) {
        const CHUNK: usize = 64 * 1024;
        let t = TempPath::new("concurrent");
        let data = Rc::new(pattern(SEED, 16 * CHUNK + 123));
        std::fs::write(&t.0, &*data).unwrap();
        let p = t.path();
        let file = Rc::new(in_fiber(lp, move || File::open(&p).unwrap()));
        let mut handles = Vec::new();
        for i in 0..16usize {
            let (f, d) = (file.clone(), data.clone());
            handles.push(lp.spawn(move || {
                // Different offsets, not chunk-aligned, the last one running past the end.
                let off = i * CHUNK + i * 7;
                let mut buf = vec![0u8; CHUNK];
                let mut got = 0;
                loop {
                    let n = f.read_at(&mut buf[got..], (off + got) as u64).unwrap();
                    if n == 0 {
                        break;
                    }
                    got += n;
                    if got == buf.len() {
                        break;
                    }
                }
                let want = &d[off..(off + CHUNK).min(d.len())];
                assert_eq!(got, want.len(), "fiber {i}: length");
                assert!(&buf[..got] == want, "fiber {i}: content differs");
            }));
        }
        lp.run().unwrap();
        for h in handles {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    }

    fn sync_metadata_and_set_len(lp: &Loop) {
        let t = TempPath::new("meta");
        let p = t.path();
        in_fiber(lp, move || {
            let mut f = File::create(&p).unwrap();
            f.write_all(&[7u8; 1000]).unwrap();
            f.sync_all().unwrap();
            f.sync_data().unwrap();
            let m = f.metadata().unwrap();
            assert!(m.is_file());
            assert_eq!(m.len(), 1000);
            f.set_len(10).unwrap();
            assert_eq!(f.metadata().unwrap().len(), 10);
            assert_eq!(f.stream_position().unwrap(), 1000, "set_len does not move the cursor");
            f.set_len(4096).unwrap();
            assert_eq!(f.metadata().unwrap().len(), 4096);
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
            // Opened read-only: writes and set_len fail.
            let r = File::open(&p).unwrap();
            assert!(r.write_at(b"x", 0).is_err());
            assert!(r.set_len(0).is_err());
            fs::write(&p, "via fs::write").unwrap();
            assert_eq!(fs::read_to_string(&p).unwrap(), "via fs::write");
        });
        assert_eq!(std::fs::metadata(&t.0).unwrap().len(), 13);
    }

    fn open_errors(lp: &Loop) {
        let dir = TempPath::new("dir");
        std::fs::create_dir(&dir.0).unwrap();
        let existing = TempPath::new("exists");
        std::fs::write(&existing.0, b"x").unwrap();
        let missing = TempPath::new("missing");
        let (d, e, m) = (dir.path(), existing.path(), missing.path());
        in_fiber(lp, move || {
            // A missing path: NotFound, with the path and the OS message.
            let err = File::open(&m).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
            let msg = err.to_string();
            assert!(msg.contains(&*m.to_string_lossy()), "{msg}");
            assert!(msg.ends_with(": No such file or directory (os error 2)"), "{msg}");
            let source = std::error::Error::source(err.get_ref().unwrap()).unwrap();
            let os = source.downcast_ref::<io::Error>().unwrap();
            assert_eq!(os.raw_os_error(), Some(libc::ENOENT));
            assert_eq!(fs::read(&m).unwrap_err().kind(), io::ErrorKind::NotFound);
            // A directory opens, but reading it fails with EISDIR.
            let mut f = File::open(&d).unwrap();
            let mut buf = [0u8; 8];
            let err = f.read(&mut buf).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EISDIR), "{err}");
            assert_eq!(fs::read(&d).unwrap_err().raw_os_error(), Some(libc::EISDIR));
            // create_new on an existing file.
            let err = File::create_new(&e).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
            let err = OpenOptions::new().write(true).create_new(true).open(&e).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
            // Meaningless options and bad paths.
            let err = OpenOptions::new().open(&e).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let err = OpenOptions::new().read(true).create(true).open(&e).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            let err = File::open("nul\0byte").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        });
        assert!(!missing.0.exists());
        assert_eq!(contents(&existing.0), b"x");
    }

    fn conversions_keep_the_position(lp: &Loop) {
        let t = TempPath::new("convert");
        std::fs::write(&t.0, b"0123456789").unwrap();
        let p = t.path();
        let mut std_file = std::fs::File::open(&t.0).unwrap();
        std_file.seek(SeekFrom::Start(3)).unwrap();
        let back = in_fiber(lp, move || {
            let mut f = File::from(std_file);
            let mut b = [0u8; 2];
            f.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"34");
            let flags = OpenOptions::new().read(true).custom_flags(libc::O_NOATIME).clone();
            // O_NOATIME needs ownership of the file, which the test has.
            drop(flags.open(&p).unwrap());
            f.into_std()
        });
        let mut back = back;
        let mut rest = String::new();
        back.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "56789");
    }

    fn a_file_used_outside_a_fiber_panics_with_advice(lp: &Loop) {
        let t = TempPath::new("outside");
        std::fs::write(&t.0, b"x").unwrap();
        let f = File::from(std::fs::File::open(&t.0).unwrap());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut b = [0u8; 1];
            let _ = f.read_at(&mut b, 0);
        }));
        let payload = r.unwrap_err();
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap();
        assert!(msg.contains("fdloop::fs::File::read_at"), "{msg}");
        assert!(msg.contains("inside a fiber"), "{msg}");
        assert!(msg.contains("Loop::spawn"), "{msg}");
        // The same for opening.
        let r = std::panic::catch_unwind(|| File::open("/nonexistent").map(drop));
        assert!(r.is_err());
        // Seeking from the start needs no I/O and works anywhere; the loop stays usable.
        let mut g = &f;
        assert_eq!(g.seek(SeekFrom::Start(1)).unwrap(), 1);
        let n = in_fiber(lp, move || {
            let mut b = [0u8; 1];
            f.read_at(&mut b, 0).unwrap()
        });
        assert_eq!(n, 1);
    }

    fn fd_numbers_reused_between_files_and_pipes(lp: &Loop) {
        // The numbers are process-wide and other tests run in parallel: try until the number
        // is reused (it nearly always is at once).
        let t = TempPath::new("reuse");
        std::fs::write(&t.0, b"file data").unwrap();
        let p = t.path();
        let checked = in_fiber(lp, move || {
            let mut checked = 0;
            for _ in 0..100 {
                // A file's number reused by a pipe: the pipe must behave as a pipe (its read
                // waits for data instead of failing with EAGAIN).
                let f = File::open(&p).unwrap();
                let mut b = [0u8; 4];
                f.read_exact_at(&mut b, 0).unwrap();
                let num = f.as_raw_fd();
                drop(f);
                let (mut rx, mut tx) = pipe().unwrap();
                if rx.as_raw_fd() == num {
                    let writer = fiber::spawn(move || {
                        // Let the read start on the empty pipe first.
                        fiber::sleep(Duration::from_millis(5));
                        tx.write_all(b"pipe").unwrap();
                    });
                    let mut got = [0u8; 4];
                    rx.read_exact(&mut got).unwrap();
                    assert_eq!(&got, b"pipe");
                    writer.join().unwrap();
                    checked |= 1;
                }
                // A pipe's number reused by a file: positional reads must work.
                let num = rx.as_raw_fd();
                drop(rx);
                let f = File::open(&p).unwrap();
                if f.as_raw_fd() == num {
                    let mut b = [0u8; 9];
                    f.read_exact_at(&mut b, 0).unwrap();
                    assert_eq!(&b, b"file data");
                    checked |= 2;
                }
                if checked == 3 {
                    break;
                }
            }
            checked
        });
        if checked != 3 {
            eprintln!("fd numbers were never reused ({checked:#b}): partly skipped");
        }
    }
}

backend_tests! {
    fn closing_the_loop_unwinds_a_fiber_that_holds_a_file(lp: &Loop) {
        // A loop of its own (of the same kind) to close while a fiber holds a file.
        let choice = match lp.backend().kind {
            fdloop::BackendKind::Uring => fdloop::BackendChoice::Uring,
            _ => fdloop::BackendChoice::Epoll,
        };
        let own = common::new_loop(choice).unwrap();
        let t = TempPath::new("close");
        let p = t.path();
        let opened = Rc::new(Cell::new(-1));
        let o = opened.clone();
        let h = own.spawn(move || {
            let f = File::create(&p).unwrap();
            f.write_all_at(b"kept", 0).unwrap();
            o.set(f.as_raw_fd());
            fiber::with_loop(|lp| lp.stop());
            fiber::sleep(Duration::from_secs(3600));
            drop(f);
        });
        own.run().unwrap();
        assert!(opened.get() >= 0);
        own.close().unwrap();
        assert!(h.join().is_err(), "the fiber did not finish");
        assert_eq!(contents(&t.0), b"kept");
    }
}
