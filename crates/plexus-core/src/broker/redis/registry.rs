//! What makes webhooks exact across the cluster: each topic's subscriber count with its
//! total (one node sees a topic occupied, one sees it vacated), and each node's registry of
//! live connections (`<prefix>:nconn:<node>`), which the node that reaps a dead node takes in
//! one step, to report that node's disconnects exactly once.

use super::scripts::{COUNT_SUBSCRIBER, REAP_COUNTER, TAKE_CONNECTIONS};
use super::{err, RedisBroker};
use crate::broker::{BrokerError, BrokerEvent, CounterKey};
use crate::ConnId;
use redis::AsyncCommands;
use std::sync::Arc;

impl RedisBroker {
    pub(super) async fn count_subscriber_now(
        &self,
        topic: &str,
        joined: bool,
    ) -> Result<Option<u64>, BrokerError> {
        let counter = self.key(&["cnt", &CounterKey::Subscribers(topic.into()).to_string()]);
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
        let total: i64 = redis::Script::new(COUNT_SUBSCRIBER)
            .key(&counter)
            .key(self.key(&["ncnt", &self.node_id]))
            .arg(&self.node_id)
            .arg(if joined { 1 } else { -1 })
            .invoke_async(&mut c)
            .await
            .map_err(|e| {
                self.failed("subscriber count", &e);
                err(e)
            })?;
        Ok(Some(total.max(0) as u64))
    }

    fn connections_key(&self, node: &str) -> String {
        self.key(&["nconn", node])
    }

    pub(super) fn record_connection(self: Arc<Self>, conn: ConnId, info: String) {
        self.conns.lock().insert(conn, info.clone());
        if self.check_up().is_err() {
            return; // re-announced when Redis is back
        }
        tokio::spawn(async move {
            let mut c = self.conn.clone();
            let r: redis::RedisResult<()> = c
                .hset(self.connections_key(&self.node_id), conn.to_string(), info)
                .await;
            if let Err(e) = r {
                self.failed("connection registry", &e);
            }
        });
    }

    pub(super) fn forget_connection(self: Arc<Self>, conn: ConnId) {
        if self.conns.lock().remove(&conn).is_none() || self.check_up().is_err() {
            return;
        }
        tokio::spawn(async move {
            let mut c = self.conn.clone();
            let r: redis::RedisResult<()> = c
                .hdel(self.connections_key(&self.node_id), conn.to_string())
                .await;
            if let Err(e) = r {
                self.failed("connection registry", &e);
            }
        });
    }

    /// After a reconnect: this node's registry in Redis is exactly its live connections.
    pub(super) async fn reannounce_connections(&self) -> redis::RedisResult<()> {
        let live: Vec<(ConnId, String)> = self
            .conns
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let key = self.connections_key(&self.node_id);
        let mut c = self.conn.clone();
        let known: Vec<String> = c.hkeys(&key).await?;
        let mut pipe = redis::pipe();
        let mut queued = false;
        for field in known {
            if !field
                .parse()
                .is_ok_and(|id: ConnId| live.iter().any(|(c, _)| *c == id))
            {
                pipe.hdel(&key, field).ignore();
                queued = true;
            }
        }
        for (conn, info) in &live {
            pipe.hset(&key, conn.to_string(), info).ignore();
            queued = true;
        }
        if queued {
            pipe.query_async::<()>(&mut c).await?;
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
        let subscribers = self.key(&["cnt", CounterKey::SUBSCRIBERS_PREFIX]);
        for counter in counters {
            let (had, total): (i64, i64) = redis::Script::new(REAP_COUNTER)
                .key(counter)
                .arg(node)
                .invoke_async(&mut c)
                .await?;
            if let Some(topic) = counter.strip_prefix(&subscribers) {
                if had > 0 && total <= 0 {
                    self.report(BrokerEvent::TopicVacated {
                        topic: topic.to_owned(),
                    })
                    .await;
                }
            }
        }
        Ok(())
    }
}
