//! Timers: one-shot and periodic, kept in the loop (no fd per timer).
//!
//! Timers live in a hierarchical timing wheel ([`wheel`]) with O(1) start and stop; the earliest
//! deadline bounds the driver's wait. Deadlines are nanoseconds on the monotonic clock
//! (`CLOCK_MONOTONIC`, as [`Instant`]). A timer never fires before its deadline; how late it
//! fires depends on what else the loop is doing (one iteration at most when the loop is idle).
//!
//! # Costs
//!
//! One slab entry per timer holds everything: the wheel's links and deadline, the period, and
//! the callback, stored in place when it captures at most three words (larger closures are
//! boxed). A [`TimerId`] names the entry directly, so stopping is an index and a generation
//! check, then an unlink: no search, no second map. Timers started inside the loop share one
//! clock reading per stretch of the iteration: `Timer::after` counts from the loop's cached time
//! (see [`Loop::start_timer`]).

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use fdloop_backends::OpId;

use crate::Loop;

mod callback;
mod wheel;

use callback::Callback;
use wheel::{TimerKey, TimerWheel};

/// When a timer fires: a first deadline and, for periodic timers, a period.
///
/// ```
/// use fdloop::Timer;
/// use std::time::Duration;
///
/// let once = Timer::after(Duration::from_millis(50));
/// let every = Timer::every(Duration::from_secs(1));
/// let later_then_every = Timer::after(Duration::from_secs(5)).repeat(Duration::from_secs(1));
/// # let _ = (once, every, later_then_every);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer {
    first: First,
    period: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum First {
    After(Duration),
    At(Instant),
}

impl Timer {
    /// Fires once, `delay` after it is started. Inside the loop (from a callback or a fiber)
    /// "started" means the loop's cached time of the current iteration: see
    /// [`Loop::start_timer`].
    pub fn after(delay: Duration) -> Timer {
        Timer {
            first: First::After(delay),
            period: None,
        }
    }

    /// Fires once, at `deadline` (at once if it has passed).
    pub fn at(deadline: Instant) -> Timer {
        Timer {
            first: First::At(deadline),
            period: None,
        }
    }

    /// Fires every `period`, the first time one period after it is started.
    ///
    /// # Panics
    ///
    /// If `period` is zero (a timer that would fire in every iteration forever).
    pub fn every(period: Duration) -> Timer {
        Timer::after(period).repeat(period)
    }

    /// Makes the timer periodic: after its first deadline it fires every `period`.
    ///
    /// Periods are kept: the n-th deadline is `first + n × period`, whatever the callbacks'
    /// latency. When the loop falls more than a period behind, the missed deadlines are
    /// skipped (the timer fires once, then stays on the original grid).
    ///
    /// # Panics
    ///
    /// If `period` is zero.
    pub fn repeat(mut self, period: Duration) -> Timer {
        assert!(
            !period.is_zero(),
            "a periodic timer needs a non-zero period"
        );
        self.period = Some(period);
        self
    }

    /// The period, for periodic timers.
    pub fn period(&self) -> Option<Duration> {
        self.period
    }
}

/// Identifies a started timer, for [`Loop::stop_timer`] and [`Loop::restart_timer`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    serial: u32,
    key: TimerKey,
}

impl fmt::Debug for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimerId({}:{})", self.serial, self.key.to_u64())
    }
}

/// What an internal timer does when it fires.
pub(crate) enum Action {
    /// Makes a sleeping fiber ready (no allocation per sleep).
    Wake(OpId),
    /// Cancels a loop operation (a fiber I/O timeout).
    Cancel(OpId),
}

/// The loop's part of a timer, in the wheel's entry.
struct Slot {
    /// The period in nanoseconds; 0 for a one-shot timer (periods are never zero).
    period: u64,
    /// Empty while the callback runs (taken out of the entry).
    callback: Callback,
}

/// The loop's timers: one wheel whose entries hold the callbacks.
pub(crate) struct Timers {
    wheel: TimerWheel<Slot>,
    /// While the timer phase runs, the `now` it fires up to: timers armed meanwhile get a
    /// deadline after it, so that they fire in the next iteration and the phase stays bounded.
    firing_until: Option<u64>,
    /// The loop's cached time (ns since its epoch): `Timer::after` deadlines of timers started
    /// while the loop runs count from it. `None` (stale) at the start of each iteration and when
    /// the driver's wait returns; read from the clock by the first user after that, so an
    /// iteration that neither fires nor starts timers reads no clock for them.
    now: Option<u64>,
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers {
            wheel: TimerWheel::new(0),
            firing_until: None,
            now: None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.wheel.live_count() == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.wheel.live_count()
    }

    /// Drops every timer and its callback (at loop teardown).
    pub(crate) fn clear(&mut self) {
        self.wheel = TimerWheel::new(0);
    }

