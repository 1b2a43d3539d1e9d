//! What the transports share: counters, the map of calls waiting for a
//! reply, the reading of replies, and the memory of message ids seen.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::{oneshot, Notify};

use crate::error::TransportError;
use crate::transport::{Reply, TransportStats};
use crate::util::{log_debug, log_warn, parse_hex, BuildCounterHasher, IdGen, SmallStr};
use crate::wire::read_reply;

/// A transport's counters (see [`TransportStats`]).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests_sent: AtomicU64,
    pub(crate) replies_received: AtomicU64,
    pub(crate) late_replies: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) undeliverable_replies: AtomicU64,
    pub(crate) notifications_sent: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) heartbeats_received: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> TransportStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            requests_sent: g(&self.requests_sent),
            replies_received: g(&self.replies_received),
            late_replies: g(&self.late_replies),
            malformed: g(&self.malformed),
            undeliverable_replies: g(&self.undeliverable_replies),
            notifications_sent: g(&self.notifications_sent),
            reconnects: g(&self.reconnects),
            duplicates: g(&self.duplicates),
            heartbeats_received: g(&self.heartbeats_received),
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A call waiting for its reply.
#[derive(Debug)]
pub(crate) struct Waiter {
    reply: oneshot::Sender<Reply>,
    /// Told of each call-monitor heartbeat, for a monitored call.
    beat: Option<Arc<Notify>>,
}

/// Calls waiting for their reply, by the counter of their `_msg_id`.
pub(crate) type Pending = Mutex<HashMap<u64, Waiter, BuildCounterHasher>>;

/// Removes a pending call's entry unless the reply reader already did.
pub(crate) struct PendingGuard<'a> {
    pub(crate) pending: &'a Pending,
    pub(crate) key: u64,
    pub(crate) armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pending.lock().remove(&self.key);
        }
    }
}

/// The waiting end of a call registered in [`Pending`].
pub(crate) struct ReplyWait {
    rx: oneshot::Receiver<Reply>,
    beat: Option<Arc<Notify>>,
    monitor: Option<Duration>,
}

/// Registers a call as `key`, before its request is sent; with a
/// call-monitor timeout, heartbeats for it are watched.
pub(crate) fn expect_reply(
    pending: &Pending,
    key: u64,
    call_monitor_timeout: Option<Duration>,
) -> (PendingGuard<'_>, ReplyWait) {
    let (tx, rx) = oneshot::channel();
    let beat = call_monitor_timeout.map(|_| Arc::new(Notify::new()));
    pending.lock().insert(
        key,
        Waiter {
            reply: tx,
            beat: beat.clone(),
        },
    );
    let guard = PendingGuard {
        pending,
        key,
        armed: true,
    };
    let wait = ReplyWait {
        rx,
        beat,
        monitor: call_monitor_timeout,
    };
    (guard, wait)
}

impl ReplyWait {
    /// The reply. With a call-monitor timeout, as oslo's reply waiter: fails
    /// once neither the reply nor a heartbeat came for that long (each
    /// heartbeat starts the wait afresh). The call's own timeout is the
    /// caller's to enforce.
    ///
    /// # Errors
    ///
    /// [`TransportError::CallMonitorTimeout`]; [`TransportError::Closed`]
    /// when the reply reader went away.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it abandons the call (with the guard, its
    /// entry goes).
    pub(crate) async fn wait(self) -> Result<Reply, TransportError> {
        let ReplyWait { rx, beat, monitor } = self;
        match (beat, monitor) {
            // Boxed: its timer would make this future, which every call's
            // future holds, several times larger; monitored calls are the
            // rare ones.
            (Some(beat), Some(limit)) => Box::pin(wait_monitored(rx, &beat, limit)).await,
            _ => rx.await.map_err(|_| TransportError::Closed),
        }
    }
}

/// [`ReplyWait::wait`] for a monitored call.
async fn wait_monitored(
    mut rx: oneshot::Receiver<Reply>,
    beat: &Notify,
    limit: Duration,
) -> Result<Reply, TransportError> {
    loop {
        tokio::select! {
            biased;
            r = &mut rx => return r.map_err(|_| TransportError::Closed),
            // A heartbeat: wait afresh.
            _ = beat.notified() => {}
            _ = tokio::time::sleep(limit) => {
                return Err(TransportError::CallMonitorTimeout(limit))
            }
        }
    }
}

