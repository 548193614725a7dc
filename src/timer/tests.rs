//! The loop's timer API around the wheel: inline and boxed callbacks, the cached time, re-arming
//! in the same entry. Each test runs on both backends (io_uring where the kernel allows it).

use super::*;
use crate::BackendChoice;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A loop per backend that can be created here.
fn loops() -> Vec<Loop> {
    let mut v = Vec::new();
    if let Ok(lp) = Loop::builder().backend(BackendChoice::Uring).build() {
        v.push(lp);
    }
    v.push(
        Loop::builder()
            .backend(BackendChoice::Epoll)
            .build()
            .unwrap(),
    );
    v
}

/// Counts the drops of the closure that captures it.
struct DropCount(Rc<Cell<u32>>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn small_and_large_callbacks_fire_and_are_dropped_once() {
    for lp in loops() {
        let fired = Rc::new(Cell::new(0u64));
        let drops = Rc::new(Cell::new(0u32));
        // Small: an Rc and a guard, stored in the entry.
        let (f, d) = (fired.clone(), DropCount(drops.clone()));
        lp.start_timer(Timer::after(Duration::from_millis(1)), move |_, _| {
            let _ = &d;
            f.set(f.get() + 1);
        });
        // Large: boxed.
        let (f, d, big) = (fired.clone(), DropCount(drops.clone()), [3u64; 16]);
        lp.start_timer(Timer::after(Duration::from_millis(2)), move |_, _| {
            let _ = &d;
            f.set(f.get() + big.iter().sum::<u64>());
        });
        // Stopped before firing, both sizes: dropped at once, never called.
        let (f, d) = (fired.clone(), DropCount(drops.clone()));
        let small = lp.start_timer(Timer::after(Duration::from_secs(60)), move |_, _| {
            let _ = &d;
            f.set(f.get() + 1000);
        });
        let (f, d, big) = (fired.clone(), DropCount(drops.clone()), [5u64; 16]);
        let large = lp.start_timer(Timer::after(Duration::from_secs(60)), move |_, _| {
            let _ = &d;
            f.set(f.get() + big[0] * 1000);
        });
        lp.stop_timer(small).unwrap();
        lp.stop_timer(large).unwrap();
        assert_eq!(drops.get(), 2);
        lp.run().unwrap();
        assert_eq!(fired.get(), 1 + 48);
        assert_eq!(drops.get(), 4);
    }
}

#[test]
fn a_periodic_timer_keeps_its_id_and_entry() {
    for lp in loops() {
        let seen: Rc<RefCell<Vec<TimerId>>> = Rc::default();
        let s = seen.clone();
        let id = lp.start_timer(Timer::every(Duration::from_millis(1)), move |lp, id| {
            s.borrow_mut().push(id);
            if s.borrow().len() == 4 {
                lp.stop_timer(id).unwrap();
            }
        });
        lp.run().unwrap();
        assert_eq!(*seen.borrow(), vec![id; 4]);
        assert_eq!(lp.inner.timers.borrow().len(), 0);
        assert_eq!(
            lp.stop_timer(id).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}

#[test]
fn a_stale_id_does_not_reach_the_timer_that_reuses_its_entry() {
    for lp in loops() {
        let old = lp.start_timer(Timer::after(Duration::from_secs(60)), |_, _| {});
        lp.stop_timer(old).unwrap();
        // The freed entry is reused at once.
        let new = lp.start_timer(Timer::after(Duration::from_secs(60)), |_, _| {});
        assert_eq!(old.key.index(), new.key.index());
        assert_eq!(
            lp.stop_timer(old).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            lp.restart_timer(old, Timer::after(Duration::ZERO))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        assert!(!lp.timer_pending(old));
        assert!(lp.timer_pending(new));
        lp.stop_timer(new).unwrap();
    }
}

#[test]
fn update_now_makes_a_delay_count_from_the_call() {
    for lp in loops() {
        let out: Rc<Cell<Option<(Instant, Instant)>>> = Rc::default();
        let o = out.clone();
        lp.start_timer(Timer::after(Duration::ZERO), move |lp, _| {
            // Work that makes the loop's cached time old.
            std::thread::sleep(Duration::from_millis(20));
            lp.update_now();
            let called = Instant::now();
            let o = o.clone();
            lp.start_timer(Timer::after(Duration::from_millis(5)), move |_, _| {
                o.set(Some((called, Instant::now())));
            });
        });
        lp.run().unwrap();
        let (called, fired) = out.get().unwrap();
        assert!(fired >= called + Duration::from_millis(5), "fired early");
    }
}
