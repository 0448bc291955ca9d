//! Phoenix's V1 JSON serializer (`vsn=1.0.0`, and what Phoenix assumes without `vsn`): JSON
//! objects `{"topic", "event", "payload", "ref", "join_ref"?}` from clients, and
//! `{"event", "payload", "ref", "topic"}` — Phoenix's key order, no `join_ref` — to them. V1
//! is JSON only: a client's binary frame is decoded as the JSON text it carries, as Phoenix
//! does, and the server always answers in text frames. Pure functions, like [`codec`](super::codec), which holds V2.

use super::codec::{opt_ref, push_json_str, push_opt_str, DecodeError, Frame, Message, Payload};
use base64::Engine;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Decodes a V1 frame (text, or binary carrying the same JSON) sent by a client: a JSON object
/// `{"topic", "event", "payload", "ref", "join_ref"?}` (`ref` and `join_ref` strings, numbers
/// or null).
pub fn decode_client_text_v1(text: &[u8]) -> Result<Message, DecodeError> {
    let map: std::collections::HashMap<&str, &RawValue> =
        serde_json::from_slice(text).map_err(|e| {
            DecodeError::new(format!(
                "invalid message: expected a JSON object {{\"topic\", \"event\", \"payload\", \"ref\"}} ({e})"
            ))
        })?;
    let string = |k: &str| {
        map.get(k)
            .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
    };
    let reference = |k: &str| map.get(k).and_then(|r| opt_ref(r).ok().flatten());
    let fail = |reason: String| DecodeError {
        reason,
        msg_ref: reference("ref"),
        join_ref: reference("join_ref"),
        topic: string("topic"),
    };
    let topic = string("topic").ok_or_else(|| fail("invalid topic: expected a string".into()))?;
    let event = string("event").ok_or_else(|| fail("invalid event: expected a string".into()))?;
    let payload = map
        .get("payload")
        .ok_or_else(|| fail("invalid message: no payload".into()))?;
    for k in ["ref", "join_ref"] {
        if map.get(k).is_some_and(|r| opt_ref(r).is_err()) {
            return Err(fail(format!("invalid {k}: expected a string or null")));
        }
    }
    Ok(Message {
        join_ref: reference("join_ref"),
        msg_ref: reference("ref"),
        topic,
        event,
        payload: Payload::Json((*payload).to_owned()),
    })
}

/// Encodes a V1 server message `{"event", "payload", "ref", "topic"}` — the keys in Phoenix's
/// order, and no `join_ref` (V1 clients do not know it). V1 is JSON only: a binary payload must
/// be turned into JSON first.
pub fn encode_v1(msg_ref: Option<&str>, topic: &str, event: &str, payload: &RawValue) -> Frame {
    let mut out = Vec::with_capacity(48 + topic.len() + event.len() + payload.get().len());
    out.extend_from_slice(b"{\"event\":");
    push_json_str(&mut out, event);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.get().as_bytes());
    out.extend_from_slice(b",\"ref\":");
    push_opt_str(&mut out, msg_ref);
    out.extend_from_slice(b",\"topic\":");
    push_json_str(&mut out, topic);
    out.push(b'}');
    Frame::Text(Bytes::from(out))
}

/// A payload as V1 (and LongPoll) can carry it: JSON as is, binary data as the JSON object
/// `{"binary": "<standard base64>"}`.
pub fn json_payload(payload: &Payload) -> Cow<'_, RawValue> {
    match payload {
        Payload::Json(raw) => Cow::Borrowed(raw),
        Payload::Binary(b) => {
            let text = format!(
                "{{\"binary\":\"{}\"}}",
                base64::engine::general_purpose::STANDARD.encode(b)
            );
            // Valid JSON by construction: base64 needs no escaping.
            Cow::Owned(RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned()))
        }
    }
}

/// Encodes a V1 push or broadcast with any payload (binary data as `{"binary": base64}`).
pub fn encode_message_v1(
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Frame {
    encode_v1(msg_ref, topic, event, &json_payload(payload))
}

/// Encodes a V1 client message `{"topic", "event", "payload", "ref", "join_ref"}` (used by the
/// Rust client and tests; phoenix.js 1.x sends this shape).
pub fn encode_client_v1(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &RawValue,
) -> Frame {
    let mut out = Vec::with_capacity(64 + topic.len() + event.len() + payload.get().len());
    out.extend_from_slice(b"{\"topic\":");
    push_json_str(&mut out, topic);
    out.extend_from_slice(b",\"event\":");
    push_json_str(&mut out, event);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.get().as_bytes());
    out.extend_from_slice(b",\"ref\":");
    push_opt_str(&mut out, msg_ref);
    out.extend_from_slice(b",\"join_ref\":");
    push_opt_str(&mut out, join_ref);
    out.push(b'}');
    Frame::Text(Bytes::from(out))
}

