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
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plexus_core::auth::Issuer;
use plexus_core::transport::longpoll::LongPoll;
use plexus_core::Node;
use std::sync::Arc;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
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
    r.fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}
