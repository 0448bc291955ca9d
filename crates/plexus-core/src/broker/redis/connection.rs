//! Staying connected: the subscription loop of one Redis or Sentinel (reconnect with backoff,
//! following Sentinel's primary, re-subscribe, re-announce this node's presence and counters,
//! catch up on history topics, see [`super::gaps`]; a cluster's is in [`super::shards`]), the
//! heartbeat loop (this node's liveness; reaping dead nodes, see [`super::reaper`]), and the
//! messages the subscriptions deliver.

use super::signing::{Kind, Refused};
use super::RedisBroker;
use crate::broker::BrokerEvent;
use crate::protocol::Frame;
use crate::publication::Publication;
use crate::ConnId;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::AsyncCommands;
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
            // A disconnect sent again until every node had it (`disconnect_remote`).
            Err(Refused::Replayed) => return,
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
        // Reaping reports leaves, which the node broadcasts (a broadcast may wait for
        // confirmations): it runs beside the heartbeat, never delaying it, one at a time.
        if !b.reaping.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(&b);
            tokio::spawn(async move {
                let Some(b) = weak.upgrade() else { return };
                if let Err(e) = b.reap_dead_nodes().await {
                    b.failed("reaping dead nodes", &e);
                }
                b.reaping.store(false, Ordering::Release);
            });
        }
    }
}
