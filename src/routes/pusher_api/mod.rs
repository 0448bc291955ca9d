//! Pusher's HTTP API (only in Pusher mode, `[pusher]`), so that Pusher's official server SDKs
//! publish into Plexus unmodified: `POST /apps/{app_id}/events` and `/batch_events`,
//! `GET /apps/{app_id}/channels`, `/channels/{channel}` and `/channels/{channel}/users`,
//! `POST /apps/{app_id}/users/{user_id}/terminate_connections`.
//!
//! Every request is signed as Pusher signs it ([`plexus_core::pusher::api_auth`]): a wrong,
//! missing or stale signature is answered 401, another app id 404, both with
//! `{"error": reason}`. A Pusher channel is the Plexus topic of the same name; an event's
//! `data` string is delivered as the JSON value it encodes, or as a JSON string when it is not
//! JSON (docs/pusher.md, "HTTP API (backends)").
//!
//! Here: the routes, the signed-request extractor, channel and name checks shared by all, and
//! `terminate_connections`; publishing in `events.rs`, channel queries in `queries.rs`.

mod events;
mod queries;

use super::{json_error, read_body};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plexus_core::protocol::pusher as wire;
use plexus_core::protocol::Payload;
use plexus_core::pusher::api_auth::{self, ApiAuthError, Params};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Pusher's limits: names, channels per event, events per batch, `data` bytes.
const MAX_NAME_CHARS: usize = 200;
const MAX_CHANNELS_PER_EVENT: usize = 100;
const MAX_BATCH_EVENTS: usize = 10;

/// Adds Pusher's HTTP API to `r` (the caller mounts it only in Pusher mode).
pub fn routes(r: Router<AppState>) -> Router<AppState> {
    r.route("/apps/{app_id}/events", post(events::events))
        .route("/apps/{app_id}/batch_events", post(events::batch_events))
        .route("/apps/{app_id}/channels", get(queries::channels))
        .route("/apps/{app_id}/channels/{channel}", get(queries::channel))
        .route(
            "/apps/{app_id}/channels/{channel}/users",
            get(queries::users),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            post(terminate_connections),
        )
}

/// A request signed for this app: its other query parameters and its body. As an extractor
/// it answers 404 for another app id (or with Pusher mode off), 401 for a wrong, missing or
/// stale signature, and 429 for an address out of attempts: a wrong key or signature counts
/// like a wrong API key ([`crate::api_key::ApiGuard`]).
struct Signed {
    params: Params,
    body: Bytes,
}

impl axum::extract::FromRequest<AppState> for Signed {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        let Some(app) = state.config.pusher.as_ref() else {
            return Err(json_error(StatusCode::NOT_FOUND, "Pusher mode is off"));
        };
        // Paths are `/apps/{app_id}/…`.
        let app_id = parts.uri.path().split('/').nth(2).unwrap_or("");
        if app_id != app.app_id {
            return Err(json_error(
                StatusCode::NOT_FOUND,
                format!("no such app: {}", truncate(app_id)),
            ));
        }
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        let ip = peer.map(|p| state.node.admission().client_ip(p, &parts.headers));
        if ip.is_some_and(|ip| state.api_guard.locked(ip)) {
            let mut r = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many wrong signatures from this address: retry later",
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("6"),
            );
            return Err(r);
        }
        let body = read_body(state, body).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (method, uri) = (parts.method.as_str(), &parts.uri);
        let query = uri.query().unwrap_or("");
        match api_auth::verify(app, method, uri.path(), query, &body, now) {
            Ok(params) => Ok(Signed { params, body }),
            Err(e) => {
                // Guesses of the key or the secret count; stale or incomplete requests, which
                // are refused before any secret is compared, do not.
                if matches!(e, ApiAuthError::WrongKey | ApiAuthError::Signature) {
                    if let Some(ip) = ip {
                        state.api_guard.failed(ip);
                        tracing::warn!(client = %ip, "wrong Pusher API signature");
                    }
                }
                Err(json_error(StatusCode::UNAUTHORIZED, e.to_string()))
            }
        }
    }
}

/// A refusal of a handler: its status and reason, answered as `{"error": reason}`.
type Fail = (StatusCode, String);

fn fail(status: StatusCode, reason: impl Into<String>) -> Fail {
    (status, reason.into())
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The attributes asked for with `info` (comma-separated).
fn info_attributes(info: Option<&str>) -> Vec<&str> {
    info.map(|i| {
        i.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect()
    })
    .unwrap_or_default()
}

fn is_presence(channel: &str) -> bool {
    channel.starts_with("presence-")
}

/// A channel name this API accepts: Pusher's rule and the core's topic limit.
fn check_channel(state: &AppState, channel: &str) -> Result<(), Fail> {
    // A signed-in user's channel (`sendToUser`) is addressable too.
    if !wire::valid_channel_name(channel) && !wire::is_server_to_user_channel(channel) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid channel name {:?}: 1 to {MAX_NAME_CHARS} characters of A-Z a-z 0-9 _ - = @ , . ;",
                truncate(channel)
            ),
        ));
    }
    let limits = state.node.limits();
    if let Err(invalid) = limits.check_topic(channel) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "{invalid}: a channel name is at most {} bytes (limits.max_topic_bytes)",
                limits.max_topic_bytes
            ),
        ));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The largest `data` accepted: Pusher's 10 KiB, or `limits.max_message_bytes` if smaller.
fn max_data_bytes(state: &AppState) -> usize {
    plexus_core::pusher::MAX_DATA_BYTES.min(state.node.limits().max_message_bytes)
}

/// The path's segments, or 400 (e.g. not UTF-8 once decoded).
fn path_segments(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Path<(String, String)>, Fail> {
    path.map_err(|e| fail(StatusCode::BAD_REQUEST, e.body_text()))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, Fail> {
    serde_json::from_slice(body).map_err(|e| {
        fail(
            StatusCode::BAD_REQUEST,
            format!("invalid body: expected {shape} ({e})"),
        )
    })
}

/// `POST /apps/{app_id}/users/{user_id}/terminate_connections`: closes every connection of
/// that user in the cluster (the user id is the connection's `sub`), answers `{}`.
async fn terminate_connections(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    _signed: Signed,
) -> Response {
    let result = async {
        let Path((_, user_id)) = path_segments(path)?;
        if !wire::valid_user_id(&user_id) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "invalid user id: 1 to 128 bytes, no control characters",
            ));
        }
        match state.node.disconnect_user_everywhere(&user_id).await {
            Ok(n) => {
                tracing::info!(user_id, connections = n, "terminated by Pusher's HTTP API");
                Ok(json!({}))
            }
            Err(e) => Err(fail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("terminated on this node only: {e}"),
            )),
        }
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
}
