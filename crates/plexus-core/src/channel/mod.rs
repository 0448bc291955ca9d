//! The channels one connection has joined: join, leave, client pushes, history recovery and
//! presence — what Phoenix's `Phoenix.Channel` does for a topic, with the rules of the node's
//! [`Policy`](crate::policy::Policy) instead of application code.
//!
//! [`Channels`] is owned by the connection's `Socket` (in `socket.rs`), which routes
//! each message here. Everything said back goes through the connection's outbox as
//! [`Outgoing`] messages, in order: a join's reply, then the history it replays, then its
//! `presence_state`.
//!
//! Leaving is one path whatever the cause (`phx_leave`, a duplicate join, the connection's end,
//! a cancelled task): [`Channel::depart`] undoes the local state at once and returns a
//! [`Departure`] with what still involves the broker (unsubscribing an emptied topic,
//! broadcasting the presence leave), which the caller awaits or runs in the background.
//!
//! [`history`] replays what a recovering join missed; [`hooks`] asks the application's join
//! and push hooks; [`push`] checks, publishes and answers client pushes; [`presence`] holds
//! what presence does
//! on a channel (tracking, `presence_update`, Supabase's `track`/`untrack`, `presence_state`
//! and diffs).

mod history;
mod hooks;
mod joined;
mod presence;
mod push;

use crate::auth::Identity;
use crate::broker::HoldKey;
use crate::node::Node;
use crate::outbox::{Outbox, Outgoing, Push, Reply};
use crate::policy::ChannelRule;
use crate::protocol::{events, Message, Payload};
use crate::quota::JoinQuota;
use crate::supabase::{self, JoinConfig};
use crate::webhooks::grace::{Emit, Held, HoldGroup};
use crate::webhooks::EventKind;
use crate::ConnId;
use hooks::hook_params;
use presence::{publish_presence_diff, push_presence_state, track_presence};
use serde::Serialize;
use std::sync::Arc;

/// What a channel knows of its connection, and how it answers it.
pub(crate) struct Conn<'a> {
    pub node: &'a Arc<Node>,
    pub id: ConnId,
    pub identity: &'a Identity,
    pub outbox: &'a Arc<Outbox>,
    /// The client's address (for the application's hooks).
    pub addr: Option<std::net::IpAddr>,
    /// A Pusher connection's `socket_id` (its `client_event` webhooks name it).
    pub pusher_socket: Option<&'a str>,
}

impl Conn<'_> {
    fn caller(&self) -> crate::hooks::Caller<'_> {
        crate::hooks::Caller {
            identity: self.identity,
            conn: Some(self.id),
            addr: self.addr,
        }
    }

    /// This connection as the cause of webhook events (charged to its share of the queue).
    fn by(&self) -> crate::webhooks::Cause<'_> {
        crate::webhooks::Cause {
            identity: self.identity,
            addr: self.addr,
        }
    }

    fn cause(&self) -> Option<crate::webhooks::Cause<'_>> {
        Some(self.by())
    }

    /// The fields every webhook event of this connection on `topic` carries.
    fn event(&self, topic: &str) -> serde_json::Value {
        serde_json::json!({
            "sub": &*self.identity.sub,
            "conn": self.node.public_conn_id(self.id),
            "topic": topic,
        })
    }

    pub fn reply(
        &self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        status: &'static str,
        response: Payload,
    ) {
        self.outbox.push(Outgoing::Reply(Box::new(Reply {
            join_ref: join_ref.map(Into::into),
            msg_ref: msg_ref.map(Into::into),
            topic: topic.into(),
            status,
            response,
        })));
    }

    pub fn reply_ok(&self, msg: &Message, response: Payload) {
        self.reply(
            msg.join_ref.as_deref(),
            msg.msg_ref.as_deref(),
            &msg.topic,
            "ok",
            response,
        );
    }

    pub fn reply_error(&self, msg: &Message, reason: &str) {
        self.reply_error_with(msg, &serde_json::json!({ "reason": reason }));
    }

    pub fn reply_error_with(&self, msg: &Message, response: &impl Serialize) {
        self.reply(
            msg.join_ref.as_deref(),
            msg.msg_ref.as_deref(),
            &msg.topic,
            "error",
            json_payload(response),
        );
    }

    /// A server push to this connection alone.
    pub fn push(
        &self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        event: &'static str,
        payload: Payload,
    ) {
        self.outbox.push(Outgoing::Push(Box::new(Push {
            join_ref: join_ref.map(Into::into),
            msg_ref: msg_ref.map(Into::into),
            topic: topic.into(),
            event,
            payload,
        })));
    }

    /// `phx_close` of the channel joined as `join_ref` (Phoenix puts the join_ref in `ref` too).
    fn send_close(&self, topic: &str, join_ref: Option<&str>) {
        self.push(
            join_ref,
            join_ref,
            topic,
            events::CLOSE,
            Payload::empty_object(),
        );
    }
}

