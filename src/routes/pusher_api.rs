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
    r.route("/apps/{app_id}/events", post(events))
        .route("/apps/{app_id}/batch_events", post(batch_events))
        .route("/apps/{app_id}/channels", get(channels))
        .route("/apps/{app_id}/channels/{channel}", get(channel))
        .route("/apps/{app_id}/channels/{channel}/users", get(users))
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

/// One event of `POST /events` or of a batch.
#[derive(Deserialize)]
struct EventBody {
    name: String,
    data: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

const EVENT_SHAPE: &str = r#"{"name": string, "data": string, "channels": [string] or "channel": string, "socket_id"?: string, "info"?: string}"#;

/// A checked event, ready to publish.
struct Checked {
    name: String,
    payload: Box<serde_json::value::RawValue>,
    channels: Vec<String>,
    info: Vec<String>,
}

/// Checks an event against Pusher's limits and the core's: 400 (413 for `data`).
fn check_event(state: &AppState, e: EventBody) -> Result<Checked, Fail> {
    let channels = match (e.channel, e.channels) {
        (Some(c), None) => vec![c],
        (None, Some(cs)) => cs,
        _ => {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "give either \"channel\" or \"channels\"",
            ))
        }
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS_PER_EVENT {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "an event goes to 1 to {MAX_CHANNELS_PER_EVENT} channels, not {}",
                channels.len()
            ),
        ));
    }
    for c in &channels {
        check_channel(state, c)?;
    }
    if e.name.is_empty() || e.name.chars().count() > MAX_NAME_CHARS {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!("an event name is 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    if e.name.starts_with("pusher:") || e.name.starts_with("pusher_internal:") {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            "event names starting with pusher: or pusher_internal: are reserved for the protocol",
        ));
    }
    let limits = state.node.limits();
    if let Err(invalid) = limits.check_event(&e.name) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "{invalid}: an event name is at most {} bytes and does not start with phx_",
                limits.max_event_bytes
            ),
        ));
    }
    let max = max_data_bytes(state);
    if e.data.len() > max {
        return Err(fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "data is {} bytes, more than {max} (Pusher's 10 KiB, or limits.max_message_bytes if smaller)",
                e.data.len()
            ),
        ));
    }
    if let Some(socket_id) = &e.socket_id {
        if !plexus_core::pusher::valid_socket_id(socket_id) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid socket_id {:?}: expected digits.digits",
                    truncate(socket_id)
                ),
            ));
        }
    }
    let info: Vec<String> = info_attributes(e.info.as_deref())
        .into_iter()
        .map(String::from)
        .collect();
    for attr in &info {
        check_info_attribute(attr, channels.iter().all(|c| is_presence(c)))?;
    }
    Ok(Checked {
        name: e.name,
        payload: data_payload(e.data)?,
        channels,
        info,
    })
}

/// `subscription_count` anywhere; `user_count` on presence channels only (as Pusher).
fn check_info_attribute(attr: &str, presence: bool) -> Result<(), Fail> {
    match attr {
        "subscription_count" => Ok(()),
        "user_count" if presence => Ok(()),
        "user_count" => Err(fail(
            StatusCode::BAD_REQUEST,
            "info=user_count is only for presence- channels",
        )),
        other => Err(fail(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown info attribute {:?} (subscription_count, user_count)",
                truncate(other)
            ),
        )),
    }
}

/// Pusher's `data` is a string: Phoenix clients get the JSON value it encodes, or the string
/// itself (as a JSON string) when it is not JSON.
fn data_payload(data: String) -> Result<Box<serde_json::value::RawValue>, Fail> {
    let raw = if serde_json::from_str::<serde::de::IgnoredAny>(&data).is_ok() {
        serde_json::value::RawValue::from_string(data)
    } else {
        serde_json::value::to_raw_value(&data)
    };
    raw.map_err(|e| fail(StatusCode::BAD_REQUEST, format!("data not encodable: {e}")))
}

