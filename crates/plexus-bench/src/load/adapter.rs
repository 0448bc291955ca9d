//! Protocol adapters: how each server under test is subscribed to and published to, so that
//! one generator drives them all the same way.
//!
//! Subscribers: Phoenix Channels V2 and V1 (Plexus), raw WebSocket pub/sub (`../shared/peers`
//! ws and nchan: the channel is in the URL, frames are the payload), the centrifuge JSON
//! protocol (connect command; the peer subscribes server-side from the URL), socket.io (Engine.IO
//! v4 open + ping/pong) and the Pusher protocol (Sockudo). Publishers: Plexus's
//! `POST /api/broadcast`, the peers' `POST /pub/<channel>`, and Pusher's signed
//! `POST /apps/<id>/events`.
//!
//! Every published payload carries its send time as `@T<unix µs>@`: no quotes, so the marker
//! survives any wrapping or JSON-in-a-string escaping, and a frame that batches several
//! messages (centrifuge) counts each one.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    /// Phoenix Channels V2 arrays (Plexus).
    Phoenix,
    /// Phoenix Channels V1 objects (Plexus with `vsn=1.0.0`).
    PhoenixV1,
    /// Raw WebSocket: subscribed by the URL, every frame is a message.
    Raw,
    /// centrifuge JSON protocol (connect command, server-side subscription).
    Centrifuge,
    /// socket.io / Engine.IO v4.
    Socketio,
    /// Pusher Channels protocol 7 (Sockudo, Soketi, Pusher).
    Pusher,
}

/// What a subscriber does with a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Subscribed: from now on frames are counted.
    Ready,
    /// Send this frame (a subscribe after a greeting, a pong).
    Reply(String),
    /// The server refused the subscription.
    Refused(String),
    /// Nothing to do (a frame that is neither data nor control).
    Nothing,
}

