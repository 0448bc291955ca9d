//! What makes webhooks exact across the cluster: each topic's subscriber count with its
//! total (one node sees a topic occupied, one sees it vacated), each presence member's
//! (Pusher's member_added / member_removed, the same way), and each node's registry of
//! live connections (`<prefix>:nconn:<node>`), which the node that reaps a dead node takes in
//! one step, to report that node's disconnects exactly once.

use super::scripts::{
    COUNT_SUBSCRIBER, REAP_COUNTER, RELEASE, REPLACE_CONNECTIONS, TAKE_CONNECTIONS,
};
use super::{err, RedisBroker};
use crate::broker::{BrokerError, BrokerEvent, CounterKey};
use crate::ConnId;
use redis::AsyncCommands;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl RedisBroker {
    /// Counts one local subscriber of `key` (a [`CounterKey::Subscribers`] or
    /// [`CounterKey::Members`]) in or out; returns the cluster's total (before, after).
    pub(super) async fn count_subscriber_now(
        &self,
        key: &CounterKey,
        joined: bool,
    ) -> Result<Option<(u64, u64)>, BrokerError> {
        let counter = self.counter_key(key);
        let _gate = self.gate.read().await;
        {
            // The local share, re-announced after an outage.
            let mut claims = self.claims.lock();
            let n = claims.entry(counter.clone()).or_insert(0);
            *n += if joined { 1 } else { -1 };
            if *n <= 0 {
                claims.remove(&counter);
            }
        }
        self.check_up()?;
        let mut c = self.conn.clone();
        let (before, after): (i64, i64) = redis::Script::new(COUNT_SUBSCRIBER)
            .key(&counter)
            .arg(&self.node_id)
            .arg(if joined { 1 } else { -1 })
            .invoke_async(&mut c)
            .await
            .map_err(|e| {
                self.failed("subscriber count", &e);
                err(e)
            })?;
        self.queue_registry_op(RegistryOp::Index(counter));
        Ok(Some((before.max(0) as u64, after.max(0) as u64)))
    }

    pub(super) fn connections_key(&self, node: &str) -> String {
        self.node_key("nconn", node)
    }

    /// Queues a registry op for the writer task (started on first use). A full queue drops
    /// the op and marks the registry for a whole rewrite instead.
    pub(super) fn queue_registry_op(&self, op: RegistryOp) {
        let Some(tx) = self.registry_ops.get() else {
            return;
        };
        if tx.try_send(op).is_err() {
            self.registry_dirty.store(true, Ordering::Release);
            // Wakes the writer if its queue emptied meanwhile (a failure here means it is full,
            // and it rewrites the registry after draining it).
            let _ = tx.try_send(RegistryOp::Rewrite);
        }
    }

    pub(super) fn record_connection(self: Arc<Self>, conn: ConnId, info: String) {
        self.conns.lock().insert(conn, info.clone());
        if self.check_up().is_err() {
            return; // re-announced when Redis is back
        }
        self.queue_registry_op(RegistryOp::Set(conn, info));
    }

    pub(super) fn forget_connection(self: Arc<Self>, conn: ConnId) {
        if self.conns.lock().remove(&conn).is_none() || self.check_up().is_err() {
            return;
        }
        self.queue_registry_op(RegistryOp::Del(conn));
    }

    /// After a reconnect: the writer task rewrites the registry whole (after the ops queued
    /// before, so that no older op lands after the rewrite).
    pub(super) fn rewrite_registry(self: Arc<Self>) {
        self.registry_dirty.store(true, Ordering::Release);
        self.queue_registry_op(RegistryOp::Rewrite);
    }

    /// Starts the writer task (once, when the broker is made).
    pub(super) fn start_registry_writer(self: &Arc<Self>) {
        self.registry_ops.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(REGISTRY_QUEUE_MAX);
            tokio::spawn(write_registry(Arc::downgrade(self), rx));
            tx
        });
    }

    /// This node's registry in Redis becomes exactly its live connections, in one step. Only
    /// the writer task calls this.
    async fn reannounce_connections(&self) -> redis::RedisResult<()> {
        self.registry_dirty.store(false, Ordering::Release);
        let live: Vec<(ConnId, String)> = self
            .conns
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let replace = redis::Script::new(REPLACE_CONNECTIONS);
        let mut script = replace.prepare_invoke();
        script.key(self.connections_key(&self.node_id));
        for (conn, info) in &live {
            script.arg(conn.to_string()).arg(info);
        }
        let mut c = self.conn.clone();
        let r = script.invoke_async::<i64>(&mut c).await.map(|_| ());
        // The counter set is kept by ops of the same queue: rewritten too.
        let r = match r {
            Ok(()) => self.reindex_counters().await,
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.registry_dirty.store(true, Ordering::Release);
        }
        r
    }

    /// This node's counter set (`ncnt`) becomes the counters it holds a share of (what its
    /// `Index` ops would have made it, had none been dropped). Only the writer task calls this.
    async fn reindex_counters(&self) -> redis::RedisResult<()> {
        let held: std::collections::HashSet<String> = self
            .claims
            .lock()
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, _)| k.clone())
            .collect();
        self.reindex("ncnt", held).await?;
        // The presence set too (its ops go through the same queue).
        let present: std::collections::HashSet<String> = self
            .presences
            .lock()
            .keys()
            .map(|(t, _)| t.clone())
            .collect();
        self.reindex("npres", present).await
    }

    /// Makes the node's set `kind` exactly `held`.
    async fn reindex(
        &self,
        kind: &str,
        held: std::collections::HashSet<String>,
    ) -> redis::RedisResult<()> {
        let set = self.node_key(kind, &self.node_id);
        let mut c = self.conn.clone();
        let listed: Vec<String> = c.smembers(&set).await?;
        let stale: Vec<&String> = listed.iter().filter(|k| !held.contains(*k)).collect();
        for chunk in stale.chunks(1000) {
            c.srem::<_, _, ()>(&set, chunk).await?;
        }
        let held: Vec<String> = held.into_iter().collect();
        for chunk in held.chunks(1000) {
            c.sadd::<_, _, ()>(&set, chunk).await?;
        }
        Ok(())
    }

    /// Reaping `node`: takes its connection registry (reported as
    /// [`BrokerEvent::ConnectionsReaped`]) and removes its share of `counter`s, reporting the
    /// topics that this vacated.
    pub(super) async fn reap_registry(
        &self,
        node: &str,
        counters: &[String],
    ) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let conns: Vec<String> = redis::Script::new(TAKE_CONNECTIONS)
            .key(self.connections_key(node))
            .invoke_async(&mut c)
            .await?;
        // Reported before anything else can fail: the registry is gone from Redis now.
        if !conns.is_empty() {
            self.report(BrokerEvent::ConnectionsReaped {
                node: node.to_owned(),
                conns,
            })
            .await;
        }
        for counter in counters {
            let Some(name) = self.counter_name(counter) else {
                continue;
            };
            let (had, total): (i64, i64) = redis::Script::new(REAP_COUNTER)
                .key(counter)
                .arg(node)
                .invoke_async(&mut c)
                .await?;
            if let Some(topic) = name.strip_prefix(CounterKey::SUBSCRIBERS_PREFIX) {
                if had > 0 && total <= 0 {
                    self.report(BrokerEvent::TopicVacated {
                        topic: topic.to_owned(),
                    })
                    .await;
                }
            } else if let Some(member) = name
                .strip_prefix(CounterKey::MEMBERS_PREFIX)
                .and_then(CounterKey::parse_members)
            {
                if had > 0 && total <= 0 {
                    self.report(BrokerEvent::MemberVacated {
                        topic: member.0.to_owned(),
                        member: member.1.to_owned(),
                    })
                    .await;
                }
            }
        }
        Ok(())
    }
}

