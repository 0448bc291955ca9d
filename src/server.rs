//! Wiring: builds the node from the configuration, serves HTTP, drains on SIGTERM/SIGINT.

use crate::config::{Config, Profile};
use crate::routes::{router, AppState};
use plexus_core::auth::Issuer;
use plexus_core::broker::memory::MemoryBroker;
use plexus_core::node::NodeConfig;
use plexus_core::Node;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub async fn run(config: Config) -> Result<(), String> {
    let config = Arc::new(config);
    let node = Node::new(
        NodeConfig {
            verifier: config.verifier.clone(),
            policy: config.policy.clone(),
            limits: config.limits.clone(),
            admission: config.admission.clone(),
        },
        |hub| Arc::new(MemoryBroker::new(hub)),
    );
    let state = AppState {
        node: node.clone(),
        config: config.clone(),
        issuer: Issuer::hs256(config.jwt_secret.as_bytes()),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    announce(&config, addr, node.broker_name());

    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let drain_timeout = config.drain_timeout;
    axum::serve(listener, app)
        .with_graceful_shutdown(drain_on_signal(node, drain_timeout))
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

fn announce(config: &Config, addr: SocketAddr, broker: &str) {
    let source = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none (built-in defaults)".into());
    tracing::info!(
        "plexus {} listening on http://{addr} (profile {}, broker {broker}, config {source})",
        env!("CARGO_PKG_VERSION"),
        config.profile.name(),
    );
    tracing::info!("WebSocket endpoint: ws://{addr}/socket (phoenix.js: new Socket(\"ws://{addr}/socket\", {{params: {{token}}}}))");
    if config.profile == Profile::Dev {
        tracing::warn!("DEV PROFILE: anyone who can reach http://{addr}/dev/token can get a token. Never expose it; use PLEXUS_PROFILE=prod in production.");
        if config.jwt_secret_generated {
            tracing::warn!("DEV PROFILE: the JWT secret is random for this run (set PLEXUS_JWT_SECRET to keep tokens valid across restarts)");
        }
        tracing::info!(
            "get a token: curl 'http://{addr}/dev/token?sub=alice'   demo chat: http://{addr}/"
        );
        if config.api_key_generated {
            tracing::info!("dev API key for /api/*: {}", config.api_key);
        }
    } else {
        tracing::info!("get a token: plexus token --config <file> --sub alice --ttl 1h");
    }
}

/// Waits for SIGTERM or Ctrl-C, then drains: every client is closed with 1012 and the server
/// waits (up to `timeout`) for them to go before it stops.
async fn drain_on_signal(node: Arc<Node>, timeout: Duration) {
    wait_for_signal().await;
    let live = node.connection_count();
    tracing::info!(connections = live, "draining: closing clients with 1012");
    node.drain();
    let deadline = tokio::time::Instant::now() + timeout;
    while node.connection_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(remaining = node.connection_count(), "drained");
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
