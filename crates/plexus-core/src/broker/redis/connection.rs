//! Staying connected: the subscription loop (reconnect with backoff, re-subscribe, re-announce
//! this node's presence and counters, catch up on history topics, see [`super::gaps`]), the
//! heartbeat loop (this node's liveness, reaping dead nodes), and the messages the
//! subscription delivers.

use super::signing::{Kind, Refused};
use super::RedisBroker;
use crate::broker::BrokerEvent;
use crate::protocol::Frame;
use crate::publication::Publication;
use crate::ConnId;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

impl RedisBroker {
    /// Refreshes this node's heartbeat.
    pub(super) async fn heartbeat(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let ttl = self.cfg.node_timeout.as_millis() as u64;
        let started = std::time::Instant::now();
        let done = redis::pipe()
            .cmd("SET")
            .arg(self.key(&["alive", &self.node_id]))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .sadd(self.key(&["nodes"]), &self.node_id)
            .ignore()
            .query_async::<()>(&mut c)
            .await;
        crate::metrics::redis_round_trip("heartbeat", started.elapsed());
        done
    }

    /// Writes this node's presences and counters again (after Redis lost them, or a blip).
    pub(super) async fn reannounce(&self) -> redis::RedisResult<()> {
        let presences: Vec<((String, ConnId), String)> = self
            .presences
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let claims: Vec<(String, i64)> = self
            .claims
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut pipe = redis::pipe();
        for ((topic, conn), value) in &presences {
            pipe.hset(
                self.key(&["pres", topic]),
                format!("{}:{conn}", self.node_id),
                value,
            )
            .ignore();
            pipe.sadd(self.key(&["npres", &self.node_id]), topic)
                .ignore();
        }
        for (key, n) in &claims {
            if *n > 0 {
                pipe.hset(key, &self.node_id, *n).ignore();
                pipe.sadd(self.key(&["ncnt", &self.node_id]), key).ignore();
            }
        }
        let mut queued = !presences.is_empty() || claims.iter().any(|(_, n)| *n > 0);
        let mut c = self.conn.clone();
        // What this node had in Redis before the outage but let go of during it (releases and
        // presence leaves that could not be sent): removed, so that no stale count locks a
        // user out and no ghost stays in presence.
        let (counters, topics): (Vec<String>, Vec<String>) = redis::pipe()
            .smembers(self.key(&["ncnt", &self.node_id]))
            .smembers(self.key(&["npres", &self.node_id]))
            .query_async(&mut c)
            .await?;
        for key in counters {
            if !claims.iter().any(|(k, n)| *k == key && *n > 0) {
                queued = true;
                pipe.hdel(&key, &self.node_id).ignore();
                pipe.srem(self.key(&["ncnt", &self.node_id]), &key).ignore();
            }
        }
        let mine = format!("{}:", self.node_id);
        for topic in topics {
            let fields: Vec<String> = c.hkeys(self.key(&["pres", &topic])).await?;
            for field in fields.iter().filter(|f| f.starts_with(&mine)) {
                let conn: Option<ConnId> = field[mine.len()..].parse().ok();
                let live = conn
                    .is_some_and(|id| presences.iter().any(|((t, c), _)| *t == topic && *c == id));
                if !live {
                    queued = true;
                    pipe.hdel(self.key(&["pres", &topic]), field).ignore();
                }
            }
        }
        if !queued {
            return Ok(());
        }
        pipe.query_async::<()>(&mut c).await
    }

