//! The Phoenix Channels wire protocol: V2 (JSON arrays and binary frames, as spoken by the
//! `phoenix` JavaScript client 1.8) and the V1 JSON objects of older clients.
//!
//! [`pusher`] is Pusher's protocol 7 (pusher-js), served at `/app/{key}` in Pusher mode.
//!
//! Pure encoding and decoding with no I/O, so it can be unit-tested and fuzzed on its own.
//! See `docs/protocol.md` for the frame layouts; [`codec`] implements V2, [`v1`] V1.

pub mod codec;
pub mod pusher;
pub mod v1;
pub mod ws_frame;

pub use codec::{
    decode_client_binary, decode_client_text, decode_server_binary, decode_server_text,
    encode_broadcast, encode_broadcast_parts, encode_broadcast_with_offset, encode_client_push,
    encode_push, encode_reply, DecodeError, EncodeError, Frame, Message, OffsetBroadcast, Payload,
    ServerBinary,
};
pub use v1::{
    decode_client_text_v1, encode_client_v1, encode_message_v1, encode_reply_v1, encode_v1,
    json_payload,
};

/// The serializer a connection negotiated with its `vsn` query parameter, as Phoenix does:
/// `2.x` speaks V2 (arrays, binary frames), `1.x` — and no `vsn` at all — speaks V1 (objects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

impl Vsn {
    /// The serializer for a `vsn` parameter (`None`: the parameter is absent). Anything else
    /// than `1.x` or `2.x` is refused with the reason to show the client.
    pub fn negotiate(vsn: Option<&str>) -> Result<Vsn, String> {
        match vsn {
            None => Ok(Vsn::V1),
            Some(v) if v == "1" || v.starts_with("1.") => Ok(Vsn::V1),
            Some(v) if v == "2" || v.starts_with("2.") => Ok(Vsn::V2),
            Some(v) => Err(format!(
                "unsupported vsn {:?}: Plexus speaks the Phoenix protocol versions 1.0.0 and 2.0.0",
                v.chars().take(32).collect::<String>()
            )),
        }
    }

    /// Decodes a client's text frame.
    pub fn decode_text(self, text: &[u8]) -> Result<Message, DecodeError> {
        match self {
            Vsn::V1 => decode_client_text_v1(text),
            Vsn::V2 => decode_client_text(text),
        }
    }

    /// Decodes a client's binary frame: V2's binary layouts, or — V1 having no binary layout —
    /// the V1 JSON object the frame carries, as Phoenix's V1 serializer decodes a frame's JSON
    /// whatever its opcode (Python's `phx-events` sends its objects as binary frames). Replies
    /// to V1 clients are text frames either way.
    pub fn decode_binary(self, data: &bytes::Bytes) -> Result<Message, DecodeError> {
        match self {
            Vsn::V1 => decode_client_text_v1(data),
            Vsn::V2 => decode_client_binary(data),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        }
    }
}

/// The topic of socket-level messages (heartbeats) that need no join.
pub const PHOENIX_TOPIC: &str = "phoenix";

/// Reserved event names.
pub mod events {
    pub const JOIN: &str = "phx_join";
    pub const LEAVE: &str = "phx_leave";
    pub const REPLY: &str = "phx_reply";
    pub const CLOSE: &str = "phx_close";
    pub const ERROR: &str = "phx_error";
    pub const HEARTBEAT: &str = "heartbeat";
    /// Client → server on topic `phoenix`: `{"token": "<new JWT>"}` replaces the connection's
    /// token before it expires.
    pub const REFRESH_TOKEN: &str = "refresh_token";
    /// Server → client on topic `phoenix`: the token expired; refresh within the grace period.
    pub const TOKEN_EXPIRED: &str = "token_expired";
    /// Server → joiner: the topic's whole presence.
    pub const PRESENCE_STATE: &str = "presence_state";
    /// Server → topic: presence joins and leaves.
    pub const PRESENCE_DIFF: &str = "presence_diff";
    /// Client → server on a presence channel: merge an object into this connection's meta.
    pub const PRESENCE_UPDATE: &str = "presence_update";
    /// Server → topic, after the cluster lost a topic's history (a Redis outage that lost its
    /// data): `{"epoch": "<new>", "offset": 0}`. Joined clients reset their recovery state.
    pub const HISTORY_RESET: &str = "history_reset";
    /// Supabase channels: a client broadcast `{"type": "broadcast", "event", "payload"}`, relayed
    /// as it came (a relayed event, not one the server owns).
    pub const BROADCAST: &str = "broadcast";
    /// Supabase channels: `{"type": "presence", "event": "track" | "untrack", "payload"}`.
    pub const PRESENCE: &str = "presence";
    /// Supabase channels: a server notice `{"extension", "status", "message", "channel"}`.
    /// Clients cannot forge one: Supabase channels relay only `broadcast`.
    pub const SYSTEM: &str = "system";
    /// Client → server on any topic (Supabase's `setAuth`): `{"access_token": "<new JWT>"}`,
    /// handled like `refresh_token`.
    pub const ACCESS_TOKEN: &str = "access_token";

    /// Events the server owns: a client can never have one of them relayed to others (nor can
    /// the HTTP API publish one), whatever the channel rules say.
    /// Pusher's `pusher:` and `pusher_internal:` events are the server's too: a Pusher client
    /// must never receive a forged `pusher_internal:subscription_succeeded`.
    pub fn is_reserved(event: &str) -> bool {
        event.starts_with("phx_")
            || event.starts_with("pusher:")
            || event.starts_with("pusher_internal:")
            || matches!(
                event,
                PRESENCE_STATE
                    | PRESENCE_DIFF
                    | PRESENCE_UPDATE
                    | REFRESH_TOKEN
                    | ACCESS_TOKEN
                    | TOKEN_EXPIRED
                    | HEARTBEAT
                    | HISTORY_RESET
            )
    }
}