/// A JSON payload of a value that always serialises (maps and strings built here).
pub(crate) fn json_payload(value: &impl Serialize) -> Payload {
    Payload::json(value).unwrap_or_else(|_| Payload::empty_object())
}

/// One joined topic.
pub(crate) struct Channel {
    join_ref: Option<Box<str>>,
    rule: Arc<ChannelRule>,
    /// Counted against the rule's `max_per_user`; given back when the channel is dropped.
    /// Boxed: most channels have none.
    _quota: Option<Box<JoinQuota>>,
    /// The key this connection is tracked under in presence, if it is: its `sub` on presence
    /// channels (from the first join: a duplicate join keeps it); on Supabase channels the
    /// `presence.key` of the last `track`.
    presence_key: Option<Arc<str>>,
    /// Set on Supabase channels: what the join's `config` asked for. Boxed: most have none.
    supabase: Option<Box<JoinConfig>>,
    /// The params the join hook was asked with, kept on an anonymous connection only: if it
    /// signs in, the join hook is asked again with the user ([`Channels::signin_refusals`]).
    signin_params: Option<Box<serde_json::Value>>,
    /// Joined under the protocol's rule for topics no `[[channels]]` rule matches (Pusher's
    /// open channels, [`JoinRequest::unmatched`]): kept as long as no rule matches it.
    unmatched: bool,
}

/// The local half of a departure is done; this is the rest, involving the broker.
#[must_use = "a departure must be finished (awaited or spawned)"]
pub(crate) struct Departure {
    topic: Box<str>,
    /// The topic lost its last local subscriber.
    emptied: bool,
    /// The presence leave to broadcast.
    presence_diff: Option<serde_json::Value>,
}

impl Departure {
    pub async fn finish(self, node: &Node) {
        if self.emptied {
            node.unsubscribe_remote(&self.topic).await;
        }
        if let Some(diff) = self.presence_diff {
            publish_presence_diff(node, &self.topic, diff).await;
        }
    }
}

impl Channel {
    /// Leaves the topic locally: join quota, hub subscription, presence entry.
    /// `hold`: the teardown's group of events held for the reconnect grace, to which the
    /// `presence_leave` is added instead of being sent (and a `channel_vacated` is held).
    pub fn depart(
        self,
        conn: &Conn<'_>,
        topic: Box<str>,
        hold: Option<&mut HoldGroup>,
    ) -> Departure {
        let emptied =
            conn.node
                .unsubscribe_local_held(&topic, conn.id, conn.cause(), hold.is_some());
        let presence_diff = self.presence_key.as_ref().and_then(|key| {
            let meta = conn.node.presence().untrack(&topic, key, conn.id)?;
            // Supabase clients track themselves: their presence is theirs, not reported.
            if self.supabase.is_none() {
                conn.node.member_out(&topic, key, conn.cause());
                let fields = || {
                    let mut e = conn.event(&topic);
                    e["key"] = (**key).into();
                    e["meta"] = meta.clone();
                    e
                };
                match hold {
                    Some(group)
                        if conn
                            .node
                            .webhook_grace()
                            .is_some_and(|g| g.holds(EventKind::PresenceLeave)) =>
                    {
                        group.events.push(Held {
                            key: HoldKey::PresenceLeave {
                                topic: (*topic).into(),
                                member: key.clone(),
                            },
                            value: conn.node.public_conn_id(conn.id),
                            emit: Emit::Plexus(
                                EventKind::PresenceLeave,
                                Some(conn.by().key()),
                                fields(),
                            ),
                        });
                    }
                    _ => conn
                        .node
                        .webhook_by(EventKind::PresenceLeave, conn.by(), fields),
                }
            }
            Some(crate::presence::diff(None, Some((key, meta))))
        });
        conn.node
            .webhook_by(EventKind::Leave, conn.by(), || conn.event(&topic));
        Departure {
            topic,
            emptied,
            presence_diff,
        }
    }
}

