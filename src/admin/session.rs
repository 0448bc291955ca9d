//! Signing in to the console: `POST /admin/api/session {"secret": "…"}` answers
//! `{"token", "expires_in_secs"}`, a session token for `Authorization: Bearer`.
//!
//! A session token is an HS256 JWT signed with a key derived from the admin secret (never the
//! users' JWT secret, so no user token is a session): every node that shares the secret
//! accepts it, and nothing is stored per session. It lasts [`SESSION_TTL_SECS`]. Wrong secrets
//! count against the address like wrong API keys (10 in a burst, then 429).

use super::AdminAuth;
use crate::routes::{json_error, ApiJson, BodyShape};
use crate::state::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use plexus_core::auth::{Issuer, Verifier};
use serde::Deserialize;
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

/// How long a session lasts: 12 hours.
pub const SESSION_TTL_SECS: u64 = 12 * 3600;
const SESSION_SUB: &str = "plexus-admin";
const SESSION_ROLE: &str = "plexus-admin";

/// The admin secret, and the keys its session tokens are signed and checked with.
pub struct SessionKeys {
    secret: String,
    issuer: Issuer,
    verifier: Verifier,
}

impl SessionKeys {
    pub fn new(secret: &str) -> Self {
        let key = format!("plexus admin session\0{secret}");
        SessionKeys {
            secret: secret.to_owned(),
            issuer: Issuer::hs256(key.as_bytes()),
            verifier: Verifier::hs256(key.as_bytes()),
        }
    }

    fn matches(&self, given: &str) -> bool {
        bool::from(given.as_bytes().ct_eq(self.secret.as_bytes()))
    }

    /// Whether `token` is a live session of this console.
    pub fn valid(&self, token: &str) -> bool {
        self.verifier
            .verify(token)
            .is_ok_and(|id| &*id.sub == SESSION_SUB && id.has_role(SESSION_ROLE))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    secret: String,
}

impl BodyShape for SignIn {
    const SHAPE: &'static str = r#"{"secret": string}"#;
}

/// `POST /admin/api/session`.
pub async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SignIn>,
) -> Response {
    let Some(keys) = &state.admin.session else {
        return super::disabled();
    };
    if let Some(locked) = crate::api_key::api_key_lockout(&state, &headers, peer) {
        return locked;
    }
    if !keys.matches(&body.secret) {
        crate::api_key::api_key_failed(&state, &headers, peer);
        tracing::info!(peer = %peer, "admin sign-in refused: wrong secret");
        return json_error(StatusCode::FORBIDDEN, "wrong admin secret");
    }
    let roles = [SESSION_ROLE.to_owned()];
    match keys
        .issuer
        .issue(SESSION_SUB, &roles, None, SESSION_TTL_SECS)
    {
        Ok(token) => {
            tracing::info!(peer = %peer, "admin signed in");
            Json(serde_json::json!({ "token": token, "expires_in_secs": SESSION_TTL_SECS }))
                .into_response()
        }
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /admin/api/session`: 200 `{"ok": true}` while the session is valid (the page checks
/// a stored token with it).
pub async fn check(_: AdminAuth) -> Response {
    Json(serde_json::json!({ "ok": true })).into_response()
}
