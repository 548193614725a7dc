//! Fiber switches and fiber creation.
//!
//! * `yield/fdloop`: one fiber calling `fdloop::fiber::yield_now` in a loop; one iteration is
//!   one round trip fiber → scheduler → fiber. Ready fibers run back to back, and every 256
//!   resumptions the loop runs the rest of an iteration (timers, posted closures, signals, a
//!   non-blocking driver poll), whose cost is included (see docs/fibers.md, scheduling and
//!   fairness).
//! * `yield/may`: one coroutine calling `may::coroutine::yield_now` (one worker thread).
//! * `yield/corosensei`: a bare corosensei coroutine, `resume` + `suspend` (no scheduler): the
//!   floor.
//! * `spawn+join/fdloop`: a fiber spawning a fiber that returns at once and joining it (stacks
//!   come from the loop's pool after the first).
//! * `spawn+join/may`: the same with `go!` and `JoinHandle::join` inside a coroutine.
//!
//! Times are measured inside the fiber (or coroutine), so starting the loop is not counted.

mod common;

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_main, Criterion, Throughput};
use fdloop::{fiber, BackendChoice, Loop};

fn yields(c: &mut Criterion) {
    let mut g = c.benchmark_group("yield");
    g.throughput(Throughput::Elements(1));
    for (name, backend) in [
        ("fdloop-uring", BackendChoice::Uring),
        ("fdloop-epoll", BackendChoice::Epoll),
    ] {
        let lp = Loop::builder().backend(backend).build().expect("loop");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let h = lp.spawn(move || {
                    let t = Instant::now();
                    for _ in 0..iters {
                        fiber::yield_now();
                    }
                    t.elapsed()
                });
                lp.run().expect("run");
                h.join().expect("fiber")
            })
        });
    }

    may::config().set_workers(1);
    g.bench_function("may", |b| {
        b.iter_custom(|iters| {
            may::go!(move || {
                let t = Instant::now();
                for _ in 0..iters {
                    may::coroutine::yield_now();
                }
                t.elapsed()
            })
            .join()
            .expect("coroutine")
        })
    });

    g.bench_function("corosensei", |b| {
        let mut co = corosensei::Coroutine::new(|y: &corosensei::Yielder<(), ()>, ()| loop {
            y.suspend(());
        });
        b.iter(|| {
            black_box(co.resume(()));
        })
    });
    g.finish();
}

fn spawn_join(c: &mut Criterion) {
    let mut g = c.benchmark_group("spawn+join");
    g.throughput(Throughput::Elements(1));
    let lp = Loop::new().expect("loop");
    g.bench_function("fdloop", |b| {
        b.iter_custom(|iters| {
            let h = lp.spawn(move || {
                let t = Instant::now();
                for i in 0..iters {
                    let r = fiber::spawn(move || black_box(i)).join().expect("child");
                    black_box(r);
                }
                t.elapsed()
            });
            lp.run().expect("run");
            h.join().expect("fiber")
        })
    });
    g.bench_function("may", |b| {
        b.iter_custom(|iters| {
            may::go!(move || {
                let t = Instant::now();
                for i in 0..iters {
                    let r = may::go!(move || black_box(i)).join().expect("child");
                    black_box(r);
                }
                t.elapsed()
            })
            .join()
            .expect("coroutine")
        })
    });
    g.finish();
}

/// criterion's entry point for this file's benchmarks.
mod group {
    use super::*;
    use criterion::criterion_group;

    criterion_group! {
        name = benches;
        config = common::config(20);
        targets = yields, spawn_join
    }
}
criterion_main!(group::benches);
