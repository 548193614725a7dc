//! Property test of [`OpSlab`]: random sequences of insert, remove, lookups with live, stale and
//! forged ids, checked against a `HashMap` reference model (invariant I4: a stale or foreign id
//! never reaches a slot's current occupant). Failures shrink to a minimal sequence.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256).

use std::collections::{HashMap, HashSet};

use fdloop_backends::{OpId, OpSlab};
use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Clone, Debug)]
enum Step {
    Insert,
    /// Removes a live entry.
    Remove(Index),
    /// Uses an id whose entry was removed: every lookup misses.
    Stale(Index),
    /// Reads and rewrites a live entry.
    Update(Index),
    /// Uses an arbitrary id: it hits only if it equals a live id.
    Forged(u64),
    /// A forged id with a live id's index and another generation.
    WrongGeneration(Index, u32),
    /// Compares `ids`, `iter`, `len` and `is_empty` with the model.
    List,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => Just(Step::Insert),
        5 => any::<Index>().prop_map(Step::Remove),
        2 => any::<Index>().prop_map(Step::Stale),
        2 => any::<Index>().prop_map(Step::Update),
        1 => prop_oneof![any::<u64>(), 0..64u64, (0..4u64, 0..64u64).prop_map(|(g, i)| g << 32 | i)]
            .prop_map(Step::Forged),
        1 => (any::<Index>(), any::<u32>()).prop_map(|(i, g)| Step::WrongGeneration(i, g)),
        1 => Just(Step::List),
    ]
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut slab: OpSlab<u64> = OpSlab::new();
    let mut model: HashMap<OpId, u64> = HashMap::new();
    // Live ids in insertion order (for `Index` picks), and every id ever removed.
    let mut live: Vec<OpId> = Vec::new();
    let mut dead: Vec<OpId> = Vec::new();
    let mut handed_out: HashSet<OpId> = HashSet::new();
    let mut next = 0u64;
    for step in steps {
        match *step {
            Step::Insert => {
                let id = slab.insert(next);
                prop_assert!(handed_out.insert(id), "id {:?} handed out twice", id);
                prop_assert_eq!(OpId::from_u64(id.to_u64()), id);
                model.insert(id, next);
                live.push(id);
                next += 1;
            }
            Step::Remove(i) if !live.is_empty() => {
                let id = live.remove(i.index(live.len()));
                prop_assert_eq!(slab.remove(id), model.remove(&id));
                prop_assert_eq!(slab.remove(id), None, "removed twice");
                dead.push(id);
            }
            Step::Stale(i) if !dead.is_empty() => {
                let id = dead[i.index(dead.len())];
                prop_assert_eq!(slab.get(id), None);
                prop_assert_eq!(slab.get_mut(id), None);
                prop_assert_eq!(slab.remove(id), None);
            }
            Step::Update(i) if !live.is_empty() => {
                let id = live[i.index(live.len())];
                let want = model.get_mut(&id).unwrap();
                prop_assert_eq!(slab.get(id), Some(&*want));
                let v = slab.get_mut(id).unwrap();
                *v += 1_000_000;
                *want += 1_000_000;
                prop_assert_eq!(slab.get(id), Some(&*want));
            }
            Step::Forged(raw) => {
                let id = OpId::from_u64(raw);
                let want = model.get(&id).copied();
                prop_assert_eq!(slab.get(id).copied(), want);
                if want.is_none() {
                    prop_assert_eq!(slab.get_mut(id), None);
                    prop_assert_eq!(slab.remove(id), None);
                }
            }
            Step::WrongGeneration(i, generation) if !live.is_empty() => {
                let id = live[i.index(live.len())];
                let forged = OpId::from_u64(u64::from(generation) << 32 | id.index() as u64);
                prop_assert_eq!(forged.index(), id.index());
                if forged != id {
                    prop_assert_eq!(slab.get(forged), None);
                    prop_assert_eq!(slab.remove(forged), None);
                    prop_assert_eq!(slab.get(id), model.get(&id), "a miss disturbed the entry");
                }
            }
            Step::List => {
                let ids: HashSet<OpId> = slab.ids().into_iter().collect();
                let want: HashSet<OpId> = model.keys().copied().collect();
                prop_assert_eq!(&ids, &want);
                let items: HashMap<OpId, u64> = slab.iter().map(|(id, v)| (id, *v)).collect();
                prop_assert_eq!(&items, &model);
            }
            _ => {}
        }
        prop_assert_eq!(slab.len(), model.len());
        prop_assert_eq!(slab.is_empty(), model.is_empty());
    }
    // Freed slots are reused before the slab grows: refilling it with as many entries as it has
    // slots uses exactly those slots, each under a generation never handed out before.
    let peak = handed_out
        .iter()
        .map(|id| id.index() + 1)
        .max()
        .unwrap_or(0);
    for id in live.drain(..) {
        prop_assert_eq!(slab.remove(id), model.remove(&id));
    }
    prop_assert!(slab.is_empty());
    let refill: Vec<OpId> = (0..peak).map(|i| slab.insert(i as u64)).collect();
    let mut indices: Vec<usize> = refill.iter().map(|id| id.index()).collect();
    indices.sort_unstable();
    prop_assert_eq!(indices, (0..peak).collect::<Vec<_>>());
    for id in refill {
        prop_assert!(
            !handed_out.contains(&id),
            "a reused slot kept its generation"
        );
    }
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
    fn slab_matches_model(steps in prop::collection::vec(step(), 0..200)) {
        run(&steps)?;
    }
}
