//! Helpers shared by the benches: interleaved A/B rounds and medians, so a
//! ratio is measured under the same machine noise for both sides.

#![allow(dead_code)]

use std::time::Duration;

/// Runs `a` and `b` alternately `rounds` times; returns their median times.
pub fn interleaved(
    rounds: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> (Duration, Duration) {
    let mut ta = Vec::with_capacity(rounds);
    let mut tb = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        ta.push(a());
        tb.push(b());
    }
    (median(&mut ta), median(&mut tb))
}

/// The median of a sample.
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Whether criterion was asked only to check that the bench runs (`--test`
/// from `cargo test --benches` or `cargo bench -- --test`).
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Pins the calling thread to CPU `index` (of those this process may use),
/// so that a two-thread bench runs its threads on two different CPUs, its
/// baseline too. Unpinned, the scheduler often starts a new thread on its
/// parent's CPU and leaves it there for milliseconds: both sides of a
/// "two-thread" round then take turns on one CPU, and the round measures
/// something else (crossbeam's bounded channel, whose sender parks when
/// full, ran 3x faster that way than across two CPUs here). Does nothing
/// with `WARREN_BENCH_PIN=0`, or with fewer than two CPUs.
pub fn pin(index: usize) {
    if std::env::var("WARREN_BENCH_PIN").is_ok_and(|v| v == "0") {
        return;
    }
    let cores = CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default());
    if cores.len() >= 2 {
        core_affinity::set_for_current(cores[index % cores.len()]);
    }
}

/// The CPUs this process may use, read once, before any thread is pinned.
/// `core_affinity::get_core_ids` lists the CPUs the *calling thread* may
/// run on, and a thread inherits its parent's mask: read from a thread
/// spawned by a pinned one, it lists that one CPU alone. (Read per call,
/// as it once was, the queue-hop bench's consuming thread found one CPU,
/// was not pinned, and ran on the publisher's CPU: every round reported as
/// "pinned to two CPUs" ran on one.)
static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();

/// How `pin` placed two-thread rounds, for a bench's report.
pub fn placement() -> &'static str {
    if std::env::var("WARREN_BENCH_PIN").is_ok_and(|v| v == "0") {
        "threads unpinned"
    } else if CORES.get().is_some_and(|c| c.len() >= 2) {
        "threads pinned to two CPUs"
    } else {
        "threads unpinned: fewer than two CPUs"
    }
}
