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
//! - `Arc` and `Weak`: loom's `Arc` has no `Weak` nor `new_cyclic`, which the
//!   broker needs. Reference counting is `std`'s to get right, and the one
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

#[cfg(loom)]
pub(crate) use loom::hint::spin_loop;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::thread_local;
#[cfg(loom)]
pub(crate) use loom_shim::{Condvar, Mutex, MutexGuard, RwLock};

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
    use std::sync::atomic::Ordering;
    use std::sync::PoisonError;
    use std::time::Duration;

    use loom::sync::atomic::AtomicBool;

    /// A mutex with `parking_lot`'s API. `is_locked` reads a flag kept next
    /// to loom's mutex the way `parking_lot` reads its lock word (a relaxed
    /// load), set by the holder after it acquires and cleared (release)
    /// before it releases.
    pub(crate) struct Mutex<T> {
        inner: loom::sync::Mutex<T>,
        locked: AtomicBool,
    }

    pub(crate) struct MutexGuard<'a, T> {
        inner: Option<loom::sync::MutexGuard<'a, T>>,
        locked: &'a AtomicBool,
    }

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex {
                inner: loom::sync::Mutex::new(value),
                locked: AtomicBool::new(false),
            }
        }

        fn guard<'a>(&'a self, g: loom::sync::MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.locked.store(true, Ordering::Relaxed);
            MutexGuard {
                inner: Some(g),
                locked: &self.locked,
            }
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            self.guard(g)
        }

        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            match self.inner.try_lock() {
                Ok(g) => Some(self.guard(g)),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(self.guard(p.into_inner())),
                Err(std::sync::TryLockError::WouldBlock) => {
                    // A busy-wait loop around `try_lock` must let the holder
                    // run, or the model never ends.
                    loom::thread::yield_now();
                    None
                }
            }
        }

        /// The flag may read stale, as `parking_lot`'s lock word may: a
        /// stale "locked" is what a caller must be ready for, and the model
        /// explores it. A "free" answer is checked against loom's mutex, so
        /// the flag's own windows (set just after acquiring, cleared just
        /// before releasing) cannot send a caller round a retry loop while
        /// the holder never runs.
        pub(crate) fn is_locked(&self) -> bool {
            self.locked.load(Ordering::Relaxed) || self.inner.try_lock().is_err()
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

    impl<T> MutexGuard<'_, T> {
        fn get(&self) -> &loom::sync::MutexGuard<'_, T> {
            self.inner
                .as_ref()
                .unwrap_or_else(|| unreachable!("taken only while waiting"))
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.get()
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.inner
                .as_deref_mut()
                .unwrap_or_else(|| unreachable!("taken only while waiting"))
        }
    }

    impl<T> Drop for MutexGuard<'_, T> {
        fn drop(&mut self) {
            if self.inner.is_some() {
                self.locked.store(false, Ordering::Release);
            }
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
            guard.locked.store(false, Ordering::Release);
            let g = self.0.wait(g).unwrap_or_else(PoisonError::into_inner);
            guard.locked.store(true, Ordering::Relaxed);
            guard.inner = Some(g);
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
