//! Fiber synchronisation on both backends: channels (across threads, from callbacks, timeouts,
//! disconnection), oneshot, mutex fairness, condvar and notify, wait groups, fibers spawned
//! from other threads, blocking calls outside fibers, and closing a loop with parked fibers.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use fdloop::sync::{
    self, Canceled, Condvar, Mutex, Notify, RecvError, RecvTimeoutError, TryRecvError, WaitGroup,
    WaitTimeoutError,
};
use fdloop::{fiber, BackendChoice, Loop, LoopHandle, Timer};

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}
fn assert_clone<T: Clone>() {}

#[test]
fn what_may_cross_threads() {
    assert_send::<sync::Sender<String>>();
    assert_sync::<sync::Sender<String>>();
    assert_clone::<sync::Sender<String>>();
    assert_send::<sync::Promise<String>>();
    assert_sync::<sync::Promise<String>>();
    assert_send::<WaitGroup>();
    assert_sync::<WaitGroup>();
    assert_clone::<WaitGroup>();
    assert_send::<sync::RemoteJoinHandle<String>>();
    assert_sync::<sync::RemoteJoinHandle<String>>();
    assert_send::<LoopHandle>();
    assert_send::<sync::SendError<String>>();
}

backend_tests! {
    fn four_threads_times_100_000_messages_into_one_fiber(lp: &Loop) {
        const THREADS: usize = 4;
        const EACH: u64 = 100_000;
        let (tx, rx) = sync::channel::<(usize, u64)>();
        let consumer = lp.spawn(move || {
            let mut next = [0u64; THREADS];
            let mut total = 0u64;
            for (t, i) in &rx {
                assert_eq!(i, next[t], "thread {t}: message out of order or lost");
                next[t] += 1;
                total += 1;
            }
            (total, next)
        });
        let barrier = Arc::new(Barrier::new(THREADS));
        let producers: Vec<_> = (0..THREADS)
            .map(|t| {
                let tx = tx.clone();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    for i in 0..EACH {
                        tx.send((t, i)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        lp.run().unwrap();
        for p in producers {
            p.join().unwrap();
        }
        let (total, next) = consumer.join().unwrap();
        assert_eq!(total, THREADS as u64 * EACH);
        assert_eq!(next, [EACH; THREADS]);
    }

    fn sends_from_a_timer_callback_reach_a_fiber(lp: &Loop) {
        let (tx, rx) = sync::channel();
        let mut tx = Some(tx);
        let mut n = 0;
        lp.start_timer(Timer::every(Duration::from_millis(1)), move |lp, id| {
            n += 1;
            tx.as_ref().unwrap().send(n).unwrap();
            if n == 10 {
                tx = None; // the last sender: disconnects the channel
                lp.stop_timer(id).unwrap();
            }
        });
        let h = lp.spawn(move || rx.iter().collect::<Vec<u32>>());
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), (1..=10).collect::<Vec<u32>>());
    }

    fn senders_on_fibers_of_the_same_loop(lp: &Loop) {
        let (tx, rx) = sync::channel();
        for f in 0..10u32 {
            let tx = tx.clone();
            lp.spawn(move || {
                for i in 0..100u32 {
                    tx.send((f, i)).unwrap();
                    if i % 7 == 0 {
                        fiber::yield_now();
                    }
                }
            });
        }
        drop(tx);
        let h = lp.spawn(move || {
            let mut next = [0u32; 10];
            while let Ok((f, i)) = rx.recv() {
                assert_eq!(next[f as usize], i);
                next[f as usize] += 1;
            }
            next
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), [100; 10]);
    }

    fn recv_with_every_sender_dropped_is_an_error(lp: &Loop) {
        let (tx, rx) = sync::channel::<u8>();
        let tx2 = tx.clone();
        let h = lp.spawn(move || {
            let r = rx.recv();
            (r, rx.try_recv())
        });
        // One sender goes in a fiber after the receiver parked, the other on a plain thread.
        lp.spawn(move || {
            fiber::sleep(Duration::from_millis(2));
            drop(tx);
        });
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            drop(tx2);
        });
        lp.run().unwrap();
        t.join().unwrap();
        assert_eq!(h.join().unwrap(), (Err(RecvError), Err(TryRecvError::Disconnected)));

        // Messages sent before the last sender went are still delivered.
        let (tx, rx) = sync::channel();
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        drop(tx);
        let h = lp.spawn(move || rx.iter().collect::<Vec<_>>());
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), vec![1, 2]);

        // And a send to a dropped receiver gives the value back.
        let (tx, rx) = sync::channel();
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(7).unwrap_err().0, 7);
    }

    fn recv_timeout_fires_not_early_and_the_channel_still_works(lp: &Loop) {
        let (tx, rx) = sync::channel();
        let h = lp.spawn(move || {
            let d = Duration::from_millis(5);
            let t0 = Instant::now();
            assert_eq!(rx.recv_timeout(d), Err(RecvTimeoutError::Timeout));
            assert!(t0.elapsed() >= d, "recv_timeout returned early");
            assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
            // A message that comes before the timeout is returned.
            let first = rx.recv_timeout(Duration::from_secs(60)).unwrap();
            let second = rx.recv().unwrap();
            (first, second, rx.recv())
        });
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send("late").unwrap();
            tx.send("later").unwrap();
        });
        lp.run().unwrap();
        t.join().unwrap();
        assert_eq!(h.join().unwrap(), ("late", "later", Err(RecvError)));
    }

    fn two_loops_on_two_threads_ping_pong(lp: &Loop) {
        const ROUNDS: u32 = 1000;
        let (pong_tx, pong_rx) = sync::channel::<u32>();
        let backend = lp.backend().kind;
        // A receiver stays on its thread: the other loop's thread makes its own channel and
        // hands back the sender.
        let (give, take) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            let choice = match backend {
                fdloop::BackendKind::Uring => BackendChoice::Uring,
                _ => BackendChoice::Epoll,
            };
            let lp2 = Loop::builder().backend(choice).build().unwrap();
            let (ping_tx, ping_rx) = sync::channel::<u32>();
            give.send(ping_tx).unwrap();
            lp2.spawn(move || {
                for v in &ping_rx {
                    pong_tx.send(v + 1).unwrap();
                }
            });
            lp2.run().unwrap();
        });
        let ping_tx = take.recv().unwrap();
        let h = lp.spawn(move || {
            let mut v = 0;
            for _ in 0..ROUNDS {
                ping_tx.send(v).unwrap();
                v = pong_rx.recv().unwrap();
            }
            v
        });
        lp.run().unwrap();
        other.join().unwrap();
        assert_eq!(h.join().unwrap(), ROUNDS);
    }

    fn oneshot_across_threads_and_canceled(lp: &Loop) {
        let (p, f) = sync::oneshot::<String>();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            p.set("from a thread".into()).unwrap();
        });
        let a = lp.spawn(move || f.wait());

        // Dropped unset while the fiber waits: Canceled.
        let (p, f) = sync::oneshot::<u8>();
        let t2 = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(2));
            drop(p);
        });
        let b = lp.spawn(move || f.wait());

        // wait_timeout: times out (not early), then the value still arrives.
        let (p, mut f) = sync::oneshot::<u8>();
        let c = lp.spawn(move || {
            let d = Duration::from_millis(5);
            let t0 = Instant::now();
            assert_eq!(f.wait_timeout(d), Err(WaitTimeoutError::Timeout));
            assert!(t0.elapsed() >= d, "wait_timeout returned early");
            assert_eq!(f.try_take(), Ok(None));
            f.wait_timeout(Duration::from_secs(60))
        });
        lp.spawn(move || {
            fiber::sleep(Duration::from_millis(20));
            p.set(9).unwrap();
        });

        lp.run().unwrap();
        t.join().unwrap();
        t2.join().unwrap();
        assert_eq!(a.join().unwrap().unwrap(), "from a thread");
        assert_eq!(b.join().unwrap(), Err(Canceled));
        assert_eq!(c.join().unwrap(), Ok(9));

        // A promise whose future is gone gives the value back.
        let (p, f) = sync::oneshot::<u8>();
        drop(f);
        assert!(p.is_canceled());
        assert_eq!(p.set(3), Err(3));
    }

    fn mutex_is_exact_and_fifo(lp: &Loop) {
        const FIBERS: usize = 100;
        const ROUNDS: usize = 10;
        let m = Rc::new(Mutex::new(0usize));
        let order = Rc::new(RefCell::new(Vec::new()));
        for id in 0..FIBERS {
            let m = m.clone();
            let order = order.clone();
            lp.spawn(move || {
                for _ in 0..ROUNDS {
                    let mut g = m.lock().unwrap();
                    order.borrow_mut().push(id);
                    let seen = *g;
                    fiber::yield_now();
                    fiber::yield_now();
                    *g = seen + 1;
                }
            });
        }
        lp.run().unwrap();
        assert_eq!(*m.try_lock().unwrap(), FIBERS * ROUNDS);
        // First come, first served: every round hands the lock through the fibers in order.
        let expect: Vec<usize> = (0..ROUNDS).flat_map(|_| 0..FIBERS).collect();
        assert_eq!(*order.borrow(), expect);
        assert!(!m.is_locked());
    }

    fn mutex_lock_timeout_and_try_lock(lp: &Loop) {
        let m = Rc::new(Mutex::new(Vec::new()));
        let m1 = m.clone();
        lp.spawn(move || {
            let mut g = m1.lock().unwrap();
            g.push("holder");
            fiber::sleep(Duration::from_millis(20));
        });
        let m2 = m.clone();
        let quitter = lp.spawn(move || {
            let d = Duration::from_millis(5);
            let t0 = Instant::now();
            let r = m2.lock_timeout(d).map(|_| ());
            assert!(t0.elapsed() >= d, "lock_timeout returned early");
            assert!(m2.try_lock().is_none());
            r
        });
        let m3 = m.clone();
        let patient = lp.spawn(move || {
            fiber::yield_now(); // queue behind the quitter
            let mut g = m3.lock_timeout(Duration::from_secs(60)).unwrap();
            g.push("patient");
        });
        lp.run().unwrap();
        assert_eq!(quitter.join().unwrap(), Err(WaitTimeoutError::Timeout));
        patient.join().unwrap();
        assert_eq!(*m.try_lock().unwrap(), vec!["holder", "patient"]);
    }

    fn condvar_producer_consumer(lp: &Loop) {
        const CAP: usize = 4;
        const PRODUCERS: u64 = 3;
        const EACH: u64 = 500;
        struct Queue {
            items: Mutex<(VecDeque<u64>, u64)>, // (items, producers still running)
            not_empty: Condvar,
            not_full: Condvar,
        }
        let q = Rc::new(Queue {
            items: Mutex::new((VecDeque::new(), PRODUCERS)),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
        });
        for p in 0..PRODUCERS {
            let q = q.clone();
            lp.spawn(move || {
                for i in 0..EACH {
                    let mut g = q
                        .not_full
                        .wait_while(q.items.lock().unwrap(), |(items, _)| items.len() >= CAP)
                        .unwrap();
                    assert!(g.0.len() < CAP);
                    g.0.push_back(p * EACH + i);
                    drop(g);
                    q.not_empty.notify_one();
                }
                q.items.lock().unwrap().1 -= 1;
                q.not_empty.notify_all();
            });
        }
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                lp.spawn(move || {
                    let mut got = Vec::new();
                    let mut g = q.items.lock().unwrap();
                    loop {
                        if let Some(v) = g.0.pop_front() {
                            q.not_full.notify_one();
                            got.push(v);
                            // Let others in between items.
                            drop(g);
                            fiber::yield_now();
                            g = q.items.lock().unwrap();
                        } else if g.1 == 0 {
                            break got;
                        } else {
                            g = q.not_empty.wait(g).unwrap();
                        }
                    }
                })
            })
            .collect();
        lp.run().unwrap();
        let mut all: Vec<u64> = consumers.into_iter().flat_map(|c| c.join().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..PRODUCERS * EACH).collect::<Vec<_>>());
    }

    fn condvar_wait_timeout(lp: &Loop) {
        let pair = Rc::new((Mutex::new(0), Condvar::new()));
        let p = pair.clone();
        let h = lp.spawn(move || {
            let (m, cv) = &*p;
            let d = Duration::from_millis(5);
            let t0 = Instant::now();
            let (g, r) = cv.wait_timeout(m.lock().unwrap(), d).unwrap();
            assert!(r.timed_out());
            assert!(t0.elapsed() >= d, "wait_timeout returned early");
            let (g, r) = cv.wait_timeout(g, Duration::from_secs(60)).unwrap();
            assert!(!r.timed_out());
            *g
        });
        let p = pair.clone();
        lp.spawn(move || {
            fiber::sleep(Duration::from_millis(20));
            *p.0.lock().unwrap() = 5;
            p.1.notify_all();
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), 5);
    }

    fn notify_producer_consumer(lp: &Loop) {
        let notify = Rc::new(Notify::new());
        let items = Rc::new(RefCell::new(VecDeque::new()));
        let (n, it) = (notify.clone(), items.clone());
        let consumer = lp.spawn(move || {
            let mut got = Vec::new();
            loop {
                while let Some(v) = it.borrow_mut().pop_front() {
                    got.push(v);
                }
                if got.len() == 205 {
                    break got;
                }
                n.notified().unwrap();
            }
        });
        // A callback produces too: a permit stored while the consumer is busy is not lost.
        let (n, it) = (notify.clone(), items.clone());
        let mut k = 1000;
        lp.start_timer(Timer::every(Duration::from_millis(1)), move |lp, id| {
            it.borrow_mut().push_back(k);
            n.notify_one();
            k += 1;
            if k == 1005 {
                lp.stop_timer(id).unwrap();
            }
        });
        lp.spawn(move || {
            for i in 0..200 {
                items.borrow_mut().push_back(i);
                notify.notify_one();
                if i % 3 == 0 {
                    fiber::yield_now();
                }
            }
        });
        lp.run().unwrap();
        let mut got = consumer.join().unwrap();
        got.sort_unstable();
        let expect: Vec<i32> = (0..200).chain(1000..1005).collect();
        assert_eq!(got, expect);
    }

    fn notify_waiters_and_timeout(lp: &Loop) {
        let notify = Rc::new(Notify::new());
        let woken = Rc::new(Cell::new(0));
        for _ in 0..10 {
            let (n, w) = (notify.clone(), woken.clone());
            lp.spawn(move || {
                n.notified().unwrap();
                w.set(w.get() + 1);
            });
        }
        let n = notify.clone();
        let late = lp.spawn(move || {
            fiber::sleep(Duration::from_millis(10));
            // notify_waiters stored no permit: this one times out, not early.
            let d = Duration::from_millis(5);
            let t0 = Instant::now();
            let r = n.notified_timeout(d);
            assert!(t0.elapsed() >= d, "notified_timeout returned early");
            r
        });
        lp.spawn(move || {
            fiber::sleep(Duration::from_millis(2));
            notify.notify_waiters();
        });
        lp.run().unwrap();
        assert_eq!(woken.get(), 10);
        assert_eq!(late.join().unwrap(), Err(WaitTimeoutError::Timeout));
    }

    fn wait_group_of_1000_fibers(lp: &Loop) {
        let wg = WaitGroup::new();
        let finished = Rc::new(Cell::new(0));
        for i in 0..1000u64 {
            wg.add(1);
            let wg = wg.clone();
            let f = finished.clone();
            lp.spawn(move || {
                fiber::sleep(Duration::from_micros(i % 50 * 20));
                f.set(f.get() + 1);
                wg.done();
            });
        }
        // Plain threads take part too.
        wg.add(4);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let wg = wg.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(3));
                    wg.done();
                })
            })
            .collect();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let wg = wg.clone();
                let f = finished.clone();
                lp.spawn(move || {
                    wg.wait().unwrap();
                    f.get()
                })
            })
            .collect();
        // A gate that only the timed waiter opens, after its first wait timed out.
        wg.add(1);
        let w = wg.clone();
        let timed = lp.spawn(move || {
            let d = Duration::from_millis(1);
            let t0 = Instant::now();
            let early = w.wait_timeout(d);
            assert!(t0.elapsed() >= d, "wait_timeout returned early");
            w.done();
            (early, w.wait_timeout(Duration::from_secs(60)))
        });
        lp.run().unwrap();
        for t in threads {
            t.join().unwrap();
        }
        for w in waiters {
            assert_eq!(w.join().unwrap(), 1000, "a waiter returned before every fiber was done");
        }
        let (early, late) = timed.join().unwrap();
        assert_eq!(early, Err(WaitTimeoutError::Timeout));
        assert_eq!(late, Ok(()));
        assert_eq!(wg.count(), 0);
    }

    fn loop_handle_spawn_from_4_threads_times_100_fibers(lp: &Loop) {
        const THREADS: usize = 4;
        const EACH: usize = 100;
        let remaining = Arc::new(AtomicUsize::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let h = lp.handle();
                let remaining = remaining.clone();
                std::thread::spawn(move || {
                    let handles: Vec<_> = (0..EACH)
                        .map(|i| {
                            h.spawn(move || {
                                assert!(fiber::in_fiber());
                                fiber::sleep(Duration::from_micros((i % 10) as u64 * 100));
                                fiber::yield_now();
                                t * 1000 + i
                            })
                            .unwrap()
                        })
                        .collect();
                    let got: Vec<usize> = handles.into_iter().map(|j| j.join().unwrap()).collect();
                    if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                        h.stop().unwrap();
                    }
                    got
                })
            })
            .collect();
        lp.run_for(Duration::from_secs(120)).unwrap();
        for (t, th) in threads.into_iter().enumerate() {
            let got = th.join().unwrap();
            assert_eq!(got, (0..EACH).map(|i| t * 1000 + i).collect::<Vec<_>>());
        }
    }

    fn loop_handle_spawn_panics_and_is_finished(lp: &Loop) {
        let h = lp.handle();
        let t = std::thread::spawn(move || {
            let bad = h.spawn(|| -> u8 { panic!("remote fiber failed") }).unwrap();
            let good = h.spawn(|| 5u8).unwrap();
            let payload = bad.join().unwrap_err();
            let v = good.join().unwrap();
            h.stop().unwrap();
            (payload.downcast_ref::<&str>().copied(), v)
        });
        lp.run_for(Duration::from_secs(60)).unwrap();
        assert_eq!(t.join().unwrap(), (Some("remote fiber failed"), 5));

        // is_finished, and join on the loop's own thread panics with advice.
        let j = lp.handle().spawn(|| 1).unwrap();
        assert!(!j.is_finished());
        lp.run().unwrap();
        assert!(j.is_finished());
        let msg = panic_message(|| drop(j.join()));
        assert!(msg.contains("loop's own thread") && msg.contains("JoinHandle"), "{msg}");
    }
}

