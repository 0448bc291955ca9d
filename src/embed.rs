//! Plexus inside an existing axum application — the embedding API, and the only part of the
//! `plexus` crates whose shape is kept stable (README, "Embedding (stable API)";
//! walkthrough in `docs/embedding.md`, example in `examples/embed_axum.rs`).
//!
//! ```no_run
//! use plexus::embed::{JoinAttempt, JoinAuthorizer, JoinDecision, Plexus};
//! use std::net::SocketAddr;
//!
//! struct Rooms;
//!
//! impl JoinAuthorizer for Rooms {
//!     async fn authorize(&self, join: &JoinAttempt<'_>) -> JoinDecision {
//!         if join.topic() == "room:staff" && !join.has_role("staff") {
//!             return JoinDecision::deny("staff only");
//!         }
//!         JoinDecision::allow()
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = plexus::config::parse_str(
//!     r#"
//!     jwt_secret = "a-secret-of-at-least-16-bytes"
//!     api_key = "an-api-key-of-16-bytes-or-more"
//!     [[channels]]
//!     topic = "room:*"
//!     presence = true
//!     "#,
//!     &plexus::config::Env::default(),
//!     None,
//!     None,
//! )?;
//! let plexus = Plexus::builder(config).join_authorizer(Rooms).build().await?;
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "the application's own page" }))
//!     .merge(plexus.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//!     .with_graceful_shutdown(plexus.drain_after(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     }))
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! What is built is what the `plexus` binary builds from the same [`Config`] (node, broker —
//! in memory or Redis —, channel rules, limits, hooks and webhooks), minus what belongs to the
//! binary's own listener: `listen`, `tls`, `limits.http_header_timeout_secs` and
//! `limits.max_pending_connections*` are the application's server's business, and the admin
//! console, the demo pages, `/health`, `/metrics` and the dev routes are not mounted. Plexus
//! records its metrics through the `metrics` facade into whatever recorder the application
//! installed (before [`Builder::build`]).
#![deny(missing_docs)]

use crate::config::Config;
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use plexus_core::hooks::answer::Decision;
use plexus_core::hooks::in_process::{InProcessJoin, JoinAsk, JoinAuthority, DEFAULT_TIMEOUT};
use plexus_core::protocol::Payload;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// A running Plexus node inside the application: its routes, publishing, presence and drain.
/// Cheap to clone (all clones are the same node).
#[derive(Clone)]
pub struct Plexus {
    state: AppState,
    api: bool,
    /// Answers the other nodes' requests (admin figures, LongPoll forwarding); the node keeps
    /// only a weak reference to it, so it lives here.
    _calls: Arc<crate::admin::cluster::Dispatcher>,
}

/// Builds a [`Plexus`] from a [`Config`] (see [`Plexus::builder`]).
pub struct Builder {
    config: Config,
    authorizer: Option<Arc<dyn JoinAuthority>>,
    join_timeout: Duration,
    api: bool,
}

impl Plexus {
    /// Starts building from `config`, the configuration the `plexus` binary reads: build it
    /// with [`crate::config::parse_str`] (TOML text) or [`crate::config::load`] (a file,
    /// with `PLEXUS_*` overrides from [`crate::config::Env::from_process`]).
    pub fn builder(config: Config) -> Builder {
        Builder {
            config,
            authorizer: None,
            join_timeout: DEFAULT_TIMEOUT,
            api: false,
        }
    }

    /// The routes to merge into the application's router: `GET /socket/websocket`,
    /// `GET|POST /socket/longpoll`, `GET /sse` (and, as configured, Supabase's and Pusher's
    /// WebSocket paths), plus the HTTP API (`/api/*`) if [`Builder::with_http_api`] asked for
    /// it. They need the client's address: serve the application with
    /// `into_make_service_with_connect_info::<SocketAddr>()` (without it they answer 500).
    pub fn router(&self) -> Router {
        let state = &self.state;
        let mut r = crate::app::client_routes(Router::new(), state);
        if self.api {
            r = crate::app::api_routes(r, state);
        }
        r.layer(axum::extract::DefaultBodyLimit::max(
            crate::routes::body_limit(state),
        ))
        .layer(axum::middleware::from_fn(require_client_address))
        .with_state(state.clone())
    }

    /// Broadcasts `event` with `payload` (any value that serialises to JSON) to every
    /// subscriber of `topic`, cluster-wide, as `POST /api/broadcast` does: on a topic that
    /// keeps history the broadcast is retained and its offset returned. Events starting with
    /// `phx_` are the server's own and refused.
    pub async fn publish(
        &self,
        topic: &str,
        event: &str,
        payload: &impl Serialize,
    ) -> Result<Option<u64>, PublishError> {
        let raw = serde_json::value::to_raw_value(payload)
            .map_err(|e| PublishError::Invalid(format!("payload is not JSON: {e}")))?;
        let node = &self.state.node;
        let (event, payload) = crate::routes::api::prepare(node, topic, event, Payload::Json(raw))
            .map_err(PublishError::Invalid)?;
        node.publish(topic, event, payload, None)
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))
    }

    /// Who is present on `topic`, cluster-wide (this node's view if the broker cannot be
    /// reached): each presence key (a user's `sub`) with one meta object per connection, as
    /// `GET /api/channels/{topic}/presence` answers.
    pub async fn presence(&self, topic: &str) -> BTreeMap<String, Vec<serde_json::Value>> {
        let state = self.state.node.presence().state(topic).await;
        let serde_json::Value::Object(members) = state else {
            return BTreeMap::new();
        };
        members
            .into_iter()
            .map(|(key, entry)| {
                let metas = match entry {
                    serde_json::Value::Object(mut e) => match e.remove("metas") {
                        Some(serde_json::Value::Array(metas)) => metas,
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                };
                (key, metas)
            })
            .collect()
    }

    /// A connect token (HS256, signed with the configured `jwt_secret`) for user `sub` with
    /// `roles`, valid for `ttl`: what the application hands its signed-in users. Fails when no
    /// `jwt_secret` is configured (tokens then come from the identity provider).
    pub fn issue_token(
        &self,
        sub: &str,
        roles: &[String],
        ttl: Duration,
    ) -> Result<String, TokenError> {
        if self.state.config.jwt_secret.is_empty() {
            return Err(TokenError(
                "no jwt_secret configured: tokens come from the configured keys' issuer".into(),
            ));
        }
        if sub.is_empty() {
            return Err(TokenError("the user id (sub) is empty".into()));
        }
        self.state
            .issuer
            .issue(sub, roles, None, ttl.as_secs().max(1))
            .map_err(|e| TokenError(e.to_string()))
    }

    /// Live client connections on this node.
    pub fn connection_count(&self) -> usize {
        self.state.node.connection_count()
    }

    /// Drains, as the binary does on SIGTERM: new connections are refused (503 `server
    /// draining`; for `drain_notice_secs` first, if set, while the live ones stay), every
    /// client is closed with 1012 (they reconnect elsewhere, or here once back), and the last
    /// webhooks are flushed, all within `drain_timeout_secs`. Returns the connections still
    /// open at the deadline (0: all closed).
    pub async fn drain(&self) -> usize {
        let node = &self.state.node;
        let config = &self.state.config;
        if !config.drain_notice.is_zero() {
            node.stop_admitting();
            tokio::time::sleep(config.drain_notice).await;
        }
        let deadline = tokio::time::Instant::now() + config.drain_timeout;
        crate::server::drain(node.clone(), config.drain_timeout).await;
        if let Some(grace) = node.webhook_grace() {
            // Disconnects held for the reconnect grace are sent before the deadline (as the
            // binary's drain does).
            let until = deadline
                .checked_sub(Duration::from_secs(1))
                .unwrap_or(deadline);
            grace.flush(until).await;
        }
        for w in node.webhooks().iter().chain(node.pusher_webhooks().iter()) {
            w.flush(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await;
        }
        node.connection_count()
    }

    /// Waits for `signal` (the application's own shutdown signal), then [`Plexus::drain`]s:
    /// give it to `axum::serve(…).with_graceful_shutdown(…)`, so that Plexus's clients are
    /// closed before the server waits for its open requests (SSE streams and long polls
    /// among them).
    pub fn drain_after(
        &self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let plexus = self.clone();
        async move {
            signal.await;
            plexus.drain().await;
        }
    }
}

impl Builder {
    /// Decides joins in the application's process: asked for every join the channel rules
    /// allow (and for HTTP history reads), after the rules and caps and before any HTTP join
    /// hook — see [`JoinAuthorizer`].
    pub fn join_authorizer(mut self, authorizer: impl JoinAuthorizer) -> Self {
        self.authorizer = Some(Arc::new(Adapter(authorizer)));
        self
    }

    /// How long one [`JoinAuthorizer::authorize`] may take (default 2 s, as the HTTP join
    /// hook's `hooks.timeout_ms`); past it the join is refused with `hook unavailable`.
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// Also mount the HTTP API (`/api/*`, behind the configured `api_key`; Pusher's HTTP API
    /// in Pusher mode) in [`Plexus::router`]. Off by default: the application has
    /// [`Plexus::publish`] and [`Plexus::presence`].
    pub fn with_http_api(mut self, on: bool) -> Self {
        self.api = on;
        self
    }

    /// Builds the node (connecting to Redis in cluster mode). Needs a Tokio runtime.
    pub async fn build(self) -> Result<Plexus, BuildError> {
        let config = self.config;
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        if config.tls.is_some() || config.http_redirect.is_some() {
            tracing::warn!(
                "embedded: tls settings are ignored (the application's server owns the listener)"
            );
        }
        let authority = self
            .authorizer
            .map(|a| InProcessJoin::new(a, self.join_timeout));
        let (state, calls) = crate::server::build_state(Arc::new(config), authority)
            .await
            .map_err(|e| BuildError(e.to_string()))?;
        tracing::info!(
            broker = state.node.broker_name(),
            profile = state.config.profile.name(),
            "plexus embedded: routes ready to mount"
        );
        Ok(Plexus {
            state,
            api: self.api,
            _calls: calls,
        })
    }
}

/// Decides joins in the application's own code: the in-process twin of the HTTP join hook
/// (docs/hooks.md). Plexus asks it once the channel rules and caps allowed a join (every
/// transport and protocol), again when an anonymous connection that joined signs in, and for
/// HTTP history reads (then [`JoinAttempt::connection`] is `None` and the params are
/// `{"history": true}`); an HTTP join hook configured for the topic is asked after it, and
/// both must allow.
///
/// The answer is read as the HTTP hook's is: a denial reaches the client as its join's error
/// `{"reason": …, "retry": false}` (an empty reason as `unauthorized`); a presence meta larger
/// than 4096 bytes, a panic, or no answer within [`Builder::join_timeout`] refuses the join
/// with `hook unavailable` (`retry: true`) and is logged — the connection stays.
pub trait JoinAuthorizer: Send + Sync + 'static {
    /// The decision on `join`. Implement it as an `async fn`.
    fn authorize(&self, join: &JoinAttempt<'_>) -> impl Future<Output = JoinDecision> + Send;
}

/// A join to decide: who, from where, which topic, with which params.
pub struct JoinAttempt<'a> {
    ask: &'a JoinAsk<'a>,
}

