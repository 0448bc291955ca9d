//! * [`websocket`] — the primary transport.
//! * [`longpoll`] — Phoenix LongPoll, the fallback where WebSocket is unavailable.
//! * [`sse`] — Server-Sent Events for subscribe-only `EventSource` clients.
//!
//! Transports: the edges that carry Phoenix messages between clients and a [`Node`](crate::Node).
//!
//! Each transport only moves frames; authentication, authorization and channel semantics live
//! in [`Node`](crate::Node) and [`Socket`](crate::socket::Socket), so every rule holds on every
//! transport.

pub mod longpoll;
pub mod sse;
pub mod websocket;
