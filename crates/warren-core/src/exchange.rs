//! Exchanges and their binding indexes.
//!
//! Each exchange keeps its bindings twice: as a list (what was bound, for
//! unbind, listing and deletion) and as an index built for its kind (a hash map
//! for direct, a list for fanout, a compiled [`TopicTrie`] for topic, a
//! [`HeadersIndex`] for headers). Routing reads only the index.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::Error;
use crate::field::FieldTable;
use crate::headers::{HeadersBinding, HeadersIndex};
use crate::options::ExchangeKind;
use crate::queue::Queue;
use crate::sync::{fold_released, AtomicU64, Mutex, RwLock};
use crate::topic::TopicTrie;

/// Where a binding leads.
#[derive(Clone, Debug)]
pub(crate) enum Dest {
    Queue(Arc<Queue>),
    Exchange(Arc<Exchange>),
}

impl Dest {
    /// Identity: (kind, id). Queue and exchange ids come from one counter.
    pub(crate) fn id(&self) -> u64 {
        match self {
            Dest::Queue(q) => q.id,
            Dest::Exchange(e) => e.id,
        }
    }
}

impl PartialEq for Dest {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}
impl Eq for Dest {}
impl PartialOrd for Dest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Dest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.id().cmp(&other.id())
    }
}

#[derive(Debug)]
pub(crate) struct Binding {
    pub(crate) dest: Dest,
    pub(crate) routing_key: String,
    pub(crate) arguments: FieldTable,
    /// For a headers exchange: the binding's slot in the [`HeadersIndex`].
    headers_slot: Option<usize>,
}

#[derive(Debug)]
enum Index {
    Direct(HashMap<Box<str>, Vec<Dest>, foldhash::fast::RandomState>),
    Fanout(Vec<Dest>),
    Topic(TopicTrie<Dest>),
    Headers(HeadersIndex<Dest>),
}

#[derive(Debug)]
pub(crate) struct Bindings {
    pub(crate) list: Vec<Binding>,
    index: Index,
}

impl Bindings {
    fn new(kind: ExchangeKind) -> Self {
        Bindings {
            list: Vec::new(),
            index: match kind {
                ExchangeKind::Direct => Index::Direct(HashMap::default()),
                ExchangeKind::Fanout => Index::Fanout(Vec::new()),
                ExchangeKind::Topic => Index::Topic(TopicTrie::new()),
                ExchangeKind::Headers => Index::Headers(HeadersIndex::new()),
            },
        }
    }

    /// Adds a binding; binding the same thing twice is a no-op.
    pub(crate) fn add(
        &mut self,
        dest: Dest,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        if self.position(dest.id(), routing_key, arguments).is_some() {
            return Ok(());
        }
        let mut headers_slot = None;
        match &mut self.index {
            Index::Direct(m) => m.entry(routing_key.into()).or_default().push(dest.clone()),
            Index::Fanout(v) => v.push(dest.clone()),
            Index::Topic(t) => {
                t.insert(routing_key, dest.clone());
            }
            Index::Headers(h) => {
                headers_slot = Some(h.insert(HeadersBinding::compile(arguments)?, dest.clone()));
            }
        }
        self.list.push(Binding {
            dest,
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
            headers_slot,
        });
        Ok(())
    }

    fn position(&self, dest: u64, routing_key: &str, arguments: &FieldTable) -> Option<usize> {
        self.list.iter().position(|b| {
            b.dest.id() == dest
                && b.routing_key == routing_key
                && b.arguments.same_entries(arguments)
        })
    }

    /// Forgets every binding. For a broker going away: exchange-to-exchange
    /// bindings may form cycles (an exchange bound to itself, or `a` to `b`
    /// to `a`) that reference counting alone never frees.
    pub(crate) fn clear(&mut self) {
        self.list.clear();
        match &mut self.index {
            Index::Direct(m) => m.clear(),
            Index::Fanout(v) => v.clear(),
            Index::Topic(t) => *t = TopicTrie::new(),
            Index::Headers(h) => h.clear(),
        }
    }

    /// Removes one binding; false if there was no such binding.
    pub(crate) fn remove(&mut self, dest: u64, routing_key: &str, arguments: &FieldTable) -> bool {
        let Some(at) = self.position(dest, routing_key, arguments) else {
            return false;
        };
        let b = self.list.swap_remove(at);
        self.unindex(&b);
        true
    }

