//! Pusher's protocol semantics on top of the core: the app's credentials and, in the modules
//! below, what Pusher defines beyond the wire format (channel kinds and their signatures,
//! presence members keyed by `user_id`, client events). The wire format itself is a pure codec
//! in [`crate::protocol`]; a Pusher channel is a Plexus topic, so rules, limits, hooks, history
//! and metrics apply to Pusher connections as to the others (docs/pusher.md).
//!
//! - [`api_auth`]: the signatures of Pusher's HTTP API requests.

pub mod api_auth;

/// The one Pusher app this server serves (`[pusher]`, `PLEXUS_PUSHER_*`): the `app_id` of the
/// HTTP API's paths, the `key` clients connect with (`/app/{key}`), and the `secret` that
/// signs channel authorisations, API requests and webhooks.
#[derive(Clone)]
pub struct PusherApp {
    pub app_id: String,
    pub key: String,
    pub secret: String,
}

impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherApp")
            .field("app_id", &self.app_id)
            .field("key", &self.key)
            .field("secret", &"<hidden>")
            .finish()
    }
}
