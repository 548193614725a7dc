//! Fibers on both backends: spawn/join, sleep order, yield, panics, pipe I/O between fibers,
//! timeouts, closing a loop with blocked fibers, and the lent-buffer guard.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fdloop::{fiber, pipe, Loop, Timer};

backend_tests! {
    fn spawn_join_and_nested_spawn(lp: &Loop) {
        let a = lp.spawn(|| 1 + 1);
        let b = lp.spawn(|| {
            let c = fiber::spawn(|| {
                fiber::yield_now();
                40
            });
            c.join().unwrap() + 2
        });
        lp.run().unwrap();
        assert!(a.is_finished());
        assert_eq!(a.join().unwrap(), 2);
        assert_eq!(b.join().unwrap(), 42);
    }

    fn join_outside_a_fiber_drives_the_loop(lp: &Loop) {
        let h = lp.spawn(|| {
            fiber::sleep(Duration::from_millis(2));
            "done"
        });
        assert_eq!(h.join().unwrap(), "done");
    }

    fn ten_thousand_sleepers_wake_in_deadline_order(lp: &Loop) {
        let woke: Rc<RefCell<Vec<(Instant, usize, Instant)>>> = Rc::default();
        let base = Instant::now() + Duration::from_millis(2);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let deadline = base + Duration::from_micros(seed % 50_000);
            let w = woke.clone();
            lp.spawn(move || {
                fiber::sleep_until(deadline);
                w.borrow_mut().push((deadline, i, Instant::now()));
            });
        }
        lp.run().unwrap();
        let woke = woke.borrow();
        assert_eq!(woke.len(), 10_000);
        for (deadline, _, at) in woke.iter() {
            assert!(at >= deadline, "a sleep ended early");
        }
        // Woken in deadline order; equal deadlines in the order the fibers went to sleep.
        let order: Vec<(Instant, usize)> = woke.iter().map(|w| (w.0, w.1)).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert!(order == sorted, "sleepers woke out of deadline order");
    }

    fn yield_now_interleaves(lp: &Loop) {
        let log: Rc<RefCell<Vec<(u8, u8)>>> = Rc::default();
        for id in 0..2u8 {
            let l = log.clone();
            lp.spawn(move || {
                for i in 0..3u8 {
                    l.borrow_mut().push((id, i));
                    fiber::yield_now();
                }
            });
        }
        lp.run().unwrap();
        assert_eq!(*log.borrow(), vec![(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);
    }

    fn fibers_that_yield_forever_do_not_starve_timers_io_or_posts(lp: &Loop) {
        // Two fibers keep each other ready (they yield in turn) until a timer callback, a fiber
        // blocked in a pipe read that another thread's write completes, and a closure posted
        // from another thread have all run: the fiber phase must leave room for each of them.
        let timer_fired = Rc::new(Cell::new(false));
        let t = timer_fired.clone();
        lp.start_timer(Timer::after(Duration::from_millis(1)), move |_, _| t.set(true));

        let (mut rx, tx) = pipe().unwrap();
        let read_done = Rc::new(Cell::new(false));
        let r = read_done.clone();
        lp.spawn(move || {
            let mut b = [0u8; 1];
            rx.read_exact(&mut b).unwrap();
            r.set(true);
        });

        let posted = Arc::new(AtomicBool::new(false));
        let handle = lp.handle();
        let p = posted.clone();
        let other = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            let mut tx = std::fs::File::from(std::os::fd::OwnedFd::from(tx));
            tx.write_all(b"x").unwrap();
            handle
                .post(move |_| p.store(true, Ordering::SeqCst))
                .unwrap();
        });

        let yields = Rc::new(Cell::new(0u64));
        for _ in 0..2 {
            let (t, r, p, y) = (timer_fired.clone(), read_done.clone(), posted.clone(), yields.clone());
            lp.spawn(move || {
                while !(t.get() && r.get() && p.load(Ordering::SeqCst)) {
                    y.set(y.get() + 1);
                    fiber::yield_now();
                }
            });
        }
        lp.run().unwrap();
        other.join().unwrap();
        assert!(timer_fired.get() && read_done.get() && posted.load(Ordering::SeqCst));
        assert!(yields.get() > 0);
    }

    fn a_panicking_fiber_is_an_err_and_others_carry_on(lp: &Loop) {
        let bad = lp.spawn(|| -> u32 { panic!("fiber failed") });
        let good = lp.spawn(|| {
            fiber::sleep(Duration::from_millis(1));
            7
        });
        lp.run().unwrap();
        let payload = bad.join().unwrap_err();
        assert_eq!(*payload.downcast::<&str>().unwrap(), "fiber failed");
        assert_eq!(good.join().unwrap(), 7);
    }

    fn reader_blocked_while_another_fiber_writes(lp: &Loop) {
        let (mut rx, mut tx) = pipe().unwrap();
        let reader = lp.spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got
        });
        lp.spawn(move || {
            for chunk in 0..100u32 {
                tx.write_all(&[chunk as u8; 1000]).unwrap();
                if chunk % 10 == 0 {
                    fiber::sleep(Duration::from_micros(100));
                }
            }
        });
        lp.run().unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 100_000);
        for (i, c) in got.chunks(1000).enumerate() {
            assert!(c.iter().all(|b| *b == i as u8));
        }
    }

    fn big_writes_block_until_the_reader_drains(lp: &Loop) {
        let (mut rx, mut tx) = pipe().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        lp.spawn(move || tx.write_all(&data).unwrap());
        let reader = lp.spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match rx.read(&mut buf).unwrap() {
                    0 => break got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        lp.run().unwrap();
        assert_eq!(reader.join().unwrap(), expect);
    }

    fn timeouts_fire_and_leave_the_fd_usable(lp: &Loop) {
        let (mut rx, mut tx) = pipe().unwrap();
        let h = lp.spawn(move || {
            rx.set_timeout(Some(Duration::from_millis(5))).unwrap();
            let t0 = Instant::now();
            let mut buf = [0u8; 8];
            let err = rx.read(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            assert!(t0.elapsed() >= Duration::from_millis(5));
            // The pipe still works: the writer fiber writes after a while.
            rx.set_timeout(None).unwrap();
            let n = rx.read(&mut buf).unwrap();
            buf[..n].to_vec()
        });
        lp.spawn(move || {
            fiber::sleep(Duration::from_millis(20));
            tx.write_all(b"late").unwrap();
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), b"late");
    }

    fn callbacks_and_fibers_share_the_loop(lp: &Loop) {
        let ticks = Rc::new(Cell::new(0));
        let t = ticks.clone();
        lp.start_timer(Timer::every(Duration::from_millis(1)), move |lp, id| {
            t.set(t.get() + 1);
            if t.get() == 5 {
                lp.stop_timer(id).unwrap();
            }
        });
        let f = lp.spawn(|| {
            fiber::sleep(Duration::from_millis(3));
            fiber::with_loop(|lp| lp.backend().kind)
        });
        lp.run().unwrap();
        assert_eq!(ticks.get(), 5);
        assert_eq!(f.join().unwrap(), lp.backend().kind);
    }
}

struct Counted(Rc<Cell<usize>>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// Closing a loop with 1,000 fibers blocked in reads returns, runs their destructors, and the
/// reads are finished before the stacks go: data written afterwards is still in the pipes.
fn close_with_blocked_fibers(choice: fdloop::BackendChoice) {
    let Some(lp) = common::new_loop(choice) else {
        return;
    };
    let dropped = Rc::new(Cell::new(0));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..1000 {
        let (mut rx, tx) = pipe().unwrap();
        let d = Counted(dropped.clone());
        let probe = unsafe_clone_fd(&rx);
        lp.spawn(move || {
            let _d = d;
            // Lend a stack buffer to the kernel; the loop closes while it is in flight.
            let mut canary = [0xA5u8; 64];
            let r = rx.read(&mut canary);
            panic!("the read returned {r:?}; it should have been unwound");
        });
        writers.push(tx);
        readers.push(probe);
    }
    lp.run_for(Duration::from_millis(20)).unwrap();
    lp.close().unwrap();
    assert_eq!(dropped.get(), 1000, "every fiber's destructors ran");
    for (mut tx, probe) in writers.into_iter().zip(readers) {
        tx_write(&mut tx, b"after");
        let mut buf = [0u8; 16];
        // SAFETY: (FFI) `buf` is a live buffer; `probe` is an open fd.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&probe),
                buf.as_mut_ptr().cast(),
                16,
            )
        };
        assert_eq!(
            n, 5,
            "a cancelled read consumed data after its fiber was gone"
        );
    }
}