/// Encodes a V1 reply: `phx_reply` with `{"response", "status"}`.
pub fn encode_reply_v1(
    msg_ref: Option<&str>,
    topic: &str,
    status: &str,
    response: &RawValue,
) -> Frame {
    let mut body = Vec::with_capacity(32 + response.get().len());
    body.extend_from_slice(b"{\"response\":");
    body.extend_from_slice(response.get().as_bytes());
    body.extend_from_slice(b",\"status\":");
    push_json_str(&mut body, status);
    body.push(b'}');
    // Valid JSON by construction: a raw value and a string in an object.
    let body = String::from_utf8(body).unwrap_or_default();
    let body = RawValue::from_string(body).unwrap_or_else(|_| RawValue::NULL.to_owned());
    encode_v1(msg_ref, topic, super::events::REPLY, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: &Frame) -> &str {
        match f {
            Frame::Text(b) => std::str::from_utf8(b).unwrap(),
            Frame::Binary(_) => panic!("expected text"),
        }
    }

    fn raw_json(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    /// The expected frames are those of Phoenix's own V1 serializer tests
    /// (`test/phoenix/socket/v1_json_serializer_test.exs`).
    #[test]
    fn frames_are_byte_for_byte_phoenix_s() {
        // V1: message and fastlane, reply (no join_ref in either).
        assert_eq!(
            text(&encode_v1(None, "t", "e", &raw_json("\"m\""))),
            r#"{"event":"e","payload":"m","ref":null,"topic":"t"}"#
        );
        assert_eq!(
            text(&encode_reply_v1(Some("null"), "t", "ok", &raw_json("null"))),
            r#"{"event":"phx_reply","payload":{"response":null,"status":"ok"},"ref":"null","topic":"t"}"#
        );
    }

    #[test]
    fn v1_client_messages_decode_with_or_without_join_ref() {
        let m = decode_client_text_v1(
            br#"{"topic":"room:a","event":"phx_join","payload":{"x":1},"ref":"1","join_ref":"1"}"#,
        )
        .unwrap();
        assert_eq!(
            (
                m.topic.as_str(),
                m.event.as_str(),
                m.msg_ref.as_deref(),
                m.join_ref.as_deref()
            ),
            ("room:a", "phx_join", Some("1"), Some("1"))
        );
        assert_eq!(m.payload.as_json().unwrap().get(), r#"{"x":1}"#);
        let m = decode_client_text_v1(
            br#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":7}"#,
        )
        .unwrap();
        assert_eq!((m.msg_ref.as_deref(), m.join_ref), (Some("7"), None));
        // A V2 array is not V1; a broken object keeps what it can for the error reply.
        assert!(decode_client_text_v1(br#"[null,"1","t","e",{}]"#).is_err());
        let e = decode_client_text_v1(br#"{"topic":"room:a","ref":"5","payload":{}}"#).unwrap_err();
        assert_eq!(
            (e.topic.as_deref(), e.msg_ref.as_deref()),
            (Some("room:a"), Some("5"))
        );
        assert!(e.reason.contains("event"), "{}", e.reason);
    }

    #[test]
    fn client_messages_round_trip() {
        let f = encode_client_v1(
            Some("1"),
            Some("2"),
            "room:a",
            "msg",
            &raw_json(r#"{"a":1}"#),
        );
        let m = decode_client_text_v1(f.bytes()).unwrap();
        assert_eq!(
            (
                m.join_ref.as_deref(),
                m.msg_ref.as_deref(),
                m.topic.as_str(),
                m.event.as_str(),
                m.payload.as_json().unwrap().get()
            ),
            (Some("1"), Some("2"), "room:a", "msg", r#"{"a":1}"#)
        );
    }

    #[test]
    fn binary_payloads_become_json_in_v1() {
        let f = encode_message_v1(
            Some("3"),
            "t",
            "e",
            &Payload::Binary(Bytes::from_static(b"\x00\xff")),
        );
        assert_eq!(
            text(&f),
            r#"{"event":"e","payload":{"binary":"AP8="},"ref":"3","topic":"t"}"#
        );
    }
}
