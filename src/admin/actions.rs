//! The console's actions: `POST /admin/api/broadcast {"topic", "event", "payload"}` (as the
//! backend API's broadcast), `POST /admin/api/disconnect {"sub"}` (every connection of that
//! user in the cluster, closed with 1001) and `POST /admin/api/drain {"node"}` (that node
//! refuses new connections and closes its live ones with 1012).

use super::{cluster, AdminAuth};
use crate::routes::api::{publish, BroadcastBody, DisconnectBody};
use crate::routes::{json_error, ApiJson, BodyShape};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// `POST /admin/api/broadcast`: answers `{"ok": true, "offset"}` like `/api/broadcast`.
pub async fn broadcast(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiJson(body): ApiJson<BroadcastBody>,
) -> Response {
    publish(&state, body).await
}

/// `POST /admin/api/disconnect`: answers `{"disconnected": n}` (this node's count; the other
/// nodes close theirs too).
pub async fn disconnect(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiJson(body): ApiJson<DisconnectBody>,
) -> Response {
    let sub = body.sub;
    if sub.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            "give a user id: {\"sub\": \"alice\"}",
        );
    }
    match state.node.disconnect_user_everywhere(&sub).await {
        Ok(n) => {
            tracing::info!(sub = %sub, connections = n, "disconnected from the admin console");
            Json(serde_json::json!({ "disconnected": n })).into_response()
        }
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("disconnected on this node only: {e}"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    node: String,
}

impl BodyShape for DrainBody {
    const SHAPE: &'static str = r#"{"node": string (a node id from the overview)}"#;
}

/// `POST /admin/api/drain`: answers `{"draining": node}`; 404 for a node that is not live.
pub async fn drain(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiJson(body): ApiJson<DrainBody>,
) -> Response {
    if body.node == state.node.broker().node_id() {
        cluster::drain_here(&state);
        return Json(serde_json::json!({ "draining": body.node })).into_response();
    }
    let live = match state.node.broker().node_ids().await {
        Ok(ids) => ids,
        Err(e) => return json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    if !live.contains(&body.node) {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("no live node {:?} in the cluster", body.node),
        );
    }
    match cluster::call(&state, &body.node, "drain").await {
        Ok(_) => Json(serde_json::json!({ "draining": body.node })).into_response(),
        Err(e) => json_error(StatusCode::BAD_GATEWAY, e),
    }
}
