//! Topic patterns: the reference matcher and the compiled trie.
//!
//! # Semantics (RabbitMQ's topic exchange, verified against RabbitMQ 3.10)
//!
//! * A routing key and a binding pattern are both split on every `.` into
//!   *words*, byte-wise, with no normalisation: case and spaces are
//!   significant. The empty string has **zero** words; `"."` is two empty
//!   words; `"a."` is `a` followed by an empty word; `"a..b"` is three words.
//! * In a pattern, a word that is exactly `*` matches exactly one key word
//!   (including an empty one: `*.*` matches `"."`), and a word that is exactly
//!   `#` matches zero or more key words. Both may appear anywhere and any
//!   number of times (`#.#`, `*.#.*` = at least two words, `a.#.#.b`,
//!   `#.a.#`).
//! * `*` and `#` are wildcards only as whole words: `a#`, `**` and `##` are
//!   ordinary literal words. In a *key*, `*` and `#` are ordinary words; such a
//!   key word is matched only by pattern wildcards.
//! * Consequently `""` is matched only by `""`, `#`, `#.#`, …, and not by
//!   `*`, `*.#` or `#.*`, which all need at least one word.
//! * A value (destination) is reported once per routed key even when several
//!   of its patterns match.
//!
//! [`topic_matches`] is the obviously-correct reference implementation of
//! these rules (a backtracking matcher, exponential in the worst case); it is
//! the oracle the tests compare [`TopicTrie`] against.
//!
//! # Algorithm
//!
//! [`TopicTrie`] compiles the patterns into a trie, as NATS's `sublist.go`
//! does: every literal word is interned to a per-trie numeric id, and every
//! node has a map from word id to child plus dedicated `*` and `#` children.
//! The values bound with a pattern live at the node where its path ends.
//! Nodes live in an arena (`Vec`) with a free list, and words are
//! reference-counted by the edges that use them, so `remove` prunes dead
//! nodes and forgets dead words: memory stays bounded under binding churn.
//!
//! Matching runs the trie as a nondeterministic automaton, one key word at a
//! time, over the *set* of active nodes (never by backtracking). A node
//! reached through a `#` edge has a self-loop (it may swallow any number of
//! key words), and every node's `#` child is part of its epsilon closure
//! (`#` may match zero words). On a key word, each active node moves to its
//! literal child for that word (a key word no pattern mentions has no id and
//! can only follow wildcards), to its `*` child, and, for `#` nodes, to
//! itself. Active sets are deduplicated with per-node generation stamps, so
//! the cost of a match is bounded by (number of key words) × (number of
//! distinct active nodes), whatever the patterns look like. After the last
//! word, the values at the active nodes are appended, then that appended range
//! is sorted and deduplicated in place.
//!
//! The stamps and the two active-node sets are scratch buffers kept in a
//! thread-local and reused across calls, so `matches_into` takes `&self`
//! (many threads may route concurrently under a read lock) and performs no
//! allocation once the buffers and the output vector have grown to size.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Whether `pattern` matches `key` under RabbitMQ's topic rules. The obviously
/// correct reference matcher.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn words(s: &str) -> Vec<&str> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('.').collect()
        }
    }
    fn go(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
            Some((&"*", rest)) => !k.is_empty() && go(rest, &k[1..]),
            Some((w, rest)) => k.first() == Some(w) && go(rest, &k[1..]),
        }
    }
    go(&words(pattern), &words(key))
}

/// The words of a key or pattern, without allocating: `""` has none,
/// otherwise every `.` separates two (possibly empty) words.
fn split_words(s: &str) -> SplitWords<'_> {
    SplitWords {
        rest: (!s.is_empty()).then_some(s),
    }
}

/// Iterator of [`split_words`]: a plain byte scan for `.`, cheaper than
/// `str::split` on the short words of routing keys.
struct SplitWords<'a> {
    /// What is left to split; `None` once the last word has been returned.
    rest: Option<&'a str>,
}

impl<'a> Iterator for SplitWords<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        match s.bytes().position(|b| b == b'.') {
            Some(i) => {
                // `.` is ASCII, so `i` and `i + 1` are char boundaries.
                self.rest = s.get(i + 1..);
                s.get(..i)
            }
            None => {
                self.rest = None;
                Some(s)
            }
        }
    }
}