/// The reply to a successful join: `{}`, or the history position
/// `{"epoch": …, "offset": N}` with `"recovered": bool` when the join asked to recover.
/// Supabase channels add `"postgres_changes": []` (none are supported).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JoinReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_changes: Option<[(); 0]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// What the application's join hook put in its `reply` (never the fields above).
    #[serde(flatten)]
    pub app: serde_json::Map<String, serde_json::Value>,
}

/// Presence meta the application's join hook adds.
type AppMeta = serde_json::Map<String, serde_json::Value>;

/// How a join ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined(JoinReply),
    /// `retry: false` tells the application that rejoining cannot succeed.
    Refused {
        reason: String,
        retry: bool,
    },
}

impl JoinOutcome {
    fn refused(reason: impl Into<String>, retry: bool) -> Self {
        JoinOutcome::Refused {
            reason: reason.into(),
            retry,
        }
    }

    /// The reply's status and response, as Phoenix clients read them.
    pub fn reply(&self) -> (&'static str, Payload) {
        match self {
            JoinOutcome::Joined(reply) => ("ok", json_payload(reply)),
            JoinOutcome::Refused { reason, retry } => (
                "error",
                json_payload(&serde_json::json!({ "reason": reason, "retry": retry })),
            ),
        }
    }
}

/// A join as a transport asks for it.
pub struct JoinRequest<'a> {
    pub topic: &'a str,
    pub join_ref: Option<&'a str>,
    /// The ref of the client's `phx_join` (may be null).
    pub msg_ref: Option<&'a str>,
    /// Queue the reply for the client (Phoenix transports); else it is only returned (a
    /// transport like SSE renders it itself).
    pub reply: bool,
    /// The join params (`{"recover": {"epoch", "offset"}}` asks for missed history).
    pub params: &'a Payload,
    /// The rule of a topic that no configured rule matches, for connections whose protocol
    /// has its own authority (Pusher: the app's signature); `None`: such topics are refused.
    pub unmatched: Option<&'a Arc<ChannelRule>>,
    /// Track the connection in presence as this member, whatever the rule says (Pusher's
    /// presence channels: the `user_id` and `user_info` the app signed); `None`: the rule
    /// decides, keyed by `sub`.
    pub member: Option<Member>,
}

/// A presence member chosen by the connection's protocol: its key and initial meta.
#[derive(Clone, Debug)]
pub struct Member {
    pub key: Arc<str>,
    pub meta: serde_json::Map<String, serde_json::Value>,
}

/// The connection's joined channels, by topic.
#[derive(Default)]
pub(crate) struct Channels {
    joined: joined::Joined<Channel>,
}

impl Channels {
    /// Whether `topic` is joined, and if so whether it is tracked in presence.
    pub fn tracks(&self, topic: &str) -> Option<bool> {
        self.joined.get(topic).map(|c| c.presence_key.is_some())
    }

    pub fn len(&self) -> usize {
        self.joined.len()
    }

    /// Whether `topic` is a joined Supabase channel.
    pub fn is_supabase(&self, topic: &str) -> bool {
        self.joined.get(topic).is_some_and(|c| c.supabase.is_some())
    }

    /// Closes a Supabase channel as Supabase does when it ends one: a `system` notice
    /// `{"extension": "system", "status": "error", "message", "channel"}`, then `phx_close`.
    pub fn close_with_notice(
        &mut self,
        conn: &Conn<'_>,
        topic: &str,
        message: &str,
    ) -> Option<Departure> {
        let (topic, channel) = self.joined.remove_entry(topic)?;
        let name = conn.node.policy().supabase_name(&topic).unwrap_or(&topic);
        tracing::info!(conn = conn.id, sub = %conn.identity.sub, topic = %topic, reason = message, "channel closed");
        conn.push(
            channel.join_ref.as_deref(),
            None,
            &topic,
            events::SYSTEM,
            json_payload(&supabase::system("error", message, name)),
        );
        conn.send_close(&topic, channel.join_ref.as_deref());
        Some(channel.depart(conn, topic, None))
    }

    /// Authorises and performs a join (see the module doc for what the client receives).
    pub async fn join(&mut self, conn: &Conn<'_>, req: JoinRequest<'_>) -> JoinOutcome {
        let started = std::time::Instant::now();
        let outcome = self.join_inner(conn, &req).await;
        crate::metrics::join(started.elapsed());
        // Successful joins replied in order, before their replay and presence_state.
        if let JoinOutcome::Refused { reason, .. } = &outcome {
            conn.node
                .counters
                .joins_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::refused("join", reason);
            tracing::info!(conn = conn.id, sub = %conn.identity.sub, topic = req.topic, reason = %reason, "join refused");
            self.send_join_reply(conn, &req, &outcome);
        }
        outcome
    }

