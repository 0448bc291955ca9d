//! The broker: how publications travel between the nodes of a cluster.
//!
//! The [`Broker`] trait sits between a node's [`Hub`](crate::hub::Hub) and the rest of the
//! cluster. A node asks it to publish a broadcast to every node (itself included) and tells it
//! when a topic gains its first or loses its last local subscriber, so that a clustered broker
//! subscribes once per topic per node, never once per client.
//!
//! What happens elsewhere in the cluster (another node asks for a user's disconnect, a dead
//! node's presence is reaped) the broker reports as a [`BrokerEvent`] to the
//! [`BrokerEventHandler`] the node registers, the way centrifuge's `BrokerEventHandler` does:
//! the broker never reaches up into the node.
//!
//! * [`memory::MemoryBroker`] — the embedded single-node default: delivers straight to the hub.
//! * [`redis::RedisBroker`] — cluster mode: many nodes share fan-out, history, presence and
//!   limits through Redis.

pub mod memory;
pub mod redis;

use crate::presence::PresenceState;
use crate::publication::Publication;
use crate::ConnId;
use async_trait::async_trait;
use serde_json::Value;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Weak};

/// What a webhook held for the reconnect grace is about ([`crate::webhooks::grace`]): the
/// record a node keeps in the cluster while it holds the event, which the event that would
/// pair with it claims ([`Broker::hold_take`]) or the holding node releases at the end of the
/// grace ([`Broker::hold_release`]) — whichever comes first, exactly once cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HoldKey {
    /// A user's held `disconnect`s (claimed by the user's next connect, on any node).
    Disconnect(Arc<str>),
    /// A presence member's held `presence_leave` on a topic (claimed by the member's next
    /// presence join there).
    PresenceLeave { topic: Arc<str>, member: Arc<str> },
    /// A topic's held `channel_vacated` (claimed by its next `channel_occupied`).
    Vacated(Arc<str>),
}

/// A cluster-wide counter (see [`Broker::claim`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CounterKey {
    /// Live connections of one user.
    UserConnections(Arc<str>),
    /// Live connections from one client address.
    AddressConnections(IpAddr),
    /// Joins of one user to one topic (a channel rule's `max_per_user`). Both are the
    /// client's to choose (a topic, a token's `sub`): the key is unambiguous whatever they
    /// contain (`join:<topic length>:<topic>:<sub>`).
    UserJoins { topic: Arc<str>, sub: Arc<str> },
    /// Subscribers of one topic (`GET /api/channels`).
    Subscribers(Arc<str>),
    /// Connections of one presence member (a Pusher `user_id`) on one topic: Pusher's
    /// `member_added` / `member_removed` webhooks (`memb:<topic length>:<topic>:<member>`).
    Members { topic: Arc<str>, member: Arc<str> },
}

impl CounterKey {
    /// How [`CounterKey::Subscribers`] keys begin, to list them.
    pub const SUBSCRIBERS_PREFIX: &'static str = "chan:";
    /// How [`CounterKey::Members`] keys begin.
    pub const MEMBERS_PREFIX: &'static str = "memb:";

    /// The topic and member of a [`CounterKey::Members`] key without its prefix
    /// (`<topic length>:<topic>:<member>`).
    pub fn parse_members(rest: &str) -> Option<(&str, &str)> {
        let (len, rest) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let topic = rest.get(..len)?;
        let member = rest.get(len..)?.strip_prefix(':')?;
        Some((topic, member))
    }
}

impl fmt::Display for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CounterKey::UserConnections(sub) => write!(f, "conn:user:{sub}"),
            CounterKey::AddressConnections(ip) => write!(f, "conn:ip:{ip}"),
            // The topic's length first: topic `a:b` with sub `c` and topic `a` with sub `b:c`
            // are two counters, not one.
            CounterKey::UserJoins { topic, sub } => {
                write!(f, "join:{}:{topic}:{sub}", topic.len())
            }
            CounterKey::Subscribers(topic) => write!(f, "{}{topic}", Self::SUBSCRIBERS_PREFIX),
            CounterKey::Members { topic, member } => {
                write!(
                    f,
                    "{}{}:{topic}:{member}",
                    Self::MEMBERS_PREFIX,
                    topic.len()
                )
            }
        }
    }
}