/// The root node's index in the arena; it is never freed.
const ROOT: usize = 0;

/// A fast hasher for the small integer word ids this module assigns itself
/// (they are not attacker-chosen, so no DoS-resistant hashing is needed).
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type IdMap = HashMap<usize, usize, BuildHasherDefault<IdHasher>>;

/// One trie node.
#[derive(Clone)]
struct Node<T> {
    /// Literal word id -> child node.
    literal: IdMap,
    /// Child for a `*` pattern word.
    star: Option<usize>,
    /// Child for a `#` pattern word.
    hash: Option<usize>,
    /// Whether this node was reached through a `#` edge (it has a self-loop).
    is_hash: bool,
    /// Values whose pattern ends here.
    values: BTreeSet<T>,
}

impl<T> Node<T> {
    fn new(is_hash: bool) -> Self {
        Node {
            literal: IdMap::default(),
            star: None,
            hash: None,
            is_hash,
            values: BTreeSet::new(),
        }
    }

    fn is_dead(&self) -> bool {
        self.values.is_empty()
            && self.literal.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

/// The edge from a parent to a child.
#[derive(Clone, Copy)]
enum Edge {
    Literal(usize),
    Star,
    Hash,
}

/// An interned word and the number of trie edges labelled with it.
#[derive(Clone)]
struct WordSlot {
    text: Box<str>,
    refs: usize,
}

/// Word interning with reference counts, so unused words are forgotten.
#[derive(Clone, Default)]
struct Words {
    ids: HashMap<Box<str>, usize>,
    slots: Vec<WordSlot>,
    free: Vec<usize>,
}

impl Words {
    /// The id of `word`, if some pattern uses it. Never allocates.
    fn lookup(&self, word: &str) -> Option<usize> {
        self.ids.get(word).copied()
    }

    /// The id of `word`, interning it if needed, counting one more edge.
    fn acquire(&mut self, word: &str) -> usize {
        if let Some(&id) = self.ids.get(word) {
            if let Some(slot) = self.slots.get_mut(id) {
                slot.refs += 1;
            }
            return id;
        }
        let slot = WordSlot {
            text: word.into(),
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id] = slot;
                id
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.ids.insert(word.into(), id);
        id
    }

    /// One edge labelled `id` is gone; forget the word if it was the last.
    fn release(&mut self, id: usize) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        slot.refs = slot.refs.saturating_sub(1);
        if slot.refs == 0 {
            let text = std::mem::take(&mut slot.text);
            self.ids.remove(&text);
            self.free.push(id);
        }
    }

    fn text(&self, id: usize) -> &str {
        self.slots.get(id).map_or("", |s| &s.text)
    }
}

/// Per-thread scratch space for [`TopicTrie::matches_into`].
#[derive(Default)]
struct Scratch {
    /// Generation stamp per node index: the node is in the set being built
    /// iff its stamp equals the current generation.
    stamps: Vec<u32>,
    generation: u32,
    /// Active nodes before the current key word.
    cur: Vec<usize>,
    /// Active nodes after the current key word.
    next: Vec<usize>,
}

impl Scratch {
    /// Starts a new generation (a new, empty set).
    fn bump(&mut self) -> u32 {
        if self.generation == u32::MAX {
            self.stamps.fill(0);
            self.generation = 0;
        }
        self.generation += 1;
        self.generation
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A compiled set of topic bindings (pattern, value).
///
/// Keys and patterns are split on every `.` (byte-wise; `""` has zero words,
/// `"."` is two empty words). A pattern word `*` matches exactly one key word,
/// `#` matches zero or more; any other word, including `a#` or `**`, matches
/// only itself. Each matching value is reported once, in sorted order.
/// [`topic_matches`] is the reference for these rules.
///
/// Patterns are compiled into a trie over interned words, and a key is matched
/// by running the trie as an automaton over the set of active nodes, so a
/// match costs time proportional to the key's length (times the number of
/// simultaneously active nodes), never to the number of bindings and never
/// exponential. [`matches_into`](Self::matches_into) takes `&self` and does
/// not allocate once warmed up; [`remove`](Self::remove) prunes, so memory
/// follows the live bindings.
#[derive(Clone)]
pub struct TopicTrie<T> {
    /// Node arena; index [`ROOT`] is the root. Freed slots are in `free`.
    nodes: Vec<Node<T>>,
    free: Vec<usize>,
    words: Words,
    len: usize,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            nodes: vec![Node::new(false)],
            free: Vec::new(),
            words: Words::default(),
            len: 0,
        }
    }
}

impl<T> TopicTrie<T> {
    /// Number of live trie nodes, including the root (always at least 1).
    ///
    /// A diagnostic: after every pair has been removed it is back to 1, which
    /// shows that `remove` prunes.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Number of distinct literal words currently interned (used by at least
    /// one pattern). A diagnostic, like [`node_count`](Self::node_count).
    pub fn word_count(&self) -> usize {
        self.words.ids.len()
    }

