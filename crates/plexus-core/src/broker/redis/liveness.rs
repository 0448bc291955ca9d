//! This node's liveness as the cluster sees it: when its last heartbeat succeeded (the node's
//! partition guard closes its clients before the others may reap it, see
//! `node/partition.rs`), and what it does when a heartbeat finds that it was reaped meanwhile
//! (cut off from Redis while the others still reached it): it writes its presences, counters
//! and connection registry again, as after a reconnect. While cut off, the broker counts as
//! down (it fails fast).

use super::RedisBroker;
use crate::broker::Liveness;
use crate::node::CUT_OFF_AFTER;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When the last successful heartbeat started, read without a lock (every command asks).
pub(super) struct LastBeat {
    base: Instant,
    /// Microseconds from `base`, plus one; 0 before the first heartbeat.
    at: AtomicU64,
}

impl Default for LastBeat {
    fn default() -> Self {
        LastBeat {
            base: Instant::now(),
            at: AtomicU64::new(0),
        }
    }
}

impl LastBeat {
    fn get(&self) -> Option<Instant> {
        match self.at.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.base + Duration::from_micros(n - 1)),
        }
    }

    /// Records `started` (never going back); returns whether it is the first.
    fn set(&self, started: Instant) -> bool {
        let n = started.saturating_duration_since(self.base).as_micros() as u64 + 1;
        self.at.fetch_max(n, Ordering::AcqRel) == 0
    }
}

impl RedisBroker {
    /// A heartbeat that started at `started` succeeded; `replies` are those of its `SET` and
    /// `SADD <prefix>:nodes <node>`. The `SADD` adds this node back only if it was missing:
    /// another node reaped it (its last step removes the node from the set), or Redis lost
    /// its data. Either way what this node had in Redis is gone: it is written again.
    pub(super) fn heartbeat_confirmed(
        self: &Arc<Self>,
        started: Instant,
        replies: &[redis::Value],
    ) {
        let first = self.last_beat.set(started);
        let added = matches!(replies.get(1), Some(redis::Value::Int(1)));
        if first || !added {
            return;
        }
        tracing::warn!(
            node = %self.node_id,
            "this node was missing from the cluster (reaped while cut off from Redis, or Redis \
             lost its data): writing its presences, counters and connections again"
        );
        let broker = self.clone();
        tokio::spawn(async move {
            match broker.reannounce().await {
                Ok(()) => broker.rewrite_registry(),
                Err(e) => broker.failed("re-announce after a reap", &e),
            }
        });
    }

    /// No heartbeat has succeeded for 3/4 of `node_timeout` (the partition guard's threshold):
    /// the subscription may still look up (a silent link breaks no connection), but Redis does
    /// not answer, so the broker fails fast instead of waiting on each command's timeout, and
    /// `/health` says `broker_up: false`. The heartbeat, which does not ask this, ends it.
    pub(super) fn cut_off(&self) -> bool {
        self.last_beat
            .get()
            .is_some_and(|l| l.elapsed() >= self.cut_off_after())
    }

    /// The subscription made at `up_since` must be made again: Redis has not answered a
    /// heartbeat for 3/4 of `node_timeout`, and that subscription is at least as old (a fresh
    /// one gets the same time to prove itself, so that a slow heartbeat causes no churn).
    pub(super) fn subscription_stale(&self, up_since: Instant) -> bool {
        self.cut_off() && up_since.elapsed() >= self.cut_off_after()
    }

    fn cut_off_after(&self) -> Duration {
        self.cfg.node_timeout * CUT_OFF_AFTER.0 / CUT_OFF_AFTER.1
    }

    /// See [`crate::broker::Broker::liveness`].
    pub(super) fn liveness_now(&self) -> Option<Liveness> {
        Some(Liveness {
            confirmed: self.last_beat.get()?,
            timeout: self.cfg.node_timeout,
        })
    }
}
