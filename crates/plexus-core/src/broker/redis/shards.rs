//! Redis Cluster mode's subscription: the sharded messages (`SSUBSCRIBE`/`SPUBLISH`) arrive as
//! RESP3 pushes on the cluster connection, which the redis crate re-subscribes per slot after a
//! slot moves, a shard fails over or a connection drops. On top of it: a channel the server
//! drops by itself (`-SUNSUBSCRIBE`, its slot migrated) is subscribed again where the slot now
//! lives; a lost shard connection makes the node subscribe every channel again (which routes
//! each by its slot and so moves it to a promoted replica) and re-announce its state; a
//! confirmed (re-)subscription catches the topic's history up (see [`super::gaps`]).

use super::RedisBroker;
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

impl RedisBroker {
    /// A cluster shard connection was lost: once the broker is up again, this node's
    /// presences, counters and registry are written again (a promoted replica may have missed
    /// the last of them). One such task at a time.
    fn shard_lost(self: &Arc<Self>) {
        if self.reannouncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            // Give the cluster time to promote a replica and the heartbeat to see it.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for _ in 0..120 {
                let Some(b) = weak.upgrade() else { return };
                if b.heartbeat().await.is_ok() {
                    // Subscribing again routes each channel by its slot: a connection still
                    // pointed at a dead primary fails, which makes the crate learn the new
                    // topology and move every tracked subscription to its new owner.
                    b.resubscribe_all().await;
                    let done = b.reannounce().await;
                    b.reannouncing.store(false, Ordering::Release);
                    match done {
                        Ok(()) => b.clone().rewrite_registry(),
                        Err(e) => b.failed("re-announce", &e),
                    }
                    return;
                }
                drop(b);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if let Some(b) = weak.upgrade() {
                b.reannouncing.store(false, Ordering::Release);
            }
        });
    }
}

/// A cluster's subscription: the node's own channels are subscribed (retried until they
/// are), then the sharded messages arrive as RESP3 pushes on the cluster connection, which the
/// redis crate re-subscribes after a slot moves, a failover or a reconnect. A channel the
/// server unsubscribes by itself (`-SUNSUBSCRIBE`: its slot migrated) is subscribed again,
/// where the slot now lives.
pub(super) async fn cluster_subscription_loop(
    broker: Weak<RedisBroker>,
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(b) = broker.upgrade() else { return };
        let super::Conn::Cluster(cc) = &b.conn else {
            return;
        };
        let mut cc = cc.clone();
        let own = [b.control_channel(), b.node_channel(&b.node_id)];
        let mut result = Ok(());
        for ch in &own {
            result = cc.ssubscribe(ch).await;
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) => {
                b.healthy.store(true, Ordering::Release);
                tracing::info!(node = %b.node_id, "redis cluster subscription up");
                break;
            }
            Err(e) => {
                b.failed("subscribe", &e);
                drop(b);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    while let Some(push) = pushes.recv().await {
        let Some(b) = broker.upgrade() else { return };
        let channel = push
            .data
            .first()
            .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
            .map(|c| String::from_utf8_lossy(&c).into_owned());
        match push.kind {
            redis::PushKind::SMessage => {
                let payload = push
                    .data
                    .get(1)
                    .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok());
                if let (Some(channel), Some(payload)) = (channel, payload) {
                    b.on_message(&channel, &payload).await;
                }
            }
            redis::PushKind::SSubscribe => {
                // A (re-)subscription confirmed, e.g. on a promoted replica or where a slot
                // moved: what the topic's history got meanwhile is delivered now (here, in
                // the subscription task, which alone moves the delivery cursors).
                if let Some(topic) = channel.and_then(|c| b.channel_topic(&c)) {
                    b.catch_up(&topic).await;
                }
            }
            redis::PushKind::SUnsubscribe => {
                if let Some(channel) = channel {
                    b.server_unsubscribed(channel);
                }
            }
            redis::PushKind::Disconnection => {
                crate::metrics::redis_reconnected();
                b.shard_lost();
            }
            _ => {}
        }
    }
}

impl RedisBroker {
    /// Subscribes every channel of this node again (cluster mode; subscribing twice is
    /// harmless), a few at a time, retrying those that fail for up to a few seconds.
    async fn resubscribe_all(&self) {
        let super::Conn::Cluster(cc) = &self.conn else {
            return;
        };
        let mut channels: Vec<String> = self
            .topics
            .lock()
            .iter()
            .map(|t| self.topic_channel(t))
            .collect();
        channels.push(self.control_channel());
        channels.push(self.node_channel(&self.node_id));
        for _ in 0..10 {
            let results = futures_util::stream::iter(channels.iter().cloned())
                .map(|ch| {
                    let mut cc = cc.clone();
                    async move {
                        // Given up meanwhile (its last client left): not subscribed again.
                        if !self.wants_channel(&ch) {
                            return (ch, Ok(()));
                        }
                        let r = cc.ssubscribe(&ch).await;
                        (ch, r)
                    }
                })
                .buffer_unordered(64)
                .collect::<Vec<_>>()
                .await;
            channels = results
                .into_iter()
                .filter_map(|(ch, r)| r.err().map(|_| ch))
                .collect();
            if channels.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        self.failed(
            "re-subscribe after a failover",
            &"some channels could not be subscribed",
        );
    }

    /// Whether this node wants `channel` subscribed now: its own channels, and the channel of
    /// every topic it is subscribed to.
    fn wants_channel(&self, channel: &str) -> bool {
        channel == self.control_channel()
            || channel == self.node_channel(&self.node_id)
            || self
                .channel_topic(channel)
                .is_some_and(|t| self.topics.lock().contains(&t))
    }

    /// The server dropped a sharded subscription this node did not give up (its slot
    /// migrated): subscribed again, after the crate has learnt where the slot went.
    fn server_unsubscribed(self: &Arc<Self>, channel: String) {
        if !self.wants_channel(&channel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            for attempt in 0..20u32 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10) + 1)))
                    .await;
                let Some(b) = weak.upgrade() else { return };
                let super::Conn::Cluster(cc) = &b.conn else {
                    return;
                };
                // Its last client may have left during the wait: then it stays unsubscribed.
                if !b.wants_channel(&channel) {
                    return;
                }
                match cc.clone().ssubscribe(&channel).await {
                    Ok(()) => {
                        tracing::info!(channel, "a migrated slot's subscription followed it");
                        return;
                    }
                    Err(e) => b.failed("re-subscribe after a slot migration", &e),
                }
            }
        });
    }
}
