//! A publication: one broadcast on its way from a publisher to every subscriber of a topic.
//!
//! It is encoded once, when it is made ([`Publication::new`]) or received from another node
//! ([`Publication::from_frame`]); the hub then hands the same `Arc<Publication>` to every local
//! subscriber's outbox, and every transport reads the same bytes (or the same decoded topic,
//! event and payload) from it. [`HistoryOpts`] says how much of a topic's past is retained.
//!
//! Receivers get Phoenix's shape by default — `[null, null, topic, event, payload]` — and the
//! history offset in the `ref` only when their join asked for it; V1 connections get V1
//! objects. Each of these other shapes is encoded at most once per publication per node, the
//! first time a receiver needs it ([`Publication::frame_for`]).

use crate::protocol::{
    decode_server_binary, decode_server_text, encode_broadcast, encode_broadcast_with_offset,
    encode_message_v1, DecodeError, EncodeError, Frame, Payload, ServerBinary, Vsn,
};
use crate::ConnId;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How much history a topic keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryOpts {
    /// Entries kept (at least 1).
    pub size: usize,
    /// Entries older than this are dropped (`None`: only the size limit applies).
    pub ttl: Option<Duration>,
}

/// One broadcast, encoded once for all receivers.
#[derive(Clone, Debug)]
pub struct Publication {
    pub topic: Arc<str>,
    pub event: Arc<str>,
    pub payload: Payload,
    /// The V2 frame as brokers carry it and history keeps it: its `ref` carries the offset on
    /// history topics.
    pub frame: Frame,
    /// The other shapes receivers may need, encoded on first use (see [`Publication::frame_for`]).
    shapes: Shapes,
    /// A local connection that must not receive it (the sender of a client push).
    pub exclude: Option<ConnId>,
    /// Who sent it and who must not get it, beyond [`Publication::exclude`] (see [`Sender`]);
    /// boxed: most publications have none.
    pub sender: Option<Box<Sender>>,
    /// Set for topics with history: the broker assigns `offset` and re-encodes the frame.
    pub history: Option<HistoryOpts>,
    /// Position in the topic's history, assigned by the broker.
    pub offset: Option<u64>,
    /// For the publish→write latency metric.
    first_write: FirstWrite,
}

/// What some protocols tell receivers about a publication's sender, carried to every node
/// (the Redis broker puts it in its envelope's header): Pusher's `user_id` on presence
/// channels' client events, and the `socket_id` a Pusher API publish excludes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sender {
    /// The sending connection's presence key on the topic (a Pusher member's `user_id`).
    pub presence_key: Option<Arc<str>>,
    /// The Pusher connection (by `socket_id`, on any node) that must not receive it.
    pub exclude_socket: Option<Arc<str>>,
}

impl Sender {
    /// `None` when it says nothing (nothing to carry).
    pub fn boxed(self) -> Option<Box<Sender>> {
        (self != Sender::default()).then(|| Box::new(self))
    }
}

/// When a publication was made on this node (published here, received from the broker or
/// read back from history), and whether its first write to a client was already timed.
#[derive(Debug)]
struct FirstWrite {
    created: std::time::Instant,
    timed: std::sync::atomic::AtomicBool,
}

impl Clone for FirstWrite {
    fn clone(&self) -> Self {
        FirstWrite {
            created: self.created,
            timed: std::sync::atomic::AtomicBool::new(self.timed.load(Relaxed)),
        }
    }
}

/// Frames derived from [`Publication::frame`], each encoded once when first asked for.
#[derive(Clone, Debug, Default)]
struct Shapes {
    /// V2 with `ref` null (only made when `frame` carries an offset).
    v2_plain: OnceLock<Frame>,
    v1_plain: OnceLock<Frame>,
    v1_offset: OnceLock<Frame>,
    /// Pusher's `{"event", "channel", "data"}` (no offset: Pusher has none).
    pusher: OnceLock<Frame>,
}

impl Publication {
    pub fn new(
        topic: &str,
        event: &str,
        payload: Payload,
        exclude: Option<ConnId>,
    ) -> Result<Self, EncodeError> {
        let frame = encode_broadcast(None, topic, event, &payload)?;
        Ok(Self::from_parts(
            topic, event, payload, frame, None, exclude,
        ))
    }

