//! Timer start + stop, a million timers, random deadlines 1–60 s. One element is one start
//! and one stop.
//!
//! Group `timers-batch`: batches of 1,000,000 timers are started (random deadlines), then all
//! stopped, in the order they were started.
//!
//! * `fdloop`: `Loop::start_timer`, then `Loop::stop_timer` (the loop is not run, so no timer
//!   fires).
//! * `tokio`: a boxed `tokio::time::Sleep` polled once (which registers it in the timer
//!   wheel), then dropped (which deregisters it).
//!
//! Group `timers-churn`: 1,000,000 timers stay live; each element starts one timer and stops
//! one chosen at random among the live ones (the new one takes its place), so every access
//! lands on a cold cache line of a large structure.
//!
//! * `fdloop/start+stop`: `start_timer` + `stop_timer`.
//! * `fdloop/restart`: `Loop::restart_timer` of a random running timer (a stop and a start in
//!   one call).
//! * `tokio/sleep+drop`: a new boxed `Sleep`, polled once; the replaced one is dropped.
//! * `tokio/reset`: `Sleep::reset` of a random registered `Sleep`, polled again.

use std::future::Future;
use std::pin::Pin;
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

fn batch(c: &mut Criterion) {
    let mut g = c.benchmark_group("timers-batch");
    g.throughput(Throughput::Elements(1));
    let lp = Loop::new().expect("loop");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut ids: Vec<TimerId> = Vec::with_capacity(LIVE);
    g.bench_function("fdloop", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            let mut left = iters;
            while left > 0 {
                let n = left.min(LIVE as u64);
                left -= n;
                for _ in 0..n {
                    ids.push(lp.start_timer(Timer::after(rng.delay()), |_, _| {}));
                }
                for id in ids.drain(..) {
                    lp.stop_timer(id).expect("running");
                }
            }
            t.elapsed()
        })
    });
    drop(lp);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let mut sleeps: Vec<Pin<Box<tokio::time::Sleep>>> = Vec::with_capacity(LIVE);
    g.bench_function("tokio", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            let mut left = iters;
            while left > 0 {
                let n = left.min(LIVE as u64);
                left -= n;
                for _ in 0..n {
                    let mut s = Box::pin(tokio::time::sleep(rng.delay()));
                    let _ = s.as_mut().poll(&mut cx);
                    sleeps.push(s);
                }
                sleeps.clear();
            }
            t.elapsed()
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
        .map(|_| lp.start_timer(Timer::after(rng.delay()), |_, _| {}))
        .collect();
    g.bench_function("fdloop/start+stop", |b| {
        b.iter(|| {
            let i = rng.index();
            let new = lp.start_timer(Timer::after(rng.delay()), |_, _| {});
            let old = std::mem::replace(&mut ids[i], new);
            lp.stop_timer(old).expect("running");
        })
    });
    g.bench_function("fdloop/restart", |b| {
        b.iter(|| {
            let i = rng.index();
            lp.restart_timer(ids[i], Timer::after(rng.delay()))
                .expect("running");
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
        b.iter(|| {
            let i = rng.index();
            let mut s = Box::pin(tokio::time::sleep(rng.delay()));
            let _ = s.as_mut().poll(&mut cx);
            sleeps[i] = s;
        })
    });
    g.bench_function("tokio/reset", |b| {
        b.iter(|| {
            let i = rng.index();
            let deadline = tokio::time::Instant::from_std(Instant::now() + rng.delay());
            let s = &mut sleeps[i];
            s.as_mut().reset(deadline);
            let _ = s.as_mut().poll(&mut cx);
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
        config = Criterion::default()
            .sample_size(20)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        targets = batch, churn
    }
}
criterion_main!(group::benches);
