//! Topic patterns: the reference matcher and the compiled trie.
//!
//! STUB: a linear scan until the compiled trie lands. The signatures are the
//! contract the broker codes against.

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

/// A compiled set of topic bindings (pattern, value).
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    entries: Vec<(String, T)>,
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            entries: Vec::new(),
        }
    }
}

impl<T: Clone + Ord> TopicTrie<T> {
    /// An empty trie.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `pattern -> value`; false if that exact pair was already present.
    pub fn insert(&mut self, pattern: &str, value: T) -> bool {
        if self
            .entries
            .iter()
            .any(|(p, v)| p == pattern && *v == value)
        {
            return false;
        }
        self.entries.push((pattern.to_owned(), value));
        true
    }

    /// Removes `pattern -> value`; false if it was not present.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        match self
            .entries
            .iter()
            .position(|(p, v)| p == pattern && v == value)
        {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// Number of (pattern, value) pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends every value whose pattern matches `key` to `out`, each once.
    pub fn matches_into(&self, key: &str, out: &mut Vec<T>) {
        let start = out.len();
        for (p, v) in &self.entries {
            if topic_matches(p, key) {
                out.push(v.clone());
            }
        }
        out[start..].sort_unstable();
        let mut w = start;
        for r in start..out.len() {
            if w == start || out[w - 1] != out[r] {
                out.swap(w, r);
                w += 1;
            }
        }
        out.truncate(w);
    }

    /// The values whose patterns match `key`, each once, sorted.
    pub fn matches(&self, key: &str) -> Vec<T> {
        let mut out = Vec::new();
        self.matches_into(key, &mut out);
        out
    }
}
