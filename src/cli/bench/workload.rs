//! The patterns and keys a benchmark routes: generated (the default
//! workload) or read from the user's files.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::BenchArgs;
use crate::cli::{CliError, CliResult};

/// Binding counts measured when neither `--counts` nor `--bindings` is given.
pub const DEFAULT_COUNTS: [usize; 5] = [10, 100, 1_000, 10_000, 100_000];
/// Number of routing keys generated when neither `--keys-count` nor `--keys`
/// is given.
pub const DEFAULT_KEYS: usize = 1_000;
/// Probability that a generated pattern word is `*`.
const STAR: f64 = 0.10;
/// Probability that a generated pattern word is `#`.
const HASH: f64 = 0.05;

/// The default vocabulary: 100 words of the kind routing keys are made of.
const VOCABULARY: [&str; 100] = [
    "orders",
    "payments",
    "invoices",
    "shipments",
    "users",
    "accounts",
    "sessions",
    "carts",
    "products",
    "inventory",
    "prices",
    "reviews",
    "emails",
    "sms",
    "push",
    "webhooks",
    "audit",
    "metrics",
    "logs",
    "traces",
    "alerts",
    "jobs",
    "tasks",
    "reports",
    "exports",
    "imports",
    "search",
    "index",
    "cache",
    "files",
    "images",
    "videos",
    "created",
    "updated",
    "deleted",
    "archived",
    "restored",
    "approved",
    "rejected",
    "cancelled",
    "refunded",
    "failed",
    "succeeded",
    "started",
    "stopped",
    "retried",
    "expired",
    "scheduled",
    "queued",
    "sent",
    "received",
    "read",
    "opened",
    "clicked",
    "eu",
    "us",
    "apac",
    "latam",
    "west",
    "east",
    "north",
    "south",
    "central",
    "prod",
    "staging",
    "dev",
    "test",
    "canary",
    "blue",
    "green",
    "v1",
    "v2",
    "v3",
    "web",
    "mobile",
    "ios",
    "android",
    "api",
    "batch",
    "stream",
    "internal",
    "public",
    "partner",
    "admin",
    "billing",
    "shipping",
    "fraud",
    "risk",
    "kyc",
    "ledger",
    "wallet",
    "card",
    "bank",
    "crypto",
    "info",
    "warn",
    "error",
    "debug",
    "critical",
    "low",
];

/// What the benchmark routes.
pub struct Workload {
    /// The binding patterns, in an order where every prefix is a random
    /// sample; binding `i` has value `i`. At least `max(counts)` long.
    pub patterns: Vec<String>,
    /// The routing keys, routed cyclically.
    pub keys: Vec<String>,
    /// The binding counts to measure: sorted, distinct, each at least 1 and
    /// at most `patterns.len()`.
    pub counts: Vec<usize>,
    /// One line each on where the patterns and the keys come from.
    pub description: [String; 2],
}

