//! One client connection's channel state machine, shared by every transport.
//!
//! A transport decodes frames and hands each [`Message`] to [`Socket::handle`]; everything the
//! server says back (replies, `phx_close`, broadcasts) goes through the connection's
//! [`Outbox`], so replies and broadcasts reach the client in the order they were produced.
//!
//! Phoenix semantics implemented here:
//! * `heartbeat` on topic `phoenix` is answered without a join;
//! * `phx_join` is authorised by the [`Policy`](crate::policy::Policy); joining a topic that is
//!   already joined first closes the old join (`phx_close` with the old join_ref);
//! * `phx_leave` replies ok, then sends `phx_close`;
//! * any other event on a joined topic is a client push: checked against the channel's rule,
//!   broadcast to the other subscribers (or to all, with `echo`), and replied to;
//! * a message for a topic that is not joined gets `{"reason": "unmatched topic"}`.

use crate::admission::Permit;
use crate::auth::Identity;
use crate::limits::close_codes;
use crate::node::Node;
use crate::outbox::Outbox;
use crate::protocol::{
    encode_push, encode_reply, events, DecodeError, Message, Payload, PHOENIX_TOPIC,
};
use crate::ratelimit::TokenBucket;
use crate::ConnId;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

struct Joined {
    join_ref: Option<Box<str>>,
    /// Index of the governing rule in the node's policy.
    rule: usize,
    /// Counted against the rule's `max_per_user`.
    counted: bool,
    /// Tracked in presence.
    presence: bool,
}

