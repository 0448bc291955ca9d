//! A Plexus node: hub, broker, authentication, policy, limits and the registry of live
//! connections, in one object that transports and the HTTP API share.
//!
//! What a connection or an anonymous read must pass to be let in (address, rate, `Origin`,
//! token, caps, hooks) is in [`admit`]; publishing (and history reads) in `publish.rs`; a
//! connection's subscriptions to topics, and the node's to the broker, in [`subscribe`].
//!
//! The node hears its broker's cluster events (a disconnect asked by another node, the
//! presence of a dead node reaped) as the broker's [`BrokerEventHandler`], and closes its
//! clients before the cluster may reap it while it is cut off from Redis ([`partition`]).

mod admit;
mod partition;
mod publish;
mod subscribe;

pub use partition::{CUT_OFF_AFTER, CUT_OFF_REASON};

use crate::admission::{Admission, AdmissionConfig};
use crate::auth::{Identity, Verifier};
use crate::broker::{Broker, BrokerError, BrokerEvent, BrokerEventHandler};
use crate::connections::Connections;
use crate::hooks::{HookTransport, Hooks, HooksConfig};
use crate::hub::Hub;
use crate::limits::{close_codes, Limits};
use crate::outbox::Outbox;
use crate::policy::Policy;
use crate::presence::Presence;
use crate::protocol::{events, EncodeError, Payload};
use crate::publication::Publication;
use crate::quota::JoinCounter;
use crate::webhooks::{EventKind, Webhooks, WebhooksConfig};
use crate::ConnId;
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// Everything a node needs besides its broker.
pub struct NodeConfig {
    pub verifier: Verifier,
    pub policy: Policy,
    pub limits: Limits,
    pub admission: AdmissionConfig,
    /// Application hooks and webhooks (docs/hooks.md); `None`: none.
    pub hooks: Option<HookSetup>,
    /// Pusher mode (docs/pusher.md); `None`: off.
    pub pusher: Option<PusherSetup>,
    /// Joins decided in the embedding application's process, before any HTTP join hook
    /// ([`crate::hooks::in_process`]); `None`: none.
    pub join_authority: Option<crate::hooks::in_process::InProcessJoin>,
}

/// What a node does for Pusher mode: cache channels keep their last event
/// ([`crate::pusher::cache`]), and Pusher-format webhooks go to `webhooks`' URL when set
/// ([`crate::pusher::webhooks`]), signed with the app's key and secret.
pub struct PusherSetup {
    pub app: crate::pusher::PusherApp,
    pub webhooks: Option<(WebhooksConfig, Arc<dyn HookTransport>)>,
}

/// What a node needs for application hooks and webhooks.
pub struct HookSetup {
    pub hooks: HooksConfig,
    pub webhooks: Option<WebhooksConfig>,
    pub transport: Arc<dyn HookTransport>,
}

/// Counters exported as metrics.
#[derive(Default)]
pub struct Counters {
    pub connections_total: AtomicU64,
    pub messages_in: AtomicU64,
    pub broadcasts: AtomicU64,
    pub broker_errors: AtomicU64,
    /// Connections refused at admission, by HTTP status: 401, 403, 429, 503 (others).
    pub refused: [AtomicU64; 4],
    /// Joins refused (rules, limits, `max_per_user`).
    pub joins_refused: AtomicU64,
    /// Client pushes and presence diffs that could not be published (broker down).
    pub publish_failures: AtomicU64,
}

impl Counters {
    /// Counts a failed publish and logs it, once per burst (the first, then every 100th):
    /// an outage must not write a line per message.
    pub fn publish_failed(&self, topic: &str, what: &str, error: &dyn std::fmt::Display) {
        let n = self.publish_failures.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(100) {
            tracing::warn!(topic, error = %error, failures = n + 1, "{what} not published");
        }
    }

    /// The statuses `refused` counts, in its order.
    pub const REFUSED_STATUSES: [u16; 4] = [401, 403, 429, 503];

