//! The live tail: `GET /admin/api/tail?topic=T` streams every broadcast on `T` (client pushes,
//! API broadcasts, presence diffs) as Server-Sent Events, `data: {"topic", "event",
//! "payload", "offset"}`, like Pusher's debug console. The page reads it with `fetch` (which can
//! send the session header, unlike `EventSource`).
//!
//! The tail subscribes to the topic like a connection would (with an id of its own, never a
//! client's), so on a cluster it sees the whole cluster's broadcasts, and it counts as one
//! subscriber while it is open, everywhere (topic lists, `channel_occupied` / `channel_vacated`
//! webhooks): a subscriber hidden from the counts would suppress those webhooks. Its queue is bounded as a client's outbox is; a tail that
//! cannot keep up is ended (the page reopens it). At most [`MAX_TAILS`] are open per node.

use super::AdminAuth;
use crate::routes::json_error;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use plexus_core::outbox::Outbox;
use plexus_core::protocol::Payload;
use plexus_core::{ConnId, Node};
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Live tails open at once on one node.
pub const MAX_TAILS: usize = 16;
/// Subscriber ids of tails: the top bit set, never a connection's (those count up from 1).
const TAIL_ID_BASE: ConnId = 1 << 63;
/// A comment line this often keeps proxies from closing an idle tail.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub struct TailQuery {
    topic: Option<String>,
}

/// Unsubscribes the tail and frees its slot when the stream is dropped (the page closed it).
struct Subscription {
    node: Arc<Node>,
    admin: Arc<super::Admin>,
    topic: String,
    id: ConnId,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.admin.tails.fetch_sub(1, Ordering::Relaxed);
        if self.node.unsubscribe_local(&self.topic, self.id, None) {
            let node = self.node.clone();
            let topic = std::mem::take(&mut self.topic);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { node.unsubscribe_remote(&topic).await });
            }
        }
    }
}

/// One SSE event for a broadcast.
fn event(p: &plexus_core::publication::Publication) -> String {
    let mut data = serde_json::json!({
        "topic": &*p.topic,
        "event": &*p.event,
        "offset": p.offset,
    });
    match &p.payload {
        Payload::Json(raw) => data["payload"] = serde_json::from_str(raw.get()).unwrap_or_default(),
        Payload::Binary(b) => {
            data["payload_base64"] = base64::engine::general_purpose::STANDARD.encode(b).into();
        }
    }
    format!("data: {data}\n\n")
}

/// `GET /admin/api/tail?topic=T`.
pub async fn stream(
    State(state): State<AppState>,
    _: AdminAuth,
    Query(q): Query<TailQuery>,
) -> Response {
    let Some(topic) = q.topic.filter(|t| !t.is_empty()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "give a topic: /admin/api/tail?topic=room:lobby",
        );
    };
    let limits = state.node.limits();
    if let Err(invalid) = limits.check_topic(&topic) {
        return json_error(StatusCode::BAD_REQUEST, invalid.to_string());
    }
    let admin = state.admin.clone();
    if admin.tails.fetch_add(1, Ordering::Relaxed) >= MAX_TAILS {
        admin.tails.fetch_sub(1, Ordering::Relaxed);
        return json_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!("at most {MAX_TAILS} live tails per node: close one"),
        );
    }
    let id = TAIL_ID_BASE | admin.next_tail.fetch_add(1, Ordering::Relaxed);
    let outbox = Arc::new(Outbox::new(
        limits.outbox_max_frames,
        limits.outbox_max_bytes,
    ));
    let node = state.node.clone();
    node.subscribe(&topic, id, outbox.clone(), true, None).await;
    tracing::info!(topic, "admin live tail opened");
    let sub = Subscription {
        node,
        admin,
        topic: topic.clone(),
        id,
    };
    let first = format!(
        "retry: 2000\n\nevent: subscribed\ndata: {}\n\n",
        serde_json::json!({ "topic": topic })
    );
    let init = (sub, outbox, Some(first), false);
    let events = futures_util::stream::unfold(init, |(sub, outbox, first, done)| async move {
        if done {
            return None;
        }
        if let Some(first) = first {
            return Some((
                Ok::<_, std::convert::Infallible>(first),
                (sub, outbox, None, false),
            ));
        }
        let mut items = Vec::new();
        loop {
            let closed = outbox.drain_into(&mut items);
            let mut out = String::new();
            for item in &items {
                if let Some(p) = item.publication() {
                    out.push_str(&event(p));
                }
            }
            items.clear();
            if let Some(reason) = closed {
                out.push_str(&format!(
                    "event: closed\ndata: {}\n\n",
                    serde_json::json!({ "code": reason.code, "reason": reason.reason })
                ));
                return Some((Ok(out), (sub, outbox, None, true)));
            }
            if !out.is_empty() {
                return Some((Ok(out), (sub, outbox, None, false)));
            }
            if tokio::time::timeout(KEEPALIVE, outbox.changed())
                .await
                .is_err()
            {
                return Some((
                    Ok(": keep-alive\n\n".to_owned()),
                    (sub, outbox, None, false),
                ));
            }
        }
    });
    let mut res = Body::from_stream(events).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}
