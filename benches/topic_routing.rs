//! Topic routing: the compiled `TopicTrie` against a linear scan of
//! `topic_matches`, at 10 / 1,000 / 100,000 random patterns.
//!
//! Patterns have 3-6 words from a 100-word vocabulary, with ~10% of words `*`
//! and ~5% `#`; keys have 3-6 vocabulary words. Everything is seeded, so runs
//! are comparable. Each criterion group holds `trie` and `linear_scan` for one
//! size (one key routed per iteration, cycling through a fixed key set), so the
//! ratio can be read off the report. After the groups, a quick median timing
//! of our own prints "ratio linear/trie at N = X" for each size.
//!
//! Run with `cargo bench --bench topic_routing`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use warren::{topic_matches, TopicTrie};

const SIZES: [usize; 3] = [10, 1_000, 100_000];
const VOCABULARY: usize = 100;
const KEYS: usize = 256;

struct Fixture {
    trie: TopicTrie<u32>,
    linear: Vec<(String, u32)>,
    keys: Vec<String>,
}

fn vocabulary() -> Vec<String> {
    (0..VOCABULARY).map(|i| format!("word{i}")).collect()
}

fn random_pattern(rng: &mut SmallRng, vocab: &[String]) -> String {
    let len = rng.gen_range(3..=6);
    let words: Vec<&str> = (0..len)
        .map(|_| {
            let r: f64 = rng.gen();
            if r < 0.10 {
                "*"
            } else if r < 0.15 {
                "#"
            } else {
                vocab[rng.gen_range(0..vocab.len())].as_str()
            }
        })
        .collect();
    words.join(".")
}

fn random_key(rng: &mut SmallRng, vocab: &[String]) -> String {
    let len = rng.gen_range(3..=6);
    let words: Vec<&str> = (0..len)
        .map(|_| vocab[rng.gen_range(0..vocab.len())].as_str())
        .collect();
    words.join(".")
}

fn fixture(n: usize) -> Fixture {
    let vocab = vocabulary();
    let mut rng = SmallRng::seed_from_u64(0x5EED_0000 + n as u64);
    let mut trie = TopicTrie::new();
    let mut linear = Vec::with_capacity(n);
    for i in 0..n {
        let p = random_pattern(&mut rng, &vocab);
        let v = i as u32;
        trie.insert(&p, v);
        linear.push((p, v));
    }
    let mut key_rng = SmallRng::seed_from_u64(0xC0FFEE);
    let keys = (0..KEYS)
        .map(|_| random_key(&mut key_rng, &vocab))
        .collect();
    let f = Fixture { trie, linear, keys };
    // Both routes must agree (on a subset at large sizes: the scan is slow).
    let mut a = Vec::new();
    let mut b = Vec::new();
    let check = if n > 10_000 { 16 } else { KEYS };
    for k in &f.keys[..check] {
        route_trie(&f.trie, k, &mut a);
        route_linear(&f.linear, k, &mut b);
        assert_eq!(a, b, "trie and linear scan disagree on {k:?}");
    }
    f
}

fn route_trie(trie: &TopicTrie<u32>, key: &str, out: &mut Vec<u32>) -> usize {
    out.clear();
    trie.matches_into(key, out);
    out.len()
}

fn route_linear(linear: &[(String, u32)], key: &str, out: &mut Vec<u32>) -> usize {
    out.clear();
    for (p, v) in linear {
        if topic_matches(p, key) {
            out.push(*v);
        }
    }
    out.sort_unstable();
    out.dedup();
    out.len()
}

fn bench_size(c: &mut Criterion, n: usize, f: &Fixture) {
    let mut group = c.benchmark_group(format!("topic_routing/{n}"));
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    if n > 10_000 {
        // One linear scan is milliseconds here: few, flat samples.
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .measurement_time(Duration::from_secs(3));
    }
    group.bench_function("trie", |b| {
        let mut out = Vec::new();
        let mut i = 0usize;
        b.iter(|| {
            let key = &f.keys[i % KEYS];
            i = i.wrapping_add(1);
            route_trie(&f.trie, black_box(key), &mut out)
        })
    });
    group.bench_function("linear_scan", |b| {
        let mut out = Vec::new();
        let mut i = 0usize;
        b.iter(|| {
            let key = &f.keys[i % KEYS];
            i = i.wrapping_add(1);
            route_linear(&f.linear, black_box(key), &mut out)
        })
    });
    group.finish();
}

/// Median over `reps` of the time per key of routing `keys` `inner` times.
fn median_ns_per_key(
    reps: usize,
    inner: usize,
    keys: &[String],
    mut route: impl FnMut(&str),
) -> f64 {
    let mut samples: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..inner {
                for k in keys {
                    route(black_box(k));
                }
            }
            start.elapsed().as_nanos() as f64 / (inner * keys.len()) as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn summary(fixtures: &[(usize, Fixture)]) {
    println!();
    println!("topic_routing summary (own median timing, ns per routed key):");
    let mut ratios = Vec::new();
    for (n, f) in fixtures {
        // The scan at 100k takes milliseconds per key: time fewer keys there.
        let (keys, linear_reps) = if *n > 10_000 {
            (&f.keys[..32], 5)
        } else {
            (&f.keys[..], 11)
        };
        let mut out = Vec::new();
        let mut matched = 0usize;
        let (reps, inner) = (21, 50);
        let trie = median_ns_per_key(reps, inner, keys, |k| {
            matched += route_trie(&f.trie, k, &mut out);
        });
        let linear = median_ns_per_key(linear_reps, 1, keys, |k| {
            route_linear(&f.linear, k, &mut out);
        });
        let avg = matched as f64 / (reps * inner * keys.len()) as f64;
        println!(
            "  N = {n:>6}: trie {trie:>10.1} ns, linear_scan {linear:>12.1} ns, \
             {avg:.1} matches/key, {} trie nodes",
            f.trie.node_count()
        );
        ratios.push((*n, linear / trie));
    }
    for (n, r) in ratios {
        println!("ratio linear/trie at {n} = {r:.1}");
    }
}

fn main() {
    let fixtures: Vec<(usize, Fixture)> = SIZES.iter().map(|&n| (n, fixture(n))).collect();
    let mut c = Criterion::default().configure_from_args();
    for (n, f) in &fixtures {
        bench_size(&mut c, *n, f);
    }
    c.final_summary();
    // Only under `cargo bench` (which passes `--bench`), not `cargo test --benches`.
    if std::env::args().any(|a| a == "--bench") {
        summary(&fixtures);
    }
}
