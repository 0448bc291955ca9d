//! The backend API: publish to topics and inspect channels. Requires the API key as
//! `Authorization: Bearer <api_key>`; answers JSON, errors as `{"error": reason}`.

use super::{json_error, AppState};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use plexus_core::protocol::Payload;
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// Checks `Authorization: Bearer <api_key>` in constant time; returns the refusal if any.
pub fn reject_without_api_key(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    match super::bearer(headers) {
        None => Some(json_error(
            StatusCode::UNAUTHORIZED,
            "missing API key: send Authorization: Bearer <api_key>",
        )),
        Some(k) if bool::from(k.as_bytes().ct_eq(state.config.api_key.as_bytes())) => None,
        Some(_) => Some(json_error(StatusCode::FORBIDDEN, "invalid API key")),
    }
}

/// Parses a JSON body, or answers 400 naming the expected shape and the parse error.
fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(json_error(
            StatusCode::BAD_REQUEST,
            format!("invalid body: expected {expected} ({e})"),
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    topic: String,
    event: String,
    #[serde(default)]
    payload: Option<Box<serde_json::value::RawValue>>,
}

/// `POST /api/broadcast {"topic", "event", "payload"}`.
pub async fn broadcast(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = reject_without_api_key(&state, &headers) {
        return r;
    }
    let body: BroadcastBody = match parse_body(
        &body,
        r#"{"topic": string, "event": string, "payload": any}"#,
    ) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let limits = state.node.limits();
    if body.topic.is_empty() || body.topic.len() > limits.max_topic_bytes {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("topic must be 1 to {} bytes", limits.max_topic_bytes),
        );
    }
    if body.event.is_empty()
        || body.event.len() > limits.max_event_bytes
        || body.event.starts_with("phx_")
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!(
                "event must be 1 to {} bytes and not start with phx_",
                limits.max_event_bytes
            ),
        );
    }
    let payload = match body.payload {
        Some(raw) => Payload::Json(raw),
        None => Payload::empty_object(),
    };
    match state
        .node
        .publish(&body.topic, &body.event, payload, None)
        .await
    {
        Ok(offset) => Json(serde_json::json!({ "ok": true, "offset": offset })).into_response(),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `GET /api/channels`: live topics with their subscriber counts.
pub async fn channels(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = reject_without_api_key(&state, &headers) {
        return r;
    }
    let channels: Vec<_> = state
        .node
        .channels()
        .await
        .into_iter()
        .map(|(topic, subscribers)| serde_json::json!({ "topic": topic, "subscribers": subscribers }))
        .collect();
    Json(serde_json::json!({ "channels": channels })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    sub: String,
}

/// `POST /api/disconnect {"sub": "alice"}`: closes every connection of that user on this node
/// with 1001; answers `{"disconnected": n}`.
pub async fn disconnect(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = reject_without_api_key(&state, &headers) {
        return r;
    }
    let body: DisconnectBody = match parse_body(&body, r#"{"sub": string}"#) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match state.node.disconnect_user_everywhere(&body.sub).await {
        Ok(n) => {
            tracing::info!(sub = %body.sub, connections = n, "disconnected by the API");
            Json(serde_json::json!({ "disconnected": n })).into_response()
        }
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("disconnected on this node only: {e}"),
        ),
    }
}

/// `GET /api/channels/{topic}/presence`: `{"topic": …, "presence": {key: {"metas": […]}}}`.
pub async fn presence(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(topic): axum::extract::Path<String>,
) -> Response {
    if let Some(r) = reject_without_api_key(&state, &headers) {
        return r;
    }
    let presence = state.node.presence().state(&topic).await;
    Json(serde_json::json!({ "topic": topic, "presence": presence })).into_response()
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    since: Option<u64>,
    epoch: Option<String>,
    token: Option<String>,
}

/// `GET /api/channels/{topic}/history?since=OFFSET[&epoch=E]`: HTTP polling for clients that
/// can only poll. With the API key, or a user token (`?token=` or `Authorization: Bearer`)
/// whose user may join the topic. Answers
/// `{"topic", "epoch", "offset": top, "complete": bool, "messages": [{"offset", "event", "payload"}]}`;
/// `complete: false` means messages after `since` were lost (too old, or another epoch).
pub async fn history(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    axum::extract::Path(topic): axum::extract::Path<String>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> Response {
    let bearer = super::bearer(&headers);
    let is_api_key =
        bearer.is_some_and(|k| bool::from(k.as_bytes().ct_eq(state.config.api_key.as_bytes())));
    if !is_api_key {
        let token = q.token.as_deref().or(bearer);
        if let Err(refusal) = state.node.authorize_read(peer, &headers, token, &topic) {
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
            return json_error(status, refusal.reason);
        }
    }
    if state.node.policy().history_for(&topic).is_none() {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("topic {topic} keeps no history (history_size in its channel rule)"),
        );
    }
    let epoch_ok = q.epoch.is_none();
    let page = match state.node.history(&topic, Some(q.since.unwrap_or(0))).await {
        Ok(p) => p,
        Err(e) => return json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let same_epoch = epoch_ok || q.epoch.as_deref() == Some(page.epoch.as_str());
    let page = if same_epoch {
        page
    } else {
        // Offsets of another epoch mean nothing here: everything retained, marked incomplete.
        match state.node.history(&topic, Some(0)).await {
            Ok(mut p) => {
                p.complete = false;
                p
            }
            Err(e) => return json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    };
    let messages: Vec<serde_json::Value> = page
        .items
        .iter()
        .map(|item| match &item.publication.payload {
            Payload::Json(raw) => serde_json::json!({
                "offset": item.offset,
                "event": &*item.publication.event,
                "payload": raw,
            }),
            Payload::Binary(b) => {
                use base64::Engine;
                serde_json::json!({
                    "offset": item.offset,
                    "event": &*item.publication.event,
                    "payload_base64": base64::engine::general_purpose::STANDARD.encode(b),
                })
            }
        })
        .collect();
    Json(serde_json::json!({
        "topic": topic,
        "epoch": page.epoch,
        "offset": page.top,
        "complete": page.complete,
        "messages": messages,
    }))
    .into_response()
}
