//! A timer's callback, stored inline in the timer's slab entry when it is small.
//!
//! Most timer callbacks capture a few words (an `Rc`, an index, a counter). Boxing each of them
//! would cost an allocation and a free per started timer, and a pointer chase per fire. A
//! [`Callback`] instead keeps a closure of up to [`INLINE_WORDS`] machine words (with at most a
//! word's alignment) in place, next to a pointer to a static table of two functions (call,
//! drop) made for the closure's type. A larger closure is boxed, and the one-word box is stored
//! in place the same way.

use std::marker::PhantomData;
use std::mem::{self, MaybeUninit};

use crate::timer::TimerId;
use crate::Loop;

/// Size of the inline storage, in machine words.
pub(crate) const INLINE_WORDS: usize = 3;

type Storage = MaybeUninit<[usize; INLINE_WORDS]>;

/// The functions that know the stored closure's type.
struct VTable {
    /// Calls the closure stored at the pointer.
    call: unsafe fn(*mut u8, &Loop, TimerId),
    /// Drops the closure stored at the pointer in place; `None` when dropping it does nothing
    /// (a closure that captures only plain data), which spares the call.
    drop: Option<unsafe fn(*mut u8)>,
}

/// The table of the empty callback (a `static`, so that its address is unique).
static EMPTY: VTable = VTable {
    call: call_nothing,
    drop: None,
};

/// # Safety
///
/// (FFI) None needed: it touches nothing (an `unsafe fn` only to fit in [`VTable::call`]).
unsafe fn call_nothing(_: *mut u8, _: &Loop, _: TimerId) {}

/// Makes the [`VTable`] of the closure type `F`.
struct VTableOf<F>(PhantomData<F>);

impl<F: FnMut(&Loop, TimerId) + 'static> VTableOf<F> {
    const VTABLE: VTable = VTable {
        call: call::<F>,
        drop: if mem::needs_drop::<F>() {
            Some(drop_in_place::<F>)
        } else {
            None
        },
    };
}

/// # Safety
///
/// (FFI) `data` points to a live, properly aligned `F` that nothing else accesses during the call.
unsafe fn call<F: FnMut(&Loop, TimerId)>(data: *mut u8, lp: &Loop, id: TimerId) {
    // SAFETY: (FFI) the caller guarantees that `data` points to a live, aligned `F` with no other
    // access (`Callback::call`: `data` is the storage of the `F` that `Callback::inline` wrote,
    // borrowed mutably through `&mut self`).
    let f = unsafe { &mut *data.cast::<F>() };
    f(lp, id);
}

/// # Safety
///
/// (FFI) `data` points to a live, properly aligned `F` that is never used again.
unsafe fn drop_in_place<F>(data: *mut u8) {
    // SAFETY: (FFI) the caller guarantees that `data` points to a live, aligned `F` that is never
    // used again (`Callback::drop` runs once, after every call).
    unsafe { std::ptr::drop_in_place(data.cast::<F>()) }
}

/// A type-erased `FnMut(&Loop, TimerId)`, inline when small (see the module documentation).
pub(crate) struct Callback {
    vtable: &'static VTable,
    data: Storage,
    /// The closure may be `!Send` / `!Sync`, so the callback is too.
    _not_send: PhantomData<*mut ()>,
}

