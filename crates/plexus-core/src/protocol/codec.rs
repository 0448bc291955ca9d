//! Encoding and decoding of Phoenix V2 frames.
//!
//! Text frames are JSON arrays `[join_ref, ref, topic, event, payload]`.
//! Binary frames start with a kind byte:
//!
//! | kind | direction | layout |
//! |------|-----------|--------|
//! | 0 push | client → server | `0, join_ref_len, ref_len, topic_len, event_len, join_ref, ref, topic, event, payload` |
//! | 0 push | server → client | `0, join_ref_len, topic_len, event_len, join_ref, topic, event, payload` |
//! | 1 reply | server → client | `1, join_ref_len, ref_len, topic_len, status_len, join_ref, ref, topic, status, payload` |
//! | 2 broadcast | server → client | `2, topic_len, event_len, topic, event, payload` |
//!
//! Every field length is one byte, so binary frames carry names of at most 255 bytes.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;
use std::fmt;

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;
/// Supabase realtime-js's user broadcast, client → server.
const KIND_USER_BROADCAST: u8 = 3;

/// A message payload: a JSON value (kept as raw text, never re-serialised) or binary data.
#[derive(Clone, Debug)]
pub enum Payload {
    Json(Box<RawValue>),
    Binary(Bytes),
}

impl Payload {
    /// The empty JSON object `{}`.
    pub fn empty_object() -> Self {
        Payload::Json(raw("{}"))
    }

    /// A JSON payload from any serialisable value.
    pub fn json<T: serde::Serialize>(value: &T) -> Result<Self, EncodeError> {
        serde_json::value::to_raw_value(value)
            .map(Payload::Json)
            .map_err(|e| EncodeError::Json(e.to_string()))
    }

    /// Size of the payload in bytes on the wire.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(raw) => raw.get().len(),
            Payload::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload as a JSON value, or `None` for binary payloads.
    pub fn as_json(&self) -> Option<&RawValue> {
        match self {
            Payload::Json(raw) => Some(raw),
            Payload::Binary(_) => None,
        }
    }
}

fn raw(s: &str) -> Box<RawValue> {
    // Only called with literals that are valid JSON.
    RawValue::from_string(s.to_owned()).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// One decoded message, in either direction.
#[derive(Clone, Debug)]
pub struct Message {
    pub join_ref: Option<String>,
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// An encoded frame ready to be written: the same bytes can be shared by many receivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Text(Bytes),
    Binary(Bytes),
}

impl Frame {
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> &Bytes {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b,
        }
    }
}

/// Why an incoming frame could not be decoded. `msg_ref`/`topic` carry whatever could be
/// recovered, so that the error can still be answered with a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub reason: String,
    pub msg_ref: Option<String>,
    pub join_ref: Option<String>,
    pub topic: Option<String>,
}

