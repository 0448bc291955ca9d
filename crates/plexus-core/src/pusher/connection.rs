//! One Pusher WebSocket connection's protocol state and its client frames, on top of the
//! connection's [`Socket`]: the WebSocket transport hands each text frame of a Pusher
//! connection to [`PusherConn::handle`].
//!
//! * A Pusher channel is the Plexus topic of the same name. `pusher:subscribe` is a join of
//!   that topic; `pusher:unsubscribe` a leave; a client event `client-*` a client push of that
//!   event, so broadcasts of the HTTP API and of Phoenix clients reach Pusher subscribers and
//!   the other way round.
//! * Authorisation: a `private-` channel needs the app's signature of `socket_id:channel`, a
//!   `presence-` channel of `socket_id:channel:channel_data` (checked here, before the core's
//!   join). Then the channel rules decide as for any
//!   connection: a topic that a `[[channels]]` rule matches is governed by it (its roles, hooks,
//!   history); a topic no rule matches is open to Pusher connections (Pusher's semantics: the
//!   app's signature is the only authority), even where the profile denies unmatched topics to
//!   Phoenix clients.
//! * Presence: a `presence-` subscription joins as the member its `channel_data` names
//!   (`user_id`, `user_info`), tracked in the core's presence; [`PusherConn::translate`] (in
//!   [`super::presence`]) turns the core's `presence_state` / `presence_diff` into Pusher's
//!   frames, one member per user.
//! * `private-encrypted-` channels are authorised as private ones and relayed as they are (the
//!   app encrypts, its clients decrypt: the server never sees the plaintext); no client events.
//! * Client events on presence channels reach Pusher receivers with the sender's `user_id`
//!   ([`crate::publication::Sender`]).
//! * Cache channels get their last event or `pusher:cache_miss` after subscribing
//!   ([`super::cache`]).
//!
//! Replies say nothing to a Pusher client when they succeed; errors become `pusher:error`
//! (see [`crate::outbox::Outgoing::encode_pusher`]).