impl RedisBroker {
    /// Takes one unit of counter `key` if the cluster total stays within `limit`.
    pub(super) async fn claim_now(
        &self,
        key: &CounterKey,
        limit: u32,
    ) -> Result<bool, BrokerError> {
        let counter = self.counter_key(key);
        self.check_up()?;
        let _gate = self.gate.read().await;
        let mut c = self.conn.clone();
        let taken: i64 = self
            .claim_script
            .key(&counter)
            .arg(&self.node_id)
            .arg(limit)
            .invoke_async(&mut c)
            .await
            .map_err(|e| {
                self.failed("limit claim", &e);
                err(e)
            })?;
        if taken == 1 {
            *self.claims.lock().entry(counter.clone()).or_insert(0) += 1;
            self.queue_registry_op(RegistryOp::Index(counter));
        }
        Ok(taken == 1)
    }

    /// Gives back one unit of counter `key` that this node took.
    pub(super) async fn release_now(&self, key: &CounterKey) -> Result<(), BrokerError> {
        let counter = self.counter_key(key);
        let _gate = self.gate.read().await;
        {
            let mut claims = self.claims.lock();
            if let Some(n) = claims.get_mut(&counter) {
                *n -= 1;
                if *n <= 0 {
                    claims.remove(&counter);
                }
            }
        }
        self.check_up()?;
        let mut c = self.conn.clone();
        let released = redis::Script::new(RELEASE)
            .key(&counter)
            .arg(&self.node_id)
            .invoke_async::<()>(&mut c)
            .await
            .map_err(|e| {
                self.failed("limit release", &e);
                err(e)
            });
        self.queue_registry_op(RegistryOp::Index(counter));
        released
    }

