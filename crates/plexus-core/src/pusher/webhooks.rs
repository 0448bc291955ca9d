//! Pusher-format webhooks (`PLEXUS_PUSHER_WEBHOOK_URL`, `[pusher] webhook_url`): a second
//! sink over the node's webhook events, sent by the same machinery as Plexus's own
//! ([`crate::webhooks`]: bounded queue, per-user shares, batches, splits, retries) in Pusher's
//! format ([`Format::Pusher`](crate::webhooks::Format::Pusher): `{"time_ms", "events": [{"name", "channel", …}]}`, signed
//! with the app's key and secret).
//!
//! Only topics whose names are Pusher channel names go to this sink. Its events, with the
//! [`EventKind`] that selects them:
//!
//! | Pusher's name | kind | fields | when |
//! |---|---|---|---|
//! | `channel_occupied` | `ChannelOccupied` | `channel` | the cluster's first subscriber joined (the node whose count went 0 → 1 reports it, as for Plexus's webhooks) |
//! | `channel_vacated` | `ChannelVacated` | `channel` | its last one left, or was on a lost node |
//! | `member_added` | `PresenceJoin` | `channel`, `user_id` | the first connection of that user in a `presence-` channel, cluster-wide |
//! | `member_removed` | `PresenceLeave` | `channel`, `user_id` | after its last one left (or was on a lost node) |
//! | `client_event` | `ClientEvent` | `channel`, `event`, `data`, `socket_id`, `user_id` (presence channels) | a Pusher connection's `client-*` event was accepted |
//! | `cache_miss` | `CacheMiss` | `channel` | a subscriber of a cache channel found no last event |
//!
//! Members are counted once per (channel, user) and connection: in Redis with a cluster
//! ([`crate::broker::CounterKey::Members`], counted atomically like subscribers, so that
//! exactly one node sees a user's count go 0 → 1 and 1 → 0, and the node that reaps a lost
//! node reports the members that left with it), in [`LocalMembers`] on a node alone (one
//! entry per present (channel, user), bounded by the presences themselves).

use super::ChannelKind;
use crate::node::Node;
use crate::protocol::pusher::{valid_channel_name, CLIENT_EVENT_PREFIX};
use crate::protocol::Payload;
use crate::webhooks::{Cause, EventKind, EventSet, Webhooks};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The Pusher events and the kinds that select them, in Pusher's names.
pub const EVENTS: [(&str, EventKind); 6] = [
    ("channel_occupied", EventKind::ChannelOccupied),
    ("channel_vacated", EventKind::ChannelVacated),
    ("member_added", EventKind::PresenceJoin),
    ("member_removed", EventKind::PresenceLeave),
    ("client_event", EventKind::ClientEvent),
    ("cache_miss", EventKind::CacheMiss),
];

/// Every Pusher event: the default of `[pusher] webhook_events`.
pub fn all_events() -> EventSet {
    EventSet::of(&EVENTS.map(|(_, k)| k))
}

/// The kind of the Pusher event named `name`.
pub fn parse_event(name: &str) -> Option<EventKind> {
    EVENTS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

fn name_of(kind: EventKind) -> &'static str {
    EVENTS
        .iter()
        .find(|(_, k)| *k == kind)
        .map_or(kind.name(), |(n, _)| n)
}

/// The members of presence channels counted on a node alone: (channel, user_id) → its
/// connections on the channel.
pub(crate) type LocalMembers = Mutex<HashMap<(Box<str>, Box<str>), u32>>;

/// Queues the Pusher event of `kind` on `channel` (a Pusher channel name, else nothing) with
/// `fields`, charged to `share`.
pub(crate) fn emit(
    w: &Webhooks,
    kind: EventKind,
    channel: &str,
    share: Option<Arc<str>>,
    fields: impl FnOnce(&mut Map<String, Value>),
) {
    if !w.enabled(kind) || !valid_channel_name(channel) {
        return;
    }
    let mut event = Map::new();
    event.insert("name".into(), name_of(kind).into());
    event.insert("channel".into(), channel.into());
    fields(&mut event);
    w.emit_as(kind, share, Value::Object(event));
}

/// Whether `channel`'s members are counted for `member_added` / `member_removed`.
fn is_presence(channel: &str) -> bool {
    ChannelKind::of(channel).is_presence() && valid_channel_name(channel)
}

impl Node {
    /// The Pusher-format webhook sink, if configured.
    pub fn pusher_webhooks(&self) -> Option<&Arc<Webhooks>> {
        self.pusher_webhooks.as_ref()
    }

    /// Queues a Pusher event (see [`emit`]) if the sink is on.
    pub(crate) fn pusher_webhook(
        &self,
        kind: EventKind,
        channel: &str,
        by: Option<Cause<'_>>,
        fields: impl FnOnce(&mut Map<String, Value>),
    ) {
        if let Some(w) = &self.pusher_webhooks {
            emit(w, kind, channel, by.map(|b| b.key()), fields);
        }
    }