use super::presence::{parse_member, Members};
use super::subscription_count::{self, SubscriptionCounts};
use super::{ChannelKind, PusherApp};
use crate::auth::Identity;
use crate::channel::JoinOutcome;
use crate::channel::{JoinRequest, Member};
use crate::outbox::Outgoing;
use crate::policy::ChannelRule;
use crate::protocol::pusher::{self as wire, ClientMessage};
use crate::protocol::{events, Frame, Message, Payload};
use crate::ratelimit::TokenBucket;
use crate::socket::{Admitted, Socket};
use crate::ConnId;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client events a connection may send per second (Pusher's limit), and their burst.
pub const CLIENT_EVENTS_PER_SECOND: f64 = 10.0;
/// The largest `user_info` of a presence member (its JSON text), as Pusher's.
pub const MAX_USER_INFO_BYTES: usize = 1024;
/// The largest `user_data` of a `pusher:signin` (its JSON text).
pub const MAX_USER_DATA_BYTES: usize = 4096;

/// The rule of channels no `[[channels]]` rule matches, one for the process: a copy per
/// connection cost every Pusher connection ~570 bytes (the rule and its strings), 15 % more
/// idle memory than a Phoenix connection (BENCHMARKS.md, "Pusher mode vs Sockudo").
fn open_rule() -> Arc<ChannelRule> {
    static OPEN: std::sync::LazyLock<Arc<ChannelRule>> =
        std::sync::LazyLock::new(|| Arc::new(ChannelRule::open("*")));
    OPEN.clone()
}

/// A Pusher connection's state beside its [`Socket`].
pub struct PusherConn {
    app: Arc<PusherApp>,
    socket_id: Box<str>,
    /// The rule of channels no `[[channels]]` rule matches: open, any event, no echo.
    open_rule: Arc<ChannelRule>,
    client_events: TokenBucket,
    /// A `pusher:ping` was sent and nothing was received since.
    pub pinged: bool,
    /// The presence channels subscribed, with their members (see [`PusherConn::translate`]).
    pub(super) presence: HashMap<Box<str>, Members>,
    /// Where the other channels' subscriptions hear their subscriber count.
    counts: Arc<SubscriptionCounts>,
    /// The channels subscribed (given back to `counts` when they end).
    pub(super) subscribed: Option<Box<Subscribed>>,
}

/// The connection's subscribed channels.
pub(super) struct Subscribed {
    conn: ConnId,
    channels: HashSet<Box<str>>,
}

impl Drop for PusherConn {
    fn drop(&mut self) {
        if let Some(c) = &self.subscribed {
            for channel in &c.channels {
                self.counts.remove(channel, c.conn);
            }
        }
    }
}

impl PusherConn {
    pub fn new(app: Arc<PusherApp>, socket_id: String, counts: Arc<SubscriptionCounts>) -> Self {
        PusherConn {
            app,
            socket_id: socket_id.into(),
            open_rule: open_rule(),
            client_events: TokenBucket::new(
                CLIENT_EVENTS_PER_SECOND,
                CLIENT_EVENTS_PER_SECOND as u32,
                Instant::now(),
            ),
            pinged: false,
            presence: HashMap::new(),
            counts,
            subscribed: None,
        }
    }

    pub fn socket_id(&self) -> &str {
        &self.socket_id
    }

    /// The `activity_timeout` announced to clients for an idle timeout of `idle`: half of it
    /// (at least a second), so that the client's `pusher:ping` comes well before the idle
    /// close. The server sends its own `pusher:ping` after as long without a frame.
    pub fn activity_timeout(idle: Duration) -> Duration {
        (idle / 2).max(Duration::from_secs(1))
    }

    /// Queues `pusher:connection_established`.
    pub fn established(&self, socket: &Socket, idle: Duration) {
        let timeout = Self::activity_timeout(idle).as_secs();
        send(
            socket,
            wire::connection_established(&self.socket_id, timeout),
        );
    }

    /// Queues the server's `pusher:ping` (the connection was silent for the activity timeout).
    pub fn ping(&mut self, socket: &Socket) {
        self.pinged = true;
        send(socket, wire::ping());
    }

    /// The subscription of `channel` ended (the client unsubscribed, or the server closed it):
    /// its members and its place in the subscription counts are given back. Whether it was
    /// subscribed.
    pub(super) fn forget(&mut self, channel: &str) -> bool {
        self.presence.remove(channel);
        let Some(c) = &mut self.subscribed else {
            return false;
        };
        let was = c.channels.remove(channel);
        if was {
            self.counts.remove(channel, c.conn);
        }
        was
    }

    /// Handles one text frame of the client.
    pub async fn handle(&mut self, socket: &mut Socket, text: &[u8]) {
        let msg = match wire::decode_client(text) {
            Ok(m) => m,
            Err(e) => {
                if admitted(socket) {
                    send(socket, wire::error(None, &e.0));
                }
                return;
            }
        };
        match msg {
            ClientMessage::Ping => {
                if admitted(socket) {
                    send(socket, wire::pong());
                }
            }
            ClientMessage::Pong => {}
            ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            } => {
                if admitted(socket) {
                    self.subscribe(socket, &channel, auth.as_deref(), channel_data.as_deref())
                        .await;
                }
            }
            ClientMessage::Unsubscribe { channel } => {
                self.forget(&channel);
                // Counted by the socket; leaving a channel not subscribed is fine, as in Pusher.
                let leave = message(channel, events::LEAVE.to_owned(), Payload::empty_object());
                Box::pin(socket.handle(leave)).await;
            }
            ClientMessage::Signin { auth, user_data } => {
                if admitted(socket) {
                    self.signin(socket, &auth, &user_data).await;
                }
            }
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => self.client_event(socket, event, channel, data).await,
        }
    }

    /// `pusher:signin`: `auth` must be the app's signature of `socket_id::user::user_data`,
    /// `user_data` a JSON object with an `id` (a string of 1 to 128 bytes). The connection
    /// then is that user's (the core's sign-in: the connect hook is asked, the per-user cap
    /// applies, `terminate_connections` of the user reaches it on any node) and is answered
    /// `pusher:signin_success`; else `pusher:error` with code 4009 and the reason, and the
    /// connection stays as it was.
    async fn signin(&mut self, socket: &mut Socket, auth: &str, user_data: &str) {
        let refuse = |socket: &Socket, reason: &str| {
            tracing::info!(conn = socket.id(), reason, "pusher signin refused");
            send(socket, wire::error(Some(wire::codes::UNAUTHORIZED), reason));
        };
        if user_data.len() > MAX_USER_DATA_BYTES {
            return refuse(socket, "user_data too large (4096 bytes at most)");
        }
        if !self.app.verify_user(&self.socket_id, user_data, auth) {
            return refuse(
                socket,
                "invalid signature: auth must be key:hex(HMAC-SHA256(secret, \"socket_id::user::user_data\"))",
            );
        }
        let id =
            match serde_json::from_str::<Value>(user_data) {
                Ok(Value::Object(data)) => match data.get("id") {
                    Some(Value::String(id)) if wire::valid_user_id(id) => id.clone(),
                    _ => return refuse(
                        socket,
                        "user_data needs an id (a string of 1 to 128 bytes, no control characters)",
                    ),
                },
                _ => return refuse(socket, "user_data must be a JSON object with an id"),
            };
        match socket.sign_in_as(Identity::new(&id)).await {
            Ok(()) => send(socket, wire::signin_success(user_data)),
            Err(reason) => refuse(socket, &reason),
        }
    }

    /// A signed-in user's `#server-to-user-<id>` channel (pusher-js subscribes to it after
    /// `pusher:signin_success`): only that user's connections may subscribe.
    async fn subscribe_user_channel(&mut self, socket: &mut Socket, channel: &str, user: &str) {
        if socket.identity().user() != Some(user) || !wire::is_server_to_user_channel(channel) {
            return send(
                socket,
                wire::subscription_error(
                    channel,
                    "AuthError",
                    "a #server-to-user- channel is only for that user, signed in with pusher:signin",
                    403,
                ),
            );
        }
        self.join(socket, channel, None).await;
    }

    async fn subscribe(
        &mut self,
        socket: &mut Socket,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) {
        if let Some(user) = channel.strip_prefix(wire::SERVER_TO_USER_PREFIX) {
            return self.subscribe_user_channel(socket, channel, user).await;
        }
        if !wire::valid_channel_name(channel) {
            let reason = format!(
                "invalid channel name: 1 to {} characters of A-Z a-z 0-9 _ - = @ , . ;",
                wire::MAX_CHANNEL_NAME
            );
            // The name is not echoed back: it may be anything.
            return send(socket, wire::error(None, &reason));
        }
        let refuse = |socket: &Socket, kind: &str, error: &str, status: u16| {
            tracing::info!(
                conn = socket.id(),
                channel,
                error,
                "pusher subscription refused"
            );
            send(
                socket,
                wire::subscription_error(channel, kind, error, status),
            );
        };
        let mut member = None;
        match ChannelKind::of(channel) {
            ChannelKind::Public => {}
            ChannelKind::Presence => {
                let signed = auth.is_some_and(|a| {
                    self.app.verify_channel(
                        &self.socket_id,
                        channel,
                        Some(channel_data.unwrap_or("")),
                        a,
                    )
                });
                if !signed || channel_data.is_none() {
                    return refuse(
                        socket,
                        "AuthError",
                        "invalid signature: auth must be key:hex(HMAC-SHA256(secret, \"socket_id:channel:channel_data\"))",
                        401,
                    );
                }
                match parse_member(channel_data.unwrap_or("")) {
                    Ok(m) => member = Some(m),
                    Err(reason) => return refuse(socket, "AuthError", reason, 400),
                }
                if let Some(m) = &member {
                    if !self.room_for(socket, channel, &m.key).await {
                        let reason = format!(
                            "the channel has its maximum of {} members (pusher.max_presence_members)",
                            self.app.max_presence_members
                        );
                        return refuse(socket, "LimitReached", &reason, wire::codes::OVER_CAPACITY);
                    }
                }
            }
            // An encrypted channel is authorised as a private one; its events are relayed as
            // they are (the server never has the key: the app gives it to the client).
            ChannelKind::Private | ChannelKind::PrivateEncrypted => {
                let signed = auth
                    .is_some_and(|a| self.app.verify_channel(&self.socket_id, channel, None, a));
                if !signed {
                    return refuse(
                        socket,
                        "AuthError",
                        "invalid signature: auth must be key:hex(HMAC-SHA256(secret, \"socket_id:channel\"))",
                        401,
                    );
                }
            }
        }
        self.join(socket, channel, member).await;
    }

    /// Whether the presence `channel` has room for member `user_id`: it is a member already
    /// (another connection of the same user), or the channel has fewer members than
    /// `pusher.max_presence_members` (cluster-wide, as the core's presence knows them;
    /// subscriptions at the same moment on several nodes may pass it by a few).
    async fn room_for(&self, socket: &Socket, channel: &str, user_id: &str) -> bool {
        let max = self.app.max_presence_members;
        if max == 0 {
            return true;
        }
        match socket.node().presence().state(channel).await {
            Value::Object(members) => members.contains_key(user_id) || members.len() < max,
            _ => true,
        }
    }

    /// The core's join of `channel` (open unless a `[[channels]]` rule matches it), as
    /// `member` on presence channels; answered `subscription_succeeded` (a presence
    /// channel's comes with its members, see [`PusherConn::translate`]) or
    /// `pusher:subscription_error`.
    async fn join(&mut self, socket: &mut Socket, channel: &str, member: Option<Member>) {
        let params = Payload::empty_object();
        super::cache::before_subscribe(socket, channel);
        let outcome = socket
            .join(JoinRequest {
                topic: channel,
                join_ref: None,
                msg_ref: None,
                reply: false,
                params: &params,
                unmatched: Some(&self.open_rule),
                member: member.clone(),
            })
            .await;
        let joined = matches!(outcome, JoinOutcome::Joined(_));
        match outcome {
            // A presence channel's subscription_succeeded is its `presence_state` (translated).
            JoinOutcome::Joined(_) => {
                if member.is_none() {
                    send(socket, wire::subscription_succeeded(channel));
                }
                let c = self.subscribed.get_or_insert_with(|| {
                    Box::new(Subscribed {
                        conn: socket.id(),
                        channels: HashSet::new(),
                    })
                });
                if c.channels.insert(channel.into()) && subscription_count::counted(channel) {
                    self.counts.add(channel, c.conn, socket.outbox());
                }
            }
            JoinOutcome::Refused { reason, .. } => {
                tracing::info!(
                    conn = socket.id(),
                    channel,
                    reason,
                    "pusher subscription refused"
                );
                send(
                    socket,
                    wire::subscription_error(channel, "AuthError", &reason, 403),
                );
            }
        }
        // Cache channels: the last event, or `pusher:cache_miss` (see [`super::cache`]).
        super::cache::after_subscribe(socket, channel, joined).await;
    }

    async fn client_event(
        &mut self,
        socket: &mut Socket,
        event: String,
        channel: String,
        data: String,
    ) {
        let refuse = |socket: &Socket, code: Option<u16>, message: &str| {
            tracing::debug!(
                conn = socket.id(),
                channel,
                event,
                message,
                "pusher client event refused"
            );
            send(socket, wire::error(code, message));
        };
        let kind = ChannelKind::of(&channel);
        if !matches!(kind, ChannelKind::Private | ChannelKind::Presence) {
            if admitted(socket) {
                let message = if kind == ChannelKind::PrivateEncrypted {
                    "client events are not allowed on private-encrypted channels"
                } else {
                    "client events are only allowed on private and presence channels"
                };
                refuse(socket, None, message);
            }
            return;
        }
        if event.len() > wire::MAX_EVENT_NAME {
            if admitted(socket) {
                refuse(socket, None, "event name too long (200 characters at most)");
            }
            return;
        }
        if !self.client_events.take(Instant::now()) {
            if admitted(socket) {
                refuse(
                    socket,
                    Some(wire::codes::CLIENT_EVENT_RATE_LIMIT),
                    "client event rejected: more than 10 per second",
                );
            }
            return;
        }
        let max = super::MAX_DATA_BYTES.min(socket.node().limits().max_message_bytes);
        if data.len() > max {
            let message = format!("client event data too large ({max} bytes at most)");
            return refuse(socket, None, &message);
        }
        let payload = match serde_json::value::RawValue::from_string(data) {
            Ok(raw) => Payload::Json(raw),
            Err(_) => return refuse(socket, None, "invalid data"),
        };
        // A push on the joined topic: the core checks the rule, asks the hooks, publishes to
        // the others (not to the sender: Pusher never echoes client events) and answers;
        // an error reply reaches the client as `pusher:error`.
        Box::pin(socket.handle(message(channel, event, payload))).await;
    }
}

/// Counts a message the socket does not see against the connection's rate limit; a refused
/// one is answered `pusher:error` (or the connection is closing for a flood).
fn admitted(socket: &mut Socket) -> bool {
    match socket.admit_message() {
        Admitted::Yes => true,
        Admitted::RateLimited => {
            send(socket, wire::error(None, "rate limited"));
            false
        }
        Admitted::Closing => false,
    }
}

fn message(topic: String, event: String, payload: Payload) -> Message {
    Message {
        join_ref: None,
        msg_ref: None,
        topic,
        event,
        payload,
    }
}

fn send(socket: &Socket, text: String) {
    socket
        .outbox()
        .push(Outgoing::Raw(Box::new(Frame::Text(bytes::Bytes::from(
            text,
        )))));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_shares_the_one_open_rule() {
        let app = Arc::new(PusherApp {
            app_id: "1".into(),
            key: "k".into(),
            secret: "s".into(),
            max_presence_members: 100,
        });
        let counts = SubscriptionCounts::new();
        let a = PusherConn::new(app.clone(), "1.1".into(), counts.clone());
        let b = PusherConn::new(app, "2.2".into(), counts);
        assert!(Arc::ptr_eq(&a.open_rule, &b.open_rule));
    }
}
