//! The synchronisation primitives the engine uses, from one place, so the
//! model checker can swap them.
//!
//! Normally these are plain re-exports of `parking_lot` and `std` (no
//! wrapper, no cost). Built with `RUSTFLAGS="--cfg loom"`, they come from
//! [loom](https://docs.rs/loom) instead, behind thin wrappers with
//! `parking_lot`'s API, and `tests/loom.rs` explores every interleaving of
//! small scenarios through the production code of queues, consumers and
//! acknowledgements.
//!
//! `thread_local!` is routed too: loom runs all its threads on one OS thread,
//! and the broker's publish scratch space is borrowed across locks.
//!
//! Not routed through here, on purpose:
//! - `Arc` and `Weak` (except [`ConsumerArc`]): loom's `Arc` has no `Weak`
//!   nor `new_cyclic`, which the broker needs. Reference counting is `std`'s to get right, and the one
//!   place that reads a count to synchronise (reaping deleted queues) is not
//!   part of the loom models.
//! - The topic trie's thread-local scratch space: it is never borrowed across
//!   a lock or an atomic, so no interleaving can observe it.
//! - [`ManualClock`](crate::ManualClock)'s counter and the timer thread: the
//!   models schedule no deadline (no TTL, no `x-expires`), so neither runs.

#[cfg(not(loom))]
pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
#[cfg(not(loom))]
pub(crate) use std::hint::spin_loop;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::thread_local;

/// An `UnsafeCell` with loom's closure API, so the model checker can watch
/// every access to the consumer ring's slots.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// The `Arc` of a consumer's shared half. Its last drop frees the consumer's
/// ring, whose slots loom watches: loom must see that drop's
/// synchronisation, so under loom this is loom's `Arc` (which, unlike the
/// broker's other `Arc`s, needs no `Weak`).
#[cfg(not(loom))]
pub(crate) use std::sync::Arc as ConsumerArc;

#[cfg(loom)]
pub(crate) use loom::sync::Arc as ConsumerArc;

#[cfg(loom)]
pub(crate) use loom::hint::spin_loop;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::thread_local;
#[cfg(loom)]
pub(crate) use loom_shim::{Condvar, Mutex, MutexGuard, RwLock};

/// Between a `SeqCst` read-modify-write and a later `SeqCst` load of another
/// atomic on the same thread: the two halves of a store-then-load hand-over
/// (Dekker's pattern), where each side writes its flag and then reads the
/// other's, and at least one must see the other's write.
///
/// `SeqCst` accesses alone guarantee that (they fall in one total order), so
/// in the library this is nothing, and no fence instruction is spent on a
/// path that runs for every message. Loom models `SeqCst` accesses as
/// `AcqRel` only (its README says so), which would report lost hand-overs
/// that cannot happen, so under loom this is a `SeqCst` fence: the models
/// check the fenced protocol, which gives the same guarantee.
#[inline(always)]
pub(crate) fn seqcst_handover() {
    #[cfg(loom)]
    fence(std::sync::atomic::Ordering::SeqCst);
}

/// Takes out of `list` each object nothing else refers to any more, after
/// handing it to `fold`: a deleted queue or exchange, or a route's counter
/// cell, whose counts are final once its last other holder let go. Only
/// the list holds such an object, so no new holder can appear.
pub(crate) fn fold_released<T>(list: &mut Vec<std::sync::Arc<T>>, mut fold: impl FnMut(&T)) {
    list.retain(|x| {
        if std::sync::Arc::strong_count(x) > 1 {
            return true;
        }
        // Pairs with the release of the last other holder's drop: what it
        // counted is visible to `fold`.
        fence(std::sync::atomic::Ordering::Acquire);
        fold(x);
        false
    });
}

/// Threads: parking and waking.
pub(crate) mod thread {
    #[cfg(not(loom))]
    pub(crate) use std::thread::{current, park, park_timeout, yield_now, Thread};

    #[cfg(loom)]
    pub(crate) use loom::thread::{current, park, yield_now, Thread};

    /// Loom has no timed park. Waiting for an unpark instead makes a model
    /// that only progresses thanks to the timeout fail as a deadlock: a lost
    /// wake-up.
    #[cfg(loom)]
    pub(crate) fn park_timeout(_: std::time::Duration) {
        park();
    }
}

/// `parking_lot`'s API over loom's primitives.
#[cfg(loom)]
mod loom_shim {
    use std::fmt;
    use std::ops::{Deref, DerefMut};
    use std::sync::PoisonError;
    use std::time::Duration;

    /// A mutex with `parking_lot`'s API (no poisoning).
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    pub(crate) struct MutexGuard<'a, T> {
        /// `None` only while a condition variable waits with it.
        inner: Option<loom::sync::MutexGuard<'a, T>>,
    }

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard {
                inner: Some(self.0.lock().unwrap_or_else(PoisonError::into_inner)),
            }
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Mutex::new(T::default())
        }
    }

    impl<T> fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Mutex { .. }")
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.inner
                .as_deref()
                .unwrap_or_else(|| unreachable!("taken only while waiting"))
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.inner
                .as_deref_mut()
                .unwrap_or_else(|| unreachable!("taken only while waiting"))
        }
    }

    /// A reader-writer lock with `parking_lot`'s API.
    pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

    impl<T> fmt::Debug for RwLock<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("RwLock { .. }")
        }
    }

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> Self {
            RwLock(loom::sync::RwLock::new(value))
        }

        pub(crate) fn read(&self) -> loom::sync::RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn write(&self) -> loom::sync::RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// A condition variable with `parking_lot`'s API.
    #[derive(Debug)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Default for Condvar {
        fn default() -> Self {
            Condvar(loom::sync::Condvar::new())
        }
    }

    impl Condvar {
        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let Some(g) = guard.inner.take() else { return };
            guard.inner = Some(self.0.wait(g).unwrap_or_else(PoisonError::into_inner));
        }

        /// Loom does not model time: this waits for a notification.
        pub(crate) fn wait_for<T>(&self, guard: &mut MutexGuard<'_, T>, _: Duration) {
            self.wait(guard);
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }
}
