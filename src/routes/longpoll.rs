//! `GET`/`POST /socket/longpoll`: the Phoenix LongPoll endpoint (see the core's
//! `transport::longpoll` for the protocol). Protocol statuses travel in the JSON body as
//! phoenix.js expects (`{"status": 200|204|410, "token", "messages"}`, HTTP 200); refusals use
//! the real HTTP status too (`{"status": 403, "error": "…"}` with HTTP 403).
//! Cross-origin browsers get CORS headers when their `Origin` is allowed.

use crate::state::AppState;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use plexus_core::protocol::Vsn;
use plexus_core::transport::longpoll::{PollResult, PostResult, MAX_POST_LINES, SESSION_PREFIX};
use std::net::SocketAddr;

/// All `token` values of the query: phoenix.js sends the user's (from `params`) and, once it
/// has one, the session's, under the same name.
fn tokens(query: Option<&str>) -> Vec<String> {
    let Some(q) = query else { return Vec::new() };
    form_urlencoded::parse(q.as_bytes())
        .filter(|(k, v)| k == "token" && !v.is_empty())
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The protocol version of the query's `vsn` (none: V1, as in Phoenix).
fn vsn(query: Option<&str>) -> Result<Vsn, String> {
    let vsn = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "vsn")
            .map(|(_, v)| v.into_owned())
    });
    Vsn::negotiate(vsn.as_deref())
}

/// CORS headers for an allowed cross-origin browser.
fn with_cors(state: &AppState, headers: &HeaderMap, mut res: Response) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        if state.node.admission().check_origin(headers).is_ok() {
            let h = res.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
    res
}

fn body(http: StatusCode, json: serde_json::Value) -> Response {
    (http, Json(json)).into_response()
}

/// `OPTIONS /socket/longpoll`: CORS preflight.
pub async fn preflight(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, x-phoenix-authtoken, authorization"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    with_cors(&state, &headers, res)
}

pub async fn poll(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    slot: crate::gate::Slot,
    headers: HeaderMap,
) -> Response {
    let res = poll_inner(&state, peer, query.as_deref(), &headers, &slot).await;
    with_cors(&state, &headers, res)
}

async fn poll_inner(
    state: &AppState,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
    slot: &crate::gate::Slot,
) -> Response {
    let vsn = match vsn(query) {
        Ok(vsn) => vsn,
        Err(reason) => {
            tracing::info!(peer = %peer, transport = "longpoll", reason, "connection refused");
            plexus_core::metrics::refused("vsn", &reason);
            return body(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"status": 400, "error": reason}),
            );
        }
    };
    let tokens = tokens(query);
    let lp = &state.longpoll;
    if let Some(session) = tokens.iter().find(|t| t.starts_with(SESSION_PREFIX)) {
        // A session held here, or by another node (the poll is forwarded there).
        if lp.exists(session) || lp.remote_node(session).is_some() {
            // A poll of an admitted session leaves the gate while it waits, once the node
            // that holds the session said so.
            let ip = state.node.admission().client_ip(peer, headers);
            return match lp.poll(session, ip, || slot.release()).await {
                PollResult::Messages(messages, next) => body(
                    StatusCode::OK,
                    serde_json::json!({"status": 200, "token": next, "messages": messages}),
                ),
                PollResult::NoContent => body(
                    StatusCode::OK,
                    serde_json::json!({"status": 204, "token": session}),
                ),
                PollResult::Gone => body(StatusCode::OK, serde_json::json!({"status": 410})),
                // phoenix.js reads the body's status only: 204, it polls again.
                PollResult::Busy => body(
                    StatusCode::TOO_MANY_REQUESTS,
                    serde_json::json!({
                        "status": 204,
                        "token": session,
                        "error": "too many polls forwarded to other nodes from this address",
                    }),
                ),
            };
        }
    }
    // A new session: admitted exactly like a WebSocket.
    let user_token = tokens
        .iter()
        .find(|t| !t.starts_with(SESSION_PREFIX))
        .cloned()
        .or_else(|| {
            headers
                .get("x-phoenix-authtoken")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .or_else(|| crate::api_key::bearer(headers).map(str::to_owned));
    match state.node.admit(peer, headers, user_token.as_deref()).await {
        Ok((identity, permit)) => match lp.open(identity, permit, vsn) {
            Ok(token) => body(
                StatusCode::OK,
                serde_json::json!({"status": 410, "token": token}),
            ),
            // phoenix.js's LongPoll knows body statuses 200, 204, 410, 403 and 500 only (anything
            // else throws and leaves it "connecting" for good): 500 makes it retry with backoff.
            Err(_) => body(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": 500, "error": "server draining, reconnect to another node"}),
            ),
        },
        Err(refusal) => {
            // 403 (401 too) closes phoenix.js's LongPoll for good: a token or origin that will
            // not pass. Caps and rates (429) and draining (503) pass later: 500, retried.
            let http = super::Refused::status(&refusal);
            let status = if matches!(refusal.status, 401 | 403) {
                403
            } else {
                500
            };
            body(
                http,
                serde_json::json!({"status": status, "error": refusal.reason}),
            )
        }
    }
}

pub async fn post(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request_body: axum::body::Body,
) -> Response {
    let payload = match super::read_body(&state, request_body).await {
        Ok(p) => p,
        Err(refused) => return with_cors(&state, &headers, refused),
    };
    let tokens = tokens(query.as_deref());
    let session = tokens.iter().find(|t| t.starts_with(SESSION_PREFIX));
    let res = match session {
        None => body(StatusCode::OK, serde_json::json!({"status": 410})),
        Some(session) => match state.longpoll.post(session, &payload).await {
            PostResult::Ok => body(StatusCode::OK, serde_json::json!({"status": 200})),
            PostResult::Gone => body(StatusCode::OK, serde_json::json!({"status": 410})),
            PostResult::TooManyLines(n) => body(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({
                    "status": 413,
                    "error": format!("{n} messages in one POST: at most {MAX_POST_LINES}"),
                }),
            ),
            PostResult::TooLarge(n) => body(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({
                    "status": 413,
                    "error": format!(
                        "a message of {n} bytes is larger than max_message_bytes ({})",
                        state.node.limits().max_message_bytes
                    ),
                }),
            ),
        },
    };
    with_cors(&state, &headers, res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_tokens_of_a_phoenix_query() {
        let q = "token=eyJ.a.b&vsn=2.0.0&token=plp.XYZ-_";
        assert_eq!(
            tokens(Some(q)),
            vec!["eyJ.a.b".to_owned(), "plp.XYZ-_".to_owned()]
        );
        assert_eq!(tokens(Some("vsn=2.0.0&")), Vec::<String>::new());
        assert_eq!(tokens(Some("token=a%2Bb%3D")), vec!["a+b=".to_owned()]);
        assert_eq!(vsn(Some("token=x&vsn=2.0.0")), Ok(Vsn::V2));
        assert_eq!(vsn(Some("vsn=1.0.0&token=x")), Ok(Vsn::V1));
        assert_eq!(vsn(Some("token=x")), Ok(Vsn::V1));
        assert_eq!(vsn(None), Ok(Vsn::V1));
        assert!(vsn(Some("vsn=3.0.0"))
            .unwrap_err()
            .contains("unsupported vsn"));
    }
}
