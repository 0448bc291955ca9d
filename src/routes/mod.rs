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
    pub config: Arc<Config>,
    pub issuer: Issuer,
    pub longpoll: Arc<LongPoll>,
}

/// The token of an `Authorization: Bearer <token>` header (API key or user token).
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
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
/// (missing) or 403 (wrong).
pub struct ApiKey;

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if bearer(&parts.headers).is_none() {
            return Err(json_error(
                StatusCode::UNAUTHORIZED,
                "missing API key: send Authorization: Bearer <api_key>",
            ));
        }
        if has_api_key(state, &parts.headers) {
            Ok(ApiKey)
        } else {
            Err(json_error(StatusCode::FORBIDDEN, "invalid API key"))
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
    if state.config.profile == Profile::Dev {
        r = r
            .route("/dev/token", get(dev::token))
            .route("/dev/echo", get(dev::echo));
    }
    let limit = body_limit(&state);
    r.fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(state)
}
