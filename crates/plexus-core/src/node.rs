//! A Plexus node: hub, broker, authentication, policy, limits and the registry of live
//! connections, in one object that transports and the HTTP API share.
//!
//! The node hears its broker's cluster events (a disconnect asked by another node, the
//! presence of a dead node reaped) as the broker's [`BrokerEventHandler`].

use crate::admission::{Admission, AdmissionConfig, Permit, Refusal};
use crate::auth::{AuthError, Identity, Verifier};
use crate::broker::{
    Broker, BrokerError, BrokerEvent, BrokerEventHandler, CounterKey, HistoryPage,
};
use crate::hub::Hub;
use crate::limits::{close_codes, Limits};
use crate::outbox::Outbox;
use crate::policy::Policy;
use crate::presence::Presence;
use crate::protocol::{events, EncodeError, Payload};
use crate::publication::Publication;
use crate::quota::JoinCounter;
use crate::ConnId;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Everything a node needs besides its broker.
pub struct NodeConfig {
    pub verifier: Verifier,
    pub policy: Policy,
    pub limits: Limits,
    pub admission: AdmissionConfig,
}

struct ConnEntry {
    outbox: Arc<Outbox>,
    sub: Arc<str>,
}

/// Counters exported as metrics.
#[derive(Default)]
pub struct Counters {
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub broadcasts: AtomicU64,
    pub broker_errors: AtomicU64,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

pub struct Node {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    verifier: Verifier,
    policy: Policy,
    limits: Limits,
    admission: Arc<Admission>,
    presence: Presence,
    conns: Mutex<HashMap<ConnId, ConnEntry>>,
    joins: Arc<JoinCounter>,
    next_id: AtomicU64,
    draining: AtomicBool,
    pub counters: Counters,
}

impl Node {
    /// Builds a node; `make_broker` receives the node's hub to deliver into.
    pub fn new(
        config: NodeConfig,
        make_broker: impl FnOnce(Arc<Hub>) -> Arc<dyn Broker>,
    ) -> Arc<Self> {
        let hub = Arc::new(Hub::new());
        let broker = make_broker(hub.clone());
        Self::with_broker(config, hub, broker)
    }

    /// Builds a node around a hub and the broker that delivers into it (brokers that connect
    /// asynchronously, like Redis, are built first).
    pub fn with_broker(config: NodeConfig, hub: Arc<Hub>, broker: Arc<dyn Broker>) -> Arc<Self> {
        let node = Arc::new(Node {
            hub,
            joins: JoinCounter::new(broker.clone()),
            broker,
            verifier: config.verifier,
            policy: config.policy,
            limits: config.limits,
            admission: Admission::new(config.admission),
            presence: Presence::new(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let handler: Weak<dyn BrokerEventHandler> = Arc::downgrade(&node) as _;
        node.broker.set_event_handler(handler);
        node
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn broker_name(&self) -> &'static str {
        self.broker.name()
    }

    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Per-user join counts (`max_per_user`).
    pub fn joins(&self) -> &Arc<JoinCounter> {
        &self.joins
    }

    /// Every connect-time check, for any transport: client address (trusted proxies), attempt
    /// rate, `Origin`, token, draining, per-address and per-user caps (node-wide, then
    /// cluster-wide through the broker; if the broker is unreachable the node-wide caps hold).
    pub async fn admit(
        &self,
        peer: std::net::SocketAddr,
        headers: &http::HeaderMap,
        token: Option<&str>,
    ) -> Result<(Identity, Permit), Refusal> {
        let ip = self.admission.client_ip(peer, headers);
        let refuse = |r: Refusal| {
            tracing::warn!(client = %ip, status = r.status, reason = %r.reason, "connection refused");
            r
        };
        self.admission.check_rate(ip).map_err(refuse)?;
        self.admission.check_origin(headers).map_err(refuse)?;
        let identity = self.authenticate(token).map_err(|e| refuse(e.into()))?;
        if self.is_draining() {
            return Err(refuse(Refusal {
                status: 503,
                reason: "server draining, reconnect to another node".into(),
            }));
        }
        let mut permit = self.admission.acquire(ip, &identity).inspect_err(|r| {
            tracing::warn!(client = %ip, sub = %identity.sub, status = r.status, reason = %r.reason, "connection refused");
        })?;
        let cfg = self.admission.config();
        let mut held = Vec::new();
        for (key, limit, reason) in [
            (
                CounterKey::UserConnections(identity.sub.clone()),
                cfg.max_connections_per_user,
                "too many connections for this user",
            ),
            (
                CounterKey::AddressConnections(ip),
                cfg.max_connections_per_ip,
                "too many connections from this address",
            ),
        ] {
            if limit == 0 {
                continue;
            }
            match self.broker.claim(&key, limit).await {
                Ok(true) => held.push(key),
                Ok(false) => {
                    for k in held {
                        let _ = self.broker.release(&k).await;
                    }
                    return Err(refuse(Refusal {
                        status: 429,
                        reason: reason.into(),
                    }));
                }
                Err(e) => {
                    self.counters.broker_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "cluster limit unavailable, node-wide limit applies");
                }
            }
        }
        permit.hold_cluster(self.broker.clone(), held);
        Ok((identity, permit))
    }

    /// Checks for a read without a connection (HTTP history polling, SSE topics): client
    /// address rate, `Origin`, token, and the join rule of `topic`.
    pub fn authorize_read(
        &self,
        peer: std::net::SocketAddr,
        headers: &http::HeaderMap,
        token: Option<&str>,
        topic: &str,
    ) -> Result<Identity, Refusal> {
        let ip = self.admission.client_ip(peer, headers);
        let refuse = |r: Refusal| {
            tracing::warn!(client = %ip, topic, status = r.status, reason = %r.reason, "read refused");
            r
        };
        self.admission.check_rate(ip).map_err(refuse)?;
        self.admission.check_origin(headers).map_err(refuse)?;
        let identity = self.authenticate(token).map_err(|e| refuse(e.into()))?;
        self.policy.authorize_join(&identity, topic).map_err(|d| {
            refuse(Refusal {
                status: 403,
                reason: format!("{}: {topic}", d.0),
            })
        })?;
        Ok(identity)
    }

    /// Verifies a connect token.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        match token {
            None => Err(AuthError::MissingToken),
            Some(t) => self.verifier.verify(t),
        }
    }

