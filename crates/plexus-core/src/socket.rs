//! One client connection, shared by every transport: routing of its messages, heartbeats,
//! in-band token refresh, the inbound rate limit, and its one teardown.
//!
//! A transport decodes frames and hands each [`Message`] to [`Socket::handle`] (or calls a
//! typed entry point such as [`Socket::join`]); everything the server says back goes through
//! the connection's [`Outbox`] as [`Outgoing`](crate::outbox::Outgoing) messages, so replies
//! and broadcasts reach the client in the order they were produced.
//!
//! Phoenix semantics implemented here:
//! * `heartbeat` on topic `phoenix` is answered without a join; `refresh_token` there replaces
//!   the connection's token: the same user's, or — once — a user's token for an anonymous
//!   connection (Supabase's anon key, then `setAuth` after sign-in), which asks the connect
//!   hook about the user and authorises the joined channels again (rules and join hooks);
//!   two users never swap on one connection;
//! * `phx_join`, `phx_leave`, `presence_update` and client pushes go to the connection's
//!   [`Channels`];
//! * a message for a topic that is not joined gets `{"reason": "unmatched topic"}`.

use crate::admission::Permit;
use crate::auth::{AuthError, Identity};
use crate::channel::{json_payload, Channels, Conn, Departure, JoinOutcome, JoinRequest};
use crate::expiry::Expiry;
use crate::limits::close_codes;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::protocol::{events, DecodeError, Message, Payload, PHOENIX_TOPIC};
use crate::ratelimit::TokenBucket;
use crate::webhooks::grace::HoldGroup;
use crate::ConnId;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A live connection: its identity, joined channels and outbound queue.
pub struct Socket {
    node: Arc<Node>,
    id: ConnId,
    identity: Identity,
    expiry: Expiry,
    outbox: Arc<Outbox>,
    channels: Channels,
    rate: Option<TokenBucket>,
    /// Messages refused by the rate limit in a row.
    refused_in_a_row: u32,
    closed: bool,
    /// The client's address.
    addr: std::net::IpAddr,
    opened: std::time::Instant,
    /// How the connection ended, when the transport knows better than the outbox (the
    /// client's close frame). Boxed: set once, at the end.
    close_info: Option<Box<(u16, String)>>,
    permit: Permit,
    /// A Pusher connection's `socket_id` (its `client_event` webhooks name it, whoever it
    /// signs in as).
    pusher_socket: Option<Arc<str>>,
    /// The `connect` (or `reconnect`) webhook being decided (a reconnect grace claims the
    /// user's held `disconnect` first): awaited before the connection reports anything else.
    opening: Option<tokio::task::JoinHandle<()>>,
}

/// What the rate limit says of an inbound message.
pub enum Admitted {
    Yes,
    RateLimited,
    /// A sustained flood: the connection is being closed.
    Closing,
}

/// The node refused a new connection because it is draining.
#[derive(Debug)]
pub struct Draining;

impl Socket {
    /// Registers a connection admitted by [`Node::admit`].
    pub fn open(node: Arc<Node>, identity: Identity, permit: Permit) -> Result<Self, Draining> {
        let (id, outbox) = node.register(&identity).ok_or(Draining)?;
        let limits = node.limits();
        let rate = (limits.messages_per_second > 0.0).then(|| {
            TokenBucket::new(
                limits.messages_per_second,
                limits.message_burst,
                std::time::Instant::now(),
            )
        });
        let expiry = Expiry::new(identity.expires_at, limits.expiry_grace);
        let addr = permit.ip();
        let opening = node.connection_opened(id, &identity, addr);
        Ok(Socket {
            node,
            id,
            identity,
            expiry,
            outbox,
            channels: Channels::default(),
            rate,
            refused_in_a_row: 0,
            closed: false,
            addr,
            opened: std::time::Instant::now(),
            close_info: None,
            permit,
            pusher_socket: None,
            opening,
        })
    }

    /// Waits until the connection's `connect` (or `reconnect`) webhook is decided.
    async fn opened(&mut self) {
        if let Some(task) = self.opening.take() {
            let _ = task.await;
        }
    }

