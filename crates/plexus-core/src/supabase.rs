//! Supabase Realtime compatibility: what Supabase's clients (`@supabase/realtime-js`, the Python
//! `realtime`) put inside the Phoenix protocol, read and written here as plain data.
//!
//! With `[supabase] enabled = true`, a topic `realtime:<name>` is a *Supabase channel*: its
//! rule is the one for `<name>` (see [`Policy`](crate::policy::Policy)); its join carries a
//! `config` ([`JoinConfig`]: `broadcast.self`, `broadcast.ack`, `presence.key`, …) and is
//! answered `{"postgres_changes": []}`; clients broadcast with event `broadcast` and payload
//! `{"type": "broadcast", "event", "payload"}` (or realtime-js's binary kind 3, decoded to the
//! same in the codec), relayed as it came; presence is `track`/`untrack` of a client-chosen meta
//! under `presence.key` ([`PresenceOp`]) instead of being automatic, the meta stamped with the
//! tracker's verified `sub` ([`PRESENCE_SUB`]). Postgres changes are not
//! supported: a join that asks for them is refused. `channel/` applies these rules.

use crate::protocol::{EncodeError, Payload};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The topic prefix of Supabase channels.
pub const TOPIC_PREFIX: &str = "realtime:";

/// The meta key a `track` is stamped with: the tracking connection's verified `sub` (`null`
/// for an anonymous one). Server-owned: what the client put there is overwritten.
pub const PRESENCE_SUB: &str = "sub";

/// Longest `presence.key` (it is stored in presence and sent in every diff).
pub const MAX_PRESENCE_KEY_BYTES: usize = 256;

/// What a Supabase channel's join asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinConfig {
    /// `broadcast.self`: the sender receives its own broadcasts.
    pub broadcast_self: bool,
    /// `broadcast.ack`: broadcasts are acknowledged with a reply (else none is sent).
    pub broadcast_ack: bool,
    /// `presence.key`: the key `track` files this connection under (a fresh UUID if empty).
    pub presence_key: Option<String>,
    /// Postgres changes asked for (not supported: the join is refused if any).
    pub postgres_changes: usize,
    /// `access_token` of the join: a newer token for the connection.
    pub access_token: Option<String>,
}

/// Supabase's booleans may come as strings (`"true"`, `"False"`).
fn flexible_bool(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

impl JoinConfig {
    /// Reads the join payload `{"config": {...}, "access_token"?}`; what is missing or of
    /// another type takes its default, as in Supabase's server.
    pub fn parse(params: &Payload) -> Self {
        let Some(Value::Object(p)) = params
            .as_json()
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        else {
            return JoinConfig::default();
        };
        let config = p.get("config");
        let at = |path: &[&str]| {
            path.iter()
                .try_fold(config?, |v, k| v.as_object().and_then(|o| o.get(*k)))
        };
        JoinConfig {
            broadcast_self: flexible_bool(at(&["broadcast", "self"])),
            broadcast_ack: flexible_bool(at(&["broadcast", "ack"])),
            presence_key: match at(&["presence", "key"]) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            },
            postgres_changes: at(&["postgres_changes"])
                .and_then(Value::as_array)
                .map_or(0, |a| a.iter().filter(|v| !v.is_null()).count()),
            access_token: match p.get("access_token") {
                Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
                _ => None,
            },
        }
    }
}

/// The user event of a client broadcast `{"type": "broadcast", "event": E, "payload": P}`.
pub fn broadcast_event(payload: &Payload) -> Option<String> {
    #[derive(Deserialize)]
    struct Envelope {
        event: String,
    }
    let raw = payload.as_json()?;
    serde_json::from_str::<Envelope>(raw.get())
        .ok()
        .map(|e| e.event)
}

/// A backend's broadcast of `event` on a Supabase channel, in the envelope Supabase's clients
/// listen for with `on('broadcast', {event}, …)`: `{"type": "broadcast", "event", "payload"}`.
pub fn envelope(event: &str, payload: &Payload) -> Result<Payload, EncodeError> {
    let inner = crate::protocol::json_payload(payload);
    let mut out = String::with_capacity(48 + event.len() + inner.get().len());
    out.push_str("{\"type\":\"broadcast\",\"event\":");
    out.push_str(&serde_json::to_string(event).map_err(|e| EncodeError::Json(e.to_string()))?);
    out.push_str(",\"payload\":");
    out.push_str(inner.get());
    out.push('}');
    serde_json::value::RawValue::from_string(out)
        .map(Payload::Json)
        .map_err(|e| EncodeError::Json(e.to_string()))
}

