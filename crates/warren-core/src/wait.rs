//! A list of parked threads and async tasks waiting for one condition.
//!
//! The list lives inside the mutex that guards the condition, so a waiter
//! registers under the same lock the notifier takes: no wake-up is lost. A
//! sync waiter parks its thread; an async waiter leaves its `Waker`.

use std::task::Waker;

use crate::sync::thread::{self, Thread};

#[derive(Debug)]
enum Wake {
    Thread(Thread),
    Task(Waker),
}

#[derive(Debug, Default)]
pub(crate) struct WaitList {
    waiters: Vec<(u64, Wake)>,
    next_key: u64,
}

impl WaitList {
    /// Registers the current thread; returns its key.
    pub(crate) fn park_current(&mut self) -> u64 {
        self.push(Wake::Thread(thread::current()))
    }

    /// Registers or refreshes a task's waker under `key` (0 = new).
    pub(crate) fn register_waker(&mut self, key: u64, waker: &Waker) -> u64 {
        if key != 0 {
            if let Some((_, w)) = self.waiters.iter_mut().find(|(k, _)| *k == key) {
                match w {
                    Wake::Task(old) if old.will_wake(waker) => {}
                    _ => *w = Wake::Task(waker.clone()),
                }
                return key;
            }
        }
        self.push(Wake::Task(waker.clone()))
    }

    fn push(&mut self, w: Wake) -> u64 {
        self.next_key += 1;
        let key = self.next_key;
        self.waiters.push((key, w));
        key
    }

    /// Forgets a waiter; true if it was still registered (not yet notified).
    pub(crate) fn remove(&mut self, key: u64) -> bool {
        match self.waiters.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                // `remove`, not `swap_remove`: the others keep their turn.
                self.waiters.remove(i);
                true
            }
            None => false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Wakes everyone.
    pub(crate) fn notify_all(&mut self) {
        for (_, w) in self.waiters.drain(..) {
            wake(w);
        }
    }
}

/// A waiter taken off the list, to wake once the lock is released.
#[derive(Debug)]
pub(crate) struct Waiter(Wake);

impl Waiter {
    pub(crate) fn wake(self) {
        wake(self.0);
    }
}

impl WaitList {
    /// Takes the longest-waiting waiter off the list, to be woken after the
    /// caller releases its lock (waking under it would have the woken
    /// thread run straight into that lock).
    pub(crate) fn take_one(&mut self) -> Option<Waiter> {
        (!self.waiters.is_empty()).then(|| Waiter(self.waiters.remove(0).1))
    }

    /// Takes every waiter off the list, to be woken after the lock.
    pub(crate) fn take_all(&mut self) -> Vec<Waiter> {
        self.waiters.drain(..).map(|(_, w)| Waiter(w)).collect()
    }
}

fn wake(w: Wake) {
    match w {
        Wake::Thread(t) => t.unpark(),
        Wake::Task(w) => w.wake(),
    }
}
