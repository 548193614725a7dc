//! Random 4 KiB reads from a regular file.
//!
//! The file is `$FDLOOP_BENCH_DIR/fdloop-bench-<MB>.bin` (default directory: the system's
//! temporary directory), `$FDLOOP_BENCH_FILE_MB` MiB large (default 1024); it is created on
//! first use, synced to disk, and kept for later runs. Offsets are random multiples of 4 KiB.
//!
//! Page-cache warm (the file is read once in full first):
//! * `warm/pread-loop`: one thread, `pread(2)` in a loop: the floor.
//! * `warm/fdloop-{uring,epoll}-32-fibers`: 32 fibers, each `fdloop::fs::File::read_at` in a
//!   loop. A read first tries `preadv2(RWF_NOWAIT)`, which the warm cache serves on the loop's
//!   thread on both backends (a miss would go to the ring, or to epoll's file thread pool).
//! * `warm/tokio-fs-32-tasks`: 32 tasks on a `current_thread` runtime, each with its own
//!   `tokio::fs::File`, `seek` + `read_exact` (tokio::fs runs each on its blocking pool).
//!
//! `O_DIRECT` (the page cache is bypassed; this measures the disk and the submission path):
//! * `direct/io-uring-qd32`: a hand-written `io-uring` crate loop keeping 32 reads in flight.
//! * `direct/fdloop-uring-32-fibers`: 32 fibers, `read_at` into a 4 KiB-aligned buffer on
//!   their stacks.

mod common;

use std::io::{Read, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion, Throughput};
use fdloop::{BackendChoice, Loop};

const BLOCK: u64 = 4096;
const FIBERS: u64 = 32;

#[repr(C, align(4096))]
struct Page([u8; BLOCK as usize]);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn offset(&mut self, blocks: u64) -> u64 {
        (self.next() % blocks) * BLOCK
    }
}

fn bench_file() -> (PathBuf, u64) {
    let mb: u64 = std::env::var("FDLOOP_BENCH_FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = std::env::var_os("FDLOOP_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("fdloop-bench-{mb}.bin"));
    let size = mb * 1024 * 1024;
    if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(size) {
        eprintln!("creating {} ({mb} MiB)", path.display());
        let mut f = std::fs::File::create(&path).expect("create the bench file");
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..mb {
            for w in chunk.chunks_mut(8) {
                w.copy_from_slice(&rng.next().to_le_bytes());
            }
            f.write_all(&chunk).expect("write the bench file");
        }
        f.sync_all().expect("sync the bench file");
    }
    (path, size)
}

fn warm_cache(path: &Path) {
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).expect("read") > 0 {}
}

/// Opens `path` as an fdloop file (opening needs a fiber).
fn fdloop_open(lp: &Loop, path: &Path, direct: bool) -> Rc<fdloop::fs::File> {
    let path = path.to_path_buf();
    let h = lp.spawn(move || {
        fdloop::fs::OpenOptions::new()
            .read(true)
            .custom_flags(if direct { libc::O_DIRECT } else { 0 })
            .open(&path)
    });
    lp.run().expect("run");
    Rc::new(h.join().expect("fiber").expect("open"))
}

/// 32 fibers reading `iters` blocks in all; returns the elapsed time.
fn fdloop_reads(lp: &Loop, file: &Rc<fdloop::fs::File>, blocks: u64, iters: u64) -> Duration {
    let t = Instant::now();
    for k in 0..FIBERS {
        let n = iters / FIBERS + u64::from(k < iters % FIBERS);
        let file = file.clone();
        lp.spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (k + 1).wrapping_mul(0x2545_f491));
            let mut page = Page([0; BLOCK as usize]);
            for _ in 0..n {
                let got = file
                    .read_at(&mut page.0, rng.offset(blocks))
                    .expect("read_at");
                assert_eq!(got, BLOCK as usize);
            }
        });
    }
    lp.run().expect("run");
    t.elapsed()
}

