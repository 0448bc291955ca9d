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
//!   (`user_id`, `user_info`), tracked in the core's presence; [`PusherConn::translate`] turns
//!   the core's `presence_state` / `presence_diff` into Pusher's frames, one member per user.
//! * Not yet: `private-encrypted-` channels (refused with a `pusher:subscription_error` saying
//!   so), cache channels, `pusher:signin`, `user_id` on presence client events.
//!
//! Replies say nothing to a Pusher client when they succeed; errors become `pusher:error`
//! (see [`crate::outbox::Outgoing::encode_pusher`]).

use super::{ChannelKind, PusherApp};
use crate::channel::JoinOutcome;
use crate::channel::{JoinRequest, Member};
use crate::outbox::Outgoing;
use crate::policy::ChannelRule;
use crate::protocol::pusher::{self as wire, ClientMessage};
use crate::protocol::{events, Frame, Message, Payload};
use crate::ratelimit::TokenBucket;
use crate::socket::{Admitted, Socket};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Client events a connection may send per second (Pusher's limit), and their burst.
pub const CLIENT_EVENTS_PER_SECOND: f64 = 10.0;
/// The largest `user_info` of a presence member (its JSON text), as Pusher's.
pub const MAX_USER_INFO_BYTES: usize = 1024;

/// The rule of channels no `[[channels]]` rule matches, one for the process: a copy per
/// connection cost every Pusher connection ~570 bytes (the rule and its strings), 15 % more
/// idle memory than a Phoenix connection (BENCHMARKS.md, "Pusher mode vs Sockudo").
fn open_rule() -> Arc<ChannelRule> {
    static OPEN: std::sync::LazyLock<Arc<ChannelRule>> =
        std::sync::LazyLock::new(|| Arc::new(ChannelRule::open("*")));
    OPEN.clone()
}

/// A presence channel's members as this connection was told them: `user_id` → the presence
/// refs (one per connection of that user, cluster-wide). A user is a member while it has one.
type Members = HashMap<Box<str>, HashSet<String>>;

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
    presence: HashMap<Box<str>, Members>,
}

