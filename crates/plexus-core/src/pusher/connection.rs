//! One Pusher WebSocket connection's protocol state and its client frames, on top of the
//! connection's [`Socket`]: the WebSocket transport hands each text frame of a Pusher
//! connection to [`PusherConn::handle`].
//!
//! * A Pusher channel is the Plexus topic of the same name. `pusher:subscribe` is a join of
//!   that topic; `pusher:unsubscribe` a leave; a client event `client-*` a client push of that
//!   event, so broadcasts of the HTTP API and of Phoenix clients reach Pusher subscribers and
//!   the other way round.
//! * Authorisation: a `private-` channel needs the app's signature of `socket_id:channel`
//!   (checked here, before the core's join). Then the channel rules decide as for any
//!   connection: a topic that a `[[channels]]` rule matches is governed by it (its roles, hooks,
//!   history); a topic no rule matches is open to Pusher connections (Pusher's semantics: the
//!   app's signature is the only authority), even where the profile denies unmatched topics to
//!   Phoenix clients.
//! * Not yet: `presence-` and `private-encrypted-` channels (refused with a
//!   `pusher:subscription_error` saying so), cache channels, `pusher:signin`.
//!
//! Replies say nothing to a Pusher client when they succeed; errors become `pusher:error`
//! (see [`crate::outbox::Outgoing::encode_pusher`]).

use super::{ChannelKind, PusherApp};
use crate::channel::JoinOutcome;
use crate::channel::JoinRequest;
use crate::outbox::Outgoing;
use crate::policy::ChannelRule;
use crate::protocol::pusher::{self as wire, ClientMessage};
use crate::protocol::{events, Frame, Message, Payload};
use crate::ratelimit::TokenBucket;
use crate::socket::{Admitted, Socket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client events a connection may send per second (Pusher's limit), and their burst.
pub const CLIENT_EVENTS_PER_SECOND: f64 = 10.0;

/// A Pusher connection's state beside its [`Socket`].
pub struct PusherConn {
    app: Arc<PusherApp>,
    socket_id: Box<str>,
    /// The rule of channels no `[[channels]]` rule matches: open, any event, no echo.
    open_rule: Arc<ChannelRule>,
    client_events: TokenBucket,
    /// A `pusher:ping` was sent and nothing was received since.
    pub pinged: bool,
}

impl PusherConn {
    pub fn new(app: Arc<PusherApp>, socket_id: String) -> Self {
        PusherConn {
            app,
            socket_id: socket_id.into(),
            open_rule: Arc::new(ChannelRule::open("*")),
            client_events: TokenBucket::new(
                CLIENT_EVENTS_PER_SECOND,
                CLIENT_EVENTS_PER_SECOND as u32,
                Instant::now(),
            ),
            pinged: false,
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
            // `channel_data` is for presence channels, not supported yet.
            ClientMessage::Subscribe { channel, auth, .. } => {
                if admitted(socket) {
                    self.subscribe(socket, &channel, auth.as_deref()).await;
                }
            }
            ClientMessage::Unsubscribe { channel } => {
                // Counted by the socket; leaving a channel not subscribed is fine, as in Pusher.
                let leave = message(channel, events::LEAVE.to_owned(), Payload::empty_object());
                Box::pin(socket.handle(leave)).await;
            }
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => self.client_event(socket, event, channel, data).await,
        }
    }

    async fn subscribe(&self, socket: &mut Socket, channel: &str, auth: Option<&str>) {
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
        match ChannelKind::of(channel) {
            ChannelKind::Public => {}
            ChannelKind::Private => {
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
            ChannelKind::Presence | ChannelKind::PrivateEncrypted => {
                return refuse(
                    socket,
                    "UnsupportedChannel",
                    "presence- and private-encrypted- channels are not supported by Plexus yet",
                    501,
                );
            }
        }
        let params = Payload::empty_object();
        let outcome = socket
            .join(JoinRequest {
                topic: channel,
                join_ref: None,
                msg_ref: None,
                reply: false,
                params: &params,
                unmatched: Some(&self.open_rule),
            })
            .await;
        match outcome {
            JoinOutcome::Joined(_) => send(socket, wire::subscription_succeeded(channel)),
            JoinOutcome::Refused { reason, .. } => refuse(socket, "AuthError", &reason, 403),
        }
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
        if !matches!(ChannelKind::of(&channel), ChannelKind::Private) {
            if admitted(socket) {
                refuse(
                    socket,
                    None,
                    "client events are only allowed on private and presence channels",
                );
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
