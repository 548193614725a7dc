//! A model of the loop's public API, driven by random sequences on real pipes, on both backends.
//!
//! Each case builds a loop and runs a random sequence of: create or close a pipe, start a
//! READABLE poll with one of several callbacks (drain, read one byte, read nothing, drain and
//! stop itself, detach itself), stop it, detach the fd, write bytes, post closures from another
//! thread, start and stop short one-shot timers, and run the loop (`run_once` or
//! `run_for(1 ms)`). A reference model predicts what the callbacks must do:
//!
//! * **Exact** where the loop is: in `run_once`, every watched pipe holding data fires exactly
//!   once (level-triggered), reads what its callback's kind predicts, and no other pipe fires;
//!   every posted closure runs exactly once, in posting order; every timer already due when
//!   `run_once` is called fires in it. `stop_poll` and `stop_timer` succeed exactly when the
//!   model says the source is live.
//! * **Always**: a callback never runs after its registration was replaced, stopped or
//!   detached, nor for a pipe without data; a timer never fires early, nor twice, nor after a
//!   successful `stop_timer`.
//! * **At the end**, after detaching every pipe, `run` returns (every cancelled operation has
//!   completed) and every posted closure and every timer not stopped has run exactly once.
//!
//! `run_for` may run any number of iterations (even none, on a loaded machine), so there the
//! model only checks the "always" rules and follows what was observed.
//!
//! `PROPTEST_CASES` sets the number of cases per backend (default 64).

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{pipe_nonblocking, write_fd};
use fdloop::{BackendChoice, Interest, Loop, Readiness, Timer, TimerId};
use proptest::prelude::*;
use proptest::sample::Index;

/// What a poll callback does when it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Reads everything.
    Drain,
    /// Reads one byte.
    ReadOne,
    /// Reads nothing (level-triggered: it comes back every iteration).
    Leave,
    /// Reads everything, then stops its own poll.
    DrainThenStop,
    /// Reads nothing and detaches its own fd.
    DetachSelf,
}

#[derive(Clone, Debug)]
enum Step {
    NewPipe,
    /// Detaches the fd and closes both ends (the numbers are then reused by new pipes).
    ClosePipe(Index),
    StartPoll(Index, Mode),
    StopPoll(Index),
    Detach(Index),
    Write(Index, usize),
    /// Posts this many closures from another thread.
    Post(usize),
    /// A one-shot timer, this many microseconds ahead.
    StartTimer(u64),
    StopTimer(Index),
    RunOnce,
    RunFor1ms,
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        3 => Just(Mode::Drain),
        2 => Just(Mode::ReadOne),
        1 => Just(Mode::Leave),
        1 => Just(Mode::DrainThenStop),
        1 => Just(Mode::DetachSelf),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::NewPipe),
        1 => any::<Index>().prop_map(Step::ClosePipe),
        5 => (any::<Index>(), mode()).prop_map(|(i, m)| Step::StartPoll(i, m)),
        2 => any::<Index>().prop_map(Step::StopPoll),
        2 => any::<Index>().prop_map(Step::Detach),
        6 => (any::<Index>(), 1..4usize).prop_map(|(i, n)| Step::Write(i, n)),
        2 => (1..4usize).prop_map(Step::Post),
        2 => (0..2_000u64).prop_map(Step::StartTimer),
        2 => any::<Index>().prop_map(Step::StopTimer),
        6 => Just(Step::RunOnce),
        2 => Just(Step::RunFor1ms),
    ]
}

/// What the callbacks saw, in the order they ran.
#[derive(Debug)]
enum Seen {
    Poll {
        pipe: usize,
        epoch: u64,
        read: usize,
        ready: Readiness,
    },
    Timer {
        timer: usize,
        at: Instant,
    },
}

type Log = Rc<RefCell<Vec<Seen>>>;

struct PipeModel {
    r: Rc<OwnedFd>,
    w: OwnedFd,
    /// Bytes in the pipe.
    pending: usize,
    /// The current registration: its epoch and its callback's kind.
    watch: Option<(u64, Mode)>,
}