impl PusherConn {
    pub fn new(app: Arc<PusherApp>, socket_id: String) -> Self {
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
                self.presence.remove(channel.as_str());
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

    async fn subscribe(
        &mut self,
        socket: &mut Socket,
        channel: &str,
        auth: Option<&str>,
        channel_data: Option<&str>,
    ) {
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
            }
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
            ChannelKind::PrivateEncrypted => {
                return refuse(
                    socket,
                    "UnsupportedChannel",
                    "private-encrypted- channels are not supported by Plexus yet",
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
                member: member.clone(),
            })
            .await;
        match outcome {
            // A presence channel's subscription_succeeded is its `presence_state` (translated).
            JoinOutcome::Joined(_) if member.is_some() => {}
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
        if !matches!(
            ChannelKind::of(&channel),
            ChannelKind::Private | ChannelKind::Presence
        ) {
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

/// A presence channel's `channel_data`: `{"user_id": string or number, "user_info"?: any}`,
/// `user_info` at most [`MAX_USER_INFO_BYTES`].
fn parse_member(channel_data: &str) -> Result<Member, &'static str> {
    let Ok(Value::Object(data)) = serde_json::from_str::<Value>(channel_data) else {
        return Err("channel_data must be a JSON object {\"user_id\", \"user_info\"}");
    };
    let user_id: Arc<str> = match data.get("user_id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => s.as_str().into(),
        Some(Value::Number(n)) => n.to_string().into(),
        _ => return Err("channel_data needs a user_id (a string of 1 to 128 bytes, or a number)"),
    };
    let info = data.get("user_info").cloned().unwrap_or(Value::Null);
    if info.to_string().len() > MAX_USER_INFO_BYTES {
        return Err("user_info too large (1024 bytes at most)");
    }
    let mut meta = Map::new();
    meta.insert("user_info".into(), info);
    Ok(Member { key: user_id, meta })
}

impl PusherConn {
    /// Rewrites what is about to be written in Pusher's presence terms: a presence channel's
    /// `presence_state` becomes its `pusher_internal:subscription_succeeded` with
    /// `{"presence": {"ids", "hash", "count"}}`, and `presence_diff`s become
    /// `pusher_internal:member_added` when a user's first connection joins and
    /// `member_removed` after its last one left (one member per user, whatever its
    /// connections). Presence messages of other channels (a rule with `presence = true`) say
    /// nothing to a Pusher client. Costs nothing when the batch has no presence message.
    pub fn translate(&mut self, batch: &mut Vec<Outgoing>) {
        if !batch.iter().any(is_presence) {
            return;
        }
        for item in std::mem::take(batch) {
            match &item {
                Outgoing::Push(p) if p.event == events::PRESENCE_STATE => {
                    if let Some(f) = self.presence_state(&p.topic, &p.payload) {
                        batch.push(raw(f));
                    }
                }
                Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p)
                    if &*p.event == events::PRESENCE_DIFF =>
                {
                    batch.extend(
                        self.presence_diff(&p.topic, &p.payload)
                            .into_iter()
                            .map(raw),
                    );
                }
                _ => batch.push(item),
            }
        }
    }

    fn presence_state(&mut self, channel: &str, payload: &Payload) -> Option<String> {
        if ChannelKind::of(channel) != ChannelKind::Presence {
            return None;
        }
        let state = payload_object(payload);
        let mut members = Members::new();
        let mut hash = Map::new();
        for (user_id, entry) in &state {
            let refs = refs_of(entry);
            if refs.is_empty() {
                continue;
            }
            hash.insert(user_id.clone(), user_info(entry));
            members.insert(user_id.as_str().into(), refs);
        }
        let ids: Vec<&String> = hash.keys().collect();
        let data = serde_json::json!({
            "presence": { "ids": ids, "hash": &hash, "count": hash.len() }
        });
        self.presence.insert(channel.into(), members);
        Some(wire::channel_event(
            "pusher_internal:subscription_succeeded",
            channel,
            &data.to_string(),
        ))
    }

    fn presence_diff(&mut self, channel: &str, payload: &Payload) -> Vec<String> {
        let Some(members) = self.presence.get_mut(channel) else {
            return Vec::new();
        };
        let diff = payload_object(payload);
        let mut out = Vec::new();
        if let Some(Value::Object(joins)) = diff.get("joins") {
            for (user_id, entry) in joins {
                let refs = members.entry(user_id.as_str().into()).or_default();
                let was_member = !refs.is_empty();
                refs.extend(refs_of(entry));
                if !was_member && !refs.is_empty() {
                    let data =
                        serde_json::json!({ "user_id": user_id, "user_info": user_info(entry) });
                    out.push(wire::channel_event(
                        "pusher_internal:member_added",
                        channel,
                        &data.to_string(),
                    ));
                }
            }
        }
        if let Some(Value::Object(leaves)) = diff.get("leaves") {
            for (user_id, entry) in leaves {
                let Some(refs) = members.get_mut(user_id.as_str()) else {
                    continue;
                };
                let was_member = !refs.is_empty();
                for r in refs_of(entry) {
                    refs.remove(&r);
                }
                if was_member && refs.is_empty() {
                    members.remove(user_id.as_str());
                    let data = serde_json::json!({ "user_id": user_id });
                    out.push(wire::channel_event(
                        "pusher_internal:member_removed",
                        channel,
                        &data.to_string(),
                    ));
                }
            }
        }
        out
    }
}

fn is_presence(item: &Outgoing) -> bool {
    match item {
        Outgoing::Push(p) => p.event == events::PRESENCE_STATE,
        Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => {
            &*p.event == events::PRESENCE_DIFF
        }
        _ => false,
    }
}

fn payload_object(payload: &Payload) -> Map<String, Value> {
    payload
        .as_json()
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default()
}

/// The `phx_ref`s of a presence entry `{"metas": [{"phx_ref", …}]}`.
fn refs_of(entry: &Value) -> HashSet<String> {
    entry["metas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["phx_ref"].as_str().map(str::to_owned))
        .collect()
}

/// The `user_info` of a presence entry's first meta (`null` if none).
fn user_info(entry: &Value) -> Value {
    entry["metas"][0]["user_info"].clone()
}

fn raw(text: String) -> Outgoing {
    Outgoing::Raw(Box::new(Frame::Text(bytes::Bytes::from(text))))
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
        });
        let a = PusherConn::new(app.clone(), "1.1".into());
        let b = PusherConn::new(app, "2.2".into());
        assert!(Arc::ptr_eq(&a.open_rule, &b.open_rule));
    }
}