    fn alloc(&mut self, is_hash: bool) -> usize {
        let node = Node::new(is_hash);
        match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        }
    }

    fn release_node(&mut self, i: usize) {
        // Drop the node's maps now rather than when the slot is reused.
        self.nodes[i] = Node::new(false);
        self.free.push(i);
    }

    /// The existing child of `n` for pattern word `w`.
    fn child(&self, n: usize, w: &str) -> Option<(Edge, usize)> {
        let node = &self.nodes[n];
        match w {
            "#" => node.hash.map(|c| (Edge::Hash, c)),
            "*" => node.star.map(|c| (Edge::Star, c)),
            lit => {
                let id = self.words.lookup(lit)?;
                node.literal.get(&id).map(|&c| (Edge::Literal(id), c))
            }
        }
    }

    /// The child of `n` for pattern word `w`, created if missing.
    fn child_or_insert(&mut self, n: usize, w: &str) -> usize {
        if let Some((_, c)) = self.child(n, w) {
            return c;
        }
        match w {
            "#" => {
                let c = self.alloc(true);
                self.nodes[n].hash = Some(c);
                c
            }
            "*" => {
                let c = self.alloc(false);
                self.nodes[n].star = Some(c);
                c
            }
            lit => {
                let id = self.words.acquire(lit);
                let c = self.alloc(false);
                self.nodes[n].literal.insert(id, c);
                c
            }
        }
    }

    /// Adds `n` and its `#` epsilon closure to the set stamped `generation`.
    #[inline]
    fn add_closure(&self, mut n: usize, generation: u32, stamps: &mut [u32], set: &mut Vec<usize>) {
        loop {
            let Some(stamp) = stamps.get_mut(n) else {
                return;
            };
            if *stamp == generation {
                // Already in the set, and so is its closure.
                return;
            }
            *stamp = generation;
            set.push(n);
            match self.nodes[n].hash {
                Some(h) => n = h,
                None => return,
            }
        }
    }

    /// Leaves in `s.cur` the nodes active after reading all of `key`.
    fn run(&self, s: &mut Scratch, key: &str) {
        if s.stamps.len() < self.nodes.len() {
            s.stamps.resize(self.nodes.len(), 0);
        }
        s.cur.clear();
        s.next.clear();
        let generation = s.bump();
        self.add_closure(ROOT, generation, &mut s.stamps, &mut s.cur);
        for word in split_words(key) {
            if s.cur.is_empty() {
                return;
            }
            // The word's id, looked up (hashed) only if some active node has
            // literal children: `None` = not yet looked up.
            let mut id: Option<Option<usize>> = None;
            let generation = s.bump();
            let Scratch {
                stamps, cur, next, ..
            } = s;
            for &n in cur.iter() {
                let node = &self.nodes[n];
                if !node.literal.is_empty() {
                    let id = *id.get_or_insert_with(|| self.words.lookup(word));
                    if let Some(&c) = id.and_then(|id| node.literal.get(&id)) {
                        self.add_closure(c, generation, stamps, next);
                    }
                }
                if let Some(c) = node.star {
                    self.add_closure(c, generation, stamps, next);
                }
                if node.is_hash {
                    self.add_closure(n, generation, stamps, next);
                }
            }
            std::mem::swap(cur, next);
            next.clear();
        }
    }

