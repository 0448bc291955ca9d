//! Plexus core: everything a Plexus node does, independent of how it is started.
//!
//! The modules follow the life of a message, from the wire inwards; each imports only modules
//! listed after it:
//!
//! * [`transport`] — the edges: WebSocket, Phoenix LongPoll, Server-Sent Events. They only
//!   move frames; every rule is enforced by the core below, once for all of them.
//! * [`socket`] — one client connection: routing of its messages, heartbeats, token refresh,
//!   the inbound rate limit, and its one teardown.
//! * [`channel`] — the channels a connection joined: join (where a join is authorised against
//!   the rules and `max_per_user`), leave, client pushes, history recovery, presence.
//! * [`node`] — ties the parts below together: the object transports and the HTTP API talk to,
//!   and the handler of its broker's cluster events.
//! * [`hooks`] — the application's hooks (connect, join, push decided over signed HTTP) and
//!   [`webhooks`] — what the application hears (batched, signed, retried events); the
//!   node's connection and topic events, exact across a cluster, are in `lifecycle.rs`.
//! * [`connections`] — the registry of live connections (disconnect a user, drain).
//! * [`admission`] — whether a connection may exist: client address, connect rate, `Origin`,
//!   token, per-address and per-user caps (where a connection is admitted).
//! * [`quota`] — per-user join counts (`max_per_user`), released when a channel ends.
//! * [`presence`] — who is joined where, in phoenix.js `Presence` shapes: this node's table,
//!   mirrored cluster-wide by the broker.
//! * [`broker`] — the [`broker::Broker`] trait between this node and the rest of the cluster
//!   (typed counter keys, cluster events), with the in-memory and Redis brokers.
//! * [`hub`] — topics → local subscribers, and the fan-out of one publication to all of them.
//! * [`outbox`] — the bounded per-connection queue of messages waiting to be written (or,
//!   while it is empty, the write-through of broadcasts straight to the socket).
//! * [`write_through`] — the fan-out's non-blocking vectored write to a raw TCP socket.
//! * [`policy`] — what an identity may do: which topics it may join, which events it may push.
//! * [`publication`] — one broadcast, encoded once, and a topic's history options.
//! * [`expiry`] — when a connection's token runs out (warning, then close), for every transport.
//! * [`auth`] — who is connecting: JWT verification and the resulting [`auth::Identity`].
//! * [`limits`] — sizes, queue depths, timeouts, name checks and close codes.
//! * [`metrics`] — what the core measures (latency histograms, refusals by reason), through the
//!   `metrics` facade.
//! * [`ratelimit`] — the token bucket behind the rate limits.
//! * [`supabase`] — Supabase Realtime's conventions inside the Phoenix protocol (channel
//!   config, broadcast envelope, presence track/untrack), read and written as plain data.
//! * [`pusher`] — Pusher's protocol semantics (channel kinds, signatures) and a Pusher
//!   WebSocket connection's handling on top of the [`socket`]: its channels are topics.
//! * [`protocol`] — the Phoenix codecs (V2 arrays and binary frames, V1 objects), Pusher's
//!   protocol 7 codec and the WebSocket framing (pure functions, no I/O, fuzzable).

// The module docs link the private modules and items they are made of: written for the
// maintainers' view (`cargo doc --document-private-items`). This crate is internal; the stable
// API is the `plexus` crate's `embed` module.
#![allow(rustdoc::private_intra_doc_links)]

pub mod admission;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod connections;
pub mod expiry;
pub mod hooks;
pub mod hub;
mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod outbox;
pub mod policy;
pub mod presence;
pub mod presence_diffs;
pub mod protocol;
pub mod publication;
pub mod pusher;
pub mod quota;
pub mod ratelimit;
pub mod socket;
pub mod supabase;
pub mod transport;
pub mod webhooks;
pub mod write_through;

pub use node::Node;

/// Identifies one client connection within a node.
pub type ConnId = u64;
