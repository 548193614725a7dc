//! Timer start + stop, a million timers, random deadlines 1–60 s. One element is one start
//! and one stop.
//!
//! Group `timers-batch`: batches of exactly 1,000,000 timers are started (random deadlines
//! 1–60 s), so that a million are live at the end of each batch, then all stopped, in the order
//! they were started. A sample of `n` elements runs ⌈n / 1,000,000⌉ whole batches and reports
//! the time per element, so every sample works at the full million whatever its size. The time
//! is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, user + system): all of this work runs on
//! the calling thread without blocking, and CPU time does not count the time other processes
//! take the core from it on a shared machine.
//!
//! * `fdloop`: `Loop::start_timer`, then `Loop::stop_timer`, from a callback inside the running
//!   loop (where timers are started in real programs). `Timer::after` counts from the loop's
//!   cached time there (one clock reading per stretch of the iteration, not one per start).
//!   The callback captures a word (an index), so it is not a zero-sized closure; no timer
//!   fires.
//! * `fdloop/outside-run`: the same with the loop not running: each start reads the monotonic
//!   clock.
//! * `tokio`: a boxed `tokio::time::Sleep` polled once (which registers it in the timer
//!   wheel), then dropped (which deregisters it). `tokio::time::sleep` reads the clock.
//!
//! Group `timers-churn`: 1,000,000 timers stay live; each element starts one timer and stops
//! one chosen at random among the live ones (the new one takes its place), so every access
//! lands on a cold cache line of a large structure. Run outside the loop (fdloop reads the
//! clock per start, like tokio). Thread CPU time, as above.
//!
//! * `fdloop/start+stop`: `start_timer` + `stop_timer`.
//! * `fdloop/restart`: `Loop::restart_timer` of a random running timer (a stop and a start in
//!   one call).
//! * `tokio/sleep+drop`: a new boxed `Sleep`, polled once; the replaced one is dropped.
//! * `tokio/reset`: `Sleep::reset` of a random registered `Sleep`, polled again.

mod common;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion, Throughput};
use fdloop::{Loop, Timer, TimerId};

const LIVE: usize = 1_000_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A delay between 1 and 60 s, at nanosecond resolution.
    fn delay(&mut self) -> Duration {
        Duration::from_nanos(1_000_000_000 + self.next() % 59_000_000_000)
    }
    fn index(&mut self) -> usize {
        (self.next() % LIVE as u64) as usize
    }
}

/// A point in the calling thread's CPU time.
struct CpuTime(Duration);

impl CpuTime {
    fn now() -> CpuTime {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: (FFI) `ts` is a valid, writable timespec; the clock id is a constant the kernel
        // knows.
        let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        CpuTime(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn elapsed(&self) -> Duration {
        CpuTime::now().0.saturating_sub(self.0)
    }
}

/// Whole batches of `LIVE` elements for a sample of `iters` elements.
fn batches(iters: u64) -> u64 {
    iters.div_ceil(LIVE as u64).max(1)
}

/// The time of `iters` elements, from the time of `batches(iters)` whole batches.
fn per_iters(elapsed: Duration, iters: u64) -> Duration {
    elapsed.mul_f64(iters as f64 / (batches(iters) * LIVE as u64) as f64)
}

/// One fdloop batch: `LIVE` starts, then `LIVE` stops in start order.
fn fdloop_batch(lp: &Loop, rng: &mut Rng, ids: &mut Vec<TimerId>) {
    for i in 0..LIVE {
        ids.push(lp.start_timer(Timer::after(rng.delay()), move |_, _| {
            std::hint::black_box(i);
        }));
    }
    for id in ids.drain(..) {
        lp.stop_timer(id).expect("running");
    }
}

fn batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("timers-batch");
    g.throughput(Throughput::Elements(1));
    let lp = Loop::new().expect("loop");
    let state = Rc::new(RefCell::new((
        Rng(0x2545_f491_4f6c_dd1d),
        Vec::<TimerId>::with_capacity(LIVE),
    )));
    let took = Rc::new(Cell::new(Duration::ZERO));
    g.bench_function("fdloop", |b| {
        b.iter_custom(|iters| {
            let n = batches(iters);
            let (st, tk) = (state.clone(), took.clone());
            // The batches run inside the loop, in a timer callback.
            lp.start_timer(Timer::after(Duration::ZERO), move |lp, _| {
                let mut st = st.borrow_mut();
                let (rng, ids) = &mut *st;
                let t = CpuTime::now();
                for _ in 0..n {
                    fdloop_batch(lp, rng, ids);
                }
                tk.set(t.elapsed());
            });
            lp.run().expect("run");
            per_iters(took.get(), iters)
        })
    });
    g.bench_function("fdloop/outside-run", |b| {
        b.iter_custom(|iters| {
            let mut st = state.borrow_mut();
            let (rng, ids) = &mut *st;
            let t = CpuTime::now();
            for _ in 0..batches(iters) {
                fdloop_batch(&lp, rng, ids);
            }
            per_iters(t.elapsed(), iters)
        })
    });
    drop(lp);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut sleeps: Vec<Pin<Box<tokio::time::Sleep>>> = Vec::with_capacity(LIVE);
    g.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            let t = CpuTime::now();
            for _ in 0..batches(iters) {
                for _ in 0..LIVE {
                    let mut s = Box::pin(tokio::time::sleep(rng.delay()));
                    let _ = s.as_mut().poll(&mut cx);
                    sleeps.push(s);
                }
                sleeps.clear();
            }
            per_iters(t.elapsed(), iters)
        })
    });
    g.finish();
}

