//! Presence on a joined channel: tracking a connection when it joins a presence channel
//! (Phoenix's shape, keyed by `sub`), `presence_update` of its meta, Supabase's
//! `track`/`untrack` under a client-chosen key (each meta stamped with the tracker's verified
//! `sub`), and the `presence_state` / `presence_diff`
//! messages. The table itself, mirrored to the cluster, is [`crate::presence`].

use super::{Channels, Conn};
use crate::auth::Identity;
use crate::node::Node;
use crate::protocol::{events, Message, Payload};
use crate::supabase::{self, JoinConfig, PresenceOp};
use std::sync::Arc;

impl Channels {
    /// Supabase's `presence` track/untrack: the client's meta under the join's `presence.key`
    /// (a fresh UUID if it gave none). A re-track replaces the meta, broadcast as a leave of the
    /// old one and a join of the new one (with `phx_ref_prev`), as Phoenix does. Replied to.
    pub(super) async fn supabase_presence(
        &mut self,
        conn: &Conn<'_>,
        msg: Message,
        config: &JoinConfig,
    ) {
        let op = match supabase::presence_op(&msg.payload) {
            Ok(op) => op,
            Err(reason) => return conn.reply_error(&msg, reason),
        };
        let Some(channel) = self.joined.get_mut(msg.topic.as_str()) else {
            return conn.reply_error(&msg, "unmatched topic");
        };
        if !channel.rule.presence {
            return conn.reply_error(&msg, "presence is not enabled on this channel");
        }
        let presence = conn.node.presence();
        let (joined, left) = match op {
            PresenceOp::Untrack => {
                let left = channel.presence_key.take().and_then(|key| {
                    presence
                        .untrack(&msg.topic, &key, conn.id)
                        .map(|(meta, removal)| (key, meta, removal))
                });
                match left {
                    Some((key, meta, removal)) => {
                        // The leave is published once Redis no longer has the meta.
                        removal.done().await;
                        (None, Some((key, meta)))
                    }
                    None => (None, None),
                }
            }
            PresenceOp::Track(mut meta) => {
                if msg.payload.len() > crate::presence::MAX_META_BYTES {
                    return conn.reply_error(&msg, "presence meta too large (4096 bytes at most)");
                }
                // Server-owned: the tracker's verified user (null when anonymous), whatever
                // the client put there, so that others can trust who tracked the key.
                let user = conn
                    .identity
                    .user()
                    .map_or(serde_json::Value::Null, Into::into);
                meta.insert(supabase::PRESENCE_SUB.into(), user);
                // One key per channel: the join's, or the one made at the first track.
                let key: Arc<str> = match (&channel.presence_key, &config.presence_key) {
                    (Some(key), _) => key.clone(),
                    (None, Some(k)) => k.as_str().into(),
                    (None, None) => supabase::new_presence_key().into(),
                };
                channel.presence_key = Some(key.clone());
                let (old, new) = presence.replace(&msg.topic, &key, conn.id, meta).await;
                (Some((key.clone(), new)), old.map(|o| (key, o)))
            }
        };
        conn.reply_ok(&msg, Payload::empty_object());
        if left.is_none() && joined.is_none() {
            return;
        }
        let diff = crate::presence::diff(
            joined.as_ref().map(|(k, m)| (&**k, m.clone())),
            left.as_ref().map(|(k, m)| (&**k, m.clone())),
        );
        publish_presence_diff(conn.node, &msg.topic, diff).await;
    }

    /// `presence_update {…}`: merges the object into this connection's meta (server-owned keys
    /// excepted) under a new `phx_ref`, broadcast as a leave of the old meta and a join of the
    /// new one (with `phx_ref_prev`), as Phoenix does.
    pub async fn presence_update(&self, conn: &Conn<'_>, msg: Message) {
        let Some(key) = self
            .joined
            .get(msg.topic.as_str())
            .and_then(|c| c.presence_key.clone())
        else {
            return conn.reply_error(&msg, "not tracked in presence");
        };
        let patch = msg.payload.as_json().and_then(|raw| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get()).ok()
        });
        let Some(patch) = patch else {
            return conn.reply_error(&msg, "presence_update needs a JSON object");
        };
        if msg.payload.len() > crate::presence::MAX_META_BYTES {
            return conn.reply_error(&msg, "presence meta too large (4096 bytes at most)");
        }
        match conn
            .node
            .presence()
            .update(&msg.topic, &key, conn.id, &patch)
            .await
        {
            Ok((old, new)) => {
                conn.reply_ok(&msg, Payload::empty_object());
                let diff = crate::presence::diff(Some((&key, new)), Some((&key, old)));
                publish_presence_diff(conn.node, &msg.topic, diff).await;
            }
            Err(crate::presence::UpdateError::NotTracked) => {
                conn.reply_error(&msg, "not tracked in presence")
            }
            Err(crate::presence::UpdateError::TooLarge) => {
                conn.reply_error(&msg, "presence meta too large (4096 bytes at most, merged)")
            }
        }
    }
}