    /// A deadline armed during the timer phase is moved past the phase's `now` (later, never
    /// earlier), so that the phase cannot fire it again and stays bounded.
    fn bounded(&self, deadline: u64) -> u64 {
        match self.firing_until {
            Some(until) => deadline.max(until.saturating_add(1)),
            None => deadline,
        }
    }
}

fn not_running() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "no such timer: it has fired (one-shot), was stopped, or belongs to another loop",
    )
}

fn dur_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Loop {
    /// Starts a timer; `callback` runs on the loop thread when it fires and receives the
    /// timer's id (so that it can stop or restart itself).
    ///
    /// # The start time of `Timer::after`
    ///
    /// Called while the loop runs (from a callback or a fiber), `Timer::after(d)` and
    /// `Timer::every(d)` count `d` from the loop's *cached time*, not from a fresh clock read,
    /// as in libuv. The loop reads the monotonic clock once at the start of an iteration (to
    /// fire due timers) and once after its wait for events (when the first timer is started
    /// then), and timers started later in the same stretch count from that reading. Starting a
    /// timer then costs no clock read; the price is that a callback which has worked for a while
    /// before starting a timer gets it that much earlier than `d` after the call (never before
    /// `d` after the reading). Call [`Loop::update_now`] first when that matters.
    /// Called while the loop is not running, `start_timer` reads the clock. `Timer::at`
    /// deadlines are absolute and unaffected.
    ///
    /// Small callbacks (capturing at most three words) are stored in the timer's entry; larger
    /// ones are boxed. Firing a timer never allocates.
    ///
    /// ```
    /// use fdloop::{Loop, Timer};
    /// use std::time::Duration;
    ///
    /// let lp = Loop::new()?;
    /// let mut ticks = 0;
    /// lp.start_timer(Timer::every(Duration::from_millis(5)), move |lp, id| {
    ///     ticks += 1;
    ///     if ticks == 3 {
    ///         lp.stop_timer(id).unwrap();
    ///     }
    /// });
    /// lp.run()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn start_timer<F>(&self, timer: Timer, callback: F) -> TimerId
    where
        F: FnMut(&Loop, TimerId) + 'static,
    {
        let callback = Callback::new(callback);
        let mut timers = self.inner.timers.borrow_mut();
        let deadline = self.first_deadline(&mut timers, &timer);
        let key = timers.wheel.insert(
            deadline,
            Slot {
                period: timer.period.map_or(0, dur_ns),
                callback,
            },
        );
        TimerId {
            serial: self.inner.serial,
            key,
        }
    }

    /// Starts an internal one-shot timer at `deadline_ns` (loop clock) that runs `action`.
    pub(crate) fn start_internal_timer(&self, deadline_ns: u64, action: Action) -> TimerId {
        let callback = match action {
            Action::Wake(fiber) => Callback::new(move |lp: &Loop, _| lp.make_ready(fiber)),
            Action::Cancel(op) => Callback::new(move |lp: &Loop, _| {
                lp.cancel_op(op);
            }),
        };
        let mut timers = self.inner.timers.borrow_mut();
        let deadline = timers.bounded(deadline_ns);
        let key = timers.wheel.insert(
            deadline,
            Slot {
                period: 0,
                callback,
            },
        );
        TimerId {
            serial: self.inner.serial,
            key,
        }
    }

    /// Whether the timer is still pending (not fired, not stopped).
    pub(crate) fn timer_pending(&self, id: TimerId) -> bool {
        id.serial == self.inner.serial && self.inner.timers.borrow().wheel.contains(id.key)
    }

    /// Stops a timer: it will not fire again and its callback is dropped (at once, or when it
    /// returns if the timer is stopping itself from inside its callback). O(1): the id names
    /// the timer's entry.
    ///
    /// # Errors
    ///
    /// `NotFound` when the timer is not running: a one-shot timer that has fired, a timer
    /// already stopped, or an id from another loop.
    pub fn stop_timer(&self, id: TimerId) -> io::Result<()> {
        if id.serial != self.inner.serial {
            return Err(not_running());
        }
        let removed = self.inner.timers.borrow_mut().wheel.remove(id.key);
        // The callback (and what it captured) is dropped outside the borrow.
        match removed {
            Some(slot) => {
                drop(slot);
                Ok(())
            }
            None => Err(not_running()),
        }
    }

    /// Re-arms a running timer with a new schedule, keeping its callback. From inside the
    /// timer's own callback this reschedules it (also a one-shot timer that is firing).
    /// `Timer::after` counts from the loop's cached time, as for [`Loop::start_timer`].
    ///
    /// # Errors
    ///
    /// `NotFound` as for [`Loop::stop_timer`].
    pub fn restart_timer(&self, id: TimerId, timer: Timer) -> io::Result<()> {
        if id.serial != self.inner.serial {
            return Err(not_running());
        }
        let mut timers = self.inner.timers.borrow_mut();
        let deadline = self.first_deadline(&mut timers, &timer);
        let slot = timers.wheel.get_mut(id.key).ok_or_else(not_running)?;
        slot.period = timer.period.map_or(0, dur_ns);
        timers.wheel.reschedule(id.key, deadline);
        Ok(())
    }

    /// Refreshes the loop's cached time from the monotonic clock. `Timer::after` deadlines of
    /// timers started while the loop runs count from the cached time (see
    /// [`Loop::start_timer`]); the loop reads it again after the start of every iteration and
    /// after its wait for events returns, when a timer first needs it. Call this from a callback
    /// that has run for a while before it starts a timer whose delay must count from now.
    pub fn update_now(&self) {
        let now = self.now_ns();
        self.inner.timers.borrow_mut().now = Some(now);
    }

    /// Marks the cached time stale: the next timer started or fired reads the clock. The loop
    /// calls this at the start of each iteration and when its wait for events returns.
    pub(crate) fn expire_now(&self) {
        self.inner.timers.borrow_mut().now = None;
    }

    /// The loop's cached time, read from the clock if it is stale.
    #[inline]
    fn cached_now(&self, timers: &mut Timers) -> u64 {
        match timers.now {
            Some(now) => now,
            None => {
                let now = self.now_ns();
                timers.now = Some(now);
                now
            }
        }
    }

    /// The first deadline of `timer` started now, bounded for the timer phase. `Timer::after`
    /// counts from the cached time inside a run; outside one the cached time may be arbitrarily
    /// old, so the clock is read.
    #[inline]
    fn first_deadline(&self, timers: &mut Timers, timer: &Timer) -> u64 {
        let deadline = match timer.first {
            First::After(d) => {
                let now = if self.inner.running.get() {
                    self.cached_now(timers)
                } else {
                    self.now_ns()
                };
                now.saturating_add(dur_ns(d))
            }
            First::At(t) => self.instant_to_ns(t),
        };
        timers.bounded(deadline)
    }

    /// Time until the earliest timer, if any (zero if one is due).
    pub(crate) fn next_timer_in(&self) -> Option<Duration> {
        let next = self.inner.timers.borrow_mut().wheel.next_deadline()?;
        Some(Duration::from_nanos(next.saturating_sub(self.now_ns())))
    }

    /// Fires the timers that are due at the loop's cached time, in deadline order. Timers that
    /// become due while this runs wait for the next iteration, so the phase is bounded.
    pub(crate) fn fire_timers(&self) {
        let now = {
            let mut timers = self.inner.timers.borrow_mut();
            if timers.wheel.live_count() == 0 {
                return;
            }
            let now = self.cached_now(&mut timers);
            timers.firing_until = Some(now);
            now
        };
        struct EndPhase<'a>(&'a Loop);
        impl Drop for EndPhase<'_> {
            fn drop(&mut self) {
                self.0.inner.timers.borrow_mut().firing_until = None;
            }
        }
        let _end = EndPhase(self);
        loop {
            let (key, deadline, mut callback) = {
                let mut timers = self.inner.timers.borrow_mut();
                let Some((key, deadline)) = timers.wheel.pop_expired(now) else {
                    break;
                };
                let Some(slot) = timers.wheel.get_mut(key) else {
                    continue;
                };
                let callback = slot.callback.take();
                // A scheduled timer holds its callback; only a firing one is empty.
                debug_assert!(!callback.is_empty());
                (key, deadline, callback)
            };
            let id = TimerId {
                serial: self.inner.serial,
                key,
            };
            let ok = self.call_user(|| callback.call(self, id)).is_some();
            let dropped = {
                let mut timers = self.inner.timers.borrow_mut();
                let wheel = &mut timers.wheel;
                let rescheduled = wheel.is_scheduled(key);
                match wheel.get_mut(key) {
                    // Stopped from inside its callback.
                    None => Some(callback),
                    Some(_) if !ok => {
                        // The callback panicked: the timer is stopped.
                        let slot = wheel.remove(key);
                        drop(slot);
                        Some(callback)
                    }
                    Some(slot) => {
                        let period = slot.period;
                        if rescheduled {
                            // Restarted from inside its callback.
                            slot.callback = callback;
                            None
                        } else if period != 0 {
                            slot.callback = callback;
                            let mut next = deadline.saturating_add(period);
                            if next <= now {
                                // Fell behind: skip the missed deadlines, stay on the grid.
                                let behind = now - deadline;
                                next = deadline.saturating_add((behind / period + 1) * period);
                            }
                            wheel.reschedule(key, next);
                            None
                        } else {
                            let slot = wheel.remove(key);
                            drop(slot);
                            Some(callback)
                        }
                    }
                }
            };
            drop(dropped);
            if !ok {
                break;
            }
        }
    }
}

#[cfg(test)]
#[path = "timer/tests.rs"]
mod tests;