/// Builds the workload `args` describe, reading the user's files if any.
pub fn build(args: &BenchArgs) -> CliResult<Workload> {
    let mut pattern_rng = SmallRng::seed_from_u64(args.seed);
    let mut key_rng = SmallRng::seed_from_u64(args.seed ^ 0x6b65_7973_6b65_7973);

    let user_patterns = args
        .bindings
        .as_deref()
        .map(|path| read_lines(path, "bindings", "patterns"))
        .transpose()?;
    let user_keys = args
        .keys
        .as_deref()
        .map(|path| read_lines(path, "keys", "keys"))
        .transpose()?;

    // Binding counts, and the patterns they are prefixes of.
    let (patterns, counts, pattern_desc) = match (&user_patterns, args.bindings.as_deref()) {
        (Some(lines), Some(path)) => {
            let available = lines.len();
            let counts = match &args.counts {
                Some(counts) => {
                    let counts = normalise_counts(counts)?;
                    if let Some(&too_many) = counts.iter().find(|&&c| c > available) {
                        return Err(CliError::new(format!(
                            "--counts asks for {too_many} bindings but {} has only {available} \
                             patterns",
                            path.display()
                        )));
                    }
                    counts
                }
                None => vec![available],
            };
            let mut patterns = lines.clone();
            let desc = if counts == [available] {
                format!("{} from {}", plural(available, "pattern"), path.display())
            } else {
                // Shuffle so that every prefix is a random subset.
                patterns.shuffle(&mut pattern_rng);
                format!(
                    "random subsets of the {available} patterns in {} (seed {})",
                    path.display(),
                    args.seed
                )
            };
            (patterns, counts, desc)
        }
        _ => {
            let counts = normalise_counts(args.counts.as_deref().unwrap_or(&DEFAULT_COUNTS))?;
            let max = counts.last().copied().unwrap_or(0);
            let (patterns, desc) = match &user_keys {
                Some(keys) => {
                    // Patterns shaped like the user's keys: some of a key's
                    // words replaced by wildcards.
                    let patterns = (0..max)
                        .map(|_| {
                            let key: &String = choose(&mut pattern_rng, keys);
                            generalise(&mut pattern_rng, key)
                        })
                        .collect();
                    let desc = format!(
                        "random patterns made from the keys, ~10% of words `*`, ~5% `#` \
                         (seed {})",
                        args.seed
                    );
                    (patterns, desc)
                }
                None => {
                    let patterns = (0..max)
                        .map(|_| random_pattern(&mut pattern_rng, &VOCABULARY))
                        .collect();
                    let desc = format!(
                        "random patterns of 3-6 words from a {}-word vocabulary, ~10% `*`, \
                         ~5% `#` (seed {})",
                        VOCABULARY.len(),
                        args.seed
                    );
                    (patterns, desc)
                }
            };
            (patterns, counts, desc)
        }
    };

    // Routing keys.
    let (keys, key_desc) = match (user_keys, args.keys.as_deref()) {
        (Some(mut lines), Some(path)) => {
            let available = lines.len();
            match args.keys_count {
                Some(n) if n > available => {
                    return Err(CliError::new(format!(
                        "--keys-count {n} is more than the {available} keys in {}",
                        path.display()
                    )));
                }
                Some(n) if n < available => {
                    lines.shuffle(&mut key_rng);
                    lines.truncate(n);
                    let desc = format!(
                        "{n} keys sampled from the {available} in {} (seed {})",
                        path.display(),
                        args.seed
                    );
                    (lines, desc)
                }
                _ => (
                    lines,
                    format!("{} from {}", plural(available, "key"), path.display()),
                ),
            }
        }
        _ => {
            let n = args.keys_count.unwrap_or(DEFAULT_KEYS);
            match user_patterns {
                Some(_) => {
                    // Keys shaped like the user's patterns: wildcards filled
                    // in with words the patterns use.
                    let words = literal_words(&patterns);
                    let words: Vec<&str> = if words.is_empty() {
                        VOCABULARY.to_vec()
                    } else {
                        words.iter().map(String::as_str).collect()
                    };
                    let keys = (0..n)
                        .map(|_| {
                            let pattern = choose(&mut key_rng, &patterns);
                            instantiate(&mut key_rng, pattern, &words)
                        })
                        .collect();
                    let desc = format!(
                        "{n} random keys made from the patterns, wildcards filled with their \
                         words (seed {})",
                        args.seed
                    );
                    (keys, desc)
                }
                None => {
                    let keys = (0..n)
                        .map(|_| random_key(&mut key_rng, &VOCABULARY))
                        .collect();
                    let desc = format!(
                        "{n} random keys of 3-6 words from the same vocabulary (seed {})",
                        args.seed
                    );
                    (keys, desc)
                }
            }
        }
    };

    Ok(Workload {
        patterns,
        keys,
        counts,
        description: [pattern_desc, key_desc],
    })
}

/// Reads one pattern or key per line. Lines are taken verbatim (spaces are
/// significant in topic words), except that empty or all-whitespace lines
/// are skipped. There is no comment syntax: `#` is a valid pattern.
fn read_lines(path: &Path, option: &str, what: &str) -> CliResult<Vec<String>> {
    let text = fs::read_to_string(path).map_err(|err| {
        CliError::new(format!(
            "cannot read --{option} file {}: {err}",
            path.display()
        ))
    })?;
    let lines: Vec<String> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        return Err(CliError::new(format!(
            "--{option} file {} contains no {what} (expected one per line; blank lines are \
             skipped)",
            path.display()
        )));
    }
    if lines.len() > u32::MAX as usize {
        return Err(CliError::new(format!(
            "--{option} file {} has more than {} {what}",
            path.display(),
            u32::MAX
        )));
    }
    Ok(lines)
}