    /// Removes every binding to `dest`; returns how many.
    pub(crate) fn remove_dest(&mut self, dest: u64) -> usize {
        let mut removed = Vec::new();
        let mut i = 0;
        while i < self.list.len() {
            if self.list[i].dest.id() == dest {
                removed.push(self.list.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for b in &removed {
            self.unindex(b);
        }
        removed.len()
    }

    fn unindex(&mut self, b: &Binding) {
        let id = b.dest.id();
        match &mut self.index {
            Index::Direct(m) => {
                if let Some(v) = m.get_mut(b.routing_key.as_str()) {
                    if let Some(i) = v.iter().position(|d| d.id() == id) {
                        v.swap_remove(i);
                    }
                    if v.is_empty() {
                        m.remove(b.routing_key.as_str());
                    }
                }
            }
            Index::Fanout(v) => {
                if let Some(i) = v.iter().position(|d| d.id() == id) {
                    v.swap_remove(i);
                }
            }
            Index::Topic(t) => {
                // The trie holds each (pattern, destination) pair once; keep it
                // while another binding (other arguments) still needs it.
                let still_bound = self
                    .list
                    .iter()
                    .any(|o| o.dest.id() == id && o.routing_key == b.routing_key);
                if !still_bound {
                    t.remove(&b.routing_key, &b.dest);
                }
            }
            Index::Headers(h) => {
                // Each binding has its own slot, whatever else leads to the
                // same destination.
                if let Some(slot) = b.headers_slot {
                    h.remove(slot);
                }
            }
        }
    }

    /// Appends the destinations matching `keys` / `headers` (unsorted, may
    /// repeat).
    pub(crate) fn route(&self, keys: &[&str], headers: Option<&FieldTable>, out: &mut Vec<Dest>) {
        match &self.index {
            Index::Direct(m) => {
                for k in keys {
                    if let Some(v) = m.get(*k) {
                        out.extend(v.iter().cloned());
                    }
                }
            }
            Index::Fanout(v) => out.extend(v.iter().cloned()),
            Index::Topic(t) => {
                for k in keys {
                    t.matches_into(k, out);
                }
            }
            Index::Headers(h) => h.route_into(headers, out),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) id: u64,
    pub(crate) name: Arc<str>,
    pub(crate) kind: ExchangeKind,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) internal: bool,
    #[allow(dead_code)] // kept for listing and the wire's exchange.declare-ok checks
    pub(crate) arguments: FieldTable,
    pub(crate) alternate: Option<String>,
    pub(crate) bindings: RwLock<Bindings>,
    /// Publishes counted by any thread, and those folded in from the cells
    /// of routes no thread caches any more.
    counts: PublishCounts,
    /// One cell per route a thread caches (see [`thread_counts`](Self::thread_counts)).
    pub(crate) cells: Mutex<Vec<Arc<PublishCounts>>>,
}

/// How many publishes an exchange took: routed to at least one queue, or
/// unroutable (their sum is `published`).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct PublishCounts {
    routed: AtomicU64,
    unroutable: AtomicU64,
}

impl PublishCounts {
    /// Counts one publish, from any thread: a read-modify-write.
    pub(crate) fn add(&self, routed: bool) {
        let c = if routed {
            &self.routed
        } else {
            &self.unroutable
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one publish on a cell with one writer at a time (a thread's
    /// cached route, or a `Publisher`'s route, which `&mut` keeps to one
    /// thread at a time; see [`Exchange::thread_counts`]): a load and a
    /// store, no locked instruction, and no cache line shared with the
    /// exchange's other publishers.
    pub(crate) fn add_own(&self, routed: bool) {
        let c = if routed {
            &self.routed
        } else {
            &self.unroutable
        };
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }

    fn get(&self) -> (u64, u64) {
        (
            self.routed.load(Ordering::Relaxed),
            self.unroutable.load(Ordering::Relaxed),
        )
    }
}

impl Exchange {
    pub(crate) fn new(
        id: u64,
        name: Arc<str>,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let alternate = arguments
            .get("alternate-exchange")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        Exchange {
            id,
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            alternate,
            bindings: RwLock::new(Bindings::new(kind)),
            counts: PublishCounts::default(),
            cells: Mutex::new(Vec::new()),
        }
    }

    /// Counts one publish from a thread without a cell for it.
    pub(crate) fn count(&self, routed: bool) {
        self.counts.add(routed);
    }

    /// A counter cell for one route a thread caches: that thread counts
    /// its publishes on the route there with [`PublishCounts::add_own`].
    /// Many threads publishing to one exchange then do not all add to one
    /// shared counter, whose cache line would cross between their cores
    /// on every publish (and each add would be a locked instruction).
    ///
    /// A cell whose route is dropped (the topology changed, the cache was
    /// full, the thread ended) is folded into the shared counts the next
    /// time a cell is made or the counts are read, so there are never many
    /// more cells than routes cached.
    pub(crate) fn thread_counts(&self) -> Arc<PublishCounts> {
        let cell = Arc::new(PublishCounts::default());
        let mut cells = self.cells.lock();
        self.fold_released(&mut cells);
        cells.push(cell.clone());
        cell
    }

    /// Publishes so far: (routed, unroutable).
    pub(crate) fn published(&self) -> (u64, u64) {
        let mut cells = self.cells.lock();
        self.fold_released(&mut cells);
        cells.iter().fold(self.counts.get(), |(r, u), c| {
            let (cr, cu) = c.get();
            (r.wrapping_add(cr), u.wrapping_add(cu))
        })
    }

    /// Moves the counts of cells no route holds any more into the shared
    /// counts. Only this list holds such a cell, and no new holder can
    /// appear (the list's lock is held), so its last writer is done: its
    /// drop of the route released the counts, and the fence acquires them.
    fn fold_released(&self, cells: &mut Vec<Arc<PublishCounts>>) {
        fold_released(cells, |c| {
            let (r, u) = c.get();
            self.counts.routed.fetch_add(r, Ordering::Relaxed);
            self.counts.unroutable.fetch_add(u, Ordering::Relaxed);
        });
    }
}