impl Callback {
    /// Stores `f` inline if it fits, else boxed.
    pub(crate) fn new<F: FnMut(&Loop, TimerId) + 'static>(f: F) -> Callback {
        if fits::<F>() {
            // SAFETY: (FFI) `fits::<F>()` was just checked.
            unsafe { Callback::inline(f) }
        } else {
            let boxed: Box<F> = Box::new(f);
            debug_assert!(fits::<Box<F>>());
            // SAFETY: (FFI) a `Box<F>` of a sized `F` is one pointer: it always fits.
            unsafe { Callback::inline(boxed) }
        }
    }

    /// Stores `f` in the inline storage.
    ///
    /// # Safety
    ///
    /// (FFI) `fits::<F>()`: `F` is no larger than the storage and no more aligned than a word.
    unsafe fn inline<F: FnMut(&Loop, TimerId) + 'static>(f: F) -> Callback {
        let mut data = Storage::uninit();
        // SAFETY: (FFI) the storage is large and aligned enough for `F` (this function's contract),
        // and it is uninitialised, so nothing is overwritten without being dropped.
        unsafe { data.as_mut_ptr().cast::<F>().write(f) };
        Callback {
            vtable: &VTableOf::<F>::VTABLE,
            data,
            _not_send: PhantomData,
        }
    }

    /// The empty callback: holds nothing, calling it does nothing. It stands in the timer's
    /// entry while the real one is taken out to run.
    pub(crate) fn empty() -> Callback {
        Callback {
            vtable: &EMPTY,
            data: Storage::uninit(),
            _not_send: PhantomData,
        }
    }

    /// Whether this is the empty callback.
    pub(crate) fn is_empty(&self) -> bool {
        std::ptr::eq(self.vtable, &EMPTY)
    }

    /// Takes the callback out, leaving the empty one.
    pub(crate) fn take(&mut self) -> Callback {
        mem::replace(self, Callback::empty())
    }

    /// Calls the closure.
    pub(crate) fn call(&mut self, lp: &Loop, id: TimerId) {
        // SAFETY: (FFI) `data` holds the closure `inline` wrote, of the type `vtable` was made for;
        // it lives until `drop`, and `&mut self` makes this the only access.
        unsafe { (self.vtable.call)(self.data.as_mut_ptr().cast(), lp, id) }
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        if let Some(drop) = self.vtable.drop {
            // SAFETY: (FFI) `data` holds the closure of `vtable`'s type; this is the last use of
            // it.
            unsafe { drop(self.data.as_mut_ptr().cast()) }
        }
    }
}

/// Whether a closure of type `F` fits in the inline storage.
const fn fits<F>() -> bool {
    mem::size_of::<F>() <= mem::size_of::<Storage>()
        && mem::align_of::<F>() <= mem::align_of::<Storage>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// Counts drops of the closure that owns it.
    struct DropCount(Rc<Cell<u32>>);
    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn small_and_large_closures_are_called_and_dropped_once() {
        let lp = Loop::new().unwrap();
        let id = lp.start_timer(
            crate::Timer::after(std::time::Duration::from_secs(60)),
            |_, _| {},
        );
        let calls = Rc::new(Cell::new(0u32));
        let drops = Rc::new(Cell::new(0u32));

        let (c, d) = (calls.clone(), DropCount(drops.clone()));
        let small = move |_: &Loop, _: TimerId| {
            let _ = &d;
            c.set(c.get() + 1);
        };
        assert!(fits_val(&small));
        let mut cb = Callback::new(small);
        cb.call(&lp, id);
        cb.call(&lp, id);
        drop(cb);
        assert_eq!((calls.get(), drops.get()), (2, 1));

        let (c, d) = (calls.clone(), DropCount(drops.clone()));
        let big = [7u64; 8];
        let large = move |_: &Loop, _: TimerId| {
            let _ = &d;
            c.set(c.get() + big.iter().sum::<u64>() as u32);
        };
        assert!(!fits_val(&large));
        let mut cb = Callback::new(large);
        let mut taken = cb.take();
        assert!(cb.is_empty() && !taken.is_empty());
        cb.call(&lp, id);
        drop(cb);
        taken.call(&lp, id);
        drop(taken);
        assert_eq!((calls.get(), drops.get()), (58, 2));
        lp.stop_timer(id).unwrap();
    }

    /// `fits` for the type of a value (closure types cannot be named).
    fn fits_val<T>(_: &T) -> bool {
        fits::<T>()
    }
}
