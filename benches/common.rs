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
    let Some(cores) = core_affinity::get_core_ids() else {
        return;
    };
    if cores.len() >= 2 {
        core_affinity::set_for_current(cores[index % cores.len()]);
    }
}

/// How `pin` placed two-thread rounds, for a bench's report.
pub fn placement() -> &'static str {
    if std::env::var("WARREN_BENCH_PIN").is_ok_and(|v| v == "0") {
        "threads unpinned"
    } else {
        "threads pinned to two CPUs"
    }
}