    /// A publication whose frame is already encoded (read back from history, or received).
    pub fn from_parts(
        topic: &str,
        event: &str,
        payload: Payload,
        frame: Frame,
        offset: Option<u64>,
        exclude: Option<ConnId>,
    ) -> Self {
        Publication {
            topic: topic.into(),
            event: event.into(),
            payload,
            frame,
            shapes: Shapes::default(),
            exclude,
            sender: None,
            history: None,
            offset,
            first_write: FirstWrite {
                created: std::time::Instant::now(),
                timed: std::sync::atomic::AtomicBool::new(false),
            },
        }
    }

    /// It was written to a client: the first write is timed (`plexus_publish_to_write_seconds`).
    /// One atomic load per delivery after that.
    pub fn written(&self) {
        let t = &self.first_write.timed;
        if !t.load(Relaxed) && !t.swap(true, Relaxed) {
            crate::metrics::first_write(self.first_write.created);
        }
    }

    /// Nobody here received it live: a later replay from history is not a delivery latency.
    pub fn not_timed(&self) {
        self.first_write.timed.store(true, Relaxed);
    }

    /// The frame a receiver speaking `vsn` gets: Phoenix's shape (`ref` null), or with the
    /// history offset in `ref` when `with_offset` (the receiver's join asked for offsets) and
    /// the publication has one. Binary broadcasts have no `ref`; V1 receivers get their
    /// payload as `{"binary": base64}`.
    pub fn frame_for(&self, vsn: Vsn, with_offset: bool) -> Result<Frame, EncodeError> {
        let offset = self.offset.filter(|_| with_offset);
        let cell = match (vsn, offset) {
            (Vsn::V2, Some(_)) => return Ok(self.frame.clone()),
            (Vsn::V2, None) if self.offset.is_none() || matches!(self.frame, Frame::Binary(_)) => {
                return Ok(self.frame.clone())
            }
            (Vsn::V2, None) => &self.shapes.v2_plain,
            (Vsn::V1, None) => &self.shapes.v1_plain,
            (Vsn::V1, Some(_)) => &self.shapes.v1_offset,
        };
        if let Some(f) = cell.get() {
            return Ok(f.clone());
        }
        let frame = match vsn {
            Vsn::V2 => encode_broadcast(None, &self.topic, &self.event, &self.payload)?,
            Vsn::V1 => {
                let digits = offset.map(|o| o.to_string());
                encode_message_v1(digits.as_deref(), &self.topic, &self.event, &self.payload)
            }
        };
        // Another receiver may have raced us here: both made the same bytes.
        Ok(cell.get_or_init(|| frame).clone())
    }

    /// The frame Pusher connections get, encoded once per publication and shared by all of
    /// them: `{"event", "channel", "data"}` with `data` a string (a JSON string payload as it
    /// is, any other JSON as the string of its text); a binary payload travels as the string of
    /// `{"binary": "<base64>"}`.
    pub fn pusher_frame(&self) -> Result<Frame, EncodeError> {
        if let Some(f) = self.shapes.pusher.get() {
            return Ok(f.clone());
        }
        let data = crate::protocol::json_payload(&self.payload);
        // Pusher tells a presence channel's receivers which member sent a client event.
        let user_id = self
            .sender
            .as_ref()
            .and_then(|s| s.presence_key.as_deref())
            .filter(|_| self.topic.starts_with("presence-"));
        let text = crate::protocol::pusher::channel_event_from(
            &self.event,
            &self.topic,
            data.get(),
            user_id,
        );
        let frame = Frame::Text(bytes::Bytes::from(text));
        Ok(self.shapes.pusher.get_or_init(|| frame).clone())
    }

    /// A publication received from another node as an encoded broadcast frame: its event and
    /// payload are decoded once here, for the whole node.
    pub fn from_frame(
        topic: &str,
        frame: Frame,
        offset: Option<u64>,
        exclude: Option<ConnId>,
    ) -> Result<Self, DecodeError> {
        let (event, payload) = match &frame {
            Frame::Text(b) => {
                let m = decode_server_text(b)?;
                (m.event, m.payload)
            }
            Frame::Binary(b) => match decode_server_binary(b)? {
                ServerBinary::Broadcast { event, payload, .. } => (event, Payload::Binary(payload)),
                _ => {
                    return Err(DecodeError {
                        reason: "not a broadcast frame".into(),
                        msg_ref: None,
                        join_ref: None,
                        topic: Some(topic.to_owned()),
                    })
                }
            },
        };
        Ok(Self::from_parts(
            topic, &event, payload, frame, offset, exclude,
        ))
    }

