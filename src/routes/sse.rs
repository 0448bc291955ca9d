//! `GET /sse?topic=a&topic=b`: Server-Sent Events for subscribe-only clients (see the core's
//! `transport::sse`). The token comes from `?token=` or `Authorization: Bearer`; the connection
//! is admitted like a WebSocket, and every topic must pass its join rule, else 403 with the
//! topic named. `Last-Event-ID` (header, or `?lastEventId=` for a first connect) resumes.

use super::{json_error, Refused};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use plexus_core::transport::sse;
use std::net::SocketAddr;

pub async fn stream(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    slot: crate::gate::Slot,
    headers: HeaderMap,
) -> Response {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // Each topic once, in the order given (a repeated topic is not joined twice).
    let mut seen = std::collections::HashSet::new();
    let topics: Vec<String> = pairs
        .iter()
        .filter(|(k, v)| k == "topic" && !v.is_empty() && seen.insert(v.as_str()))
        .map(|(_, v)| v.clone())
        .collect();
    let max = state.node.limits().max_channels_per_connection;
    if topics.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "give at least one topic: /sse?topic=room:lobby",
        );
    }
    if topics.len() > max {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("at most {max} topics per stream"),
        );
    }
    let token = param("token").or_else(|| crate::api_key::bearer(&headers).map(str::to_owned));
    let node = state.node.clone();
    let (identity, permit) = match node.admit(peer, &headers, token.as_deref()).await {
        Ok(a) => a,
        Err(refusal) => return Refused(refusal).into_response(),
    };
    for topic in &topics {
        if let Err(denied) = node.policy().authorize_join(&identity, topic) {
            tracing::info!(sub = %identity.sub, topic, "sse topic refused");
            return json_error(StatusCode::FORBIDDEN, format!("{}: {topic}", denied.0));
        }
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| param("lastEventId"));
    let events = match sse::open(node, identity, permit, &topics, last_event_id.as_deref()).await {
        Ok(s) => s,
        Err(_) => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server draining, reconnect to another node",
            )
        }
    };
    // An admitted client now: its stream leaves the gate of connections not yet admitted.
    slot.release();
    // Counted while the stream lives (its body is dropped when the client goes).
    let counted =
        crate::transport_counts::TransportCounts::open(crate::transport_counts::Counted::Sse);
    let events = futures_util::StreamExt::map(events, move |item| {
        let _ = &counted;
        item
    });
    let mut res = Body::from_stream(events).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(origin) = headers.get(header::ORIGIN) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    res
}
