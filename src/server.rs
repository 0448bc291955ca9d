//! Wiring: builds the node from the configuration, starts the listener (`listener.rs`: plain or TLS,
//! HTTP/1.1 with WebSocket upgrades), reloads certificates on SIGHUP, drains on SIGTERM/SIGINT.

use crate::app::router;
use crate::config::{Config, Profile};
use crate::gate::Gate;
use crate::hook_client::HookClient;
use crate::listener::{serve_loop, Http};
use crate::state::AppState;
use crate::tls::{self, ReloadableCert};
use axum::Router;
use plexus_core::auth::Issuer;
use plexus_core::broker::memory::MemoryBroker;
use plexus_core::broker::redis::RedisBroker;
use plexus_core::hooks::in_process::InProcessJoin;
use plexus_core::hub::Hub;
use plexus_core::node::{HookSetup, NodeConfig, PusherSetup};
use plexus_core::transport::longpoll::LongPoll;
use plexus_core::Node;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Broker(#[from] plexus_core::broker::BrokerError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Listen(String),
    #[error("{0}")]
    Keys(String),
}

/// The configured verifier with the keys of `auth.jwks_urls`, fetched now and refreshed from
/// here on. Without any key to verify with — every URL failed and no other key is configured
/// (a secret the dev profile made up does not count) — the server does not start.
async fn verifier_with_jwks_urls(
    config: &Config,
) -> Result<plexus_core::auth::Verifier, StartError> {
    let mut verifier = config.verifier.clone();
    if config.jwks_urls.is_empty() {
        return Ok(verifier);
    }
    let fetcher = Arc::new(crate::jwks_client::JwksClient::new().map_err(StartError::Keys)?);
    let (remote, failures) =
        plexus_core::auth::RemoteKeys::start(config.jwks_urls.clone(), fetcher).await;
    let fetched = remote.key_count();
    verifier.set_remote_keys(remote);
    let generated = usize::from(config.jwt_secret_generated);
    if fetched == 0 && verifier.keys().len() <= generated {
        let why: Vec<String> = failures
            .iter()
            .map(|(url, e)| format!("{url}: {e}"))
            .collect();
        return Err(StartError::Keys(format!(
            "no key to verify tokens with: no JWKS URL gave a usable key ({}) and no other key is configured (jwt_secret, [[auth.keys]], auth.jwks_files)",
            why.join("; ")
        )));
    }
    tracing::info!(
        urls = config.jwks_urls.len(),
        keys = fetched,
        failed = failures.len(),
        "JWKS URLs fetched"
    );
    Ok(verifier)
}