    /// With what [`Sender`] says (nothing when it says nothing).
    pub fn with_sender(mut self, sender: Sender) -> Self {
        self.sender = sender.boxed();
        self
    }

    /// Whether it must not reach the Pusher connection `socket_id`.
    pub fn excludes_socket(&self, socket_id: &str) -> bool {
        self.sender
            .as_ref()
            .and_then(|s| s.exclude_socket.as_deref())
            .is_some_and(|s| s == socket_id)
    }

    /// A publication that goes into the topic's history.
    pub fn with_history(mut self, opts: HistoryOpts) -> Self {
        self.history = Some(opts);
        self
    }

    /// Assigns the history offset and encodes it into the frame's `ref`
    /// (`[null, "<offset>", topic, event, payload]`).
    pub fn set_offset(&mut self, offset: u64) -> Result<(), EncodeError> {
        self.frame = encode_broadcast_with_offset(offset, &self.topic, &self.event, &self.payload)?;
        self.offset = Some(offset);
        self.shapes = Shapes::default();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_from_another_node_decodes_to_the_same_publication() {
        let payload = Payload::json(&serde_json::json!({"n": 1})).unwrap();
        let mut p = Publication::new("room:a", "msg", payload, None).unwrap();
        p.set_offset(9).unwrap();
        let remote = Publication::from_frame("room:a", p.frame.clone(), Some(9), None).unwrap();
        assert_eq!(&*remote.event, "msg");
        assert_eq!(remote.payload.as_json().unwrap().get(), r#"{"n":1}"#);
        assert_eq!(remote.frame, p.frame);
        let bin = Publication::new(
            "t",
            "b",
            Payload::Binary(bytes::Bytes::from_static(b"\x00")),
            None,
        )
        .unwrap();
        let remote = Publication::from_frame("t", bin.frame.clone(), None, None).unwrap();
        assert!(matches!(remote.payload, Payload::Binary(ref b) if &b[..] == b"\x00"));
    }

    fn text(f: Frame) -> String {
        String::from_utf8(f.bytes().to_vec()).unwrap()
    }

    #[test]
    fn pusher_receivers_share_one_frame_with_data_as_a_string() {
        let payload = Payload::json(&serde_json::json!({"n": 1})).unwrap();
        let p = Publication::new("room-a", "msg", payload, None).unwrap();
        let a = p.pusher_frame().unwrap();
        assert_eq!(
            text(a.clone()),
            r#"{"event":"msg","channel":"room-a","data":"{\"n\":1}"}"#
        );
        let b = p.pusher_frame().unwrap();
        assert_eq!(a.bytes().as_ptr(), b.bytes().as_ptr());
        let s = Publication::new("c", "e", Payload::json(&"hi").unwrap(), None).unwrap();
        assert_eq!(
            text(s.pusher_frame().unwrap()),
            r#"{"event":"e","channel":"c","data":"hi"}"#
        );
    }

    #[test]
    fn receivers_get_phoenix_s_shape_unless_they_asked_for_offsets() {
        let payload = Payload::json(&serde_json::json!({"n": 1})).unwrap();
        let mut p = Publication::new("room:a", "msg", payload, None).unwrap();
        p.set_offset(42).unwrap();
        assert_eq!(
            text(p.frame_for(Vsn::V2, false).unwrap()),
            r#"[null,null,"room:a","msg",{"n":1}]"#
        );
        assert_eq!(
            text(p.frame_for(Vsn::V2, true).unwrap()),
            r#"[null,"42","room:a","msg",{"n":1}]"#
        );
        assert_eq!(
            text(p.frame_for(Vsn::V1, false).unwrap()),
            r#"{"event":"msg","payload":{"n":1},"ref":null,"topic":"room:a"}"#
        );
        assert_eq!(
            text(p.frame_for(Vsn::V1, true).unwrap()),
            r#"{"event":"msg","payload":{"n":1},"ref":"42","topic":"room:a"}"#
        );
        // Encoded once: the second receiver shares the first one's bytes.
        let a = p.frame_for(Vsn::V1, false).unwrap();
        let b = p.frame_for(Vsn::V1, false).unwrap();
        assert_eq!(a.bytes().as_ptr(), b.bytes().as_ptr());
        // Without history there is no offset to give.
        let q = Publication::new("t", "e", Payload::empty_object(), None).unwrap();
        assert_eq!(
            text(q.frame_for(Vsn::V2, true).unwrap()),
            r#"[null,null,"t","e",{}]"#
        );
    }
}
