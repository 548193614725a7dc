//! eventfd, timerfd and signalfd (`fdloop::dev::{eventfd, timerfd, signalfd}`) on both
//! backends, from fibers and from callbacks.
//!
//! The signalfd cases run in a child process — this test binary re-executed with `CHILD_ENV`
//! set — because a signalfd only sees signals blocked in every thread, and libtest's `main`
//! has spawned threads before any test runs. In the child, a constructor in `.init_array`
//! blocks `SIGUSR1` before `main` (so before any thread exists); every thread inherits that
//! mask, and the child test checks it.

mod common;

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fdloop::dev::eventfd::EventFd;
use fdloop::dev::signalfd::{block_in_this_thread, SigSet, SignalFd};
use fdloop::dev::timerfd::{Clock, TimerFd, TimerSpec};
use fdloop::{fiber, BackendChoice, BackendKind, Interest, Loop, Signal, Timer};

fn would_block<T: std::fmt::Debug>(r: io::Result<T>) {
    assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
}

backend_tests! {
    fn eventfd_round_trips_between_fibers(lp: &Loop) {
        let ping = Rc::new(EventFd::new(0, false).unwrap());
        let pong = Rc::new(EventFd::new(0, false).unwrap());
        let (p1, q1) = (ping.clone(), pong.clone());
        let a = lp.spawn(move || {
            let mut sum = 0;
            for i in 1..=50u64 {
                p1.write(i).unwrap();
                sum += q1.read().unwrap();
            }
            sum
        });
        let b = lp.spawn(move || {
            for _ in 0..50 {
                let v = ping.read().unwrap();
                pong.write(v * 2).unwrap();
            }
        });
        lp.run().unwrap();
        b.join().unwrap();
        assert_eq!(a.join().unwrap(), 2 * (1..=50).sum::<u64>());
    }

    fn eventfd_from_a_callback(lp: &Loop) {
        // An EventFd is Send + Sync: one shared by the loop's callback, a fiber, a timer and
        // another thread.
        let ev = Arc::new(EventFd::new(0, false).unwrap());
        let fd = ev.as_raw_fd();
        let got: Rc<RefCell<Vec<u64>>> = Rc::default();
        let calls = Rc::new(Cell::new(0));
        let (g, c, e0) = (got.clone(), calls.clone(), ev.clone());
        lp.start_poll(fd, Interest::READABLE, move |lp, ready| {
            assert!(ready.is_readable());
            c.set(c.get() + 1);
            match e0.try_read() {
                Ok(v) => g.borrow_mut().push(v),
                Err(e) => panic!("readable but {e}"),
            }
            would_block(e0.try_read());
            if g.borrow().len() == 3 {
                lp.detach(fd).unwrap();
            }
        }).unwrap();
        let e1 = ev.clone();
        lp.spawn(move || e1.write(5).unwrap());
        let e2 = ev.clone();
        lp.start_timer(Timer::after(Duration::from_millis(2)), move |_, _| e2.write(6).unwrap());
        let e3 = ev.clone();
        let thread = Rc::new(RefCell::new(None));
        let t = thread.clone();
        lp.start_timer(Timer::after(Duration::from_millis(4)), move |_, _| {
            let e3 = e3.clone();
            *t.borrow_mut() = Some(std::thread::spawn(move || e3.write(7).unwrap()));
        });
        lp.run().unwrap();
        thread.borrow_mut().take().unwrap().join().unwrap();
        assert_eq!(*got.borrow(), vec![5, 6, 7]);
        assert_eq!(calls.get(), 3, "one callback per write, no busy loop");
    }

    fn eventfd_semaphore_mode(lp: &Loop) {
        let ev = EventFd::new(3, true).unwrap();
        for _ in 0..3 {
            assert_eq!(ev.try_read().unwrap(), 1);
        }
        would_block(ev.try_read());
        ev.write(2).unwrap();
        let ev = Rc::new(ev);
        let e = ev.clone();
        let h = lp.spawn(move || {
            let a = e.read().unwrap();
            let b = e.read().unwrap();
            (a, b)
        });
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), (1, 1));
        would_block(ev.try_read());
    }

    fn eventfd_read_timeout_and_overflow(lp: &Loop) {
        let mut ev = EventFd::new(0, false).unwrap();
        ev.set_timeout(Some(Duration::from_millis(10))).unwrap();
        assert_eq!(ev.set_timeout(Some(Duration::ZERO)).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(ev.try_write(u64::MAX).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let ev = Rc::new(ev);
        let e = ev.clone();
        let timed = lp.spawn(move || {
            let t0 = Instant::now();
            let r = e.read();
            (r.map_err(|e| e.kind()), t0.elapsed())
        });
        lp.run().unwrap();
        let (r, elapsed) = timed.join().unwrap();
        assert_eq!(r, Err(io::ErrorKind::WouldBlock));
        assert!(elapsed >= Duration::from_millis(10), "timed out early: {elapsed:?}");

        // The counter is full: a write in a fiber waits until a reader makes room.
        let full = Rc::new(EventFd::new(0, false).unwrap());
        full.write(u64::MAX - 1).unwrap();
        would_block(full.try_write(1)); // outside a fiber: WouldBlock
        let log: Rc<RefCell<Vec<String>>> = Rc::default();
        let (f1, l1) = (full.clone(), log.clone());
        lp.spawn(move || {
            l1.borrow_mut().push("writing".into());
            f1.write(1).unwrap();
            l1.borrow_mut().push("written".into());
        });
        let (f2, l2) = (full.clone(), log.clone());
        lp.spawn(move || {
            fiber::yield_now();
            let v = f2.read().unwrap();
            l2.borrow_mut().push(format!("read {v}"));
            let v = f2.read().unwrap();
            l2.borrow_mut().push(format!("read {v}"));
        });
        lp.run().unwrap();
        let max = u64::MAX - 1;
        assert_eq!(*log.borrow(), vec!["writing".to_string(), format!("read {max}"), "written".into(), "read 1".into()]);
    }

    fn timerfd_one_shot_is_never_early(lp: &Loop) {
        let h = lp.spawn(|| {
            let t = TimerFd::new(Clock::Monotonic).unwrap();
            assert_eq!(t.get().unwrap(), None);
            let t0 = Instant::now();
            t.set(TimerSpec::after(Duration::from_millis(20))).unwrap();
            let left = t.get().unwrap().unwrap();
            assert!(left.first <= Duration::from_millis(20) && left.interval.is_none(), "{left:?}");
            let n = t.wait().unwrap();
            let elapsed = t0.elapsed();
            // Expired: disarmed now, nothing more to read.
            assert_eq!(t.get().unwrap(), None);
            would_block(t.try_wait());
            (n, elapsed)
        });
        lp.run().unwrap();
        let (n, elapsed) = h.join().unwrap();
        assert_eq!(n, 1);
        assert!(elapsed >= Duration::from_millis(20), "fired early: {elapsed:?}");
    }

    fn timerfd_periodic_and_absolute(lp: &Loop) {
        let h = lp.spawn(|| {
            let t = TimerFd::new(Clock::Monotonic).unwrap();
            let period = Duration::from_millis(5);
            let t0 = Instant::now();
            t.set(TimerSpec::every(period)).unwrap();
            let mut total = 0;
            let mut wakeups = 0;
            while total < 4 {
                total += t.wait().unwrap();
                wakeups += 1;
                // n expirations are never reported before n periods have passed.
                assert!(t0.elapsed() >= period * total as u32, "early: {total} by {:?}", t0.elapsed());
            }
            t.disarm().unwrap();
            assert_eq!(t.get().unwrap(), None);

            // Absolute deadline on the same clock.
            let a = TimerFd::new(Clock::Monotonic).unwrap();
            let t1 = Instant::now();
            let deadline = Clock::Monotonic.now().unwrap() + Duration::from_millis(10);
            a.set(TimerSpec::at(deadline)).unwrap();
            assert_eq!(a.wait().unwrap(), 1);
            assert!(Clock::Monotonic.now().unwrap() >= deadline);
            assert!(t1.elapsed() >= Duration::from_millis(10));

            // Boottime and realtime clocks work the same way.
            for clock in [Clock::Boottime, Clock::Realtime] {
                let b = TimerFd::new(clock).unwrap();
                assert_eq!(b.clock(), clock);
                let t2 = Instant::now();
                b.set(TimerSpec::after(Duration::from_millis(3))).unwrap();
                assert_eq!(b.wait().unwrap(), 1);
                assert!(t2.elapsed() >= Duration::from_millis(3));
            }
            (total, wakeups)
        });
        lp.run().unwrap();
        let (total, wakeups) = h.join().unwrap();
        assert!(total >= 4 && wakeups <= total, "{total} expirations in {wakeups} wake-ups");
    }

    fn timerfd_from_a_callback_and_disarm(lp: &Loop) {
        let t = TimerFd::new(Clock::Monotonic).unwrap();
        let period = Duration::from_millis(3);
        let t0 = Instant::now();
        t.set(TimerSpec::after(Duration::from_millis(6)).with_interval(period)).unwrap();
        let spec = t.get().unwrap().unwrap();
        assert_eq!(spec.interval, Some(period));
        let fd = t.as_raw_fd();
        let total = Rc::new(Cell::new(0u64));
        let calls = Rc::new(Cell::new(0u64));
        let (tt, cc) = (total.clone(), calls.clone());
        lp.start_poll(fd, Interest::READABLE, move |lp, _| {
            cc.set(cc.get() + 1);
            let n = t.try_wait().unwrap();
            tt.set(tt.get() + n);
            // 6 ms for the first, 3 ms for each further one.
            let due = Duration::from_millis(6) + period * (tt.get() - 1) as u32;
            assert!(t0.elapsed() >= due, "early: {} by {:?}", tt.get(), t0.elapsed());
            if tt.get() >= 3 {
                t.disarm().unwrap();
                would_block(t.try_wait());
                lp.detach(fd).unwrap();
            }
        }).unwrap();
        lp.run().unwrap();
        assert!(total.get() >= 3);
        assert!(calls.get() <= total.get(), "a callback without an expiration");

        // Disarmed before it fires: nothing, ever (here: within 30 ms).
        let mut d = TimerFd::new(Clock::Monotonic).unwrap();
        d.set(TimerSpec::after(Duration::from_millis(5))).unwrap();
        d.disarm().unwrap();
        assert_eq!(d.get().unwrap(), None);
        d.set_timeout(Some(Duration::from_millis(30))).unwrap();
        let h = lp.spawn(move || d.wait().map_err(|e| e.kind()));
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), Err(io::ErrorKind::WouldBlock));

        // A zero interval is refused; a zero first delay means "at once".
        let z = TimerFd::new(Clock::Monotonic).unwrap();
        let bad = TimerSpec::after(Duration::from_millis(1)).with_interval(Duration::ZERO);
        assert_eq!(z.set(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        z.set(TimerSpec::after(Duration::ZERO)).unwrap();
        let h = lp.spawn(move || z.wait().unwrap());
        lp.run().unwrap();
        assert_eq!(h.join().unwrap(), 1);
    }

    fn signalfd_in_a_child_process(lp: &Loop) {
        let backend = match lp.backend().kind {
            BackendKind::Uring => "uring",
            BackendKind::Epoll => "epoll",
        };
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "signalfd_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, backend)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed: {:?}\n{stdout}\n{stderr}", out.status);
        for marker in ["mask inherited", "fiber ok", "callback ok", "children unblocked"] {
            assert!(stdout.contains(&format!("signalfd child: {marker}")), "missing {marker:?}:\n{stdout}\n{stderr}");
        }
    }
}

