//! Property tests of the timing wheel: random sequences of insert, remove, inspect and advance,
//! checked against a `BTreeMap` reference model and against the wheel's structural invariants
//! after every step. Failures shrink to a minimal sequence.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256).

use super::*;
use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeMap;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
const HOUR: u64 = 3_600 * SEC;

/// How an inserted timer's deadline is chosen, relative to the model's time: several scales, so
/// that ties, the current tick, the past, every level and the overflow list all occur.
#[derive(Clone, Debug)]
enum Deadline {
    /// Up to 10 ms in the past.
    Past(u64),
    /// Within one tick from now.
    ThisTick(u64),
    /// On a grid of quarter ticks near now, so that many timers share a slot.
    Grid(u64),
    /// Up to 10 s ahead (levels 0 and 1).
    Seconds(u64),
    /// Up to 10 h ahead (levels 2 and 3).
    Hours(u64),
    /// Up to 2^60 ns ahead (the top levels and the overflow list).
    Far(u64),
    /// At the very end of time.
    Max(u64),
    /// The first tick of the next 2^36-tick block (just beyond the wheel's span).
    NextBlock,
    /// The deadline of a live timer (a tie), or now when there is none.
    Tie(Index),
}

#[derive(Clone, Debug)]
enum Step {
    Insert(Deadline),
    /// Removes a live timer.
    Remove(Index),
    /// Removes (and looks up) a timer that has fired or was removed: must be a no-op.
    RemoveStale(Index),
    /// Looks up a live timer's deadline and payload.
    Inspect(Index),
    /// Gives a live timer a new deadline (and a new payload, its new insertion number).
    Reschedule(Index, Deadline),
    /// Polls one due timer with `pop_expired` (detaching it), checks it, then reschedules it.
    PopRearm(Deadline),
    /// Moves time forward by `step` and polls, with an older `now` when `older`, firing at most
    /// `budget` timers (all due ones when `None`).
    Advance {
        step: u64,
        older: bool,
        budget: Option<u64>,
    },
}

fn deadline() -> impl Strategy<Value = Deadline> {
    prop_oneof![
        1 => (0..10 * MS).prop_map(Deadline::Past),
        1 => (0..1u64 << TICK_SHIFT).prop_map(Deadline::ThisTick),
        2 => (0..64u64).prop_map(Deadline::Grid),
        2 => (0..10 * SEC).prop_map(Deadline::Seconds),
        1 => (0..10 * HOUR).prop_map(Deadline::Hours),
        1 => (0..1u64 << 60).prop_map(Deadline::Far),
        1 => (0..2u64).prop_map(Deadline::Max),
        1 => Just(Deadline::NextBlock),
        2 => any::<Index>().prop_map(Deadline::Tie),
    ]
}

fn time_step() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        10 => 0..1u64 << 18,
        10 => 0..1u64 << 24,
        6 => 0..1u64 << 32,
        4 => 0..1u64 << 44,
        1 => 0..1u64 << 58,
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        45 => deadline().prop_map(Step::Insert),
        15 => any::<Index>().prop_map(Step::Remove),
        5 => any::<Index>().prop_map(Step::RemoveStale),
        5 => any::<Index>().prop_map(Step::Inspect),
        8 => (any::<Index>(), deadline()).prop_map(|(i, d)| Step::Reschedule(i, d)),
        8 => deadline().prop_map(Step::PopRearm),
        30 => (
            time_step(),
            prop::bool::weighted(0.125),
            prop::option::weighted(0.25, 1..4u64),
        )
            .prop_map(|(step, older, budget)| Step::Advance {
                step,
                older,
                budget
            }),
    ]
}

/// The wheel's starting time: zero, anywhere, just before a top-level block boundary, or just
/// before a level-2 boundary.
fn start() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        0..1u64 << 50,
        (0..SEC).prop_map(|x| (1u64 << (TICK_SHIFT + WHEEL_BITS)) - x),
        (0..MS).prop_map(|x| (1u64 << (TICK_SHIFT + 12)) - x),
    ]
}

fn resolve(d: &Deadline, now: u64, model: &BTreeMap<(u64, u64), TimerKey>) -> u64 {
    match *d {
        Deadline::Past(x) => now.saturating_sub(x),
        Deadline::ThisTick(x) => now.saturating_add(x),
        Deadline::Grid(k) => (now & !0xFFFF).saturating_add(k * (1 << 18)),
        Deadline::Seconds(x) | Deadline::Hours(x) | Deadline::Far(x) => now.saturating_add(x),
        Deadline::Max(x) => u64::MAX - x,
        Deadline::NextBlock => {
            let shift = TICK_SHIFT + WHEEL_BITS;
            ((now >> shift) + 1).checked_shl(shift).unwrap_or(u64::MAX)
        }
        Deadline::Tie(i) if !model.is_empty() => model.keys().nth(i.index(model.len())).unwrap().0,
        Deadline::Tie(_) => now,
    }
}

