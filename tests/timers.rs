//! Timers on both backends: order, never early, periods, stop and restart from callbacks.

mod common;

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fdloop::{Loop, Timer, TimerId};

backend_tests! {
    fn fire_in_deadline_order_and_never_early(lp: &Loop) {
        let fired: Rc<RefCell<Vec<(usize, Instant, Instant)>>> = Rc::default();
        // Deliberately started out of order; several share a millisecond.
        let delays_us = [9000u64, 1000, 5000, 1200, 3000, 1100, 7000, 20, 0, 4000];
        for (i, us) in delays_us.iter().enumerate() {
            let start = Instant::now();
            let deadline = start + Duration::from_micros(*us);
            let fired = fired.clone();
            lp.start_timer(Timer::after(Duration::from_micros(*us)), move |_lp, _id| {
                fired.borrow_mut().push((i, deadline, Instant::now()));
            });
        }
        lp.run().unwrap();
        let fired = fired.borrow();
        assert_eq!(fired.len(), delays_us.len());
        for w in fired.windows(2) {
            assert!(w[0].1 <= w[1].1, "out of deadline order: {fired:?}");
        }
        for (i, deadline, at) in fired.iter() {
            assert!(at >= deadline, "timer {i} fired early");
        }
    }

    fn timer_at_an_instant(lp: &Loop) {
        let deadline = Instant::now() + Duration::from_millis(3);
        let hit = Rc::new(RefCell::new(None));
        let h = hit.clone();
        lp.start_timer(Timer::at(deadline), move |_lp, _| *h.borrow_mut() = Some(Instant::now()));
        lp.run().unwrap();
        assert!(hit.borrow().unwrap() >= deadline);
    }

    fn periodic_timer_keeps_its_period(lp: &Loop) {
        let period = Duration::from_millis(4);
        let start = Instant::now();
        let times: Rc<RefCell<Vec<Instant>>> = Rc::default();
        let t = times.clone();
        lp.start_timer(Timer::every(period), move |lp, id| {
            t.borrow_mut().push(Instant::now());
            if t.borrow().len() == 10 {
                lp.stop_timer(id).unwrap();
            }
        });
        lp.run().unwrap();
        let times = times.borrow();
        assert_eq!(times.len(), 10);
        // The n-th firing is never before start + n × period: the grid is kept, the period
        // does not drift by the callback's latency.
        for (n, at) in times.iter().enumerate() {
            assert!(*at >= start + period * (n as u32 + 1), "firing {n} early");
        }
    }

    fn stop_timer_inside_its_own_callback(lp: &Loop) {
        let count = Rc::new(RefCell::new(0));
        let c = count.clone();
        lp.start_timer(Timer::every(Duration::from_millis(1)), move |lp, id| {
            *c.borrow_mut() += 1;
            lp.stop_timer(id).unwrap();
            // Stopping twice is an error that says so.
            assert_eq!(lp.stop_timer(id).unwrap_err().kind(), io::ErrorKind::NotFound);
        });
        lp.run().unwrap();
        assert_eq!(*count.borrow(), 1);
    }

    fn stopped_timers_never_fire_and_are_removed(lp: &Loop) {
        let fired = Rc::new(RefCell::new(0));
        let mut ids = Vec::new();
        for i in 0..1000 {
            let f = fired.clone();
            ids.push(lp.start_timer(Timer::after(Duration::from_millis(1 + i % 7)), move |_, _| {
                *f.borrow_mut() += 1;
            }));
        }
        for id in ids.iter().step_by(2) {
            lp.stop_timer(*id).unwrap();
        }
        lp.run().unwrap();
        assert_eq!(*fired.borrow(), 500);
        for id in ids {
            assert!(lp.stop_timer(id).is_err());
        }
    }

    fn restart_from_inside_and_outside(lp: &Loop) {
        let fired: Rc<RefCell<Vec<&str>>> = Rc::default();
        let f = fired.clone();
        let first = lp.start_timer(Timer::after(Duration::from_millis(1)), move |lp, id| {
            f.borrow_mut().push("first");
            if f.borrow().iter().filter(|s| **s == "first").count() < 3 {
                // A one-shot timer rescheduling itself.
                lp.restart_timer(id, Timer::after(Duration::from_millis(1))).unwrap();
            }
        });
        let f = fired.clone();
        let late = lp.start_timer(Timer::after(Duration::from_secs(3600)), move |_, _| {
            f.borrow_mut().push("late");
        });
        lp.restart_timer(late, Timer::after(Duration::from_millis(2))).unwrap();
        lp.run().unwrap();
        let fired = fired.borrow();
        assert_eq!(fired.iter().filter(|s| **s == "first").count(), 3);
        assert_eq!(fired.iter().filter(|s| **s == "late").count(), 1);
        assert!(lp.restart_timer(first, Timer::after(Duration::ZERO)).is_err());
    }

    fn start_and_stop_sources_from_timer_callbacks(lp: &Loop) {
        let log: Rc<RefCell<Vec<u32>>> = Rc::default();
        let l = log.clone();
        let victim: Rc<RefCell<Option<TimerId>>> = Rc::default();
        let v = victim.clone();
        // The victim is started after the stopper, so that its deadline is later even when
        // starting a timer is slow (under valgrind).
        lp.start_timer(Timer::after(Duration::from_millis(1)), move |lp, _| {
            l.borrow_mut().push(1);
            lp.stop_timer(v.borrow_mut().take().unwrap()).unwrap();
            let l2 = l.clone();
            lp.start_timer(Timer::after(Duration::from_millis(1)), move |_, _| l2.borrow_mut().push(2));
        });
        *victim.borrow_mut() = Some(lp.start_timer(Timer::after(Duration::from_millis(5)), |_, _| {
            panic!("stopped timer fired");
        }));
        lp.run().unwrap();
        assert_eq!(*log.borrow(), vec![1, 2]);
    }

    // Both timers are due when the timer phase starts (the loop thread was busy): the first
    // one's callback stops the second, which must then not fire in the same phase.
    fn stop_a_timer_that_is_due_in_the_same_phase(lp: &Loop) {
        let fired: Rc<RefCell<Vec<&str>>> = Rc::default();
        let victim: Rc<RefCell<Option<TimerId>>> = Rc::default();
        let (f, v) = (fired.clone(), victim.clone());
        lp.start_timer(Timer::after(Duration::from_millis(1)), move |lp, _| {
            f.borrow_mut().push("stopper");
            lp.stop_timer(v.borrow_mut().take().unwrap()).unwrap();
        });
        let f = fired.clone();
        *victim.borrow_mut() = Some(lp.start_timer(
            Timer::after(Duration::from_millis(5)),
            move |_, _| f.borrow_mut().push("victim"),
        ));
        std::thread::sleep(Duration::from_millis(10));
        lp.run().unwrap();
        assert_eq!(*fired.borrow(), vec!["stopper"]);
    }

    fn ids_from_another_loop_are_refused(lp: &Loop) {
        let other = Loop::builder().backend(fdloop::BackendChoice::Epoll).build().unwrap();
        let id = other.start_timer(Timer::after(Duration::from_secs(60)), |_, _| {});
        let err = lp.stop_timer(id).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        other.stop_timer(id).unwrap();
    }

    fn far_timers_do_not_keep_run_for_busy(lp: &Loop) {
        lp.start_timer(Timer::after(Duration::from_secs(3600)), |_, _| {});
        let t0 = Instant::now();
        lp.run_for(Duration::from_millis(20)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(20));
    }
}

#[test]
#[should_panic(expected = "non-zero period")]
fn zero_period_is_a_programming_error() {
    let _ = Timer::every(Duration::ZERO);
}

backend_tests! {
    fn a_timer_rearmed_in_the_past_waits_for_the_next_iteration(lp: &Loop) {
        // Re-arming at an instant already past from inside the callback must not fire again in
        // the same timer phase (the phase is bounded): one fire per iteration.
        let count = Rc::new(std::cell::Cell::new(0u32));
        let c = count.clone();
        lp.start_timer(Timer::at(Instant::now()), move |lp, id| {
            c.set(c.get() + 1);
            if c.get() < 1000 {
                lp.restart_timer(id, Timer::at(Instant::now() - Duration::from_millis(1)))
                    .unwrap();
            }
        });
        std::thread::sleep(Duration::from_millis(1));
        lp.run_once().unwrap();
        assert_eq!(count.get(), 1, "one fire per timer phase");
        lp.run().unwrap();
        assert_eq!(count.get(), 1000);
    }
}