/// Runs the server until SIGTERM or SIGINT, then drains (see the module doc).
pub async fn run(config: Config) -> Result<(), StartError> {
    // Before anything records a metric (the core resolves its handles once).
    crate::metrics::install();
    let config = Arc::new(config);
    // `_calls` answers the other nodes' requests (the node keeps only a weak reference to it):
    // it must live as long as the server.
    let (state, _calls) = build_state(config.clone(), None).await?;
    let node = state.node.clone();
    let gate = state.gate.clone();
    crate::allocator::spawn_trimmer(
        &node,
        crate::allocator::trim_after(config.limits.history.max_bytes),
    );
    let tls = match &config.tls {
        Some(files) => {
            let cert = ReloadableCert::new(files.clone())?;
            tokio::spawn(reload_on_sighup(Some(cert.clone())));
            Some(tls::acceptor(cert)?)
        }
        None => {
            // SIGHUP must not kill the server (its default action): say there is nothing to do.
            tokio::spawn(reload_on_sighup(None));
            None
        }
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Listen(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Listen(format!("cannot read the listening address: {e}")))?;
    // Before the announcement: a SIGTERM right after it must drain, not kill (default action).
    let stop_signals = StopSignals::install();
    announce(&config, addr, node.broker_name(), tls.is_some());
    // (demo) the live page's data, through this server's own HTTP API.
    if config.demo_feed {
        start_demo_feed(&config, addr, tls.is_some(), node.clone());
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(redirect) = config.http_redirect {
        let l = TcpListener::bind(redirect).await.map_err(|e| {
            StartError::Listen(format!(
                "cannot listen on {redirect} (tls.redirect_http): {e}"
            ))
        })?;
        tracing::info!("redirecting http://{redirect} to https://");
        tokio::spawn(serve_loop(
            l,
            redirect_router(config.public_host.clone().unwrap_or_default()),
            None,
            Http {
                gate: gate.clone(),
                header_timeout: config.http_header_timeout,
                write_through: false,
            },
            stop_rx.clone(),
            Arc::new(()),
        ));
    }
    let app = router(state);
    let http = Http {
        gate,
        header_timeout: config.http_header_timeout,
        write_through: config.websocket_write_through,
    };
    // One clone per HTTP connection being served: the drain waits for them (a poll answered,
    // a request finished) before the process ends.
    let in_flight = Arc::new(());
    let serving = tokio::spawn(serve_loop(
        listener,
        app,
        tls,
        http,
        stop_rx,
        in_flight.clone(),
    ));

    stop_signals.wait().await;
    if !config.drain_notice.is_zero() {
        // Health checks see "draining" and balancers stop routing here first.
        tracing::info!(
            secs = config.drain_notice.as_secs(),
            "draining: /health says draining, new connections are refused"
        );
        node.stop_admitting();
        tokio::time::sleep(config.drain_notice).await;
    }
    // Stop accepting before closing clients: their reconnects must find another node (a
    // closed port is retried elsewhere by balancers at once).
    let _ = stop_tx.send(true);
    // The accept loop returns at once, dropping (closing) the listener.
    let _ = serving.await;
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    let webhooks = node.webhooks().cloned();
    let pusher_webhooks = node.pusher_webhooks().cloned();
    let grace = node.webhook_grace().cloned();
    drain(node, config.drain_timeout).await;
    while Arc::strong_count(&in_flight) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(grace) = grace {
        // Disconnects held for the reconnect grace: kept until their grace ends (clients
        // reconnecting to other nodes claim them) but not past the drain's deadline (less a
        // second to send them), then sent.
        grace
            .flush(
                deadline
                    .checked_sub(Duration::from_secs(1))
                    .unwrap_or(deadline),
            )
            .await;
    }
    for w in webhooks.iter().chain(pusher_webhooks.iter()) {
        // The last disconnects (and vacated channels) reach the application (within the drain
        // timeout).
        w.flush(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The node and the state every handler shares, built from `config`: the wiring the binary
/// ([`run`]) and the embedding API ([`crate::embed`]) have in common, with the handler of the
/// other nodes' requests, which the caller keeps alive (the node holds it weakly).
/// `join_authority`: joins decided in the embedding application's process.
pub(crate) async fn build_state(
    config: Arc<Config>,
    join_authority: Option<InProcessJoin>,
) -> Result<(AppState, Arc<crate::admin::cluster::Dispatcher>), StartError> {
    let verifier = verifier_with_jwks_urls(&config).await?;
    let node_config = NodeConfig {
        verifier,
        policy: config.policy.clone(),
        limits: config.limits.clone(),
        admission: config.admission.clone(),
        hooks: match &config.hooks {
            Some(h) => Some(HookSetup {
                hooks: h.hooks.clone(),
                webhooks: h.webhooks.clone(),
                transport: Arc::new(HookClient::new().map_err(StartError::Listen)?),
            }),
            None => None,
        },
        pusher: match &config.pusher {
            Some(app) => Some(PusherSetup {
                app: app.clone(),
                webhooks: match &config.pusher_webhooks {
                    Some(w) => Some((
                        w.clone(),
                        Arc::new(HookClient::new().map_err(StartError::Listen)?) as _,
                    )),
                    None => None,
                },
            }),
            None => None,
        },
        join_authority,
    };
    let hub = Hub::with_presence_diff_interval(config.presence_diff_interval);
    let node = match &config.redis {
        None => {
            let broker = MemoryBroker::with_budget(hub.clone(), config.limits.history);
            Node::with_broker(node_config, hub, broker)
        }
        Some(redis) => {
            let broker = RedisBroker::connect(hub.clone(), redis.clone()).await?;
            tracing::info!(node = broker.node_id(), prefix = %redis.prefix, "cluster mode: connected to Redis");
            Node::with_broker(node_config, hub, broker)
        }
    };
    let gate = Gate::new(config.gate, config.admission.trusted_proxies.clone());
    // (admin console) its node-to-node requests share LongPoll's handler: installed first.
    let calls = crate::admin::cluster::Dispatcher::install(&node);
    let longpoll = LongPoll::new(node.clone(), config.limits.longpoll_window);
    calls.set_longpoll(&longpoll);
    let admin = crate::admin::Admin::new(config.admin_secret.as_deref());
    tokio::spawn(crate::admin::samples::run(
        Arc::downgrade(&admin),
        node.clone(),
        longpoll.clone(),
    ));
    // Pusher mode: `pusher_internal:subscription_count`, told once a second at most.
    let pusher_counts = config.pusher.as_ref().map(|_| {
        let counts = plexus_core::pusher::subscription_count::SubscriptionCounts::new();
        tokio::spawn(counts.clone().run(Arc::downgrade(&node)));
        counts
    });
    let state = AppState {
        gate: gate.clone(),
        api_guard: Default::default(),
        node: node.clone(),
        config: config.clone(),
        issuer: Issuer::hs256(config.jwt_secret.as_bytes()),
        longpoll,
        admin,
        pusher_app: config.pusher.clone().map(Arc::new),
        pusher_counts,
    };
    calls.set_state(state.clone());
    Ok((state, calls))
}

/// The plain-HTTP listener of `tls.redirect_http`: every request is sent to
/// `https://<tls.public_host><path>`. The request's own `Host` is never used (a client could
/// send any name and have it echoed into the redirect).
fn redirect_router(public_host: String) -> Router {
    use axum::http::{header, StatusCode, Uri};
    use axum::response::IntoResponse;
    Router::new().fallback(move |uri: Uri| {
        let host = public_host.clone();
        async move {
            let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            (
                StatusCode::PERMANENT_REDIRECT,
                [(header::LOCATION, format!("https://{host}{path}"))],
            )
                .into_response()
        }
    })
}

fn announce(config: &Config, addr: SocketAddr, broker: &str, tls: bool) {
    let source = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "none (built-in defaults)".into());
    let (http, ws) = if tls {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    tracing::info!(
        "plexus {} listening on {http}://{addr} (profile {}, broker {broker}, config {source})",
        env!("CARGO_PKG_VERSION"),
        config.profile.name(),
    );
    tracing::info!("WebSocket endpoint: {ws}://{addr}/socket (phoenix.js: new Socket(\"{ws}://{addr}/socket\", {{params: {{token}}}}))");
    if config.profile == Profile::Dev {
        tracing::warn!("DEV PROFILE: anyone who can reach {http}://{addr}/dev/token can get a token. Never expose it; use PLEXUS_PROFILE=prod in production.");
        if config.jwt_secret_generated {
            tracing::warn!("DEV PROFILE: the JWT secret is random for this run (set PLEXUS_JWT_SECRET to keep tokens valid across restarts)");
        }
        tracing::info!("get a token: curl '{http}://{addr}/dev/token?sub=alice'");
        if config.api_key_generated {
            tracing::info!("dev API key for /api/*: {}", config.api_key);
        }
    } else {
        tracing::info!("get a token: plexus token --config <file> --sub alice --ttl 1h");
    }
    // (demo)
    if config.demo {
        tracing::info!("demo pages: {http}://{addr}/ (setting demo, PLEXUS_DEMO)");
    }
}

// (demo)
/// Runs the demo's live-data generator against this server's HTTP API, publishing only while
/// `demo:live` has subscribers here (plain HTTP only: not with native TLS).
fn start_demo_feed(config: &Config, addr: SocketAddr, tls: bool, node: Arc<Node>) {
    use crate::demo::feed;
    if tls {
        tracing::info!("demo feed off: it speaks plain HTTP and this server serves TLS");
        return;
    }
    let mut local = addr;
    if local.ip().is_unspecified() {
        local.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let target = match feed::Target::parse(&format!("http://{local}"), &config.api_key) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "demo feed off");
            return;
        }
    };
    tracing::info!(
        "demo feed: live data on {} while someone watches: http://{local}/demo/live",
        feed::TOPIC
    );
    tokio::spawn(async move {
        feed::run(target, feed::TOPIC, None, move || {
            node.hub().subscriber_count(feed::TOPIC) > 0
        })
        .await
    });
}

/// SIGHUP reloads the TLS certificate (`None`: no TLS, the signal is logged and ignored).
async fn reload_on_sighup(cert: Option<Arc<ReloadableCert>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: certificates will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            let Some(cert) = &cert else {
                tracing::info!("SIGHUP: nothing to reload (no TLS configured); ignored");
                continue;
            };
            match cert.reload() {
                Ok(()) => {
                    tracing::info!(cert = %cert.cert_path().display(), "SIGHUP: TLS certificate reloaded")
                }
                Err(e) => tracing::error!(
                    "SIGHUP: TLS certificate NOT reloaded, keeping the old one: {e}"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = cert;
}

/// Drains: every client is closed with 1012 and the server waits (up to `timeout`) for them
/// to go before it stops.
pub(crate) async fn drain(node: Arc<Node>, timeout: Duration) {
    let live = node.connection_count();
    tracing::info!(connections = live, "draining: closing clients with 1012");
    node.drain();
    let deadline = tokio::time::Instant::now() + timeout;
    // Until every connection is gone and has left its channels in the cluster too (a leave's
    // presence removal and diff go through Redis after the connection is unregistered).
    while (node.connection_count() > 0 || node.departing_count() > 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(
        remaining = node.connection_count(),
        departing = node.departing_count(),
        "drained"
    );
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from [`StopSignals::install`] on: a signal that
/// arrives between the listener's announcement and the first wait is not lost (and does not
/// kill the process by its default action).
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            StopSignals {}
        }
    }

    /// Until the first of them arrives.
    async fn wait(mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                _ = next(&mut self.term) => {}
                _ = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
