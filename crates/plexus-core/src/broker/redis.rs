//! The Redis broker: many Plexus nodes behind a load balancer, one system.
//!
//! * **Fan-out**: each node subscribes once per topic with local subscribers
//!   (`<prefix>:t:<topic>`), never once per client, and fans out locally. A publication is one
//!   `PUBLISH`. On topics without history the publishing node delivers to its own subscribers
//!   first, without waiting for Redis.
//! * **History**: one Lua script assigns the next offset (`INCR`), encodes it into the frame,
//!   appends to a stream (`XADD` with the offset as entry id, `MAXLEN`), refreshes the TTL and
//!   publishes — atomically, so every node sees a topic's offsets in order. Those publications
//!   reach every node (the publishing one too) through its subscription, which keeps per-topic
//!   order identical everywhere. The epoch lives in Redis; if Redis loses the data, a new epoch
//!   tells clients that their offsets are void.
//! * **Presence**: one hash per topic, field `<node>:<conn>`; diffs travel as broadcasts.
//! * **Limits**: counters are hashes with one field per node, checked and taken in one script.
//! * **Node failure**: every node refreshes `<prefix>:alive:<node>` (TTL `node_timeout`). Nodes
//!   reap a dead node's presence (broadcasting the leaves) and counters.
//! * **Node to node**: each node also subscribes to `<prefix>:n:<node>`, where the others send
//!   it requests (`Q <id> <from>`, a LongPoll poll or POST of a session it holds) and it sends
//!   their answers (`R <id>`): LongPoll needs no sticky routing.
//! * **Outages**: local traffic goes on; everything else fails fast while the subscription is
//!   down (nothing waits on a dead connection, nothing is acknowledged that the cluster will not
//!   deliver); the subscription reconnects with backoff, re-subscribes, and re-announces this
//!   node's presence and counters (Redis may have restarted empty). History topics refuse
//!   publishes while Redis is down rather than deliver messages that recovery could never replay.

use super::{
    Broker, BrokerError, BrokerEvent, BrokerEventHandler, CounterKey, HistoryItem, HistoryPage,
    RequestHandler,
};
use crate::hub::Hub;
use crate::protocol::{encode_broadcast_parts, Frame};
use crate::publication::Publication;
use crate::ConnId;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, PubSubSink};
use redis::AsyncCommands;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// Cluster settings.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`.
    pub url: String,
    /// Key and channel prefix, so that several clusters can share one Redis.
    pub prefix: String,
    /// A node that stops refreshing its heartbeat for this long is dead: its presence leaves.
    pub node_timeout: Duration,
    /// For `rediss://` URLs: the CA certificate (PEM) to trust instead of the system roots.
    pub tls_ca: Option<Vec<u8>>,
    /// A topic's history keys expire this long after its last publish when its rule sets no
    /// TTL (`limits.history_idle_secs`): nothing in Redis lives forever.
    pub history_idle: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "plexus".into(),
            node_timeout: Duration::from_secs(20),
            tls_ca: None,
            history_idle: Duration::from_secs(3600),
        }
    }
}

/// Appends to history and publishes, atomically. The message is stored once, as its frame;
/// the stream is capped by count (MAXLEN) and every key expires (the rule's TTL, else the
/// history idle time) after the last publish.
/// KEYS: offset, stream, epoch. ARGV: frame head, frame tail, kind, maxlen, ttl ms, channel,
/// header (node id and exclude), new epoch, now ms.
/// Calls to other nodes in flight, and requests from them being answered, at most.
const MAX_NODE_REQUESTS: usize = 10_000;

const PUBLISH_HISTORY: &str = r#"
local offset = redis.call('INCR', KEYS[1])
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[8]
  redis.call('SET', KEYS[3], epoch)
end
local frame = ARGV[1]
if ARGV[3] == 't' then frame = ARGV[1] .. offset .. ARGV[2] end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], offset .. '-0', 'f', frame, 'k', ARGV[3], 't', ARGV[9])
local ttl = tonumber(ARGV[5])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('PUBLISH', ARGV[6], 'P1 ' .. ARGV[7] .. ' ' .. offset .. ' ' .. ARGV[3] .. '\n' .. frame)
return {offset, epoch}
"#;

/// Takes one unit of a counter if the cluster total stays within the limit (0: no limit).
/// KEYS: counter hash, this node's counter index. ARGV: node, limit.
const CLAIM: &str = r#"
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
local limit = tonumber(ARGV[2])
if limit > 0 and total >= limit then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[2], KEYS[1])
return 1
"#;

