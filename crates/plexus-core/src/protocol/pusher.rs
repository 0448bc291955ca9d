//! Pusher's protocol 7 (as pusher-js 8.x speaks it): the JSON frames of `/app/{key}`.
//!
//! Every frame is one object `{"event", "channel"?, "data"?}`. Clients send `pusher:subscribe`
//! and `pusher:unsubscribe` with an object `data` (`{channel, auth?, channel_data?}`),
//! `pusher:ping` / `pusher:pong`, and client events `client-*` with any JSON `data`. The server's
//! `data` is a JSON-encoded string (pusher-js parses a string `data` as JSON when it can), except
//! where noted. Pure functions, no I/O: unit-tested here and fuzzed (`fuzz/fuzz_targets/pusher.rs`).

use serde::Deserialize;
use serde_json::value::RawValue;

/// Pusher's reserved event prefixes: a client never sends (nor has relayed) one of these
/// except the `pusher:` requests decoded into their own variants.
pub const INTERNAL_PREFIX: &str = "pusher_internal:";
pub const PUSHER_PREFIX: &str = "pusher:";
/// Client events (`channel.trigger`) must start with this.
pub const CLIENT_EVENT_PREFIX: &str = "client-";

/// The longest channel name Pusher accepts.
pub const MAX_CHANNEL_NAME: usize = 200;
/// The longest event name Pusher accepts.
pub const MAX_EVENT_NAME: usize = 200;

/// Pusher's error codes (<https://pusher.com/docs/channels/library_auth_reference/pusher-websockets-protocol/#error-codes>).
pub mod codes {
    /// Only TLS connections are accepted (close code).
    pub const TLS_ONLY: u16 = 4000;
    /// The app does not exist (an unknown key; close code).
    pub const APP_NOT_FOUND: u16 = 4001;
    /// The app is disabled.
    pub const APP_DISABLED: u16 = 4003;
    /// The app is over its connection quota.
    pub const OVER_CONNECTION_QUOTA: u16 = 4004;
    /// The path was not found.
    pub const PATH_NOT_FOUND: u16 = 4005;
    /// Invalid version string format.
    pub const INVALID_VERSION: u16 = 4006;
    /// Unsupported protocol version (close code).
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// No protocol version supplied.
    pub const NO_PROTOCOL: u16 = 4008;
    /// The connection is unauthorized.
    pub const UNAUTHORIZED: u16 = 4009;
    /// Over capacity: reconnect after a back-off.
    pub const OVER_CAPACITY: u16 = 4100;
    /// Generic reconnect immediately (server restarting).
    pub const RECONNECT: u16 = 4200;
    /// Pong reply not received: reconnect immediately.
    pub const PONG_NOT_RECEIVED: u16 = 4201;
    /// Closed after inactivity.
    pub const INACTIVE: u16 = 4202;
    /// Client event rejected due to rate limit.
    pub const CLIENT_EVENT_RATE_LIMIT: u16 = 4301;
}

/// The close code a Pusher client is given for one of Plexus's (`close_codes`, which
/// docs/protocol.md lists), so that pusher-js acts as Pusher intends: 4009 (unauthorized: it
/// stops reconnecting) when the app disconnected the user (1001, `terminate_connections`);
/// 4100 (reconnect after a back-off) for a slow consumer (1013), a flood (1008) or an oversized
/// message (1009); 4200 (reconnect now, to another node) for a drain (1012), an internal error
/// (1011) or an expired token (4001). Other codes (Pusher's own, the WebSocket protocol's) stay.
pub fn close_code(plexus: u16) -> u16 {
    match plexus {
        1001 => codes::UNAUTHORIZED,
        1008 | 1009 | 1013 => codes::OVER_CAPACITY,
        1011 | 1012 | 4001 => codes::RECONNECT,
        other => other,
    }
}

/// The protocol versions this server speaks (`?protocol=`).
pub const PROTOCOL_VERSION: u32 = 7;

/// Why a frame could not be decoded: the reason to send back in `pusher:error`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A decoded client frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe {
        channel: String,
        auth: Option<String>,
        /// Presence channels: the JSON string the signature covers.
        channel_data: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    /// User authentication: `auth` signs `socket_id::user::user_data`.
    Signin {
        auth: String,
        user_data: String,
    },
    /// `client-*` on a channel: `data` is the JSON text as sent (any JSON value; `null` when
    /// absent).
    ClientEvent {
        event: String,
        channel: String,
        data: String,
    },
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    event: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

