//! Cross-thread ping-pong between two loops, both threads pinned to one CPU.
//!
//! One iteration is a round trip: thread A sends to thread B, B answers, A receives.
//!
//! * `fdloop`: `LoopHandle::post` of a closure to loop B, which posts a closure back to loop
//!   A. Neither loop has I/O in flight, so each sleeps on its waker's futex; both run until
//!   stopped (`run_for(Duration::MAX)`), so their waits carry no deadline, as tokio's do.
//! * `fdloop-deadline`: the same with `run_for(1 h)`: every blocking wait arms a kernel timer
//!   for the deadline.
//! * `tokio-mpsc`: two `current_thread` runtimes without drivers (they park on a futex); a
//!   task on B echoes what it receives on one `tokio::sync::mpsc` channel into another.
//! * `tokio-mpsc-io`: the same with `enable_all()` (I/O and time drivers, as a server has):
//!   the runtimes park in `epoll_wait` and are woken through mio's eventfd.
//!
//! Pinning both threads to CPU 0 makes every hand-over a context switch on one CPU, which is
//! what the comparison is about (and keeps the result independent of the second CPU's load).

mod common;

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_main, BenchmarkGroup, Criterion, Throughput};
use fdloop::{Loop, LoopHandle};
use fdloop_bench::pin_thread;

const CPU: usize = 0;

fn ping(a: LoopHandle, b: LoopHandle, left: u64) {
    let b2 = b.clone();
    b.post(move |_lp_b| {
        let a2 = a.clone();
        a.post(move |lp_a| {
            if left <= 1 {
                lp_a.stop();
            } else {
                ping(a2, b2, left - 1);
            }
        })
        .expect("post to A");
    })
    .expect("post to B");
}

fn fdloop_post(c: &mut Criterion) {
    let mut g = c.benchmark_group("post-ping-pong");
    g.throughput(Throughput::Elements(1));
    let _ = pin_thread(CPU);
    fdloop_pair(&mut g, "fdloop", Duration::MAX);
    fdloop_pair(&mut g, "fdloop-deadline", Duration::from_secs(3600));
    for (name, io) in [("tokio-mpsc", false), ("tokio-mpsc-io", true)] {
        tokio_pair(&mut g, name, io);
    }
    g.finish();
}

/// Two loops on two threads (both on `CPU`), each running for at most `run_for` per sample.
fn fdloop_pair(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, run_for: Duration) {
    let (tx, rx) = std_mpsc::channel();
    let thread_b = std::thread::spawn(move || {
        let _ = pin_thread(CPU);
        let lp = Loop::new().expect("loop B");
        tx.send(lp.handle()).expect("handle");
        lp.run_for(run_for).expect("run B");
    });
    let hb = rx.recv().expect("handle B");
    let lp_a = Loop::new().expect("loop A");
    let ha = lp_a.handle();
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| {
            let t = Instant::now();
            ping(ha.clone(), hb.clone(), iters.max(1));
            lp_a.run_for(run_for).expect("run A");
            t.elapsed()
        })
    });
    hb.stop().expect("stop B");
    thread_b.join().expect("thread B");
}

fn runtime(io: bool) -> tokio::runtime::Runtime {
    let mut b = tokio::runtime::Builder::new_current_thread();
    if io {
        b.enable_all();
    }
    b.build().expect("runtime")
}

/// Two `current_thread` runtimes on two threads (both on `CPU`), echoing over two channels.
fn tokio_pair(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, io: bool) {
    let (tx_ab, mut rx_ab) = tokio::sync::mpsc::channel::<u64>(1);
    let (tx_ba, mut rx_ba) = tokio::sync::mpsc::channel::<u64>(1);
    let thread_b = std::thread::spawn(move || {
        let _ = pin_thread(CPU);
        runtime(io).block_on(async move {
            while let Some(x) = rx_ab.recv().await {
                if tx_ba.send(x).await.is_err() {
                    break;
                }
            }
        });
    });
    let rt_a = runtime(io);
    g.bench_function(name, |bch| {
        bch.iter_custom(|iters| {
            rt_a.block_on(async {
                let t = Instant::now();
                for i in 0..iters {
                    tx_ab.send(i).await.expect("send");
                    rx_ba.recv().await.expect("recv");
                }
                t.elapsed()
            })
        })
    });
    drop(tx_ab);
    thread_b.join().expect("thread B");
}

/// criterion's entry point for this file's benchmarks.
mod group {
    use super::*;
    use criterion::criterion_group;

    criterion_group! {
        name = benches;
        config = common::config(20);
        targets = fdloop_post
    }
}
criterion_main!(group::benches);
