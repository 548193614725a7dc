//! No lost wake-ups on `LoopHandle::post`, on both backends: many threads posting while the
//! loop keeps falling asleep and waking up, two loops handing a message back and forth, and
//! posts from the loop's own thread (which need no wake-up at all).

mod common;

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fdloop::{BackendChoice, BackendKind, Loop, LoopHandle, Timer};

/// Long enough never to matter when things work; a lost wake-up shows as a count short of
/// the total when it runs out.
const SAFETY_NET: Duration = Duration::from_secs(120);

fn same_backend(lp: &Loop) -> BackendChoice {
    match lp.backend().kind {
        BackendKind::Uring => BackendChoice::Uring,
        _ => BackendChoice::Epoll,
    }
}

backend_tests! {
    fn many_threads_post_while_the_loop_sleeps_and_wakes(lp: &Loop) {
        const THREADS: usize = 8;
        const EACH: usize = 5000;
        let done = Arc::new(AtomicUsize::new(0));
        let handle = lp.handle();
        let posters: Vec<_> = (0..THREADS)
            .map(|t| {
                let (h, done) = (handle.clone(), done.clone());
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        let d = done.clone();
                        h.post(move |lp| {
                            if d.fetch_add(1, Ordering::Relaxed) + 1 == THREADS * EACH {
                                lp.stop();
                            }
                        })
                        .unwrap();
                        // Vary the pace so that the loop sleeps between some posts and is
                        // busy during others.
                        if (i + t) % 7 == 0 {
                            std::thread::yield_now();
                        }
                        if (i + t) % 997 == 0 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                })
            })
            .collect();
        lp.run_for(SAFETY_NET).unwrap();
        for p in posters {
            p.join().unwrap();
        }
        assert_eq!(done.load(Ordering::Relaxed), THREADS * EACH);
    }

    fn two_loops_hand_a_message_back_and_forth(lp: &Loop) {
        const ROUNDS: u64 = 20_000;
        let choice = same_backend(lp);
        let (tx, rx) = std::sync::mpsc::channel();
        let b = std::thread::spawn(move || {
            let lp_b = common::new_loop(choice).unwrap();
            tx.send(lp_b.handle()).unwrap();
            lp_b.run_for(SAFETY_NET).unwrap();
        });
        let hb = rx.recv().unwrap();
        fn ping(a: LoopHandle, b: LoopHandle, left: u64, seen: Arc<AtomicUsize>) {
            let b2 = b.clone();
            b.post(move |_| {
                let a2 = a.clone();
                a.post(move |lp_a| {
                    seen.fetch_add(1, Ordering::Relaxed);
                    if left <= 1 {
                        lp_a.stop();
                    } else {
                        ping(a2, b2, left - 1, seen);
                    }
                })
                .unwrap();
            })
            .unwrap();
        }
        let seen = Arc::new(AtomicUsize::new(0));
        ping(lp.handle(), hb.clone(), ROUNDS, seen.clone());
        lp.run_for(SAFETY_NET).unwrap();
        hb.stop().unwrap();
        b.join().unwrap();
        assert_eq!(seen.load(Ordering::Relaxed), ROUNDS as usize);
    }

    // With nothing in flight the loop sleeps on its waker's futex, not in the kernel's I/O
    // wait: a closure posted then starts a read, during which the loop sleeps in the kernel
    // wait, and the data written later must end it; then the loop sleeps on the futex again
    // until a stop from the other thread.
    fn a_loop_with_nothing_in_flight_takes_up_io_posted_to_it(lp: &Loop) {
        let (r, w) = common::pipe();
        let handle = lp.handle();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        let other = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20)); // the loop is asleep by now
            handle
                .post(move |lp| {
                    let fd = r.as_raw_fd();
                    lp.read(fd, vec![0; 16], move |lp, res, buf| {
                        assert_eq!(res.unwrap(), 4);
                        g.lock().unwrap().extend_from_slice(&buf);
                        lp.detach(fd).unwrap();
                        drop(r);
                    });
                })
                .unwrap();
            std::thread::sleep(Duration::from_millis(20));
            common::write_fd(&w, b"ping");
            std::thread::sleep(Duration::from_millis(20));
            handle.stop().unwrap();
        });
        lp.run_for(SAFETY_NET).unwrap();
        other.join().unwrap();
        assert_eq!(&got.lock().unwrap()[..], b"ping");
    }

    fn posts_from_the_loop_thread_run_without_a_wake_up(lp: &Loop) {
        // From a callback that runs after the wait (a timer), from a posted closure, and from
        // a fiber: `run` must not block with these pending, nor return before they ran.
        let ran = Arc::new(AtomicUsize::new(0));
        let handle = lp.handle();
        let (r, h) = (ran.clone(), handle.clone());
        lp.start_timer(Timer::after(Duration::from_millis(1)), move |_, _| {
            let (r, h2) = (r.clone(), h.clone());
            h.post(move |_| {
                r.fetch_add(1, Ordering::Relaxed);
                let r2 = r.clone();
                h2.post(move |_| {
                    r2.fetch_add(1, Ordering::Relaxed);
                })
                .unwrap();
            })
            .unwrap();
        });
        let h = handle.clone();
        let fiber = lp.spawn(move || {
            let done = Arc::new(AtomicUsize::new(0));
            let d = done.clone();
            h.post(move |_| {
                d.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            done
        });
        lp.run().unwrap();
        assert_eq!(ran.load(Ordering::Relaxed), 2);
        let done = fiber.join().unwrap();
        assert_eq!(done.load(Ordering::Relaxed), 1);
        // Nothing left: a post from this thread, then `run`, runs it and returns.
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        handle.post(move |_| {
            c.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        lp.run().unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }
}
