//! Unit tests and a randomised model test for the timing wheel.

use super::*;
use std::collections::BTreeMap;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
const HOUR: u64 = 3_600 * SEC;
const YEAR: u64 = 365 * 24 * HOUR;

/// A small xorshift64* generator, so the tests need no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Polls every timer due at `now` and returns `(deadline, value)` pairs.
fn drain<T>(wheel: &mut TimerWheel<T>, now: u64) -> Vec<(u64, T)> {
    let mut out = Vec::new();
    while let Some((_, deadline, value)) = wheel.poll_expired(now) {
        assert!(deadline <= now.max(wheel.now_ns));
        out.push((deadline, value));
    }
    out
}

#[test]
fn one_slot_expires_in_deadline_then_insertion_order() {
    let start = 10 * SEC;
    let mut wheel = TimerWheel::new(start);
    let mut rng = Rng::new(7);
    let base = (start >> TICK_SHIFT) + 5;
    let mut expected = Vec::new();
    for i in 0..1000u32 {
        // Few distinct deadlines inside one tick, so there are many ties.
        let deadline = (base << TICK_SHIFT) + rng.below(16) * 1000;
        wheel.insert(deadline, i);
        expected.push((deadline, i));
    }
    expected.sort();
    assert_eq!(wheel.next_deadline(), Some(expected[0].0));
    let got = drain(&mut wheel, (base + 1) << TICK_SHIFT);
    assert_eq!(got, expected);
    assert!(wheel.is_empty());
    assert_eq!(wheel.next_deadline(), None);
}

#[test]
fn never_early() {
    let mut wheel = TimerWheel::new(0);
    let deadline = 3 * SEC + 123_457;
    let key = wheel.insert(deadline, "t");
    assert_eq!(wheel.poll_expired(deadline - 1), None);
    assert_eq!(wheel.next_deadline(), Some(deadline));
    assert_eq!(wheel.deadline(key), Some(deadline));
    assert_eq!(wheel.poll_expired(deadline), Some((key, deadline, "t")));
    assert_eq!(wheel.poll_expired(deadline), None);
    assert_eq!(wheel.deadline(key), None);
}

#[test]
fn remove_before_expiry() {
    let mut wheel = TimerWheel::new(0);
    let a = wheel.insert(5 * MS, 'a');
    let b = wheel.insert(7 * SEC, 'b');
    let c = wheel.insert(9 * MS, 'c');
    assert_eq!(wheel.len(), 3);
    assert_eq!(wheel.remove(a), Some('a'));
    assert_eq!(wheel.remove(a), None);
    assert_eq!(wheel.next_deadline(), Some(9 * MS));
    *wheel.get_mut(b).unwrap() = 'B';
    assert_eq!(wheel.remove(b), Some('B'));
    assert_eq!(drain(&mut wheel, HOUR), vec![(9 * MS, 'c')]);
    assert_eq!(wheel.remove(c), None);
    assert!(wheel.is_empty());
}

#[test]
fn stale_key_after_reuse() {
    let mut wheel = TimerWheel::new(0);
    let old = wheel.insert(SEC, 1);
    assert_eq!(wheel.remove(old), Some(1));
    let new = wheel.insert(2 * SEC, 2);
    assert_eq!(new.index, old.index, "the entry is reused");
    assert_ne!(new, old);
    assert_eq!(wheel.remove(old), None);
    assert_eq!(wheel.get_mut(old), None);
    assert_eq!(wheel.deadline(old), None);
    assert_eq!(TimerKey::from_u64(new.to_u64()), new);
    assert_eq!(wheel.remove(TimerKey::from_u64(new.to_u64())), Some(2));
    // A key that was never handed out.
    assert_eq!(wheel.remove(TimerKey::from_u64(99)), None);
}

#[test]
fn memory_is_reused() {
    let mut wheel = TimerWheel::new(0);
    for round in 0..10 {
        let keys: Vec<_> = (0..100).map(|i| wheel.insert(i * SEC + round, i)).collect();
        for key in keys {
            assert!(wheel.remove(key).is_some());
        }
        assert_eq!(wheel.entries.len(), 100);
        assert!(wheel.lists.iter().all(|l| l.head == NIL && l.tail == NIL));
        assert_eq!(wheel.occupied, [0; LEVELS]);
    }
}