impl JoinAttempt<'_> {
    /// The user id (the token's `sub`; `anon:<uuid>` for an anonymous connection).
    pub fn sub(&self) -> &str {
        &self.ask.caller.identity.sub
    }

    /// The token's roles, in the token's order.
    pub fn roles(&self) -> impl Iterator<Item = &str> + '_ {
        self.ask.caller.identity.roles.iter()
    }

    /// Whether the token names `role` among its roles.
    pub fn has_role(&self, role: &str) -> bool {
        self.ask.caller.identity.roles.contains(role)
    }

    /// The token's display name (`name` claim), if any.
    pub fn name(&self) -> Option<&str> {
        self.ask.caller.identity.name.as_deref()
    }

    /// Whether the connection is anonymous (no signed-in user).
    pub fn anonymous(&self) -> bool {
        self.ask.caller.identity.anonymous
    }

    /// The topic to join.
    pub fn topic(&self) -> &str {
        self.ask.topic
    }

    /// The join's params as JSON (`{}` if none; never the `access_token` a Supabase join may
    /// carry).
    pub fn params(&self) -> &serde_json::Value {
        self.ask.params
    }

    /// The connection's id as webhooks and the HTTP hook name it (`<node>-<n>`); `None` for
    /// an HTTP history read.
    pub fn connection(&self) -> Option<&str> {
        self.ask.conn_id.as_deref()
    }

    /// The client's address (behind `trusted_proxies`, the forwarded one).
    pub fn addr(&self) -> Option<IpAddr> {
        self.ask.caller.addr
    }
}