    /// Removes the presences and counters of nodes whose heartbeat expired, and tells the
    /// cluster that their users left.
    pub(super) async fn reap_dead_nodes(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let nodes: Vec<String> = c.smembers(self.key(&["nodes"])).await?;
        for node in nodes.into_iter().filter(|n| *n != self.node_id) {
            let alive: bool = c.exists(self.key(&["alive", &node])).await?;
            if alive {
                continue;
            }
            let lock: Option<String> = redis::cmd("SET")
                .arg(self.key(&["reap", &node]))
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
            let topics: Vec<String> = c.smembers(self.key(&["npres", &node])).await?;
            let prefix = format!("{node}:");
            for topic in topics {
                let hash = self.key(&["pres", &topic]);
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
            let counters: Vec<String> = c.smembers(self.key(&["ncnt", &node])).await?;
            self.reap_registry(&node, &counters).await?;
            let _: () = redis::pipe()
                .del(self.key(&["npres", &node]))
                .ignore()
                .del(self.key(&["ncnt", &node]))
                .ignore()
                .srem(self.key(&["nodes"]), &node)
                .ignore()
                .query_async(&mut c)
                .await?;
            self.report(BrokerEvent::NodeLost { node }).await;
        }
        Ok(())
    }

    pub(super) async fn on_message(&self, channel: &str, data: &[u8]) {
        if channel == self.control_channel() {
            return self.on_control(data).await;
        }
        if channel == self.node_channel(&self.node_id) {
            return self.on_node_message(channel, data).await;
        }
        let Some(topic) = channel.strip_prefix(&format!("{}:t:", self.cfg.prefix)) else {
            return;
        };
        let Some(nl) = data.iter().position(|b| *b == b'\n') else {
            return;
        };
        let header = String::from_utf8_lossy(&data[..nl]);
        let mut parts = header.split(' ');
        let (Some("P1"), Some(origin), Some(offset), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (origin_node, exclude) = match origin.split_once('/') {
            Some((n, c)) => (n, c.parse::<ConnId>().ok()),
            None => (origin, None),
        };
        let offset = offset.parse::<u64>().ok();
        let own = origin_node == self.node_id;
        if own && offset.is_none() {
            return; // delivered locally when it was published
        }
        let body = Bytes::copy_from_slice(&data[nl + 1..]);
        let frame = if kind == "b" {
            Frame::Binary(body)
        } else {
            Frame::Text(body)
        };
        let exclude = if own { exclude } else { None };
        let fields: Vec<&str> = parts.collect();
        match Publication::from_frame(topic, frame, offset, exclude) {
            Ok(p) => {
                let p =
                    Arc::new(p.with_sender(super::envelope::parse_sender(fields.iter().copied())));
                match (offset, super::envelope::parse_epoch(fields.into_iter())) {
                    // History: once and in order on this node, gaps replayed (see `gaps`).
                    (Some(offset), Some(epoch)) => {
                        self.deliver_history(topic, epoch, offset, p).await
                    }
                    _ => {
                        self.hub.deliver(&p);
                    }
                }
            }
            Err(e) => self.failed("decoding a publication", &e),
        }
    }

    /// A signed message on the control channel: a user's disconnect, asked by another node.
    pub(super) async fn on_control(&self, data: &[u8]) {
        let channel = self.control_channel();
        let opened = match self.signer.open(&channel, data) {
            Ok(m) => m,
            Err(why) => return self.refused(&channel, why),
        };
        if opened.kind != Kind::Disconnect {
            return self.refused(&channel, Refused::Malformed);
        }
        if opened.from != self.node_id {
            let sub = String::from_utf8_lossy(opened.body).into_owned();
            self.report(BrokerEvent::DisconnectUser { sub }).await;
        }
    }
}

pub(super) async fn subscription_loop(broker: Weak<RedisBroker>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(b) = broker.upgrade() else { return };
        let pubsub =
            tokio::time::timeout(Duration::from_secs(2), b.client.get_async_pubsub()).await;
        let pubsub = match pubsub {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                b.failed("subscription connect", &e);
                drop(b);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                b.failed("subscription connect", &"timed out");
                drop(b);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut channels: Vec<String> =
            b.topics.lock().iter().map(|t| b.topic_channel(t)).collect();
        channels.push(b.control_channel());
        channels.push(b.node_channel(&b.node_id));
        if let Err(e) = sink.subscribe(&channels).await {
            b.failed("subscribe", &e);
            drop(b);
            tokio::time::sleep(backoff).await;
            continue;
        }
        *b.sink.lock().await = Some(sink);
        // Topics subscribed while we were connecting.
        let missing: Vec<String> = b
            .topics
            .lock()
            .iter()
            .map(|t| b.topic_channel(t))
            .filter(|c| !channels.contains(c))
            .collect();
        if !missing.is_empty() {
            if let Some(s) = b.sink.lock().await.as_mut() {
                let _ = s.subscribe(&missing).await;
            }
        }
        let was_down = !b.healthy.swap(true, Ordering::AcqRel);
        if let Err(e) = b.heartbeat().await {
            b.failed("heartbeat", &e);
        }
        if let Err(e) = b.reannounce().await {
            b.failed("re-announce", &e);
        }
        b.clone().rewrite_registry();
        if was_down {
            b.catch_up_after_reconnect().await;
        }
        if was_down {
            tracing::info!(node = %b.node_id, topics = channels.len() - 1, "redis subscription up");
        }
        backoff = Duration::from_millis(100);
        drop(b);
        while let Some(msg) = stream.next().await {
            let Some(b) = broker.upgrade() else { return };
            let channel: String = msg.get_channel_name().to_owned();
            b.on_message(&channel, msg.get_payload_bytes()).await;
        }
        let Some(b) = broker.upgrade() else { return };
        b.healthy.store(false, Ordering::Release);
        *b.sink.lock().await = None;
        b.failed("subscription", &"connection lost, reconnecting");
        crate::metrics::redis_reconnected();
        drop(b);
        tokio::time::sleep(backoff).await;
    }
}

pub(super) async fn heartbeat_loop(broker: Weak<RedisBroker>) {
    let tick = {
        let Some(b) = broker.upgrade() else { return };
        (b.cfg.node_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5))
    };
    loop {
        tokio::time::sleep(tick).await;
        let Some(b) = broker.upgrade() else { return };
        if let Err(e) = b.heartbeat().await {
            b.failed("heartbeat", &e);
            continue;
        }
        if let Err(e) = b.reap_dead_nodes().await {
            b.failed("reaping dead nodes", &e);
        }
    }
}
