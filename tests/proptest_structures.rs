//! A model of the timer store through the public API, on both backends: random sequences of
//! `start_timer`, `stop_timer` and `restart_timer`, with callbacks that stop or postpone other
//! timers, checked against a reference model of the order in which the timers fire.
//!
//! Deadlines are absolute ([`Timer::at`]): a grid of instants a few tens of microseconds after
//! the loop was built, or an hour later ("far"). The test waits until every near deadline has
//! passed and then runs one iteration, in which every near timer still pending must fire: in
//! deadline order, ties in the order the timers were (re)started, skipping those stopped or
//! postponed by a callback that ran before them. Nothing depends on how fast the machine is.
//!
//! The structures themselves (the timing wheel, the generation-checked slab) have their own
//! property tests, inside the crate (`src/timer/wheel/proptests.rs`) and in
//! `backends/tests/proptest_slab.rs`.
//!
//! `PROPTEST_CASES` sets the number of cases per backend (default 64).

mod common;

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fdloop::{BackendChoice, Loop, Timer, TimerId};
use proptest::prelude::*;
use proptest::sample::Index;

/// Grid step of the near deadlines.
const STEP: Duration = Duration::from_micros(10);
/// Far deadlines: never reached by the test.
const FAR: Duration = Duration::from_secs(3600);

/// A deadline: `Near(k)` is `base + k × STEP`, `Far` is `base + FAR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    Near(u32),
    Far,
}

/// What a callback does to another timer when it fires.
#[derive(Clone, Copy, Debug)]
enum Action {
    Nothing,
    Stop(Index),
    /// Restarts the other timer far ahead (so that it does not fire in this iteration).
    Postpone(Index),
}

#[derive(Clone, Debug)]
enum Step {
    Start(When, Action),
    Stop(Index),
    Restart(Index, When),
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![
        5 => (0..8u32).prop_map(When::Near),
        1 => Just(When::Far),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => Just(Action::Nothing),
        1 => any::<Index>().prop_map(Action::Stop),
        1 => any::<Index>().prop_map(Action::Postpone),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (when(), action()).prop_map(|(w, a)| Step::Start(w, a)),
        1 => any::<Index>().prop_map(Step::Stop),
        2 => (any::<Index>(), when()).prop_map(|(i, w)| Step::Restart(i, w)),
    ]
}

/// The model of one timer.
#[derive(Clone, Debug)]
struct Model {
    when: When,
    /// Order of the last (re)start, for ties.
    seq: u64,
    pending: bool,
    action: Action,
}

/// What the callbacks did, in order: the timer that fired, and the result of its action.
type Log = Rc<RefCell<Vec<(usize, Option<io::ErrorKind>)>>>;

fn deadline(base: Instant, when: When) -> Instant {
    match when {
        When::Near(k) => base + STEP * k,
        When::Far => base + FAR,
    }
}

/// The timer an action's `Index` names among `n` timers, if not `me` itself.
fn target(i: Index, n: usize, me: usize) -> Option<usize> {
    let t = i.index(n);
    (t != me).then_some(t)
}

fn run_case(choice: BackendChoice, steps: &[Step]) -> Result<(), TestCaseError> {
    let lp = Loop::builder().backend(choice).build().unwrap();
    let base = Instant::now();
    let log: Log = Rc::default();
    let ids: Rc<RefCell<Vec<TimerId>>> = Rc::default();
    let mut model: Vec<Model> = Vec::new();
    let mut seq = 0u64;

    for step in steps {
        match *step {
            Step::Start(when, action) => {
                let me = model.len();
                let (log, ids2) = (log.clone(), ids.clone());
                let id = lp.start_timer(Timer::at(deadline(base, when)), move |lp, _| {
                    let ids = ids2.borrow();
                    let result = match action {
                        Action::Nothing => None,
                        Action::Stop(i) => target(i, ids.len(), me)
                            .map(|t| lp.stop_timer(ids[t]).err().map(|e| e.kind())),
                        Action::Postpone(i) => target(i, ids.len(), me).map(|t| {
                            lp.restart_timer(ids[t], Timer::at(base + FAR))
                                .err()
                                .map(|e| e.kind())
                        }),
                    }
                    .flatten();
                    log.borrow_mut().push((me, result));
                });
                ids.borrow_mut().push(id);
                model.push(Model {
                    when,
                    seq,
                    pending: true,
                    action,
                });
                seq += 1;
            }
            Step::Stop(i) if !model.is_empty() => {
                let t = i.index(model.len());
                let r = lp.stop_timer(ids.borrow()[t]);
                if model[t].pending {
                    prop_assert!(r.is_ok(), "stop_timer of pending timer {}: {:?}", t, r);
                    model[t].pending = false;
                } else {
                    prop_assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
                }
            }
            Step::Restart(i, when) if !model.is_empty() => {
                let t = i.index(model.len());
                let r = lp.restart_timer(ids.borrow()[t], Timer::at(deadline(base, when)));
                if model[t].pending {
                    prop_assert!(r.is_ok(), "restart_timer of pending timer {}: {:?}", t, r);
                    model[t].when = when;
                    model[t].seq = seq;
                    seq += 1;
                } else {
                    prop_assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
                }
            }
            _ => {}
        }
    }

    // The model's run: the earliest pending near timer fires, then its action applies.
    let n = model.len();
    let mut expected = Vec::new();
    loop {
        let next = (0..n)
            .filter(|&t| model[t].pending)
            .filter_map(|t| match model[t].when {
                When::Near(k) => Some((k, model[t].seq, t)),
                When::Far => None,
            })
            .min();
        let Some((_, _, t)) = next else { break };
        model[t].pending = false;
        let result = match model[t].action {
            Action::Nothing => None,
            Action::Stop(i) => target(i, n, t).map(|o| {
                let was = std::mem::replace(&mut model[o].pending, false);
                (!was).then_some(io::ErrorKind::NotFound)
            }),
            Action::Postpone(i) => target(i, n, t).map(|o| {
                if model[o].pending {
                    model[o].when = When::Far;
                    None
                } else {
                    Some(io::ErrorKind::NotFound)
                }
            }),
        }
        .flatten();
        expected.push((t, result));
    }

    // Wait until every near deadline has passed, then run one iteration; `stop` first, so that
    // the wait after the timers does not block on the far ones.
    let last = base + STEP * 8;
    while Instant::now() < last {
        std::thread::sleep(STEP);
    }
    lp.stop();
    lp.run_once().unwrap();
    prop_assert_eq!(&*log.borrow(), &expected);

    // Only far timers are left: stopping them empties the loop, and `run` returns.
    for (t, m) in model.iter().enumerate() {
        let r = lp.stop_timer(ids.borrow()[t]);
        prop_assert_eq!(r.is_ok(), m.pending, "timer {} pending: {}", t, m.pending);
    }
    log.borrow_mut().clear();
    lp.run().unwrap();
    prop_assert!(log.borrow().is_empty(), "a stopped timer fired");
    lp.close().unwrap();
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        // Failures are reported with their minimal sequence; nothing is written to the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 0..32)
}

/// Whether an io_uring loop can be built here (asked once; the reason is printed once).
fn uring_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| common::new_loop(BackendChoice::Uring).is_some())
}

mod timer_model {
    use super::*;

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn epoll(steps in steps()) {
            run_case(BackendChoice::Epoll, &steps)?;
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn uring(steps in steps()) {
            if !uring_available() {
                return Ok(());
            }
            run_case(BackendChoice::Uring, &steps)?;
        }
    }
}
