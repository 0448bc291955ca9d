//! The backend API: publish to topics and inspect channels. Requires the API key as
//! `Authorization: Bearer <api_key>`; answers JSON, errors as `{"error": reason}`.

use super::{json_error, ApiJson, BodyShape, Refused};
use crate::api_key::{has_api_key, ApiKey};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use plexus_core::protocol::Payload;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    topic: String,
    event: String,
    #[serde(default)]
    payload: Option<Box<serde_json::value::RawValue>>,
}

impl BodyShape for BroadcastBody {
    const SHAPE: &'static str = r#"{"topic": string, "event": string, "payload": any}"#;
}

/// `POST /api/broadcast {"topic", "event", "payload"}`.
pub async fn broadcast(
    State(state): State<AppState>,
    _: ApiKey,
    ApiJson(body): ApiJson<BroadcastBody>,
) -> Response {
    publish(&state, body).await
}

/// Checks and publishes a broadcast body (the API's and the admin console's).
pub async fn publish(state: &AppState, body: BroadcastBody) -> Response {
    let payload = match body.payload {
        Some(raw) => Payload::Json(raw),
        None => Payload::empty_object(),
    };
    let (event, payload) = match prepare(&state.node, &body.topic, &body.event, payload) {
        Ok(checked) => checked,
        Err(invalid) => return json_error(StatusCode::BAD_REQUEST, invalid),
    };
    match state.node.publish(&body.topic, event, payload, None).await {
        Ok(offset) => Json(serde_json::json!({ "ok": true, "offset": offset })).into_response(),
        Err(e) => json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Checks a server broadcast (the API's, the admin console's, the embedding application's:
/// [`crate::embed`]): a valid topic, an event that is valid and not the server's own
/// (`phx_*`); on a Supabase channel the event travels in Supabase's broadcast envelope, which
/// its clients' `on('broadcast', {event})` listens for. The event and payload to publish, or
/// why not.
pub(crate) fn prepare<'a>(
    node: &plexus_core::Node,
    topic: &str,
    event: &'a str,
    payload: Payload,
) -> Result<(&'a str, Payload), String> {
    let limits = node.limits();
    if let Err(invalid) = limits.check_topic(topic) {
        return Err(format!(
            "{invalid}: a topic is 1 to {} bytes",
            limits.max_topic_bytes
        ));
    }
    if let Err(invalid) = limits.check_event(event) {
        return Err(format!(
            "{invalid}: an event is 1 to {} bytes and does not start with phx_",
            limits.max_event_bytes
        ));
    }
    if node.policy().supabase_name(topic).is_some() {
        return match plexus_core::supabase::envelope(event, &payload) {
            Ok(p) => Ok((plexus_core::protocol::events::BROADCAST, p)),
            Err(e) => Err(e.to_string()),
        };
    }
    Ok((event, payload))
}

/// `GET /api/channels`: live topics with their subscriber counts.
pub async fn channels(State(state): State<AppState>, _: ApiKey) -> Response {
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
    pub sub: String,
}

impl BodyShape for DisconnectBody {
    const SHAPE: &'static str = r#"{"sub": string}"#;
}

/// `POST /api/disconnect {"sub": "alice"}`: closes every connection of that user in the
/// cluster with 1001; answers `{"disconnected": n}` (this node's count).
pub async fn disconnect(
    State(state): State<AppState>,
    _: ApiKey,
    ApiJson(body): ApiJson<DisconnectBody>,
) -> Response {
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
    _: ApiKey,
    axum::extract::Path(topic): axum::extract::Path<String>,
) -> Response {
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
    // An address out of API key attempts waits here too, before any key is compared.
    let bearer = crate::api_key::bearer(&headers);
    if bearer.is_some() {
        if let Some(locked) = crate::api_key::api_key_lockout(&state, &headers, peer) {
            return locked;
        }
    }
    if !has_api_key(&state, &headers) {
        // A bearer that is not the API key may be a user token; if it is refused, it counts as
        // a wrong API key (else this endpoint would be a way around the throttle).
        let token = q.token.as_deref().or(bearer);
        let identity = match state
            .node
            .authorize_read(peer, &headers, token, &topic)
            .await
        {
            Ok(identity) => identity,
            Err(refusal) => {
                if bearer.is_some() && q.token.is_none() {
                    crate::api_key::api_key_failed(&state, &headers, peer);
                }
                return Refused(refusal).into_response();
            }
        };
        // A valid user token: the application's join hook decides too (not a wrong API key).
        let hook = state
            .node
            .read_hook(&identity, peer, &headers, &topic)
            .await;
        if let Err(refusal) = hook {
            return Refused(refusal).into_response();
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
