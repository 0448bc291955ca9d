//! Plain broadcasts reach every subscribed node, or are not acknowledged as if they had.
//!
//! A topic without history has nothing to replay, so a node that is not subscribed at the
//! moment of the `PUBLISH` (its shard just failed over, the topic's slot just moved, its
//! subscription is being restored) would miss the message for good. So each node records where
//! it is subscribed: `<prefix>:subs:{<topic>}`, one field per node, written after the
//! subscription is confirmed and removed before it is given up (and `nsubs:{<node>}`, the
//! node's topics, for reaping and re-announcing). A plain broadcast is one script on the
//! topic's shard, [`PUBLISH_PLAIN`]: the `PUBLISH`/`SPUBLISH` and the number of registered nodes,
//! so a receiver count below it says that some node is not listening right now. The publisher
//! then sends the *same* message again (same origin and number, `i=`) every
//! [`RESEND_EVERY`] until every registered node received one copy, for at most
//! [`CONFIRM_WITHIN`]; receivers keep the last numbers of each origin and drop copies.
//!
//! A node that stays away that long is dead (its clients are gone; it is reaped after
//! `node_timeout`) or cut off: the broadcast is acknowledged anyway, counted in
//! `plexus_redis_unconfirmed_total` and logged, and the topic's shortfall is remembered, so
//! that the next broadcasts of the topic do not wait again for the same missing node.

use super::scripts::PUBLISH_PLAIN;
use super::{err, RedisBroker};
use crate::broker::BrokerError;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How often a broadcast that did not reach every subscribed node is sent again.
pub(super) const RESEND_EVERY: Duration = Duration::from_millis(100);
/// How long a publisher waits for every subscribed node before acknowledging anyway.
pub(super) const CONFIRM_WITHIN: Duration = Duration::from_secs(5);
/// Numbers of one origin remembered to drop copies (copies come within `CONFIRM_WITHIN`).
const SEEN_PER_ORIGIN: usize = 4096;
/// Origins remembered (nodes of the cluster; the oldest is forgotten beyond).
const SEEN_ORIGINS: usize = 256;
/// Topics whose shortfall is remembered (the oldest is forgotten beyond).
const SHORTFALLS: usize = 10_000;

/// The last plain publication numbers received from each origin node.
#[derive(Default)]
pub(super) struct Seen {
    origins: HashMap<String, (VecDeque<u64>, HashSet<u64>)>,
    order: VecDeque<String>,
}