/// Something that happened elsewhere in the cluster and concerns this node.
#[derive(Clone, Debug, PartialEq)]
pub enum BrokerEvent {
    /// Another node was asked to disconnect user `sub` everywhere.
    DisconnectUser { sub: String },
    /// A node stopped refreshing its heartbeat; this node reaped its state.
    NodeLost { node: String },
    /// The presences a lost node held on `topic` were removed: `leaves` is the `leaves` object
    /// of a `presence_diff` (`{key: {"metas": […]}}`) to tell the topic's subscribers.
    /// `reported` holds `{"sub", "conn", "key", "meta"}` of each server-tracked presence among
    /// them (the `presence_leave` webhooks; Supabase clients' own tracks are not reported).
    PresenceReaped {
        topic: String,
        leaves: Value,
        reported: Vec<Value>,
    },
    /// A lost node's connections were removed from the cluster's registry by this node (and
    /// by no other): each `info` is what [`Broker::connection_open`] recorded.
    ConnectionsReaped { node: String, conns: Vec<String> },
    /// A lost node held the last subscribers of `topic` in the cluster: removing them
    /// vacated it (this node alone saw that transition).
    TopicVacated { topic: String },
    /// A lost node held the last connections of presence member `member` on `topic` in the
    /// cluster (Pusher's `member_removed`; this node alone saw that transition).
    MemberVacated { topic: String, member: String },
    /// The history of `topic` (a topic with local subscribers) is not the one its subscribers
    /// followed: Redis lost it or another instance holds it now (`epoch` is the new one, `offset`
    /// 0), or offsets up to `offset` of `epoch` can no longer be replayed (trimmed, expired).
    /// Either way the subscribers reload, and delivery continues after `offset`.
    HistoryReset {
        topic: String,
        epoch: String,
        offset: u64,
    },
}

/// Receives the [`BrokerEvent`]s of a broker (the node implements it).
#[async_trait]
pub trait BrokerEventHandler: Send + Sync + 'static {
    async fn handle(&self, event: BrokerEvent);
}

/// Answers the requests other nodes send this one with [`Broker::call_node`] (LongPoll polls
/// and POSTs of sessions this node holds, see `transport::longpoll`).
#[async_trait]
pub trait RequestHandler: Send + Sync + 'static {
    async fn handle_request(&self, request: bytes::Bytes) -> bytes::Bytes;
}

/// One retained broadcast: the publication subscribers received (its frame carries the
/// offset), shared, not copied.
#[derive(Clone, Debug)]
pub struct HistoryItem {
    pub offset: u64,
    pub publication: Arc<Publication>,
}

/// What a topic's history holds after a given offset.
#[derive(Clone, Debug, Default)]
pub struct HistoryPage {
    /// Identifies this history: it changes when the history was lost (e.g. a memory node
    /// restarted), and offsets of another epoch mean nothing here.
    pub epoch: String,
    /// The last offset assigned (0: nothing published yet).
    pub top: u64,
    /// Whether every publication after the requested offset is still retained.
    pub complete: bool,
    /// The retained publications after the requested offset, oldest first.
    pub items: Vec<HistoryItem>,
}

/// What a broker retains as history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    pub topics: usize,
    pub bytes: usize,
    /// Bytes of history freed (evicted, expired, past a topic's size) since start: the binary
    /// trims the allocator's heaps after enough of it (src/allocator.rs).
    pub freed: u64,
}

/// How long the cluster still counts this node as alive: `confirmed` is when its last
/// successful heartbeat started, and other nodes may reap it (its presence leaves, its
/// counters go, its disconnects are reported) once `timeout` has passed since then without
/// another one. See `Node`'s partition guard (`node/partition.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    pub confirmed: std::time::Instant,
    pub timeout: std::time::Duration,
}