impl PipeModel {
    fn fd(&self) -> RawFd {
        self.r.as_raw_fd()
    }
}

struct TimerModel {
    id: TimerId,
    /// Taken just before and just after `start_timer`: the loop's deadline lies between
    /// `before + delay` and `after + delay`.
    before: Instant,
    after: Instant,
    delay: Duration,
    stopped: bool,
    fired: u32,
}

/// Reads up to `max` bytes from a non-blocking fd; stops at EAGAIN.
fn read_nonblocking(fd: &OwnedFd, max: usize) -> usize {
    let mut buf = [0u8; 256];
    let mut total = 0;
    while total < max {
        let want = (max - total).min(buf.len());
        // SAFETY: (FFI) `buf` is a live, writable buffer of at least `want` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
        if n < 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "read: {e}");
            break;
        }
        if n == 0 {
            break;
        }
        total += n as usize;
    }
    total
}

struct Model {
    lp: Loop,
    log: Log,
    pipes: HashMap<usize, PipeModel>,
    /// Open pipes, in creation order (for `Index` picks).
    open: Vec<usize>,
    next_pipe: usize,
    next_epoch: u64,
    timers: Vec<TimerModel>,
    posted: Arc<Mutex<Vec<u64>>>,
    /// Closures posted so far, and how many of them have been seen running.
    post_count: u64,
    posts_run: usize,
}

impl Model {
    fn new(lp: Loop) -> Model {
        Model {
            lp,
            log: Rc::new(RefCell::new(Vec::new())),
            pipes: HashMap::new(),
            open: Vec::new(),
            next_pipe: 0,
            next_epoch: 0,
            timers: Vec::new(),
            posted: Arc::new(Mutex::new(Vec::new())),
            post_count: 0,
            posts_run: 0,
        }
    }

    fn pick(&self, i: Index) -> Option<usize> {
        (!self.open.is_empty()).then(|| self.open[i.index(self.open.len())])
    }

    fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match *step {
            Step::NewPipe => {
                if self.open.len() < 8 {
                    let (r, w) = pipe_nonblocking();
                    let n = self.next_pipe;
                    self.next_pipe += 1;
                    self.pipes.insert(
                        n,
                        PipeModel {
                            r: Rc::new(r),
                            w,
                            pending: 0,
                            watch: None,
                        },
                    );
                    self.open.push(n);
                }
            }
            Step::ClosePipe(i) => {
                if let Some(n) = self.pick(i) {
                    let p = self.pipes.remove(&n).unwrap();
                    self.lp.detach(p.fd()).unwrap();
                    self.open.retain(|&x| x != n);
                    drop(p);
                }
            }
            Step::StartPoll(i, mode) => {
                if let Some(n) = self.pick(i) {
                    let epoch = self.next_epoch;
                    self.next_epoch += 1;
                    let p = self.pipes.get_mut(&n).unwrap();
                    let (r, log, fd) = (p.r.clone(), self.log.clone(), p.fd());
                    self.lp
                        .start_poll(fd, Interest::READABLE, move |lp, ready| {
                            let read = match mode {
                                Mode::Drain | Mode::DrainThenStop => read_nonblocking(&r, 4096),
                                Mode::ReadOne => read_nonblocking(&r, 1),
                                Mode::Leave | Mode::DetachSelf => 0,
                            };
                            match mode {
                                Mode::DrainThenStop => {
                                    lp.stop_poll(fd, Interest::READABLE).unwrap()
                                }
                                Mode::DetachSelf => lp.detach(fd).unwrap(),
                                _ => {}
                            }
                            log.borrow_mut().push(Seen::Poll {
                                pipe: n,
                                epoch,
                                read,
                                ready,
                            });
                        })
                        .unwrap();
                    p.watch = Some((epoch, mode));
                }
            }
            Step::StopPoll(i) => {
                if let Some(n) = self.pick(i) {
                    let p = self.pipes.get_mut(&n).unwrap();
                    let r = self.lp.stop_poll(p.fd(), Interest::READABLE);
                    if p.watch.take().is_some() {
                        prop_assert!(r.is_ok(), "stop_poll of a watched fd: {:?}", r);
                    } else {
                        prop_assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
                    }
                }
            }
            Step::Detach(i) => {
                if let Some(n) = self.pick(i) {
                    let p = self.pipes.get_mut(&n).unwrap();
                    self.lp.detach(p.fd()).unwrap();
                    p.watch = None;
                }
            }
            Step::Write(i, len) => {
                if let Some(n) = self.pick(i) {
                    let p = self.pipes.get_mut(&n).unwrap();
                    write_fd(&p.w, &[0x5a; 3][..len]);
                    p.pending += len;
                }
            }
            Step::Post(k) => {
                let handle = self.lp.handle();
                let posted = self.posted.clone();
                let first = self.post_count;
                std::thread::spawn(move || {
                    for s in first..first + k as u64 {
                        let posted = posted.clone();
                        handle
                            .post(move |_| posted.lock().unwrap().push(s))
                            .unwrap();
                    }
                })
                .join()
                .unwrap();
                self.post_count += k as u64;
            }
            Step::StartTimer(us) => {
                let delay = Duration::from_micros(us);
                let log = self.log.clone();
                let timer = self.timers.len();
                let before = Instant::now();
                let id = self.lp.start_timer(Timer::after(delay), move |_, _| {
                    log.borrow_mut().push(Seen::Timer {
                        timer,
                        at: Instant::now(),
                    });
                });
                self.timers.push(TimerModel {
                    id,
                    before,
                    after: Instant::now(),
                    delay,
                    stopped: false,
                    fired: 0,
                });
            }
            Step::StopTimer(i) => {
                if !self.timers.is_empty() {
                    let k = i.index(self.timers.len());
                    let t = &mut self.timers[k];
                    let r = self.lp.stop_timer(t.id);
                    if !t.stopped && t.fired == 0 {
                        prop_assert!(r.is_ok(), "stop_timer of a pending timer: {:?}", r);
                        t.stopped = true;
                    } else {
                        prop_assert_eq!(r.unwrap_err().kind(), io::ErrorKind::NotFound);
                    }
                }
            }
            Step::RunOnce => {
                let ready: Vec<usize> = self
                    .open
                    .iter()
                    .copied()
                    .filter(|n| {
                        let p = &self.pipes[n];
                        p.watch.is_some() && p.pending > 0
                    })
                    .collect();
                let posts_waiting = self.post_count as usize > self.posts_run;
                if ready.is_empty() && !posts_waiting {
                    // Nothing is sure to be ready: run_once could wait for ever on a pipe.
                    return self.run_for();
                }
                let now = Instant::now();
                let due: Vec<usize> = (0..self.timers.len())
                    .filter(|&t| {
                        let m = &self.timers[t];
                        !m.stopped && m.fired == 0 && now >= m.after + m.delay
                    })
                    .collect();
                self.lp.run_once().unwrap();
                let mut pipes_fired = self.follow_log()?;
                pipes_fired.sort_unstable();
                prop_assert_eq!(
                    pipes_fired,
                    ready,
                    "run_once: each watched pipe holding data fires exactly once"
                );
                for t in due {
                    prop_assert_eq!(self.timers[t].fired, 1, "timer {} was due", t);
                }
                self.follow_posts(true)?;
            }
            Step::RunFor1ms => self.run_for()?,
        }
        Ok(())
    }

    fn run_for(&mut self) -> Result<(), TestCaseError> {
        self.lp.run_for(Duration::from_millis(1)).unwrap();
        self.follow_log()?;
        self.follow_posts(false)
    }

    /// Checks what the callbacks did against the model, in order, and updates the model.
    /// Returns the pipes that fired (one entry per callback).
    fn follow_log(&mut self) -> Result<Vec<usize>, TestCaseError> {
        let seen: Vec<Seen> = std::mem::take(&mut *self.log.borrow_mut());
        let mut pipes_fired = Vec::new();
        for s in seen {
            match s {
                Seen::Poll {
                    pipe,
                    epoch,
                    read,
                    ready,
                } => {
                    let p = self.pipes.get_mut(&pipe);
                    prop_assert!(p.is_some(), "a callback ran for closed pipe {}", pipe);
                    let p = p.unwrap();
                    let Some((current, mode)) = p.watch else {
                        return Err(TestCaseError::fail(format!(
                            "pipe {pipe}: callback (epoch {epoch}) ran after stop/detach"
                        )));
                    };
                    prop_assert_eq!(epoch, current, "pipe {}: a replaced callback ran", pipe);
                    prop_assert!(p.pending > 0, "pipe {}: callback without data", pipe);
                    prop_assert!(
                        ready.is_readable() && !ready.is_error(),
                        "pipe {}: {:?}",
                        pipe,
                        ready
                    );
                    let want = match mode {
                        Mode::Drain | Mode::DrainThenStop => p.pending,
                        Mode::ReadOne => 1,
                        Mode::Leave | Mode::DetachSelf => 0,
                    };
                    prop_assert_eq!(
                        read,
                        want,
                        "pipe {}: bytes read by a {:?} callback",
                        pipe,
                        mode
                    );
                    p.pending -= read;
                    if matches!(mode, Mode::DrainThenStop | Mode::DetachSelf) {
                        p.watch = None;
                    }
                    pipes_fired.push(pipe);
                }
                Seen::Timer { timer, at } => {
                    let t = &mut self.timers[timer];
                    prop_assert!(!t.stopped, "timer {} fired after stop_timer", timer);
                    prop_assert_eq!(t.fired, 0, "one-shot timer {} fired twice", timer);
                    prop_assert!(at >= t.before + t.delay, "timer {} fired early", timer);
                    t.fired = 1;
                }
            }
        }
        Ok(pipes_fired)
    }

    /// Checks the posted closures that ran: in order, each once; all of them when `all`.
    fn follow_posts(&mut self, all: bool) -> Result<(), TestCaseError> {
        let ran = self.posted.lock().unwrap().clone();
        let want: Vec<u64> = (0..ran.len() as u64).collect();
        prop_assert_eq!(&ran, &want, "posted closures run once each, in order");
        prop_assert!(ran.len() as u64 <= self.post_count);
        if all {
            prop_assert_eq!(ran.len() as u64, self.post_count, "posted closures not run");
        }
        self.posts_run = ran.len();
        Ok(())
    }

    /// Detaches every pipe, runs the loop until nothing is left, and checks the totals.
    fn finish(mut self) -> Result<(), TestCaseError> {
        for n in std::mem::take(&mut self.open) {
            let mut p = self.pipes.remove(&n).unwrap();
            self.lp.detach(p.fd()).unwrap();
            p.watch = None;
            // Keep the fds open until the loop has finished with them.
            self.pipes.insert(n, p);
        }
        self.lp.run().unwrap();
        self.follow_log()?;
        self.follow_posts(true)?;
        for (i, t) in self.timers.iter().enumerate() {
            let want = u32::from(!t.stopped);
            prop_assert_eq!(t.fired, want, "timer {} (stopped: {})", i, t.stopped);
        }
        self.lp.close().unwrap();
        Ok(())
    }
}

fn run_case(choice: BackendChoice, steps: &[Step]) -> Result<(), TestCaseError> {
    let lp = Loop::builder().backend(choice).build().unwrap();
    let mut model = Model::new(lp);
    for step in steps {
        model.step(step)?;
    }
    model.finish()
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

/// Whether an io_uring loop can be built here (asked once; the reason is printed once).
fn uring_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| common::new_loop(BackendChoice::Uring).is_some())
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..40)
}

mod loop_model {
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
