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
use crate::node::Node;
use crate::outbox::Outbox;
use crate::protocol::{
    decode_server_binary, decode_server_text, events, Frame, Message, Payload, ServerBinary,
};
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
    /// join_ref → topic, to recognise the replies to our joins.
    joins: HashMap<String, String>,
    done: bool,
    first: bool,
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
    let resume = last_event_id.map(parse_id).unwrap_or_default();
    let mut joins = HashMap::new();
    for (i, topic) in topics.iter().enumerate() {
        let join_ref = format!("sse{i}");
        let params = match resume.get(topic) {
            Some((epoch, offset)) => {
                serde_json::json!({"recover": {"epoch": epoch, "offset": offset}})
            }
            None => serde_json::json!({}),
        };
        joins.insert(join_ref.clone(), topic.clone());
        let msg = Message {
            join_ref: Some(join_ref.clone()),
            msg_ref: Some(join_ref),
            topic: topic.clone(),
            event: events::JOIN.to_owned(),
            payload: Payload::json(&params).unwrap_or_else(|_| Payload::empty_object()),
        };
        socket.handle(msg).await;
    }
    let state = StreamState {
        socket,
        outbox,
        positions: resume,
        joins,
        done: false,
        first: true,
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
    let mut out = String::new();
    if st.first {
        st.first = false;
        out.push_str("retry: 2000\n\n");
    }
    loop {
        let mut frames = Vec::new();
        let close = st.outbox.drain_into(&mut frames);
        for frame in frames {
            render(&mut st, frame, &mut out);
        }
        if let Some(c) = close {
            out.push_str(&format!(": closed {} {}\n\n", c.code, c.reason));
            st.done = true;
        }
        if !out.is_empty() {
            return Some((Ok(Bytes::from(out)), st));
        }
        let expired = st
            .socket
            .identity()
            .expires_at
            .is_some_and(|exp| exp <= crate::auth::unix_now());
        if expired {
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

/// Appends the SSE text of one outbound frame.
fn render(st: &mut StreamState, frame: Frame, out: &mut String) {
    let (topic, event, msg_ref, join_ref, payload) = match frame {
        Frame::Text(b) => match decode_server_text(&b) {
            Ok(m) => (m.topic, m.event, m.msg_ref, m.join_ref, m.payload),
            Err(_) => return,
        },
        Frame::Binary(b) => match decode_server_binary(&b) {
            Ok(ServerBinary::Broadcast {
                topic,
                event,
                payload,
            }) => (topic, event, None, None, Payload::Binary(payload)),
            Ok(ServerBinary::Push {
                topic,
                event,
                payload,
                join_ref,
            }) => (topic, event, None, join_ref, Payload::Binary(payload)),
            _ => return,
        },
    };
    if event == events::REPLY {
        let Some(topic) = msg_ref.as_ref().and_then(|r| st.joins.remove(r)) else {
            return;
        };
        let reply: serde_json::Value = payload
            .as_json()
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or_default();
        let ok = reply["status"] == "ok";
        let response = &reply["response"];
        if ok {
            if let (Some(epoch), Some(offset)) =
                (response["epoch"].as_str(), response["offset"].as_u64())
            {
                let recovered = response["recovered"].as_bool();
                // A lost gap (or no resume): start from the current top.
                let keep = recovered == Some(true);
                let entry = st
                    .positions
                    .entry(topic.clone())
                    .or_insert((epoch.to_owned(), offset));
                if !keep {
                    *entry = (epoch.to_owned(), offset);
                }
            }
        } else {
            st.positions.remove(&topic);
        }
        let data = serde_json::json!({ "topic": topic, "response": response });
        write_event(
            out,
            Some(if ok { "joined" } else { "join_error" }),
            None,
            &data.to_string(),
        );
        return;
    }
    if event == events::CLOSE || (join_ref.is_some() && event != events::PRESENCE_STATE) {
        return;
    }
    let offset = msg_ref.as_deref().and_then(|r| r.parse::<u64>().ok());
    let mut data = serde_json::Map::new();
    data.insert("topic".into(), topic.clone().into());
    data.insert("event".into(), event.into());
    match &payload {
        Payload::Json(raw) => {
            data.insert(
                "payload".into(),
                serde_json::from_str(raw.get()).unwrap_or_default(),
            );
        }
        Payload::Binary(b) => {
            data.insert(
                "payload_base64".into(),
                base64::engine::general_purpose::STANDARD.encode(b).into(),
            );
        }
    }
    let mut id = None;
    if let Some(offset) = offset {
        data.insert("offset".into(), offset.into());
        if let Some(pos) = st.positions.get_mut(&topic) {
            pos.1 = offset;
        }
        id = Some(format_id(&st.positions));
    }
    write_event(
        out,
        None,
        id.as_deref(),
        &serde_json::Value::Object(data).to_string(),
    );
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
    for line in data.split('\n') {
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