impl DecodeError {
    pub(super) fn new(reason: impl Into<String>) -> Self {
        DecodeError {
            reason: reason.into(),
            msg_ref: None,
            join_ref: None,
            topic: None,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} is longer than 255 bytes and cannot be sent in a binary frame")]
    FieldTooLong(&'static str),
    #[error("payload is not valid JSON: {0}")]
    Json(String),
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes a JSON text frame sent by a client: `[join_ref, ref, topic, event, payload]`.
pub fn decode_client_text(text: &[u8]) -> Result<Message, DecodeError> {
    decode_text(text)
}

/// Decodes a JSON text frame sent by a server (same layout as the client's).
pub fn decode_server_text(text: &[u8]) -> Result<Message, DecodeError> {
    decode_text(text)
}

fn decode_text(text: &[u8]) -> Result<Message, DecodeError> {
    let parts: Vec<&RawValue> = serde_json::from_slice(text).map_err(|e| {
        DecodeError::new(format!(
            "invalid message: expected a JSON array [join_ref, ref, topic, event, payload] ({e})"
        ))
    })?;
    // Each of these is decoded once, for the message or (what can be) for the error reply.
    let join_ref = parts.first().map(|r| opt_ref(r));
    let msg_ref = parts.get(1).map(|r| opt_ref(r));
    let topic = parts
        .get(2)
        .and_then(|r| serde_json::from_str::<String>(r.get()).ok());
    let mut event = None;
    let why = if parts.len() != 5 {
        Some(format!(
            "invalid message: expected 5 elements [join_ref, ref, topic, event, payload], got {}",
            parts.len()
        ))
    } else if !matches!(join_ref, Some(Ok(_))) {
        Some("invalid join_ref: expected a string or null".into())
    } else if !matches!(msg_ref, Some(Ok(_))) {
        Some("invalid ref: expected a string or null".into())
    } else if topic.is_none() {
        Some("invalid topic: expected a string".into())
    } else {
        event = serde_json::from_str::<String>(parts[3].get()).ok();
        event
            .is_none()
            .then(|| "invalid event: expected a string".into())
    };
    match (why, join_ref, msg_ref, topic, event, parts.get(4)) {
        (None, Some(Ok(join_ref)), Some(Ok(msg_ref)), Some(topic), Some(event), Some(payload)) => {
            Ok(Message {
                join_ref,
                msg_ref,
                topic,
                event,
                payload: Payload::Json((*payload).to_owned()),
            })
        }
        (why, join_ref, msg_ref, topic, _, _) => Err(DecodeError {
            reason: why.unwrap_or_else(|| "invalid message".into()),
            msg_ref: msg_ref.and_then(Result::ok).flatten(),
            join_ref: join_ref.and_then(Result::ok).flatten(),
            topic,
        }),
    }
}

/// A ref is a string or null; numbers are accepted and turned into their decimal text.
pub(super) fn opt_ref(raw: &RawValue) -> Result<Option<String>, ()> {
    let s = raw.get();
    if s == "null" {
        return Ok(None);
    }
    if let Ok(v) = serde_json::from_str::<String>(s) {
        return Ok(Some(v));
    }
    if let Ok(n) = serde_json::from_str::<serde_json::Number>(s) {
        return Ok(Some(n.to_string()));
    }
    Err(())
}

/// Decodes a binary frame sent by a client: kind 0 (push), or kind 3 (the "user broadcast"
/// of Supabase's realtime-js, see [`decode_user_broadcast`]).
pub fn decode_client_binary(data: &Bytes) -> Result<Message, DecodeError> {
    let kind = *data
        .first()
        .ok_or_else(|| DecodeError::new("invalid binary message: empty frame"))?;
    if kind == KIND_USER_BROADCAST {
        return decode_user_broadcast(data);
    }
    if kind != KIND_PUSH {
        return Err(DecodeError::new(format!(
            "invalid binary message: clients may only send kind 0 (push) or 3 (user broadcast), got kind {kind}"
        )));
    }
    let mut r = Reader::new(data, 5)?;
    let sizes = [data[1], data[2], data[3], data[4]];
    let join_ref = r.string(sizes[0], "join_ref")?;
    let msg_ref = r.string(sizes[1], "ref")?;
    let topic = r.string(sizes[2], "topic")?;
    let event = r.string(sizes[3], "event")?;
    Ok(Message {
        join_ref: non_empty(join_ref),
        msg_ref: non_empty(msg_ref),
        topic,
        event,
        payload: Payload::Binary(r.rest()),
    })
}

/// Decodes kind 3, Supabase realtime-js's "user broadcast" push:
/// `3, len(join_ref), len(ref), len(topic), len(event), len(metadata), encoding, join_ref, ref,
/// topic, event, metadata, payload` (encoding 1: JSON text; 0: raw bytes). It becomes what the
/// same client sends as text: event `broadcast` with `{"type": "broadcast", "event", "payload"}`
/// (metadata is not relayed, as in Supabase). Raw-bytes payloads have no JSON form: refused.
pub fn decode_user_broadcast(data: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader::new(data, 7)?;
    let sizes = [data[1], data[2], data[3], data[4], data[5]];
    let encoding = data[6];
    let join_ref = r.string(sizes[0], "join_ref")?;
    let msg_ref = r.string(sizes[1], "ref")?;
    let topic = r.string(sizes[2], "topic")?;
    let user_event = r.string(sizes[3], "event")?;
    let _metadata = r.string(sizes[4], "metadata")?;
    let fail = |reason: &str| DecodeError {
        reason: reason.to_owned(),
        msg_ref: non_empty(msg_ref.clone()),
        join_ref: non_empty(join_ref.clone()),
        topic: Some(topic.clone()),
    };
    if encoding == 0 {
        return Err(fail(
            "invalid binary message: binary (ArrayBuffer) broadcast payloads are not supported, send JSON",
        ));
    }
    let payload = r.rest();
    let payload = std::str::from_utf8(&payload)
        .ok()
        .and_then(|s| RawValue::from_string(s.to_owned()).ok())
        .ok_or_else(|| fail("invalid binary message: the broadcast payload is not JSON"))?;
    let mut envelope = Vec::with_capacity(48 + user_event.len() + payload.get().len());
    envelope.extend_from_slice(b"{\"type\":\"broadcast\",\"event\":");
    push_json_str(&mut envelope, &user_event);
    envelope.extend_from_slice(b",\"payload\":");
    envelope.extend_from_slice(payload.get().as_bytes());
    envelope.push(b'}');
    let envelope = String::from_utf8(envelope)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
        .ok_or_else(|| fail("invalid binary message: the broadcast payload is not JSON"))?;
    Ok(Message {
        join_ref: non_empty(join_ref),
        msg_ref: non_empty(msg_ref),
        topic,
        event: super::events::BROADCAST.to_owned(),
        payload: Payload::Json(envelope),
    })
}

/// Decodes a binary frame sent by a server (push, reply or broadcast).
pub fn decode_server_binary(data: &Bytes) -> Result<ServerBinary, DecodeError> {
    let kind = *data
        .first()
        .ok_or_else(|| DecodeError::new("invalid binary message: empty frame"))?;
    match kind {
        KIND_PUSH => {
            let mut r = Reader::new(data, 4)?;
            let join_ref = r.string(data[1], "join_ref")?;
            let topic = r.string(data[2], "topic")?;
            let event = r.string(data[3], "event")?;
            Ok(ServerBinary::Push {
                join_ref: non_empty(join_ref),
                topic,
                event,
                payload: r.rest(),
            })
        }
        KIND_REPLY => {
            let mut r = Reader::new(data, 5)?;
            let join_ref = r.string(data[1], "join_ref")?;
            let msg_ref = r.string(data[2], "ref")?;
            let topic = r.string(data[3], "topic")?;
            let status = r.string(data[4], "status")?;
            Ok(ServerBinary::Reply {
                join_ref: non_empty(join_ref),
                msg_ref: non_empty(msg_ref),
                topic,
                status,
                payload: r.rest(),
            })
        }
        KIND_BROADCAST => {
            let mut r = Reader::new(data, 3)?;
            let topic = r.string(data[1], "topic")?;
            let event = r.string(data[2], "event")?;
            Ok(ServerBinary::Broadcast {
                topic,
                event,
                payload: r.rest(),
            })
        }
        other => Err(DecodeError::new(format!(
            "invalid binary message: unknown kind {other}"
        ))),
    }
}

/// A decoded server binary frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerBinary {
    Push {
        join_ref: Option<String>,
        topic: String,
        event: String,
        payload: Bytes,
    },
    Reply {
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: String,
        status: String,
        payload: Bytes,
    },
    Broadcast {
        topic: String,
        event: String,
        payload: Bytes,
    },
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a Bytes, header: usize) -> Result<Self, DecodeError> {
        if data.len() < header {
            return Err(DecodeError::new(format!(
                "invalid binary message: {} bytes is shorter than the {header}-byte header",
                data.len()
            )));
        }
        Ok(Reader { data, pos: header })
    }

    fn string(&mut self, len: u8, field: &str) -> Result<String, DecodeError> {
        let end = self.pos + len as usize;
        let slice = self.data.get(self.pos..end).ok_or_else(|| {
            DecodeError::new(format!(
                "invalid binary message: {field} runs past the end of the frame"
            ))
        })?;
        let s = std::str::from_utf8(slice).map_err(|_| {
            DecodeError::new(format!("invalid binary message: {field} is not UTF-8"))
        })?;
        self.pos = end;
        Ok(s.to_owned())
    }

    fn rest(self) -> Bytes {
        self.data.slice(self.pos..)
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

pub(super) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

pub(super) fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// A text frame `[join_ref, msg_ref, topic, event, body]`. `body_len` is what `body` writes
/// (give or take a few bytes): the buffer is sized for the whole frame up front, so a frame
/// neither keeps the spare capacity a growing `Vec` doubles into (`Bytes` keeps the whole
/// allocation) nor leaves the smaller buffers it grew through behind in the heap, next to
/// retained history (issue 19 #12).
fn text_frame(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    body_len: usize,
    body: impl FnOnce(&mut Vec<u8>),
) -> Frame {
    let refs = join_ref.map_or(0, str::len) + msg_ref.map_or(0, str::len);
    let mut out = Vec::with_capacity(64 + refs + topic.len() + event.len() + body_len);
    out.push(b'[');
    push_opt_str(&mut out, join_ref);
    out.push(b',');
    push_opt_str(&mut out, msg_ref);
    out.push(b',');
    push_json_str(&mut out, topic);
    out.push(b',');
    push_json_str(&mut out, event);
    out.push(b',');
    body(&mut out);
    out.push(b']');
    Frame::Text(Bytes::from(out))
}

fn check_len(s: &str, field: &'static str) -> Result<u8, EncodeError> {
    u8::try_from(s.len()).map_err(|_| EncodeError::FieldTooLong(field))
}

/// A binary frame: the kind byte, one length byte per field, the fields, then the payload.
fn binary_frame(
    kind: u8,
    fields: &[(&str, &'static str)],
    data: &[u8],
) -> Result<Frame, EncodeError> {
    let names: usize = fields.iter().map(|(s, _)| s.len()).sum();
    let mut out = BytesMut::with_capacity(1 + fields.len() + names + data.len());
    out.put_u8(kind);
    for (s, name) in fields {
        out.put_u8(check_len(s, name)?);
    }
    for (s, _) in fields {
        out.put_slice(s.as_bytes());
    }
    out.put_slice(data);
    Ok(Frame::Binary(out.freeze()))
}

/// Encodes a reply to the client message `msg_ref`: `phx_reply {response, status}`.
/// A binary response is sent as a binary reply frame (kind 1).
pub fn encode_reply(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    status: &str,
    response: &Payload,
) -> Result<Frame, EncodeError> {
    match response {
        Payload::Json(raw) => Ok(text_frame(
            join_ref,
            msg_ref,
            topic,
            super::events::REPLY,
            raw.get().len() + status.len() + 24,
            // Key order as Phoenix's serializer writes it (its maps are sorted by key).
            |out| {
                out.extend_from_slice(b"{\"response\":");
                out.extend_from_slice(raw.get().as_bytes());
                out.extend_from_slice(b",\"status\":");
                push_json_str(out, status);
                out.push(b'}');
            },
        )),
        Payload::Binary(data) => binary_frame(
            KIND_REPLY,
            &[
                (join_ref.unwrap_or(""), "join_ref"),
                (msg_ref.unwrap_or(""), "ref"),
                (topic, "topic"),
                (status, "status"),
            ],
            data,
        ),
    }
}

/// Encodes a server push to one joined channel (`phx_close`, `presence_state`, …).
pub fn encode_push(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Frame, EncodeError> {
    match payload {
        Payload::Json(raw) => Ok(text_frame(
            join_ref,
            msg_ref,
            topic,
            event,
            raw.get().len(),
            |out| out.extend_from_slice(raw.get().as_bytes()),
        )),
        Payload::Binary(data) => binary_frame(
            KIND_PUSH,
            &[
                (join_ref.unwrap_or(""), "join_ref"),
                (topic, "topic"),
                (event, "event"),
            ],
            data,
        ),
    }
}

/// Encodes a broadcast: `[null, ref, topic, event, payload]`, or a kind-2 binary frame.
/// `msg_ref` is normally `None`; it is free on broadcasts and may carry metadata.
pub fn encode_broadcast(
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Frame, EncodeError> {
    match payload {
        Payload::Json(raw) => Ok(text_frame(
            None,
            msg_ref,
            topic,
            event,
            raw.get().len(),
            |out| out.extend_from_slice(raw.get().as_bytes()),
        )),
        Payload::Binary(data) => {
            binary_frame(KIND_BROADCAST, &[(topic, "topic"), (event, "event")], data)
        }
    }
}

/// A broadcast whose `ref` will carry a history offset that is not known yet (a broker assigns
/// it, possibly inside Redis): the frame is `head`, the offset in decimal, then `tail`.
/// Binary broadcasts (kind 2) have no `ref`: `head` is the whole frame and `tail` is empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetBroadcast {
    pub head: Bytes,
    pub tail: Bytes,
    pub binary: bool,
}

impl OffsetBroadcast {
    /// The frame with `offset` in its `ref` (`[null, "<offset>", topic, event, payload]`).
    pub fn with_offset(&self, offset: u64) -> Frame {
        if self.binary {
            return Frame::Binary(self.head.clone());
        }
        let digits = offset.to_string();
        let mut out = BytesMut::with_capacity(self.head.len() + digits.len() + self.tail.len());
        out.put_slice(&self.head);
        out.put_slice(digits.as_bytes());
        out.put_slice(&self.tail);
        Frame::Text(out.freeze())
    }
}

/// Encodes a broadcast around the place its history offset goes (see [`OffsetBroadcast`]).
pub fn encode_broadcast_parts(
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<OffsetBroadcast, EncodeError> {
    match payload {
        Payload::Json(raw) => {
            let mut tail = Vec::with_capacity(8 + topic.len() + event.len() + raw.get().len());
            tail.extend_from_slice(b"\",");
            push_json_str(&mut tail, topic);
            tail.push(b',');
            push_json_str(&mut tail, event);
            tail.push(b',');
            tail.extend_from_slice(raw.get().as_bytes());
            tail.push(b']');
            Ok(OffsetBroadcast {
                head: Bytes::from_static(b"[null,\""),
                tail: Bytes::from(tail),
                binary: false,
            })
        }
        Payload::Binary(_) => Ok(OffsetBroadcast {
            head: encode_broadcast(None, topic, event, payload)?
                .bytes()
                .clone(),
            tail: Bytes::new(),
            binary: true,
        }),
    }
}

/// Encodes a broadcast that carries its history offset in the `ref`.
pub fn encode_broadcast_with_offset(
    offset: u64,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Frame, EncodeError> {
    // Encoded in one go: the frame, without the tail `encode_broadcast_parts` would build and
    // drop (a copy of the payload per history publish).
    match payload {
        Payload::Json(_) => encode_broadcast(Some(&offset.to_string()), topic, event, payload),
        Payload::Binary(_) => encode_broadcast(None, topic, event, payload),
    }
}

/// Encodes a client push (used by the Rust client): JSON text, or a kind-0 binary frame.
pub fn encode_client_push(
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &Payload,
) -> Result<Frame, EncodeError> {
    match payload {
        Payload::Json(raw) => Ok(text_frame(
            join_ref,
            msg_ref,
            topic,
            event,
            raw.get().len(),
            |out| out.extend_from_slice(raw.get().as_bytes()),
        )),
        Payload::Binary(data) => binary_frame(
            KIND_PUSH,
            &[
                (join_ref.unwrap_or(""), "join_ref"),
                (msg_ref.unwrap_or(""), "ref"),
                (topic, "topic"),
                (event, "event"),
            ],
            data,
        ),
    }
}

#[cfg(test)]
mod tests;
