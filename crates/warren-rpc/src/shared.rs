//! What the transports share: counters, the map of calls waiting for a
//! reply, and the reading of replies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::transport::{Reply, TransportStats};
use crate::util::{log_debug, log_warn, BuildCounterHasher, IdGen};
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
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Calls waiting for their reply, by the counter of their `_msg_id`.
pub(crate) type Pending = Mutex<HashMap<u64, oneshot::Sender<Reply>, BuildCounterHasher>>;

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

/// Reads one reply body: completes the call waiting for its `_msg_id`, or
/// drops it (counted as late or malformed). A call-monitor heartbeat
/// (`ending: false`, no result) is ignored.
pub(crate) fn complete_reply(body: &[u8], pending: &Pending, ids: &IdGen, stats: &Stats) {
    let read = read_reply(body, |msg_id, _unique_id, result, failure, ending| {
        let outcome = match (failure, result) {
            (Some(f), _) => Reply::Failure(Box::new(f)),
            (None, Some(r)) => Reply::Result(r),
            (None, None) if ending => Reply::Result(RawValue::NULL.to_owned()),
            // A call-monitor heartbeat: nothing to hand over.
            (None, None) => return None,
        };
        Some((msg_id.and_then(|m| ids.parse(m)), outcome))
    });
    let (key, outcome) = match read {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            bump(&stats.malformed);
            log_warn!("dropping a malformed reply: {}", e);
            return;
        }
    };
    let waiter = key.and_then(|key| pending.lock().remove(&key));
    match waiter.map(|tx| tx.send(outcome)) {
        Some(Ok(())) => bump(&stats.replies_received),
        _ => {
            bump(&stats.late_replies);
            log_debug!("dropping a reply nobody waits for: {:?}", key);
        }
    }
}

/// Where oslo's rabbit driver sends a request for a target.
pub(crate) enum RequestRoute<'a> {
    /// Fanout: exchange `<topic>_fanout`, routing key `""`.
    Fanout(String),
    /// The target's topic exchange, routing key `topic` or `topic.server`.
    Topic(std::borrow::Cow<'a, str>),
}

/// The route of a request for `target`, as oslo's rabbit driver lays it out
/// (shared by every transport, so they cannot drift apart).
pub(crate) fn request_route(target: &crate::Target) -> RequestRoute<'_> {
    if target.fanout {
        return RequestRoute::Fanout(format!("{}_fanout", target.topic));
    }
    match &target.server {
        Some(s) => {
            let mut k = String::with_capacity(target.topic.len() + 1 + s.len());
            k.push_str(&target.topic);
            k.push('.');
            k.push_str(s);
            RequestRoute::Topic(k.into())
        }
        None => RequestRoute::Topic(target.topic.as_str().into()),
    }
}