/// A failure of the broker's backend (network, server). Local delivery is unaffected.
#[derive(Debug, thiserror::Error)]
#[error("broker error: {0}")]
pub struct BrokerError(pub String);

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs, metrics and `/health` ("memory", "redis").
    fn name(&self) -> &'static str;

    /// Registers who hears this broker's [`BrokerEvent`]s (a broker that has none ignores it).
    fn set_event_handler(&self, _handler: Weak<dyn BrokerEventHandler>) {}

    /// This node's id in the cluster (`"local"` for a node alone).
    fn node_id(&self) -> &str {
        "local"
    }

    /// The ids of the live nodes of the cluster, this one included (admin console).
    async fn node_ids(&self) -> Result<Vec<String>, BrokerError> {
        Ok(vec![self.node_id().to_owned()])
    }

    /// Where requests from other nodes go (see [`Broker::call_node`]).
    fn set_request_handler(&self, _handler: Weak<dyn RequestHandler>) {}

    /// Sends `request` to node `node`'s [`RequestHandler`] and waits up to `timeout` for its
    /// answer. A node alone has no other node to call.
    async fn call_node(
        &self,
        _node: &str,
        _request: bytes::Bytes,
        _timeout: std::time::Duration,
    ) -> Result<bytes::Bytes, BrokerError> {
        Err(BrokerError("no other nodes".into()))
    }

    /// Delivers the publication to every subscriber in the cluster. Local subscribers must
    /// receive it without waiting for any remote round trip. When `publication.history` is set,
    /// the broker first appends it to the topic's history, assigning the next offset
    /// ([`Publication::set_offset`]), and subscribers receive a topic's publications in offset
    /// order. Returns the offset, if any.
    async fn publish(&self, publication: Publication) -> Result<Option<u64>, BrokerError>;

    /// The topic's history after `since` (exclusive; `None`: just the epoch and top).
    async fn history(&self, topic: &str, since: Option<u64>) -> Result<HistoryPage, BrokerError>;

    /// The topic gained its first local subscriber (a clustered broker starts receiving the
    /// topic's publications from other nodes). Completes once that is in effect.
    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError>;

    /// The topic lost its last local subscriber.
    async fn unsubscribe(&self, topic: &str) -> Result<(), BrokerError>;

    // --- Cluster state. The defaults suit a single node, whose own tables are the truth. ---

    /// Records (or replaces) the presence meta of local connection `conn` under `key`; `sub`
    /// is its user when the server tracks it under the user's id (reported in `presence_leave`
    /// webhooks if this node is lost), `None` for a Supabase client's own `track`.
    async fn presence_set(
        &self,
        _topic: &str,
        _conn: ConnId,
        _key: &str,
        _meta: &Value,
        _sub: Option<&str>,
    ) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Removes the presence of local connection `conn`.
    async fn presence_remove(&self, _topic: &str, _conn: ConnId) -> Result<(), BrokerError> {
        Ok(())
    }

    /// [`Broker::presence_remove`] without waiting, for synchronous cleanup: done in the
    /// background by a broker that keeps cluster state, not at all by one that keeps none.
    /// The removal is done whether or not the returned [`Removal`] is awaited; the leave's
    /// `presence_diff` is published only after it ([`Removal::done`]), so that a joiner whose
    /// state was read before the removal still gets the leave.
    fn presence_remove_detached(self: Arc<Self>, topic: &str, conn: ConnId) -> Removal {
        let topic = topic.to_owned();
        Removal(spawn_detached(async move {
            let _ = self.presence_remove(&topic, conn).await;
        }))
    }

    /// The cluster-wide presence of `topic` (`{key: {"metas": […]}}`), or `None` when this
    /// node's own table is complete.
    async fn presence_state(
        &self,
        _topic: &str,
    ) -> Result<Option<Arc<PresenceState>>, BrokerError> {
        Ok(None)
    }

    /// Takes one unit of the cluster-wide counter `key` if the total stays within `limit`
    /// (0: no limit). `true` when taken. A single node's own tables are the truth, so the
    /// default takes nothing and refuses nothing.
    async fn claim(&self, _key: &CounterKey, _limit: u32) -> Result<bool, BrokerError> {
        Ok(true)
    }

    /// Gives back one unit of `key`.
    async fn release(&self, _key: &CounterKey) -> Result<(), BrokerError> {
        Ok(())
    }

    /// [`Broker::release`] without waiting, for synchronous cleanup (see
    /// [`Broker::presence_remove_detached`]).
    fn release_detached(self: Arc<Self>, key: CounterKey) {
        spawn_detached(async move {
            let _ = self.release(&key).await;
        });
    }

    /// Records the held event `id` (unique in the cluster) under `key` with `value` for at
    /// most `ttl` ([`HoldKey`]). A broker that keeps no holds refuses (the event is sent at
    /// once).
    async fn hold_put(
        &self,
        _key: &HoldKey,
        _id: &str,
        _value: &str,
        _ttl: std::time::Duration,
    ) -> Result<(), BrokerError> {
        Err(BrokerError("this broker keeps no holds".into()))
    }

    /// Claims the oldest held event under `key`, atomically: its value, or `None`.
    async fn hold_take(&self, _key: &HoldKey) -> Result<Option<String>, BrokerError> {
        Ok(None)
    }

    /// Removes the held event `id` under `key`, atomically: `true` if it was still there
    /// (nobody claimed it: the holder sends it), `false` if it was claimed.
    async fn hold_release(&self, _key: &HoldKey, _id: &str) -> Result<bool, BrokerError> {
        Ok(true)
    }

    /// A connect claimed the held `disconnect` of connection `public_conn` (`<node>-<n>`),
    /// which its node still keeps in its registry until the hold ends: removed from that
    /// registry now, so that if that node dies before then, the node that reaps it does not
    /// report the `disconnect` the reconnect replaced. Best effort; a broker without a
    /// registry does nothing.
    async fn hold_claimed_connection(&self, _public_conn: &str) {}

    /// Whether [`Broker::count_subscriber`] keeps a cluster-wide count (else this node's hub
    /// is the whole truth about who subscribes where).
    fn counts_subscribers(&self) -> bool {
        false
    }

    /// Counts one local subscriber of `topic` in (`joined`) or out of the cluster-wide count
    /// of its subscribers, atomically; returns the count (before, after), so that exactly one
    /// node sees a topic go from 0 to more (occupied) and from more to 0 (vacated). A count
    /// out when this node's share is already 0 (its share was lost) changes nothing.
    /// `None`: not counted.
    async fn count_subscriber(
        &self,
        _topic: &str,
        _joined: bool,
    ) -> Result<Option<(u64, u64)>, BrokerError> {
        Ok(None)
    }

    /// [`Broker::count_subscriber`] for the connections of presence member `member` on
    /// `topic` ([`CounterKey::Members`]): exactly one node sees a member's count go from 0 to
    /// more and from more to 0. `None`: not counted (a node alone counts its own).
    async fn count_member(
        &self,
        _topic: &str,
        _member: &str,
        _joined: bool,
    ) -> Result<Option<(u64, u64)>, BrokerError> {
        Ok(None)
    }

    /// Records a live local connection in the cluster (`info`: JSON of what its `disconnect`
    /// webhook needs), so that the node that reaps this one after it dies can report its
    /// disconnects. In the background; a broker without cluster state records nothing.
    fn connection_open(self: Arc<Self>, _conn: ConnId, _info: String) {}

    /// The connection ended normally (its node reported it).
    fn connection_close(self: Arc<Self>, _conn: ConnId) {}

    /// Live topics of the cluster with their subscriber counts, or `None` when this node's
    /// hub is complete.
    async fn channels(&self) -> Result<Option<Vec<(String, usize)>>, BrokerError> {
        Ok(None)
    }

    /// The last retained publication of `topic`, if any, read without creating anything for
    /// the topic (a cache channel's last event: a name nobody published on must leave no
    /// state behind).
    async fn last(&self, topic: &str) -> Result<Option<HistoryItem>, BrokerError> {
        let page = self.history(topic, None).await?;
        if page.top == 0 {
            return Ok(None);
        }
        let page = self.history(topic, Some(page.top - 1)).await?;
        Ok(page.items.into_iter().last())
    }

    /// The cluster-wide subscriber counts of `topics` (in their order; 0 for a topic nobody
    /// subscribes to), or `None` when this node's hub is complete.
    async fn subscriber_counts(&self, _topics: &[&str]) -> Result<Option<Vec<usize>>, BrokerError> {
        Ok(None)
    }

    /// Asks every other node to disconnect user `sub` (this node does its own).
    async fn disconnect_remote(&self, _sub: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The history this node retains in memory (`None`: kept elsewhere, e.g. in Redis).
    fn history_stats(&self) -> Option<HistoryStats> {
        None
    }

    /// This node's liveness in the cluster (see [`Liveness`]); `None`: nobody can reap it (a
    /// node alone).
    fn liveness(&self) -> Option<Liveness> {
        None
    }

    /// Whether the backend is reachable (always true for the memory broker).
    fn healthy(&self) -> bool {
        true
    }
}