    /// Whether the Pusher sink wants channel_occupied or channel_vacated.
    pub(crate) fn pusher_wants_occupancy(&self) -> bool {
        self.pusher_webhooks.as_ref().is_some_and(|w| {
            w.enabled(EventKind::ChannelOccupied) || w.enabled(EventKind::ChannelVacated)
        })
    }

    fn counts_members(&self, channel: &str) -> bool {
        is_presence(channel)
            && self.pusher_webhooks.as_ref().is_some_and(|w| {
                w.enabled(EventKind::PresenceJoin) || w.enabled(EventKind::PresenceLeave)
            })
    }

    /// A connection of member `user_id` joined the presence channel `channel`:
    /// `member_added` if it is the user's first in the cluster.
    pub(crate) async fn member_in(&self, channel: &str, user_id: &str, by: Cause<'_>) {
        if !self.counts_members(channel) {
            return;
        }
        let first = if self.broker.counts_subscribers() {
            match self.broker.count_member(channel, user_id, true).await {
                Ok(Some((before, after))) => before == 0 && after > 0,
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(channel, error = %e, "member count not updated: member_added may be missed");
                    false
                }
            }
        } else {
            let mut members = self.members.lock();
            let n = members.entry((channel.into(), user_id.into())).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.pusher_webhook(EventKind::PresenceJoin, channel, Some(by), |e| {
                e.insert("user_id".into(), user_id.into());
            });
        }
    }

    /// A connection of member `user_id` left `channel` (synchronous cleanup: counted in the
    /// background with a cluster): `member_removed` after the user's last.
    pub(crate) fn member_out(&self, channel: &str, user_id: &str, by: Option<Cause<'_>>) {
        if !self.counts_members(channel) {
            return;
        }
        if !self.broker.counts_subscribers() {
            let last = {
                let mut members = self.members.lock();
                let key = (Box::<str>::from(channel), Box::<str>::from(user_id));
                match members.get_mut(&key) {
                    Some(n) if *n > 1 => {
                        *n -= 1;
                        false
                    }
                    Some(_) => {
                        members.remove(&key);
                        true
                    }
                    None => false,
                }
            };
            if last {
                self.pusher_webhook(EventKind::PresenceLeave, channel, by, |e| {
                    e.insert("user_id".into(), user_id.into());
                });
            }
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let broker = self.broker.clone();
        let webhooks = self.pusher_webhooks.clone();
        let share = by.map(|b| b.key());
        let (channel, user_id): (Arc<str>, Arc<str>) = (channel.into(), user_id.into());
        rt.spawn(async move {
            match broker.count_member(&channel, &user_id, false).await {
                Ok(Some((before, 0))) if before > 0 => {
                    if let Some(w) = webhooks {
                        emit(&w, EventKind::PresenceLeave, &channel, share, |e| {
                            e.insert("user_id".into(), (*user_id).into());
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(channel = %channel, error = %e, "member count not updated: member_removed may be missed");
                }
            }
        });
    }

    /// The last connections of `user_id` on `channel` were on a lost node (this node reaped
    /// them, no other did).
    pub(crate) fn member_reaped(&self, channel: &str, user_id: &str) {
        self.pusher_webhook(EventKind::PresenceLeave, channel, None, |e| {
            e.insert("user_id".into(), user_id.into());
        });
    }

    /// An accepted client event `event` with `payload` on `channel`, by the connection `by`
    /// (reported when it is Pusher's connection `socket_id`, whoever it signed in as),
    /// tracked as `member` on a presence channel.
    pub(crate) fn pusher_client_event(
        &self,
        by: Cause<'_>,
        socket_id: Option<&str>,
        channel: &str,
        event: &str,
        payload: &Payload,
        member: Option<&str>,
    ) {
        let Some(socket_id) = socket_id else {
            return;
        };
        if !event.starts_with(CLIENT_EVENT_PREFIX) {
            return;
        }
        self.pusher_webhook(EventKind::ClientEvent, channel, Some(by), |e| {
            e.insert("event".into(), event.into());
            e.insert("data".into(), data_string(payload).into());
            e.insert("socket_id".into(), socket_id.into());
            if let (Some(user_id), true) = (member, is_presence(channel)) {
                e.insert("user_id".into(), user_id.into());
            }
        });
    }
}

/// A payload as Pusher's `data`: a JSON string as its content, any other JSON as its text.
fn data_string(payload: &Payload) -> String {
    let raw = crate::protocol::v1::json_payload(payload);
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::String(s)) => s,
        _ => raw.get().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_names_and_kinds() {
        for (name, kind) in EVENTS {
            assert_eq!(parse_event(name), Some(kind));
            assert_eq!(name_of(kind), name);
            assert!(all_events().contains(kind));
        }
        assert_eq!(parse_event("presence_join"), None);
        assert!(!all_events().contains(EventKind::Connect));
    }

    #[test]
    fn data_is_a_string() {
        let json =
            |s: &str| Payload::Json(serde_json::value::RawValue::from_string(s.into()).unwrap());
        assert_eq!(data_string(&json(r#"{"a":1}"#)), r#"{"a":1}"#);
        assert_eq!(data_string(&json(r#""text""#)), "text");
    }
}