/// A [`JoinAuthorizer`]'s answer: allow (optionally with a reply and presence meta) or deny
/// with a reason — what the HTTP join hook answers as `{"allow", "reason", "reply", "meta"}`.
#[derive(Clone, Debug)]
pub struct JoinDecision(Decision);

impl JoinDecision {
    /// The join is allowed.
    pub fn allow() -> Self {
        JoinDecision(Decision {
            allow: true,
            ..Decision::refusal("")
        })
    }

    /// The join is refused with `reason` (at most 200 characters are sent).
    pub fn deny(reason: impl Into<String>) -> Self {
        JoinDecision(Decision::refusal(&reason.into()))
    }

    /// Fields added to the client's join reply (`epoch`, `offset`, `recovered` and
    /// `postgres_changes` are Plexus's own and dropped).
    pub fn with_reply(mut self, reply: serde_json::Map<String, serde_json::Value>) -> Self {
        self.0.reply = Some(reply);
        self
    }

    /// Fields added to the connection's presence meta on a presence topic (4096 bytes at
    /// most).
    pub fn with_meta(mut self, meta: serde_json::Map<String, serde_json::Value>) -> Self {
        self.0.meta = Some(meta);
        self
    }

    /// Whether this decision allows the join.
    pub fn is_allowed(&self) -> bool {
        self.0.allow
    }
}

/// Why [`Plexus::publish`] did not publish.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The topic, event or payload is invalid (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// The broker did not take it (Redis unreachable in cluster mode).
    #[error("not published: {0}")]
    Unavailable(String),
}

/// Why [`Builder::build`] failed (Redis unreachable, for one).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(String);

/// Why [`Plexus::issue_token`] gave no token.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(String);

/// A [`JoinAuthorizer`] as the core's [`JoinAuthority`].
struct Adapter<A>(A);

#[async_trait::async_trait]
impl<A: JoinAuthorizer> JoinAuthority for Adapter<A> {
    async fn decide(&self, ask: JoinAsk<'_>) -> Decision {
        self.0.authorize(&JoinAttempt { ask: &ask }).await.0
    }
}

/// Plexus's routes need the client's address (admission caps, trusted proxies): a clear 500
/// when the application's server does not provide it.
async fn require_client_address(req: Request, next: Next) -> Response {
    if req.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
        tracing::error!("plexus: the client's address is missing: serve the application with into_make_service_with_connect_info::<SocketAddr>()");
        return crate::routes::json_error(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the server does not provide the client's address (serve with into_make_service_with_connect_info::<SocketAddr>())",
        );
    }
    next.run(req).await
}