    fn conn(&self) -> Conn<'_> {
        Conn {
            node: &self.node,
            id: self.id,
            identity: &self.identity,
            outbox: &self.outbox,
            addr: Some(self.addr),
            pusher_socket: self.pusher_socket.as_deref(),
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The node the connection is on.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// When the connection's token runs out (replaced by a refresh).
    pub fn expiry(&self) -> &Expiry {
        &self.expiry
    }

    pub fn expiry_mut(&mut self) -> &mut Expiry {
        &mut self.expiry
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Marks this connection as Pusher's connection `socket_id`.
    pub fn set_pusher_socket(&mut self, socket_id: &str) {
        self.pusher_socket = Some(socket_id.into());
    }

    /// This connection as the cause of webhook events (charged to its share of the queue).
    pub fn webhook_cause(&self) -> crate::webhooks::Cause<'_> {
        crate::webhooks::Cause {
            identity: &self.identity,
            addr: Some(self.addr),
        }
    }

    /// Joined channels.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Counts an inbound message (decodable or not) and applies the rate limit. `false` means
    /// it was refused: the caller answers `rate limited`, unless the connection is being closed
    /// for a sustained flood.
    pub fn admit_message(&mut self) -> Admitted {
        self.node
            .counters
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        let Some(bucket) = self.rate.as_mut() else {
            return Admitted::Yes;
        };
        if bucket.take(std::time::Instant::now()) {
            self.refused_in_a_row = 0;
            return Admitted::Yes;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row > self.node.limits().message_burst {
            tracing::warn!(conn = self.id, sub = %self.identity.sub, "closing: sustained flood over the message rate limit");
            self.outbox
                .close(close_codes::POLICY_VIOLATION, "rate limit exceeded");
            Admitted::Closing
        } else {
            Admitted::RateLimited
        }
    }

    /// [`Socket::admit_message`] for a decoded message, answering a refusal.
    fn admit(&mut self, msg: &Message) -> bool {
        match self.admit_message() {
            Admitted::Yes => true,
            Admitted::RateLimited => {
                self.conn().reply_error(msg, "rate limited");
                false
            }
            Admitted::Closing => false,
        }
    }

    /// Handles what needs no waiting — heartbeats, the common case — and returns `true`;
    /// `false` means the message needs [`Socket::handle`]. The WebSocket transport answers
    /// heartbeats this way and boxes `handle` for the rest, so that an idle connection's task
    /// does not carry the state of joins and pushes (see BENCHMARKS.md).
    pub fn handle_inline(&mut self, msg: &Message) -> bool {
        if msg.topic != PHOENIX_TOPIC || msg.event != events::HEARTBEAT {
            return false;
        }
        if self.admit(msg) {
            self.conn().reply_ok(msg, Payload::empty_object());
        }
        true
    }

    /// Handles one decoded client message.
    pub async fn handle(&mut self, msg: Message) {
        self.opened().await;
        if !self.admit(&msg) {
            return;
        }
        let event = msg.event.as_str();
        if msg.topic == PHOENIX_TOPIC {
            match event {
                events::HEARTBEAT => self.conn().reply_ok(&msg, Payload::empty_object()),
                events::REFRESH_TOKEN => self.refresh_token(&msg, "token").await,
                events::ACCESS_TOKEN => self.refresh_token(&msg, "access_token").await,
                _ => self
                    .conn()
                    .reply_error(&msg, "unknown event on topic phoenix"),
            }
            return;
        }
        if event == events::JOIN {
            if let Err(reason) = self.supabase_join_token(&msg).await {
                return self.conn().reply_error(&msg, &reason);
            }
            self.join(JoinRequest {
                topic: &msg.topic,
                join_ref: msg.join_ref.as_deref(),
                msg_ref: msg.msg_ref.as_deref(),
                params: &msg.payload,
                reply: true,
                unmatched: None,
                member: None,
            })
            .await;
            return;
        }
        let Some(tracked) = self.channels.tracks(&msg.topic) else {
            // As Phoenix: leaving a topic that is not joined is fine (clients leave channels
            // whose join was refused, to stop rejoining).
            if event == events::LEAVE {
                return self.conn().reply_ok(&msg, Payload::empty_object());
            }
            return self.conn().reply_error(&msg, "unmatched topic");
        };
        if event == events::ACCESS_TOKEN && self.channels.is_supabase(&msg.topic) {
            return self.supabase_access_token(msg).await;
        }
        let conn = Conn {
            node: &self.node,
            id: self.id,
            identity: &self.identity,
            outbox: &self.outbox,
            addr: Some(self.addr),
            pusher_socket: self.pusher_socket.as_deref(),
        };
        match event {
            events::LEAVE => self.channels.leave(&conn, &msg).await,
            events::PRESENCE_UPDATE if tracked => self.channels.presence_update(&conn, msg).await,
            events::PRESENCE_UPDATE => conn.reply_error(&msg, "not tracked in presence"),
            // Supabase's client sends its new token on every joined channel: never relayed.
            events::ACCESS_TOKEN => self.refresh_token(&msg, "access_token").await,
            _ => self.channels.push(&conn, msg).await,
        }
    }

    /// Joins a topic. With `req.reply` the reply is queued for the client (Phoenix
    /// transports); either way the outcome is returned (SSE renders it itself).
    pub async fn join(&mut self, req: JoinRequest<'_>) -> JoinOutcome {
        self.opened().await;
        let conn = Conn {
            node: &self.node,
            id: self.id,
            identity: &self.identity,
            outbox: &self.outbox,
            addr: Some(self.addr),
            pusher_socket: self.pusher_socket.as_deref(),
        };
        self.channels.join(&conn, req).await
    }

    /// `refresh_token {"token": …}` (or `access_token {"access_token": …}`): verifies the new
    /// token (same user, or an anonymous connection's sign-in) and adopts its roles and expiry, replying `{"expires_at"}`. Joined
    /// channels that the new identity may no longer join are closed (`phx_close`).
    async fn refresh_token(&mut self, msg: &Message, field: &str) {
        let Some(token) = token_field(&msg.payload, field) else {
            let hint = format!("{} needs {{\"{field}\": \"<jwt>\"}}", msg.event);
            return self.conn().reply_error(msg, &hint);
        };
        match self.adopt_token(&token).await {
            Ok(expires_at) => {
                let response = json_payload(&serde_json::json!({ "expires_at": expires_at }));
                self.conn().reply_ok(msg, response);
            }
            Err(reason) => self.conn().reply_error(msg, &reason),
        }
    }

    /// Verifies a new token for this connection and adopts its roles and expiry; joined
    /// channels the new identity may no longer join are closed. Returns the expiry.
    ///
    /// The token must be the same user's (`sub`), or, on an anonymous connection, another
    /// anonymous token (it keeps its `anon:` id) or a user's: the one upgrade, anonymous to
    /// signed in ([`Socket::sign_in`]). A signed-in connection never changes user nor goes
    /// back to anonymous.
    async fn adopt_token(&mut self, token: &str) -> Result<Option<u64>, String> {
        let mut id = match self.node.authenticate(Some(token)).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(conn = self.id, sub = %self.identity.sub, reason = %e, "token refresh refused");
                return Err(e.to_string());
            }
        };
        match (self.identity.anonymous, id.anonymous) {
            (true, true) => id.sub = self.identity.sub.clone(),
            (true, false) => return self.sign_in(id).await,
            (false, false) if id.sub == self.identity.sub => {}
            (false, true) => {
                tracing::warn!(conn = self.id, sub = %self.identity.sub, "token refresh refused: anonymous token on a signed-in connection");
                return Err(AuthError::BackToAnonymous.to_string());
            }
            (false, false) => {
                tracing::warn!(conn = self.id, sub = %self.identity.sub, "token refresh refused: different sub");
                return Err(AuthError::SubjectChanged.to_string());
            }
        }
        let expires_at = id.expires_at;
        self.expiry = Expiry::new(expires_at, self.node.limits().expiry_grace);
        self.identity = id;
        let conn = Conn {
            node: &self.node,
            id: self.id,
            identity: &self.identity,
            outbox: &self.outbox,
            addr: Some(self.addr),
            pusher_socket: self.pusher_socket.as_deref(),
        };
        for departure in self.channels.recheck(&conn) {
            departure.finish(&self.node).await;
        }
        Ok(expires_at)
    }

