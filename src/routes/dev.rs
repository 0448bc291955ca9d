//! Dev profile only: `GET /dev/token?sub=NAME[&role=R][&name=N]` hands out tokens to anyone.
//! The dev profile binds loopback only, and these routes do not exist in the prod profile.
//! `GET /dev/echo` is a raw WebSocket echo over Plexus's framing code, for the Autobahn
//! conformance suite (`scripts/autobahn`).

use super::{json_error, AppState};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct TokenQuery {
    sub: Option<String>,
    role: Option<String>,
    name: Option<String>,
}

pub async fn token(State(state): State<AppState>, Query(q): Query<TokenQuery>) -> Response {
    let Some(sub) = q.sub.filter(|s| !s.is_empty() && s.len() <= 128) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "give a user id: /dev/token?sub=NAME (1 to 128 bytes)",
        );
    };
    let roles: Vec<String> = q.role.into_iter().collect();
    match state
        .issuer
        .issue(&sub, &roles, q.name.as_deref(), 24 * 3600)
    {
        Ok(token) => Json(serde_json::json!({ "token": token, "sub": sub })).into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /dev/echo`: raw WebSocket echo (no Phoenix protocol, no auth) for conformance tests.
pub async fn echo(mut req: axum::extract::Request) -> Response {
    let Some(key) = super::websocket::handshake_key(req.headers()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let io = hyper_util::rt::TokioIo::new(upgraded);
            plexus_core::transport::websocket::echo(io, 64 * 1024 * 1024).await;
        }
    });
    super::websocket::switching_protocols(&key, false)
}
