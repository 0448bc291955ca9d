//! The Redis broker: many Plexus nodes behind a load balancer, one system.
//!
//! * **Fan-out**: each node subscribes once per topic with local subscribers
//!   (`<prefix>:t:{<topic>}`), never once per client, and fans out locally. A publication is
//!   one `PUBLISH` (`SPUBLISH` in a Redis Cluster), in a script that also counts the subscribed
//!   nodes, so that a node re-subscribing after a failover still gets it ([`confirm`]). On
//!   topics without history the publishing node delivers to its own subscribers first, without
//!   waiting for Redis.
//! * **History**: one Lua script assigns the next offset (`INCR`), encodes it into the frame,
//!   appends to a stream (`XADD` with the offset as entry id, `MAXLEN`), refreshes the TTL and
//!   publishes — atomically, so every node sees a topic's offsets in order. Those publications
//!   reach every node (the publishing one too) through its subscription, which keeps per-topic
//!   order identical everywhere. The epoch lives in Redis with the replication id of the
//!   instance that wrote it; if Redis loses the data, or another instance (a promoted replica)
//!   now holds it, a new epoch tells clients that their offsets are void. Each node delivers a
//!   topic's offsets once and in order, replaying gaps from the stream ([`gaps`]).
//! * **Presence**: one hash per topic, field `<node>:<conn>`; diffs travel as broadcasts.
//! * **Limits**: counters are hashes with one field per node, checked and taken in one script.
//! * **Node failure**: every node refreshes `<prefix>:alive:{<node>}` (TTL `node_timeout`).
//!   Nodes reap a dead node's presence (broadcasting the leaves) and counters ([`reaper`]).
//! * **Node to node**: each node also subscribes to `<prefix>:n:{<node>}`, where the others send
//!   it requests (a LongPoll poll or POST of a session it holds, the admin console's figures
//!   and drain) and it sends their answers: LongPoll needs no sticky routing. These messages,
//!   and the user disconnects on `<prefix>:ctl`, are signed with the cluster secret
//!   ([`signing`]): writing to Redis is not enough to command a node.
//! * **Outages**: local traffic goes on; everything else fails fast while the subscription is
//!   down (nothing waits on a dead connection, nothing is acknowledged that the cluster will not
//!   deliver); the subscription reconnects with backoff, re-subscribes, and re-announces this
//!   node's presence and counters (Redis may have restarted empty). History topics refuse
//!   publishes while Redis is down rather than deliver messages that recovery could never replay.
//!
//! This file holds the broker and its [`Broker`] operations. Beside it: [`link`] the three
//! ways to reach Redis (one server, Sentinel, a Redis Cluster) behind one connection type,
//! [`config`] the settings, [`keys`] every key and channel name (hash-tagged per topic and per
//! node), [`history`] and [`presence`] the Redis side of those two ([`state_reads`]: one read of a
//! topic's presence shared by the node's joiners), [`gaps`] each history
//! topic's offsets delivered exactly once and in order on this node (duplicates dropped, gaps
//! replayed, catch-up after a reconnect), [`confirm`] plain broadcasts confirmed on every
//! subscribed node, [`envelope`] the header of a publication on a topic's channel,
//! [`connection`] the subscription of one Redis or Sentinel and the heartbeat, [`shards`] a
//! cluster's sharded subscription, [`reaper`] dead nodes reaped, [`liveness`] this node's last
//! successful heartbeat (and its state written again after a reap), [`registry`] the
//! subscriber totals, counters and connection registry that make limits and webhooks exact
//! across the cluster, [`calls`] the node-to-node requests, [`signing`] signs and checks them,
//! [`scripts`] the Lua scripts of the atomic operations.

mod calls;
mod config;
mod confirm;
mod connection;
mod envelope;
mod gaps;
mod history;
mod holds;
mod keys;
mod link;
mod liveness;
mod presence;
mod reaper;
mod registry;
mod scripts;
mod shards;
mod signing;
mod state_reads;