fn warm(c: &mut Criterion) {
    let (path, size) = bench_file();
    let blocks = size / BLOCK;
    warm_cache(&path);
    let mut g = c.benchmark_group("warm");
    g.throughput(Throughput::Elements(1));

    let std_file = std::fs::File::open(&path).expect("open");
    let mut rng = Rng(7);
    let mut page = Page([0; BLOCK as usize]);
    g.bench_function("pread-loop", |b| {
        b.iter(|| {
            let got = std_file
                .read_at(&mut page.0, rng.offset(blocks))
                .expect("pread");
            assert_eq!(got, BLOCK as usize);
        })
    });

    // The same loop with the destination footprint of 32 fibers (one page each, used in
    // turn): it tells the cost of the copies into 128 KiB of buffers from fdloop's own cost.
    let mut pages: Vec<Page> = (0..FIBERS).map(|_| Page([0; BLOCK as usize])).collect();
    let mut next = 0;
    g.bench_function("pread-loop-32-buffers", |b| {
        b.iter(|| {
            next = (next + 1) % pages.len();
            let got = std_file
                .read_at(&mut pages[next].0, rng.offset(blocks))
                .expect("pread");
            assert_eq!(got, BLOCK as usize);
        })
    });

    // The floor for a reader that must not block on a cache miss: `preadv2(RWF_NOWAIT)`, which
    // fdloop's fast path issues; the kernel runs it through its vectored read path.
    g.bench_function("preadv2-nowait-loop", |b| {
        b.iter(|| {
            let iov = libc::iovec {
                iov_base: page.0.as_mut_ptr().cast(),
                iov_len: page.0.len(),
            };
            let off = rng.offset(blocks) as libc::off_t;
            // SAFETY: (FFI) `iov` describes `page`, writable for the call; the fd is open.
            let got =
                unsafe { libc::preadv2(std_file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
            if got != BLOCK as isize {
                // Not all cached (EAGAIN or short): a plain read, as fdloop's slow path would.
                let got = std_file.read_at(&mut page.0, off as u64).expect("pread");
                assert_eq!(got, BLOCK as usize);
            }
        })
    });

    for (name, backend) in [
        ("fdloop-uring-32-fibers", BackendChoice::Uring),
        ("fdloop-epoll-32-fibers", BackendChoice::Epoll),
    ] {
        let lp = Loop::builder().backend(backend).build().expect("loop");
        let file = fdloop_open(&lp, &path, false);
        g.bench_function(name, |b| {
            b.iter_custom(|iters| fdloop_reads(&lp, &file, blocks, iters))
        });
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut files: Vec<tokio::fs::File> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..FIBERS {
            v.push(tokio::fs::File::open(&path).await.expect("open"));
        }
        v
    });
    g.bench_function("tokio-fs-32-tasks", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let t = Instant::now();
                let mut tasks = Vec::new();
                for (k, mut f) in files.drain(..).enumerate() {
                    let k = k as u64;
                    let n = iters / FIBERS + u64::from(k < iters % FIBERS);
                    tasks.push(tokio::spawn(async move {
                        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (k + 1));
                        let mut buf = vec![0u8; BLOCK as usize];
                        for _ in 0..n {
                            f.seek(SeekFrom::Start(rng.offset(blocks)))
                                .await
                                .expect("seek");
                            f.read_exact(&mut buf).await.expect("read");
                        }
                        f
                    }));
                }
                for task in tasks {
                    files.push(task.await.expect("task"));
                }
                t.elapsed()
            })
        })
    });
    g.finish();
}

fn direct(c: &mut Criterion) {
    let (path, size) = bench_file();
    let blocks = size / BLOCK;
    let mut g = c.benchmark_group("direct");
    g.throughput(Throughput::Elements(1));

    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("O_DIRECT unavailable on {}: {e}; skipping", path.display());
            return;
        }
    };
    let mut ring = io_uring::IoUring::new(64).expect("ring");
    let mut pages: Vec<Box<Page>> = (0..FIBERS).map(|_| Box::new(Page([0; 4096]))).collect();
    let fd = io_uring::types::Fd(file.as_raw_fd());
    let mut rng = Rng(11);
    g.bench_function("io-uring-qd32", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            let mut issued = 0u64;
            let mut done = 0u64;
            let mut push = |ring: &mut io_uring::IoUring, i: usize, off: u64| {
                let e = io_uring::opcode::Read::new(fd, pages[i].0.as_mut_ptr(), BLOCK as u32)
                    .offset(off)
                    .build()
                    .user_data(i as u64);
                // SAFETY: (I2) the page stays alive and untouched until its completion is reaped
                // (every read is reaped before this closure's caller returns).
                unsafe { ring.submission().push(&e).expect("sq room") };
            };
            while issued < iters.min(FIBERS) {
                push(&mut ring, issued as usize, rng.offset(blocks));
                issued += 1;
            }
            while done < iters {
                ring.submit_and_wait(1).expect("enter");
                let cqes: Vec<(u64, i32)> = ring
                    .completion()
                    .map(|c| (c.user_data(), c.result()))
                    .collect();
                for (ud, res) in cqes {
                    assert_eq!(res, BLOCK as i32, "O_DIRECT read");
                    done += 1;
                    if issued < iters {
                        push(&mut ring, ud as usize, rng.offset(blocks));
                        issued += 1;
                    }
                }
            }
            t.elapsed()
        })
    });
    drop(file);

    let lp = Loop::builder()
        .backend(BackendChoice::Uring)
        .build()
        .expect("loop");
    let file = fdloop_open(&lp, &path, true);
    g.bench_function("fdloop-uring-32-fibers", |b| {
        b.iter_custom(|iters| fdloop_reads(&lp, &file, blocks, iters))
    });
    g.finish();
}

/// criterion's entry point for this file's benchmarks.
mod group {
    use super::*;
    use criterion::criterion_group;

    criterion_group! {
        name = benches;
        config = common::config(10);
        targets = warm, direct
    }
}
criterion_main!(group::benches);
