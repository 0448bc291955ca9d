//! Dev profile only: `GET /dev/token?sub=NAME[&role=R][&name=N]` hands out tokens to anyone.
//! The dev profile binds loopback only, and this route does not exist in the prod profile.

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
