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
    /// Refreshes this node's heartbeat (see [`super::liveness`] for what a success records).
    pub(super) async fn heartbeat(self: &Arc<Self>) -> redis::RedisResult<()> {
        let ttl = self.cfg.node_timeout.as_millis() as u64;
        let started = std::time::Instant::now();
        let mut alive = redis::cmd("SET");
        alive
            .arg(self.node_key("alive", &self.node_id))
            .arg(1)
            .arg("PX")
            .arg(ttl);
        let mut member = redis::cmd("SADD");
        member.arg(self.key(&["nodes"])).arg(&self.node_id);
        let done = self.conn.run_all(vec![alive, member]).await;
        crate::metrics::redis_round_trip("heartbeat", started.elapsed());
        done.map(|replies| self.heartbeat_confirmed(started, &replies))
    }

    /// Writes this node's presences and counters again (after Redis lost them, or a blip).
    pub(super) async fn reannounce(&self) -> redis::RedisResult<()> {
        // First what Redis holds of this node (several round trips, counts go on meanwhile)...
        let mut c = self.conn.clone();
        let (counters, topics): (Vec<String>, Vec<String>) = redis::pipe()
            .smembers(self.node_key("ncnt", &self.node_id))
            .smembers(self.node_key("npres", &self.node_id))
            .query_async(&mut c)
            .await?;
        let mut fields = Vec::with_capacity(topics.len());
        for topic in topics {
            let f: Vec<String> = c.hkeys(self.topic_key("pres", &topic)).await?;
            fields.push((topic, f));
        }
        let mut cmds = self.subscription_registry_commands().await?;
        // ...then, with counts and presence changes held off until it is written, this node's
        // own state as it is now: a change made between the snapshot and the write would be
        // undone by it.
        let _gate = self.gate.write().await;
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
        let cmd = |name: &str| redis::cmd(name);
        let mut present = std::collections::HashSet::new();
        for ((topic, conn), value) in &presences {
            let mut c = cmd("HSET");
            c.arg(self.topic_key("pres", topic))
                .arg(format!("{}:{conn}", self.node_id))
                .arg(value);
            cmds.push(c);
            if present.insert(topic.as_str()) {
                let mut c = cmd("SADD");
                c.arg(self.node_key("npres", &self.node_id)).arg(topic);
                cmds.push(c);
            }
        }
        for (key, n) in &claims {
            if *n > 0 {
                let mut c = cmd("HSET");
                c.arg(key).arg(&self.node_id).arg(*n);
                cmds.push(c);
                let mut c = cmd("SADD");
                c.arg(self.node_key("ncnt", &self.node_id)).arg(key);
                cmds.push(c);
            }
        }
        // What this node had in Redis before the outage but let go of during it (releases and
        // presence leaves that could not be sent): removed, so that no stale count locks a
        // user out and no ghost stays in presence.
        for key in counters {
            if !claims.iter().any(|(k, n)| *k == key && *n > 0) {
                let mut h = cmd("HDEL");
                h.arg(&key).arg(&self.node_id);
                cmds.push(h);
                let mut r = cmd("SREM");
                r.arg(self.node_key("ncnt", &self.node_id)).arg(&key);
                cmds.push(r);
            }
        }
        let mine = format!("{}:", self.node_id);
        for (topic, fields) in &fields {
            for field in fields.iter().filter(|f| f.starts_with(&mine)) {
                let conn: Option<ConnId> = field[mine.len()..].parse().ok();
                let live = conn
                    .is_some_and(|id| presences.iter().any(|((t, c), _)| t == topic && *c == id));
                if !live {
                    let mut h = cmd("HDEL");
                    h.arg(self.topic_key("pres", topic)).arg(field);
                    cmds.push(h);
                }
            }
            if !present.contains(topic.as_str()) {
                let mut r = cmd("SREM");
                r.arg(self.node_key("npres", &self.node_id)).arg(topic);
                cmds.push(r);
            }
        }
        self.conn.run_all(cmds).await.map(|_| ())
    }

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

    pub(super) async fn on_message(&self, channel: &str, data: &[u8]) {
        if channel == self.control_channel() {
            return self.on_control(data).await;
        }
        if channel == self.node_channel(&self.node_id) {
            return self.on_node_message(channel, data).await;
        }
        let Some(topic) = self.channel_topic(channel) else {
            return;
        };
        let topic = topic.as_str();
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
        if offset.is_none() {
            // A plain publication may come more than once (sent again until every subscribed
            // node had it, see `confirm`): the first copy only.
            if let Some(seq) = super::envelope::parse_seq(fields.iter().copied()) {
                if !self.seen.lock().first(origin_node, seq) {
                    return;
                }
            }
        }
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
        let pubsub = tokio::time::timeout(Duration::from_secs(2), b.open_pubsub()).await;
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
        // A server that accepts connections but does not answer (frozen) must not hold the
        // loop.
        let subscribed = tokio::time::timeout(Duration::from_secs(2), sink.subscribe(&channels))
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                )))
            });
        if let Err(e) = subscribed {
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
        let up_since = std::time::Instant::now();
        let reconnect = b.reconnect.clone();
        drop(b);
        // A silent link breaks no connection: the heartbeat tells when Redis stopped answering
        // (see `liveness`), and then this subscription is dropped and made again.
        let mut check = tokio::time::interval(Duration::from_millis(100));
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                // The heartbeat failed: this connection may lead to a frozen server, or to one
                // that is no longer the primary.
                _ = reconnect.notified() => None,
                _ = check.tick() => match broker.upgrade() {
                    Some(b) if b.subscription_stale(up_since) => None,
                    Some(_) => continue,
                    None => return,
                },
            };
            let Some(msg) = msg else { break };
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

impl RedisBroker {
    /// The subscription connection of one server, or of the primary Sentinel names now. When
    /// that primary moved (a failover), the command connection moves to it first.
    async fn open_pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let client = match self.target.direct_client().await {
            Some(c) => c?,
            None => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "a cluster has no single subscription connection",
                )))
            }
        };
        if self.target.primary_moved(&client) {
            let m = super::link::manager(&client).await?;
            self.conn.replace(m);
            tracing::warn!(
                primary = %client.get_connection_info().addr(),
                "Sentinel named a new Redis primary: following it"
            );
        }
        client.get_async_pubsub().await
    }

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

pub(super) async fn heartbeat_loop(broker: Weak<RedisBroker>) {
    let tick = {
        let Some(b) = broker.upgrade() else { return };
        (b.cfg.node_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5))
    };
    loop {
        tokio::time::sleep(tick).await;
        let Some(b) = broker.upgrade() else { return };
        let beat = b.heartbeat().await;
        if b.conn.is_cluster() {
            // No single subscription connection to watch: the heartbeat says whether the
            // cluster answers.
            b.healthy.store(beat.is_ok(), Ordering::Release);
        }
        if let Err(e) = beat {
            b.failed("heartbeat", &e);
            if !b.conn.is_cluster() {
                // Nothing is acknowledged meanwhile; the subscription connects again (to the
                // primary Sentinel names now) and marks the broker up once it is.
                b.healthy.store(false, Ordering::Release);
                b.reconnect.notify_waiters();
            }
            continue;
        }
        if let Err(e) = b.reap_dead_nodes().await {
            b.failed("reaping dead nodes", &e);
        }
    }
}
