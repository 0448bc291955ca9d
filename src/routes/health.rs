//! `GET /health` (200 while serving, 503 while draining) and `GET /metrics` (Prometheus text).

use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::fmt::Write;
use std::sync::atomic::Ordering;

pub async fn health(State(state): State<AppState>) -> Response {
    let node = &state.node;
    let body = serde_json::json!({
        "status": if node.is_draining() { "draining" } else { "ok" },
        "connections": node.connection_count(),
        "broker": node.broker_name(),
        "broker_up": node.broker_healthy(),
    });
    let status = if node.is_draining() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// With `metrics_require_api_key = true` only a scraper that sends the API key gets the
/// figures.
pub async fn metrics(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    if state.config.metrics_require_api_key {
        if let Some(refused) = super::check_api_key(&state, &headers, Some(peer)) {
            return refused;
        }
    }
    let node = &state.node;
    let c = &node.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "plexus_connections",
        "gauge",
        "Live client connections.",
        node.connection_count() as u64,
    );
    metric(
        "plexus_topics",
        "gauge",
        "Topics with local subscribers.",
        node.hub().topics().len() as u64,
    );
    metric(
        "plexus_connections_total",
        "counter",
        "Connections accepted.",
        c.connections_total.load(Ordering::Relaxed),
    );
    metric(
        "plexus_messages_in_total",
        "counter",
        "Client messages handled.",
        c.messages_in.load(Ordering::Relaxed),
    );
    metric(
        "plexus_broadcasts_total",
        "counter",
        "Broadcasts published.",
        c.broadcasts.load(Ordering::Relaxed),
    );
    metric(
        "plexus_joins_refused_total",
        "counter",
        "Joins refused (channel rules, limits, max_per_user).",
        c.joins_refused.load(Ordering::Relaxed),
    );
    metric(
        "plexus_broker_errors_total",
        "counter",
        "Broker operations that failed.",
        c.broker_errors.load(Ordering::Relaxed),
    );
    metric(
        "plexus_http_connections",
        "gauge",
        "Connections not yet admitted as clients (HTTP requests, handshakes, LongPoll polls).",
        state.gate.count() as u64,
    );
    metric(
        "plexus_http_refused_total",
        "counter",
        "Connections closed at accept: too many not yet admitted (per address or in total).",
        state.gate.refused.load(Ordering::Relaxed),
    );
    metric(
        "plexus_http_timeouts_total",
        "counter",
        "Connections closed for not sending their request headers (or TLS handshake) in time.",
        state.gate.timeouts.load(Ordering::Relaxed),
    );
    if let Some(h) = node.history_stats() {
        metric(
            "plexus_history_topics",
            "gauge",
            "Topics with retained history in this node's memory.",
            h.topics as u64,
        );
        metric(
            "plexus_history_bytes",
            "gauge",
            "Bytes of history retained in this node's memory (limits.history_max_bytes bounds it).",
            h.bytes as u64,
        );
    }
    metric(
        "plexus_broker_up",
        "gauge",
        "1 while the broker's backend (Redis) is reachable; always 1 for the embedded broker.",
        node.broker_healthy() as u64,
    );
    metric(
        "plexus_draining",
        "gauge",
        "1 while the node drains.",
        node.is_draining() as u64,
    );
    let _ = writeln!(
        out,
        "# HELP plexus_connections_refused_total Connections refused at admission, by HTTP status (401 no token, 403 bad token or origin, 429 rates and caps, 503 draining).\n# TYPE plexus_connections_refused_total counter"
    );
    for (status, n) in plexus_core::node::Counters::REFUSED_STATUSES
        .iter()
        .zip(&c.refused)
    {
        let _ = writeln!(
            out,
            "plexus_connections_refused_total{{status=\"{status}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    write_hook_metrics(&mut out, node);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The application hooks' and webhooks' figures (docs/hooks.md lists them), all here.
fn write_hook_metrics(out: &mut String, node: &plexus_core::Node) {
    use plexus_core::hooks::{HookKind, Outcome};
    if let Some(hooks) = node.hooks() {
        let c = &hooks.counters;
        let _ = writeln!(out, "# HELP plexus_hook_calls_total Application hook decisions by hook and result (allow, deny, cached, and the failures that answer `hook unavailable`: timeout, error, invalid, busy, circuit_open).\n# TYPE plexus_hook_calls_total counter");
        for kind in HookKind::ALL {
            for outcome in Outcome::ALL {
                let _ = writeln!(
                    out,
                    "plexus_hook_calls_total{{hook=\"{}\",result=\"{}\"}} {}",
                    kind.name(),
                    outcome.name(),
                    c.get(kind, outcome)
                );
            }
        }
        let _ = writeln!(out, "# HELP plexus_hook_seconds_total Time spent waiting for hook answers.\n# TYPE plexus_hook_seconds_total counter");
        for kind in HookKind::ALL {
            let micros = c.micros[kind as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "plexus_hook_seconds_total{{hook=\"{}\"}} {:.6}",
                kind.name(),
                micros as f64 / 1e6
            );
        }
        let _ = writeln!(out, "# HELP plexus_hook_circuit_opened_total Times a hook URL's circuit breaker opened.\n# TYPE plexus_hook_circuit_opened_total counter\nplexus_hook_circuit_opened_total {}", c.circuit_opened.load(Ordering::Relaxed));
    }
    if let Some(w) = node.webhooks() {
        let c = &w.counters;
        let figures = [
            ("plexus_webhook_events_total", "counter", "Webhook events queued.", &c.emitted),
            ("plexus_webhook_delivered_total", "counter", "Webhook events delivered (their batch answered 2xx).", &c.delivered),
            ("plexus_webhook_batches_total", "counter", "Webhook requests that succeeded.", &c.batches),
            ("plexus_webhook_failed_attempts_total", "counter", "Webhook requests that failed (retried with backoff).", &c.failed_attempts),
            ("plexus_webhook_dropped_overflow_total", "counter", "Webhook events dropped because the queue was full (webhooks.queue_max, queue_max_bytes).", &c.dropped_overflow),
            ("plexus_webhook_dropped_expired_total", "counter", "Webhook events dropped after their batch failed for webhooks.retry_secs.", &c.dropped_expired),
            ("plexus_webhook_pending", "gauge", "Webhook events waiting to be delivered.", &c.pending),
        ];
        for (name, kind, help, value) in figures {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}