pub struct RedisBroker {
    hub: Arc<Hub>,
    cfg: RedisConfig,
    node_id: String,
    client: redis::Client,
    conn: ConnectionManager,
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    /// Topics this node is subscribed to (re-subscribed after a reconnect).
    topics: Mutex<HashSet<String>>,
    healthy: AtomicBool,
    events: OnceLock<Weak<dyn BrokerEventHandler>>,
    requests: OnceLock<Weak<dyn RequestHandler>>,
    /// Calls to other nodes waiting for their answer, by request id.
    pending: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Bytes>>>,
    next_request: AtomicU64,
    /// Requests from other nodes being answered (bounded).
    serving: Arc<tokio::sync::Semaphore>,
    /// The history epoch last seen for each subscribed topic with history, to notice after an
    /// outage that Redis lost it (one entry per subscribed topic at most).
    epochs: Mutex<HashMap<String, String>>,
    /// This node's counter units and presences, re-announced after a reconnect.
    claims: Mutex<HashMap<String, i64>>,
    presences: Mutex<HashMap<(String, ConnId), String>>,
    publish_history: redis::Script,
    claim_script: redis::Script,
    pub errors: AtomicU64,
}

fn err(e: impl std::fmt::Display) -> BrokerError {
    BrokerError(e.to_string())
}