/// The object inside `data`: pusher-js sends an object, other clients sometimes a JSON string
/// holding the object. Both are accepted.
fn data_object<T: for<'de> Deserialize<'de>>(
    data: Option<&RawValue>,
    what: &str,
) -> Result<T, DecodeError> {
    let raw = data.ok_or_else(|| DecodeError(format!("{what} needs a data object")))?;
    let parsed = match serde_json::from_str::<T>(raw.get()) {
        Ok(v) => Ok(v),
        Err(e) => match serde_json::from_str::<String>(raw.get()) {
            Ok(s) => serde_json::from_str::<T>(&s),
            Err(_) => Err(e),
        },
    };
    parsed.map_err(|e| DecodeError(format!("invalid {what} data: {e}")))
}

/// Decodes a client's text frame.
pub fn decode_client(text: &[u8]) -> Result<ClientMessage, DecodeError> {
    let frame: RawFrame<'_> = serde_json::from_slice(text)
        .map_err(|e| DecodeError(format!("invalid JSON frame: {e}")))?;
    let event = frame
        .event
        .ok_or_else(|| DecodeError("frame has no event".into()))?;
    match &*event {
        "pusher:ping" => Ok(ClientMessage::Ping),
        "pusher:pong" => Ok(ClientMessage::Pong),
        "pusher:subscribe" => {
            let d: SubscribeData = data_object(frame.data.as_deref(), "pusher:subscribe")?;
            Ok(ClientMessage::Subscribe {
                channel: d.channel,
                auth: d.auth,
                channel_data: d.channel_data,
            })
        }
        "pusher:unsubscribe" => {
            let d: UnsubscribeData = data_object(frame.data.as_deref(), "pusher:unsubscribe")?;
            Ok(ClientMessage::Unsubscribe { channel: d.channel })
        }
        "pusher:signin" => {
            let d: SigninData = data_object(frame.data.as_deref(), "pusher:signin")?;
            Ok(ClientMessage::Signin {
                auth: d.auth,
                user_data: d.user_data,
            })
        }
        e if e.starts_with(CLIENT_EVENT_PREFIX) => {
            let channel = frame
                .channel
                .ok_or_else(|| DecodeError("client event has no channel".into()))?;
            let data = frame
                .data
                .map_or_else(|| "null".to_owned(), |d| d.get().to_owned());
            Ok(ClientMessage::ClientEvent {
                event: e.to_owned(),
                channel,
                data,
            })
        }
        e => Err(DecodeError(format!(
            "unsupported event {:?}: clients send pusher:subscribe, pusher:unsubscribe, pusher:signin, pusher:ping, pusher:pong or client-* events",
            e.chars().take(64).collect::<String>()
        ))),
    }
}

/// The `data` of a server frame: a JSON string holding `json` (Pusher's convention).
fn data_string(json: &str) -> String {
    serde_json::to_string(json).unwrap_or_else(|_| "\"\"".to_owned())
}

/// One server frame `{"event", "channel"?, "data"}` where `data` is already JSON (a string
/// literal for the usual string data).
fn frame(event: &str, channel: Option<&str>, data_json: &str) -> String {
    let mut out = String::with_capacity(32 + event.len() + data_json.len());
    out.push_str("{\"event\":");
    out.push_str(&data_string(event));
    if let Some(c) = channel {
        out.push_str(",\"channel\":");
        out.push_str(&data_string(c));
    }
    out.push_str(",\"data\":");
    out.push_str(data_json);
    out.push('}');
    out
}

/// `pusher:connection_established` with data `"{\"socket_id\":…,\"activity_timeout\":…}"`.
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let inner = serde_json::json!({
        "socket_id": socket_id,
        "activity_timeout": activity_timeout_secs,
    })
    .to_string();
    frame("pusher:connection_established", None, &data_string(&inner))
}

/// `pusher:error` with data `{"code", "message"}` (an object, as Pusher sends it; `code` null
/// for errors that are not Pusher close codes).
pub fn error(code: Option<u16>, message: &str) -> String {
    let inner = serde_json::json!({ "code": code, "message": message }).to_string();
    frame("pusher:error", None, &inner)
}

/// `pusher:signin_success` with data `{"user_data": "<the signed user_data>"}`.
pub fn signin_success(user_data: &str) -> String {
    let inner = serde_json::json!({ "user_data": user_data }).to_string();
    frame("pusher:signin_success", None, &inner)
}

