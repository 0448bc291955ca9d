//! What the console shows: `GET /admin/api/overview` (the cluster's nodes with their
//! connections per transport, topics and health, and this node's chart series),
//! `GET /admin/api/topics` (topics with subscriber counts), `GET /admin/api/topics/{topic}/presence`
//! and `GET /admin/api/config` (the effective configuration, secrets redacted).

use super::{cluster, samples, AdminAuth};
use crate::config::Config;
use crate::routes::json_error;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

const REDACTED: &str = "<redacted>";

/// This node's figures, as the overview lists each node.
pub fn node_stats(state: &AppState) -> Value {
    let node = &state.node;
    let (websocket, longpoll, sse) = samples::transports(&state.longpoll);
    json!({
        "id": node.broker().node_id(),
        "broker": node.broker_name(),
        "broker_up": node.broker_healthy(),
        "draining": node.is_draining(),
        "connections": node.connection_count(),
        "transports": { "websocket": websocket, "longpoll": longpoll, "sse": sse },
        "topics": node.hub().topics().len(),
        "uptime_secs": state.admin.uptime_secs(),
        "messages_in_total": node.counters.messages_in.load(Ordering::Relaxed),
        "broadcasts_total": node.counters.broadcasts.load(Ordering::Relaxed),
    })
}

/// `GET /admin/api/overview`: `{"this_node", "nodes": [stats…], "series": {…}}`.
pub async fn overview(State(state): State<AppState>, _: AdminAuth) -> Response {
    let nodes = cluster::all_node_stats(&state).await;
    Json(json!({
        "this_node": state.node.broker().node_id(),
        "nodes": nodes,
        "series": {
            "interval_secs": samples::INTERVAL.as_secs(),
            "samples": state.admin.samples.series(),
        },
    }))
    .into_response()
}

/// `GET /admin/api/topics`: `{"topics": [{"topic", "subscribers"}]}` (cluster-wide on Redis).
pub async fn topics(State(state): State<AppState>, _: AdminAuth) -> Response {
    let topics: Vec<Value> = state
        .node
        .channels()
        .await
        .into_iter()
        .map(|(topic, subscribers)| json!({ "topic": topic, "subscribers": subscribers }))
        .collect();
    Json(json!({ "topics": topics })).into_response()
}

/// `GET /admin/api/topics/{topic}/presence`: `{"topic", "presence": {key: {"metas": […]}}}`.
pub async fn presence(
    State(state): State<AppState>,
    _: AdminAuth,
    Path(topic): Path<String>,
) -> Response {
    if let Err(invalid) = state.node.limits().check_topic(&topic) {
        return json_error(StatusCode::BAD_REQUEST, invalid.to_string());
    }
    let presence = state.node.presence().state(&topic).await;
    Json(json!({ "topic": topic, "presence": presence })).into_response()
}

/// `GET /admin/api/config`: the effective configuration; secrets are never shown.
pub async fn config(State(state): State<AppState>, _: AdminAuth) -> Response {
    Json(effective_config(&state.config)).into_response()
}

/// The configuration the server runs with, as JSON, with every secret replaced by
/// `"<redacted>"` (JWT secret, API key, admin secret, verification keys, the Redis password).
pub fn effective_config(c: &Config) -> Value {
    let l = &c.limits;
    let a = &c.admission;
    let rules: Vec<Value> = c
        .policy
        .rules()
        .iter()
        .map(|r| {
            json!({
                "topic": r.topic,
                "join_roles": r.join_roles,
                "join_roles_all": r.join_roles_all,
                "deny": r.deny,
                "push_events": r.push_events,
                "event_roles": r.event_roles,
                "echo": r.echo,
                "max_per_user": r.max_per_user,
                "presence": r.presence,
                "history_size": r.history_size,
                "history_ttl_secs": r.history_ttl_secs,
            })
        })
        .collect();
    json!({
        "profile": c.profile.name(),
        "listen": c.listen.to_string(),
        "source": c.source.as_ref().map(|p| p.display().to_string()),
        "jwt_secret": REDACTED,
        "jwt_secret_generated": c.jwt_secret_generated,
        "api_key": REDACTED,
        "api_key_generated": c.api_key_generated,
        "admin_secret": if c.admin_secret.is_some() { Some(REDACTED) } else { None },
        "verification_keys": c.verifier.keys().len(),
        "drain_timeout_secs": c.drain_timeout.as_secs(),
        "drain_notice_secs": c.drain_notice.as_secs(),
        "metrics_require_api_key": c.metrics_require_api_key,
        "supabase": c.supabase,
        "tls": c.tls.is_some(),
        "broker": match &c.redis {
            None => json!({ "kind": "memory" }),
            Some(r) => json!({
                "kind": "redis",
                "url": redact_url(&r.url),
                "prefix": r.prefix,
                "node_timeout_secs": r.node_timeout.as_secs(),
            }),
        },
        "limits": {
            "max_message_bytes": l.max_message_bytes,
            "idle_timeout_secs": l.idle_timeout.as_secs(),
            "write_timeout_secs": l.write_timeout.as_secs(),
            "expiry_grace_secs": l.expiry_grace.as_secs(),
            "outbox_max_frames": l.outbox_max_frames,
            "outbox_max_bytes": l.outbox_max_bytes,
            "max_topic_bytes": l.max_topic_bytes,
            "max_event_bytes": l.max_event_bytes,
            "max_channels_per_connection": l.max_channels_per_connection,
            "messages_per_second": l.messages_per_second,
            "message_burst": l.message_burst,
            "longpoll_window_secs": l.longpoll_window.as_secs(),
            "http_header_timeout_secs": c.http_header_timeout.as_secs(),
            "max_pending_connections_per_ip": c.gate.per_ip,
            "max_pending_connections": c.gate.total,
            "max_connections_per_ip": a.max_connections_per_ip,
            "max_connections_per_user": a.max_connections_per_user,
            "connect_rate_per_ip": a.connect_rate_per_ip,
            "connect_burst_per_ip": a.connect_burst_per_ip,
        },
        "allowed_origins": a.allowed_origins,
        "trusted_proxies": a.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "channels": rules,
        "warnings": c.warnings,
    })
}

/// `redis://user:password@host` → `redis://<redacted>@host`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{REDACTED}{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_passwords_are_redacted() {
        assert_eq!(
            super::redact_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(super::redact_url("redis://h:1"), "redis://h:1");
    }
}
