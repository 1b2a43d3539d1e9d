//! Time as the broker sees it: milliseconds on a monotonic clock, which tests
//! can replace with a [`ManualClock`] to drive TTL and `x-expires` by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A clock that only moves when told to: for deterministic TTL tests.
///
/// Give it to [`BrokerOptions::clock`](crate::BrokerOptions); the broker then
/// starts no timer thread, and expiry runs on queue operations and on
/// [`Broker::run_expiry`](crate::Broker::run_expiry).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use warren_core::ManualClock;
///
/// let clock = ManualClock::new();
/// clock.advance(Duration::from_millis(250));
/// assert_eq!(clock.now_ms(), 250);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at 0 ms.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// The current reading in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Clock {
    System(Instant),
    Manual(ManualClock),
}

impl Clock {
    pub(crate) fn now_ms(&self) -> u64 {
        match self {
            Clock::System(start) => u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            Clock::Manual(m) => m.now_ms(),
        }
    }

    pub(crate) fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }
}

/// Seconds since the Unix epoch (for `x-death`'s `time`).
pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}