/// Publishes a checked event to each of its channels; 503 if the broker refuses.
async fn publish(state: &AppState, e: &Checked, socket_id: Option<&str>) -> Result<(), Fail> {
    // The connection with that socket_id, on whichever node, does not receive it.
    let sender = plexus_core::publication::Sender {
        presence_key: None,
        exclude_socket: socket_id.map(Into::into),
    };
    for channel in &e.channels {
        let payload = Payload::Json(e.payload.clone());
        let published = state
            .node
            .publish_from(channel, &e.name, payload, None, sender.clone())
            .await;
        if let Err(err) = published {
            return Err(fail(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not published to {channel}: {err}"),
            ));
        }
    }
    Ok(())
}

/// Subscriber counts of live topics (cluster-wide when the broker knows them).
async fn occupancy(state: &AppState) -> std::collections::HashMap<String, usize> {
    state.node.channels().await.into_iter().collect()
}

/// Users present on `channel`: the keys of its Plexus presence (cluster-wide).
async fn presence_users(state: &AppState, channel: &str) -> Vec<String> {
    match state.node.presence().state(channel).await {
        Value::Object(map) => map.into_iter().map(|(k, _)| k).collect(),
        _ => Vec::new(),
    }
}

/// `{attr: n}` for the asked attributes of one channel.
async fn channel_attributes(
    state: &AppState,
    occupied: &std::collections::HashMap<String, usize>,
    channel: &str,
    info: &[impl AsRef<str>],
) -> Map<String, Value> {
    let mut m = Map::new();
    for attr in info {
        match attr.as_ref() {
            "subscription_count" => {
                let n = occupied.get(channel).copied().unwrap_or(0);
                m.insert("subscription_count".into(), json!(n));
            }
            "user_count" => {
                let n = presence_users(state, channel).await.len();
                m.insert("user_count".into(), json!(n));
            }
            _ => {}
        }
    }
    m
}

/// The answer to an event: `{}`, or `{"channels": {name: {attr: n}}}` when `info` asked.
async fn event_answer(state: &AppState, e: &Checked) -> Map<String, Value> {
    let mut channels = Map::new();
    if e.info.is_empty() {
        return channels;
    }
    let occupied = occupancy(state).await;
    for c in &e.channels {
        let attrs = channel_attributes(state, &occupied, c, &e.info).await;
        channels.insert(c.clone(), Value::Object(attrs));
    }
    channels
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

/// `POST /apps/{app_id}/events`: answers `{}` (or the channels' `info`).
async fn events(State(state): State<AppState>, signed: Signed) -> Response {
    let result = async {
        let body = signed.body;
        let e: EventBody = parse(&body, EVENT_SHAPE)?;
        let socket_id = e.socket_id.clone();
        let checked = check_event(&state, e)?;
        publish(&state, &checked, socket_id.as_deref()).await?;
        let channels = event_answer(&state, &checked).await;
        Ok::<_, Fail>(if channels.is_empty() {
            json!({})
        } else {
            json!({ "channels": channels })
        })
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
}

#[derive(Deserialize)]
struct BatchBody {
    batch: Vec<EventBody>,
}

/// `POST /apps/{app_id}/batch_events {"batch": [event…]}`: up to 10 events, each with one
/// `channel`; all are checked before any is published. Answers `{}`, or
/// `{"batch": [{attr: n}…]}` when an event asked `info`.
async fn batch_events(State(state): State<AppState>, signed: Signed) -> Response {
    let result = async {
        let body = signed.body;
        let shape = format!(r#"{{"batch": [{EVENT_SHAPE}]}}"#);
        let b: BatchBody = parse(&body, &shape)?;
        if b.batch.len() > MAX_BATCH_EVENTS {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "a batch holds at most {MAX_BATCH_EVENTS} events, not {}",
                    b.batch.len()
                ),
            ));
        }
        let mut checked = Vec::with_capacity(b.batch.len());
        for e in b.batch {
            if e.channels.is_some() {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "an event of a batch has one \"channel\", not \"channels\"",
                ));
            }
            let socket_id = e.socket_id.clone();
            checked.push((check_event(&state, e)?, socket_id));
        }
        for (e, socket_id) in &checked {
            publish(&state, e, socket_id.as_deref()).await?;
        }
        if checked.iter().all(|(e, _)| e.info.is_empty()) {
            return Ok(json!({}));
        }
        let occupied = occupancy(&state).await;
        let mut answers = Vec::with_capacity(checked.len());
        for (e, _) in &checked {
            let attrs = match e.channels.first() {
                Some(c) => channel_attributes(&state, &occupied, c, &e.info).await,
                None => Map::new(),
            };
            answers.push(Value::Object(attrs));
        }
        Ok::<_, Fail>(json!({ "batch": answers }))
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
}