    fn count_refusal(&self, status: u16) {
        let i = Self::REFUSED_STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(3);
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }
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
    pub(crate) broker: Arc<dyn Broker>,
    verifier: Verifier,
    policy: Policy,
    limits: Limits,
    admission: Arc<Admission>,
    presence: Presence,
    connections: Connections,
    joins: Arc<JoinCounter>,
    hooks: Option<Arc<Hooks>>,
    join_authority: Option<crate::hooks::in_process::InProcessJoin>,
    pub(crate) webhooks: Option<Arc<Webhooks>>,
    /// The reconnect grace of the webhooks, when configured ([`crate::webhooks::grace`]).
    pub(crate) grace: Option<Arc<crate::webhooks::grace::Grace>>,
    /// Pusher mode is on: cache channels keep their last event.
    pusher_mode: bool,
    /// The Pusher-format webhook sink ([`crate::pusher::webhooks`]).
    pub(crate) pusher_webhooks: Option<Arc<Webhooks>>,
    /// Presence members counted for that sink on a node alone.
    pub(crate) members: crate::pusher::webhooks::LocalMembers,
    /// This node's id as hooks and webhooks give it (the broker's, or made up for a node
    /// alone).
    node_id: Arc<str>,
    pub counters: Counters,
    /// Topics whose broker subscription their first local subscriber is making: the others
    /// wait for it too ([`Node::subscribe`]).
    broker_subscriptions: subscribe::BrokerSubscriptions,
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
        let node_id: Arc<str> = match broker.node_id() {
            // A node alone still needs an id that a restart does not reuse.
            "local" => {
                use rand::Rng;
                format!("{:012x}", rand::rng().random::<u64>() >> 16).into()
            }
            id => id.into(),
        };
        let (hooks, webhooks) = match config.hooks {
            Some(setup) => {
                let webhooks = setup.webhooks.map(|w| {
                    Webhooks::start(
                        w,
                        setup.hooks.secret.clone(),
                        setup.transport.clone(),
                        node_id.clone(),
                    )
                });
                let hooks = Hooks::new(setup.hooks, setup.transport, node_id.clone());
                (Some(Arc::new(hooks)), webhooks)
            }
            None => (None, None),
        };
        let pusher_mode = config.pusher.is_some();
        let pusher_webhooks = config.pusher.and_then(|p| {
            let (mut w, transport) = p.webhooks?;
            w.format = crate::webhooks::Format::Pusher { key: p.app.key };
            Some(Webhooks::start(w, p.app.secret, transport, node_id.clone()))
        });
        let grace = webhooks.as_ref().and_then(|w| {
            let c = w.config();
            (!c.disconnect_grace.is_zero()).then(|| {
                crate::webhooks::grace::Grace::start(
                    c.disconnect_grace,
                    c.disconnect_grace_max,
                    broker.clone(),
                    w.clone(),
                    pusher_webhooks.clone(),
                    node_id.clone(),
                )
            })
        });
        let node = Arc::new(Node {
            hooks,
            join_authority: config.join_authority,
            webhooks,
            grace,
            pusher_mode,
            pusher_webhooks,
            members: Default::default(),
            node_id,
            hub,
            joins: JoinCounter::new(broker.clone()),
            presence: Presence::new(broker.clone()),
            broker,
            verifier: config.verifier,
            policy: config.policy,
            limits: config.limits,
            admission: Admission::new(config.admission),
            connections: Connections::default(),
            counters: Counters::default(),
            broker_subscriptions: subscribe::BrokerSubscriptions::new(),
        });
        let handler: Weak<dyn BrokerEventHandler> = Arc::downgrade(&node) as _;
        node.broker.set_event_handler(handler);
        partition::guard(&node);
        node
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The application hooks, if configured.
    pub fn hooks(&self) -> Option<&Arc<Hooks>> {
        self.hooks.as_ref()
    }

    /// The in-process join authority, if the embedding application set one.
    pub fn join_authority(&self) -> Option<&crate::hooks::in_process::InProcessJoin> {
        self.join_authority.as_ref()
    }

    /// A connection's id as the application sees it: `<node>-<n>`, unique in the cluster.
    pub fn public_conn_id(&self, conn: ConnId) -> String {
        format!("{}-{conn}", self.node_id)
    }

    /// Queues a webhook event of `kind` if webhooks are on and send it; `fields` (an object)
    /// is only built then.
    pub fn webhook(&self, kind: EventKind, fields: impl FnOnce() -> serde_json::Value) {
        if let Some(w) = &self.webhooks {
            if w.enabled(kind) {
                w.emit(kind, fields());
            }
        }
    }

    /// A webhook event caused by the connection `by`, charged to its share of the queue.
    pub(crate) fn webhook_by(
        &self,
        kind: EventKind,
        by: crate::webhooks::Cause<'_>,
        fields: impl FnOnce() -> serde_json::Value,
    ) {
        if let Some(w) = &self.webhooks {
            if w.enabled(kind) {
                w.emit_as(kind, Some(by.key()), fields());
            }
        }
    }

    /// The webhook sender, if configured.
    pub fn webhooks(&self) -> Option<&Arc<Webhooks>> {
        self.webhooks.as_ref()
    }

