//! Server-Sent Events: a subscribe-only transport for `EventSource` clients.
//!
//! `GET /sse?topic=a&topic=b` opens one stream that joins every listed topic through an
//! ordinary [`Socket`] (so join rules, limits, presence and history apply as on WebSocket) and
//! turns what the socket receives into events:
//!
//! * a broadcast → `data: {"topic", "event", "payload", "offset"?}` (binary payloads as
//!   `"payload_base64"`), with an `id:` that records the stream's position in every history
//!   topic (`topic=epoch:offset&…`, URL-encoded), so that the browser's automatic reconnect
//!   with `Last-Event-ID` resumes without loss;
//! * `event: joined` / `event: join_error` per topic, with the join reply;
//! * `presence_state` / `presence_diff` as data events like broadcasts;
//! * a `: keep-alive` comment every [`KEEPALIVE`].
//!
//! The stream ends when the server closes the connection (drain, disconnect, slow consumer,
//! expired token); `EventSource` then reconnects by itself.

use crate::admission::Permit;
use crate::auth::Identity;
use crate::channel::{JoinOutcome, JoinRequest};
use crate::node::Node;
use crate::outbox::{Outbox, Outgoing};
use crate::protocol::{events, Payload};
use crate::socket::{Draining, Socket};
use base64::Engine;
use bytes::Bytes;
use futures_util::Stream;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Interval of keep-alive comments.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// A topic's position: epoch and last offset seen.
type Positions = HashMap<String, (String, u64)>;

/// Parses a `Last-Event-ID` written by [`format_id`].
pub fn parse_id(id: &str) -> Positions {
    form_urlencoded::parse(id.as_bytes())
        .filter_map(|(topic, pos)| {
            let (epoch, offset) = pos.rsplit_once(':')?;
            Some((topic.into_owned(), (epoch.to_owned(), offset.parse().ok()?)))
        })
        .collect()
}

/// `topic=epoch:offset&…` for every topic with a known position, sorted for stability.
pub fn format_id(positions: &Positions) -> String {
    let mut topics: Vec<&String> = positions.keys().collect();
    topics.sort();
    let mut s = form_urlencoded::Serializer::new(String::new());
    for t in topics {
        let (epoch, offset) = &positions[t];
        s.append_pair(t, &format!("{epoch}:{offset}"));
    }
    s.finish()
}

struct StreamState {
    socket: Socket,
    outbox: Arc<Outbox>,
    positions: Positions,
    /// The `joined` / `join_error` events, sent first.
    joins: String,
    done: bool,
}

/// Joins `topics` for `identity` and returns the event stream. The caller has checked the
/// join rules (to refuse with 403 before the stream starts).
pub async fn open(
    node: Arc<Node>,
    identity: Identity,
    permit: Permit,
    topics: &[String],
    last_event_id: Option<&str>,
) -> Result<impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static, Draining>
{
    let mut socket = Socket::open(node, identity, permit)?;
    let outbox = socket.outbox().clone();
    let mut positions = last_event_id.map(parse_id).unwrap_or_default();
    let mut joins = String::from("retry: 2000\n\n");
    for topic in topics {
        let params = match positions.get(topic) {
            Some((epoch, offset)) => {
                serde_json::json!({"recover": {"epoch": epoch, "offset": offset}})
            }
            None => serde_json::json!({}),
        };
        let params = Payload::json(&params).unwrap_or_else(|_| Payload::empty_object());
        let outcome = socket
            .join(JoinRequest {
                unmatched: None,
                member: None,
                topic,
                join_ref: None,
                msg_ref: None,
                params: &params,
                reply: false,
            })
            .await;
        match &outcome {
            JoinOutcome::Joined(reply) => {
                if let (Some(epoch), Some(offset)) = (&reply.epoch, reply.offset) {
                    // A lost gap (or no resume): start from the current top.
                    if reply.recovered != Some(true) {
                        positions.insert(topic.clone(), (epoch.clone(), offset));
                    }
                }
            }
            JoinOutcome::Refused { .. } => {
                positions.remove(topic);
            }
        }
        let (status, response) = outcome.reply();
        let data = serde_json::json!({ "topic": topic, "response": response.as_json() });
        let name = if status == "ok" {
            "joined"
        } else {
            "join_error"
        };
        write_event(&mut joins, Some(name), None, &data.to_string());
    }
    let state = StreamState {
        socket,
        outbox,
        positions,
        joins,
        done: false,
    };
    Ok(futures_util::stream::unfold(state, next_chunk))
}

