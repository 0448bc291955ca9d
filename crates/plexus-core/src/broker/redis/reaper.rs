//! Reaping dead nodes: a node whose heartbeat key (`<prefix>:alive:{<node>}`) is found missing
//! twice, half a `node_timeout` apart, is dead. One node takes a lock and removes its
//! subscription records, presences (reporting the leaves), counters and connection registry
//! (reporting its disconnects), so that its users do not stay as ghosts.

use super::RedisBroker;
use crate::broker::BrokerEvent;
use redis::AsyncCommands;
use serde_json::Value;
use std::collections::HashMap;

impl RedisBroker {
    /// Removes the presences and counters of nodes whose heartbeat expired, and tells the
    /// cluster that their users left.
    pub(super) async fn reap_dead_nodes(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let nodes: Vec<String> = c.smembers(self.key(&["nodes"])).await?;
        // A node is reaped when its heartbeat key is missing twice, half a `node_timeout`
        // apart: a key lost with a failing shard (a promoted replica that never got it, or got
        // it with little TTL left) is written again by the live node's next heartbeat.
        self.suspects.lock().retain(|n, _| nodes.contains(n));
        for node in nodes.into_iter().filter(|n| *n != self.node_id) {
            let alive: bool = c.exists(self.node_key("alive", &node)).await?;
            if alive {
                self.suspects.lock().remove(&node);
                continue;
            }
            let since = *self
                .suspects
                .lock()
                .entry(node.clone())
                .or_insert_with(std::time::Instant::now);
            if since.elapsed() < self.cfg.node_timeout / 2 {
                continue;
            }
            self.suspects.lock().remove(&node);
            let lock: Option<String> = redis::cmd("SET")
                .arg(self.node_key("reap", &node))
                .arg(&self.node_id)
                .arg("NX")
                .arg("PX")
                .arg(10_000)
                .query_async(&mut c)
                .await?;
            if lock.is_none() {
                continue; // another node is on it
            }
            tracing::info!(node = %node, "a node's heartbeat expired: removing its presence");
            // First its subscription records: the leaves broadcast below must not wait for it.
            self.reap_subscriptions(&node).await?;
            let topics: Vec<String> = c.smembers(self.node_key("npres", &node)).await?;
            let prefix = format!("{node}:");
            for topic in topics {
                let hash = self.topic_key("pres", &topic);
                let entries: HashMap<String, String> = c.hgetall(&hash).await?;
                let mut leaves = serde_json::Map::new();
                let mut reported = Vec::new();
                for (field, value) in entries.iter().filter(|(f, _)| f.starts_with(&prefix)) {
                    let _: () = c.hdel(&hash, field).await?;
                    if let Ok(v) = serde_json::from_str::<Value>(value) {
                        if let (Some(key), Some(meta)) = (v["k"].as_str(), v.get("m")) {
                            if let (Some(sub), Some(conn)) = (v["s"].as_str(), v["c"].as_str()) {
                                reported.push(serde_json::json!({
                                    "sub": sub, "conn": conn, "key": key, "meta": meta
                                }));
                            }
                            let metas = leaves
                                .entry(key.to_owned())
                                .or_insert_with(|| serde_json::json!({"metas": []}));
                            if let Some(list) = metas["metas"].as_array_mut() {
                                list.push(meta.clone());
                            }
                        }
                    }
                }
                if !leaves.is_empty() {
                    self.report(BrokerEvent::PresenceReaped {
                        topic,
                        leaves: Value::Object(leaves),
                        reported,
                    })
                    .await;
                }
            }
            let counters: Vec<String> = c.smembers(self.node_key("ncnt", &node)).await?;
            self.reap_registry(&node, &counters).await?;
            let _: () = redis::pipe()
                .del(self.node_key("npres", &node))
                .ignore()
                .del(self.node_key("ncnt", &node))
                .ignore()
                .query_async(&mut c)
                .await?;
            let _: () = c.srem(self.key(&["nodes"]), &node).await?;
            self.report(BrokerEvent::NodeLost { node }).await;
        }
        Ok(())
    }
}