    /// The reconnect grace of the webhooks, if configured.
    pub fn webhook_grace(&self) -> Option<&Arc<crate::webhooks::grace::Grace>> {
        self.grace.as_ref()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The broker (the transports reach other nodes through it).
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
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

    /// Registers a new connection; `None` while the node is draining.
    pub(crate) fn register(&self, identity: &Identity) -> Option<(ConnId, Arc<Outbox>)> {
        let registered = self.connections.register(
            identity,
            self.limits.outbox_max_frames,
            self.limits.outbox_max_bytes,
        );
        if registered.is_some() {
            self.counters
                .connections_total
                .fetch_add(1, Ordering::Relaxed);
        }
        registered
    }

    /// An anonymous connection signed in as `sub` (see `Socket`'s token refresh).
    pub(crate) fn set_user(&self, id: ConnId, sub: std::sync::Arc<str>) {
        self.connections.set_user(id, sub);
    }

    pub(crate) fn unregister(&self, id: ConnId) {
        self.connections.unregister(id);
    }

    /// Live connections on this node.
    pub fn connection_count(&self) -> usize {
        self.connections.count()
    }

    /// Connections closed whose departures from their channels (presence removal and leave in
    /// the cluster) are still under way: a drain waits for them before the process ends.
    pub fn departing_count(&self) -> usize {
        self.connections.departing_count()
    }

    pub(crate) fn departing(&self) -> crate::connections::Departing {
        self.connections.departing()
    }

    /// Messages waiting in this node's outboxes: `(total, deepest)` (metrics).
    pub fn outbox_depths(&self) -> (usize, usize) {
        self.connections.outbox_depths()
    }

    /// Closes every connection of user `sub` on this node with 1001; returns how many.
    pub fn disconnect_user(&self, sub: &str) -> usize {
        self.connections.close_user(
            sub,
            close_codes::FORCED_DISCONNECT,
            "disconnected by the server",
        )
    }

    /// Live topics with subscriber counts, cluster-wide when the broker knows them.
    pub async fn channels(&self) -> Vec<(String, usize)> {
        match self.broker.channels().await {
            Ok(Some(c)) => c,
            _ => self.hub.topics(),
        }
    }

    /// The subscriber counts of `topics`, cluster-wide when the broker knows them (else this
    /// node's).
    pub async fn subscriber_counts(&self, topics: &[&str]) -> Vec<usize> {
        match self.broker.subscriber_counts(topics).await {
            Ok(Some(counts)) if counts.len() == topics.len() => counts,
            _ => topics
                .iter()
                .map(|t| self.hub.subscriber_count(t))
                .collect(),
        }
    }

    /// Disconnects user `sub` on this node and asks the other nodes to do the same.
    pub async fn disconnect_user_everywhere(&self, sub: &str) -> Result<usize, BrokerError> {
        let n = self.disconnect_user(sub);
        self.broker.disconnect_remote(sub).await.map(|_| n)
    }

    /// History retained in this node's memory (the embedded broker), for metrics.
    pub fn history_stats(&self) -> Option<crate::broker::HistoryStats> {
        self.broker.history_stats()
    }

    /// Whether the broker's backend is reachable.
    pub fn broker_healthy(&self) -> bool {
        self.broker.healthy()
    }

    pub fn is_draining(&self) -> bool {
        self.connections.is_draining()
    }

    /// Completes once this node drains.
    pub async fn until_draining(&self) {
        self.connections.until_draining().await
    }

    /// Refuses new connections (503 "server draining", and `/health` says `draining`) while the
    /// live ones stay: the first step of a drain, so that balancers stop routing here.
    pub fn stop_admitting(&self) {
        self.connections.stop_admitting();
    }

    /// Stops accepting connections and asks every live one to close with 1012 so that clients
    /// reconnect elsewhere (or to this node once it is back).
    pub fn drain(&self) {
        self.connections
            .drain(close_codes::SERVICE_RESTART, "server restarting");
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
            BrokerEvent::PresenceReaped {
                topic,
                leaves,
                reported,
            } => {
                self.presence_reaped(&topic, &reported);
                let diff = serde_json::json!({ "joins": {}, "leaves": leaves });
                let Ok(payload) = Payload::json(&diff) else {
                    return;
                };
                if let Err(e) = self
                    .publish_unlogged(&topic, events::PRESENCE_DIFF, payload)
                    .await
                {
                    self.counters
                        .publish_failed(&topic, "presence leaves of a lost node", &e);
                }
            }
            BrokerEvent::ConnectionsReaped { node, conns } => {
                self.connections_reaped(&node, &conns)
            }
            BrokerEvent::TopicVacated { topic } => self.topic_vacated(&topic, true),
            BrokerEvent::MemberVacated { topic, member } => self.member_reaped(&topic, &member),
            BrokerEvent::HistoryReset {
                topic,
                epoch,
                offset,
            } => {
                // Each node tells its own subscribers (every node notices by itself).
                let notice = serde_json::json!({ "epoch": epoch, "offset": offset });
                let publication = Payload::json(&notice)
                    .map_err(PublishError::from)
                    .and_then(|p| Ok(Publication::new(&topic, events::HISTORY_RESET, p, None)?));
                match publication {
                    Ok(p) => {
                        self.hub.deliver(&Arc::new(p));
                    }
                    Err(e) => tracing::warn!(topic, error = %e, "history_reset not sent"),
                }
            }
        }
    }
}
