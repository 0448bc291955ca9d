//! The broker: how publications travel between the nodes of a cluster.
//!
//! The [`Broker`] trait sits between a node's [`Hub`](crate::hub::Hub) and the rest of the
//! cluster. A node asks it to publish a broadcast to every node (itself included) and tells it
//! when a topic gains its first or loses its last local subscriber, so that a clustered broker
//! subscribes once per topic per node, never once per client.
//!
//! * [`memory::MemoryBroker`] — the embedded single-node default: delivers straight to the hub.
//! * [`redis::RedisBroker`] — cluster mode: many nodes share fan-out, history, presence and
//!   limits through Redis.

pub mod memory;
pub mod redis;

use crate::hub::Publication;
use crate::protocol::{Frame, Payload};
use crate::ConnId;
use async_trait::async_trait;
use serde_json::Value;
use std::sync::Arc;

/// One retained broadcast.
#[derive(Clone, Debug)]
pub struct HistoryItem {
    pub offset: u64,
    pub event: Arc<str>,
    pub payload: Payload,
    /// The broadcast frame as subscribers received it (offset in its `ref`).
    pub frame: Frame,
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

/// A failure of the broker's backend (network, server). Local delivery is unaffected.
#[derive(Debug, thiserror::Error)]
#[error("broker error: {0}")]
pub struct BrokerError(pub String);

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and metrics ("memory", "redis").
    fn name(&self) -> &'static str;

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

    /// Records (or replaces) the presence meta of local connection `conn` under user `key`.
    async fn presence_set(
        &self,
        _topic: &str,
        _conn: ConnId,
        _key: &str,
        _meta: &Value,
    ) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Removes the presence of local connection `conn`.
    async fn presence_remove(&self, _topic: &str, _conn: ConnId) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The cluster-wide presence of `topic` (`{key: {"metas": […]}}`), or `None` when this
    /// node's own table is complete.
    async fn presence_state(&self, _topic: &str) -> Result<Option<Value>, BrokerError> {
        Ok(None)
    }

    /// Takes one unit of the cluster-wide counter `key` if the total stays within `limit`
    /// (connections per user or address, joins per user and topic). `true` when taken.
    async fn claim(&self, _key: &str, _limit: u32) -> Result<bool, BrokerError> {
        Ok(true)
    }

    /// Gives back one unit of `key`.
    async fn release(&self, _key: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Live topics of the cluster with their subscriber counts, or `None` when this node's
    /// hub is complete.
    async fn channels(&self) -> Result<Option<Vec<(String, usize)>>, BrokerError> {
        Ok(None)
    }

    /// Asks every other node to disconnect user `sub` (this node does its own).
    async fn disconnect_remote(&self, _sub: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Whether the backend is reachable (always true for the memory broker).
    fn healthy(&self) -> bool {
        true
    }
}