    /// The topics with subscribers anywhere in the cluster, with their totals.
    pub(super) async fn read_channels(&self) -> Result<Option<Vec<(String, usize)>>, BrokerError> {
        self.check_up()?;
        let mut c = self.conn.clone();
        let pattern = format!(
            "{}:cnt:{{*}}{}*",
            self.cfg.prefix,
            CounterKey::SUBSCRIBERS_PREFIX
        );
        let keys = self.conn.scan_match(&pattern).await.map_err(err)?;
        let mut out = Vec::new();
        for k in keys {
            let Some(topic) = self
                .counter_name(&k)
                .and_then(|n| n.strip_prefix(CounterKey::SUBSCRIBERS_PREFIX))
            else {
                continue;
            };
            let vals: Vec<i64> = c.hvals(&k).await.map_err(err)?;
            let n: i64 = vals.iter().sum();
            if n > 0 {
                out.push((topic.to_owned(), n as usize));
            }
        }
        out.sort();
        Ok(Some(out))
    }

    /// The cluster's subscriber totals of `topics`.
    pub(super) async fn read_subscriber_counts(
        &self,
        topics: &[&str],
    ) -> Result<Option<Vec<usize>>, BrokerError> {
        self.check_up()?;
        let cmds = topics
            .iter()
            .map(|topic| {
                let mut c = redis::cmd("HVALS");
                c.arg(self.counter_key(&CounterKey::Subscribers((*topic).into())));
                c
            })
            .collect();
        let replies = self.conn.run_all(cmds).await.map_err(err)?;
        let shares: Vec<Vec<i64>> = replies
            .into_iter()
            .map(|v| redis::from_redis_value(v).unwrap_or_default())
            .collect();
        Ok(Some(
            shares
                .iter()
                .map(|v| v.iter().sum::<i64>().max(0) as usize)
                .collect(),
        ))
    }
}

/// Most registry ops queued for the writer task; beyond, ops are dropped and the registry is
/// rewritten whole from the live connections once the queue drains.
pub(super) const REGISTRY_QUEUE_MAX: usize = 4096;

/// One change to this node's connection registry.
pub(super) enum RegistryOp {
    Set(ConnId, String),
    Del(ConnId),
    /// A topic where this node's presences changed: it is in this node's presence set
    /// (`npres`) exactly while the node has a presence there (same reasons as `Index`).
    PresenceIndex(String),
    /// A counter whose local share changed: it is in this node's counter set (`ncnt`) exactly
    /// while the share is above 0. Written here, in order, rather than in the counting script,
    /// because in a Redis Cluster the set and the counters live in different slots.
    Index(String),
    /// Nothing to write itself: wakes the writer to rewrite a registry marked dirty.
    Rewrite,
}

/// The registry writer: applies the ops one after another, in the order the connections
/// opened and closed (an HDEL can never overtake its HSET and leave a stale entry, which a
/// reaper would report as a second disconnect), and rewrites the registry whole when an op
/// was lost. Ends when the broker is gone.
async fn write_registry(
    broker: std::sync::Weak<RedisBroker>,
    mut rx: tokio::sync::mpsc::Receiver<RegistryOp>,
) {
    while let Some(op) = rx.recv().await {
        let Some(b) = broker.upgrade() else {
            return;
        };
        let key = b.connections_key(&b.node_id);
        let mut c = b.conn.clone();
        let r: redis::RedisResult<()> = match op {
            RegistryOp::Set(conn, info) => c.hset(&key, conn.to_string(), info).await,
            RegistryOp::Del(conn) => c.hdel(&key, conn.to_string()).await,
            RegistryOp::Index(counter) => {
                let held = b.claims.lock().get(&counter).is_some_and(|n| *n > 0);
                let set = b.node_key("ncnt", &b.node_id);
                if held {
                    c.sadd(&set, &counter).await
                } else {
                    c.srem(&set, &counter).await
                }
            }
            RegistryOp::PresenceIndex(topic) => {
                let held = b.presences.lock().keys().any(|(t, _)| *t == topic);
                let set = b.node_key("npres", &b.node_id);
                if held {
                    c.sadd(&set, &topic).await
                } else {
                    c.srem(&set, &topic).await
                }
            }
            RegistryOp::Rewrite => Ok(()),
        };
        if let Err(e) = r {
            b.failed("connection registry", &e);
            b.registry_dirty.store(true, Ordering::Release);
        }
        if rx.is_empty() && b.registry_dirty.load(Ordering::Acquire) && b.check_up().is_ok() {
            if let Err(e) = b.reannounce_connections().await {
                b.failed("connection registry", &e);
            }
        }
    }
}