/// Checks every structural invariant the module documentation states.
fn check_structure(wheel: &TimerWheel<u64>) -> Result<(), TestCaseError> {
    let elapsed = wheel.elapsed;
    prop_assert!(
        elapsed <= wheel.now_ns >> TICK_SHIFT,
        "elapsed ahead of time"
    );
    let mut linked = 0usize;
    let mut min: Option<u64> = None;
    for (l, list) in wheel.lists.iter().enumerate() {
        let mut prev = NIL;
        let mut idx = list.head;
        let mut last_deadline = 0u64;
        while idx != NIL {
            let e = &wheel.entries[idx as usize];
            prop_assert_eq!(e.list as usize, l, "entry {} in the wrong list", idx);
            prop_assert_eq!(e.prev, prev, "broken back link at {}", idx);
            prop_assert!(e.value.is_some(), "linked entry {} has no value", idx);
            let tick = e.deadline >> TICK_SHIFT;
            if l == READY as usize {
                prop_assert!(
                    tick <= elapsed,
                    "ready entry not due: tick {tick} > {elapsed}"
                );
                prop_assert!(e.deadline >= last_deadline, "ready list not sorted");
                last_deadline = e.deadline;
            } else if l == OVERFLOW as usize {
                prop_assert!(
                    tick >> WHEEL_BITS > elapsed >> WHEEL_BITS,
                    "overflow entry in span"
                );
                prop_assert!(
                    tick >= wheel.overflow_low,
                    "overflow_low is not a lower bound"
                );
            } else {
                let (level, slot) = (l / SLOTS, (l % SLOTS) as u64);
                let shift = level as u32 * SLOT_BITS;
                prop_assert!(tick > elapsed, "slotted entry not in the future");
                prop_assert_eq!(
                    tick >> (shift + SLOT_BITS),
                    elapsed >> (shift + SLOT_BITS),
                    "entry outside elapsed's block at level {}",
                    level
                );
                prop_assert_eq!((tick >> shift) & (SLOTS as u64 - 1), slot, "wrong slot");
                prop_assert!(
                    (elapsed >> shift) & (SLOTS as u64 - 1) < slot,
                    "slot not after elapsed's slot"
                );
            }
            min = Some(min.map_or(e.deadline, |m| m.min(e.deadline)));
            linked += 1;
            prev = idx;
            idx = e.next;
        }
        prop_assert_eq!(list.tail, prev, "wrong tail of list {}", l);
        if l < READY as usize {
            let bit = wheel.occupied[l / SLOTS] >> (l % SLOTS) & 1 == 1;
            prop_assert_eq!(
                bit,
                list.head != NIL,
                "occupancy bit of list {} is wrong",
                l
            );
        }
    }
    prop_assert_eq!(linked, wheel.len, "linked entries != len");
    let mut free = 0usize;
    let mut idx = wheel.free_head;
    while idx != NIL {
        let e = &wheel.entries[idx as usize];
        prop_assert_eq!(e.list, FREE);
        prop_assert!(e.value.is_none());
        free += 1;
        prop_assert!(free <= wheel.entries.len(), "free list has a cycle");
        idx = e.next;
    }
    let detached = wheel.entries.iter().filter(|e| e.list == DETACHED).count();
    prop_assert_eq!(
        detached,
        wheel.live - wheel.len,
        "wrong count of detached entries"
    );
    prop_assert_eq!(free + wheel.live, wheel.entries.len(), "entries leaked");
    if let Some(i) = wheel.min_cache.get() {
        let e = &wheel.entries[i as usize];
        prop_assert!(e.list != FREE, "min cache names a free entry");
        prop_assert!(e.list != DETACHED, "min cache names a detached entry");
        prop_assert_eq!(Some(e.deadline), min, "min cache is not the minimum");
    }
    Ok(())
}

