//! Signals on both backends: delivery from other threads and other processes, several loops and
//! several watches, stop_signal, bad signal numbers, real-time signals, floods, stop from a
//! callback, the default action coming back, and signals racing `close()`.
//!
//! Signal dispositions are process-wide, so this binary has its own `main` (`harness = false`)
//! and runs its cases one after the other, once per backend. Each case is wrapped in
//! `catch_unwind` so that one failure does not hide the others. The case that needs the default
//! action of SIGTERM runs in a child process: this binary re-executed with `CHILD_ENV` set.

use std::cell::Cell;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Command, ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use fdloop::{BackendChoice, BackendKind, Loop, LoopHandle, Signal, Timer};

/// Selects the child role when this binary is re-executed (value: `sigterm:<backend>`).
const CHILD_ENV: &str = "FDLOOP_SIGNALS_TEST_CHILD";

/// The bound on every wait for something that should happen promptly. Never asserted as an
/// upper bound on time: reaching it only turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(20);

type Case = fn(BackendChoice);

const CASES: &[(&str, Case)] = &[
    (
        "signal_from_another_thread_runs_on_loop_thread",
        from_another_thread,
    ),
    ("signal_from_a_child_process", from_a_child_process),
    (
        "two_loops_on_two_threads_both_called",
        two_loops_two_threads,
    ),
    ("two_watches_on_one_loop_both_called", two_watches_one_loop),
    ("stop_signal_and_not_found", stop_signal_cases),
    ("invalid_numbers_and_realtime", invalid_numbers_and_realtime),
    ("flood_of_signals_coalesces", flood),
    ("callback_stops_run", callback_stops_run),
    ("default_action_back_after_last_watch", default_action_back),
    ("signals_during_close", signals_during_close),
];

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        child_main(&role);
        return;
    }

    let mut backends = vec![("epoll", BackendChoice::Epoll)];
    match Loop::builder().backend(BackendChoice::Uring).build() {
        Ok(lp) => {
            drop(lp);
            backends.insert(0, ("uring", BackendChoice::Uring));
        }
        Err(e) => println!("io_uring cases skipped: io_uring is unavailable here: {e}"),
    }

    // Some cases send many standard signals (which coalesce, and may still be pending for an
    // instant after the sending thread has been joined). When the last fdloop watch of a signal
    // stops, fdloop emulates the default action — for SIGUSR1/SIGUSR2, terminating the process.
    // This keeper loop, on its own thread, watches both for the whole run so that a late
    // delivery can never kill the test binary; the default action itself is tested in a child
    // process (`default_action_back_after_last_watch`).
    let keeper = Keeper::start();

    let mut passed = 0;
    let mut failed = 0;
    for (name, case) in CASES {
        for (bname, choice) in &backends {
            let r = panic::catch_unwind(AssertUnwindSafe(|| case(*choice)));
            match r {
                Ok(()) => {
                    passed += 1;
                    println!("{name} {bname} ... ok");
                }
                Err(_) => {
                    failed += 1;
                    println!("{name} {bname} ... FAILED");
                }
            }
        }
    }

    keeper.stop();
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn new_loop(choice: BackendChoice) -> Loop {
    let lp = Loop::builder()
        .backend(choice)
        .build()
        .unwrap_or_else(|e| panic!("building a {choice:?} loop: {e}"));
    let want = match choice {
        BackendChoice::Uring => BackendKind::Uring,
        _ => BackendKind::Epoll,
    };
    assert_eq!(lp.backend().kind, want);
    lp
}

/// Sends `sig` to this process (not to a thread).
fn kill_self(sig: i32) {
    // SAFETY: (FFI) kill takes no pointers; every signal these tests send is watched by fdloop (or
    // ignored by the child that sends it), so it does not terminate the process.
    let r = unsafe { libc::kill(libc::getpid(), sig) };
    assert_eq!(r, 0, "kill: {}", io::Error::last_os_error());
}

/// Runs `lp` until `done()` holds (checked every millisecond by a timer) or `LIMIT` passes;
/// returns `done()`.
fn run_until(lp: &Loop, done: impl Fn() -> bool + 'static) -> bool {
    let done = Rc::new(done);
    let d = done.clone();
    let checker = lp.start_timer(Timer::every(Duration::from_millis(1)), move |lp, _| {
        if d() {
            lp.stop();
        }
    });
    if !done() {
        lp.run_for(LIMIT).unwrap();
    }
    let _ = lp.stop_timer(checker);
    done()
}

