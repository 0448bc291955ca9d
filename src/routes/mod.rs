//! HTTP routes: which path does what. Each module holds one group of endpoints.
//!
//! | path | module |
//! |------|--------|
//! | `GET /socket/websocket` | [`websocket`] — Phoenix WebSocket endpoint |
//! | `GET`, `POST /socket/longpoll` | [`longpoll`] — Phoenix LongPoll endpoint |
//! | `GET /sse` | [`sse`] — Server-Sent Events |
//! | `POST /api/broadcast`, `GET /api/channels`, `GET /api/channels/{topic}/presence`, `GET /api/channels/{topic}/history`, `POST /api/disconnect` | [`api`] — backend API (API key) |
//! | `GET /dev/token`, `GET /dev/echo` | [`dev`] — dev profile only |
//! | `GET /health`, `GET /metrics` | [`health`] |
//! | `GET /`, `GET /assets/*` | [`pages`] — demo page |

pub mod api;
pub mod dev;
pub mod health;
pub mod longpoll;
pub mod pages;
pub mod sse;
pub mod websocket;

use crate::config::{Config, Profile};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plexus_core::admission::Refusal;
use plexus_core::auth::Issuer;
use plexus_core::ratelimit::TokenBucket;
use plexus_core::transport::longpoll::LongPoll;
use plexus_core::Node;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    /// Connections not yet admitted (for `/metrics`).
    pub gate: Arc<crate::gate::Gate>,
    /// Wrong API keys per address.
    pub api_guard: Arc<ApiGuard>,
    pub config: Arc<Config>,
    pub issuer: Issuer,
    pub longpoll: Arc<LongPoll>,
}

/// The token of an `Authorization: Bearer <token>` header (API key or user token); the scheme
/// is case-insensitive, as HTTP says.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim_start();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Wrong API keys per client address: 10 in a burst, then one every 6 s. An address that has
/// used them up is answered 429 — even with the right key — until it has one again, so the
/// key cannot be guessed at speed. The table forgets addresses that are back to a full burst
/// once it holds more than [`ApiGuard::MAX_ADDRESSES`].
#[derive(Default)]
pub struct ApiGuard {
    failures: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, TokenBucket>>,
}

impl ApiGuard {
    pub const MAX_ADDRESSES: usize = 10_000;
    const BURST: u32 = 10;
    const PER_SECOND: f64 = 1.0 / 6.0;

    fn locked(&self, ip: std::net::IpAddr) -> bool {
        let now = std::time::Instant::now();
        self.failures
            .lock()
            .get_mut(&ip)
            .is_some_and(|b| !b.has_token(now))
    }

    fn failed(&self, ip: std::net::IpAddr) {
        let now = std::time::Instant::now();
        let mut failures = self.failures.lock();
        failures
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(Self::PER_SECOND, Self::BURST, now))
            .take(now);
        if failures.len() > Self::MAX_ADDRESSES {
            failures.retain(|_, b| !b.is_full(now));
        }
    }
}

/// Checks the API key of a request from `peer` (see [`ApiKey`] and [`ApiGuard`]); `Some` is
/// the refusal to answer.
pub fn check_api_key(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> Option<Response> {
    let ip = peer.map(|p| state.node.admission().client_ip(p, headers));
    if ip.is_some_and(|ip| state.api_guard.locked(ip)) {
        let mut r = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong API keys from this address: retry later",
        );
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("6"),
        );
        return Some(r);
    }
    if bearer(headers).is_none() {
        return Some(json_error(
            StatusCode::UNAUTHORIZED,
            "missing API key: send Authorization: Bearer <api_key>",
        ));
    }
    if has_api_key(state, headers) {
        return None;
    }
    if let Some(ip) = ip {
        state.api_guard.failed(ip);
        tracing::warn!(client = %ip, "wrong API key");
    }
    Some(json_error(StatusCode::FORBIDDEN, "invalid API key"))
}

/// A JSON error response `{"error": reason}` with the given status.
pub fn json_error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": reason.into() }))).into_response()
}

/// A refusal of the core (admission, a read's authorisation) as an HTTP answer: its status,
/// with `{"error": reason}`.
pub struct Refused(pub Refusal);

impl Refused {
    pub fn status(refusal: &Refusal) -> StatusCode {
        StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        json_error(Refused::status(&self.0), self.0.reason)
    }
}

/// Whether the request carries the API key (`Authorization: Bearer <api_key>`), compared in
/// constant time.
pub fn has_api_key(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    bearer(headers).is_some_and(|k| bool::from(k.as_bytes().ct_eq(state.config.api_key.as_bytes())))
}

/// Extractor for the backend API's endpoints: the request carries the API key, else 401
/// (missing), 403 (wrong) or 429 (too many wrong ones from this address).
pub struct ApiKey;

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        match check_api_key(state, &parts.headers, peer) {
            Some(refused) => Err(refused),
            None => Ok(ApiKey),
        }
    }
}

/// A request body's expected JSON shape, named in the 400 answer to a body that does not parse.
pub trait BodyShape {
    const SHAPE: &'static str;
}

/// Extractor of a JSON body of type `T`; anything else is answered 400 with `T`'s shape and the
/// parse error.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + BodyShape> FromRequest<S> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        serde_json::from_slice(&body).map(ApiJson).map_err(|e| {
            json_error(
                StatusCode::BAD_REQUEST,
                format!("invalid body: expected {} ({e})", T::SHAPE),
            )
        })
    }
}

/// A body that could not be read (too large, cut short) as a JSON error with its status.
pub fn body_rejection(r: axum::extract::rejection::BytesRejection) -> Response {
    json_error(r.status(), r.body_text())
}

/// The largest request body any route reads: one message of `max_message_bytes` and 64 KiB
/// of envelope. Larger bodies are answered 413 before they are read.
pub fn body_limit(state: &AppState) -> usize {
    state.node.limits().max_message_bytes + 64 * 1024
}

pub fn router(state: AppState) -> Router {
    let mut r = Router::new()
        .route("/", get(pages::index))
        .route("/assets/phoenix.min.js", get(pages::phoenix_js))
        .route("/socket/websocket", get(websocket::upgrade))
        .route(
            "/socket/longpoll",
            get(longpoll::poll)
                .post(longpoll::post)
                .options(longpoll::preflight),
        )
        .route("/sse", get(sse::stream))
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/channels", get(api::channels))
        .route("/api/disconnect", post(api::disconnect))
        .route("/api/channels/{topic}/presence", get(api::presence))
        .route("/api/channels/{topic}/history", get(api::history))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics));
    let dev = state.config.profile == Profile::Dev;
    if dev {
        r = r
            .route("/dev/token", get(dev::token))
            .route("/dev/echo", get(dev::echo));
    }
    let limit = body_limit(&state);
    r = r
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(limit));
    if dev {
        // Every route, the fallback included (a layer wraps what is routed before it).
        r = r.layer(axum::middleware::from_fn(dev::loopback_host_only));
    }
    r.with_state(state)
}