/// Reads one reply body: completes the call waiting for its `_msg_id`, or
/// drops it (counted as late or malformed). A call-monitor heartbeat
/// (`ending: false`, no result, no failure) restarts the waiting call's
/// call-monitor timeout, and is otherwise ignored (never late: one may
/// cross the final reply).
pub(crate) fn complete_reply(body: &[u8], pending: &Pending, ids: &IdGen, stats: &Stats) {
    let read = read_reply(body, |msg_id, _unique_id, result, failure, ending| {
        let outcome = match (failure, result) {
            (Some(f), _) => Some(Reply::Failure(Box::new(f))),
            (None, Some(r)) => Some(Reply::Result(r)),
            (None, None) if ending => Some(Reply::Result(RawValue::NULL.to_owned())),
            // A call-monitor heartbeat.
            (None, None) => None,
        };
        (msg_id.and_then(|m| ids.parse(m)), outcome)
    });
    let (key, outcome) = match read {
        Ok((key, Some(outcome))) => (key, outcome),
        Ok((key, None)) => {
            let map = pending.lock();
            if let Some(beat) = key.and_then(|k| map.get(&k)).and_then(|w| w.beat.as_ref()) {
                beat.notify_one();
                bump(&stats.heartbeats_received);
            }
            return;
        }
        Err(e) => {
            bump(&stats.malformed);
            log_warn!("dropping a malformed reply: {}", e);
            return;
        }
    };
    let waiter = key.and_then(|key| pending.lock().remove(&key));
    match waiter.map(|w| w.reply.send(outcome)) {
        Some(Ok(())) => bump(&stats.replies_received),
        _ => {
            bump(&stats.late_replies);
            log_debug!("dropping a reply nobody waits for: {:?}", key);
        }
    }
}

