//! What waits in an outbox ([`Outgoing`]: a reply, a push, a shared broadcast or a frame
//! already encoded), how each is encoded for the connection's protocol, and how many bytes it
//! counts against the outbox's bound; and why a connection is to be closed ([`CloseReason`]).

use crate::protocol::{
    encode_broadcast, encode_message_v1, encode_push, encode_reply, encode_reply_v1, json_payload,
    EncodeError, Frame, Payload, Vsn,
};
use crate::publication::Publication;
use std::sync::Arc;

/// Why and how a connection is to be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

/// `phx_reply` to the client message `msg_ref`.
#[derive(Clone, Debug)]
pub struct Reply {
    pub join_ref: Option<Box<str>>,
    pub msg_ref: Option<Box<str>>,
    pub topic: Box<str>,
    pub status: &'static str,
    pub response: Payload,
}

/// A server push to this connection alone (`phx_close`, `presence_state`, `token_expired`).
#[derive(Clone, Debug)]
pub struct Push {
    pub join_ref: Option<Box<str>>,
    pub msg_ref: Option<Box<str>>,
    pub topic: Box<str>,
    pub event: &'static str,
    pub payload: Payload,
}

/// One message waiting for a connection: two words, so that a queue (and the batch a
/// transport drains it into) stays small.
#[derive(Clone, Debug)]
pub enum Outgoing {
    Reply(Box<Reply>),
    Push(Box<Push>),
    /// A broadcast shared with every subscriber of its topic, sent in Phoenix's shape
    /// (`ref` null).
    Broadcast(Arc<Publication>),
    /// The same, with its history offset in `ref`: the receiver's join asked for offsets.
    BroadcastWithOffset(Arc<Publication>),
    /// A frame already encoded in the connection's own protocol: what a protocol other than
    /// Phoenix's says that the core has no message for (Pusher's `connection_established`,
    /// `subscription_succeeded`, `pong`…).
    Raw(Box<Frame>),
}

impl Outgoing {
    /// A broadcast for a receiver that wants offsets (`with_offset`) or not.
    pub fn broadcast(p: Arc<Publication>, with_offset: bool) -> Self {
        if with_offset {
            Outgoing::BroadcastWithOffset(p)
        } else {
            Outgoing::Broadcast(p)
        }
    }

    /// The publication of a broadcast.
    pub fn publication(&self) -> Option<&Arc<Publication>> {
        match self {
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => Some(p),
            _ => None,
        }
    }

    /// Bytes this message counts against the outbox's byte limit (about its encoded size).
    pub(super) fn weight(&self) -> usize {
        match self {
            Outgoing::Reply(r) => {
                48 + refs_len(&r.join_ref, &r.msg_ref) + r.topic.len() + r.response.len()
            }
            Outgoing::Push(p) => {
                32 + refs_len(&p.join_ref, &p.msg_ref)
                    + p.topic.len()
                    + p.event.len()
                    + p.payload.len()
            }
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => p.frame.len(),
            Outgoing::Raw(f) => f.len(),
        }
    }

    /// The message's payload (a reply's `response`); `None` for a raw frame.
    pub fn payload(&self) -> Option<&Payload> {
        match self {
            Outgoing::Reply(r) => Some(&r.response),
            Outgoing::Push(p) => Some(&p.payload),
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => Some(&p.payload),
            Outgoing::Raw(_) => None,
        }
    }

    /// The frame of this message for a Pusher connection, or `None` for what Pusher's protocol
    /// has no frame for: broadcasts as Pusher channel events (encoded once per publication),
    /// error replies as `pusher:error`, raw frames as they are. Successful replies and the
    /// Phoenix pushes (`phx_close`, presence, `token_expired`) say nothing to a Pusher client.
    pub fn encode_pusher(&self) -> Option<Frame> {
        match self {
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => p
                .pusher_frame()
                .inspect_err(|e| tracing::debug!(error = %e, "broadcast not encodable for Pusher"))
                .ok(),
            Outgoing::Raw(f) => Some((**f).clone()),
            Outgoing::Reply(r) if r.status == "error" => {
                let reason = r
                    .response
                    .as_json()
                    .and_then(|raw| serde_json::from_str::<ErrorReason>(raw.get()).ok())
                    .map_or_else(|| "error".to_owned(), |e| e.reason);
                let text = crate::protocol::pusher::error(None, &reason);
                Some(Frame::Text(bytes::Bytes::from(text)))
            }
            Outgoing::Reply(_) | Outgoing::Push(_) => None,
        }
    }

    /// The frame of this message for a connection speaking `vsn` (a broadcast's shared frame
    /// is not copied).
    pub fn encode(&self, vsn: Vsn) -> Result<Frame, EncodeError> {
        match (self, vsn) {
            (Outgoing::Broadcast(p), _) => p.frame_for(vsn, false),
            (Outgoing::BroadcastWithOffset(p), _) => p.frame_for(vsn, true),
            (Outgoing::Reply(r), Vsn::V2) => encode_reply(
                r.join_ref.as_deref(),
                r.msg_ref.as_deref(),
                &r.topic,
                r.status,
                &r.response,
            ),
            (Outgoing::Push(p), Vsn::V2) => encode_push(
                p.join_ref.as_deref(),
                p.msg_ref.as_deref(),
                &p.topic,
                p.event,
                &p.payload,
            ),
            (Outgoing::Reply(r), Vsn::V1) => Ok(encode_reply_v1(
                r.msg_ref.as_deref(),
                &r.topic,
                r.status,
                &json_payload(&r.response),
            )),
            (Outgoing::Push(p), Vsn::V1) => Ok(encode_message_v1(
                p.msg_ref.as_deref(),
                &p.topic,
                p.event,
                &p.payload,
            )),
            (Outgoing::Raw(f), _) => Ok((**f).clone()),
        }
    }

    /// The frame of this message as text, for transports that carry no binary frames
    /// (LongPoll): a binary payload travels as JSON `{"binary": "<base64>"}`.
    pub fn encode_text(&self, vsn: Vsn) -> Result<Frame, EncodeError> {
        let Some(binary @ Payload::Binary(_)) = self.payload() else {
            return self.encode(vsn);
        };
        if vsn == Vsn::V1 {
            return self.encode(vsn);
        }
        let payload = Payload::Json(json_payload(binary).into_owned());
        match self {
            Outgoing::Reply(r) => encode_reply(
                r.join_ref.as_deref(),
                r.msg_ref.as_deref(),
                &r.topic,
                r.status,
                &payload,
            ),
            Outgoing::Push(p) => encode_push(
                p.join_ref.as_deref(),
                p.msg_ref.as_deref(),
                &p.topic,
                p.event,
                &payload,
            ),
            // Binary broadcasts carry no offset.
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => {
                encode_broadcast(None, &p.topic, &p.event, &payload)
            }
            Outgoing::Raw(f) => Ok((**f).clone()),
        }
    }
}

/// The `reason` of an error reply.
#[derive(serde::Deserialize)]
struct ErrorReason {
    reason: String,
}

/// The bytes of a message's refs (a client chooses them, up to a whole message's size).
fn refs_len(join_ref: &Option<Box<str>>, msg_ref: &Option<Box<str>>) -> usize {
    join_ref.as_ref().map_or(0, |s| s.len()) + msg_ref.as_ref().map_or(0, |s| s.len())
}
