//! Client pushes on a joined channel: the rule's checks (event name, `push_events`/roles),
//! the push hook, the `client_event` webhook, then the broadcast to the topic (not to the
//! sender unless `echo`; with the sender's presence key for protocols that show it) and the
//! reply. Supabase channels carry their event inside a `broadcast` envelope and answer per
//! their `broadcast.ack` / `broadcast.self` settings.

use super::hooks::{payload_value, push_hook};
use super::{json_payload, Channels, Conn};
use crate::hooks::answer::Broadcast;
use crate::protocol::{events, Message};
use crate::supabase::{self, JoinConfig};
use crate::webhooks::EventKind;

impl Channels {
    /// A client push on a joined channel: checked against the channel's rule, broadcast to the
    /// other subscribers (or to all, with `echo`), and replied to. On a Supabase channel,
    /// `broadcast` is checked by the event inside its envelope, reaches the sender only with
    /// `broadcast.self` and is acknowledged only with `broadcast.ack`; `presence` tracks.
    pub async fn push(&mut self, conn: &Conn<'_>, msg: Message) {
        let Some(channel) = self.joined.get(msg.topic.as_str()) else {
            return conn.reply_error(&msg, "unmatched topic");
        };
        let supabase = channel.supabase.as_deref().cloned();
        if let Some(config) = &supabase {
            match msg.event.as_str() {
                events::PRESENCE => return self.supabase_presence(conn, msg, config).await,
                events::BROADCAST => {
                    let Some(user_event) = supabase::broadcast_event(&msg.payload) else {
                        return conn.reply_error(
                            &msg,
                            "broadcast needs {\"type\": \"broadcast\", \"event\", \"payload\"}",
                        );
                    };
                    return self.relay(conn, msg, &user_event, Some(config)).await;
                }
                // Supabase's clients read any other event as the server's own (`system`):
                // clients broadcast with `broadcast` only.
                _ => {
                    return conn.reply_error(
                        &msg,
                        "Supabase channels relay only broadcast (and presence) events",
                    )
                }
            }
        }
        let event = msg.event.clone();
        self.relay(conn, msg, &event, None).await
    }

    /// Checks a client push by `event` (the rule's event, which a Supabase broadcast carries
    /// inside), publishes it and replies.
    async fn relay(
        &self,
        conn: &Conn<'_>,
        msg: Message,
        event: &str,
        supabase: Option<&JoinConfig>,
    ) {
        let Some(channel) = self.joined.get(msg.topic.as_str()) else {
            return conn.reply_error(&msg, "unmatched topic");
        };
        if let Err(invalid) = conn.node.limits().check_event(event) {
            return conn.reply_error(&msg, &invalid.to_string());
        }
        if !channel.rule.may_push(conn.identity, event) {
            tracing::debug!(conn = conn.id, sub = %conn.identity.sub, topic = %msg.topic, event, "push refused");
            return conn.reply_error(&msg, crate::policy::UNAUTHORIZED);
        }
        let rule = channel.rule.clone();
        let echo = rule.echo || supabase.is_some_and(|c| c.broadcast_self);
        let exclude = if echo { None } else { Some(conn.id) };
        let ack = supabase.is_none_or(|c| c.broadcast_ack);
        let (app_reply, broadcast) = match push_hook(conn, &msg, event, &rule, supabase).await {
            Ok(answer) => answer,
            Err(reason) => return conn.reply_error(&msg, &reason),
        };
        if rule.webhook_client_event(event) {
            conn.node.webhook_by(EventKind::ClientEvent, conn.by(), || {
                let mut e = conn.event(&msg.topic);
                e["event"] = event.into();
                e["payload"] = payload_value(&msg.payload);
                e
            });
        }
        conn.node.pusher_client_event(
            conn.by(),
            conn.pusher_socket,
            &msg.topic,
            event,
            &msg.payload,
            channel.presence_key.as_deref(),
        );
        let Message {
            join_ref,
            msg_ref,
            topic,
            event,
            payload,
        } = msg;
        let (event, payload) = match broadcast {
            Broadcast::Original => (event, payload),
            Broadcast::Replace { event, payload } => (event, json_payload(&payload)),
            Broadcast::Nothing if !ack => return,
            Broadcast::Nothing => {
                let response = json_payload(&app_reply.unwrap_or_default());
                let (j, m) = (join_ref.as_deref(), msg_ref.as_deref());
                return conn.reply(j, m, &topic, "ok", response);
            }
        };
        // Receivers may be told which member sent it (Pusher's `user_id` on presence channels).
        let sender = crate::publication::Sender {
            presence_key: channel.presence_key.clone(),
            exclude_socket: None,
        };
        let published = conn
            .node
            .publish_client(&topic, &event, payload, exclude, sender)
            .await;
        let (status, response) = match published {
            Ok(_) if !ack => return,
            Ok(_) => ("ok", json_payload(&app_reply.unwrap_or_default())),
            Err(e) => {
                conn.node.counters.publish_failed(&topic, "client push", &e);
                (
                    "error",
                    json_payload(&serde_json::json!({"reason": e.to_string()})),
                )
            }
        };
        conn.reply(
            join_ref.as_deref(),
            msg_ref.as_deref(),
            &topic,
            status,
            response,
        );
    }
}
