//! The broker: how publications travel between the nodes of a cluster.
//!
//! The [`Broker`] trait sits between a node's [`Hub`](crate::hub::Hub) and the rest of the
//! cluster. A node asks it to publish a broadcast to every node (itself included) and tells it
//! when a topic gains its first or loses its last local subscriber, so that a clustered broker
//! subscribes once per topic per node, never once per client.
//!
//! * [`memory::MemoryBroker`] — the embedded single-node default: delivers straight to the hub.
//! * A Redis broker (cluster mode) implements the same trait.

pub mod memory;

use crate::hub::Publication;
use async_trait::async_trait;

/// A failure of the broker's backend (network, server). Local delivery is unaffected.
#[derive(Debug, thiserror::Error)]
#[error("broker error: {0}")]
pub struct BrokerError(pub String);

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and metrics ("memory", "redis").
    fn name(&self) -> &'static str;

    /// Delivers the publication to every subscriber in the cluster. Local subscribers must
    /// receive it without waiting for any remote round trip.
    async fn publish(&self, publication: Publication) -> Result<(), BrokerError>;

    /// The topic gained its first local subscriber.
    async fn subscribe(&self, topic: &str) -> Result<(), BrokerError>;

    /// The topic lost its last local subscriber.
    async fn unsubscribe(&self, topic: &str) -> Result<(), BrokerError>;
}
