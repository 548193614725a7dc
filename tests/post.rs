//! Other threads: posted closures (none lost, order per sender kept), stop from another
//! thread, and the thread pool.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use fdloop::{Loop, Timer};

backend_tests! {
    fn four_threads_times_ten_thousand_posts(lp: &Loop) {
        const THREADS: usize = 4;
        const EACH: usize = 10_000;
        let seen: Rc<RefCell<Vec<Vec<usize>>>> = Rc::new(RefCell::new(vec![Vec::new(); THREADS]));
        // `seen` is !Send: the posted closures reach it through a thread-local.
        type Seen = Rc<RefCell<Vec<Vec<usize>>>>;
        thread_local! {
            static SINK: RefCell<Option<Seen>> = const { RefCell::new(None) };
        }
        SINK.with(|s| *s.borrow_mut() = Some(seen.clone()));
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let h = lp.handle();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    for i in 0..EACH {
                        h.post(move |lp| {
                            SINK.with(|s| {
                                let s = s.borrow();
                                let seen = s.as_ref().unwrap();
                                seen.borrow_mut()[t].push(i);
                                if seen.borrow().iter().map(Vec::len).sum::<usize>() == THREADS * EACH {
                                    lp.stop();
                                }
                            })
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        lp.run_for(Duration::from_secs(60)).unwrap();
        for t in threads {
            t.join().unwrap();
        }
        let seen = seen.borrow();
        for (t, v) in seen.iter().enumerate() {
            assert_eq!(v.len(), EACH, "sender {t} lost closures");
            assert!(v.windows(2).all(|w| w[0] < w[1]), "sender {t} out of order");
        }
    }

    fn stop_from_another_thread(lp: &Loop) {
        lp.start_timer(Timer::after(Duration::from_secs(3600)), |_, _| {});
        let h = lp.handle();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            h.stop().unwrap();
            h.stop().unwrap(); // twice is the same as once
        });
        lp.run().unwrap();
        t.join().unwrap();
    }

    fn stop_from_a_callback(lp: &Loop) {
        let count = Rc::new(Cell::new(0));
        let c = count.clone();
        lp.start_timer(Timer::every(Duration::from_millis(1)), move |lp, _| {
            c.set(c.get() + 1);
            if c.get() == 3 {
                lp.stop();
                lp.stop();
            }
        });
        lp.run().unwrap();
        assert_eq!(count.get(), 3);
        // run() again continues where it stopped.
        let c = count.clone();
        lp.start_timer(Timer::after(Duration::from_millis(1)), move |lp, _| {
            c.set(100);
            lp.stop();
        });
        lp.run().unwrap();
        assert_eq!(count.get(), 100);
    }

    fn spawn_blocking_delivers_on_the_loop_thread(lp: &Loop) {
        let loop_thread = std::thread::current().id();
        let results: Rc<RefCell<Vec<u64>>> = Rc::default();
        for i in 0..64u64 {
            let r = results.clone();
            lp.spawn_blocking(
                move || {
                    assert_ne!(std::thread::current().id(), loop_thread);
                    std::thread::sleep(Duration::from_millis(i % 3));
                    i * i
                },
                move |_, v| {
                    assert_eq!(std::thread::current().id(), loop_thread);
                    r.borrow_mut().push(v.unwrap());
                },
            )
            .unwrap();
        }
        lp.run().unwrap(); // pending jobs keep run() going
        let mut got = results.borrow().clone();
        got.sort();
        assert_eq!(got, (0..64).map(|i| i * i).collect::<Vec<_>>());
    }

    fn spawn_blocking_panic_is_returned(lp: &Loop) {
        let got = Rc::new(Cell::new(false));
        let g = got.clone();
        lp.spawn_blocking(|| -> u32 { panic!("job failed") }, move |_, r| {
            let payload = r.unwrap_err();
            assert_eq!(*payload.downcast::<&str>().unwrap(), "job failed");
            g.set(true);
        })
        .unwrap();
        lp.run().unwrap();
        assert!(got.get());
    }
}
