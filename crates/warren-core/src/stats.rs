//! Plain snapshots of the broker's counters.

/// Counters of one queue.
///
/// Conservation: `enqueued = ready + unacked + acked + discarded + dropped +
/// expired + purged + deleted` (each copy a queue accepted is in exactly one
/// of those places). `rejected` copies never entered; `dead_lettered` counts
/// copies that left for the dead-letter exchange (a subset of `discarded`,
/// `dropped`, `expired` and `rejected`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// Ready messages.
    pub ready: u64,
    /// Body bytes of the ready messages (what `x-max-length-bytes` bounds).
    pub ready_bytes: u64,
    /// Delivered and not yet answered.
    pub unacked: u64,
    /// Consumers.
    pub consumers: u32,
    /// Copies accepted.
    pub enqueued: u64,
    /// Copies acknowledged (or received in no-ack mode).
    pub acked: u64,
    /// Copies answered with nack/reject without requeue.
    pub discarded: u64,
    /// Copies dropped from the head by `drop-head` overflow.
    pub dropped: u64,
    /// Copies refused by `reject-publish` / `reject-publish-dlx`.
    pub rejected: u64,
    /// Copies expired by TTL.
    pub expired: u64,
    /// Copies removed by purge.
    pub purged: u64,
    /// Copies removed because the queue was deleted.
    pub deleted: u64,
    /// Copies sent to the dead-letter exchange.
    pub dead_lettered: u64,
}

/// Counters of one exchange.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// The exchange's name.
    pub name: String,
    /// Messages published to it.
    pub published: u64,
    /// Of those, how many reached at least one queue.
    pub routed: u64,
    /// Of those, how many reached none.
    pub unroutable: u64,
}

/// A snapshot of the whole broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Per queue, sorted by name.
    pub queues: Vec<QueueStats>,
    /// Per exchange, sorted by name (`""` is the default exchange).
    pub exchanges: Vec<ExchangeStats>,
    /// Sum of `dropped` over queues, including deleted ones.
    pub dropped: u64,
    /// Sum of `dead_lettered`, including deleted queues.
    pub dead_lettered: u64,
    /// Sum of `expired`, including deleted queues.
    pub expired: u64,
    /// Publishes that reached no queue, over all exchanges, deleted ones
    /// included.
    pub unroutable: u64,
    /// Body bytes of all ready messages: a cheap measure of the memory the
    /// broker holds (what `warren-wire`'s memory alarm watches).
    pub ready_bytes: u64,
}
