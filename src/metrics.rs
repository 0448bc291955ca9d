//! `/metrics` through the `metrics` crate and its Prometheus exporter: the recorder is
//! installed once per process ([`install`], before the node is built), the core records its
//! histograms and counters into it (`plexus_core::metrics`), and each scrape first sets the
//! figures that are read from the node's own counters and tables ([`render`]), then renders
//! the Prometheus text.
//!
//! Histograms (every `*_seconds` metric, and `plexus_fanout_receivers`) have fixed buckets,
//! [`LATENCY_BUCKETS`] and [`RECEIVER_BUCKETS`].

use crate::state::AppState;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::Duration;

/// Buckets of the latency histograms, in seconds: 50 µs to 5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];
/// Buckets of `plexus_fanout_receivers`.
pub const RECEIVER_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0,
];
/// How often histogram samples are folded into their buckets between scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls do nothing) and starts its upkeep task.
pub fn install() {
    if HANDLE.get().is_some() {
        return;
    }
    let built = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(plexus_core::metrics::FANOUT_RECEIVERS.into()),
                RECEIVER_BUCKETS,
            )
        })
        .map(|b| b.build_recorder());
    let recorder = match built {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed");
            return;
        }
    };
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        return;
    }
    let _ = HANDLE.set(handle.clone());
    describe();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP).await;
            handle.run_upkeep();
        }
    });
}

fn describe() {
    plexus_core::metrics::describe();
    describe_gauge!("plexus_connections", "Live client connections.");
    describe_gauge!(
        "plexus_transport_connections",
        "Live client connections by transport (websocket, longpoll, sse)."
    );
    describe_gauge!("plexus_topics", "Topics with local subscribers.");
    describe_counter!("plexus_connections_total", "Connections accepted.");
    describe_counter!("plexus_messages_in_total", "Client messages handled.");
    describe_counter!("plexus_broadcasts_total", "Broadcasts published.");
    describe_counter!(
        "plexus_joins_refused_total",
        "Joins refused (channel rules, limits, max_per_user)."
    );
    describe_counter!(
        "plexus_broker_errors_total",
        "Broker operations that failed."
    );
    describe_gauge!(
        "plexus_http_connections",
        "Connections not yet admitted as clients (HTTP requests, handshakes, LongPoll polls)."
    );
    describe_counter!(
        "plexus_http_refused_total",
        "Connections closed at accept: too many not yet admitted (per address or in total)."
    );
    describe_counter!(
        "plexus_http_timeouts_total",
        "Connections closed for not sending their request headers (or TLS handshake) in time."
    );
    describe_gauge!(
        "plexus_history_topics",
        "Topics with retained history in this node's memory."
    );
    describe_gauge!(
        "plexus_history_bytes",
        "Bytes of history retained in this node's memory (limits.history_max_bytes bounds it)."
    );
    describe_counter!(
        "plexus_allocator_trims_total",
        "Times glibc's heaps were trimmed after history was freed (src/allocator.rs)."
    );
    describe_gauge!(
        "plexus_allocator_trim_seconds",
        "How long the last trim of glibc's heaps took (on a blocking thread)."
    );
    describe_gauge!(
        "plexus_allocator_trim_max_seconds",
        "How long the longest trim of glibc's heaps took since start."
    );
    describe_gauge!(
        "plexus_broker_up",
        "1 while the broker's backend (Redis) is reachable; always 1 for the embedded broker."
    );
    describe_gauge!("plexus_draining", "1 while the node drains.");
    describe_counter!(
        "plexus_connections_refused_total",
        "Connections refused at admission, by HTTP status (401 no token, 403 bad token or origin, 429 rates and caps, 503 draining)."
    );
    describe_gauge!(
        "plexus_outbox_messages",
        "Messages waiting in this node's outbound queues, all connections together."
    );
    describe_gauge!(
        "plexus_outbox_max_messages",
        "Messages waiting in the fullest outbound queue (slow consumers are closed at limits.outbox_max_frames)."
    );
    describe_counter!(
        "plexus_publish_failures_total",
        "Client pushes and presence diffs that could not be published (broker down)."
    );
}

/// The Prometheus text of this process's metrics, with the node's figures as of now.
pub fn render(state: &AppState) -> String {
    let Some(handle) = HANDLE.get() else {
        return String::from("# metrics recorder not installed\n");
    };
    let node = &state.node;
    let c = &node.counters;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    gauge!("plexus_connections").set(node.connection_count() as f64);
    let (websocket, longpoll, sse) = crate::admin::samples::transports(&state.longpoll);
    gauge!("plexus_transport_connections", "transport" => "websocket").set(websocket as f64);
    gauge!("plexus_transport_connections", "transport" => "longpoll").set(longpoll as f64);
    gauge!("plexus_transport_connections", "transport" => "sse").set(sse as f64);
    gauge!("plexus_topics").set(node.hub().topics().len() as f64);
    counter!("plexus_connections_total").absolute(n(&c.connections_total));
    counter!("plexus_messages_in_total").absolute(n(&c.messages_in));
    counter!("plexus_broadcasts_total").absolute(n(&c.broadcasts));
    counter!("plexus_joins_refused_total").absolute(n(&c.joins_refused));
    counter!("plexus_broker_errors_total").absolute(n(&c.broker_errors));
    counter!("plexus_publish_failures_total").absolute(n(&c.publish_failures));
    gauge!("plexus_http_connections").set(state.gate.count() as f64);
    counter!("plexus_http_refused_total").absolute(state.gate.refused.load(Ordering::Relaxed));
    counter!("plexus_http_timeouts_total").absolute(state.gate.timeouts.load(Ordering::Relaxed));
    if let Some(h) = node.history_stats() {
        gauge!("plexus_history_topics").set(h.topics as f64);
        gauge!("plexus_history_bytes").set(h.bytes as f64);
    }
    gauge!("plexus_broker_up").set(f64::from(u8::from(node.broker_healthy())));
    gauge!("plexus_draining").set(f64::from(u8::from(node.is_draining())));
    for (status, v) in plexus_core::node::Counters::REFUSED_STATUSES
        .iter()
        .zip(&c.refused)
    {
        counter!("plexus_connections_refused_total", "status" => status.to_string()).absolute(n(v));
    }
    let (queued, deepest) = node.outbox_depths();
    gauge!("plexus_outbox_messages").set(queued as f64);
    gauge!("plexus_outbox_max_messages").set(deepest as f64);
    handle.render()
}