impl Seen {
    /// True the first time `seq` of `origin` is seen.
    pub(super) fn first(&mut self, origin: &str, seq: u64) -> bool {
        if !self.origins.contains_key(origin) {
            if self.order.len() >= SEEN_ORIGINS {
                if let Some(old) = self.order.pop_front() {
                    self.origins.remove(&old);
                }
            }
            self.order.push_back(origin.to_owned());
            self.origins.insert(origin.to_owned(), Default::default());
        }
        let Some((queue, set)) = self.origins.get_mut(origin) else {
            return true;
        };
        if !set.insert(seq) {
            return false;
        }
        queue.push_back(seq);
        if queue.len() > SEEN_PER_ORIGIN {
            if let Some(old) = queue.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

impl RedisBroker {
    /// Publishes a plain publication's envelope on `topic`'s channel and sends it again until
    /// every subscribed node got it (see the module's doc). Errors only when Redis refused.
    pub(super) async fn publish_plain(
        &self,
        topic: &str,
        channel: &str,
        envelope: &[u8],
    ) -> Result<(), BrokerError> {
        let started = Instant::now();
        let mut first = true;
        loop {
            let mut c = self.conn.clone();
            let sent: Result<(i64, i64), _> = self
                .publish_plain_script
                .key(self.topic_key("subs", topic))
                .arg(self.publish_command())
                .arg(channel)
                .arg(envelope)
                .invoke_async(&mut c)
                .await;
            if first {
                crate::metrics::redis_round_trip("publish", started.elapsed());
            }
            let (got, want) = match sent {
                Ok(r) => r,
                // The first attempt's failure is the publisher's error; a resend's is the end
                // of the attempts (the message went out at least once).
                Err(e) if first => {
                    self.failed("publish", &e);
                    return Err(err(e));
                }
                Err(e) => {
                    self.failed("publish (sent again)", &e);
                    return Ok(());
                }
            };
            if got >= want || self.known_shortfall(topic, got, want) {
                if !first {
                    self.shortfalls.lock().remove(topic);
                    tracing::info!(
                        topic,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "a broadcast reached every subscribed node after being sent again"
                    );
                }
                return Ok(());
            }
            if started.elapsed() >= CONFIRM_WITHIN {
                crate::metrics::redis_unconfirmed();
                tracing::warn!(
                    topic,
                    nodes = want,
                    reached = got,
                    "a broadcast did not reach every subscribed node: a node is gone or cut off"
                );
                self.remember_shortfall(topic, got, want);
                return Ok(());
            }
            first = false;
            tokio::time::sleep(RESEND_EVERY).await;
        }
    }

    /// `PUBLISH`, or `SPUBLISH` in a cluster.
    pub(super) fn publish_command(&self) -> &'static str {
        if self.conn.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// The same shortfall as the last broadcast of `topic` that waited in vain: not waited for
    /// again (it ends when the node is reaped or comes back).
    fn known_shortfall(&self, topic: &str, got: i64, want: i64) -> bool {
        let mut s = self.shortfalls.lock();
        match s.get(topic) {
            Some((g, w, at)) if *g == got && *w == want && at.elapsed() < self.cfg.node_timeout => {
                true
            }
            Some(_) => {
                s.remove(topic);
                false
            }
            None => false,
        }
    }

    fn remember_shortfall(&self, topic: &str, got: i64, want: i64) {
        let mut s = self.shortfalls.lock();
        if s.len() >= SHORTFALLS {
            s.retain(|_, (_, _, at)| at.elapsed() < Duration::from_secs(60));
            if s.len() >= SHORTFALLS {
                s.clear();
            }
        }
        s.insert(topic.to_owned(), (got, want, Instant::now()));
    }

    /// Records that this node listens on `topic` (after its subscription is confirmed).
    pub(super) async fn register_subscription(&self, topic: &str) {
        let mut set = redis::cmd("HSET");
        set.arg(self.topic_key("subs", topic))
            .arg(&self.node_id)
            .arg(1);
        let mut index = redis::cmd("SADD");
        index.arg(self.node_key("nsubs", &self.node_id)).arg(topic);
        if let Err(e) = self.conn.run_all(vec![set, index]).await {
            // Written again when the node re-announces itself.
            self.failed("subscription registry", &e);
        }
    }

    /// Removes the record of `topic` (before the subscription is given up).
    pub(super) async fn unregister_subscription(&self, topic: &str) {
        let mut del = redis::cmd("HDEL");
        del.arg(self.topic_key("subs", topic)).arg(&self.node_id);
        let mut index = redis::cmd("SREM");
        index.arg(self.node_key("nsubs", &self.node_id)).arg(topic);
        if let Err(e) = self.conn.run_all(vec![del, index]).await {
            self.failed("subscription registry", &e);
        }
    }

    /// The commands that make the registry exactly this node's subscriptions again (after an
    /// outage or a failover: Redis may have lost some, and kept some this node gave up).
    pub(super) async fn subscription_registry_commands(
        &self,
    ) -> redis::RedisResult<Vec<redis::Cmd>> {
        let topics: Vec<String> = self.topics.lock().iter().cloned().collect();
        let mut c = self.conn.clone();
        let recorded: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.node_key("nsubs", &self.node_id))
            .query_async(&mut c)
            .await?;
        let mut cmds = Vec::new();
        for t in &topics {
            let mut set = redis::cmd("HSET");
            set.arg(self.topic_key("subs", t)).arg(&self.node_id).arg(1);
            cmds.push(set);
            let mut index = redis::cmd("SADD");
            index.arg(self.node_key("nsubs", &self.node_id)).arg(t);
            cmds.push(index);
        }
        for t in recorded.iter().filter(|t| !topics.contains(t)) {
            let mut del = redis::cmd("HDEL");
            del.arg(self.topic_key("subs", t)).arg(&self.node_id);
            cmds.push(del);
            let mut index = redis::cmd("SREM");
            index.arg(self.node_key("nsubs", &self.node_id)).arg(t);
            cmds.push(index);
        }
        Ok(cmds)
    }

    /// Reaping `node`: its subscription records go.
    pub(super) async fn reap_subscriptions(&self, node: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let topics: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.node_key("nsubs", node))
            .query_async(&mut c)
            .await?;
        let mut cmds: Vec<redis::Cmd> = topics
            .iter()
            .map(|t| {
                let mut del = redis::cmd("HDEL");
                del.arg(self.topic_key("subs", t)).arg(node);
                del
            })
            .collect();
        let mut index = redis::cmd("DEL");
        index.arg(self.node_key("nsubs", node));
        cmds.push(index);
        self.conn.run_all(cmds).await.map(|_| ())
    }

    /// The script of a plain broadcast (loaded once).
    pub(super) fn plain_script() -> redis::Script {
        redis::Script::new(PUBLISH_PLAIN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_dropped_and_memory_stays_bounded() {
        let mut s = Seen::default();
        assert!(s.first("a", 1));
        assert!(!s.first("a", 1));
        assert!(s.first("b", 1));
        for n in 2..(SEEN_PER_ORIGIN as u64 + 10) {
            assert!(s.first("a", n));
        }
        assert!(s.origins["a"].0.len() <= SEEN_PER_ORIGIN);
        // Forgotten, so accepted again (copies never come this late).
        assert!(s.first("a", 1));
        for o in 0..(SEEN_ORIGINS + 5) {
            s.first(&format!("n{o}"), 1);
        }
        assert!(s.origins.len() <= SEEN_ORIGINS);
    }
}
