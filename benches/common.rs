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