    /// An anonymous connection signs in as `user`, whose proof its protocol checked (Pusher's
    /// `pusher:signin`), as [`Socket::sign_in`] says; refused when it is signed in already.
    pub async fn sign_in_as(&mut self, user: Identity) -> Result<(), String> {
        if !self.identity.anonymous {
            return Err("already signed in".to_owned());
        }
        self.sign_in(user).await.map(|_| ())
    }

    /// An anonymous connection signs in as `user`, as if that user connected and joined:
    /// 1. the connect hook is asked with the user; a refusal (or no answer) refuses the
    ///    sign-in with its reason and the connection stays anonymous, as with any refused
    ///    token (the anon key it connected with is still good);
    /// 2. the user's per-user connection cap takes the connection's place, on this node and
    ///    cluster-wide (refused with `too many connections for this user` when full; it stays
    ///    anonymous);
    /// 3. the joined channels are authorised again for the user: by the rules, and by the
    ///    join hook of those whose rule has one (with the join's params). Those refused are
    ///    closed with the reason (`phx_close {"reason"}`, or Supabase's `system` notice then
    ///    `phx_close`); the client may rejoin them if it wants. They are left as the anonymous
    ///    identity that joined them (`leave` webhooks with the `anon:` id), then the `signin`
    ///    webhook names both ids and the topics carried over to the user.
    async fn sign_in(&mut self, user: Identity) -> Result<Option<u64>, String> {
        let refuse = |reason: String| {
            tracing::warn!(conn = self.id, anonymous = %self.identity.sub, sub = %user.sub, %reason, "sign-in refused");
            crate::metrics::refused("signin", &reason);
            Err(reason)
        };
        if let Some(hooks) = self.node.hooks() {
            match hooks.connect(&user, self.addr).await {
                Ok(Some(d)) if !d.allow => return refuse(d.reason),
                Ok(_) => {}
                Err(_) => return refuse(crate::hooks::UNAVAILABLE.to_owned()),
            }
        }
        let broker = self.node.broker().clone();
        if let Err(refusal) = self.permit.move_to_user(&broker, &user.sub).await {
            return refuse(refusal.reason);
        }
        tracing::info!(conn = self.id, anonymous = %self.identity.sub, sub = %user.sub, "anonymous connection signed in");
        self.node.set_user(self.id, user.sub.clone());
        let expires_at = user.expires_at;
        self.expiry = Expiry::new(expires_at, self.node.limits().expiry_grace);
        let anonymous = std::mem::replace(&mut self.identity, user);
        let refused = self.channels.signin_refusals(&self.conn()).await;
        // Left by the identity that joined them.
        let as_anonymous = Conn {
            node: &self.node,
            id: self.id,
            identity: &anonymous,
            outbox: &self.outbox,
            addr: Some(self.addr),
            pusher_socket: self.pusher_socket.as_deref(),
        };
        let departures = self.channels.close_refused(&as_anonymous, refused);
        self.node.signed_in(
            self.id,
            &anonymous.sub,
            &self.identity.sub,
            &self.channels.topics(),
        );
        for departure in departures {
            departure.finish(&self.node).await;
        }
        Ok(expires_at)
    }