#[test]
fn huge_jumps() {
    let mut wheel = TimerWheel::new(0);
    let deadlines = [
        10 * HOUR,
        3 * MS,
        70 * MS,
        5 * SEC,
        5 * 60 * SEC,
        20 * 24 * HOUR,
        1,
    ];
    for (i, &d) in deadlines.iter().enumerate() {
        wheel.insert(d, i);
    }
    assert_eq!(wheel.next_deadline(), Some(1));
    let mut expected: Vec<_> = deadlines
        .iter()
        .enumerate()
        .filter(|&(_, &d)| d <= 11 * HOUR)
        .map(|(i, &d)| (d, i))
        .collect();
    expected.sort();
    assert_eq!(drain(&mut wheel, 11 * HOUR), expected);
    assert_eq!(wheel.next_deadline(), Some(20 * 24 * HOUR));
    assert_eq!(wheel.poll_expired(20 * 24 * HOUR - 1), None);
    assert_eq!(drain(&mut wheel, 30 * 24 * HOUR), vec![(20 * 24 * HOUR, 5)]);
    // A jump with nothing to fire is bitmap work only; time keeps advancing.
    assert_eq!(wheel.poll_expired(1000 * HOUR), None);
    let key = wheel.insert(1000 * HOUR + 5, 9);
    assert_eq!(wheel.poll_expired(1000 * HOUR + 4), None);
    assert_eq!(
        wheel.poll_expired(1000 * HOUR + 5),
        Some((key, 1000 * HOUR + 5, 9))
    );
}

#[test]
fn far_future_deadlines() {
    let mut wheel = TimerWheel::new(SEC);
    let far = [u64::MAX, 3 * YEAR, 100 * YEAR, 3 * YEAR + 1, 2 * YEAR];
    for (i, &d) in far.iter().enumerate() {
        wheel.insert(d, i);
    }
    assert_eq!(wheel.next_deadline(), Some(2 * YEAR));
    assert_eq!(
        drain(&mut wheel, 3 * YEAR),
        vec![(2 * YEAR, 4), (3 * YEAR, 1)]
    );
    assert_eq!(wheel.next_deadline(), Some(3 * YEAR + 1));
    assert_eq!(
        wheel.poll_expired(100 * YEAR - 1),
        Some((
            TimerKey {
                index: 3,
                generation: 0
            },
            3 * YEAR + 1,
            3
        ))
    );
    assert_eq!(wheel.poll_expired(100 * YEAR - 1), None);
    assert_eq!(wheel.next_deadline(), Some(100 * YEAR));
    assert_eq!(
        drain(&mut wheel, u64::MAX),
        vec![(100 * YEAR, 2), (u64::MAX, 0)]
    );
    assert!(wheel.is_empty());
}

#[test]
fn deadline_in_the_past() {
    let mut wheel = TimerWheel::new(50 * SEC);
    wheel.insert(10 * SEC, 'b');
    wheel.insert(5, 'a');
    wheel.insert(50 * SEC, 'c');
    assert_eq!(wheel.next_deadline(), Some(5));
    // A `now` behind the wheel's time counts as the wheel's time.
    assert_eq!(
        drain(&mut wheel, 0),
        vec![(5, 'a'), (10 * SEC, 'b'), (50 * SEC, 'c')]
    );
    wheel.insert(50 * SEC + 1, 'd');
    assert_eq!(wheel.poll_expired(SEC), None);
    assert_eq!(drain(&mut wheel, 50 * SEC + 1), vec![(50 * SEC + 1, 'd')]);
}

#[test]
fn next_deadline_is_exact() {
    let mut wheel = TimerWheel::new(0);
    assert_eq!(wheel.next_deadline(), None);
    let a = wheel.insert(40 * SEC + 17, ());
    assert_eq!(wheel.next_deadline(), Some(40 * SEC + 17));
    let b = wheel.insert(40 * SEC + 3, ());
    assert_eq!(wheel.next_deadline(), Some(40 * SEC + 3));
    let c = wheel.insert(2 * SEC + 999, ());
    assert_eq!(wheel.next_deadline(), Some(2 * SEC + 999));
    wheel.remove(c);
    assert_eq!(wheel.next_deadline(), Some(40 * SEC + 3));
    wheel.remove(b);
    assert_eq!(wheel.next_deadline(), Some(40 * SEC + 17));
    let d = wheel.insert(40 * SEC + 17, ());
    assert_eq!(wheel.poll_expired(40 * SEC + 16), None);
    assert_eq!(wheel.next_deadline(), Some(40 * SEC + 17));
    assert_eq!(wheel.poll_expired(50 * SEC).map(|e| e.0), Some(a));
    assert_eq!(wheel.next_deadline(), Some(40 * SEC + 17));
    assert_eq!(wheel.poll_expired(50 * SEC).map(|e| e.0), Some(d));
    assert_eq!(wheel.next_deadline(), None);
}