async fn next_chunk(
    mut st: StreamState,
) -> Option<(Result<Bytes, std::convert::Infallible>, StreamState)> {
    if st.done {
        st.socket.close().await;
        return None;
    }
    let mut out = std::mem::take(&mut st.joins);
    loop {
        let mut items = Vec::new();
        let close = st.outbox.drain_into(&mut items);
        for item in items {
            render(&mut st, item, &mut out);
        }
        if let Some(c) = close {
            out.push_str(&format!(": closed {} {}\n\n", c.code, c.reason));
            st.done = true;
        }
        if !out.is_empty() {
            return Some((Ok(Bytes::from(out)), st));
        }
        if st.socket.expiry().expired(tokio::time::Instant::now()) {
            st.done = true;
            return Some((Ok(Bytes::from_static(b": token expired\n\n")), st));
        }
        tokio::select! {
            _ = st.outbox.changed() => {}
            _ = tokio::time::sleep(KEEPALIVE) => {
                return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st));
            }
        }
    }
}

/// Appends the SSE text of one outbound message: broadcasts (presence diffs included) and
/// `presence_state`; replies and other pushes mean nothing to an `EventSource`.
fn render(st: &mut StreamState, item: Outgoing, out: &mut String) {
    let (topic, event, payload, offset): (&str, &str, &Payload, Option<u64>) = match &item {
        Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => {
            // Handed to the response stream: the publish→write histogram's first write.
            p.written();
            (&p.topic, &p.event, &p.payload, p.offset)
        }
        Outgoing::Push(p) if p.event == events::PRESENCE_STATE => {
            (&p.topic, p.event, &p.payload, None)
        }
        _ => return,
    };
    // The payload is written as it came (raw JSON, never re-parsed): whatever a client could
    // send, an EventSource receives the same.
    #[derive(serde::Serialize)]
    struct Data<'a> {
        topic: &'a str,
        event: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a serde_json::value::RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload_base64: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    }
    let data = Data {
        topic,
        event,
        payload: payload.as_json(),
        payload_base64: match payload {
            Payload::Binary(b) => Some(base64::engine::general_purpose::STANDARD.encode(b)),
            Payload::Json(_) => None,
        },
        offset,
    };
    let mut id = None;
    if let Some(offset) = offset {
        if let Some(pos) = st.positions.get_mut(topic) {
            pos.1 = offset;
        }
        id = Some(format_id(&st.positions));
    }
    let Ok(text) = serde_json::to_string(&data) else {
        return;
    };
    write_event(out, None, id.as_deref(), &text);
}

fn write_event(out: &mut String, event: Option<&str>, id: Option<&str>, data: &str) {
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    if let Some(e) = event {
        out.push_str("event: ");
        out.push_str(e);
        out.push('\n');
    }
    // A raw JSON payload may hold `\r` as whitespace; to EventSource it ends a line too.
    for line in data.split(['\n', '\r']) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carriage_returns_do_not_split_an_event() {
        let mut out = String::new();
        write_event(&mut out, None, None, "{\"a\":1\r\r,\"b\":2}");
        assert_eq!(out, "data: {\"a\":1\ndata: \ndata: ,\"b\":2}\n\n");
        // What an EventSource rebuilds: the data lines joined with \n, valid JSON.
        let rebuilt: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let v: serde_json::Value = serde_json::from_str(&rebuilt.join("\n")).unwrap();
        assert_eq!(v["b"], 2);
    }

    #[test]
    fn ids_round_trip_with_odd_topics() {
        let mut p = Positions::new();
        p.insert("room:a&b=c".into(), ("e1-2".into(), 12));
        p.insert("room:z".into(), ("e1-3".into(), 7));
        let id = format_id(&p);
        assert!(!id.contains('\n'));
        assert_eq!(parse_id(&id), p);
        assert!(parse_id("garbage").is_empty());
    }
}