impl Proto {
    /// Frames sent right after the WebSocket opens.
    pub fn hello(self, topic: &str) -> Vec<String> {
        match self {
            Proto::Phoenix => vec![format!(r#"["1","1","{topic}","phx_join",{{}}]"#)],
            Proto::PhoenixV1 => vec![format!(
                r#"{{"topic":"{topic}","event":"phx_join","payload":{{}},"ref":"1","join_ref":"1"}}"#
            )],
            Proto::Centrifuge => vec![r#"{"id":1}"#.to_owned()],
            Proto::Socketio => vec!["40".to_owned()],
            Proto::Raw | Proto::Pusher => vec![],
        }
    }

    /// Subscribed as soon as the socket opens (nothing to wait for).
    pub fn ready_on_open(self) -> bool {
        self == Proto::Raw
    }

    /// A frame received before the subscription is confirmed.
    pub fn before_ready(self, frame: &str, topic: &str) -> Step {
        match self {
            Proto::Phoenix | Proto::PhoenixV1 => {
                if !frame.contains("phx_reply") {
                    Step::Nothing
                } else if frame.contains(r#""status":"ok""#) {
                    Step::Ready
                } else {
                    Step::Refused(frame.chars().take(200).collect())
                }
            }
            Proto::Centrifuge => {
                if frame.contains(r#""id":1,"#) && !frame.contains(r#""error""#) {
                    Step::Ready
                } else if frame.contains(r#""error""#) {
                    Step::Refused(frame.chars().take(200).collect())
                } else {
                    Step::Nothing
                }
            }
            Proto::Socketio => {
                if frame.starts_with("40") {
                    Step::Ready
                } else {
                    self.control(frame)
                }
            }
            Proto::Pusher => {
                if frame.contains("pusher:connection_established") {
                    Step::Reply(format!(
                        r#"{{"event":"pusher:subscribe","data":{{"channel":"{topic}"}}}}"#
                    ))
                } else if frame.contains("pusher_internal:subscription_succeeded") {
                    Step::Ready
                } else if frame.contains("pusher:error") {
                    Step::Refused(frame.chars().take(200).collect())
                } else {
                    self.control(frame)
                }
            }
            Proto::Raw => Step::Ready,
        }
    }

    /// Keep-alive answers the protocol expects from a client.
    pub fn control(self, frame: &str) -> Step {
        match self {
            Proto::Socketio if frame == "2" => Step::Reply("3".to_owned()),
            Proto::Pusher if frame.contains("pusher:ping") => {
                Step::Reply(r#"{"event":"pusher:pong","data":{}}"#.to_owned())
            }
            _ => Step::Nothing,
        }
    }

    /// A client heartbeat to send now and then, where the server closes silent clients.
    pub fn heartbeat(self) -> Option<&'static str> {
        match self {
            Proto::Phoenix => Some(r#"[null,"hb","phoenix","heartbeat",{}]"#),
            Proto::PhoenixV1 => {
                Some(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"hb"}"#)
            }
            _ => None,
        }
    }
}

/// The stamp marker's searcher, built once (building one per frame showed in profiles).
static STAMP: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"@T"));

/// Send times (µs) of the messages in a frame.
pub fn stamps(frame: &[u8]) -> impl Iterator<Item = u64> + '_ {
    // memchr's vectorised search: a 1 KiB payload is mostly padding, scanned once.
    STAMP.find_iter(frame).filter_map(|i| {
        let digits = &frame[i + 2..];
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
    })
}

/// The payload of message `seq`, sent at `t` µs, padded to about `size` bytes: JSON.
pub fn payload(seq: u64, t: u64, size: usize) -> String {
    let head = format!(r#"{{"s":{seq},"t":"@T{t}@","p":""#);
    let pad = size.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Publish {
    /// Plexus: `POST /api/broadcast` with a bearer API key.
    PlexusApi { key: String },
    /// The peers' recipes: `POST /pub/<channel>` with the payload as the body.
    PeerPost,
    /// Pusher HTTP API: `POST /apps/<app_id>/events`, signed with the app secret.
    Pusher {
        app_id: String,
        key: String,
        secret: String,
    },
}

/// One HTTP request: method, path with query, headers, body.
pub struct Request {
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Publish {
    pub fn request(&self, topic: &str, event: &str, payload: &str) -> Request {
        match self {
            Publish::PlexusApi { key } => Request {
                path: "/api/broadcast".into(),
                headers: vec![
                    ("Authorization", format!("Bearer {key}")),
                    ("Content-Type", "application/json".into()),
                ],
                body: format!(r#"{{"topic":"{topic}","event":"{event}","payload":{payload}}}"#)
                    .into_bytes(),
            },
            Publish::PeerPost => Request {
                path: format!("/pub/{topic}"),
                headers: vec![("Content-Type", "application/json".into())],
                body: payload.as_bytes().to_vec(),
            },
            Publish::Pusher {
                app_id,
                key,
                secret,
            } => {
                let data = serde_json::Value::String(payload.to_owned()).to_string();
                let body = format!(r#"{{"name":"{event}","channel":"{topic}","data":{data}}}"#)
                    .into_bytes();
                let path = format!("/apps/{app_id}/events");
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let md5 = hex(&md5_digest(&body));
                let query =
                    format!("auth_key={key}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}");
                let sig = hex(&hmac_sha256(
                    secret.as_bytes(),
                    format!("POST\n{path}\n{query}").as_bytes(),
                ));
                Request {
                    path: format!("{path}?{query}&auth_signature={sig}"),
                    headers: vec![("Content-Type", "application/json".into())],
                    body,
                }
            }
        }
    }
}

fn md5_digest(b: &[u8]) -> Vec<u8> {
    use md5::Digest;
    md5::Md5::digest(b).to_vec()
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    // HMAC takes keys of any length: new_from_slice cannot fail for it.
    match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_wrapping_and_batching() {
        let p = payload(7, 1_700_000_000_123_456, 80);
        assert!(p.len() >= 78 && p.len() <= 82, "{}", p.len());
        assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
        let escaped = serde_json::Value::String(p.clone()).to_string();
        let batch = format!("{{\"a\":{p}}}\n{{\"data\":{escaped}}}");
        let got: Vec<u64> = stamps(batch.as_bytes()).collect();
        assert_eq!(got, vec![1_700_000_000_123_456; 2]);
        assert_eq!(stamps(b"no marker @T here @").count(), 0);
    }

    #[test]
    fn pusher_signature_matches_the_documented_example() {
        // Pusher's HTTP API reference example (key 278d425bdf160c739803,
        // secret 7ad3773142a6692b25b8, timestamp 1353088179).
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(hex(&md5_digest(body)), "ec365a775a4cd0599faeb73354201b6f");
        let to_sign = "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f";
        assert_eq!(
            hex(&hmac_sha256(b"7ad3773142a6692b25b8", to_sign.as_bytes())),
            "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn phoenix_join_reply_decides_readiness() {
        let p = Proto::Phoenix;
        assert_eq!(
            p.before_ready(
                r#"["1","1","room:a","phx_reply",{"status":"ok","response":{}}]"#,
                "room:a"
            ),
            Step::Ready
        );
        assert!(matches!(
            p.before_ready(
                r#"["1","1","room:a","phx_reply",{"status":"error","response":{}}]"#,
                "room:a"
            ),
            Step::Refused(_)
        ));
        assert_eq!(
            Proto::Pusher.before_ready(
                r#"{"event":"pusher:connection_established","data":"{}"}"#,
                "c"
            ),
            Step::Reply(r#"{"event":"pusher:subscribe","data":{"channel":"c"}}"#.into())
        );
    }
}
