//! Timers: one-shot and periodic, kept in the loop (no fd per timer).
//!
//! Timers live in a hierarchical timing wheel ([`wheel`]) with O(1) start and stop; the earliest
//! deadline bounds the driver's wait. Deadlines are nanoseconds on the monotonic clock
//! (`CLOCK_MONOTONIC`, as [`Instant`]). A timer never fires before its deadline; how late it
//! fires depends on what else the loop is doing (one iteration at most when the loop is idle).

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use fdloop_backends::{OpId, OpSlab};

use crate::Loop;

mod wheel;

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
    /// Fires once, `delay` after it is started.
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
    key: OpId,
}

impl fmt::Debug for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TimerId({}:{})", self.serial, self.key.to_u64())
    }
}

type TimerCallback = Box<dyn FnMut(&Loop, TimerId)>;

/// What a timer does when it fires.
pub(crate) enum Action {
    /// A user callback.
    Call(TimerCallback),
    /// Makes a sleeping fiber ready (no allocation per sleep).
    Wake(OpId),
    /// Cancels a loop operation (a fiber I/O timeout).
    Cancel(OpId),
}

struct Entry {
    /// `None` while the timer is firing (or for a one-shot timer that has fired).
    wheel_key: Option<TimerKey>,
    period: Option<u64>,
    /// Taken out while the callback runs.
    callback: Option<Action>,
}

/// The loop's timers: the wheel of deadlines and the entries it points to.
pub(crate) struct Timers {
    wheel: TimerWheel<OpId>,
    entries: OpSlab<Entry>,
    /// While the timer phase runs, the `now` it fires up to: timers armed meanwhile get a
    /// deadline after it, so that they fire in the next iteration and the phase stays bounded.
    firing_until: Option<u64>,
}