/// Runs `task` on the current runtime, if there is one (cleanup may run in a `Drop` outside it).
fn spawn_detached(
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    tokio::runtime::Handle::try_current()
        .ok()
        .map(|rt| rt.spawn(task))
}

/// A cluster-wide presence removal under way in the background (nothing for a broker that
/// keeps no cluster state).
#[must_use = "await `done` before publishing the leave, or drop it to let the removal run alone"]
pub struct Removal(Option<tokio::task::JoinHandle<()>>);

impl Removal {
    /// No removal to wait for.
    pub const NONE: Removal = Removal(None);

    /// Waits until the removal is done (or has failed: a broker's commands are bounded by
    /// its timeouts).
    pub async fn done(self) {
        if let Some(task) = self.0 {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CounterKey;

    #[test]
    fn join_counter_keys_do_not_collide_on_colons() {
        let key = |topic: &str, sub: &str| {
            CounterKey::UserJoins {
                topic: topic.into(),
                sub: sub.into(),
            }
            .to_string()
        };
        assert_ne!(key("a:b", "c"), key("a", "b:c"));
        assert_eq!(key("a:b", "c"), "join:3:a:b:c");
    }

    #[test]
    fn member_keys_parse_back() {
        let key = CounterKey::Members {
            topic: "presence-a:b".into(),
            member: "c:d".into(),
        }
        .to_string();
        assert_eq!(key, "memb:12:presence-a:b:c:d");
        let rest = key.strip_prefix(CounterKey::MEMBERS_PREFIX).unwrap();
        assert_eq!(
            CounterKey::parse_members(rest),
            Some(("presence-a:b", "c:d"))
        );
        assert_eq!(CounterKey::parse_members("99:x:y"), None);
        assert_eq!(CounterKey::parse_members("x"), None);
    }
}
