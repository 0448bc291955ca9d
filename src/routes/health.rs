//! `GET /health` (200 while serving, 503 while draining) and `GET /metrics` (Prometheus text,
//! rendered by [`crate::metrics`], then the hooks' and webhooks' counters).

use crate::state::AppState;
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
        if let Some(refused) = crate::api_key::check_api_key(&state, &headers, Some(peer)) {
            return refused;
        }
    }
    let mut out = crate::metrics::render(&state);
    write_hook_metrics(&mut out, &state.node);
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
    if let Some(g) = node.webhook_grace() {
        let c = &g.counters;
        let figures = [
            ("plexus_webhook_grace_held_total", "counter", "Webhook events held for the reconnect grace (webhooks.disconnect_grace_ms).", c.held.load(Ordering::Relaxed)),
            ("plexus_webhook_grace_recorded_total", "counter", "Held webhook events recorded in the broker (claimable by a reconnect on any node).", c.recorded.load(Ordering::Relaxed)),
            ("plexus_webhook_grace_sent_total", "counter", "Held webhook events sent at the end of the grace (no reconnect claimed them).", c.sent.load(Ordering::Relaxed)),
            ("plexus_webhook_grace_suppressed_total", "counter", "Pairs of webhook events suppressed by the reconnect grace (disconnect+connect, presence_leave+presence_join, channel_vacated+channel_occupied), counted by the node whose event claimed the held one.", c.suppressed.load(Ordering::Relaxed)),
            ("plexus_webhook_grace_over_cap_total", "counter", "Webhook events sent at once because webhooks.disconnect_grace_max events were held already.", c.over_cap.load(Ordering::Relaxed)),
            ("plexus_webhook_grace_held", "gauge", "Webhook events held for the reconnect grace now.", g.held() as u64),
        ];
        for (name, kind, help, value) in figures {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
    // Plexus's webhooks, then Pusher's (the same figures, `plexus_pusher_webhook_*`).
    let sinks = [
        ("plexus_webhook", node.webhooks()),
        ("plexus_pusher_webhook", node.pusher_webhooks()),
    ];
    for (prefix, w) in sinks {
        let Some(w) = w else {
            continue;
        };
        let c = &w.counters;
        let figures = [
            ("plexus_webhook_events_total", "counter", "Webhook events queued.", &c.emitted),
            ("plexus_webhook_delivered_total", "counter", "Webhook events delivered (their batch answered 2xx).", &c.delivered),
            ("plexus_webhook_batches_total", "counter", "Webhook requests that succeeded.", &c.batches),
            ("plexus_webhook_failed_attempts_total", "counter", "Webhook requests that failed (retried with backoff).", &c.failed_attempts),
            ("plexus_webhook_dropped_overflow_total", "counter", "Webhook events dropped because the queue was full (webhooks.queue_max, queue_max_bytes).", &c.dropped_overflow),
            ("plexus_webhook_dropped_expired_total", "counter", "Webhook events dropped after their batch failed for webhooks.retry_secs.", &c.dropped_expired),
            ("plexus_webhook_dropped_rejected_total", "counter", "Webhook events the application refused on their own (a 4xx other than 408/429): dropped, not retried.", &c.dropped_rejected),
            ("plexus_webhook_dropped_failing_total", "counter", "Webhook events dropped because the application kept failing on them (5xx, timeout) while it took the events after them.", &c.dropped_failing),
            ("plexus_webhook_dropped_share_total", "counter", "Webhook events dropped because their user held its share of the queue (a tenth of webhooks.queue_max, queue_max_bytes).", &c.dropped_share),
            ("plexus_webhook_dropped_oversize_total", "counter", "Webhook events dropped because they were larger than webhooks.max_event_bytes even without their payload.", &c.dropped_oversize),
            ("plexus_webhook_truncated_total", "counter", "Webhook events sent with their payload or meta replaced by a marker (webhooks.max_event_bytes).", &c.truncated),
            ("plexus_webhook_pending", "gauge", "Webhook events waiting to be delivered.", &c.pending),
        ];
        for (name, kind, help, value) in figures {
            let name = name.replacen("plexus_webhook", prefix, 1);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}