/// Selects the child role of `signalfd_child` (value: the backend, `uring` or `epoll`).
const CHILD_ENV: &str = "FDLOOP_DEV_FDS_SIGNALFD_CHILD";

/// Runs before `main` — before libtest creates any thread — in every process of this binary.
/// In the signalfd child, it blocks SIGUSR1 for the whole process: every thread created later
/// inherits the mask.
#[used]
#[link_section = ".init_array"]
static BLOCK_BEFORE_MAIN: extern "C" fn() = block_before_main;

extern "C" fn block_before_main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        if let Ok(guard) = block_in_this_thread(&SigSet::from_signals(&[Signal::USR1])) {
            std::mem::forget(guard); // blocked for the life of the process
        }
    }
}

fn kill_self_usr1() {
    // SAFETY: (FFI) kill takes no pointers.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) }, 0);
}

/// SigBlk of a child started with `cmd` (from its /proc/self/status).
fn child_sigblk(cmd: &mut Command) -> u64 {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("SigBlk:"))
        .expect("SigBlk line");
    u64::from_str_radix(line["SigBlk:".len()..].trim(), 16).unwrap()
}

/// The child process's test (does nothing in a normal run).
#[test]
fn signalfd_child() {
    let Some(backend) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let choice = match backend.to_str() {
        Some("uring") => BackendChoice::Uring,
        _ => BackendChoice::Epoll,
    };
    let set = SigSet::from_signals(&[Signal::USR1]);
    // This thread was created by libtest after the constructor ran: it inherited the mask.
    assert!(SigSet::blocked_in_this_thread()
        .unwrap()
        .contains(Signal::USR1));
    println!("signalfd child: mask inherited");
    let lp = Loop::builder().backend(choice).build().unwrap();
    let me = std::process::id();
    // SAFETY: (FFI) getuid takes no pointers and cannot fail.
    let uid = unsafe { libc::getuid() };

    // Fiber style: the fiber suspends in read(); the signal is sent while it waits.
    let sfd = SignalFd::new(&set).unwrap();
    let reader = lp.spawn(move || sfd.read().unwrap());
    lp.start_timer(Timer::after(Duration::from_millis(2)), |_, _| {
        kill_self_usr1()
    });
    lp.run().unwrap();
    let info = reader.join().unwrap();
    assert_eq!(info.signo, libc::SIGUSR1);
    assert_eq!(info.signal(), Some(Signal::USR1));
    assert_eq!(info.pid, me);
    assert_eq!(info.uid, uid);
    assert_eq!(info.code, libc::SI_USER);
    println!("signalfd child: fiber ok");

    // Callback style: poll for readability, then try_read until WouldBlock.
    let sfd = SignalFd::new(&set).unwrap();
    let fd = sfd.as_raw_fd();
    let seen: Rc<RefCell<Vec<(i32, u32)>>> = Rc::default();
    let calls = Rc::new(Cell::new(0));
    let (s, c) = (seen.clone(), calls.clone());
    lp.start_poll(fd, Interest::READABLE, move |lp, _| {
        c.set(c.get() + 1);
        loop {
            match sfd.try_read() {
                Ok(info) => s.borrow_mut().push((info.signo, info.pid)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        lp.detach(fd).unwrap();
    })
    .unwrap();
    lp.start_timer(Timer::after(Duration::from_millis(2)), |_, _| {
        kill_self_usr1()
    });
    lp.run().unwrap();
    assert_eq!(*seen.borrow(), vec![(libc::SIGUSR1, me)]);
    assert_eq!(calls.get(), 1);
    println!("signalfd child: callback ok");

    // The blocked mask leaks into children through Command; SigSet::unblock in pre_exec
    // clears it.
    let usr1_bit = 1u64 << (libc::SIGUSR1 - 1);
    let leaked = child_sigblk(Command::new("cat").arg("/proc/self/status"));
    assert_ne!(leaked & usr1_bit, 0, "SigBlk {leaked:x}");
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/self/status");
    // SAFETY: (FFI) SigSet::unblock only calls pthread_sigmask, which is async-signal-safe.
    unsafe { cmd.pre_exec(move || set.unblock()) };
    let clean = child_sigblk(&mut cmd);
    assert_eq!(clean & usr1_bit, 0, "SigBlk {clean:x}");
    println!("signalfd child: children unblocked");
}

#[test]
fn sigset_operations_and_guard() {
    let mut set = SigSet::empty();
    assert!(set.is_empty());
    set.add(Signal::USR2);
    set.add(Signal::HUP);
    assert!(set.contains(Signal::HUP) && set.contains(Signal::USR2));
    assert!(!set.contains(Signal::INT));
    assert_eq!(
        set.signals().collect::<Vec<_>>(),
        vec![Signal::HUP, Signal::USR2]
    );
    set.remove(Signal::HUP);
    assert_eq!(set, SigSet::from_signals(&[Signal::USR2]));
    let collected: SigSet = [Signal::INT, Signal::TERM].into_iter().collect();
    assert_eq!(
        collected,
        SigSet::empty().with(Signal::INT).with(Signal::TERM)
    );
    assert_eq!(
        format!("{collected:?}"),
        format!("{{{:?}, {:?}}}", Signal::INT, Signal::TERM)
    );

    // A guard restores the thread's previous mask (run on a fresh thread: the mask is
    // per thread, and tests share threads).
    std::thread::spawn(|| {
        let before = SigSet::blocked_in_this_thread().unwrap();
        assert!(!before.contains(Signal::USR2));
        {
            let guard = block_in_this_thread(&SigSet::from_signals(&[Signal::USR2])).unwrap();
            assert_eq!(*guard.previous(), before);
            assert!(SigSet::blocked_in_this_thread()
                .unwrap()
                .contains(Signal::USR2));
        }
        assert_eq!(SigSet::blocked_in_this_thread().unwrap(), before);
    })
    .join()
    .unwrap();
}

#[test]
fn blocking_calls_outside_a_fiber_panic_with_advice() {
    let ev = EventFd::new(1, false).unwrap();
    let err = std::panic::catch_unwind(|| ev.read()).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("EventFd::read") && msg.contains("try_read"),
        "{msg}"
    );
    // But the non-blocking forms work anywhere.
    assert_eq!(ev.try_read().unwrap(), 1);
}