use super::{
    Broker, BrokerError, BrokerEvent, BrokerEventHandler, CounterKey, HistoryItem, HistoryPage,
    HoldKey, RequestHandler,
};
use crate::hub::Hub;
use crate::presence::PresenceState;
use crate::protocol::Frame;
use crate::publication::Publication;
use crate::ConnId;
use async_trait::async_trait;
use bytes::Bytes;
use calls::MAX_NODE_REQUESTS;
use config::redact;
pub use config::RedisConfig;
use connection::{heartbeat_loop, subscription_loop};
use envelope::sender_header;
use link::{Conn, Target};
use parking_lot::Mutex;
use redis::aio::PubSubSink;
use redis::AsyncCommands;
use scripts::{CLAIM, PUBLISH_HISTORY, READ_HISTORY};
use serde_json::Value;
use shards::cluster_subscription_loop;
use signing::{Kind, Signer};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

pub struct RedisBroker {
    hub: Arc<Hub>,
    cfg: RedisConfig,
    node_id: String,
    /// Where Redis is (one server, Sentinel's primary, or a cluster).
    target: Target,
    conn: Conn,
    /// The subscription's sink (one server or Sentinel; a cluster subscribes through `conn`).
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    /// Topics this node is subscribed to (re-subscribed after a reconnect).
    topics: Mutex<HashSet<String>>,
    healthy: AtomicBool,
    /// Wakes the subscription loop (one server or Sentinel) to drop its connection and connect
    /// again: the heartbeat failed, so the server may be frozen or no longer the primary,
    /// which a connection that is not reset never shows.
    reconnect: Arc<tokio::sync::Notify>,
    /// Held (read) by each count and presence change from its local step to its Redis write,
    /// and (write) by a re-announce from its snapshot to its write, which would otherwise undo
    /// a change landing in between.
    gate: tokio::sync::RwLock<()>,
    /// Nodes whose heartbeat key was found missing, and since when (see `reap_dead_nodes`).
    suspects: Mutex<HashMap<String, std::time::Instant>>,
    /// A reaping of dead nodes is running (one at a time, beside the heartbeat).
    reaping: AtomicBool,
    /// A re-announce after a lost cluster shard is pending (one at a time).
    reannouncing: AtomicBool,
    events: OnceLock<Weak<dyn BrokerEventHandler>>,
    requests: OnceLock<Weak<dyn RequestHandler>>,
    /// Calls to other nodes waiting for their answer, by request id, with the node called.
    pending: Mutex<HashMap<u64, (String, tokio::sync::oneshot::Sender<Bytes>)>>,
    next_request: AtomicU64,
    /// Requests from other nodes being answered (bounded).
    serving: Arc<tokio::sync::Semaphore>,
    /// Where this node's delivery of each subscribed history topic stands (epoch, last offset
    /// delivered): duplicates are dropped, gaps replayed from the stream, a new epoch reported
    /// (see [`gaps`]). One entry per subscribed topic at most.
    cursors: Mutex<HashMap<String, gaps::Cursor>>,
    /// This node's counter units and presences, re-announced after a reconnect.
    claims: Mutex<HashMap<String, i64>>,
    presences: Mutex<HashMap<(String, ConnId), String>>,
    /// Presence reads shared by this node's joiners of a topic.
    state_reads: state_reads::StateReads,
    /// This node's live connections as recorded in its registry (when webhooks want them).
    conns: Mutex<HashMap<ConnId, String>>,
    /// The one task that writes the registry, in the order of the changes (see [`registry`]).
    registry_ops: OnceLock<tokio::sync::mpsc::Sender<registry::RegistryOp>>,
    /// An op was not written (queue full, or Redis refused it): the registry is rewritten whole.
    registry_dirty: AtomicBool,
    /// Signs and checks node-to-node and control messages.
    signer: Arc<Signer>,
    /// Messages refused by the signer (logged once per burst).
    refused: AtomicU64,
    publish_history: redis::Script,
    /// The plain broadcast script ([`confirm`]).
    publish_plain_script: redis::Script,
    /// The number of this node's next plain publication (`i=`, see [`confirm`]).
    next_seq: AtomicU64,
    /// The plain publications received lately, by origin, to drop copies sent again.
    seen: Mutex<confirm::Seen>,
    /// Topics whose last broadcast waited in vain for a node: (reached, registered, when).
    shortfalls: Mutex<HashMap<String, (i64, i64, std::time::Instant)>>,
    read_history_script: redis::Script,
    claim_script: redis::Script,
    pub errors: AtomicU64,
    /// When the last successful heartbeat started ([`liveness`]).
    last_beat: liveness::LastBeat,
}

