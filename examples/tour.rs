//! A tour of fdloop's callback API: `cargo run --example tour`.
//!
//! Each step registers something on one loop and calls `lp.run()`, which returns as soon as
//! nothing is left to wait for, so the steps run one after the other. The whole tour takes well
//! under a second. It behaves the same on both backends; try
//! `FDLOOP_BACKEND=epoll cargo run --example tour`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use fdloop::{Interest, Loop, Signal, Timer};

fn main() -> io::Result<()> {
    // A safety net for a demo: should anything hang, give up after 10 s.
    thread::spawn(|| {
        thread::sleep(Duration::from_secs(10));
        eprintln!("tour: still running after 10 s, giving up");
        std::process::exit(1);
    });
    let start = Instant::now();

    // One loop for this thread. It picks io_uring where the kernel allows it, else epoll, and
    // says why. FDLOOP_BACKEND=uring|epoll forces a choice.
    let lp = Loop::new()?;
    println!("backend: {}", lp.backend());

    // 1. A one-shot timer.
    let t0 = Instant::now();
    lp.start_timer(Timer::after(Duration::from_millis(20)), move |_lp, _id| {
        println!(
            "1. one-shot timer: fired after {} ms",
            t0.elapsed().as_millis()
        );
    });
    lp.run()?;

    // 2. A periodic timer that stops itself after 3 ticks.
    let mut ticks = 0;
    lp.start_timer(Timer::every(Duration::from_millis(10)), move |lp, id| {
        ticks += 1;
        println!("2. periodic timer: tick {ticks}");
        if ticks == 3 {
            lp.stop_timer(id).expect("the timer is running");
        }
    });
    lp.run()?;

    // 3. A signal. fdloop's handler only sets a flag and wakes the loop; the callback runs on
    //    the loop thread, where it may do anything. No signal needs to be blocked.
    let sig = lp.start_signal(Signal::USR1, |lp, sig| {
        println!(
            "3. signal: caught signal {} (SIGUSR1), raised by this process",
            sig.as_raw()
        );
        lp.stop(); // a signal watch keeps `run` going until it is stopped
    })?;
    // SAFETY: (FFI) raising a signal for which a handler is installed is sound.
    unsafe { libc::raise(libc::SIGUSR1) };
    lp.run()?;
    lp.stop_signal(sig)?;

    // 4. Readiness of a pipe: a timer writes to it, the poll callback reads what arrived and
    //    detaches the fd. The callback owns the read end, so the fd is closed when the callback
    //    is dropped, after the detach.
    let (read_end, write_end) = pipe()?;
    let mut reader = File::from(read_end);
    let mut writer = File::from(write_end);
    let fd = reader.as_raw_fd();
    lp.start_poll(fd, Interest::READABLE, move |lp, ready| {
        let mut buf = [0u8; 64];
        let n = reader.read(&mut buf).expect("read the pipe");
        let text = String::from_utf8_lossy(&buf[..n]);
        println!(
            "4. poll: pipe readable={}, read {text:?}",
            ready.is_readable()
        );
        lp.detach(fd).expect("detach the pipe");
    })?;
    lp.start_timer(Timer::after(Duration::from_millis(10)), move |_lp, _id| {
        writer
            .write_all(b"hello through a pipe")
            .expect("write the pipe");
    });
    lp.run()?;

    // 5. A closure posted from another thread through a `LoopHandle` (Send + Sync + Clone).
    //    A handle does not keep `run` going by itself, so wait with `run_for` (at most 2 s)
    //    and let the closure stop the loop.
    let handle = lp.handle();
    let poster = thread::Builder::new()
        .name("poster".into())
        .spawn(move || {
            handle
                .post(|lp| {
                    let here = thread::current();
                    println!(
                        "5. post: closure from thread \"poster\" runs on thread {:?}",
                        here.name().unwrap_or("?")
                    );
                    lp.stop();
                })
                .expect("the loop is open");
        })?;
    lp.run_for(Duration::from_secs(2))?;
    poster.join().expect("the poster thread");

    // 6. A regular file read at an offset with `read_at`: asynchronous on both backends
    //    (io_uring reads in the kernel; epoll hands it to its file threads). The buffer is
    //    owned by the loop while the read is in flight and comes back to the callback.
    let path = std::env::temp_dir().join(format!("fdloop-tour-{}.txt", std::process::id()));
    File::create(&path)?.write_all(b"0123456789hello, file")?;
    let file = File::open(&path)?;
    lp.read_at(&file, vec![0; 11], 10, |_lp, n, buf| {
        let n = n.expect("read the file");
        let text = String::from_utf8_lossy(&buf);
        println!("6. read_at: {n} bytes at offset 10: {text:?}");
    });
    lp.run()?;
    drop(file); // the read has completed: the file may be closed
    std::fs::remove_file(&path)?;

    // 7. Work on the loop's thread pool; the result comes back on the loop thread.
    lp.spawn_blocking(
        || {
            let worker = thread::current().name().unwrap_or("?").to_string();
            let sum: u64 = (1..=1_000_000u64).sum();
            (worker, sum)
        },
        |_lp, result| {
            let (worker, sum) = result.expect("the job did not panic");
            println!("7. spawn_blocking: sum 1..=1000000 = {sum}, computed on thread {worker:?}");
        },
    )?;
    lp.run()?;

    // Nothing is left: close the loop (dropping it does the same, without reporting errors).
    lp.close()?;
    println!("done in {} ms", start.elapsed().as_millis());
    Ok(())
}

/// A pipe (read end, write end), close-on-exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: (FFI) `fds` is a writable array of two ints that outlives the call.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: (FFI) pipe2 succeeded: both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
