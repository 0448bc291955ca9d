//! The reconnect grace (`webhooks.disconnect_grace_ms`, docs/hooks.md "Reconnect grace"): the
//! `disconnect` of a user's connection, and the `presence_leave` and `channel_vacated` its
//! teardown causes, are held for the grace instead of being sent at once. Each held event is
//! a record in the cluster ([`HoldKey`], kept by the broker: Redis for a cluster, the memory
//! broker's table for a node alone) that the event pairing with it claims:
//!
//! | held | claimed by | then sent instead |
//! |---|---|---|
//! | `disconnect` | the same user's (`sub`) next connect, on any node | `reconnect` (`conn`, `previous_conn`), if configured, instead of `connect` |
//! | `presence_leave` | the same member's next presence join of that topic, on any node | nothing (the `presence_join` is suppressed too) |
//! | `channel_vacated` | the topic's next `channel_occupied`, whoever joins, on any node | nothing (the `channel_occupied` is suppressed too; the Pusher sink's pair as well) |
//!
//! At the end of the grace the holding node releases each record: a record still there was
//! not claimed and its event is sent then (in the order the events were held); a record gone
//! was claimed and its event is dropped. Claiming and releasing are each one atomic step on
//! the same record, so exactly one of them wins, cluster-wide.
//!
//! Anonymous connections are never held. A node holds at most `webhooks.disconnect_grace_max`
//! events ([`Grace::held`]); a teardown whose events do not fit is sent at once, never
//! dropped. A broker that cannot record a hold (Redis down) has its event sent at the end of
//! the grace as if unclaimed; a release that fails sends the event too (a duplicate rather
//! than a loss). A held `disconnect` keeps its connection in the node's registry of live
//! connections until it is resolved (or claimed: the claimer removes it), so that if the node
//! dies meanwhile the node that reaps it still reports the disconnect (`reaped: true`); a held
//! `presence_leave` or `channel_vacated` is lost then (documented). A draining node keeps its holds until
//! their grace ends or the drain's deadline comes, whichever is first ([`Grace::flush`]), so
//! that clients reconnecting to other nodes are paired.

use super::{EventKind, Webhooks};
use crate::broker::{Broker, HoldKey};
use crate::ConnId;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// The default of `webhooks.disconnect_grace_max`: events held at once on a node.
pub const DEFAULT_MAX_HELD: usize = 10_000;

/// Figures of the grace (the `/metrics` counters `plexus_webhook_grace_*`).
#[derive(Default)]
pub struct GraceCounters {
    /// Events held.
    pub held: AtomicU64,
    /// Held events whose record the broker took (only those can be claimed: a connect that
    /// comes before its record is written is not paired).
    pub recorded: AtomicU64,
    /// Held events sent at the end of the grace (nothing claimed them).
    pub sent: AtomicU64,
    /// Pairs suppressed (counted by the node whose connect, presence join or occupied claimed a
    /// held event).
    pub suppressed: AtomicU64,
    /// Events sent at once because `webhooks.disconnect_grace_max` events were held already.
    pub over_cap: AtomicU64,
}

/// How a held event is sent if nothing claims it.
pub(crate) enum Emit {
    /// An event of Plexus's sink: kind, share key, fields.
    Plexus(EventKind, Option<Arc<str>>, Value),
    /// `channel_vacated` of a topic, to Plexus's sink and (a Pusher channel) Pusher's.
    Vacated {
        topic: Arc<str>,
        share: Option<Arc<str>>,
    },
}

/// One held event: its record's key and value (what a claim gets: for a `disconnect`, the
/// public id of the connection that ended, which `reconnect` names), and how it is sent.
pub(crate) struct Held {
    pub key: HoldKey,
    pub value: String,
    pub emit: Emit,
}

/// The events one teardown holds, sent in this order if unclaimed, and the registry entry of
/// the connection (closed once its `disconnect` is resolved).
#[derive(Default)]
pub(crate) struct HoldGroup {
    pub events: Vec<Held>,
    pub registry: Option<ConnId>,
}