/// A live connection: its identity, joined channels and outbound queue.
pub struct Socket {
    node: Arc<Node>,
    id: ConnId,
    identity: Identity,
    outbox: Arc<Outbox>,
    channels: HashMap<Box<str>, Joined>,
    rate: Option<TokenBucket>,
    /// Messages refused by the rate limit in a row.
    refused_in_a_row: u32,
    closed: bool,
    _permit: Permit,
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
        Ok(Socket {
            node,
            id,
            identity,
            outbox,
            channels: HashMap::new(),
            rate,
            refused_in_a_row: 0,
            closed: false,
            _permit: permit,
        })
    }

    /// Applies the inbound message rate limit; `false` means the message was refused (and
    /// answered, or the connection is being closed).
    fn within_rate(&mut self, msg: &Message) -> bool {
        let Some(bucket) = self.rate.as_mut() else {
            return true;
        };
        if bucket.take(std::time::Instant::now()) {
            self.refused_in_a_row = 0;
            return true;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row > self.node.limits().message_burst {
            tracing::warn!(sub = %self.identity.sub, "closing: sustained flood over the message rate limit");
            self.outbox
                .close(close_codes::POLICY_VIOLATION, "rate limit exceeded");
        } else {
            self.reply_error(msg, "rate limited");
        }
        false
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Handles what needs no waiting — heartbeats, the common case — and returns `true`;
    /// `false` means the message needs [`Socket::handle`]. The WebSocket transport answers
    /// heartbeats this way and boxes `handle` for the rest, so that an idle connection's task
    /// does not carry the state of joins and pushes (see BENCHMARKS.md).
    pub fn handle_inline(&mut self, msg: &Message) -> bool {
        if msg.topic != PHOENIX_TOPIC || msg.event != events::HEARTBEAT {
            return false;
        }
        self.node
            .counters
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        if self.within_rate(msg) {
            self.reply_ok(msg, Payload::empty_object());
        }
        true
    }

    /// Handles one decoded client message.
    pub async fn handle(&mut self, msg: Message) {
        self.node
            .counters
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        if !self.within_rate(&msg) {
            return;
        }
        let event = msg.event.as_str();
        if msg.topic == PHOENIX_TOPIC {
            match event {
                events::HEARTBEAT => self.reply_ok(&msg, Payload::empty_object()),
                events::REFRESH_TOKEN => self.refresh_token(&msg),
                _ => self.reply_error(&msg, "unknown event on topic phoenix"),
            }
            return;
        }
        if event == events::JOIN {
            return self.join(msg).await;
        }
        let Some(joined) = self.channels.get(msg.topic.as_str()) else {
            return self.reply_error(&msg, "unmatched topic");
        };
        let rule = joined.rule;
        let presence = joined.presence;
        match event {
            events::LEAVE => self.leave(msg).await,
            events::PRESENCE_UPDATE if presence => self.presence_update(msg).await,
            e if e.starts_with("phx_") => self.reply_error(&msg, "reserved event"),
            _ => self.client_push(msg, rule).await,
        }
    }

    /// `refresh_token {"token": …}`: verifies the new token (same user) and adopts its roles
    /// and expiry; joined channels stay joined.
    fn refresh_token(&mut self, msg: &Message) {
        #[derive(serde::Deserialize)]
        struct Body {
            token: String,
        }
        let token = msg
            .payload
            .as_json()
            .and_then(|raw| serde_json::from_str::<Body>(raw.get()).ok())
            .map(|b| b.token);
        let Some(token) = token else {
            return self.reply_error(msg, "refresh_token needs {\"token\": \"<jwt>\"}");
        };
        match self.node.authenticate(Some(&token)) {
            Ok(id) if id.sub == self.identity.sub => {
                let expires_at = id.expires_at;
                self.identity = id;
                let response = Payload::json(&serde_json::json!({ "expires_at": expires_at }))
                    .unwrap_or_else(|_| Payload::empty_object());
                self.reply_ok(msg, response);
            }
            Ok(_) => {
                tracing::warn!(sub = %self.identity.sub, "token refresh refused: different sub");
                self.reply_error(msg, &crate::auth::AuthError::SubjectChanged.to_string())
            }
            Err(e) => {
                tracing::warn!(sub = %self.identity.sub, reason = %e, "token refresh refused");
                self.reply_error(msg, &e.to_string())
            }
        }
    }

    /// Tells the client its token expired and it has `grace` to refresh it.
    pub fn notify_token_expired(&self, grace: std::time::Duration) {
        let payload = Payload::json(&serde_json::json!({ "grace_ms": grace.as_millis() as u64 }))
            .unwrap_or_else(|_| Payload::empty_object());
        if let Ok(frame) = encode_push(None, None, PHOENIX_TOPIC, events::TOKEN_EXPIRED, &payload) {
            self.outbox.push(frame);
        }
    }

    /// Answers a frame that could not be decoded with an error reply carrying the reason.
    pub fn handle_decode_error(&mut self, err: DecodeError) {
        let topic = err.topic.as_deref().unwrap_or(PHOENIX_TOPIC);
        let response = serde_json::json!({ "reason": err.reason });
        self.send_reply(
            err.join_ref.as_deref(),
            err.msg_ref.as_deref(),
            topic,
            "error",
            Payload::json(&response).unwrap_or_else(|_| Payload::empty_object()),
        );
    }

    async fn join(&mut self, msg: Message) {
        let limits = self.node.limits();
        if msg.topic.is_empty() {
            return self.refuse_join(&msg, "empty topic", false);
        }
        if msg.topic.len() > limits.max_topic_bytes {
            return self.refuse_join(&msg, "topic too long", false);
        }
        let rule = match self
            .node
            .policy()
            .authorize_join(&self.identity, &msg.topic)
        {
            Ok(rule) => rule,
            Err(denied) => {
                tracing::debug!(sub = %self.identity.sub, topic = %msg.topic, reason = denied.0, "join refused");
                return self.refuse_join(&msg, denied.0, false);
            }
        };
        let join_ref: Option<Box<str>> = msg.join_ref.as_deref().map(Into::into);
        if let Some(old) = self.channels.get_mut(msg.topic.as_str()) {
            // Duplicate join: close the old channel, keep the subscription and its count.
            let old_ref = std::mem::replace(&mut old.join_ref, join_ref);
            old.rule = rule;
            let presence = old.presence;
            self.send_close(&msg.topic, old_ref.as_deref());
            if self
                .node
                .policy()
                .rule(rule)
                .is_some_and(|r| r.history_size > 0)
            {
                // The new join may ask to recover, like any join.
                self.subscribe_with_history(&msg).await;
            } else {
                self.reply_ok(&msg, Payload::empty_object());
            }
            if presence {
                self.push_presence_state(&msg).await;
            }
            return;
        }
        if self.channels.len() >= limits.max_channels_per_connection {
            return self.refuse_join(&msg, "too many channels", false);
        }
        let max_per_user = self.node.policy().rule(rule).and_then(|r| r.max_per_user);
        if let Some(max) = max_per_user {
            if !self
                .node
                .claim_user_join_local(&msg.topic, &self.identity.sub, max)
            {
                tracing::info!(sub = %self.identity.sub, topic = %msg.topic, max, "join refused: max_per_user");
                return self.refuse_join(
                    &msg,
                    "already joined the maximum number of times (max_per_user)",
                    true,
                );
            }
        }
        let presence = self.node.policy().rule(rule).is_some_and(|r| r.presence);
        // Recorded before any await: if this future is dropped from here on, Drop and close()
        // release what the channel holds.
        self.channels.insert(
            msg.topic.as_str().into(),
            Joined {
                join_ref,
                rule,
                counted: max_per_user.is_some(),
                presence,
            },
        );
        if let Some(max) = max_per_user {
            if !self
                .node
                .claim_user_join_cluster(&msg.topic, &self.identity.sub, max)
                .await
            {
                self.channels.remove(msg.topic.as_str());
                self.node.release_local_join(&msg.topic, &self.identity.sub);
                tracing::info!(sub = %self.identity.sub, topic = %msg.topic, max, "join refused: max_per_user (cluster)");
                return self.refuse_join(
                    &msg,
                    "already joined the maximum number of times (max_per_user)",
                    true,
                );
            }
        }
        let history = self
            .node
            .policy()
            .rule(rule)
            .is_some_and(|r| r.history_size > 0);
        if history {
            self.subscribe_with_history(&msg).await;
        } else {
            self.node
                .subscribe(&msg.topic, self.id, self.outbox.clone())
                .await;
            self.reply_ok(&msg, Payload::empty_object());
        }
        if presence {
            self.track_presence(&msg).await;
        }
    }

    /// Joins a topic with history. The reply carries the history position
    /// `{"epoch": …, "offset": N}`; with join params `{"recover": {"epoch": …, "offset": N}}`
    /// it also replays what the client missed after offset N, before any live broadcast, and
    /// says whether that was everything (`"recovered": true`) or the gap was too old or from
    /// another epoch (`false`: the client should reload its state).
    ///
    /// Broadcasts that arrive while history is read are held aside and released after the
    /// replay, minus the ones the replay already carried: nothing is lost, nothing doubled.
    async fn subscribe_with_history(&mut self, msg: &Message) {
        #[derive(serde::Deserialize)]
        struct Recover {
            epoch: String,
            offset: u64,
        }
        #[derive(serde::Deserialize)]
        struct Params {
            recover: Option<Recover>,
        }
        let recover = msg
            .payload
            .as_json()
            .and_then(|raw| serde_json::from_str::<Params>(raw.get()).ok())
            .and_then(|p| p.recover);
        if recover.is_some() {
            self.outbox.hold();
        }
        self.node
            .subscribe(&msg.topic, self.id, self.outbox.clone())
            .await;
        let page = self
            .node
            .history(&msg.topic, recover.as_ref().map(|r| r.offset))
            .await;
        let page = match page {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(topic = %msg.topic, error = %e, "history unavailable");
                let response = if recover.is_some() {
                    serde_json::json!({ "recovered": false })
                } else {
                    serde_json::json!({})
                };
                self.reply_ok(
                    msg,
                    Payload::json(&response).unwrap_or_else(|_| Payload::empty_object()),
                );
                self.outbox.release(&msg.topic, 0);
                return;
            }
        };
        let Some(recover) = recover else {
            let response = serde_json::json!({ "epoch": page.epoch, "offset": page.top });
            return self.reply_ok(
                msg,
                Payload::json(&response).unwrap_or_else(|_| Payload::empty_object()),
            );
        };
        let recovered = page.epoch == recover.epoch && page.complete;
        let response = serde_json::json!({
            "epoch": page.epoch,
            "offset": page.top,
            "recovered": recovered,
        });
        self.reply_ok(
            msg,
            Payload::json(&response).unwrap_or_else(|_| Payload::empty_object()),
        );
        // Held broadcasts at or below `top` are in the replay (the history was read after they
        // were published), so they are dropped on release.
        let mut replayed_up_to = 0;
        if recovered {
            replayed_up_to = page.top;
            for item in page.items {
                self.outbox.push(item.frame);
            }
        }
        self.outbox.release(&msg.topic, replayed_up_to);
    }

    /// The public meta of this connection: when it came online, and the token's `name`/`info`.
    fn presence_meta(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut meta = serde_json::Map::new();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        meta.insert("online_at".into(), now_ms.into());
        if let Some(name) = &self.identity.name {
            meta.insert("name".into(), name.clone().into());
        }
        if let Some(info) = &self.identity.info {
            if let Ok(v) = serde_json::from_str(info.get()) {
                meta.insert("info".into(), v);
            }
        }
        meta
    }

    /// Tracks this connection, sends it the topic's `presence_state`, and tells everyone.
    async fn track_presence(&mut self, msg: &Message) {
        let meta = self
            .node
            .presence_track(
                &msg.topic,
                &self.identity.sub,
                self.id,
                self.presence_meta(),
            )
            .await;
        self.push_presence_state(msg).await;
        let diff = crate::presence::diff(Some((&self.identity.sub, meta)), None);
        self.publish_presence_diff(&msg.topic, diff).await;
    }

    async fn push_presence_state(&self, msg: &Message) {
        let state = self.node.presence_state(&msg.topic).await;
        if let Ok(payload) = Payload::json(&state) {
            if let Ok(frame) = encode_push(
                msg.join_ref.as_deref(),
                None,
                &msg.topic,
                events::PRESENCE_STATE,
                &payload,
            ) {
                self.outbox.push(frame);
            }
        }
    }

    async fn publish_presence_diff(&self, topic: &str, diff: serde_json::Value) {
        let Ok(payload) = Payload::json(&diff) else {
            return;
        };
        if let Err(e) = self
            .node
            .publish_unlogged(topic, events::PRESENCE_DIFF, payload)
            .await
        {
            tracing::warn!(topic, error = %e, "presence diff not published");
        }
    }

    /// `presence_update {…}`: merges the object into this connection's meta (server-owned keys
    /// excepted) under a new `phx_ref`, broadcast as a leave of the old meta and a join of the
    /// new one (with `phx_ref_prev`), as Phoenix does.
    async fn presence_update(&mut self, msg: Message) {
        let patch = msg.payload.as_json().and_then(|raw| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get()).ok()
        });
        let Some(patch) = patch else {
            return self.reply_error(&msg, "presence_update needs a JSON object");
        };
        if msg.payload.len() > 4096 {
            return self.reply_error(&msg, "presence meta too large (4096 bytes at most)");
        }
        let sub = self.identity.sub.clone();
        match self
            .node
            .presence_update(&msg.topic, &sub, self.id, &patch)
            .await
        {
            Ok((old, new)) => {
                self.reply_ok(&msg, Payload::empty_object());
                let diff = crate::presence::diff(Some((&sub, new)), Some((&sub, old)));
                self.publish_presence_diff(&msg.topic, diff).await;
            }
            Err(crate::presence::UpdateError::NotTracked) => {
                self.reply_error(&msg, "not tracked in presence")
            }
            Err(crate::presence::UpdateError::TooLarge) => {
                self.reply_error(&msg, "presence meta too large (4096 bytes at most, merged)")
            }
        }
    }

    /// Removes this connection from a topic's presence and tells everyone.
    async fn untrack_presence(&self, topic: &str) {
        if let Some(meta) = self
            .node
            .presence_untrack(topic, &self.identity.sub, self.id)
        {
            let diff = crate::presence::diff(None, Some((&self.identity.sub, meta)));
            self.publish_presence_diff(topic, diff).await;
        }
    }

    /// An error reply to a join: `{"reason": …, "retry": bool}`. `retry: false` tells the
    /// application that rejoining cannot succeed (phoenix.js retries regardless; see
    /// docs/protocol.md for how to stop it).
    fn refuse_join(&self, msg: &Message, reason: &str, retry: bool) {
        self.reply_error_with(msg, serde_json::json!({ "reason": reason, "retry": retry }));
    }

    async fn leave(&mut self, msg: Message) {
        if let Some(joined) = self.channels.remove(msg.topic.as_str()) {
            if joined.counted {
                self.node.release_user_join(&msg.topic, &self.identity.sub);
            }
            self.node.unsubscribe(&msg.topic, self.id).await;
            if joined.presence {
                self.untrack_presence(&msg.topic).await;
            }
            self.reply_ok(&msg, Payload::empty_object());
            self.send_close(&msg.topic, joined.join_ref.as_deref());
        }
    }

    async fn client_push(&mut self, msg: Message, rule: usize) {
        if msg.event.is_empty() || msg.event.len() > self.node.limits().max_event_bytes {
            return self.reply_error(&msg, "invalid event name");
        }
        let Some(rule) = self.node.policy().rule(rule) else {
            return self.reply_error(&msg, "unauthorized");
        };
        if !rule.may_push(&self.identity, &msg.event) {
            tracing::debug!(sub = %self.identity.sub, topic = %msg.topic, event = %msg.event, "push refused");
            return self.reply_error(&msg, "unauthorized");
        }
        let exclude = if rule.echo { None } else { Some(self.id) };
        let Message {
            join_ref,
            msg_ref,
            topic,
            event,
            payload,
        } = msg;
        match self.node.publish(&topic, &event, payload, exclude).await {
            Ok(_) => self.send_reply(
                join_ref.as_deref(),
                msg_ref.as_deref(),
                &topic,
                "ok",
                Payload::empty_object(),
            ),
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "publish failed");
                let reason = Payload::json(&serde_json::json!({"reason": e.to_string()}))
                    .unwrap_or_else(|_| Payload::empty_object());
                self.send_reply(
                    join_ref.as_deref(),
                    msg_ref.as_deref(),
                    &topic,
                    "error",
                    reason,
                )
            }
        }
    }

    fn reply_ok(&self, msg: &Message, response: Payload) {
        self.send_reply(
            msg.join_ref.as_deref(),
            msg.msg_ref.as_deref(),
            &msg.topic,
            "ok",
            response,
        );
    }

    fn reply_error(&self, msg: &Message, reason: &str) {
        self.reply_error_with(msg, serde_json::json!({ "reason": reason }));
    }

    fn reply_error_with(&self, msg: &Message, response: serde_json::Value) {
        let response = Payload::json(&response).unwrap_or_else(|_| Payload::empty_object());
        self.send_reply(
            msg.join_ref.as_deref(),
            msg.msg_ref.as_deref(),
            &msg.topic,
            "error",
            response,
        );
    }

    fn send_reply(
        &self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        status: &str,
        response: Payload,
    ) {
        match encode_reply(join_ref, msg_ref, topic, status, &response) {
            Ok(frame) => {
                self.outbox.push(frame);
            }
            Err(e) => tracing::debug!(error = %e, "reply not encodable"),
        }
    }

    fn send_close(&self, topic: &str, join_ref: Option<&str>) {
        if let Ok(frame) = encode_push(
            join_ref,
            join_ref,
            topic,
            events::CLOSE,
            &Payload::empty_object(),
        ) {
            self.outbox.push(frame);
        }
    }

    /// Leaves every channel and unregisters the connection.
    pub async fn close(mut self) {
        let channels: Vec<(Box<str>, Joined)> = self.channels.drain().collect();
        for (topic, joined) in channels {
            if joined.counted {
                self.node.release_user_join(&topic, &self.identity.sub);
            }
            self.node.unsubscribe(&topic, self.id).await;
            if joined.presence {
                self.untrack_presence(&topic).await;
            }
        }
        self.node.unregister(self.id);
        self.closed = true;
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Dropped without close() (e.g. the task was cancelled): clean up synchronously and
        // let the broker learn about emptied topics in the background.
        let node = self.node.clone();
        let mut emptied = Vec::new();
        let mut left = Vec::new();
        for (topic, joined) in self.channels.drain() {
            if joined.counted {
                node.release_user_join(&topic, &self.identity.sub);
            }
            if joined.presence {
                if let Some(meta) = node.presence_untrack(&topic, &self.identity.sub, self.id) {
                    left.push((
                        topic.clone(),
                        crate::presence::diff(None, Some((&self.identity.sub, meta))),
                    ));
                }
            }
            node.spawn_release(format!("chan:{topic}"));
            if node.hub().unsubscribe(&topic, self.id) {
                emptied.push(topic);
            }
        }
        node.unregister(self.id);
        if !emptied.is_empty() || !left.is_empty() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    for topic in emptied {
                        node.unsubscribe_remote(&topic).await;
                    }
                    for (topic, diff) in left {
                        if let Ok(payload) = Payload::json(&diff) {
                            let _ = node
                                .publish_unlogged(&topic, events::PRESENCE_DIFF, payload)
                                .await;
                        }
                    }
                });
            }
        }
    }
}