/// The call-monitor timeout a request carries (`_timeout`, seconds), if
/// it is a usable one.
pub(crate) fn call_monitor_timeout(seconds: Option<f64>) -> Option<Duration> {
    seconds
        .filter(|s| *s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

/// A message's `_unique_id`, as remembered: oslo's (and warren-rpc's) are
/// 32 hex digits, kept as a number; anything else as its text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum SeenKey {
    Hex(u128),
    Text(Box<str>),
}

impl SeenKey {
    /// The key of a `_unique_id`; `None` for none (or an empty one): such a
    /// message is never taken for a duplicate.
    pub(crate) fn of(unique_id: Option<&str>) -> Option<SeenKey> {
        let id = unique_id.filter(|s| !s.is_empty())?;
        if id.len() == 32 {
            if let Some(n) = parse_hex(id.as_bytes()) {
                return Some(SeenKey::Hex(n));
            }
        }
        Some(SeenKey::Text(id.into()))
    }
}

/// The `_unique_id`s a listener received last: oslo's `_MsgIdCache`, which
/// drops a message whose id it has seen (a redelivery after a lost
/// acknowledgement), bounded: the oldest id is forgotten first.
///
/// oslo keeps 16 ids. Here the bound follows the listener's prefetch (twice
/// it, at least oslo's 16, at most 4096): the ids that matter are those of
/// messages handled whose acknowledgement the connection may have lost,
/// and there are at most as many as a listener may hold.
#[derive(Debug)]
pub(crate) struct SeenIds {
    capacity: usize,
    order: VecDeque<SeenKey>,
    /// foldhash, randomly seeded: several times faster than SipHash on
    /// these short keys, and still seeded, so ids sent to a listener cannot
    /// be chosen to collide.
    set: HashSet<SeenKey, foldhash::fast::RandomState>,
}

impl SeenIds {
    /// oslo's `DUP_MSG_CHECK_SIZE`.
    pub(crate) const OSLO_CAPACITY: usize = 16;
    const MAX_CAPACITY: usize = 4096;

    /// Remembers the last `capacity` ids (at least 1).
    pub(crate) fn new(capacity: usize) -> SeenIds {
        let capacity = capacity.max(1);
        SeenIds {
            capacity,
            order: VecDeque::with_capacity(capacity.min(64)),
            set: HashSet::with_capacity_and_hasher(capacity.min(64), Default::default()),
        }
    }

    /// Sized for a listener holding up to `prefetch` messages per queue (0:
    /// no limit).
    pub(crate) fn for_prefetch(prefetch: u32) -> SeenIds {
        let n = match prefetch {
            0 => Self::MAX_CAPACITY,
            p => (p as usize).saturating_mul(2),
        };
        SeenIds::new(n.clamp(Self::OSLO_CAPACITY, Self::MAX_CAPACITY))
    }

    /// Whether `key` is among the ids remembered.
    pub(crate) fn contains(&self, key: &SeenKey) -> bool {
        self.set.contains(key)
    }

    /// Remembers `key` (forgetting the oldest when full); remembering it
    /// again changes nothing. Whether it was new: a listener checks and
    /// remembers an id with one look-up.
    pub(crate) fn insert(&mut self, key: SeenKey) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(key);
        true
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// Where oslo's rabbit driver sends a request for a target.
pub(crate) enum RequestRoute {
    /// Fanout: exchange `<topic>_fanout`, routing key `""`.
    Fanout(String),
    /// The target's topic exchange, routing key `topic` or `topic.server`
    /// (inline when short: no allocation per request).
    Topic(SmallStr<64>),
}

/// The route of a request for `target`, as oslo's rabbit driver lays it out
/// (shared by every transport, so they cannot drift apart).
pub(crate) fn request_route(target: &crate::Target) -> RequestRoute {
    if target.fanout {
        return RequestRoute::Fanout(format!("{}_fanout", target.topic));
    }
    match &target.server {
        Some(s) => RequestRoute::Topic(SmallStr::concat(&[&target.topic, ".", s])),
        None => RequestRoute::Topic(SmallStr::from(target.topic.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(n: u128) -> String {
        format!("{n:032x}")
    }

    #[test]
    fn keys_of_unique_ids() {
        let id = "cb5a5ab59f2d408897029ad1a9e30611";
        assert_eq!(
            SeenKey::of(Some(id)),
            Some(SeenKey::Hex(0xcb5a5ab59f2d408897029ad1a9e30611))
        );
        // Upper case is the same number; other text stays text.
        assert_eq!(
            SeenKey::of(Some(&id.to_ascii_uppercase())),
            SeenKey::of(Some(id))
        );
        assert_eq!(
            SeenKey::of(Some("not-a-uuid")),
            Some(SeenKey::Text("not-a-uuid".into()))
        );
        assert_eq!(SeenKey::of(Some("")), None);
        assert_eq!(SeenKey::of(None), None);
    }

    #[test]
    fn seen_ids_are_bounded_and_forget_the_oldest_first() {
        let mut seen = SeenIds::new(3);
        let k = |n| SeenKey::of(Some(&hex(n))).unwrap();
        for n in 0..3 {
            assert!(!seen.contains(&k(n)));
            assert!(seen.insert(k(n)));
        }
        assert!(!seen.insert(k(1)));
        assert_eq!(seen.len(), 3, "remembering again adds nothing");
        seen.insert(k(3));
        assert_eq!(seen.len(), 3);
        assert!(!seen.contains(&k(0)), "the oldest went");
        assert!((1..4).all(|n| seen.contains(&k(n))));
        // Many distinct ids: never more than the bound, and the last ones
        // are all there.
        for n in 4..1000 {
            seen.insert(k(n));
        }
        assert_eq!(seen.len(), 3);
        assert!((997..1000).all(|n| seen.contains(&k(n))));
    }

    /// Replies need no memory of ids: a call's `_msg_id` is used once, so
    /// a redelivered final reply finds no call waiting and is dropped (oslo's
    /// reply waiter does the same: its `_MsgIdCache` is never filled).
    #[test]
    fn a_duplicated_reply_completes_its_call_once() {
        let ids = IdGen::new();
        let stats = Stats::default();
        let pending: Pending = Mutex::new(HashMap::default());
        let (key, msg_id) = ids.next();
        let (mut guard, wait) = expect_reply(&pending, key, None);
        let mut rx = wait.rx;
        let result = RawValue::from_string("42".into()).unwrap();
        let body = crate::wire::encode_reply(
            Some(&result),
            None,
            true,
            msg_id.as_str(),
            hex(7).as_str(),
            crate::wire::Wrap::Envelope,
        )
        .unwrap();
        complete_reply(&body, &pending, &ids, &stats);
        complete_reply(&body, &pending, &ids, &stats);
        match rx.try_recv() {
            Ok(Reply::Result(r)) => assert_eq!(r.get(), "42"),
            other => panic!("expected the result, got {other:?}"),
        }
        guard.armed = false;
        let st = stats.snapshot();
        assert_eq!((st.replies_received, st.late_replies), (1, 1));
    }

    #[test]
    fn the_bound_follows_the_prefetch() {
        assert_eq!(SeenIds::for_prefetch(1).capacity, SeenIds::OSLO_CAPACITY);
        assert_eq!(SeenIds::for_prefetch(64).capacity, 128);
        assert_eq!(SeenIds::for_prefetch(0).capacity, 4096);
        assert_eq!(SeenIds::for_prefetch(u32::MAX).capacity, 4096);
    }
}