fn run(start: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut now = start;
    let mut wheel = TimerWheel::new(now);
    // The model's copy of the wheel's time: the largest time polled.
    let mut wheel_time = now;
    let mut model: BTreeMap<(u64, u64), TimerKey> = BTreeMap::new();
    let mut live: Vec<(TimerKey, u64, u64)> = Vec::new();
    let mut dead: Vec<TimerKey> = Vec::new();
    let mut seq = 0u64;
    for step in steps {
        match step {
            Step::Insert(d) => {
                let deadline = resolve(d, now, &model);
                let key = wheel.insert(deadline, seq);
                prop_assert!(
                    !model.values().any(|&k| k == key),
                    "live key handed out twice"
                );
                model.insert((deadline, seq), key);
                live.push((key, deadline, seq));
                seq += 1;
            }
            Step::Remove(i) if !live.is_empty() => {
                let (key, deadline, s) = live.swap_remove(i.index(live.len()));
                prop_assert_eq!(wheel.remove(key), Some(s));
                prop_assert_eq!(model.remove(&(deadline, s)), Some(key));
                dead.push(key);
            }
            Step::RemoveStale(i) if !dead.is_empty() => {
                let key = dead[i.index(dead.len())];
                prop_assert_eq!(wheel.deadline(key), None);
                prop_assert_eq!(wheel.get_mut(key), None);
                prop_assert_eq!(wheel.remove(key), None);
                prop_assert!(!wheel.reschedule(key, now));
                prop_assert!(!wheel.contains(key));
            }
            Step::Reschedule(i, d) if !live.is_empty() => {
                let j = i.index(live.len());
                let (key, old, s) = live[j];
                let deadline = resolve(d, now, &model);
                prop_assert!(wheel.reschedule(key, deadline));
                prop_assert!(wheel.is_scheduled(key));
                *wheel.get_mut(key).unwrap() = seq;
                prop_assert_eq!(model.remove(&(old, s)), Some(key));
                model.insert((deadline, seq), key);
                live[j] = (key, deadline, seq);
                seq += 1;
            }
            Step::PopRearm(d) => {
                wheel_time = wheel_time.max(now);
                let expected = match model.first_key_value() {
                    Some((&(deadline, s), &key)) if deadline <= wheel_time => {
                        Some((key, deadline, s))
                    }
                    _ => None,
                };
                prop_assert_eq!(
                    wheel.pop_expired(now),
                    expected.map(|(key, deadline, _)| (key, deadline))
                );
                if let Some((key, deadline, s)) = expected {
                    model.remove(&(deadline, s));
                    prop_assert!(wheel.contains(key));
                    prop_assert!(!wheel.is_scheduled(key));
                    prop_assert_eq!(wheel.get_mut(key).copied(), Some(s));
                    prop_assert_eq!(wheel.len(), model.len());
                    prop_assert_eq!(wheel.live_count(), model.len() + 1);
                    check_structure(&wheel)?;
                    let deadline = resolve(d, now, &model);
                    prop_assert!(wheel.reschedule(key, deadline));
                    *wheel.get_mut(key).unwrap() = seq;
                    model.insert((deadline, seq), key);
                    let pos = live.iter().position(|e| e.0 == key).unwrap();
                    live[pos] = (key, deadline, seq);
                    seq += 1;
                }
            }
            Step::Inspect(i) if !live.is_empty() => {
                let (key, deadline, s) = live[i.index(live.len())];
                prop_assert_eq!(wheel.deadline(key), Some(deadline));
                prop_assert_eq!(wheel.get_mut(key).copied(), Some(s));
            }
            Step::Advance {
                step,
                older,
                budget,
            } => {
                now = now.saturating_add(*step);
                let polled = if *older {
                    now.saturating_sub(*step)
                } else {
                    now
                };
                wheel_time = wheel_time.max(polled);
                let budget = budget.unwrap_or(u64::MAX);
                let mut fired = 0;
                while fired < budget {
                    let expected = match model.first_key_value() {
                        Some((&(deadline, s), &key)) if deadline <= wheel_time => {
                            model.remove(&(deadline, s));
                            let pos = live.iter().position(|e| e.0 == key).unwrap();
                            live.swap_remove(pos);
                            dead.push(key);
                            Some((key, deadline, s))
                        }
                        _ => None,
                    };
                    prop_assert_eq!(wheel.poll_expired(polled), expected);
                    if expected.is_none() {
                        break;
                    }
                    fired += 1;
                }
            }
            _ => {}
        }
        prop_assert_eq!(wheel.len(), model.len());
        prop_assert_eq!(wheel.is_empty(), model.is_empty());
        prop_assert_eq!(wheel.live_count(), model.len());
        prop_assert_eq!(
            wheel.next_deadline(),
            model.keys().next().map(|&(deadline, _)| deadline)
        );
        check_structure(&wheel)?;
    }
    // Draining everything at the end of time returns the rest in (deadline, insertion) order.
    for (&(deadline, s), &key) in &model {
        prop_assert_eq!(wheel.poll_expired(u64::MAX), Some((key, deadline, s)));
    }
    prop_assert_eq!(wheel.poll_expired(u64::MAX), None);
    prop_assert!(wheel.is_empty());
    check_structure(&wheel)?;
    Ok(())
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Failures are reported with their minimal sequence; nothing is written to the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn wheel_matches_model(start in start(), steps in prop::collection::vec(step(), 0..300)) {
        run(start, &steps)?;
    }
}