    /// Registers a new connection; `None` while the node is draining.
    pub(crate) fn register(&self, identity: &Identity) -> Option<(ConnId, Arc<Outbox>)> {
        if self.is_draining() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(
            self.limits.outbox_max_frames,
            self.limits.outbox_max_bytes,
        ));
        self.conns.lock().insert(
            id,
            ConnEntry {
                outbox: outbox.clone(),
                sub: identity.sub.clone(),
            },
        );
        self.counters
            .connections_total
            .fetch_add(1, Ordering::Relaxed);
        Some((id, outbox))
    }

    pub(crate) fn unregister(&self, id: ConnId) {
        self.conns.lock().remove(&id);
    }

    /// Live connections on this node.
    pub fn connection_count(&self) -> usize {
        self.conns.lock().len()
    }

    /// Closes every connection of user `sub` with 1001; returns how many.
    pub fn disconnect_user(&self, sub: &str) -> usize {
        let conns = self.conns.lock();
        let mut n = 0;
        for c in conns.values().filter(|c| &*c.sub == sub) {
            c.outbox
                .close(close_codes::FORCED_DISCONNECT, "disconnected by the server");
            n += 1;
        }
        n
    }

    // --- Presence: this node's table, mirrored cluster-wide by the broker. ---

    /// Tracks `conn` under `key`; returns its meta (with a fresh `phx_ref`).
    pub async fn presence_track(
        &self,
        topic: &str,
        key: &Arc<str>,
        conn: ConnId,
        meta: serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Value {
        let meta = self.presence.track(topic, key, conn, meta);
        if let Err(e) = self.broker.presence_set(topic, conn, key, &meta).await {
            tracing::debug!(topic, error = %e, "cluster presence not updated");
        }
        meta
    }

    pub async fn presence_update(
        &self,
        topic: &str,
        key: &str,
        conn: ConnId,
        patch: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(serde_json::Value, serde_json::Value), crate::presence::UpdateError> {
        let (old, new) = self.presence.update(topic, key, conn, patch)?;
        let mut stored = new.clone();
        if let Some(m) = stored.as_object_mut() {
            m.remove("phx_ref_prev");
        }
        if let Err(e) = self.broker.presence_set(topic, conn, key, &stored).await {
            tracing::debug!(topic, error = %e, "cluster presence not updated");
        }
        Ok((old, new))
    }

    /// Untracks `conn`; returns its last meta. The cluster copy is removed in the background
    /// (this is also called from synchronous cleanup).
    pub fn presence_untrack(
        &self,
        topic: &str,
        key: &str,
        conn: ConnId,
    ) -> Option<serde_json::Value> {
        let meta = self.presence.untrack(topic, key, conn)?;
        self.broker.clone().presence_remove_detached(topic, conn);
        Some(meta)
    }

    /// The presence of `topic` across the cluster (this node's table if the broker has none
    /// or is unreachable).
    pub async fn presence_state(&self, topic: &str) -> serde_json::Value {
        match self.broker.presence_state(topic).await {
            Ok(Some(state)) => state,
            Ok(None) => self.presence.state(topic),
            Err(e) => {
                tracing::debug!(topic, error = %e, "cluster presence unavailable, answering with this node's");
                self.presence.state(topic)
            }
        }
    }

    /// Live topics with subscriber counts, cluster-wide when the broker knows them.
    pub async fn channels(&self) -> Vec<(String, usize)> {
        match self.broker.channels().await {
            Ok(Some(c)) => c,
            _ => self.hub.topics(),
        }
    }

    /// Disconnects user `sub` on this node and asks the other nodes to do the same.
    pub async fn disconnect_user_everywhere(&self, sub: &str) -> Result<usize, BrokerError> {
        let n = self.disconnect_user(sub);
        self.broker.disconnect_remote(sub).await.map(|_| n)
    }

    /// Whether the broker's backend is reachable.
    pub fn broker_healthy(&self) -> bool {
        self.broker.healthy()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stops accepting connections and asks every live one to close with 1012 so that clients
    /// reconnect elsewhere (or to this node once it is back).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        for c in self.conns.lock().values() {
            c.outbox
                .close(close_codes::SERVICE_RESTART, "server restarting");
        }
    }

    /// Broadcasts `event` with `payload` to every subscriber of `topic` in the cluster,
    /// except the local connection `exclude`. On a topic whose rule keeps history the broadcast
    /// is retained and its offset returned.
    pub async fn publish(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        exclude: Option<ConnId>,
    ) -> Result<Option<u64>, PublishError> {
        let mut publication = Publication::new(topic, event, payload, exclude)?;
        if let Some(opts) = self.policy.history_for(topic) {
            publication = publication.with_history(opts);
        }
        self.send(publication).await
    }

    /// Publishes a server-generated event (presence diffs) that never enters history.
    pub async fn publish_unlogged(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
    ) -> Result<(), PublishError> {
        let publication = Publication::new(topic, event, payload, None)?;
        self.send(publication).await.map(|_| ())
    }

    async fn send(&self, publication: Publication) -> Result<Option<u64>, PublishError> {
        self.counters.broadcasts.fetch_add(1, Ordering::Relaxed);
        self.broker.publish(publication).await.map_err(|e| {
            self.counters.broker_errors.fetch_add(1, Ordering::Relaxed);
            PublishError::Broker(e)
        })
    }

    /// The history of `topic` after `since` (see [`Broker::history`]).
    pub async fn history(
        &self,
        topic: &str,
        since: Option<u64>,
    ) -> Result<HistoryPage, BrokerError> {
        self.broker.history(topic, since).await.inspect_err(|_| {
            self.counters.broker_errors.fetch_add(1, Ordering::Relaxed);
        })
    }

    pub(crate) async fn subscribe(&self, topic: &str, conn: ConnId, outbox: Arc<Outbox>) {
        let (added, first) = self.hub.subscribe(topic, conn, outbox);
        if added {
            // Cluster-wide subscriber count, once per (connection, topic).
            let _ = self
                .broker
                .claim(&CounterKey::Subscribers(topic.into()), 0)
                .await;
        }
        if first {
            if let Err(e) = self.broker.subscribe(topic).await {
                self.counters.broker_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic, error = %e, "broker subscribe failed");
            }
        }
    }