/// The channel a signed-in user's connections subscribe to (pusher-js does it after
/// `pusher:signin_success`): events sent to the user (`sendToUser`) arrive on it.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// A user id Plexus accepts from `pusher:signin`, in `#server-to-user-<id>` and in
/// `terminate_connections`: 1 to 128 bytes without control characters (the `pusher` SDKs
/// accept any non-empty string).
pub fn valid_user_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && !id.chars().any(char::is_control)
}

/// The server-to-user channel of `user_id`, if it is a valid user id.
pub fn server_to_user_channel(user_id: &str) -> Option<String> {
    valid_user_id(user_id).then(|| format!("{SERVER_TO_USER_PREFIX}{user_id}"))
}

/// Whether `name` is a server-to-user channel (`#server-to-user-<user id>`).
pub fn is_server_to_user_channel(name: &str) -> bool {
    name.strip_prefix(SERVER_TO_USER_PREFIX)
        .is_some_and(valid_user_id)
}

/// `pusher:ping` (data `{}`).
pub fn ping() -> String {
    frame("pusher:ping", None, "{}")
}

/// `pusher:pong` (data `{}`).
pub fn pong() -> String {
    frame("pusher:pong", None, "{}")
}

/// `pusher_internal:subscription_succeeded` on `channel`, data `"{}"` (public and private
/// channels).
pub fn subscription_succeeded(channel: &str) -> String {
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        &data_string("{}"),
    )
}

/// `pusher:subscription_error` on `channel`, as pusher-js reports a refused authorisation to
/// the channel's `pusher:subscription_error` handlers: data `{"type", "error", "status"}`.
pub fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    let inner = serde_json::json!({ "type": kind, "error": error, "status": status }).to_string();
    frame("pusher:subscription_error", Some(channel), &inner)
}

/// `pusher:cache_miss` on a cache channel that has no last event: `{"event", "channel"}`, no
/// data (pusher-js emits it on the channel).
pub fn cache_miss(channel: &str) -> String {
    format!(
        "{{\"event\":\"pusher:cache_miss\",\"channel\":{}}}",
        data_string(channel)
    )
}

/// An event on a channel, `data` as Pusher delivers it: a JSON string stays as it is, any other
/// JSON value is sent as the string of its JSON text. `data_json` must be valid JSON.
pub fn channel_event(event: &str, channel: &str, data_json: &str) -> String {
    channel_event_from(event, channel, data_json, None)
}

/// [`channel_event`] with the sender's `user_id` (client events on presence channels:
/// pusher-js hands it to the handler as `metadata.user_id`).
pub fn channel_event_from(
    event: &str,
    channel: &str,
    data_json: &str,
    user_id: Option<&str>,
) -> String {
    let data = if data_json.trim_start().starts_with('"') {
        data_json.trim().to_owned()
    } else {
        data_string(data_json)
    };
    let mut out = frame(event, Some(channel), &data);
    if let Some(id) = user_id {
        out.pop(); // the closing brace
        out.push_str(",\"user_id\":");
        out.push_str(&data_string(id));
        out.push('}');
    }
    out
}

