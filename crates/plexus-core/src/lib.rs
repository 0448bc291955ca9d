//! Plexus core: everything a Plexus node does, independent of how it is started.
//!
//! The modules follow the life of a message:
//!
//! * [`protocol`] — the Phoenix Channels V2 wire codec (pure functions, no I/O, fuzzable).
//! * [`admission`] — whether a connection may exist: client address, connect rate, `Origin`,
//!   token, per-address and per-user caps (where a connection is admitted).
//! * [`auth`] — who is connecting: JWT verification and the resulting [`auth::Identity`].
//! * [`policy`] — what an identity may do: which topics it may join, which events it may push.
//! * [`ratelimit`] — the token bucket behind the rate limits.
//! * [`presence`] — who is joined where, in phoenix.js `Presence` shapes.
//! * [`socket`] — one client connection's state machine (joins, leaves, pushes, heartbeats),
//!   shared by every transport so that a rule is enforced once.
//! * [`outbox`] — the bounded per-connection queue of encoded frames waiting to be written.
//! * [`hub`] — topics → local subscribers, and the fan-out of one encoded broadcast to all of them.
//! * [`broker`] — the [`broker::Broker`] trait between this node and the rest of the cluster,
//!   with the in-memory broker used by a single node.
//! * [`node`] — ties the above together: the object transports and the HTTP API talk to.
//! * [`transport`] — the edges: WebSocket (LongPoll, SSE and HTTP polling later).

pub mod admission;
pub mod auth;
pub mod broker;
pub mod hub;
pub mod limits;
pub mod node;
pub mod outbox;
pub mod policy;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod socket;
pub mod transport;

pub use node::Node;

/// Identifies one client connection within a node.
pub type ConnId = u64;