impl RedisBroker {
    /// Connects (failing clearly if Redis is unreachable at start) and starts the subscription
    /// and heartbeat tasks.
    pub async fn connect(hub: Arc<Hub>, cfg: RedisConfig) -> Result<Arc<Self>, BrokerError> {
        let client = match &cfg.tls_ca {
            Some(ca) => redis::Client::build_with_tls(
                cfg.url.as_str(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(cfg.url.as_str()),
        }
        .map_err(|e| err(format!("invalid Redis settings: {e}")))?;
        let mgr_cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_connection_manager_with_config(mgr_cfg),
        )
        .await
        .map_err(|_| {
            err(format!(
                "cannot connect to Redis at {}: timed out",
                redact(&cfg.url)
            ))
        })?
        .map_err(|e| {
            err(format!(
                "cannot connect to Redis at {}: {e}",
                redact(&cfg.url)
            ))
        })?;
        let node_id = {
            use rand::Rng;
            let mut b = [0u8; 6];
            rand::rng().fill(&mut b);
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        };
        let broker = Arc::new(RedisBroker {
            hub,
            cfg,
            node_id,
            client,
            conn,
            sink: tokio::sync::Mutex::new(None),
            topics: Mutex::new(HashSet::new()),
            healthy: AtomicBool::new(false),
            events: OnceLock::new(),
            claims: Mutex::new(HashMap::new()),
            presences: Mutex::new(HashMap::new()),
            requests: OnceLock::new(),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            serving: Arc::new(tokio::sync::Semaphore::new(MAX_NODE_REQUESTS)),
            epochs: Mutex::new(HashMap::new()),
            publish_history: redis::Script::new(PUBLISH_HISTORY),
            claim_script: redis::Script::new(CLAIM),
            errors: AtomicU64::new(0),
        });
        broker
            .heartbeat()
            .await
            .map_err(|e| err(format!("Redis heartbeat failed: {e}")))?;
        tokio::spawn(subscription_loop(Arc::downgrade(&broker)));
        tokio::spawn(heartbeat_loop(Arc::downgrade(&broker)));
        // Wait briefly for the subscription, so that the node starts fully connected.
        for _ in 0..50 {
            if broker.healthy.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(broker)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Tells the registered handler (the node) about `event`.
    async fn report(&self, event: BrokerEvent) {
        if let Some(handler) = self.events.get().and_then(Weak::upgrade) {
            handler.handle(event).await;
        }
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.cfg.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    fn topic_channel(&self, topic: &str) -> String {
        self.key(&["t", topic])
    }

    fn control_channel(&self) -> String {
        self.key(&["ctl"])
    }

    /// The channel where node `node` receives requests from the others, and their answers.
    fn node_channel(&self, node: &str) -> String {
        self.key(&["n", node])
    }

    /// A message on this node's channel: `Q <id> <from>\n<request>` or `R <id>\n<answer>`.
    async fn on_node_message(&self, data: &[u8]) {
        let Some(nl) = data.iter().position(|b| *b == b'\n') else {
            return;
        };
        let header = String::from_utf8_lossy(&data[..nl]).into_owned();
        let body = Bytes::copy_from_slice(&data[nl + 1..]);
        let mut parts = header.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("R"), Some(id), None) => {
                let waiter = id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| self.pending.lock().remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(body);
                }
            }
            (Some("Q"), Some(id), Some(from)) => {
                let Some(handler) = self.requests.get().and_then(Weak::upgrade) else {
                    return;
                };
                // Answered in a task of its own: a poll waits, the subscription must not.
                let Ok(permit) = self.serving.clone().try_acquire_owned() else {
                    self.failed("node request", &"too many requests from other nodes");
                    return;
                };
                let reply_to = self.node_channel(from);
                let header = format!("R {id}\n");
                let mut conn = self.conn.clone();
                tokio::spawn(async move {
                    let answer = handler.handle_request(body).await;
                    drop(permit);
                    let mut msg = header.into_bytes();
                    msg.extend_from_slice(&answer);
                    let _ = conn.publish::<_, _, ()>(reply_to, msg).await;
                });
            }
            _ => {}
        }
    }

    /// The epoch of `topic`'s history, made now if there is none. Only the epoch: it expires
    /// like the history would (nothing a read creates lives forever).
    async fn settle_epoch(
        &self,
        c: &mut ConnectionManager,
        topic: &str,
    ) -> redis::RedisResult<String> {
        let fresh = {
            use rand::Rng;
            format!("{:08x}", rand::rng().random::<u32>())
        };
        let current: Option<String> = redis::cmd("SET")
            .arg(self.key(&["epoch", topic]))
            .arg(&fresh)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(self.cfg.history_idle.as_millis().max(1) as u64)
            .query_async(c)
            .await?;
        Ok(current.unwrap_or(fresh))
    }

    /// Notes the epoch of a subscribed topic's history.
    fn remember_epoch(&self, topic: &str, epoch: String) {
        if self.topics.lock().contains(topic) {
            self.epochs.lock().insert(topic.to_owned(), epoch);
        }
    }

    /// After a reconnect: the subscribed topics whose history Redis no longer has (or has
    /// under another epoch) get a new epoch, and the node is told, to tell their clients.
    async fn check_epochs(&self) -> redis::RedisResult<()> {
        let known: Vec<(String, String)> = self
            .epochs
            .lock()
            .iter()
            .map(|(t, e)| (t.clone(), e.clone()))
            .collect();
        let mut c = self.conn.clone();
        for (topic, old) in known {
            let epoch = self.settle_epoch(&mut c, &topic).await?;
            if epoch != old {
                self.epochs.lock().insert(topic.clone(), epoch.clone());
                tracing::warn!(
                    topic,
                    "history lost during the Redis outage: clients are told (history_reset)"
                );
                self.report(BrokerEvent::HistoryReset { topic, epoch })
                    .await;
            }
        }
        Ok(())
    }

    /// Fails fast while Redis is unreachable (the subscription is down): nothing waits on a
    /// dead connection, nothing is queued to be sent later, and nothing is acknowledged that
    /// the cluster will not deliver. The subscription loop reconnects and re-subscribes
    /// before the broker counts as up again.
    fn check_up(&self) -> Result<(), BrokerError> {
        if self.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            Err(err("redis unavailable"))
        }
    }