/// A `presence` message of a Supabase channel.
#[derive(Debug, PartialEq)]
pub enum PresenceOp {
    /// Track (or re-track) this connection with the meta.
    Track(Map<String, Value>),
    Untrack,
}

/// Reads `{"type"?: "presence", "event": "track" | "untrack", "payload"?: {...}}` (the event is
/// case-insensitive; realtime-py sends no `type`). The error is the reason for the reply.
pub fn presence_op(payload: &Payload) -> Result<PresenceOp, &'static str> {
    let Some(Value::Object(mut p)) = payload
        .as_json()
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
    else {
        return Err("presence needs {\"event\": \"track\" | \"untrack\", \"payload\"}");
    };
    let event = p
        .get("event")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase);
    match event.as_deref() {
        Some("track") => match p.remove("payload") {
            None | Some(Value::Null) => Ok(PresenceOp::Track(Map::new())),
            Some(Value::Object(mut meta)) => {
                // The server owns these (Phoenix's refs).
                meta.remove("phx_ref");
                meta.remove("phx_ref_prev");
                Ok(PresenceOp::Track(meta))
            }
            Some(_) => Err("Presence track payload must be a map"),
        },
        Some("untrack") => Ok(PresenceOp::Untrack),
        _ => Err("presence event must be \"track\" or \"untrack\""),
    }
}

/// The payload of a `system` notice about channel `name` (Supabase's shape: every key present).
pub fn system(status: &str, message: &str, name: &str) -> Value {
    serde_json::json!({
        "extension": "system",
        "status": status,
        "message": message,
        "channel": name,
    })
}

/// A presence key for a track without one: a random UUID, as Supabase generates.
pub fn new_presence_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Payload {
        Payload::Json(serde_json::value::RawValue::from_string(s.into()).unwrap())
    }

    /// The join payloads realtime-js 2.119.1 and realtime 2.34.1 (Python) send.
    #[test]
    fn join_configs_of_both_clients() {
        let js = JoinConfig::parse(&json(
            r#"{"config":{"broadcast":{"self":true,"ack":true},"presence":{"key":"userA","enabled":false},"postgres_changes":[],"private":false}}"#,
        ));
        assert_eq!(
            js,
            JoinConfig {
                broadcast_self: true,
                broadcast_ack: true,
                presence_key: Some("userA".into()),
                postgres_changes: 0,
                access_token: None,
            }
        );
        let py = JoinConfig::parse(&json(
            r#"{"config":{"broadcast":{"self":"True","ack":"false"},"presence":{"key":""},"private":false,"postgres_changes":[{"event":"INSERT","schema":"public"}]},"access_token":"T"}"#,
        ));
        assert!(py.broadcast_self && !py.broadcast_ack);
        assert_eq!(py.presence_key, None);
        assert_eq!(py.postgres_changes, 1);
        assert_eq!(py.access_token.as_deref(), Some("T"));
        assert_eq!(JoinConfig::parse(&json("[1]")), JoinConfig::default());
    }

    #[test]
    fn broadcasts_and_presence_messages() {
        let p = json(r#"{"type":"broadcast","event":"cursor","payload":{"x":1}}"#);
        assert_eq!(broadcast_event(&p).as_deref(), Some("cursor"));
        assert_eq!(broadcast_event(&json(r#"{"payload":1}"#)), None);
        let e = envelope("msg", &json(r#"{"n":1}"#)).unwrap();
        assert_eq!(
            e.as_json().unwrap().get(),
            r#"{"type":"broadcast","event":"msg","payload":{"n":1}}"#
        );
        let track = presence_op(&json(
            r#"{"type":"presence","event":"TRACK","payload":{"online_at":"t","phx_ref":"forged"}}"#,
        ))
        .unwrap();
        let PresenceOp::Track(meta) = track else {
            panic!("expected track")
        };
        assert_eq!(Value::Object(meta), serde_json::json!({"online_at": "t"}));
        assert_eq!(
            presence_op(&json(r#"{"event":"untrack","payload":{}}"#)),
            Ok(PresenceOp::Untrack)
        );
        assert!(presence_op(&json(r#"{"event":"track","payload":[1]}"#)).is_err());
        assert!(presence_op(&json(r#"{"event":"dance"}"#)).is_err());
        let key = new_presence_key();
        assert_eq!(key.len(), 36);
        assert_eq!(&key[14..15], "4");
    }
}
