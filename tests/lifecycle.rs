//! run / run_for / run_once / stop / close, re-entrancy, panics in callbacks, backend choice.

mod common;

use std::cell::Cell;
use std::io;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fdloop::{BackendChoice, BackendKind, Loop, Timer};

backend_tests! {
    fn run_returns_when_nothing_is_left(lp: &Loop) {
        lp.run().unwrap();
        assert!(!lp.run_once().unwrap());
        let fired = Rc::new(Cell::new(false));
        let f = fired.clone();
        lp.start_timer(Timer::after(Duration::from_millis(1)), move |_, _| f.set(true));
        lp.run().unwrap();
        assert!(fired.get());
    }

    fn run_for_waits_the_whole_duration(lp: &Loop) {
        let t0 = Instant::now();
        lp.run_for(Duration::from_millis(30)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }

    fn run_from_inside_a_callback_is_an_error(lp: &Loop) {
        let checked = Rc::new(Cell::new(false));
        let c = checked.clone();
        lp.start_timer(Timer::after(Duration::ZERO), move |lp, _| {
            let err = lp.run().unwrap_err();
            assert!(err.to_string().contains("inside"), "{err}");
            assert!(lp.run_once().is_err());
            assert!(lp.run_for(Duration::from_millis(1)).is_err());
            c.set(true);
        });
        lp.run().unwrap();
        assert!(checked.get());
    }

    fn a_panicking_callback_leaves_the_loop_usable(lp: &Loop) {
        let other = Rc::new(Cell::new(0));
        let o = other.clone();
        lp.start_timer(Timer::every(Duration::from_millis(2)), move |lp, id| {
            o.set(o.get() + 1);
            if o.get() == 5 {
                lp.stop_timer(id).unwrap();
            }
        });
        lp.start_timer(Timer::after(Duration::from_millis(1)), |_, _| panic!("boom"));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run()));
        let payload = caught.unwrap_err();
        assert_eq!(*payload.downcast::<&str>().unwrap(), "boom");
        // The loop runs on: the periodic timer still fires until it stops itself.
        lp.run().unwrap();
        assert_eq!(other.get(), 5);
    }

    fn backend_reports_why(lp: &Loop) {
        let info = lp.backend();
        assert!(info.reason.contains("LoopBuilder::backend"), "{info}");
        let shown = info.to_string();
        assert!(shown.starts_with(match info.kind {
            BackendKind::Uring => "io_uring",
            BackendKind::Epoll => "epoll",
        }));
    }
}

/// Runs this test binary again with `FDLOOP_BACKEND` set, executing `child_backend_env`.
fn child_with_env(value: &str) -> (bool, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_backend_env",
            "--nocapture",
            "--include-ignored",
        ])
        .env("FDLOOP_BACKEND", value)
        .env("FDLOOP_TEST_CHILD", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
#[ignore = "runs only as a child of backend_env_variable"]
fn child_backend_env() {
    if std::env::var_os("FDLOOP_TEST_CHILD").is_none() {
        return;
    }
    match Loop::new() {
        Ok(lp) => println!("CHILD-OK {:?} {}", lp.backend().kind, lp.backend().reason),
        Err(e) => println!("CHILD-ERR {:?} {e}", e.kind()),
    }
}

#[test]
fn backend_env_variable() {
    let (ok, text) = child_with_env("epoll");
    assert!(ok, "{text}");
    assert!(
        text.contains("CHILD-OK Epoll forced by FDLOOP_BACKEND=epoll"),
        "{text}"
    );

    let (_, text) = child_with_env("bogus");
    assert!(text.contains("CHILD-ERR InvalidInput"), "{text}");
    assert!(text.contains("use auto, uring or epoll"), "{text}");

    if common::new_loop(BackendChoice::Uring).is_some() {
        let (_, text) = child_with_env("uring");
        assert!(
            text.contains("CHILD-OK Uring forced by FDLOOP_BACKEND=uring"),
            "{text}"
        );
    }
}

#[test]
fn builder_choice_beats_the_environment() {
    // The builder's explicit choice is used whatever FDLOOP_BACKEND says (CI runs the suite with
    // FDLOOP_BACKEND=epoll; tests that pick a backend still get it).
    let lp = Loop::builder()
        .backend(BackendChoice::Epoll)
        .build()
        .unwrap();
    assert_eq!(lp.backend().kind, BackendKind::Epoll);
    let _ = io::stdout();
}