/// A loop on its own thread that watches SIGUSR1 and SIGUSR2 until stopped.
struct Keeper {
    handle: LoopHandle,
    thread: thread::JoinHandle<()>,
}

impl Keeper {
    fn start() -> Keeper {
        let (tx, rx) = mpsc::channel();
        let thread = thread::spawn(move || {
            let lp = new_loop(BackendChoice::Epoll);
            lp.start_signal(Signal::USR1, |_, _| {}).unwrap();
            lp.start_signal(Signal::USR2, |_, _| {}).unwrap();
            tx.send(lp.handle()).unwrap();
            // `run` returns only after `LoopHandle::stop` (the watches keep it alive).
            lp.run().unwrap();
            lp.close().unwrap();
        });
        let handle = rx.recv().expect("the keeper loop started");
        Keeper { handle, thread }
    }

    fn stop(self) {
        self.handle.stop().unwrap();
        self.thread.join().unwrap();
    }
}

/// Waits for a child process, killing it if it outlives `LIMIT`.
fn wait_bounded(child: &mut std::process::Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let st = child.wait().unwrap();
            panic!("child process {} did not end by itself ({st})", child.id());
        }
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

fn from_another_thread(choice: BackendChoice) {
    let lp = new_loop(choice);
    let seen = Rc::new(Cell::new(None));
    let s = seen.clone();
    lp.start_signal(Signal::USR1, move |lp, sig| {
        assert_eq!(sig, Signal::USR1);
        s.set(Some(thread::current().id()));
        lp.stop();
    })
    .unwrap();
    let sender = thread::spawn(|| kill_self(libc::SIGUSR1));
    lp.run_for(LIMIT).unwrap();
    sender.join().unwrap();
    assert_eq!(
        seen.get(),
        Some(thread::current().id()),
        "the callback did not run on the loop thread"
    );
    lp.close().unwrap();
}

fn from_a_child_process(choice: BackendChoice) {
    let lp = new_loop(choice);
    let hits = Rc::new(Cell::new(0u32));
    let h = hits.clone();
    lp.start_signal(Signal::USR2, move |lp, sig| {
        assert_eq!(sig, Signal::USR2);
        h.set(h.get() + 1);
        lp.stop();
    })
    .unwrap();
    let pid = std::process::id();
    let mut child = Command::new("kill")
        .args(["-USR2", &pid.to_string()])
        .spawn()
        .expect("spawn kill(1)");
    lp.run_for(LIMIT).unwrap();
    let st = wait_bounded(&mut child);
    assert!(st.success(), "kill(1) failed: {st}");
    assert!(hits.get() >= 1, "no callback for SIGUSR2 sent by kill(1)");
    lp.close().unwrap();
}

fn two_loops_two_threads(choice: BackendChoice) {
    let registered = Arc::new(Barrier::new(2));
    let r = registered.clone();
    let other = thread::spawn(move || {
        let lp = new_loop(choice);
        let hit = Rc::new(Cell::new(false));
        let h = hit.clone();
        lp.start_signal(Signal::USR1, move |lp, _| {
            h.set(true);
            lp.stop();
        })
        .unwrap();
        r.wait();
        lp.run_for(LIMIT).unwrap();
        lp.close().unwrap();
        hit.get()
    });

    let lp = new_loop(choice);
    let hit = Rc::new(Cell::new(false));
    let h = hit.clone();
    lp.start_signal(Signal::USR1, move |lp, _| {
        h.set(true);
        lp.stop();
    })
    .unwrap();
    registered.wait();
    kill_self(libc::SIGUSR1);
    lp.run_for(LIMIT).unwrap();
    let other_hit = other.join().unwrap();
    assert!(hit.get(), "the loop on the main thread was not called");
    assert!(other_hit, "the loop on the other thread was not called");
    lp.close().unwrap();
}

fn two_watches_one_loop(choice: BackendChoice) {
    let lp = new_loop(choice);
    let a = Rc::new(Cell::new(0u32));
    let b = Rc::new(Cell::new(0u32));
    let (a2, b2) = (a.clone(), b.clone());
    lp.start_signal(Signal::USR1, move |_, _| a2.set(a2.get() + 1))
        .unwrap();
    lp.start_signal(Signal::USR1, move |_, _| b2.set(b2.get() + 1))
        .unwrap();
    kill_self(libc::SIGUSR1);
    let (a3, b3) = (a.clone(), b.clone());
    assert!(
        run_until(&lp, move || a3.get() >= 1 && b3.get() >= 1),
        "not both watches were called: {} and {}",
        a.get(),
        b.get()
    );
    lp.close().unwrap();
}