/// How long a subscribe or unsubscribe on the subscription connection may wait for Redis
/// (the commands' response timeout).
const SINK_TIMEOUT: Duration = Duration::from_secs(2);

fn err(e: impl std::fmt::Display) -> BrokerError {
    BrokerError(e.to_string())
}

impl RedisBroker {
    /// Connects (failing clearly if Redis is unreachable at start) and starts the subscription
    /// and heartbeat tasks.
    pub async fn connect(hub: Arc<Hub>, cfg: RedisConfig) -> Result<Arc<Self>, BrokerError> {
        if cfg.cluster_secret.is_empty() {
            return Err(err(
                "no cluster secret: node-to-node messages cannot be signed (redis.cluster_secret)",
            ));
        }
        let signer = Arc::new(Signer::new(cfg.cluster_secret.as_bytes()));
        // A cluster delivers its sharded messages here (RESP3 pushes).
        let (push_tx, push_rx) = tokio::sync::mpsc::unbounded_channel();
        let target = Target::open(&cfg.url, cfg.tls_ca.as_deref(), push_tx)
            .map_err(|e| err(format!("invalid Redis settings: {e}")))?;
        if matches!(target, Target::Cluster(_)) && cfg.prefix.contains('{') {
            // The hash tag would start in the prefix: a topic's keys in different slots.
            return Err(err(format!(
                "invalid Redis settings: redis.prefix `{}` holds a `{{`, which in a Redis \
                 Cluster would spread one topic's keys over several slots",
                cfg.prefix
            )));
        }
        let conn = tokio::time::timeout(Duration::from_secs(5), target.connect())
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
            target,
            conn,
            sink: tokio::sync::Mutex::new(None),
            topics: Mutex::new(HashSet::new()),
            healthy: AtomicBool::new(false),
            reconnect: Arc::new(tokio::sync::Notify::new()),
            reannouncing: AtomicBool::new(false),
            reaping: AtomicBool::new(false),
            suspects: Mutex::new(HashMap::new()),
            gate: tokio::sync::RwLock::new(()),
            events: OnceLock::new(),
            claims: Mutex::new(HashMap::new()),
            presences: Mutex::new(HashMap::new()),
            state_reads: state_reads::StateReads::default(),
            conns: Mutex::new(HashMap::new()),
            registry_ops: OnceLock::new(),
            registry_dirty: AtomicBool::new(false),
            requests: OnceLock::new(),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            serving: Arc::new(tokio::sync::Semaphore::new(MAX_NODE_REQUESTS)),
            cursors: Mutex::new(HashMap::new()),
            signer,
            refused: AtomicU64::new(0),
            publish_history: redis::Script::new(PUBLISH_HISTORY),
            publish_plain_script: RedisBroker::plain_script(),
            next_seq: AtomicU64::new(1),
            seen: Mutex::new(confirm::Seen::default()),
            shortfalls: Mutex::new(HashMap::new()),
            read_history_script: redis::Script::new(READ_HISTORY),
            claim_script: redis::Script::new(CLAIM),
            errors: AtomicU64::new(0),
            last_beat: Default::default(),
        });
        broker
            .heartbeat()
            .await
            .map_err(|e| err(format!("Redis heartbeat failed: {e}")))?;
        broker.start_registry_writer();
        if broker.conn.is_cluster() {
            tokio::spawn(cluster_subscription_loop(Arc::downgrade(&broker), push_rx));
        } else {
            drop(push_rx);
            tokio::spawn(subscription_loop(Arc::downgrade(&broker)));
        }
        tokio::spawn(heartbeat_loop(Arc::downgrade(&broker)));
        tracing::info!(mode = broker.target.mode(), "redis broker connected");
        // Wait (up to 5 s) for the subscription, so that the node starts fully connected.
        for _ in 0..250 {
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

    /// Fails fast while Redis is unreachable (the subscription is down): nothing waits on a
    /// dead connection, nothing is queued to be sent later, and nothing is acknowledged that
    /// the cluster will not deliver. The subscription loop reconnects and re-subscribes
    /// before the broker counts as up again.
    fn check_up(&self) -> Result<(), BrokerError> {
        if self.healthy.load(Ordering::Acquire) && !self.cut_off() {
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

    async fn node_ids(&self) -> Result<Vec<String>, BrokerError> {
        self.check_up()?;
        let mut c = self.conn.clone();
        let nodes: Vec<String> = c.smembers(self.key(&["nodes"])).await.map_err(err)?;
        let mut alive = Vec::with_capacity(nodes.len());
        for node in nodes {
            if node == self.node_id || c.exists(self.node_key("alive", &node)).await.map_err(err)? {
                alive.push(node);
            }
        }
        alive.sort();
        Ok(alive)
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
        self.call(node, request, timeout).await
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
            let extras = sender_header(&publication);
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let mut envelope = format!("P1 {origin} - {kind}{extras} i={seq}\n").into_bytes();
            envelope.extend_from_slice(publication.frame.bytes());
            self.publish_plain(&publication.topic, &channel, &envelope)
                .await
                .map_err(|e| err(format!("delivered on this node only: {e}")))?;
            return Ok(None);
        };
        self.publish_with_history(publication, opts, &origin, &channel)
            .await
    }

    async fn history(&self, topic: &str, since: Option<u64>) -> Result<HistoryPage, BrokerError> {
        self.read_history(topic, since).await
    }

    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError> {
        self.topics.lock().insert(topic.to_owned());
        if let Conn::Cluster(cc) = &self.conn {
            // Re-subscribed by the redis crate after a slot moves or a shard fails over.
            cc.clone()
                .ssubscribe(self.topic_channel(topic))
                .await
                .map_err(|e| {
                    self.failed("subscribe", &e);
                    err(e)
                })?;
            self.register_subscription(topic).await;
            return Ok(());
        }
        let mut sink = self.sink.lock().await;
        match sink.as_mut() {
            // Bounded like every command: a silent link must not hold the sink (see `liveness`).
            Some(s) => {
                match tokio::time::timeout(SINK_TIMEOUT, s.subscribe(self.topic_channel(topic)))
                    .await
                {
                    Ok(done) => done.map_err(|e| {
                        self.failed("subscribe", &e);
                        err(e)
                    })?,
                    Err(_) => return Err(err("redis did not confirm the subscription in time")),
                }
                drop(sink);
                self.register_subscription(topic).await;
                Ok(())
            }
            // Not connected: the subscription loop subscribes it when Redis is back.
            None => Err(err(
                "redis unavailable: subscribed locally, remote messages resume on reconnect",
            )),
        }
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), BrokerError> {
        self.topics.lock().remove(topic);
        self.cursors.lock().remove(topic);
        self.unregister_subscription(topic).await;
        if let Conn::Cluster(cc) = &self.conn {
            return cc
                .clone()
                .sunsubscribe(self.topic_channel(topic))
                .await
                .map_err(err);
        }
        let mut sink = self.sink.lock().await;
        if let Some(s) = sink.as_mut() {
            tokio::time::timeout(SINK_TIMEOUT, s.unsubscribe(self.topic_channel(topic)))
                .await
                .map_err(|_| err("redis did not confirm the unsubscription in time"))?
                .map_err(err)?;
        }
        Ok(())
    }

    async fn last(&self, topic: &str) -> Result<Option<HistoryItem>, BrokerError> {
        self.read_last(topic).await
    }

    async fn presence_set(
        &self,
        topic: &str,
        conn: ConnId,
        key: &str,
        meta: &Value,
        sub: Option<&str>,
    ) -> Result<(), BrokerError> {
        self.set_presence(topic, conn, key, meta, sub).await
    }

    async fn presence_remove(&self, topic: &str, conn: ConnId) -> Result<(), BrokerError> {
        self.remove_presence(topic, conn).await
    }

    async fn presence_state(&self, topic: &str) -> Result<Option<Arc<PresenceState>>, BrokerError> {
        self.read_presence(topic).await
    }

    async fn claim(&self, key: &CounterKey, limit: u32) -> Result<bool, BrokerError> {
        self.claim_now(key, limit).await
    }

    async fn release(&self, key: &CounterKey) -> Result<(), BrokerError> {
        self.release_now(key).await
    }

    async fn hold_put(
        &self,
        key: &HoldKey,
        id: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.hold_put_now(key, id, value, ttl).await
    }

    async fn hold_take(&self, key: &HoldKey) -> Result<Option<String>, BrokerError> {
        self.hold_take_now(key).await
    }

    async fn hold_claimed_connection(&self, public_conn: &str) {
        self.forget_claimed_connection(public_conn).await;
    }

    async fn hold_release(&self, key: &HoldKey, id: &str) -> Result<bool, BrokerError> {
        self.hold_release_now(key, id).await
    }

    fn counts_subscribers(&self) -> bool {
        true
    }

    async fn count_subscriber(
        &self,
        topic: &str,
        joined: bool,
    ) -> Result<Option<(u64, u64)>, BrokerError> {
        self.count_subscriber_now(&CounterKey::Subscribers(topic.into()), joined)
            .await
    }

    async fn count_member(
        &self,
        topic: &str,
        member: &str,
        joined: bool,
    ) -> Result<Option<(u64, u64)>, BrokerError> {
        let key = CounterKey::Members {
            topic: topic.into(),
            member: member.into(),
        };
        self.count_subscriber_now(&key, joined).await
    }

    fn connection_open(self: Arc<Self>, conn: ConnId, info: String) {
        self.record_connection(conn, info);
    }

    fn connection_close(self: Arc<Self>, conn: ConnId) {
        self.forget_connection(conn);
    }

    async fn channels(&self) -> Result<Option<Vec<(String, usize)>>, BrokerError> {
        self.read_channels().await
    }

    async fn subscriber_counts(&self, topics: &[&str]) -> Result<Option<Vec<usize>>, BrokerError> {
        self.read_subscriber_counts(topics).await
    }

    async fn disconnect_remote(&self, sub: &str) -> Result<(), BrokerError> {
        let channel = self.control_channel();
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let msg = self.signer.seal(
            &channel,
            Kind::Disconnect,
            &self.node_id,
            id,
            sub.as_bytes(),
        );
        // Sent again (the same signed message: a node that had it drops the copy as a replay)
        // until every registered node's subscription got it, for at most `CONFIRM_WITHIN`,
        // like a plain broadcast: a node re-subscribing after a blip must not keep the user.
        let started = std::time::Instant::now();
        loop {
            let mut c = self.conn.clone();
            let got: i64 = self
                .publish_cmd(&channel, &msg)
                .query_async(&mut c)
                .await
                .map_err(err)?;
            let want: i64 = c.scard(self.key(&["nodes"])).await.unwrap_or(0);
            if got >= want || started.elapsed() >= confirm::CONFIRM_WITHIN {
                return Ok(());
            }
            tokio::time::sleep(confirm::RESEND_EVERY).await;
        }
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && !self.cut_off()
    }

    fn liveness(&self) -> Option<super::Liveness> {
        self.liveness_now()
    }
}