/// Sorts and deduplicates binding counts, rejecting zero.
fn normalise_counts(counts: &[usize]) -> CliResult<Vec<usize>> {
    if counts.is_empty() {
        return Err(CliError::new("--counts needs at least one binding count"));
    }
    if counts.contains(&0) {
        return Err(CliError::new("--counts: binding counts must be at least 1"));
    }
    if counts.iter().any(|&c| c > u32::MAX as usize) {
        return Err(CliError::new(format!(
            "--counts: binding counts must be at most {}",
            u32::MAX
        )));
    }
    let mut counts = counts.to_vec();
    counts.sort_unstable();
    counts.dedup();
    Ok(counts)
}

/// `1 key`, `2 keys`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn choose<'a, T>(rng: &mut SmallRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

/// A pattern word: `*`, `#` or a vocabulary word.
fn pattern_word<'a>(rng: &mut SmallRng, literal: &'a str) -> &'a str {
    let r: f64 = rng.gen();
    if r < STAR {
        "*"
    } else if r < STAR + HASH {
        "#"
    } else {
        literal
    }
}

/// 3-6 words from `vocab`, each `*` with probability 10% and `#` with 5%.
pub fn random_pattern(rng: &mut SmallRng, vocab: &[&str]) -> String {
    let len = rng.gen_range(3..=6);
    let words: Vec<&str> = (0..len)
        .map(|_| {
            let word = *choose(rng, vocab);
            pattern_word(rng, word)
        })
        .collect();
    words.join(".")
}

/// 3-6 words from `vocab`.
pub fn random_key(rng: &mut SmallRng, vocab: &[&str]) -> String {
    let len = rng.gen_range(3..=6);
    let words: Vec<&str> = (0..len).map(|_| *choose(rng, vocab)).collect();
    words.join(".")
}

/// `key` with each word replaced by `*` (10%) or `#` (5%).
fn generalise(rng: &mut SmallRng, key: &str) -> String {
    if key.is_empty() {
        return String::new();
    }
    let words: Vec<&str> = key.split('.').map(|w| pattern_word(rng, w)).collect();
    words.join(".")
}

/// A key matched by `pattern`: each `*` becomes one word from `words`, each
/// `#` zero to two of them.
fn instantiate(rng: &mut SmallRng, pattern: &str, words: &[&str]) -> String {
    if pattern.is_empty() {
        return String::new();
    }
    let mut out: Vec<&str> = Vec::new();
    for word in pattern.split('.') {
        match word {
            "*" => out.push(*choose(rng, words)),
            "#" => {
                for _ in 0..rng.gen_range(0..=2) {
                    out.push(*choose(rng, words));
                }
            }
            literal => out.push(literal),
        }
    }
    out.join(".")
}

/// The distinct non-wildcard words of `patterns`, in sorted order.
fn literal_words(patterns: &[String]) -> Vec<String> {
    let set: BTreeSet<&str> = patterns
        .iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| p.split('.'))
        .filter(|w| *w != "*" && *w != "#")
        .collect();
    set.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren::topic_matches;

    #[test]
    fn vocabulary_words_are_distinct_literals() {
        let set: BTreeSet<&str> = VOCABULARY.iter().copied().collect();
        assert_eq!(set.len(), VOCABULARY.len());
        assert!(VOCABULARY
            .iter()
            .all(|w| !w.contains('.') && *w != "*" && *w != "#"));
    }

    #[test]
    fn instantiated_keys_match_their_pattern() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..500 {
            let pattern = random_pattern(&mut rng, &VOCABULARY);
            let key = instantiate(&mut rng, &pattern, &VOCABULARY);
            assert!(topic_matches(&pattern, &key), "{pattern} vs {key}");
        }
    }

    #[test]
    fn generalised_patterns_match_their_key() {
        let mut rng = SmallRng::seed_from_u64(9);
        for _ in 0..500 {
            let key = random_key(&mut rng, &VOCABULARY);
            let pattern = generalise(&mut rng, &key);
            assert!(topic_matches(&pattern, &key), "{pattern} vs {key}");
        }
    }

    #[test]
    fn counts_are_sorted_distinct_and_positive() {
        assert_eq!(normalise_counts(&[100, 10, 100]).unwrap(), vec![10, 100]);
        assert!(normalise_counts(&[10, 0]).is_err());
        assert!(normalise_counts(&[]).is_err());
    }
}