    /// Removes a local subscriber without waiting: `true` if the topic has no local
    /// subscriber left (then [`Node::unsubscribe_remote`] tells the broker).
    pub(crate) fn unsubscribe_local(&self, topic: &str, conn: ConnId) -> bool {
        let (removed, emptied) = self.hub.unsubscribe(topic, conn);
        if removed {
            self.broker
                .clone()
                .release_detached(CounterKey::Subscribers(topic.into()));
        }
        emptied
    }

    /// Tells the broker that `topic` lost its local subscribers, if it still has none.
    pub(crate) async fn unsubscribe_remote(&self, topic: &str) {
        if self.hub.subscriber_count(topic) == 0 {
            if let Err(e) = self.broker.unsubscribe(topic).await {
                self.counters.broker_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic, error = %e, "broker unsubscribe failed");
            }
        }
    }
}

#[async_trait]
impl BrokerEventHandler for Node {
    async fn handle(&self, event: BrokerEvent) {
        match event {
            BrokerEvent::DisconnectUser { sub } => {
                let n = self.disconnect_user(&sub);
                tracing::info!(
                    sub,
                    connections = n,
                    "disconnected at another node's request"
                );
            }
            BrokerEvent::NodeLost { node } => {
                tracing::info!(
                    node,
                    "a node's heartbeat expired: its presence and counters were removed"
                );
            }
            BrokerEvent::PresenceReaped { topic, leaves } => {
                let diff = serde_json::json!({ "joins": {}, "leaves": leaves });
                let Ok(payload) = Payload::json(&diff) else {
                    return;
                };
                if let Err(e) = self
                    .publish_unlogged(&topic, events::PRESENCE_DIFF, payload)
                    .await
                {
                    tracing::warn!(topic, error = %e, "presence leaves of a lost node not published");
                }
            }
        }
    }
}
