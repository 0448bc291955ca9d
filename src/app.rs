//! The whole HTTP application: which path does what, the fallback and the layers around
//! every route. Each group of endpoints lives in its own module.
//!
//! | path | module |
//! |------|--------|
//! | `GET /socket/websocket` | [`websocket`] — Phoenix WebSocket endpoint |
//! | `GET`, `POST /socket/longpoll` | [`longpoll`] — Phoenix LongPoll endpoint |
//! | `GET /sse` | [`sse`] — Server-Sent Events |
//! | `GET /app/{key}` | [`pusher_ws`] — Pusher's WebSocket endpoint (Pusher mode only) |
//! | `POST /api/broadcast`, `GET /api/channels`, `GET /api/channels/{topic}/presence`, `GET /api/channels/{topic}/history`, `POST /api/disconnect` | [`api`] — backend API (API key) |
//! | `POST /apps/{id}/events`, `/batch_events`, `/users/{user}/terminate_connections`, `GET /apps/{id}/channels[/{channel}[/users]]` | [`pusher_api`] — Pusher's HTTP API (Pusher mode only) |
//! | `GET /dev/token`, `GET /dev/echo` | [`dev`] — dev profile only |
//! | `GET /health`, `GET /metrics` | [`health`] |
//! | `GET /`, `GET /demo/*`, `GET /assets/*` | [`crate::demo::pages`] — the demo (setting `demo`: dev by default) |
//! | `GET /admin`, `/admin/api/*` | [`crate::admin`] — admin console |
//!
//! An application that embeds Plexus ([`crate::embed`]) mounts the client endpoints
//! (`client_routes`) and, if it asks, the APIs (`api_routes`) in its own router.

use crate::config::Profile;
use crate::demo::pages;
use crate::routes::{
    api, body_limit, dev, health, json_error, longpoll, pusher_api, pusher_ws, sse, websocket,
};
use crate::state::AppState;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

/// Every route of the server, with `state`.
pub fn router(state: AppState) -> Router {
    let mut r = Router::new();
    if state.config.demo {
        // (demo) off: these paths fall through to the JSON 404.
        r = r
            .route("/", get(pages::index))
            .route("/demo/roles", get(pages::roles))
            .route("/demo/live", get(pages::live))
            .route("/assets/demo.js", get(pages::script))
            .route("/assets/demo.css", get(pages::style))
            .route("/assets/phoenix.min.js", get(pages::phoenix_js));
    }
    r = client_routes(r, &state);
    r = api_routes(r, &state);
    r = r
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics));
    // (admin console)
    r = crate::admin::routes(r);
    let dev = state.config.profile == Profile::Dev;
    if dev {
        r = r
            .route("/dev/token", get(dev::token))
            .route("/dev/echo", get(dev::echo));
    }
    let limit = body_limit(&state);
    r = r
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(limit));
    if dev {
        // Every route, the fallback included (a layer wraps what is routed before it).
        r = r.layer(axum::middleware::from_fn(dev::loopback_host_only));
    }
    r.with_state(state)
}

/// The client endpoints: WebSocket, LongPoll, SSE, and as configured Supabase's WebSocket path
/// and Pusher's (also mounted by [`crate::embed`]).
pub(crate) fn client_routes(mut r: Router<AppState>, state: &AppState) -> Router<AppState> {
    r = r
        .route("/socket/websocket", get(websocket::upgrade))
        .route(
            "/socket/longpoll",
            get(longpoll::poll)
                .post(longpoll::post)
                .options(longpoll::preflight),
        )
        .route("/sse", get(sse::stream));
    if state.config.supabase {
        // supabase-js connects to `<project>/realtime/v1/websocket`; Supabase's gateway
        // rewrites that to `/socket/websocket`, Plexus serves both.
        r = r.route("/realtime/v1/websocket", get(websocket::upgrade));
    }
    if state.pusher_app.is_some() {
        // pusher-js connects to `/app/{key}?protocol=7&client=js&version=…`.
        r = r.route("/app/{key}", get(pusher_ws::upgrade));
    }
    r
}

/// The backend API (`/api/*`, with the API key) and, in Pusher mode, Pusher's HTTP API (also
/// mounted by [`crate::embed`] when asked).
pub(crate) fn api_routes(mut r: Router<AppState>, state: &AppState) -> Router<AppState> {
    r = r
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/channels", get(api::channels))
        .route("/api/disconnect", post(api::disconnect))
        .route("/api/channels/{topic}/presence", get(api::presence))
        .route("/api/channels/{topic}/history", get(api::history));
    if state.config.pusher.is_some() {
        // Pusher's HTTP API (signed with the app's secret, not the API key).
        r = pusher_api::routes(r);
    }
    r
}