    fn failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        // One line per failure burst, not one per message.
        if n.is_multiple_of(100) {
            tracing::warn!(error = %e, failures = n + 1, "redis {what} failed");
        }
    }

    /// Refreshes this node's heartbeat.
    async fn heartbeat(&self) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let ttl = self.cfg.node_timeout.as_millis() as u64;
        redis::pipe()
            .cmd("SET")
            .arg(self.key(&["alive", &self.node_id]))
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .sadd(self.key(&["nodes"]), &self.node_id)
            .ignore()
            .query_async::<()>(&mut c)
            .await
    }

    /// Writes this node's presences and counters again (after Redis lost them, or a blip).
    async fn reannounce(&self) -> redis::RedisResult<()> {
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
    async fn reap_dead_nodes(&self) -> redis::RedisResult<()> {
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
                for (field, value) in entries.iter().filter(|(f, _)| f.starts_with(&prefix)) {
                    let _: () = c.hdel(&hash, field).await?;
                    if let Ok(v) = serde_json::from_str::<Value>(value) {
                        if let (Some(key), Some(meta)) = (v["k"].as_str(), v.get("m")) {
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
                    })
                    .await;
                }
            }
            let counters: Vec<String> = c.smembers(self.key(&["ncnt", &node])).await?;
            for counter in counters {
                let _: () = c.hdel(&counter, &node).await?;
            }
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

    async fn on_message(&self, channel: &str, data: &[u8]) {
        if channel == self.control_channel() {
            return self.on_control(data).await;
        }
        if channel == self.node_channel(&self.node_id) {
            return self.on_node_message(data).await;
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
        match Publication::from_frame(topic, frame, offset, exclude) {
            Ok(p) => {
                self.hub.deliver(&Arc::new(p));
            }
            Err(e) => self.failed("decoding a publication", &e),
        }
    }

    async fn on_control(&self, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        let mut parts = text.splitn(3, ' ');
        if let (Some("disconnect"), Some(origin), Some(sub)) =
            (parts.next(), parts.next(), parts.next())
        {
            if origin != self.node_id {
                self.report(BrokerEvent::DisconnectUser {
                    sub: sub.to_owned(),
                })
                .await;
            }
        }
    }
}

/// Redacts a password in a Redis URL for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

async fn subscription_loop(broker: Weak<RedisBroker>) {
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
        if was_down {
            if let Err(e) = b.check_epochs().await {
                b.failed("history epoch check", &e);
            }
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
        drop(b);
        tokio::time::sleep(backoff).await;
    }
}

async fn heartbeat_loop(broker: Weak<RedisBroker>) {
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

#[async_trait]
impl Broker for RedisBroker {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn set_event_handler(&self, handler: Weak<dyn BrokerEventHandler>) {
        let _ = self.events.set(handler);
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn set_request_handler(&self, handler: Weak<dyn RequestHandler>) {
        let _ = self.requests.set(handler);
    }

    async fn call_node(
        &self,
        node: &str,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BrokerError> {
        self.check_up()?;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= MAX_NODE_REQUESTS {
                return Err(err("too many calls to other nodes in flight"));
            }
            pending.insert(id, tx);
        }
        let mut msg = format!("Q {id} {}\n", self.node_id).into_bytes();
        msg.extend_from_slice(&request);
        let mut c = self.conn.clone();
        let delivered: Result<i64, _> = c.publish(self.node_channel(node), msg).await;
        let answer = match delivered {
            Ok(0) => Err(err(format!("node {node} is gone"))),
            Ok(_) => tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| err(format!("node {node} did not answer in time")))
                .and_then(|r| r.map_err(|_| err("the call was dropped"))),
            Err(e) => Err(err(e)),
        };
        if answer.is_err() {
            self.pending.lock().remove(&id);
        }
        answer
    }

    async fn publish(&self, publication: Publication) -> Result<Option<u64>, BrokerError> {
        let origin = match publication.exclude {
            Some(c) => format!("{}/{c}", self.node_id),
            None => self.node_id.clone(),
        };
        let channel = self.topic_channel(&publication.topic);
        let Some(opts) = publication.history else {
            // Local subscribers first, without waiting for Redis.
            let publication = Arc::new(publication);
            self.hub.deliver(&publication);
            let kind = if matches!(publication.frame, Frame::Binary(_)) {
                "b"
            } else {
                "t"
            };
            self.check_up()
                .map_err(|e| err(format!("delivered on this node only: {e}")))?;
            let mut envelope = format!("P1 {origin} - {kind}\n").into_bytes();
            envelope.extend_from_slice(publication.frame.bytes());
            let mut c = self.conn.clone();
            if let Err(e) = c.publish::<_, _, ()>(&channel, envelope).await {
                self.failed("publish", &e);
                return Err(err(format!("delivered on this node only: {e}")));
            }
            return Ok(None);
        };
        // History: the script assigns the offset and publishes; every node (this one too)
        // delivers from its subscription, in offset order.
        self.check_up()
            .map_err(|e| err(format!("history unavailable, not published: {e}")))?;
        // The script puts the offset between the two parts of the frame.
        let parts =
            encode_broadcast_parts(&publication.topic, &publication.event, &publication.payload)
                .map_err(err)?;
        let kind = if parts.binary { "b" } else { "t" };
        let epoch = {
            use rand::Rng;
            format!("{:08x}", rand::rng().random::<u32>())
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let topic = &publication.topic;
        let mut c = self.conn.clone();
        let result: Result<(u64, String), _> = self
            .publish_history
            .key(self.key(&["off", topic]))
            .key(self.key(&["hist", topic]))
            .key(self.key(&["epoch", topic]))
            .arg(parts.head.as_ref())
            .arg(parts.tail.as_ref())
            .arg(kind)
            .arg(opts.size.max(1))
            .arg(opts.ttl.unwrap_or(self.cfg.history_idle).as_millis().max(1) as u64)
            .arg(&channel)
            .arg(&origin)
            .arg(epoch)
            .arg(now_ms)
            .invoke_async(&mut c)
            .await;
        match result {
            Ok((offset, epoch)) => {
                self.remember_epoch(topic, epoch);
                Ok(Some(offset))
            }
            Err(e) => {
                self.failed("history publish", &e);
                Err(err(format!("history unavailable, not published: {e}")))
            }
        }
    }

    async fn history(&self, topic: &str, since: Option<u64>) -> Result<HistoryPage, BrokerError> {
        self.check_up()?;
        let mut c = self.conn.clone();
        let (top, epoch): (Option<u64>, Option<String>) = redis::pipe()
            .get(self.key(&["off", topic]))
            .get(self.key(&["epoch", topic]))
            .query_async(&mut c)
            .await
            .map_err(|e| {
                self.failed("history read", &e);
                err(e)
            })?;
        let top = top.unwrap_or(0);
        let epoch = match epoch {
            Some(e) => e,
            // No history yet (or it expired / Redis lost it): settle an epoch now, so that
            // offsets handed out from here on are tied to it.
            None => self.settle_epoch(&mut c, topic).await.map_err(err)?,
        };
        self.remember_epoch(topic, epoch.clone());
        let Some(since) = since else {
            return Ok(HistoryPage {
                epoch,
                top,
                complete: true,
                items: Vec::new(),
            });
        };
        if since >= top {
            // Nothing after `since` (also guards the range below against overflow).
            return Ok(HistoryPage {
                epoch,
                top,
                complete: true,
                items: Vec::new(),
            });
        }
        let reply: redis::streams::StreamRangeReply = c
            .xrange(self.key(&["hist", topic]), format!("{}-0", since + 1), "+")
            .await
            .map_err(|e| {
                self.failed("history read", &e);
                err(e)
            })?;
        let mut items = Vec::new();
        for entry in reply.ids {
            let offset: u64 = entry
                .id
                .split('-')
                .next()
                .and_then(|o| o.parse().ok())
                .unwrap_or(0);
            let get = |k: &str| -> Vec<u8> { entry.get::<Vec<u8>>(k).unwrap_or_default() };
            let frame_bytes = Bytes::from(get("f"));
            let frame = if get("k") == b"b" {
                Frame::Binary(frame_bytes)
            } else {
                Frame::Text(frame_bytes)
            };
            // Stored once, as the frame: event and payload are decoded for the reader.
            match Publication::from_frame(topic, frame, Some(offset), None) {
                Ok(p) => items.push(HistoryItem {
                    offset,
                    publication: Arc::new(p),
                }),
                Err(e) => self.failed("decoding a history entry", &e),
            }
        }
        let first = items.first().map_or(top + 1, |i| i.offset);
        let complete = since.saturating_add(1) >= first;
        Ok(HistoryPage {
            epoch,
            top,
            complete,
            items,
        })
    }

    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError> {
        self.topics.lock().insert(topic.to_owned());
        let mut sink = self.sink.lock().await;
        match sink.as_mut() {
            Some(s) => s.subscribe(self.topic_channel(topic)).await.map_err(|e| {
                self.failed("subscribe", &e);
                err(e)
            }),
            // Not connected: the subscription loop subscribes it when Redis is back.
            None => Err(err(
                "redis unavailable: subscribed locally, remote messages resume on reconnect",
            )),
        }
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), BrokerError> {
        self.topics.lock().remove(topic);
        self.epochs.lock().remove(topic);
        let mut sink = self.sink.lock().await;
        if let Some(s) = sink.as_mut() {
            s.unsubscribe(self.topic_channel(topic))
                .await
                .map_err(err)?;
        }
        Ok(())
    }

    async fn presence_set(
        &self,
        topic: &str,
        conn: ConnId,
        key: &str,
        meta: &Value,
    ) -> Result<(), BrokerError> {
        let value = serde_json::json!({"k": key, "m": meta}).to_string();
        self.presences
            .lock()
            .insert((topic.to_owned(), conn), value.clone());
        // Re-announced from the local copy when Redis is back.
        self.check_up()?;
        let mut c = self.conn.clone();
        redis::pipe()
            .hset(
                self.key(&["pres", topic]),
                format!("{}:{conn}", self.node_id),
                value,
            )
            .ignore()
            .sadd(self.key(&["npres", &self.node_id]), topic)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| {
                self.failed("presence", &e);
                err(e)
            })
    }

    async fn presence_remove(&self, topic: &str, conn: ConnId) -> Result<(), BrokerError> {
        self.presences.lock().remove(&(topic.to_owned(), conn));
        self.check_up()?;
        let mut c = self.conn.clone();
        c.hdel::<_, _, ()>(
            self.key(&["pres", topic]),
            format!("{}:{conn}", self.node_id),
        )
        .await
        .map_err(|e| {
            self.failed("presence", &e);
            err(e)
        })
    }

    async fn presence_state(&self, topic: &str) -> Result<Option<Value>, BrokerError> {
        self.check_up()?;
        let mut c = self.conn.clone();
        let entries: HashMap<String, String> =
            c.hgetall(self.key(&["pres", topic])).await.map_err(|e| {
                self.failed("presence", &e);
                err(e)
            })?;
        let mut state = serde_json::Map::new();
        for value in entries.values() {
            let Ok(v) = serde_json::from_str::<Value>(value) else {
                continue;
            };
            let (Some(key), Some(meta)) = (v["k"].as_str(), v.get("m")) else {
                continue;
            };
            let entry = state
                .entry(key.to_owned())
                .or_insert_with(|| serde_json::json!({"metas": []}));
            if let Some(list) = entry["metas"].as_array_mut() {
                list.push(meta.clone());
            }
        }
        Ok(Some(Value::Object(state)))
    }

    async fn claim(&self, key: &CounterKey, limit: u32) -> Result<bool, BrokerError> {
        let counter = self.key(&["cnt", &key.to_string()]);
        self.check_up()?;
        let mut c = self.conn.clone();
        let taken: i64 = self
            .claim_script
            .key(&counter)
            .key(self.key(&["ncnt", &self.node_id]))
            .arg(&self.node_id)
            .arg(limit)
            .invoke_async(&mut c)
            .await
            .map_err(|e| {
                self.failed("limit claim", &e);
                err(e)
            })?;
        if taken == 1 {
            *self.claims.lock().entry(counter).or_insert(0) += 1;
        }
        Ok(taken == 1)
    }

    async fn release(&self, key: &CounterKey) -> Result<(), BrokerError> {
        let counter = self.key(&["cnt", &key.to_string()]);
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
        let left: i64 = c.hincr(&counter, &self.node_id, -1).await.map_err(|e| {
            self.failed("limit release", &e);
            err(e)
        })?;
        if left <= 0 {
            let _: () = c.hdel(&counter, &self.node_id).await.map_err(err)?;
        }
        Ok(())
    }

    async fn channels(&self) -> Result<Option<Vec<(String, usize)>>, BrokerError> {
        self.check_up()?;
        let mut c = self.conn.clone();
        let prefix = self.key(&["cnt", CounterKey::SUBSCRIBERS_PREFIX]);
        let pattern = format!("{prefix}*");
        let keys: Vec<String> = {
            let mut iter: redis::AsyncIter<String> = c.scan_match(&pattern).await.map_err(err)?;
            let mut keys = Vec::new();
            while let Some(k) = iter.next_item().await {
                keys.push(k.map_err(err)?);
            }
            keys
        };
        let mut out = Vec::new();
        for k in keys {
            let vals: Vec<i64> = c.hvals(&k).await.map_err(err)?;
            let n: i64 = vals.iter().sum();
            if n > 0 {
                out.push((k.trim_start_matches(&prefix).to_owned(), n as usize));
            }
        }
        out.sort();
        Ok(Some(out))
    }

    async fn disconnect_remote(&self, sub: &str) -> Result<(), BrokerError> {
        let mut c = self.conn.clone();
        c.publish::<_, _, ()>(
            self.control_channel(),
            format!("disconnect {} {sub}", self.node_id),
        )
        .await
        .map_err(err)
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}