impl Timers {
    pub(crate) fn new() -> Timers {
        Timers {
            wheel: TimerWheel::new(0),
            entries: OpSlab::new(),
            firing_until: None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn clear(&mut self) {
        for id in self.entries.ids() {
            if let Some(e) = self.entries.remove(id) {
                if let Some(k) = e.wheel_key {
                    self.wheel.remove(k);
                }
            }
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
        let deadline = self.first_deadline(&timer);
        let mut timers = self.inner.timers.borrow_mut();
        let key = timers.entries.insert(Entry {
            wheel_key: None,
            period: timer.period.map(dur_ns),
            callback: Some(Action::Call(Box::new(callback))),
        });
        let wk = timers.wheel.insert(deadline, key);
        if let Some(e) = timers.entries.get_mut(key) {
            e.wheel_key = Some(wk);
        }
        TimerId {
            serial: self.inner.serial,
            key,
        }
    }

    /// Starts an internal one-shot timer at `deadline_ns` (loop clock) that runs `action`.
    pub(crate) fn start_internal_timer(&self, deadline_ns: u64, action: Action) -> TimerId {
        let deadline_ns = self.bounded(deadline_ns);
        let mut timers = self.inner.timers.borrow_mut();
        let key = timers.entries.insert(Entry {
            wheel_key: None,
            period: None,
            callback: Some(action),
        });
        let wk = timers.wheel.insert(deadline_ns, key);
        if let Some(e) = timers.entries.get_mut(key) {
            e.wheel_key = Some(wk);
        }
        TimerId {
            serial: self.inner.serial,
            key,
        }
    }

    /// Whether the timer is still pending (not fired, not stopped).
    pub(crate) fn timer_pending(&self, id: TimerId) -> bool {
        self.inner.timers.borrow().entries.get(id.key).is_some()
    }

    /// Stops a timer: it will not fire again and its callback is dropped (at once, or when it
    /// returns if the timer is stopping itself from inside its callback).
    ///
    /// # Errors
    ///
    /// `NotFound` when the timer is not running: a one-shot timer that has fired, a timer
    /// already stopped, or an id from another loop.
    pub fn stop_timer(&self, id: TimerId) -> io::Result<()> {
        if id.serial != self.inner.serial {
            return Err(not_running());
        }
        let removed = {
            let mut timers = self.inner.timers.borrow_mut();
            let entry = timers.entries.remove(id.key).ok_or_else(not_running)?;
            if let Some(k) = entry.wheel_key {
                timers.wheel.remove(k);
            }
            entry
        };
        // The callback (and what it captured) is dropped outside the borrow.
        drop(removed);
        Ok(())
    }

    /// Re-arms a running timer with a new schedule, keeping its callback. From inside the
    /// timer's own callback this reschedules it (also a one-shot timer that is firing).
    ///
    /// # Errors
    ///
    /// `NotFound` as for [`Loop::stop_timer`].
    pub fn restart_timer(&self, id: TimerId, timer: Timer) -> io::Result<()> {
        if id.serial != self.inner.serial {
            return Err(not_running());
        }
        let deadline = self.first_deadline(&timer);
        let mut timers = self.inner.timers.borrow_mut();
        let old = {
            let entry = timers.entries.get_mut(id.key).ok_or_else(not_running)?;
            entry.period = timer.period.map(dur_ns);
            entry.wheel_key.take()
        };
        if let Some(k) = old {
            timers.wheel.remove(k);
        }
        let wk = timers.wheel.insert(deadline, id.key);
        if let Some(e) = timers.entries.get_mut(id.key) {
            e.wheel_key = Some(wk);
        }
        Ok(())
    }

    fn first_deadline(&self, timer: &Timer) -> u64 {
        let deadline = match timer.first {
            First::After(d) => self.now_ns().saturating_add(dur_ns(d)),
            First::At(t) => self.instant_to_ns(t),
        };
        self.bounded(deadline)
    }

    /// A deadline armed during the timer phase is moved past the phase's `now` (later, never
    /// earlier), so that the phase cannot fire it again and stays bounded.
    fn bounded(&self, deadline: u64) -> u64 {
        match self.inner.timers.borrow().firing_until {
            Some(until) => deadline.max(until.saturating_add(1)),
            None => deadline,
        }
    }

    /// Time until the earliest timer, if any (zero if one is due).
    pub(crate) fn next_timer_in(&self) -> Option<Duration> {
        let next = self.inner.timers.borrow_mut().wheel.next_deadline()?;
        Some(Duration::from_nanos(next.saturating_sub(self.now_ns())))
    }

    /// Fires the timers that are due now, in deadline order. Timers that become due while this
    /// runs wait for the next iteration, so the phase is bounded.
    pub(crate) fn fire_timers(&self) {
        let now = self.now_ns();
        self.inner.timers.borrow_mut().firing_until = Some(now);
        struct EndPhase<'a>(&'a Loop);
        impl Drop for EndPhase<'_> {
            fn drop(&mut self) {
                self.0.inner.timers.borrow_mut().firing_until = None;
            }
        }
        let _end = EndPhase(self);
        loop {
            let (key, deadline, callback) = {
                let mut timers = self.inner.timers.borrow_mut();
                let Some((_, deadline, key)) = timers.wheel.poll_expired(now) else {
                    break;
                };
                let Some(entry) = timers.entries.get_mut(key) else {
                    continue;
                };
                entry.wheel_key = None;
                let Some(cb) = entry.callback.take() else {
                    continue;
                };
                (key, deadline, cb)
            };
            let id = TimerId {
                serial: self.inner.serial,
                key,
            };
            let mut callback = callback;
            let ok = match &mut callback {
                Action::Call(cb) => self.call_user(|| cb(self, id)).is_some(),
                Action::Wake(fiber) => {
                    self.make_ready(*fiber);
                    true
                }
                Action::Cancel(op) => {
                    self.cancel_op(*op);
                    true
                }
            };
            let dropped = {
                let mut timers = self.inner.timers.borrow_mut();
                let Timers { wheel, entries, .. } = &mut *timers;
                match entries.get_mut(key) {
                    None => Some(callback),
                    Some(_) if !ok => {
                        // The callback panicked: the timer is stopped.
                        if let Some(e) = entries.remove(key) {
                            if let Some(k) = e.wheel_key {
                                wheel.remove(k);
                            }
                        }
                        Some(callback)
                    }
                    Some(entry) => {
                        if entry.wheel_key.is_some() {
                            // Restarted from inside its callback.
                            entry.callback = Some(callback);
                            None
                        } else if let Some(period) = entry.period {
                            let mut next = deadline.saturating_add(period);
                            if next <= now {
                                // Fell behind: skip the missed deadlines, stay on the grid.
                                let behind = now - deadline;
                                next = deadline.saturating_add((behind / period + 1) * period);
                            }
                            entry.wheel_key = Some(wheel.insert(next, key));
                            entry.callback = Some(callback);
                            None
                        } else {
                            entries.remove(key);
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
