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
//! [`join`] authorises and performs a join; [`history`] replays what a recovering join missed; [`hooks`] asks the application's join
//! and push hooks; [`push`] checks, publishes and answers client pushes; [`presence`] holds
//! what presence does
//! on a channel (tracking, `presence_update`, Supabase's `track`/`untrack`, `presence_state`
//! and diffs).

mod history;
mod hooks;
mod join;
mod joined;
mod presence;
mod push;

use crate::auth::Identity;
use crate::broker::{HoldKey, Removal};
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

use join::AppMeta;
pub use join::{JoinOutcome, JoinReply, JoinRequest, Member};

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
    /// The presence leave to broadcast, once the cluster-wide removal is done.
    presence_diff: Option<(serde_json::Value, Removal)>,
}

impl Departure {
    pub async fn finish(self, node: &Node) {
        if self.emptied {
            node.unsubscribe_remote(&self.topic).await;
        }
        if let Some((diff, removal)) = self.presence_diff {
            removal.done().await;
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
            let (meta, removal) = conn.node.presence().untrack(&topic, key, conn.id)?;
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
            Some((crate::presence::diff(None, Some((key, meta))), removal))
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
