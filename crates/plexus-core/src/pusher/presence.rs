//! Pusher's presence channels on top of the core's presence: a `presence-` subscription's
//! `channel_data` becomes the core's presence member ([`parse_member`]: `user_id` is the key,
//! `user_info` the meta), and [`PusherConn::translate`] turns what the core sends about
//! presence (`presence_state`, `presence_diff`) into Pusher's frames, one member per user
//! whatever its connections, on every node.

use super::connection::{PusherConn, MAX_USER_INFO_BYTES};
use super::ChannelKind;
use crate::channel::Member;
use crate::outbox::Outgoing;
use crate::protocol::pusher as wire;
use crate::protocol::{events, Frame, Payload};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A presence channel's members as this connection was told them: `user_id` → the presence
/// refs (one per connection of that user, cluster-wide). A user is a member while it has one.
pub(super) type Members = HashMap<Box<str>, HashSet<String>>;

/// A presence channel's `channel_data`: `{"user_id": string or number, "user_info"?: any}`,
/// `user_info` at most [`MAX_USER_INFO_BYTES`].
pub(super) fn parse_member(channel_data: &str) -> Result<Member, &'static str> {
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
    /// nothing to a Pusher client. Broadcasts that exclude this connection's `socket_id` (an
    /// HTTP API publish with `socket_id`) are dropped. Costs nothing when the batch has
    /// neither.
    pub fn translate(&mut self, batch: &mut Vec<Outgoing>) {
        // A publication of Pusher's HTTP API with this connection's `socket_id` skips it.
        let excluded = |item: &Outgoing| {
            item.publication()
                .is_some_and(|p| p.excludes_socket(self.socket_id()))
        };
        if batch.iter().any(excluded) {
            batch.retain(|item| !excluded(item));
        }
        if !batch.iter().any(|i| is_presence(i) || is_server_close(i)) {
            return;
        }
        for item in std::mem::take(batch) {
            match &item {
                // The server closed a subscription (a rule or hook refused it after a token
                // or sign-in change): its state is given back and the client is told, as a
                // refused subscription.
                Outgoing::Push(p) if is_server_close(&item) => {
                    if self.forget(&p.topic) {
                        let reason = payload_object(&p.payload)
                            .get("reason")
                            .and_then(Value::as_str)
                            .unwrap_or("closed by the server")
                            .to_owned();
                        batch.push(raw(wire::subscription_error(
                            &p.topic,
                            "AuthError",
                            &reason,
                            403,
                        )));
                    }
                }
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

/// A `phx_close` with a reason: the server closed the channel (a duplicate join's or a
/// leave's `phx_close` has none).
fn is_server_close(item: &Outgoing) -> bool {
    matches!(item, Outgoing::Push(p) if p.event == events::CLOSE
        && p.payload.as_json().is_some_and(|raw| raw.get().contains("\"reason\"")))
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