fn stop_signal_cases(choice: BackendChoice) {
    let lp = new_loop(choice);
    let stopped = Rc::new(Cell::new(0u32));
    let active = Rc::new(Cell::new(0u32));
    let (s2, a2) = (stopped.clone(), active.clone());
    let id = lp
        .start_signal(Signal::USR1, move |_, _| s2.set(s2.get() + 1))
        .unwrap();
    lp.start_signal(Signal::USR1, move |_, _| a2.set(a2.get() + 1))
        .unwrap();
    lp.stop_signal(id).unwrap();
    kill_self(libc::SIGUSR1);
    let a3 = active.clone();
    assert!(
        run_until(&lp, move || a3.get() >= 1),
        "the still active watch was not called"
    );
    assert_eq!(stopped.get(), 0, "a stopped watch was called");

    let e = lp.stop_signal(id).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");

    // An id of another loop, even one whose slot index exists in this loop.
    let lp2 = new_loop(choice);
    let foreign = lp2.start_signal(Signal::USR1, |_, _| {}).unwrap();
    let e = lp.stop_signal(foreign).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    lp2.stop_signal(foreign).unwrap();
    lp2.close().unwrap();

    // A callback that stops its own watch is not called again.
    let own = Rc::new(Cell::new(0u32));
    let o = own.clone();
    let own_id: Rc<Cell<Option<fdloop::SignalId>>> = Rc::default();
    let oid = own_id.clone();
    let id = lp
        .start_signal(Signal::USR1, move |lp, _| {
            o.set(o.get() + 1);
            lp.stop_signal(oid.get().unwrap()).unwrap();
        })
        .unwrap();
    own_id.set(Some(id));
    for round in 1..=2u32 {
        let before = active.get();
        kill_self(libc::SIGUSR1);
        let a4 = active.clone();
        assert!(
            run_until(&lp, move || a4.get() > before),
            "round {round}: the active watch was not called"
        );
    }
    assert_eq!(
        own.get(),
        1,
        "a watch stopped by its own callback was called again"
    );
    lp.close().unwrap();
}

fn invalid_numbers_and_realtime(choice: BackendChoice) {
    for n in [0, 65, libc::SIGKILL, libc::SIGSTOP, libc::SIGSEGV] {
        let e = Signal::new(n).expect_err(&format!("Signal::new({n}) must fail"));
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{n}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&n.to_string()),
            "the message for {n} does not name it: {msg}"
        );
    }
    assert_eq!(Signal::new(libc::SIGUSR1).unwrap(), Signal::USR1);
    let past_max = libc::SIGRTMAX() - libc::SIGRTMIN() + 1;
    let e = Signal::realtime(past_max).expect_err("realtime past SIGRTMAX");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");

    let rt = Signal::realtime(0).unwrap();
    assert_eq!(rt.as_raw(), libc::SIGRTMIN());
    let lp = new_loop(choice);
    let hit = Rc::new(Cell::new(None));
    let h = hit.clone();
    lp.start_signal(rt, move |lp, sig| {
        h.set(Some(sig));
        lp.stop();
    })
    .unwrap();
    let rt_raw = rt.as_raw();
    let sender = thread::spawn(move || kill_self(rt_raw));
    lp.run_for(LIMIT).unwrap();
    sender.join().unwrap();
    assert_eq!(
        hit.get(),
        Some(rt),
        "the real-time signal was not delivered"
    );
    lp.close().unwrap();
}

fn flood(choice: BackendChoice) {
    const SENT: usize = 1000;
    let lp = new_loop(choice);
    let calls = Rc::new(Cell::new(0usize));
    let c = calls.clone();
    lp.start_signal(Signal::USR1, move |_, _| c.set(c.get() + 1))
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let sender = thread::spawn(move || {
        for _ in 0..SENT {
            kill_self(libc::SIGUSR1);
        }
        d.store(true, Ordering::SeqCst);
    });
    let (c2, d2) = (calls.clone(), done.clone());
    let finished = run_until(&lp, move || d2.load(Ordering::SeqCst) && c2.get() >= 1);
    sender.join().unwrap();
    assert!(
        finished,
        "sender done: {}, callbacks: {}",
        done.load(Ordering::SeqCst),
        calls.get()
    );
    println!("  ({SENT} signals sent, {} callbacks)", calls.get());
    assert!(calls.get() <= SENT, "more callbacks than signals");
    lp.close().unwrap();
}

