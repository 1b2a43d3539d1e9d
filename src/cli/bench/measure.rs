//! Timing: the median cost of routing one key, over several rounds within a
//! fixed time budget.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// How long to measure one matcher at one binding count.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Total time for the timed rounds (calibration adds at most half a
    /// round on top).
    pub total: Duration,
    /// Number of timed rounds; the result is their median.
    pub rounds: u32,
}

/// Routes keys from `keys` (cyclically, continuing where the previous batch
/// stopped) with `route`, which returns the number of matches, and returns
/// the median nanoseconds per routed key over `budget.rounds` rounds.
///
/// A calibration phase (which also warms caches) doubles a batch until it
/// takes an eighth of a round; each round then routes as many keys as fit in
/// `budget.total / budget.rounds`, and always at least one, so a matcher
/// slower than the budget still gets `rounds` samples of one key each.
pub fn median_ns_per_route(
    keys: &[String],
    budget: Budget,
    mut route: impl FnMut(&str) -> usize,
) -> f64 {
    assert!(!keys.is_empty(), "no keys to route");
    let rounds = budget.rounds.max(1);
    let slice = budget.total / rounds;
    let mut cursor = 0usize;
    let mut sink = 0usize;
    let mut time_batch = |n: u64| -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            sink = sink.wrapping_add(route(black_box(keys[cursor].as_str())));
            cursor += 1;
            if cursor == keys.len() {
                cursor = 0;
            }
        }
        start.elapsed()
    };

    let mut batch = 1u64;
    let per_route = loop {
        let elapsed = time_batch(batch);
        if elapsed >= slice / 8 || batch >= 1 << 40 {
            break elapsed.as_secs_f64() / batch as f64;
        }
        batch *= 2;
    };
    let per_round = if per_route > 0.0 {
        ((slice.as_secs_f64() / per_route) as u64).max(1)
    } else {
        batch
    };

    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| time_batch(per_round).as_nanos() as f64 / per_round as f64)
        .collect();
    black_box(sink);
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_key_and_reports_a_positive_time() {
        let keys: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut seen = [0usize; 3];
        let ns = median_ns_per_route(
            &keys,
            Budget {
                total: Duration::from_millis(5),
                rounds: 3,
            },
            |k| {
                seen[usize::from(k.as_bytes()[0] - b'a')] += 1;
                std::thread::sleep(Duration::from_micros(10));
                1
            },
        );
        assert!(ns >= 10_000.0, "{ns}");
        assert!(seen.iter().all(|&n| n > 0));
    }
}
