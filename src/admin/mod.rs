//! The admin console: `GET /admin` (a page that fetches everything else itself) and the small
//! JSON endpoints under `/admin/api/` it reads and acts through.
//!
//! | path | module |
//! |------|--------|
//! | `POST /admin/api/session` (sign in) | [`session`] |
//! | `GET /admin/api/overview`, `/topics`, `/topics/{topic}/presence`, `/config` | [`views`] |
//! | `GET /admin/api/tail?topic=T` (live tail, `text/event-stream`) | [`tail`] |
//! | `POST /admin/api/broadcast`, `/disconnect`, `/drain` | [`actions`] |
//!
//! Every `/admin/api/` endpoint but sign-in needs `Authorization: Bearer <session token>`;
//! the page keeps the token in `sessionStorage` and no cookie is involved, so another site
//! cannot make a signed-in browser act (no CSRF). With no admin secret (the prod default)
//! every `/admin` path answers 404 with a JSON reason. [`samples`] keeps the charts' series;
//! [`cluster`] carries the console's node-to-node requests (another node's figures, drain).

pub mod actions;
pub mod cluster;
pub mod samples;
pub mod session;
pub mod tail;
pub mod views;

use crate::routes::json_error;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

const PAGE: &str = include_str!("../../assets/admin/index.html");
const SCRIPT: &str = include_str!("../../assets/admin/admin.js");
const STYLE: &str = include_str!("../../assets/admin/admin.css");

/// The console's state on this node.
pub struct Admin {
    session: Option<session::SessionKeys>,
    pub samples: samples::Samples,
    started: std::time::Instant,
    /// Live tails open now (bounded by [`tail::MAX_TAILS`]), and their subscriber ids.
    tails: AtomicUsize,
    next_tail: AtomicU64,
}

impl Admin {
    /// The console of a node; `secret: None` disables it.
    pub fn new(secret: Option<&str>) -> Arc<Self> {
        Arc::new(Admin {
            session: secret.map(session::SessionKeys::new),
            samples: samples::Samples::default(),
            started: std::time::Instant::now(),
            tails: AtomicUsize::new(0),
            next_tail: AtomicU64::new(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.session.is_some()
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

/// The answer of every `/admin` path while the console is disabled.
fn disabled() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "admin console disabled: set admin_secret (or PLEXUS_ADMIN_SECRET) to enable /admin",
    )
}

/// Extractor of the admin API: the request carries a valid session token, else 401 (or 404
/// while the console is disabled).
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(keys) = &state.admin.session else {
            return Err(disabled());
        };
        match crate::api_key::bearer(&parts.headers) {
            None => Err(json_error(
                StatusCode::UNAUTHORIZED,
                "sign in first: POST /admin/api/session, then send Authorization: Bearer <token>",
            )),
            Some(token) if keys.valid(token) => Ok(AdminAuth),
            Some(_) => Err(json_error(
                StatusCode::UNAUTHORIZED,
                "invalid or expired admin session: sign in again",
            )),
        }
    }
}

fn asset(state: &AppState, content_type: &'static str, body: &'static str) -> Response {
    if !state.admin.enabled() {
        return disabled();
    }
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

async fn page(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    asset(&state, "text/html; charset=utf-8", PAGE)
}

async fn script(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    asset(&state, "application/javascript; charset=utf-8", SCRIPT)
}

async fn style(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    asset(&state, "text/css; charset=utf-8", STYLE)
}

/// Adds the console's routes.
pub fn routes(r: Router<AppState>) -> Router<AppState> {
    r.route("/admin", get(page))
        .route("/admin/", get(page))
        .route("/admin/assets/admin.js", get(script))
        .route("/admin/assets/admin.css", get(style))
        .route(
            "/admin/api/session",
            post(session::sign_in).get(session::check),
        )
        .route("/admin/api/overview", get(views::overview))
        .route("/admin/api/topics", get(views::topics))
        .route("/admin/api/topics/{topic}/presence", get(views::presence))
        .route("/admin/api/config", get(views::config))
        .route("/admin/api/tail", get(tail::stream))
        .route("/admin/api/broadcast", post(actions::broadcast))
        .route("/admin/api/disconnect", post(actions::disconnect))
        .route("/admin/api/drain", post(actions::drain))
        .route(
            "/admin/{*rest}",
            get(
                |axum::extract::State(state): axum::extract::State<AppState>| async move {
                    if state.admin.enabled() {
                        json_error(StatusCode::NOT_FOUND, "no such admin endpoint")
                    } else {
                        disabled()
                    }
                },
            ),
        )
}
