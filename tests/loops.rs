//! Thread-per-core: `fdloop::loops::Loops`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use fdloop::loops::{Loops, LoopsBuilder};
use fdloop::{BackendChoice, Loop, LoopBuilder, Timer};

/// A builder whose loops use `choice`.
fn on(choice: BackendChoice) -> LoopsBuilder {
    Loops::builder().loop_builder(LoopBuilder::new().backend(choice))
}

/// `start`, or `None` (with a message) when io_uring is unavailable here.
fn start<F>(choice: BackendChoice, b: LoopsBuilder, f: F) -> Option<Loops>
where
    F: Fn(&Loop, usize) + Send + Sync + 'static,
{
    match b.start(f) {
        Ok(loops) => Some(loops),
        Err(e) if choice == BackendChoice::Uring => {
            eprintln!("skipped on io_uring: unavailable here: {e}");
            None
        }
        Err(e) => panic!("cannot start epoll loops: {e}"),
    }
}

/// The CPUs in the calling thread's affinity mask.
fn affinity() -> Vec<usize> {
    // SAFETY: (FFI) cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: (FFI) `set` is writable memory of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: (FFI) every index is below CPU_SETSIZE, the size of `set` in bits.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

macro_rules! both_backends {
    ($($name:ident;)*) => {$(
        mod $name {
            #[test]
            fn uring() {
                super::$name(fdloop::BackendChoice::Uring);
            }
            #[test]
            fn epoll() {
                super::$name(fdloop::BackendChoice::Epoll);
            }
        }
    )*};
}

both_backends! {
    posted_closures_run_on_their_loops_thread;
    pinned_threads_run_on_their_cpu;
    stop_all_ends_every_run;
    stop_all_before_run_still_stops;
    loops_without_work_end_by_themselves;
    drop_stops_and_joins;
    a_panic_is_reported_by_join;
    a_build_error_is_returned;
}

fn posted_closures_run_on_their_loops_thread(choice: BackendChoice) {
    const LOOPS: usize = 3;
    const POSTS: usize = 1000;
    let ids: Arc<Mutex<HashMap<usize, ThreadId>>> = Arc::default();
    let recorded = ids.clone();
    let b = on(choice).threads(LOOPS).keep_alive(true).name("posts");
    let Some(loops) = start(choice, b, move |_lp, index| {
        recorded
            .lock()
            .unwrap()
            .insert(index, thread::current().id());
    }) else {
        return;
    };
    assert_eq!(loops.len(), LOOPS);
    assert_eq!(loops.handles().len(), LOOPS);

    let (done_tx, done_rx) = mpsc::channel();
    let counts: Arc<Vec<AtomicUsize>> = Arc::new((0..LOOPS).map(|_| AtomicUsize::new(0)).collect());
    for k in 0..POSTS {
        for i in 0..LOOPS {
            let (ids, counts, done_tx) = (ids.clone(), counts.clone(), done_tx.clone());
            loops
                .handle(i)
                .post(move |_lp| {
                    // The start closure ran on this thread before the loop ran any post.
                    let expected = ids.lock().unwrap()[&i];
                    assert_eq!(thread::current().id(), expected, "loop {i}, post {k}");
                    // Posts from one thread run in order.
                    let seen = counts[i].fetch_add(1, Ordering::SeqCst);
                    assert_eq!(seen, k, "loop {i}");
                    if k == POSTS - 1 {
                        done_tx.send(i).unwrap();
                    }
                })
                .unwrap();
        }
    }
    drop(done_tx);
    let mut done: Vec<usize> = (0..LOOPS).map(|_| done_rx.recv().unwrap()).collect();
    done.sort_unstable();
    assert_eq!(done, (0..LOOPS).collect::<Vec<_>>());
    for i in 0..LOOPS {
        assert_eq!(counts[i].load(Ordering::SeqCst), POSTS);
        let id = ids.lock().unwrap()[&i];
        assert_eq!(loops.thread(i).id(), id);
        assert_eq!(loops.thread(i).name(), Some(format!("posts-{i}").as_str()));
    }
    // Three different threads.
    let distinct: HashSet<ThreadId> = ids.lock().unwrap().values().copied().collect();
    assert_eq!(distinct.len(), LOOPS);
    assert!(!distinct.contains(&thread::current().id()));
    loops.stop_all();
    loops.join().unwrap();
}

fn pinned_threads_run_on_their_cpu(choice: BackendChoice) {
    let cpus = affinity();
    // One more loop than CPUs, so that the numbering wraps around.
    let n = cpus.len() + 1;
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let Some(loops) = start(
        choice,
        on(choice).threads(n).pin(true),
        move |_lp, index| {
            tx.lock().unwrap().send((index, affinity())).unwrap();
        },
    ) else {
        return;
    };
    let mut seen: Vec<(usize, Vec<usize>)> = rx.iter().take(n).collect();
    seen.sort();
    for (index, set) in seen {
        assert_eq!(set, vec![cpus[index % cpus.len()]], "loop {index}");
        if index == 0 && cpus[0] == 0 {
            assert_eq!(set, vec![0]);
        }
    }
    // Nothing was left to wait for: the loops end by themselves.
    loops.join().unwrap();
}

fn stop_all_ends_every_run(choice: BackendChoice) {
    let ticks = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let t = ticks.clone();
    let Some(loops) = start(choice, on(choice).threads(3), move |lp, index| {
        // A periodic timer: the loop would run forever.
        let t = t.clone();
        let tx = tx.lock().unwrap().clone();
        lp.start_timer(Timer::every(Duration::from_millis(1)), move |_lp, _id| {
            if t.fetch_add(1, Ordering::SeqCst) == 0 || index == 0 {
                let _ = tx.send(index);
            }
        });
    }) else {
        return;
    };
    // Wait until loop 0's timer fired, so that the loops are inside `run`.
    while rx.recv().unwrap() != 0 {}
    let handles = loops.handles().to_vec();
    loops.stop_all();
    loops.join().unwrap();
    for h in handles {
        assert!(h.is_closed());
        assert!(h.post(|_| ()).is_err());
    }
}

fn stop_all_before_run_still_stops(choice: BackendChoice) {
    // Each start closure waits until `stop_all` has been called, then keeps its loop busy.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let ready_tx = Mutex::new(ready_tx);
    let Some(loops) = start(choice, on(choice).threads(2), move |lp, index| {
        ready_tx.lock().unwrap().send(index).unwrap();
        release_rx.lock().unwrap().recv().unwrap();
        lp.start_timer(Timer::every(Duration::from_millis(1)), |_lp, _id| {});
    }) else {
        return;
    };
    ready_rx.recv().unwrap();
    loops.stop_all();
    release_tx.send(()).unwrap();
    ready_rx.recv().unwrap();
    release_tx.send(()).unwrap();
    loops.join().unwrap();
}

fn loops_without_work_end_by_themselves(choice: BackendChoice) {
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let Some(loops) = start(choice, on(choice).threads(3), move |lp, _index| {
        r.fetch_add(1, Ordering::SeqCst);
        lp.start_timer(Timer::after(Duration::from_millis(1)), |_lp, _id| {});
    }) else {
        return;
    };
    let handles = loops.handles().to_vec();
    loops.join().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    assert!(handles.iter().all(|h| h.is_closed()));
}

fn drop_stops_and_joins(choice: BackendChoice) {
    let Some(loops) = start(choice, on(choice).threads(2).keep_alive(true), |_lp, _| {}) else {
        return;
    };
    let handles = loops.handles().to_vec();
    drop(loops);
    assert!(handles.iter().all(|h| h.is_closed()));
}

fn a_panic_is_reported_by_join(choice: BackendChoice) {
    let b = on(choice).threads(2).keep_alive(true).name("panicky");
    let Some(loops) = start(choice, b, |lp, index| {
        if index == 1 {
            lp.start_timer(Timer::after(Duration::ZERO), |_lp, _id| {
                panic!("boom in a timer")
            });
        }
    }) else {
        return;
    };
    let h1 = loops.handle(1).clone();
    // Loop 1 ends by itself (its thread panicked); loop 0 runs until stopped.
    while !h1.is_closed() {
        thread::yield_now();
    }
    assert!(!loops.handle(0).is_closed());
    loops.stop_all();
    let e = loops.join().unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("panicky-1"), "{msg}");
    assert!(msg.contains("boom in a timer"), "{msg}");
}

