//! Dev profile only: `GET /dev/token?sub=NAME[&role=R][&name=N]` hands out tokens to anyone.
//! The dev profile binds loopback only, and these routes do not exist in the prod profile.
//! `GET /dev/echo` is a raw WebSocket echo over Plexus's framing code, for the Autobahn
//! conformance suite (`scripts/autobahn`); it checks `Origin` as `/socket/websocket` does, so a
//! page on another site cannot use it.

use super::json_error;
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_host_names() {
        for ok in [
            "localhost",
            "localhost:4000",
            "127.0.0.1:4000",
            "127.5.6.7",
            "[::1]:4000",
            "app.localhost:80",
            "LOCALHOST.",
        ] {
            assert!(super::is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.com",
            "evil.com:4000",
            "127.0.0.1.evil.com",
            "10.0.0.1:4000",
            "[::2]:1",
            "localhost.evil.com",
        ] {
            assert!(!super::is_loopback_host(bad), "{bad}");
        }
    }
}

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

/// The dev profile answers only requests addressed to a loopback host name (`localhost`,
/// `*.localhost`, `127.x.x.x`, `[::1]`): a web page on another site cannot reach it through DNS
/// rebinding (its requests carry that site's name in `Host`).
pub async fn loopback_host_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if is_loopback_host(host) {
        next.run(req).await
    } else {
        tracing::warn!(
            host,
            "dev profile: request for a non-loopback host name refused"
        );
        json_error(
            StatusCode::FORBIDDEN,
            "the dev profile only answers requests for loopback host names (localhost, 127.0.0.1, [::1])",
        )
    }
}

/// Whether a `Host` header (with or without a port) names this machine's loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `GET /dev/echo`: raw WebSocket echo (no Phoenix protocol, no auth) for conformance tests.
/// A browser `Origin` must be allowed as for `/socket/websocket` (else 403).
pub async fn echo(State(state): State<AppState>, mut req: axum::extract::Request) -> Response {
    let Some(key) = super::websocket::handshake_key(req.headers()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request",
        );
    };
    if let Err(refusal) = state.node.admission().check_origin(req.headers()) {
        tracing::warn!(reason = %refusal.reason, "dev echo refused");
        return super::Refused(refusal).into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let io = hyper_util::rt::TokioIo::new(upgraded);
            plexus_core::transport::websocket::echo(io, 64 * 1024 * 1024).await;
        }
    });
    super::websocket::switching_protocols(&key, false)
}