    /// Every (pattern, values) of the trie, patterns rebuilt from the paths.
    fn bindings(&self) -> Vec<(String, &BTreeSet<T>)> {
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, String::new(), 0usize)];
        while let Some((n, pattern, depth)) = stack.pop() {
            let node = &self.nodes[n];
            if !node.values.is_empty() {
                out.push((pattern.clone(), &node.values));
            }
            let extend = |w: &str| {
                if depth == 0 {
                    w.to_owned()
                } else {
                    format!("{pattern}.{w}")
                }
            };
            for (&id, &c) in &node.literal {
                stack.push((c, extend(self.words.text(id)), depth + 1));
            }
            if let Some(c) = node.star {
                stack.push((c, extend("*"), depth + 1));
            }
            if let Some(c) = node.hash {
                stack.push((c, extend("#"), depth + 1));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

impl<T: fmt::Debug> fmt::Debug for TopicTrie<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Bindings<'a, T>(&'a TopicTrie<T>);
        impl<T: fmt::Debug> fmt::Debug for Bindings<'_, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map().entries(self.0.bindings()).finish()
            }
        }
        f.debug_struct("TopicTrie")
            .field("len", &self.len)
            .field("nodes", &self.node_count())
            .field("bindings", &Bindings(self))
            .finish()
    }
}