    /// A Supabase channel's join may carry a newer token (`access_token`): adopted before the
    /// join, which it refuses if it does not verify. Supabase API keys (`sb_…`) are not tokens.
    async fn supabase_join_token(&mut self, msg: &Message) -> Result<(), String> {
        if self.node.policy().supabase_name(&msg.topic).is_none() {
            return Ok(());
        }
        match token_field(&msg.payload, "access_token") {
            Some(t) if !t.starts_with("sb_") => self.adopt_token(&t).await.map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Supabase's `setAuth` on a joined Supabase channel: `access_token {"access_token"}`.
    /// As in Supabase, success is silent; a token that does not verify closes that channel
    /// with a `system` error notice, then `phx_close`.
    async fn supabase_access_token(&mut self, msg: Message) {
        let token = match token_field(&msg.payload, "access_token") {
            Some(t) if !t.starts_with("sb_") => t,
            _ => return,
        };
        let Err(reason) = self.adopt_token(&token).await else {
            return;
        };
        let conn = Conn {
            node: &self.node,
            id: self.id,
            identity: &self.identity,
            outbox: &self.outbox,
            addr: Some(self.addr),
            pusher_socket: self.pusher_socket.as_deref(),
        };
        if let Some(departure) = self.channels.close_with_notice(&conn, &msg.topic, &reason) {
            departure.finish(&self.node).await;
        }
    }

    /// Tells the client its token expired and it has `grace` to refresh it.
    pub fn notify_token_expired(&self, grace: std::time::Duration) {
        let payload = json_payload(&serde_json::json!({ "grace_ms": grace.as_millis() as u64 }));
        self.conn()
            .push(None, None, PHOENIX_TOPIC, events::TOKEN_EXPIRED, payload);
    }

    /// Answers a frame that could not be decoded with an error reply carrying the reason. It
    /// counts against the rate limit like any message.
    pub fn handle_decode_error(&mut self, err: DecodeError) {
        let reason = match self.admit_message() {
            Admitted::Yes => err.reason,
            Admitted::RateLimited => "rate limited".to_owned(),
            Admitted::Closing => return,
        };
        let topic = err.topic.as_deref().unwrap_or(PHOENIX_TOPIC);
        let response = json_payload(&serde_json::json!({ "reason": reason }));
        self.conn().reply(
            err.join_ref.as_deref(),
            err.msg_ref.as_deref(),
            topic,
            "error",
            response,
        );
    }

    /// Records how the connection ended (the client's close frame), for the `disconnect`
    /// webhook. Without it, the outbox's close request (a server close) or `1006`.
    pub fn set_close_info(&mut self, code: u16, reason: &str) {
        self.close_info = Some(Box::new((code, reason.to_owned())));
    }

    /// The one teardown: departs every channel locally and unregisters the connection; the
    /// departures' broker work is returned to be awaited or spawned.
    fn teardown(&mut self) -> Vec<Departure> {
        // The transport's socket may be closed once this returns (the task dropped): the
        // fan-out must not write to it any more (a later connection may get its number).
        drop(self.outbox.detach_socket());
        let conn = Conn {
            node: &self.node,
            id: self.id,
            identity: &self.identity,
            outbox: &self.outbox,
            addr: Some(self.addr),
            pusher_socket: self.pusher_socket.as_deref(),
        };
        // A user's teardown is held for the reconnect grace, if there is one.
        let grace = self
            .node
            .webhook_grace()
            .filter(|_| !self.identity.anonymous)
            .cloned();
        let mut hold = grace.as_ref().map(|_| HoldGroup::default());
        let departures = self.channels.depart_all(&conn, hold.as_mut());
        let (code, reason) = match (self.close_info.take(), self.outbox.close_reason()) {
            (Some(info), _) => *info,
            (None, Some(c)) => (c.code, c.reason.to_owned()),
            (None, None) => (close_codes::ABNORMAL, "connection lost".to_owned()),
        };
        self.node.connection_closed(
            self.id,
            &self.identity,
            self.addr,
            code,
            &reason,
            self.opened.elapsed(),
            hold.as_mut(),
        );
        if let (Some(grace), Some(hold)) = (grace, hold) {
            grace.hold(hold);
        }
        self.node.unregister(self.id);
        self.closed = true;
        departures
    }

    /// Leaves every channel and unregisters the connection.
    pub async fn close(mut self) {
        self.opened().await;
        let _departing = self.node.departing();
        for departure in self.teardown() {
            departure.finish(&self.node).await;
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Dropped without close() (e.g. the task was cancelled): the same teardown, with the
        // broker's part in the background.
        let departing = self.node.departing();
        let departures = self.teardown();
        if departures.is_empty() {
            return;
        }
        let node = self.node.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _departing = departing;
                for departure in departures {
                    departure.finish(&node).await;
                }
            });
        }
    }
}

/// The string `field` of a JSON object payload.
fn token_field(payload: &Payload, field: &str) -> Option<String> {
    payload
        .as_json()
        .and_then(|raw| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get()).ok()
        })
        .and_then(|mut m| match m.remove(field) {
            Some(serde_json::Value::String(t)) => Some(t),
            _ => None,
        })
}
