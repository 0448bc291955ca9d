//! `pusher_internal:subscription_count`: Pusher tells the subscribers of a channel how many
//! subscribers it has (pusher-js: `channel.subscriptionCount` and the channel's
//! `pusher:subscription_count` event). Pusher makes it a per-app switch; here it is always on,
//! for public and private channels (not presence ones, which have their members, as Pusher).
//!
//! Coalesced, not per join: every [`EVERY`], [`SubscriptionCounts::run`] reads the
//! cluster-wide subscriber counts (one pipelined Redis round trip on a cluster; any protocol's
//! subscribers count) of the channels where a Pusher connection of this node subscribed or
//! left since the last tick, and of the others once every [`POLL_EVERY`] (a change made on
//! another node, or by a Phoenix client, is told within that), and sends
//! `{"subscription_count": n}` to this node's Pusher subscribers of the channels whose count
//! changed since it last told them — and to subscribers who joined since, even if it did not.
//! Idle channels cost one read per [`POLL_EVERY`]; a join storm on a channel of N subscribers
//! costs at most N frames per tick, not N per join; the frame is encoded once per channel and
//! tick and shared by its receivers.
//!
//! The registry holds, per channel, each local Pusher subscriber's id and a weak reference to
//! its outbox (no strong reference: a closed connection frees its outbox whatever happens
//! here); [`PusherConn`](super::connection::PusherConn) adds and removes its subscriptions.

use crate::outbox::{Outbox, Outgoing};
use crate::protocol::pusher as wire;
use crate::protocol::Frame;
use crate::{ConnId, Node};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often counts are looked at and told.
pub const EVERY: Duration = Duration::from_secs(1);
/// How often a channel without a local change has its count read again.
pub const POLL_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Channel {
    /// Local Pusher subscribers, and whether each was told the count last sent.
    subscribers: Vec<Subscriber>,
    /// The count last sent to this channel's subscribers.
    sent: Option<usize>,
    /// A local Pusher subscriber came or went since the count was last read.
    dirty: bool,
    /// When the count was last read.
    read: Option<Instant>,
}

struct Subscriber {
    conn: ConnId,
    outbox: Weak<Outbox>,
    told: bool,
}

/// This node's Pusher subscriptions that hear their channel's count.
#[derive(Default)]
pub struct SubscriptionCounts {
    channels: Mutex<HashMap<Box<str>, Channel>>,
}

/// Whether `channel` gets subscription counts: not presence channels (members instead) nor a
/// user's server-to-user channel.
pub fn counted(channel: &str) -> bool {
    !channel.starts_with("presence-") && !channel.starts_with(wire::SERVER_TO_USER_PREFIX)
}

impl SubscriptionCounts {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// `conn` subscribed to `channel` (it is told the count at the next tick).
    pub fn add(&self, channel: &str, conn: ConnId, outbox: &Arc<Outbox>) {
        let mut channels = self.channels.lock();
        let c = channels.entry(channel.into()).or_default();
        c.subscribers.retain(|s| s.conn != conn);
        c.dirty = true;
        c.subscribers.push(Subscriber {
            conn,
            outbox: Arc::downgrade(outbox),
            told: false,
        });
    }

    /// `conn` left `channel` (unsubscribed or closed).
    pub fn remove(&self, channel: &str, conn: ConnId) {
        let mut channels = self.channels.lock();
        if let Some(c) = channels.get_mut(channel) {
            c.subscribers.retain(|s| s.conn != conn);
            c.dirty = true;
            if c.subscribers.is_empty() {
                channels.remove(channel);
            }
        }
    }

    /// Channels with local Pusher subscribers (for tests and metrics).
    pub fn channels(&self) -> usize {
        self.channels.lock().len()
    }

    /// Tells counts every [`EVERY`] until the node is gone.
    pub async fn run(self: Arc<Self>, node: Weak<Node>) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else {
                return;
            };
            self.tick(&node).await;
        }
    }

    /// One round: reads the counts of the channels that are due (a local change, or
    /// [`POLL_EVERY`] since the last read) and tells those that changed (or whose subscribers
    /// were not told yet).
    pub async fn tick(&self, node: &Node) {
        let now = Instant::now();
        let topics: Vec<Box<str>> = self
            .channels
            .lock()
            .iter()
            .filter(|(_, c)| c.dirty || c.read.is_none_or(|t| now >= t + POLL_EVERY))
            .map(|(topic, _)| topic.clone())
            .collect();
        if topics.is_empty() {
            return;
        }
        let names: Vec<&str> = topics.iter().map(|t| &**t).collect();
        let counts = node.subscriber_counts(&names).await;
        let mut channels = self.channels.lock();
        for (topic, n) in topics.iter().zip(counts) {
            let Some(c) = channels.get_mut(topic) else {
                continue;
            };
            c.dirty = false;
            c.read = Some(now);
            c.subscribers.retain(|s| s.outbox.strong_count() > 0);
            let changed = c.sent != Some(n);
            if !changed && c.subscribers.iter().all(|s| s.told) {
                continue;
            }
            let data = format!("{{\"subscription_count\":{n}}}");
            let text = wire::channel_event("pusher_internal:subscription_count", topic, &data);
            let frame = Frame::Text(bytes::Bytes::from(text));
            for s in c.subscribers.iter_mut().filter(|s| changed || !s.told) {
                if let Some(outbox) = s.outbox.upgrade() {
                    outbox.push(Outgoing::Raw(Box::new(frame.clone())));
                }
                s.told = true;
            }
            c.sent = Some(n);
        }
        channels.retain(|_, c| !c.subscribers.is_empty());
    }
}