    fn send_join_reply(&self, conn: &Conn<'_>, req: &JoinRequest<'_>, outcome: &JoinOutcome) {
        if req.reply {
            let (status, response) = outcome.reply();
            conn.reply(req.join_ref, req.msg_ref, req.topic, status, response);
        }
    }

    async fn join_inner(&mut self, conn: &Conn<'_>, req: &JoinRequest<'_>) -> JoinOutcome {
        let node = conn.node;
        let sub = &conn.identity.sub;
        let topic = req.topic;
        if let Err(invalid) = node.limits().check_topic(topic) {
            return JoinOutcome::refused(invalid.to_string(), false);
        }
        // A user's server-to-user topic (Pusher's `sendToUser`) is that signed-in user's alone,
        // whatever the protocol and the rules.
        if let Some(owner) = topic.strip_prefix(crate::protocol::pusher::SERVER_TO_USER_PREFIX) {
            if conn.identity.user() != Some(owner) {
                return JoinOutcome::refused(
                    "a #server-to-user- topic is only for that user, signed in".to_owned(),
                    false,
                );
            }
        }
        let mut unmatched = false;
        let rule = match (
            node.policy().authorize_join(conn.identity, topic),
            req.unmatched,
        ) {
            (Ok(rule), _) => rule,
            (Err(_), Some(open)) if !node.policy().governs(conn.identity, topic) => {
                unmatched = true;
                open.clone()
            }
            (Err(denied), _) => {
                return JoinOutcome::refused(denied.0, false);
            }
        };
        let supabase = match node.policy().supabase_name(topic) {
            Some(_) => {
                let config = JoinConfig::parse(req.params);
                if config
                    .presence_key
                    .as_ref()
                    .is_some_and(|k| k.len() > supabase::MAX_PRESENCE_KEY_BYTES)
                {
                    return JoinOutcome::refused(
                        format!(
                            "presence.key is too long ({} bytes at most)",
                            supabase::MAX_PRESENCE_KEY_BYTES
                        ),
                        false,
                    );
                }
                if config.postgres_changes > 0 {
                    return JoinOutcome::refused(
                        "postgres_changes are not supported by Plexus (broadcast and presence are)",
                        false,
                    );
                }
                Some(Box::new(config))
            }
            None => None,
        };
        // The caps before the application is asked: a join refused here costs it nothing. The
        // quota claimed is given back if the hook refuses or this future is dropped.
        let duplicate = self.joined.contains_key(topic);
        let quota = match rule.max_per_user {
            _ if duplicate => None,
            _ if self.joined.len() >= node.limits().max_channels_per_connection => {
                return JoinOutcome::refused("too many channels", false);
            }
            Some(max) => match node.joins().claim(topic, sub, max).await {
                Some(q) => Some(q),
                None => {
                    return JoinOutcome::refused(
                        "already joined the maximum number of times (max_per_user)",
                        true,
                    );
                }
            },
            None => None,
        };
        let (app_reply, app_meta) = match self.ask_join_hook(conn, req, &rule).await {
            Ok(answer) => answer,
            Err(refused) => return refused,
        };
        let signin_params = (conn.identity.anonymous && Self::asks_application(conn, &rule))
            .then(|| Box::new(hook_params(req.params)));
        if let Some(old) = self.joined.get_mut(topic) {
            // Duplicate join: close the old channel, keep the subscription, its quota and its
            // presence entry; the new join may ask to recover like any join.
            let old_ref = std::mem::replace(&mut old.join_ref, req.join_ref.map(Into::into));
            old.rule = rule.clone();
            old.signin_params = signin_params;
            if supabase.is_some() {
                old.supabase = supabase;
            }
            let send_state =
                old.presence_key.is_some() || (old.supabase.is_some() && rule.presence);
            let is_supabase = old.supabase.is_some();
            conn.send_close(topic, old_ref.as_deref());
            let outcome = self
                .reply_with_history(conn, req, &rule, false, is_supabase, &app_reply)
                .await;
            if send_state {
                push_presence_state(conn, topic, req.join_ref).await;
            }
            return outcome;
        }
        // Recorded before any further await: if this future is dropped from here on, the
        // socket's teardown departs the channel and gives everything back.
        self.joined.insert(
            topic.into(),
            Channel {
                join_ref: req.join_ref.map(Into::into),
                rule: rule.clone(),
                _quota: quota.map(Box::new),
                // Supabase clients track themselves (`presence` track).
                presence_key: match &req.member {
                    Some(m) => Some(m.key.clone()),
                    None => (rule.presence && supabase.is_none()).then(|| sub.clone()),
                },
                supabase,
                signin_params,
                unmatched,
            },
        );
        let is_supabase = self.joined.get(topic).is_some_and(|c| c.supabase.is_some());
        let outcome = self
            .reply_with_history(conn, req, &rule, true, is_supabase, &app_reply)
            .await;
        conn.node
            .webhook_by(EventKind::Join, conn.by(), || conn.event(topic));
        if let Some(member) = &req.member {
            let mut meta = member.meta.clone();
            meta.extend(app_meta.into_iter().flatten());
            track_presence(conn, topic, req.join_ref, &member.key, meta).await;
        } else if rule.presence && is_supabase {
            push_presence_state(conn, topic, req.join_ref).await;
        } else if rule.presence {
            let mut meta = presence::presence_meta(conn.identity);
            meta.extend(app_meta.into_iter().flatten());
            track_presence(conn, topic, req.join_ref, &conn.identity.sub, meta).await;
        }
        outcome
    }

