//! `TopicTrie` against the reference matcher `topic_matches`, through the
//! public API only: random binding sets with inserts and removes, random keys,
//! pathological patterns, and a check that warmed-up matching never allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use warren_core::{topic_matches, TopicTrie};

// ---------------------------------------------------------------------------
// A counting allocator (per thread), used by `warm_matching_does_not_allocate`.
// It only counts; every call is forwarded to the system allocator.

struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the only addition is bumping a thread-local counter, which does
// not allocate (const-initialised `Cell<u64>`, no destructor).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------
// Strategies.

/// Patterns over {"", "a", "b", "*", "#"}, with repeated `#` likely.
fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["", "a", "b", "*", "#", "#"]),
        0..6,
    )
    .prop_map(|w| w.join("."))
}

/// Keys over {"", "a", "b", "c", "*", "#"} (`*` and `#` are literal in keys).
fn key() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["", "a", "b", "c", "*", "#"]),
        0..7,
    )
    .prop_map(|w| w.join("."))
}

#[derive(Debug, Clone)]
enum Op {
    Insert(String, u8),
    /// Removes a random pair (pattern, value), usually not present.
    RemoveRandom(String, u8),
    /// Removes the `n % len`-th pair currently present.
    RemoveExisting(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (pattern(), 0u8..5).prop_map(|(p, v)| Op::Insert(p, v)),
        1 => (pattern(), 0u8..5).prop_map(|(p, v)| Op::RemoveRandom(p, v)),
        3 => any::<usize>().prop_map(Op::RemoveExisting),
    ]
}

/// The oracle's answer: values of matching pairs, sorted, each once.
fn oracle(model: &BTreeSet<(String, u8)>, key: &str) -> Vec<u8> {
    let set: BTreeSet<u8> = model
        .iter()
        .filter(|(p, _)| topic_matches(p, key))
        .map(|&(_, v)| v)
        .collect();
    set.into_iter().collect()
}

/// The exact shape a pruned trie must have for the pairs in `model`:
/// (nodes = root + distinct non-empty word prefixes, distinct literal words).
fn expected_shape(model: &BTreeSet<(String, u8)>) -> (usize, usize) {
    let mut prefixes = BTreeSet::new();
    let mut words = BTreeSet::new();
    for (p, _) in model {
        let ws: Vec<&str> = if p.is_empty() {
            Vec::new()
        } else {
            p.split('.').collect()
        };
        for i in 1..=ws.len() {
            prefixes.insert(ws[..i].to_vec());
        }
        words.extend(ws.into_iter().filter(|w| *w != "*" && *w != "#"));
    }
    (1 + prefixes.len(), words.len())
}