/// Re-runs this binary's `build_error_child` with `FDLOOP_LOOPS_CHILD` set.
fn a_build_error_is_returned(choice: BackendChoice) {
    let backend = match choice {
        BackendChoice::Uring => "uring",
        _ => "epoll",
    };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "build_error_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FDLOOP_LOOPS_CHILD", backend)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("child: skipped") {
        eprintln!("{stderr}");
        return;
    }
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(stderr.contains("child: ok"), "{stderr}");
}

/// The child side of `a_build_error_is_returned`; does nothing in a normal test run.
///
/// With `RLIMIT_NOFILE` lowered so that one loop can be built but not three, `start` must
/// return the EMFILE error, after closing the loops that were built.
#[test]
fn build_error_child() {
    let Ok(backend) = std::env::var("FDLOOP_LOOPS_CHILD") else {
        return;
    };
    let choice = if backend == "uring" {
        BackendChoice::Uring
    } else {
        BackendChoice::Epoll
    };
    let open_fds = || -> Vec<i32> {
        let mut v: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    };
    // How many fds one loop takes.
    let before = open_fds().len();
    let lp = match Loop::builder().backend(choice).build() {
        Ok(lp) => lp,
        Err(e) => {
            eprintln!("child: skipped on {backend}: unavailable here: {e}");
            return;
        }
    };
    let per_loop = open_fds().len() - before;
    drop(lp);
    assert!(per_loop > 0);
    // The smallest limit under which exactly `per_loop` more fds can be opened.
    let open = open_fds();
    let mut limit = 0;
    let mut free = 0;
    while free < per_loop {
        if !open.contains(&limit) {
            free += 1;
        }
        limit += 1;
    }
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: (FFI) `old` is writable memory for one rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let lim = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: old.rlim_max,
    };
    // SAFETY: (FFI) `lim` is a valid rlimit below the hard limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);

    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let result = on(choice).threads(3).keep_alive(true).start(move |_lp, _| {
        r.fetch_add(1, Ordering::SeqCst);
    });
    // SAFETY: (FFI) `old` is the valid rlimit read by getrlimit at the start of this test;
    // restoring it is allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
    let e = result.expect_err("three loops were built under a limit for one");
    let msg = e.to_string();
    eprintln!("child: start failed as expected: {msg}");
    assert!(msg.contains("loop thread fdloop-"), "{msg}");
    assert!(
        msg.contains("Too many open files") || msg.contains("EMFILE"),
        "{msg}"
    );
    // The loops that were built were closed without running the start closure, and their
    // fds are back.
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(open_fds(), open);
    eprintln!("child: ok");
}