impl<T: Clone + Ord> TopicTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `pattern -> value`; false if that exact pair was already present.
    pub fn insert(&mut self, pattern: &str, value: T) -> bool {
        let mut n = ROOT;
        for w in split_words(pattern) {
            n = self.child_or_insert(n, w);
        }
        let added = self.nodes[n].values.insert(value);
        if added {
            self.len += 1;
        }
        added
    }

    /// Removes `pattern -> value`; false if it was not present.
    ///
    /// Nodes left with neither values nor children are pruned, and words no
    /// longer used by any pattern are forgotten.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        let mut path = Vec::new();
        let mut n = ROOT;
        for w in split_words(pattern) {
            let Some((edge, c)) = self.child(n, w) else {
                return false;
            };
            path.push((n, edge));
            n = c;
        }
        if !self.nodes[n].values.remove(value) {
            return false;
        }
        self.len -= 1;
        if self.len == 0 {
            // Nothing left: release everything, including the arena's capacity.
            *self = Self::default();
            return true;
        }
        while let Some((parent, edge)) = path.pop() {
            if !self.nodes[n].is_dead() {
                break;
            }
            let p = &mut self.nodes[parent];
            match edge {
                Edge::Literal(id) => {
                    p.literal.remove(&id);
                    self.words.release(id);
                }
                Edge::Star => p.star = None,
                Edge::Hash => p.hash = None,
            }
            self.release_node(n);
            n = parent;
        }
        true
    }

    /// Number of (pattern, value) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends every value whose pattern matches `key` to `out`, each once.
    ///
    /// The appended range is sorted. Entries already in `out` are left alone
    /// (and are not considered for deduplication). Allocation-free once the
    /// thread's scratch space and `out` have grown to size.
    pub fn matches_into(&self, key: &str, out: &mut Vec<T>) {
        let start = out.len();
        let reused = SCRATCH.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => {
                self.run(&mut s, key);
                self.emit(&s.cur, out);
                true
            }
            // Re-entered (e.g. from a `T::clone`): use a private scratch.
            Err(_) => false,
        });
        if reused != Ok(true) {
            let mut s = Scratch::default();
            self.run(&mut s, key);
            self.emit(&s.cur, out);
        }
        if let Some(tail) = out.get_mut(start..) {
            tail.sort_unstable();
            let mut w = 0;
            for r in 0..tail.len() {
                if w == 0 || tail[w - 1] != tail[r] {
                    tail.swap(w, r);
                    w += 1;
                }
            }
            out.truncate(start + w);
        }
    }

    fn emit(&self, active: &[usize], out: &mut Vec<T>) {
        for &n in active {
            out.extend(self.nodes[n].values.iter().cloned());
        }
    }

    /// The values whose patterns match `key`, each once, sorted.
    pub fn matches(&self, key: &str) -> Vec<T> {
        let mut out = Vec::new();
        self.matches_into(key, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trie's answer for `key` over `patterns` (value = pattern index),
    /// checked against the oracle.
    fn route(patterns: &[&str], key: &str) -> Vec<usize> {
        let mut t = TopicTrie::new();
        for (i, p) in patterns.iter().enumerate() {
            assert!(t.insert(p, i));
        }
        let got = t.matches(key);
        let want: Vec<usize> = patterns
            .iter()
            .enumerate()
            .filter(|(_, p)| topic_matches(p, key))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(got, want, "patterns {patterns:?} key {key:?}");
        got
    }

    fn hits(pattern: &str, key: &str) -> bool {
        let oracle = topic_matches(pattern, key);
        let trie = !route(&[pattern], key).is_empty();
        assert_eq!(oracle, trie, "pattern {pattern:?} key {key:?}");
        trie
    }

    #[test]
    fn empty_key_has_zero_words() {
        assert!(hits("", ""));
        assert!(hits("#", ""));
        assert!(hits("#.#", ""));
        assert!(hits("#.#.#", ""));
        assert!(!hits("*", ""));
        assert!(!hits("*.#", ""));
        assert!(!hits("#.*", ""));
        assert!(!hits("a", ""));
        assert!(!hits("", "a"));
        assert!(!hits("", "."));
    }

    #[test]
    fn dots_make_empty_words() {
        // "." is two empty words.
        assert!(hits(".", "."));
        assert!(hits("*.*", "."));
        assert!(hits("#", "."));
        assert!(hits("*.#", "."));
        assert!(hits("#.*", "."));
        assert!(!hits("*", "."));
        assert!(!hits("", "."));
        assert!(!hits("*.*.*", "."));
        // "a." is `a` plus an empty word.
        assert!(hits("a.", "a."));
        assert!(hits("a.*", "a."));
        assert!(hits("a.#", "a."));
        assert!(!hits("a", "a."));
        assert!(!hits("a.", "a"));
        assert!(hits(".a", ".a"));
        assert!(hits("*.a", ".a"));
        // "a..b" is three words, the middle one empty.
        assert!(hits("a..b", "a..b"));
        assert!(hits("a.*.b", "a..b"));
        assert!(hits("a.#.b", "a..b"));
        assert!(!hits("a.b", "a..b"));
        assert!(!hits("a..b", "a.b"));
        assert!(!hits("a.*.*.b", "a..b"));
    }

    #[test]
    fn star_matches_one_word_even_empty() {
        assert!(hits("*", "a"));
        assert!(hits("*", "*"));
        assert!(hits("*", "#"));
        assert!(!hits("*", "a.b"));
        assert!(hits("a.*", "a."));
        assert!(!hits("a.*", "a"));
        assert!(hits("*.b", ".b"));
        assert!(hits("*.*", "a.b"));
        assert!(!hits("*.*", "a"));
        assert!(!hits("*.*", "a.b.c"));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        for key in ["", "a", "a.b", "a.b.c", ".", "a..b"] {
            assert!(hits("#", key), "{key:?}");
            assert!(hits("#.#", key), "{key:?}");
            assert!(hits("#.#.#.#", key), "{key:?}");
        }
        assert!(hits("a.#", "a"));
        assert!(hits("a.#", "a.b.c"));
        assert!(!hits("a.#", "b"));
        assert!(!hits("a.#", ""));
        assert!(hits("#.a", "a"));
        assert!(hits("#.a", "x.y.a"));
        assert!(!hits("#.a", "a.x"));
    }

    #[test]
    fn combined_wildcards() {
        // *.#.* = at least two words.
        assert!(!hits("*.#.*", ""));
        assert!(!hits("*.#.*", "a"));
        assert!(hits("*.#.*", "a.b"));
        assert!(hits("*.#.*", "."));
        assert!(hits("*.#.*", "a.b.c.d"));
        // a.#.#.b
        assert!(hits("a.#.#.b", "a.b"));
        assert!(hits("a.#.#.b", "a.x.b"));
        assert!(hits("a.#.#.b", "a.x.y.z.b"));
        assert!(!hits("a.#.#.b", "a"));
        assert!(!hits("a.#.#.b", "a.b.c"));
        assert!(hits("a.#.#.b", "a.b.b"));
        // #.a.#
        assert!(hits("#.a.#", "a"));
        assert!(hits("#.a.#", "x.a"));
        assert!(hits("#.a.#", "a.x"));
        assert!(hits("#.a.#", "x.y.a.z.w"));
        assert!(!hits("#.a.#", "x.y"));
        assert!(!hits("#.a.#", ""));
        // # then *
        assert!(hits("#.*", "a"));
        assert!(hits("#.*.a", "x.a"));
        assert!(!hits("#.*.a", "a"));
        assert!(hits("a.*.#.*.b", "a.1.2.b"));
        assert!(!hits("a.*.#.*.b", "a.1.b"));
    }

    #[test]
    fn wildcards_only_as_whole_words() {
        assert!(hits("a#", "a#"));
        assert!(!hits("a#", "a"));
        assert!(!hits("a#", "ab"));
        assert!(!hits("a#", "a.b"));
        assert!(hits("**", "**"));
        assert!(!hits("**", "a"));
        assert!(hits("##", "##"));
        assert!(!hits("##", ""));
        assert!(!hits("##", "a"));
        assert!(hits("#a.b", "#a.b"));
        assert!(!hits("*a", "ba"));
        // A key word that is literally `*` or `#` is matched only by wildcards.
        assert!(hits("*", "*"));
        assert!(hits("#", "#"));
        assert!(hits("a.*", "a.#"));
        assert!(!hits("a.b", "a.*"));
    }

    #[test]
    fn case_and_spaces_are_significant() {
        assert!(!hits("a", "A"));
        assert!(!hits("a", " a"));
        assert!(hits(" a. b", " a. b"));
        assert!(!hits("a.b", "a. b"));
        assert!(hits("é.*", "é.ü"));
    }

    #[test]
    fn each_value_once_and_sorted() {
        let mut t = TopicTrie::new();
        for p in ["#", "a.#", "*.b", "a.b", "#.b", "#.#"] {
            assert!(t.insert(p, "q1"));
        }
        assert!(t.insert("a.*", "q0"));
        assert!(t.insert("c", "q2"));
        assert_eq!(t.matches("a.b"), vec!["q0", "q1"]);
        assert_eq!(t.matches("c"), vec!["q1", "q2"]);
        assert_eq!(t.matches(""), vec!["q1"]);
        // Existing entries of `out` are left alone.
        let mut out = vec!["q9", "q1"];
        t.matches_into("a.b", &mut out);
        assert_eq!(out, vec!["q9", "q1", "q0", "q1"]);
        // Several patterns for several values.
        let got = route(&["a.*", "*.b", "#", "a.b", "x"], "a.b");
        assert_eq!(got, vec![0, 1, 2, 3]);
    }

    #[test]
    fn duplicate_pairs_and_len() {
        let mut t = TopicTrie::new();
        assert!(t.is_empty());
        assert!(t.insert("a.b", 1));
        assert!(!t.insert("a.b", 1));
        assert!(t.insert("a.b", 2));
        assert!(t.insert("a.*", 1));
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
        assert!(!t.remove("a.b", &3));
        assert!(!t.remove("a.c", &1));
        assert!(!t.remove("a", &1));
        assert!(!t.remove("a.b.c", &1));
        assert!(t.remove("a.b", &1));
        assert!(!t.remove("a.b", &1));
        assert_eq!(t.len(), 2);
        assert_eq!(t.matches("a.b"), vec![1, 2]);
    }

    #[test]
    fn remove_prunes_and_keeps_others() {
        let mut t = TopicTrie::new();
        t.insert("a.b.c", 1);
        t.insert("a.b", 2);
        t.insert("a.#.c", 3);
        t.insert("x.*", 4);
        let full = t.node_count();
        assert_eq!(t.word_count(), 4);

        assert!(t.remove("a.b.c", &1));
        // The `c` under a.b is gone; `a.b` stays because it holds a value.
        assert_eq!(t.node_count(), full - 1);
        assert_eq!(t.matches("a.b.c"), vec![3]);
        assert_eq!(t.matches("a.b"), vec![2]);
        assert_eq!(t.word_count(), 4, "c is still used by a.#.c");

        assert!(t.remove("a.#.c", &3));
        assert_eq!(t.word_count(), 3);
        assert_eq!(t.matches("a.b.c"), Vec::<i32>::new());
        assert_eq!(t.matches("a.b"), vec![2]);
        assert_eq!(t.matches("x.y"), vec![4]);

        // Re-inserting reuses freed slots and works.
        assert!(t.insert("a.#.c", 5));
        assert_eq!(t.matches("a.q.c"), vec![5]);
        assert!(t.remove("a.#.c", &5));

        assert!(t.remove("a.b", &2));
        assert_eq!(t.matches("x.y"), vec![4]);
        assert!(t.remove("x.*", &4));
        assert!(t.is_empty());
        assert_eq!(t.node_count(), 1);
        assert_eq!(t.word_count(), 0);
        assert_eq!(t.matches("a.b"), Vec::<i32>::new());
    }

    #[test]
    fn churn_stays_bounded() {
        let mut t = TopicTrie::new();
        t.insert("keep.#", 0u32);
        let base = t.node_count();
        let mut peak = 0;
        for round in 0..50u32 {
            for i in 0..20u32 {
                t.insert(&format!("r{round}.n{i}.*.#"), i);
            }
            peak = peak.max(t.node_count());
            for i in 0..20u32 {
                assert!(t.remove(&format!("r{round}.n{i}.*.#"), &i));
            }
            assert_eq!(t.node_count(), base);
            assert_eq!(t.word_count(), 1);
        }
        // The arena never grew past one round's worth of nodes.
        assert!(t.nodes.len() <= peak);
        assert_eq!(t.matches("keep.x"), vec![0]);
    }

    #[test]
    fn unknown_key_words_do_not_intern() {
        let mut t = TopicTrie::new();
        t.insert("a.*", 1);
        let words = t.word_count();
        assert_eq!(t.matches("a.never-seen"), vec![1]);
        assert_eq!(t.matches("never.seen"), Vec::<i32>::new());
        assert_eq!(t.word_count(), words);
    }

    #[test]
    fn pathological_patterns_are_fast() {
        let mut t = TopicTrie::new();
        t.insert("#.#.#.#.#.#.a", 1);
        t.insert("#.*.#.*.#.*.#.*.#.b", 2);
        t.insert("*.#.*.#.*.#.*.#.*.#.*", 3);
        let key = vec!["x"; 199].join(".") + ".a";
        assert_eq!(t.matches(&key), vec![1, 3]);
        let key = vec!["x"; 200].join(".");
        assert_eq!(t.matches(&key), vec![3]);
    }

    #[test]
    fn clone_debug_default() {
        let mut t: TopicTrie<u8> = TopicTrie::default();
        t.insert("a.*.#", 7);
        t.insert("", 8);
        let c = t.clone();
        assert!(t.remove("a.*.#", &7));
        assert_eq!(c.matches("a.b"), vec![7]);
        assert_eq!(t.matches("a.b"), Vec::<u8>::new());
        let dbg = format!("{c:?}");
        assert!(dbg.contains("\"a.*.#\": {7}"), "{dbg}");
        assert!(dbg.contains("\"\": {8}"), "{dbg}");
    }

    #[test]
    fn send_sync() {
        fn assert_send_sync<X: Send + Sync>() {}
        assert_send_sync::<TopicTrie<String>>();
    }

    #[test]
    fn generation_wraparound() {
        let mut t = TopicTrie::new();
        t.insert("a.#", 1);
        t.insert("#.b", 2);
        SCRATCH.with(|s| s.borrow_mut().generation = u32::MAX - 3);
        for _ in 0..10 {
            assert_eq!(t.matches("a.x.b"), vec![1, 2]);
            assert_eq!(t.matches("a"), vec![1]);
        }
    }
}