/// A deadline for the model test, relative to `now`, drawn from several scales so that ties, the
/// current tick, the past, every level and the overflow list all occur.
fn pick_deadline(rng: &mut Rng, now: u64, live: &BTreeMap<(u64, u64), TimerKey>) -> u64 {
    match rng.below(12) {
        0 => now.saturating_sub(rng.below(10 * MS)),
        1 => now + rng.below(1 << TICK_SHIFT),
        2 | 3 => (now & !0xFFFF) + rng.below(64) * (1 << 18),
        4 | 5 => now + rng.below(10 * SEC),
        6 => now + rng.below(10 * HOUR),
        7 => now.saturating_add(rng.below(1 << 60)),
        8 => u64::MAX - rng.below(2),
        9 => ((now >> (TICK_SHIFT + WHEEL_BITS)) + 1) << (TICK_SHIFT + WHEEL_BITS),
        _ => match live.keys().nth(rng.below(live.len() as u64 + 1) as usize) {
            Some(&(deadline, _)) => deadline,
            None => now,
        },
    }
}

/// Runs random operations against the wheel and a `BTreeMap` reference model.
fn run_model(seed: u64, steps: usize) {
    let mut rng = Rng::new(seed);
    let mut now = match seed % 4 {
        0 => 0,
        1 => rng.below(1 << 50),
        // Just before a top-level block boundary.
        2 => (1 << (TICK_SHIFT + WHEEL_BITS)) - rng.below(SEC),
        _ => (1 << (TICK_SHIFT + 12)) - rng.below(MS),
    };
    let mut wheel = TimerWheel::new(now);
    // The model's copy of the wheel's time: the largest time polled.
    let mut wheel_time = now;
    let mut model: BTreeMap<(u64, u64), TimerKey> = BTreeMap::new();
    let mut live: Vec<(TimerKey, u64, u64)> = Vec::new();
    let mut dead: Vec<TimerKey> = Vec::new();
    let mut seq = 0u64;
    for _ in 0..steps {
        match rng.below(100) {
            0..=44 => {
                let deadline = pick_deadline(&mut rng, now, &model);
                let key = wheel.insert(deadline, seq);
                model.insert((deadline, seq), key);
                live.push((key, deadline, seq));
                seq += 1;
            }
            45..=59 if !live.is_empty() => {
                let (key, deadline, s) = live.swap_remove(rng.below(live.len() as u64) as usize);
                assert_eq!(wheel.remove(key), Some(s));
                assert_eq!(model.remove(&(deadline, s)), Some(key));
                dead.push(key);
            }
            60..=64 if !dead.is_empty() => {
                let key = dead[rng.below(dead.len() as u64) as usize];
                assert_eq!(wheel.remove(key), None);
                assert_eq!(wheel.deadline(key), None);
            }
            65..=69 if !live.is_empty() => {
                let (key, deadline, s) = live[rng.below(live.len() as u64) as usize];
                assert_eq!(wheel.deadline(key), Some(deadline));
                assert_eq!(wheel.get_mut(key).copied(), Some(s));
            }
            70..=94 => {
                let step = match rng.below(32) {
                    0 => 0,
                    1..=10 => rng.below(1 << 18),
                    11..=20 => rng.below(1 << 24),
                    21..=26 => rng.below(1 << 32),
                    27..=30 => rng.below(1 << 44),
                    _ => rng.below(1 << 58),
                };
                now = now.saturating_add(step);
                // Sometimes poll with an older time; the wheel keeps its own.
                let polled = if rng.below(8) == 0 {
                    now.saturating_sub(step)
                } else {
                    now
                };
                wheel_time = wheel_time.max(polled);
                // Sometimes stop early, as a loop with a budget would.
                let budget = if rng.below(4) == 0 {
                    1 + rng.below(3)
                } else {
                    u64::MAX
                };
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
                    assert_eq!(wheel.poll_expired(polled), expected, "seed {seed}");
                    if expected.is_none() {
                        break;
                    }
                    fired += 1;
                }
            }
            _ => {}
        }
        assert_eq!(wheel.len(), model.len());
        assert_eq!(
            wheel.next_deadline(),
            model.keys().next().map(|&(deadline, _)| deadline),
            "seed {seed}"
        );
    }
}

#[test]
fn model_random_sequences() {
    for seed in 0..200 {
        run_model(seed, 2_000);
    }
}
