//! [`unblock`]: run blocking or CPU-heavy work on the loop's thread pool from a fiber.

use std::cell::RefCell;
use std::panic;
use std::rc::Rc;
use std::thread;
use std::time::Duration;

use crate::fiber::scheduler::{current_or_panic, suspend};
use crate::fiber::{sleep, with_loop};

/// Runs `f` on the loop's thread pool and parks the calling fiber until it returns; other
/// fibers and callbacks run meanwhile. A panic in `f` is re-raised in the fiber.
///
/// Use it for anything that would block the loop thread: blocking syscalls (`getaddrinfo`,
/// `open` on a slow filesystem), C libraries without an fd, heavy computation.
///
/// ```
/// use fdloop::{fiber, Loop};
///
/// let lp = Loop::new()?;
/// let h = lp.spawn(|| fiber::unblock(|| (1..=20u64).product::<u64>()));
/// lp.run()?;
/// assert_eq!(h.join().unwrap(), 2_432_902_008_176_640_000);
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// # Panics
///
/// Outside a fiber; and re-raises a panic of `f`. If the pool's queue is full, the fiber waits
/// for room instead of failing. While the loop is closing (the fiber is being unwound), `f`
/// runs on the calling thread.
pub fn unblock<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let cur = current_or_panic("fdloop::fiber::unblock");
    if cur.closing {
        return f();
    }
    let slot: Rc<RefCell<Option<thread::Result<T>>>> = Rc::new(RefCell::new(None));
    let mut job = Some(f);
    loop {
        let s = slot.clone();
        let fiber = cur.fiber;
        let f = job.take().expect("the job is still here");
        // `spawn_blocking` takes the closure by value; to retry after a full queue we move it
        // through a shared cell.
        let cell = std::sync::Arc::new(std::sync::Mutex::new(Some(f)));
        let c2 = cell.clone();
        let queued = with_loop(|lp| {
            lp.spawn_blocking(
                move || {
                    let f = c2.lock().unwrap_or_else(|e| e.into_inner()).take();
                    f.map(|f| f())
                },
                move |lp, r| {
                    if let Ok(Some(v)) = r {
                        *s.borrow_mut() = Some(Ok(v));
                    } else if let Err(p) = r {
                        *s.borrow_mut() = Some(Err(p));
                    }
                    lp.make_ready(fiber);
                },
            )
        });
        match queued {
            Ok(()) => break,
            Err(_) => {
                job = cell.lock().unwrap_or_else(|e| e.into_inner()).take();
                sleep(Duration::from_millis(1));
            }
        }
    }
    while slot.borrow().is_none() {
        suspend();
    }
    let result = slot.borrow_mut().take().expect("a result is present");
    match result {
        Ok(v) => v,
        Err(payload) => panic::resume_unwind(payload),
    }
}
