//! A connection's subscription to a topic on this node, and the node's one subscription to
//! the topic at the broker: made by the topic's first local subscriber, waited for by the
//! others (none of them may read anything, a presence state, before the node receives what
//! the other nodes publish on the topic), and given up when the last one leaves.

use super::Node;
use crate::hub::Hub;
use crate::outbox::Outbox;
use crate::ConnId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The broker subscriptions under way on this node.
pub(super) struct BrokerSubscriptions {
    shards: Box<[Subscribing]>,
    next: AtomicU64,
}

impl BrokerSubscriptions {
    pub(super) fn new() -> Self {
        BrokerSubscriptions {
            shards: (0..Hub::SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            next: AtomicU64::new(0),
        }
    }
}

/// Per topic: the broker subscription under way (its number, and what its waiters watch), in
/// one map per hub shard (a subscribe locks its topic's, then the hub's shard of the topic, so
/// joins contend no more than the hub makes them).
type Subscribing = Mutex<HashMap<Box<str>, (u64, tokio::sync::watch::Receiver<()>)>>;

/// Removes a topic's broker subscription under way from [`Node::subscribe`]'s map when dropped
/// (if it is still that one).
struct Forget<'a>(&'a Subscribing, &'a str, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut map = self.0.lock();
        if map.get(self.1).is_some_and(|(id, _)| *id == self.2) {
            map.remove(self.1);
        }
    }
}

/// What a new local subscriber of a topic does about the broker's subscription.
enum BrokerSubscription {
    /// Makes it (the first local subscriber): the others wait until this is dropped.
    Make(u64, tokio::sync::watch::Sender<()>),
    /// Waits for the one being made.
    Wait(tokio::sync::watch::Receiver<()>),
    /// Already made.
    Made,
}

impl Node {
    /// Subscribes a local connection (`with_offset`: it gets history offsets in `ref`); also
    /// used by the admin console's live tail, with ids of its own. `by`: the client whose
    /// join this is (a `channel_occupied` it causes is charged to it).
    pub async fn subscribe(
        &self,
        topic: &str,
        conn: ConnId,
        outbox: Arc<Outbox>,
        with_offset: bool,
        by: Option<crate::webhooks::Cause<'_>>,
    ) {
        let subs = &self.broker_subscriptions;
        let shard = &subs.shards[self.hub.shard_index(topic)];
        let (added, first, broker_subscription) = {
            let mut subscribing = shard.lock();
            let (added, first) = self.hub.subscribe(topic, conn, outbox, with_offset);
            let b = if first {
                let id = subs.next.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = tokio::sync::watch::channel(());
                subscribing.insert(topic.into(), (id, rx));
                BrokerSubscription::Make(id, tx)
            } else {
                match subscribing.get(topic) {
                    Some((_, rx)) => BrokerSubscription::Wait(rx.clone()),
                    None => BrokerSubscription::Made,
                }
            };
            (added, first, b)
        };
        // Forgotten (and the waiters let go, the sender dropped) however this ends, even if
        // this future is dropped in the count below.
        let _forget = match &broker_subscription {
            BrokerSubscription::Make(id, _) => Some(Forget(shard, topic, *id)),
            _ => None,
        };
        if added {
            // Cluster-wide subscriber count, once per (connection, topic).
            self.count_subscriber_in(topic, first, by).await;
        }
        match broker_subscription {
            BrokerSubscription::Make(_, _done) => {
                if let Err(e) = self.broker.subscribe(topic).await {
                    self.counters.broker_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic, error = %e, "broker subscribe failed");
                }
            }
            // A later local subscriber must not read anything (a presence state) before the
            // node receives the topic's messages from the other nodes: what they publish in
            // between would reach neither its read nor it.
            BrokerSubscription::Wait(mut made) => {
                // Ends when the maker drops its sender (done, failed, or gone).
                let _ = made.changed().await;
            }
            BrokerSubscription::Made => {}
        }
    }

    /// Removes a local subscriber without waiting: `true` if the topic has no local
    /// subscriber left (then [`Node::unsubscribe_remote`] tells the broker). `by`: the client
    /// whose leave this is (a `channel_vacated` it causes is charged to it).
    pub fn unsubscribe_local(
        &self,
        topic: &str,
        conn: ConnId,
        by: Option<crate::webhooks::Cause<'_>>,
    ) -> bool {
        self.unsubscribe_local_held(topic, conn, by, false)
    }

    /// [`Node::unsubscribe_local`]; `held`: in the teardown of a connection whose events the
    /// reconnect grace holds (a `channel_vacated` it causes is held too).
    pub(crate) fn unsubscribe_local_held(
        &self,
        topic: &str,
        conn: ConnId,
        by: Option<crate::webhooks::Cause<'_>>,
        held: bool,
    ) -> bool {
        let (removed, emptied) = self.hub.unsubscribe(topic, conn);
        if removed {
            self.count_subscriber_out(topic, emptied, by, held);
        }
        emptied
    }

    /// Tells the broker that `topic` lost its local subscribers, if it still has none.
    pub async fn unsubscribe_remote(&self, topic: &str) {
        if self.hub.subscriber_count(topic) == 0 {
            if let Err(e) = self.broker.unsubscribe(topic).await {
                self.counters.broker_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic, error = %e, "broker unsubscribe failed");
            }
        }
    }
}