/// The public meta of a connection: when it came online, and the token's `name`/`info`.
pub(super) fn presence_meta(identity: &Identity) -> serde_json::Map<String, serde_json::Value> {
    let mut meta = serde_json::Map::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    meta.insert("online_at".into(), now_ms.into());
    if let Some(name) = &identity.name {
        meta.insert("name".into(), name.clone().into());
    }
    if let Some(info) = &identity.info {
        if let Ok(v) = serde_json::from_str(info.get()) {
            meta.insert("info".into(), v);
        }
    }
    meta
}

/// Tracks the connection under `sub` (its user, or the member its protocol chose) with the
/// meta `initial` (what the application's join hook added included; it cannot set
/// `phx_ref*`), sends it the topic's `presence_state`, and tells everyone.
pub(super) async fn track_presence(
    conn: &Conn<'_>,
    topic: &str,
    join_ref: Option<&str>,
    sub: &Arc<str>,
    mut initial: serde_json::Map<String, serde_json::Value>,
) {
    initial.retain(|k, _| !k.starts_with("phx_ref"));
    let meta = conn
        .node
        .presence()
        .track(topic, sub, conn.id, initial)
        .await;
    // A presence_leave of the member held for the reconnect grace, claimed: neither is sent.
    let rejoined = match conn.node.webhook_grace() {
        Some(g) if !conn.identity.anonymous => {
            let key = crate::broker::HoldKey::PresenceLeave {
                topic: topic.into(),
                member: sub.clone(),
            };
            g.claim(&key).await.is_some()
        }
        _ => false,
    };
    if !rejoined {
        conn.node.webhook_by(
            crate::webhooks::EventKind::PresenceJoin,
            conn.by(),
            || serde_json::json!({"sub": &**sub, "conn": conn.node.public_conn_id(conn.id), "topic": topic, "meta": &meta}),
        );
    }
    // Pusher's member_added, once per user cluster-wide (crate::pusher::webhooks).
    conn.node.member_in(topic, sub, conn.by()).await;
    push_presence_state(conn, topic, join_ref).await;
    let diff = crate::presence::diff(Some((sub, meta)), None);
    publish_presence_diff(conn.node, topic, diff).await;
}

pub(super) async fn push_presence_state(conn: &Conn<'_>, topic: &str, join_ref: Option<&str>) {
    // Before the read: merged diffs flushed from now on may hold leaves of metas this state
    // has (crate::presence_diffs).
    if let Some(diffs) = conn.node.hub().presence_diffs() {
        diffs.state_read(topic, conn.id);
    }
    // This node's own state is shared between joiners only where the client learns of its
    // own meta from the diff that follows (phoenix.js and Supabase's clients hold diffs that
    // come before the state); a Pusher client's `subscription_succeeded` must count itself
    // (and Pusher caps presence channels at 100 members).
    let diffs = match conn.pusher_socket {
        None => conn.node.hub().presence_diffs(),
        Some(_) => None,
    };
    let state = conn.node.presence().shared_state(topic, diffs).await;
    // And after it: the read may have waited for another (see `YOUNG_FOR`).
    if let Some(diffs) = conn.node.hub().presence_diffs() {
        diffs.state_read(topic, conn.id);
    }
    conn.push(
        join_ref,
        None,
        topic,
        events::PRESENCE_STATE,
        state.payload(),
    );
}

pub(super) async fn publish_presence_diff(node: &Node, topic: &str, diff: serde_json::Value) {
    let Ok(payload) = Payload::json(&diff) else {
        return;
    };
    if let Err(e) = node
        .publish_unlogged(topic, events::PRESENCE_DIFF, payload)
        .await
    {
        node.counters.publish_failed(topic, "presence diff", &e);
    }
}