/// Whether `name` is a valid Pusher channel name: 1 to 200 characters of
/// `[A-Za-z0-9_\-=@,.;]` (Pusher's alphabet).
pub fn valid_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// Negotiates `?protocol=`: `Ok(())` for 7, else the Pusher close code and reason.
pub fn negotiate(protocol: Option<&str>) -> Result<(), (u16, String)> {
    match protocol {
        None => Err((
            codes::NO_PROTOCOL,
            "no protocol version supplied (?protocol=7)".into(),
        )),
        Some(p) => match p.parse::<u32>() {
            Ok(PROTOCOL_VERSION) => Ok(()),
            Ok(v) => Err((
                codes::UNSUPPORTED_PROTOCOL,
                format!("unsupported protocol version {v}: Plexus speaks Pusher protocol 7"),
            )),
            Err(_) => Err((
                codes::INVALID_VERSION,
                "invalid protocol version format".into(),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn decodes_what_pusher_js_sends() {
        assert_eq!(
            decode_client(br#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            decode_client(
                br#"{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"k:sig"}}"#
            ),
            Ok(ClientMessage::Subscribe {
                channel: "private-a".into(),
                auth: Some("k:sig".into()),
                channel_data: None
            })
        );
        // Some clients send data as a JSON string.
        assert_eq!(
            decode_client(br#"{"event":"pusher:unsubscribe","data":"{\"channel\":\"a\"}"}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: "a".into()
            })
        );
        match decode_client(br#"{"event":"client-typing","channel":"private-a","data":{"x":1}}"#) {
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => {
                assert_eq!(event, "client-typing");
                assert_eq!(channel, "private-a");
                assert_eq!(data, r#"{"x":1}"#);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decode_client(
                br#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"7\"}"}}"#
            ),
            Ok(ClientMessage::Signin {
                auth: "k:s".into(),
                user_data: r#"{"id":"7"}"#.into()
            })
        );
        assert!(decode_client(br#"{"event":"pusher:signin","data":{"auth":"k:s"}}"#).is_err());
    }

    #[test]
    fn plexus_close_codes_become_pusher_s() {
        assert_eq!(close_code(1001), 4009);
        assert_eq!(close_code(1013), 4100);
        assert_eq!(close_code(1012), 4200);
        assert_eq!(close_code(4201), 4201);
        assert_eq!(close_code(1002), 1002);
    }

    #[test]
    fn server_frames_for_users() {
        assert_eq!(
            channel_event_from("client-a", "presence-x", "{}", Some("u\"1")),
            r#"{"event":"client-a","channel":"presence-x","data":"{}","user_id":"u\"1"}"#
        );
        assert_eq!(
            signin_success(r#"{"id":"7"}"#),
            r#"{"event":"pusher:signin_success","data":{"user_data":"{\"id\":\"7\"}"}}"#
        );
        assert_eq!(
            server_to_user_channel("u-1").as_deref(),
            Some("#server-to-user-u-1")
        );
        assert_eq!(
            server_to_user_channel("ann smith").as_deref(),
            Some("#server-to-user-ann smith")
        );
        assert_eq!(server_to_user_channel("a\nb"), None);
        assert_eq!(server_to_user_channel(""), None);
        assert_eq!(server_to_user_channel(&"a".repeat(129)), None);
    }

    #[test]
    fn refuses_what_clients_may_not_send() {
        for bad in [
            &br#"not json"#[..],
            br#"{"data":{}}"#,
            br#"{"event":"pusher:subscribe"}"#,
            br#"{"event":"pusher:subscribe","data":{"auth":"x"}}"#,
            br#"{"event":"pusher_internal:subscription_succeeded","channel":"a","data":"{}"}"#,
            br#"{"event":"hello","channel":"a","data":"{}"}"#,
            br#"{"event":"client-x","data":{}}"#,
            br#"[1,2]"#,
        ] {
            assert!(
                decode_client(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn encodes_the_server_frames_pusher_js_reads() {
        let f = v(&connection_established("123.456", 120));
        assert_eq!(f["event"], "pusher:connection_established");
        assert_eq!(
            v(f["data"].as_str().unwrap()),
            v(r#"{"socket_id":"123.456","activity_timeout":120}"#)
        );
        assert_eq!(
            v(&subscription_succeeded("a")),
            v(r#"{"event":"pusher_internal:subscription_succeeded","channel":"a","data":"{}"}"#)
        );
        assert_eq!(
            v(&error(Some(4001), "no")),
            v(r#"{"event":"pusher:error","data":{"code":4001,"message":"no"}}"#)
        );
        assert_eq!(v(&pong()), v(r#"{"event":"pusher:pong","data":{}}"#));
        // Object data is sent as its JSON text; string data as it is.
        assert_eq!(
            v(&channel_event("msg", "c", r#"{"a":"\"q\""}"#)),
            v(r#"{"event":"msg","channel":"c","data":"{\"a\":\"\\\"q\\\"\"}"}"#)
        );
        assert_eq!(
            v(&channel_event("msg", "c", r#""hi""#)),
            v(r#"{"event":"msg","channel":"c","data":"hi"}"#)
        );
        let e = v(&subscription_error("private-a", "AuthError", "bad", 401));
        assert_eq!(e["channel"], "private-a");
        assert_eq!(e["data"]["status"], 401);
    }

    #[test]
    fn channel_names_and_versions() {
        assert!(valid_channel_name("private-a_b=c@d,e.f;g-1"));
        assert!(!valid_channel_name(""));
        assert!(!valid_channel_name("a b"));
        assert!(!valid_channel_name("a/b"));
        assert!(!valid_channel_name(&"a".repeat(201)));
        assert!(valid_channel_name(&"a".repeat(200)));
        assert_eq!(negotiate(Some("7")), Ok(()));
        assert_eq!(
            negotiate(Some("5")).unwrap_err().0,
            codes::UNSUPPORTED_PROTOCOL
        );
        assert_eq!(negotiate(Some("x")).unwrap_err().0, codes::INVALID_VERSION);
        assert_eq!(negotiate(None).unwrap_err().0, codes::NO_PROTOCOL);
    }
}
