//! A slab of in-flight operations keyed by index + generation ([`OpId`]).
//!
//! Drivers keep their per-operation state here. A slot is reused only after its operation's final
//! completion (invariant I4): the generation changes on every reuse, so a stale [`OpId`] never
//! reaches the new occupant.

/// The id of an operation in flight in a driver: a slab index and a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId {
    index: u32,
    generation: u32,
}

impl OpId {
    /// Packs the id into a `u64` (generation in the high half).
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// Unpacks an id made by [`OpId::to_u64`].
    pub fn from_u64(v: u64) -> OpId {
        OpId {
            index: v as u32,
            generation: (v >> 32) as u32,
        }
    }

    /// The slab index.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// A generation-checked slab.
pub struct OpSlab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for OpSlab<T> {
    fn default() -> Self {
        OpSlab::new()
    }
}

impl<T> OpSlab<T> {
    /// An empty slab.
    pub fn new() -> OpSlab<T> {
        OpSlab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Number of occupied slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is occupied.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value`, returning its id.
    pub fn insert(&mut self, value: T) -> OpId {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            debug_assert!(slot.value.is_none());
            slot.value = Some(value);
            OpId {
                index,
                generation: slot.generation,
            }
        } else {
            let index = u32::try_from(self.slots.len()).expect("more than 2^32 operations");
            self.slots.push(Slot {
                generation: 0,
                value: Some(value),
            });
            OpId {
                index,
                generation: 0,
            }
        }
    }

    /// The value for `id`, if `id` is current.
    pub fn get(&self, id: OpId) -> Option<&T> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation == id.generation {
            slot.value.as_ref()
        } else {
            None
        }
    }

    /// The value for `id`, if `id` is current.
    pub fn get_mut(&mut self, id: OpId) -> Option<&mut T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation == id.generation {
            slot.value.as_mut()
        } else {
            None
        }
    }

    /// Removes and returns the value for `id`, if `id` is current. The slot's generation moves on.
    pub fn remove(&mut self, id: OpId) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.len -= 1;
        Some(value)
    }

    /// Ids of every occupied slot (allocates; for shutdown and cancel-by-fd).
    pub fn ids(&self) -> Vec<OpId> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.value.is_some())
            .map(|(i, s)| OpId {
                index: i as u32,
                generation: s.generation,
            })
            .collect()
    }

    /// Iterates over occupied slots.
    pub fn iter(&self) -> impl Iterator<Item = (OpId, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.value.as_ref().map(|v| {
                (
                    OpId {
                        index: i as u32,
                        generation: s.generation,
                    },
                    v,
                )
            })
        })
    }

    /// Iterates over occupied slots, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (OpId, &mut T)> {
        self.slots.iter_mut().enumerate().filter_map(|(i, s)| {
            let generation = s.generation;
            s.value.as_mut().map(|v| {
                (
                    OpId {
                        index: i as u32,
                        generation,
                    },
                    v,
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_miss_after_reuse() {
        let mut s = OpSlab::new();
        let a = s.insert(1);
        assert_eq!(s.remove(a), Some(1));
        let b = s.insert(2);
        assert_eq!(a.index(), b.index());
        assert_ne!(a, b);
        assert_eq!(s.get(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&2));
        assert_eq!(OpId::from_u64(b.to_u64()), b);
        assert_eq!(s.len(), 1);
    }
}