/// `GET /apps/{app_id}/channels[?filter_by_prefix=P][&info=user_count]`: occupied channels
/// whose names are Pusher channel names, `{"channels": {name: {}|{"user_count": n}}}`;
/// `user_count` needs `filter_by_prefix=presence-`.
async fn channels(State(state): State<AppState>, signed: Signed) -> Response {
    let result = async {
        let params = signed.params;
        let prefix = param(&params, "filter_by_prefix").unwrap_or("");
        let info = info_attributes(param(&params, "info"));
        for attr in &info {
            if *attr != "user_count" {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown info attribute {:?} for the channel list (user_count)",
                        truncate(attr)
                    ),
                ));
            }
            if !is_presence(prefix) {
                return Err(fail(
                    StatusCode::BAD_REQUEST,
                    "info=user_count needs filter_by_prefix=presence-",
                ));
            }
        }
        let occupied = occupancy(&state).await;
        let mut names: Vec<&String> = occupied
            .iter()
            .filter(|(name, n)| {
                **n > 0 && name.starts_with(prefix) && wire::valid_channel_name(name)
            })
            .map(|(name, _)| name)
            .collect();
        names.sort();
        let mut channels = Map::new();
        for name in names {
            let attrs = channel_attributes(&state, &occupied, name, &info).await;
            channels.insert(name.clone(), Value::Object(attrs));
        }
        Ok::<_, Fail>(json!({ "channels": channels }))
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
}

/// `GET /apps/{app_id}/channels/{channel}[?info=subscription_count,user_count]`:
/// `{"occupied": bool, …attributes}`.
async fn channel(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    signed: Signed,
) -> Response {
    let result = async {
        let Path((_, channel)) = path_segments(path)?;
        let params = signed.params;
        check_channel(&state, &channel)?;
        let info = info_attributes(param(&params, "info"));
        for attr in &info {
            check_info_attribute(attr, is_presence(&channel))?;
        }
        let occupied = occupancy(&state).await;
        let mut answer = Map::new();
        let n = occupied.get(&channel).copied().unwrap_or(0);
        answer.insert("occupied".into(), json!(n > 0));
        answer.extend(channel_attributes(&state, &occupied, &channel, &info).await);
        Ok::<_, Fail>(Value::Object(answer))
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
}

/// `GET /apps/{app_id}/channels/{channel}/users`: presence channels only,
/// `{"users": [{"id": …}]}` (the keys of the topic's presence, cluster-wide).
async fn users(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    _signed: Signed,
) -> Response {
    let result = async {
        let Path((_, channel)) = path_segments(path)?;
        check_channel(&state, &channel)?;
        if !is_presence(&channel) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                "users are only listed for presence- channels",
            ));
        }
        let mut ids = presence_users(&state, &channel).await;
        ids.sort();
        let users: Vec<Value> = ids.into_iter().map(|id| json!({ "id": id })).collect();
        Ok::<_, Fail>(json!({ "users": users }))
    };
    match result.await {
        Ok(v) => Json(v).into_response(),
        Err((status, reason)) => json_error(status, reason),
    }
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
        if !wire::valid_channel_name(&user_id) {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid user id: 1 to {MAX_NAME_CHARS} characters of A-Z a-z 0-9 _ - = @ , . ;"
                ),
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