fn callback_stops_run(choice: BackendChoice) {
    let lp = new_loop(choice);
    let hit = Rc::new(Cell::new(false));
    let h = hit.clone();
    lp.start_signal(Signal::USR2, move |lp, _| {
        h.set(true);
        lp.stop();
    })
    .unwrap();
    // A guard turns a hang of `run()` into a failure: it stops the loop from another thread
    // after `LIMIT` unless released first, and says that it had to.
    let guard_fired = Arc::new(AtomicBool::new(false));
    let (release, released) = mpsc::channel::<()>();
    let handle = lp.handle();
    let g = guard_fired.clone();
    let guard = thread::spawn(move || {
        if released.recv_timeout(LIMIT).is_err() {
            g.store(true, Ordering::SeqCst);
            let _ = handle.stop();
        }
    });
    let sender = thread::spawn(|| kill_self(libc::SIGUSR2));
    // The watch alone keeps the loop alive: only the callback's `stop` ends `run`.
    lp.run().unwrap();
    let _ = release.send(());
    guard.join().unwrap();
    sender.join().unwrap();
    assert!(hit.get(), "the callback did not run");
    assert!(
        !guard_fired.load(Ordering::SeqCst),
        "run() did not return after the callback's stop()"
    );
    lp.close().unwrap();
}

fn default_action_back(choice: BackendChoice) {
    let backend = match choice {
        BackendChoice::Uring => "uring",
        _ => "epoll",
    };
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env(CHILD_ENV, format!("sigterm:{backend}"))
        .env_remove("FDLOOP_BACKEND")
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-execute the test binary");
    let st = wait_bounded(&mut child);
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        use std::io::Read;
        let _ = o.read_to_string(&mut out);
    }
    assert!(
        out.contains("watched SIGTERM caught"),
        "the child did not get through the watched part ({st}):\n{out}"
    );
    assert_eq!(
        st.signal(),
        Some(libc::SIGTERM),
        "the child was not killed by SIGTERM after its last watch stopped ({st}):\n{out}"
    );
}

/// The child's side of `default_action_back`.
fn child_sigterm(choice: BackendChoice) {
    use std::io::Write;
    let lp = new_loop(choice);
    // While watched, SIGTERM only runs the callback.
    let hit = Rc::new(Cell::new(false));
    let h = hit.clone();
    let id = lp
        .start_signal(Signal::TERM, move |lp, _| {
            h.set(true);
            lp.stop();
        })
        .unwrap();
    kill_self(libc::SIGTERM);
    lp.run_for(LIMIT).unwrap();
    assert!(hit.get(), "the watched SIGTERM did not reach its callback");
    println!("watched SIGTERM caught");
    std::io::stdout().flush().unwrap();

    // The last watch stops: SIGTERM terminates the process again.
    lp.stop_signal(id).unwrap();
    kill_self(libc::SIGTERM);
    thread::sleep(LIMIT);
    println!("still alive after SIGTERM");
    std::process::exit(3);
}

fn child_main(role: &str) {
    match role {
        "sigterm:uring" => child_sigterm(BackendChoice::Uring),
        "sigterm:epoll" => child_sigterm(BackendChoice::Epoll),
        other => panic!("unknown child role {other}"),
    }
}

fn signals_during_close(choice: BackendChoice) {
    // SIGUSR1 keeps arriving while loops are built, run and closed. A signal that lands after a
    // loop has unregistered its watch would terminate the process if that was the last fdloop
    // watch of SIGUSR1; the keeper loop started by `main` keeps one watch alive for the whole
    // run (in-process rather than a re-executed child, so that a crash shows up as this case's
    // failure with its output).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let (st, se) = (stop.clone(), sent.clone());
    let sender = thread::spawn(move || {
        while !st.load(Ordering::SeqCst) {
            kill_self(libc::SIGUSR1);
            se.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_micros(50));
        }
    });
    let calls = Rc::new(Cell::new(0usize));
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        for _ in 0..50 {
            let lp = new_loop(choice);
            let c = calls.clone();
            lp.start_signal(Signal::USR1, move |_, _| c.set(c.get() + 1))
                .unwrap();
            lp.run_for(Duration::from_millis(2)).unwrap();
            lp.close().unwrap();
        }
    }));
    // The sender is stopped whatever happened above.
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    if let Err(p) = result {
        panic::resume_unwind(p);
    }
    println!(
        "  ({} signals sent, {} callbacks over 50 loops)",
        sent.load(Ordering::SeqCst),
        calls.get()
    );
}