/// A group waiting for the end of its grace: its events with the ids of their records, and
/// which of them the broker recorded (those it did not are sent unclaimed).
struct Waiting {
    deadline: Instant,
    events: Vec<(Held, String)>,
    recorded: oneshot::Receiver<Vec<bool>>,
    registry: Option<ConnId>,
}

/// The holds of a node (see the module).
pub struct Grace {
    grace: Duration,
    max_held: usize,
    broker: Arc<dyn Broker>,
    webhooks: Arc<Webhooks>,
    pusher: Option<Arc<Webhooks>>,
    node_id: Arc<str>,
    seq: AtomicU64,
    queue: Mutex<VecDeque<Waiting>>,
    /// Events in `queue`, and those being resolved.
    held_now: AtomicUsize,
    wake: Notify,
    /// Resolve everything now (the end of a drain).
    flushing: AtomicBool,
    pub counters: GraceCounters,
}

impl Grace {
    /// Starts the task that resolves holds at the end of their grace.
    pub(crate) fn start(
        grace: Duration,
        max_held: usize,
        broker: Arc<dyn Broker>,
        webhooks: Arc<Webhooks>,
        pusher: Option<Arc<Webhooks>>,
        node_id: Arc<str>,
    ) -> Arc<Self> {
        let g = Arc::new(Grace {
            grace,
            max_held,
            broker,
            webhooks,
            pusher,
            node_id,
            seq: AtomicU64::new(0),
            queue: Mutex::new(VecDeque::new()),
            held_now: AtomicUsize::new(0),
            wake: Notify::new(),
            flushing: AtomicBool::new(false),
            counters: GraceCounters::default(),
        });
        tokio::spawn(run(Arc::downgrade(&g)));
        g
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Events held now on this node.
    pub fn held(&self) -> usize {
        self.held_now.load(Ordering::Acquire)
    }

    /// Whether `kind` is held (Plexus's sink sends it).
    pub(crate) fn holds(&self, kind: EventKind) -> bool {
        self.webhooks.enabled(kind)
    }

    /// Holds `group` for the grace; sends it at once when the cap is reached or the node is
    /// flushing.
    pub(crate) fn hold(self: &Arc<Self>, group: HoldGroup) {
        if group.events.is_empty() {
            if let Some(conn) = group.registry {
                self.broker.clone().connection_close(conn);
            }
            return;
        }
        let n = group.events.len();
        let fits = self
            .held_now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + n <= self.max_held).then_some(held + n)
            })
            .is_ok();
        if !fits || self.flushing.load(Ordering::Acquire) {
            if fits {
                self.held_now.fetch_sub(n, Ordering::AcqRel);
            } else {
                let over = self
                    .counters
                    .over_cap
                    .fetch_add(n as u64, Ordering::Relaxed);
                if over.is_multiple_of(1000) {
                    tracing::warn!(
                        held = self.held(),
                        "webhooks.disconnect_grace_max events held: sending disconnects at once"
                    );
                }
            }
            for held in group.events {
                self.send(held.emit);
            }
            if let Some(conn) = group.registry {
                self.broker.clone().connection_close(conn);
            }
            return;
        }
        self.counters.held.fetch_add(n as u64, Ordering::Relaxed);
        let ids: Vec<String> = (0..n)
            .map(|_| {
                let seq = self.seq.fetch_add(1, Ordering::Relaxed);
                format!("{}/{seq}", self.node_id)
            })
            .collect();
        // Recorded in the background (teardown is synchronous); the group is resolved after
        // its records are (long before the end of the grace, unless the broker is slow).
        let records: Vec<(HoldKey, String, String)> = group
            .events
            .iter()
            .zip(&ids)
            .map(|(h, id)| (h.key.clone(), id.clone(), h.value.clone()))
            .collect();
        let (tx, recorded) = oneshot::channel();
        self.queue.lock().push_back(Waiting {
            deadline: Instant::now() + self.grace,
            events: group.events.into_iter().zip(ids).collect(),
            recorded,
            registry: group.registry,
        });
        self.wake.notify_one();
        let me = self.clone();
        tokio::spawn(async move {
            // One round trip for all (each key may live on another shard).
            let puts = records
                .iter()
                .map(|(key, id, value)| me.broker.hold_put(key, id, value, me.grace));
            let ok: Vec<bool> = futures_util::future::join_all(puts)
                .await
                .into_iter()
                .map(|r| r.is_ok())
                .collect();
            let n = ok.iter().filter(|ok| **ok).count();
            me.counters.recorded.fetch_add(n as u64, Ordering::Relaxed);
            let _ = tx.send(ok);
        });
    }

    /// Claims the event held under `key`, if any: the value it was held with.
    pub(crate) async fn claim(&self, key: &HoldKey) -> Option<String> {
        match self.broker.hold_take(key).await {
            Ok(Some(v)) => {
                self.counters.suppressed.fetch_add(1, Ordering::Relaxed);
                Some(v)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "webhook hold not claimed");
                None
            }
        }
    }

    fn send(&self, emit: Emit) {
        match emit {
            Emit::Plexus(kind, share, fields) => self.webhooks.emit_as(kind, share, fields),
            Emit::Vacated { topic, share } => {
                self.webhooks.emit_as(
                    EventKind::ChannelVacated,
                    share.clone(),
                    serde_json::json!({ "topic": &*topic }),
                );
                if let Some(p) = &self.pusher {
                    crate::pusher::webhooks::emit(
                        p,
                        EventKind::ChannelVacated,
                        &topic,
                        share,
                        |_| {},
                    );
                }
            }
        }
    }

    /// Decides `w`: each event recorded is released, and to be sent if the release found it
    /// (nobody claimed it) or failed; an event not recorded is to be sent.
    async fn decide(&self, w: Waiting) -> (Vec<(Held, bool)>, Option<ConnId>) {
        let recorded = w.recorded.await.unwrap_or_default();
        let mut decided = Vec::with_capacity(w.events.len());
        for (i, (held, id)) in w.events.into_iter().enumerate() {
            let unclaimed = if recorded.get(i).copied().unwrap_or(false) {
                self.broker
                    .hold_release(&held.key, &id)
                    .await
                    .unwrap_or(true)
            } else {
                true
            };
            decided.push((held, unclaimed));
        }
        (decided, w.registry)
    }

    /// Sends what [`Grace::decide`] found unclaimed, in order.
    fn finish(&self, (decided, registry): (Vec<(Held, bool)>, Option<ConnId>)) {
        let n = decided.len();
        for (held, unclaimed) in decided {
            if unclaimed {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                self.send(held.emit);
            }
        }
        if let Some(conn) = registry {
            self.broker.clone().connection_close(conn);
        }
        self.held_now.fetch_sub(n, Ordering::AcqRel);
    }

    /// For a draining node: waits for the holds to end (each at the end of its grace) until
    /// `deadline`, then resolves those left at once; new teardowns are sent at once from then.
    pub async fn flush(&self, deadline: Instant) {
        while self.held() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.flushing.store(true, Ordering::Release);
        self.wake.notify_one();
        let until = Instant::now() + Duration::from_secs(5);
        while self.held() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The task that resolves each group at the end of its grace (all at once when flushing).
async fn run(grace: Weak<Grace>) {
    loop {
        let Some(g) = grace.upgrade() else {
            return;
        };
        let flushing = g.flushing.load(Ordering::Acquire);
        let now = Instant::now();
        let (due, next) = {
            let mut q = g.queue.lock();
            let mut due = Vec::new();
            while q.front().is_some_and(|w| flushing || w.deadline <= now) {
                if let Some(w) = q.pop_front() {
                    due.push(w);
                }
            }
            (due, q.front().map(|w| w.deadline))
        };
        // Released concurrently (one round trip each), sent in the order they were held.
        let decided = futures_util::future::join_all(due.into_iter().map(|w| g.decide(w))).await;
        for d in decided {
            g.finish(d);
        }
        let wake = async {
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = g.wake.notified() => {}
                    }
                }
                None => g.wake.notified().await,
            }
        };
        // Wakes at least once a second, to notice that the node (and this) went away.
        let _ = tokio::time::timeout(Duration::from_secs(1), wake).await;
    }
}