    /// `phx_leave`: replies ok, then `phx_close`.
    pub async fn leave(&mut self, conn: &Conn<'_>, msg: &Message) {
        let Some((topic, channel)) = self.joined.remove_entry(msg.topic.as_str()) else {
            return;
        };
        let join_ref = channel.join_ref.clone();
        channel.depart(conn, topic, None).finish(conn.node).await;
        conn.reply_ok(msg, Payload::empty_object());
        conn.send_close(&msg.topic, join_ref.as_deref());
    }

    /// After a token refresh: the joined channels are authorised again by the rules; those
    /// the new identity may no longer join are departed (see [`Channels::close_refused`]).
    pub fn recheck(&mut self, conn: &Conn<'_>) -> Vec<Departure> {
        let refused = self.rule_refusals(conn);
        self.close_refused(conn, refused)
    }

    /// The joined topics the rules refuse to `conn`'s identity, with the reason.
    fn rule_refusals(&self, conn: &Conn<'_>) -> Vec<(Box<str>, String)> {
        self.joined
            .iter()
            .filter(|(topic, channel)| {
                // Still no rule for it: the protocol's own rule still holds.
                !channel.unmatched || conn.node.policy().governs(conn.identity, topic)
            })
            .filter_map(|(topic, _)| {
                let denied = conn
                    .node
                    .policy()
                    .authorize_join(conn.identity, topic)
                    .err()?;
                let reason = format!(
                    "the new token may no longer join this channel: {}",
                    denied.0
                );
                Some((topic.clone(), reason))
            })
            .collect()
    }

    /// Departs the `refused` channels, telling the client why — `phx_close {"reason"}`, or on
    /// a Supabase channel Supabase's `system` error notice, then `phx_close`.
    pub fn close_refused(
        &mut self,
        conn: &Conn<'_>,
        refused: Vec<(Box<str>, String)>,
    ) -> Vec<Departure> {
        let mut departures = Vec::new();
        for (topic, reason) in refused {
            if self.is_supabase(&topic) {
                departures.extend(self.close_with_notice(conn, &topic, &reason));
            } else if let Some(channel) = self.joined.remove(&topic) {
                tracing::info!(conn = conn.id, sub = %conn.identity.sub, topic = %topic, reason, "channel closed");
                let join_ref = channel.join_ref.as_deref();
                let payload = json_payload(&serde_json::json!({ "reason": reason }));
                conn.push(join_ref, join_ref, &topic, events::CLOSE, payload);
                departures.push(channel.depart(conn, topic, None));
            }
        }
        departures
    }

    /// The joined topics.
    pub fn topics(&self) -> Vec<Box<str>> {
        self.joined.keys().cloned().collect()
    }

    /// Departs every channel (the connection ends); see [`Departure`].
    /// Departs every channel (a connection's teardown); `hold`: see [`Channel::depart`].
    pub fn depart_all(
        &mut self,
        conn: &Conn<'_>,
        mut hold: Option<&mut HoldGroup>,
    ) -> Vec<Departure> {
        self.joined
            .drain()
            .map(|(topic, channel)| channel.depart(conn, topic, hold.as_deref_mut()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
