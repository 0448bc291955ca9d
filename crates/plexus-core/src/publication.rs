//! A publication: one broadcast on its way from a publisher to every subscriber of a topic.
//!
//! It is encoded once, when it is made ([`Publication::new`]) or received from another node
//! ([`Publication::from_frame`]); the hub then hands the same `Arc<Publication>` to every local
//! subscriber's outbox, and every transport reads the same bytes (or the same decoded topic,
//! event and payload) from it. [`HistoryOpts`] says how much of a topic's past is retained.

use crate::protocol::{
    decode_server_binary, decode_server_text, encode_broadcast, encode_broadcast_with_offset,
    DecodeError, EncodeError, Frame, Payload, ServerBinary,
};
use crate::ConnId;
use std::sync::Arc;
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
    /// The frame every subscriber receives (its `ref` carries the offset on history topics).
    pub frame: Frame,
    /// A local connection that must not receive it (the sender of a client push).
    pub exclude: Option<ConnId>,
    /// Set for topics with history: the broker assigns `offset` and re-encodes the frame.
    pub history: Option<HistoryOpts>,
    /// Position in the topic's history, assigned by the broker.
    pub offset: Option<u64>,
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
            exclude,
            history: None,
            offset,
        }
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
}
