//! The server's shared state: what every HTTP handler, the admin console and the metrics
//! endpoint are given (the node, the configuration, the gate, the API key guard, LongPoll
//! sessions, the console).

use crate::api_key::ApiGuard;
use crate::config::Config;
use plexus_core::auth::Issuer;
use plexus_core::transport::longpoll::LongPoll;
use plexus_core::Node;
use std::sync::Arc;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    /// Connections not yet admitted (for `/metrics`).
    pub gate: Arc<crate::gate::Gate>,
    /// Wrong API keys per address.
    pub api_guard: Arc<ApiGuard>,
    pub config: Arc<Config>,
    pub issuer: Issuer,
    pub longpoll: Arc<LongPoll>,
    // (admin console)
    pub admin: Arc<crate::admin::Admin>,
    /// Pusher mode's app (`config.pusher`), shared by every Pusher connection.
    pub pusher_app: Option<Arc<plexus_core::pusher::PusherApp>>,
    /// Pusher mode: the subscriptions told their channel's subscriber count.
    pub pusher_counts: Option<Arc<plexus_core::pusher::subscription_count::SubscriptionCounts>>,
}