fn apply(trie: &mut TopicTrie<u8>, model: &mut BTreeSet<(String, u8)>, op: &Op) {
    match op {
        Op::Insert(p, v) => {
            let fresh = model.insert((p.clone(), *v));
            assert_eq!(trie.insert(p, *v), fresh, "insert {p:?} {v}");
        }
        Op::RemoveRandom(p, v) => {
            let present = model.remove(&(p.clone(), *v));
            assert_eq!(trie.remove(p, v), present, "remove {p:?} {v}");
        }
        Op::RemoveExisting(n) => {
            if model.is_empty() {
                return;
            }
            let pair = model.iter().nth(n % model.len()).cloned();
            if let Some((p, v)) = pair {
                model.remove(&(p.clone(), v));
                assert!(trie.remove(&p, &v), "remove existing {p:?} {v}");
            }
        }
    }
    assert_eq!(trie.len(), model.len());
    assert_eq!(trie.is_empty(), model.is_empty());
    assert_eq!(
        (trie.node_count(), trie.word_count()),
        expected_shape(model)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn trie_equals_oracle(ops in prop::collection::vec(op(), 0..40),
                          keys in prop::collection::vec(key(), 1..24)) {
        let mut trie = TopicTrie::new();
        let mut model = BTreeSet::new();
        for op in &ops {
            apply(&mut trie, &mut model, op);
        }
        let mut out = Vec::new();
        for k in &keys {
            let want = oracle(&model, k);
            prop_assert_eq!(trie.matches(k), want.clone(), "key {:?} pairs {:?}", k, model);
            // matches_into appends after existing entries, leaving them alone.
            out.clear();
            out.push(200);
            trie.matches_into(k, &mut out);
            prop_assert_eq!(out[0], 200);
            prop_assert_eq!(&out[1..], &want[..]);
        }
        // A clone answers the same.
        let clone = trie.clone();
        for k in &keys {
            prop_assert_eq!(clone.matches(k), trie.matches(k));
        }
    }

    #[test]
    fn removing_everything_prunes_everything(
        pairs in prop::collection::vec((pattern(), 0u8..4), 0..30),
        order in any::<u64>(),
        keys in prop::collection::vec(key(), 1..8),
    ) {
        let mut trie = TopicTrie::new();
        let mut model = BTreeSet::new();
        for (p, v) in &pairs {
            prop_assert_eq!(trie.insert(p, *v), model.insert((p.clone(), *v)));
        }
        // Remove in a scrambled order, checking the survivors as we go.
        let mut left: Vec<(String, u8)> = model.iter().cloned().collect();
        let mut seed = order | 1;
        while !left.is_empty() {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let i = (seed >> 33) as usize % left.len();
            let (p, v) = left.swap_remove(i);
            model.remove(&(p.clone(), v));
            prop_assert!(trie.remove(&p, &v));
            prop_assert!(!trie.remove(&p, &v));
            prop_assert_eq!((trie.node_count(), trie.word_count()), expected_shape(&model));
            for k in &keys {
                prop_assert_eq!(trie.matches(k), oracle(&model, k));
            }
        }
        prop_assert!(trie.is_empty());
        prop_assert_eq!(trie.node_count(), 1);
        prop_assert_eq!(trie.word_count(), 0);
    }
}

// ---------------------------------------------------------------------------
// Fixed cases.

fn long_key(words: usize, last: &str) -> String {
    let mut k = vec!["w"; words - 1];
    k.push(last);
    k.join(".")
}

#[test]
fn pathological_patterns_complete() {
    let mut trie = TopicTrie::new();
    trie.insert("#.#.#.#.#.#.#.#.x", 1);
    trie.insert("#.*.#.*.#.*.#.*.#.*.#.y", 2);
    trie.insert("*.#.*.#.*.#.*.#.*", 3);
    trie.insert("#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#", 4);
    trie.insert("#.w.#.w.#.w.#.w.#.w.#.w.#.z", 5);
    trie.insert(&long_key(300, "#"), 6);
    trie.insert(&vec!["*"; 300].join("."), 7);
    trie.insert(&vec!["#"; 300].join("."), 8);

    let ends_x = long_key(300, "x");
    assert_eq!(trie.matches(&ends_x), vec![1, 3, 4, 6, 7, 8]);
    let ends_y = long_key(300, "y");
    assert_eq!(trie.matches(&ends_y), vec![2, 3, 4, 6, 7, 8]);
    let ends_z = long_key(300, "z");
    assert_eq!(trie.matches(&ends_z), vec![3, 4, 5, 6, 7, 8]);
    let short = long_key(4, "x");
    assert_eq!(trie.matches(&short), vec![1, 4, 8]);
    assert_eq!(trie.matches(""), vec![4, 8]);
}

#[test]
fn warm_matching_does_not_allocate() {
    let mut trie = TopicTrie::new();
    let patterns = [
        "#", "a.#", "*.b", "a.b", "#.b", "#.#", "a.*.c", "#.a.#", "*.#.*", "", ".", "a..b",
    ];
    for (i, p) in patterns.iter().enumerate() {
        trie.insert(p, i);
        trie.insert(p, 100); // a value matched through many patterns
    }
    let keys: Vec<String> = [
        "",
        ".",
        "a",
        "a.b",
        "a.x.c",
        "x.y.a.z",
        "never.seen.words",
        "a..b",
        "*.#",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(long_key(200, "b")))
    .collect();

    let mut out = Vec::with_capacity(64);
    // Warm up: grows this thread's scratch space.
    for k in &keys {
        out.clear();
        trie.matches_into(k, &mut out);
    }
    let before = allocations();
    let mut total = 0;
    for _ in 0..10 {
        for k in &keys {
            out.clear();
            trie.matches_into(k, &mut out);
            total += out.len();
        }
    }
    let after = allocations();
    assert!(total > 0);
    assert_eq!(after - before, 0, "matches_into allocated when warm");
}

#[test]
fn concurrent_readers_agree() {
    let mut trie = TopicTrie::new();
    let mut model = BTreeSet::new();
    for (i, p) in ["a.#", "*.b", "#", "a.*.c", "#.c", "x"].iter().enumerate() {
        trie.insert(p, i as u8);
        model.insert((p.to_string(), i as u8));
    }
    let trie = Arc::new(trie);
    let model = Arc::new(model);
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let trie = Arc::clone(&trie);
            let model = Arc::clone(&model);
            std::thread::spawn(move || {
                let keys = ["a", "a.b", "a.b.c", "x", "", "q.c", "z.b"];
                for i in 0..2000 {
                    let k = keys[(i + t) % keys.len()];
                    assert_eq!(trie.matches(k), oracle(&model, k), "key {k:?}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("reader thread panicked");
    }
}