fn churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("timers-churn");
    g.throughput(Throughput::Elements(1));
    let lp = Loop::new().expect("loop");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut ids: Vec<TimerId> = (0..LIVE)
        .map(|i| {
            lp.start_timer(Timer::after(rng.delay()), move |_, _| {
                std::hint::black_box(i);
            })
        })
        .collect();
    g.bench_function("fdloop/start+stop", |b| {
        b.iter_custom(|iters| {
            let t = CpuTime::now();
            for _ in 0..iters {
                let i = rng.index();
                let new = lp.start_timer(Timer::after(rng.delay()), move |_, _| {
                    std::hint::black_box(i);
                });
                let old = std::mem::replace(&mut ids[i], new);
                lp.stop_timer(old).expect("running");
            }
            t.elapsed()
        })
    });
    g.bench_function("fdloop/restart", |b| {
        b.iter_custom(|iters| {
            let t = CpuTime::now();
            for _ in 0..iters {
                let i = rng.index();
                lp.restart_timer(ids[i], Timer::after(rng.delay()))
                    .expect("running");
            }
            t.elapsed()
        })
    });
    drop(ids);
    drop(lp);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut sleeps: Vec<Pin<Box<tokio::time::Sleep>>> = (0..LIVE)
        .map(|_| {
            let mut s = Box::pin(tokio::time::sleep(rng.delay()));
            let _ = s.as_mut().poll(&mut cx);
            s
        })
        .collect();
    g.bench_function("tokio/sleep+drop", |b| {
        b.iter_custom(|iters| {
            let t = CpuTime::now();
            for _ in 0..iters {
                let i = rng.index();
                let mut s = Box::pin(tokio::time::sleep(rng.delay()));
                let _ = s.as_mut().poll(&mut cx);
                sleeps[i] = s;
            }
            t.elapsed()
        })
    });
    g.bench_function("tokio/reset", |b| {
        b.iter_custom(|iters| {
            let t = CpuTime::now();
            for _ in 0..iters {
                let i = rng.index();
                let deadline = tokio::time::Instant::from_std(Instant::now() + rng.delay());
                let s = &mut sleeps[i];
                s.as_mut().reset(deadline);
                let _ = s.as_mut().poll(&mut cx);
            }
            t.elapsed()
        })
    });
    drop(sleeps);
    g.finish();
}

/// criterion's entry point for this file's benchmarks.
mod group {
    use super::*;
    use criterion::criterion_group;

    criterion_group! {
        name = benches;
        config = common::config(20);
        targets = batch, churn
    }
}
criterion_main!(group::benches);