/// `backend_tests!` for tests that need to own (and close) their loop.
macro_rules! owned_backend_tests {
    ($(fn $name:ident($lp:ident : Loop) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($lp: Loop) $body
            #[test]
            fn uring() {
                if let Some(lp) = common::new_loop(BackendChoice::Uring) {
                    body(lp);
                }
            }
            #[test]
            fn epoll() {
                body(common::new_loop(BackendChoice::Epoll).unwrap());
            }
        }
    )*};
}

struct Counted(Rc<Cell<usize>>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

owned_backend_tests! {
    fn closing_the_loop_unwinds_parked_fibers(lp: Loop) {
        let dropped = Rc::new(Cell::new(0));
        let mut expected = 0;

        // Channel receivers, one with a timeout.
        let (tx, rx) = sync::channel::<u8>();
        let rx = Rc::new(rx);
        for timeout in [None, Some(Duration::from_secs(3600))] {
            let (d, rx) = (Counted(dropped.clone()), rx.clone());
            lp.spawn(move || {
                let _d = d;
                let r = match timeout {
                    None => rx.recv().map_err(|_| ()),
                    Some(t) => rx.recv_timeout(t).map_err(|_| ()),
                };
                panic!("recv returned {r:?}; the fiber should have been unwound");
            });
            expected += 1;
        }
        // A mutex holder (sleeping) and its waiters.
        let m = Rc::new(Mutex::new(()));
        for i in 0..5 {
            let (d, m) = (Counted(dropped.clone()), m.clone());
            lp.spawn(move || {
                let _d = d;
                let _g = m.lock().unwrap();
                if i == 0 {
                    fiber::sleep(Duration::from_secs(3600));
                }
                panic!("a mutex waiter got the lock; it should have been unwound");
            });
            expected += 1;
        }
        // A wait group, a oneshot, a notify and a condvar.
        let wg = WaitGroup::new();
        wg.add(1);
        let (promise, future) = sync::oneshot::<u8>();
        let notify = Rc::new(Notify::new());
        let pair = Rc::new((Mutex::new(()), Condvar::new()));
        {
            let (d, wg) = (Counted(dropped.clone()), wg.clone());
            lp.spawn(move || {
                let _d = d;
                let r = wg.wait();
                panic!("wait returned {r:?}");
            });
            let d = Counted(dropped.clone());
            lp.spawn(move || {
                let _d = d;
                let r = future.wait();
                panic!("wait returned {r:?}");
            });
            let (d, n) = (Counted(dropped.clone()), notify.clone());
            lp.spawn(move || {
                let _d = d;
                let r = n.notified();
                panic!("notified returned {r:?}");
            });
            let (d, p) = (Counted(dropped.clone()), pair.clone());
            lp.spawn(move || {
                let _d = d;
                let r = p.1.wait(p.0.lock().unwrap()).map(|_| ());
                panic!("wait returned {r:?}");
            });
            expected += 4;
        }
        // A destructor that blocks while the loop closes: it must return, not suspend.
        let held = Rc::new(Mutex::new(()));
        let held_guard = held.try_lock().unwrap();
        struct BlocksInDrop {
            m: Rc<Mutex<()>>,
            rx: Rc<sync::Receiver<u8>>,
            wg: WaitGroup,
            log: Rc<RefCell<Vec<String>>>,
        }
        impl Drop for BlocksInDrop {
            fn drop(&mut self) {
                let mut log = self.log.borrow_mut();
                log.push(format!("{:?}", self.m.lock().map(|_| ())));
                log.push(format!("{:?}", self.m.lock_timeout(Duration::from_secs(1)).map(|_| ())));
                log.push(format!("{:?}", self.rx.recv()));
                log.push(format!("{:?}", self.wg.wait()));
                fiber::sleep(Duration::from_secs(3600)); // returns at once too
                fiber::yield_now();
            }
        }
        let log = Rc::new(RefCell::new(Vec::new()));
        let b = BlocksInDrop { m: held.clone(), rx: rx.clone(), wg: wg.clone(), log: log.clone() };
        let d = Counted(dropped.clone());
        lp.spawn(move || {
            let _d = d;
            let _b = b;
            fiber::sleep(Duration::from_secs(3600));
        });
        expected += 1;

        lp.run_for(Duration::from_millis(20)).unwrap();
        assert_eq!(dropped.get(), 0);
        lp.close().unwrap();
        assert_eq!(dropped.get(), expected, "every parked fiber's destructors ran");
        assert_eq!(
            *log.borrow(),
            vec!["Err(Canceled)", "Err(Canceled)", "Err(RecvError)", "Err(Canceled)"]
        );
        // Nothing is left registered: the primitives still work without the loop.
        assert!(m.try_lock().is_some());
        drop(held_guard);
        assert!(held.try_lock().is_some());
        tx.send(1).unwrap();
        assert_eq!(rx.try_recv(), Ok(1));
        drop(promise);
        wg.done();
        assert_eq!(wg.count(), 0);
    }

    fn remote_spawn_on_a_closed_loop(lp: Loop) {
        let h = lp.handle();
        // A fiber that is still parked when the loop closes.
        let (tx, rx) = std::sync::mpsc::channel();
        let parked = h
            .spawn(move || {
                let (_keep, never) = sync::channel::<u8>();
                tx.send(()).unwrap();
                never.recv().ok()
            })
            .unwrap();
        while rx.try_recv().is_err() {
            // Not `run_once`: with a parked fiber, it would wait for an event that never comes.
            lp.run_for(Duration::from_millis(1)).unwrap();
        }
        // A fiber whose spawn request the loop never ran.
        let h2 = h.clone();
        let never_started = std::thread::spawn(move || h2.spawn(|| 1).unwrap())
            .join()
            .unwrap();
        lp.close().unwrap();
        // Joined from another thread: the loop's own thread may not join.
        let msgs = std::thread::spawn(move || {
            [parked.join().map(|_| ()), never_started.join().map(|_| ())].map(|j| {
                let payload = j.unwrap_err();
                payload.downcast_ref::<String>().cloned().unwrap()
            })
        })
        .join()
        .unwrap();
        for msg in msgs {
            assert!(msg.contains("loop was closed"), "{msg}");
        }
        // Spawning on a closed loop is refused.
        let e = h.spawn(|| ()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotConnected);
    }
}

/// The message of the panic that `f` raises.
fn panic_message(f: impl FnOnce()) -> String {
    let err = panic::catch_unwind(AssertUnwindSafe(f)).expect_err("no panic");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn blocking_calls_outside_a_fiber_panic_with_advice() {
    fn advice<R>(f: impl FnOnce() -> R) -> String {
        let msg = panic_message(|| {
            let _ = f();
        });
        assert!(msg.contains("must be called inside a fiber"), "{msg}");
        assert!(msg.contains("Loop::spawn"), "{msg}");
        msg
    }
    let (tx, rx) = sync::channel::<u8>();
    tx.send(1).unwrap(); // even with a message queued: the call is a blocking one
    assert!(advice(|| rx.recv()).contains("Receiver::recv"));
    advice(|| rx.recv_timeout(Duration::from_millis(1)));
    advice(|| rx.iter().next());
    assert_eq!(rx.try_recv(), Ok(1)); // the non-blocking form works anywhere
    let (_p, f) = sync::oneshot::<u8>();
    assert!(advice(|| f.wait()).contains("Future::wait"));
    let m = Mutex::new(0);
    assert!(advice(|| m.lock().map(|_| ())).contains("Mutex::lock"));
    advice(|| m.lock_timeout(Duration::from_millis(1)).map(|_| ()));
    assert!(m.try_lock().is_some());
    let n = Notify::new();
    advice(|| n.notified());
    let cv = Condvar::new();
    advice(|| cv.wait(m.try_lock().unwrap()).map(|_| ()));
    assert!(!m.is_locked(), "the guard was released by the panic");
    let wg = WaitGroup::new();
    advice(|| wg.wait());
}
