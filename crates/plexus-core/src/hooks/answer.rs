//! What an application's hook answers, read strictly: `{"allow": true|false, "reason",
//! "reply", "meta", "broadcast"}`. Anything else (not JSON, no boolean `allow`, a field of the
//! wrong shape, a meta larger than presence allows) is a broken hook, answered to the client
//! as `hook unavailable`, never passed on.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Longest `reason` passed to a client (longer ones are cut).
pub const MAX_REASON_CHARS: usize = 200;

/// What a push hook asks to broadcast.
#[derive(Clone, Debug, PartialEq)]
pub enum Broadcast {
    /// The client's push, as sent (no `broadcast` in the answer).
    Original,
    /// Nothing (`"broadcast": false`): the application handled it.
    Nothing,
    /// This event and payload instead (`"broadcast": {"event", "payload"}`).
    Replace { event: String, payload: Value },
}

/// An application's decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub allow: bool,
    /// Why it refused (`unauthorized` when it gave no reason).
    pub reason: String,
    /// The join's or push's reply payload.
    pub reply: Option<Map<String, Value>>,
    /// Presence meta added on join.
    pub meta: Option<Map<String, Value>>,
    pub broadcast: Broadcast,
}

impl Decision {
    /// A refusal with `reason`, decided without the application's answer.
    pub fn refusal(reason: &str) -> Self {
        Decision {
            allow: false,
            reason: reason.to_owned(),
            reply: None,
            meta: None,
            broadcast: Broadcast::Original,
        }
    }
}

#[derive(Deserialize)]
struct Raw {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    reply: Option<Map<String, Value>>,
    #[serde(default)]
    meta: Option<Map<String, Value>>,
    #[serde(default)]
    broadcast: Option<Value>,
}

#[derive(Deserialize)]
struct RawBroadcast {
    event: String,
    #[serde(default)]
    payload: Option<Value>,
}

/// Reads an answer body; `Err` says what is wrong with it (for the log).
pub fn parse(body: &[u8]) -> Result<Decision, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    if !value.is_object() {
        return Err("answer is not a JSON object".into());
    }
    let raw: Raw = serde_json::from_value(value)
        .map_err(|e| format!("answer is not {{\"allow\": bool, …}}: {e}"))?;
    if raw.meta.as_ref().is_some_and(|m| {
        serde_json::to_vec(m).map_or(true, |v| v.len() > crate::presence::MAX_META_BYTES)
    }) {
        return Err(format!(
            "meta is larger than {} bytes",
            crate::presence::MAX_META_BYTES
        ));
    }
    let broadcast = match raw.broadcast {
        None | Some(Value::Null) => Broadcast::Original,
        Some(Value::Bool(false)) => Broadcast::Nothing,
        Some(v @ Value::Object(_)) => {
            let b: RawBroadcast = serde_json::from_value(v)
                .map_err(|e| format!("broadcast must be {{\"event\", \"payload\"}}: {e}"))?;
            Broadcast::Replace {
                event: b.event,
                payload: b
                    .payload
                    .unwrap_or_else(|| Value::Object(Default::default())),
            }
        }
        Some(_) => return Err("broadcast must be an object or false".into()),
    };
    let reason = raw
        .reason
        .filter(|r| !r.is_empty())
        .map(|r| r.chars().take(MAX_REASON_CHARS).collect())
        .unwrap_or_else(|| crate::policy::UNAUTHORIZED.to_owned());
    Ok(Decision {
        allow: raw.allow,
        reason,
        reply: raw.reply,
        meta: raw.meta,
        broadcast,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_shapes() {
        let d = parse(br#"{"allow": true, "reply": {"a": 1}, "meta": {"m": 2}}"#).unwrap();
        assert!(d.allow);
        assert_eq!(d.reply.unwrap()["a"], 1);
        assert_eq!(d.broadcast, Broadcast::Original);
        let d = parse(br#"{"allow": false}"#).unwrap();
        assert_eq!(d.reason, "unauthorized");
        let d = parse(br#"{"allow": true, "broadcast": false}"#).unwrap();
        assert_eq!(d.broadcast, Broadcast::Nothing);
        let d = parse(br#"{"allow": true, "broadcast": {"event": "e"}}"#).unwrap();
        assert!(matches!(d.broadcast, Broadcast::Replace { .. }));
        for bad in [
            &b"not json"[..],
            br#"{"allow": "yes"}"#,
            br#"{}"#,
            br#"[true]"#,
            br#"{"allow": true, "reply": 3}"#,
            br#"{"allow": true, "broadcast": 1}"#,
            br#"{"allow": true, "broadcast": {"payload": 1}}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let big = format!(
            r#"{{"allow": true, "meta": {{"x": "{}"}}}}"#,
            "a".repeat(5000)
        );
        assert!(parse(big.as_bytes()).is_err());
        let long = format!(r#"{{"allow": false, "reason": "{}"}}"#, "r".repeat(500));
        assert_eq!(
            parse(long.as_bytes()).unwrap().reason.len(),
            MAX_REASON_CHARS
        );
    }
}