fn unsafe_clone_fd(rx: &fdloop::PipeReader) -> std::os::fd::OwnedFd {
    std::os::fd::AsFd::as_fd(rx).try_clone_to_owned().unwrap()
}

fn tx_write(tx: &mut fdloop::PipeWriter, data: &[u8]) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(tx);
    // SAFETY: (FFI) `data` is a live buffer.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize);
}

#[test]
fn close_with_blocked_fibers_uring() {
    close_with_blocked_fibers(fdloop::BackendChoice::Uring);
}

#[test]
fn close_with_blocked_fibers_epoll() {
    close_with_blocked_fibers(fdloop::BackendChoice::Epoll);
}

#[test]
#[should_panic(expected = "must be called inside a fiber")]
fn fiber_io_outside_a_fiber_panics_with_advice() {
    let (mut rx, _tx) = pipe().unwrap();
    let mut buf = [0u8; 1];
    let _ = rx.read(&mut buf);
}

#[test]
fn join_driving_the_loop_survives_a_panicking_callback() {
    let lp = Loop::new().unwrap();
    let h = lp.spawn(|| {
        fiber::sleep(Duration::from_millis(20));
        5
    });
    lp.start_timer(Timer::after(Duration::from_millis(1)), |_, _| {
        panic!("callback")
    });
    let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.join()));
    assert!(joined.is_err(), "the callback's panic goes through join");
    assert!(!lp.handle().is_closed(), "the loop must stay open");
    // The loop still works.
    let h2 = lp.spawn(|| 6);
    lp.run().unwrap();
    assert_eq!(h2.join().unwrap(), 6);
}

#[test]
fn join_a_fiber_of_another_loop_on_the_same_thread() {
    let a = Loop::new().unwrap();
    let b = Loop::new().unwrap();
    let hb = b.spawn(|| {
        fiber::sleep(Duration::from_millis(2));
        "from b"
    });
    let ha = a.spawn(move || hb.join().unwrap());
    a.run_for(Duration::from_millis(1)).unwrap(); // a's fiber now waits in join
    b.run().unwrap(); // b's fiber finishes and wakes a's
    a.run().unwrap();
    assert_eq!(ha.join().unwrap(), "from b");
}
