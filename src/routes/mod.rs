//! HTTP routes: which path does what. Each module holds one group of endpoints.
//!
//! | path | module |
//! |------|--------|
//! | `GET /socket/websocket` | [`websocket`] — Phoenix WebSocket endpoint |
//! | `GET`, `POST /socket/longpoll` | [`longpoll`] — Phoenix LongPoll endpoint |
//! | `GET /sse` | [`sse`] — Server-Sent Events |
//! | `POST /api/broadcast`, `GET /api/channels`, `GET /api/channels/{topic}/presence`, `GET /api/channels/{topic}/history`, `POST /api/disconnect` | [`api`] — backend API (API key) |
//! | `GET /dev/token`, `GET /dev/echo` | [`dev`] — dev profile only |
//! | `GET /health`, `GET /metrics` | [`health`] |
//! | `GET /`, `GET /demo/*`, `GET /assets/*` | [`crate::demo::pages`] — the demo (setting `demo`: dev by default) |
//! | `GET /admin`, `/admin/api/*` | [`crate::admin`] — admin console |

pub mod api;
pub mod dev;
pub mod health;
pub mod longpoll;
pub mod sse;
pub mod websocket;

use crate::config::{Config, Profile};
use crate::demo::pages;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plexus_core::admission::{address_key, Refusal};
use plexus_core::auth::Issuer;
use plexus_core::ratelimit::TokenBucket;
use plexus_core::transport::longpoll::LongPoll;
use plexus_core::Node;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use subtle::ConstantTimeEq;

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
}

/// The token of an `Authorization: Bearer <token>` header (API key or user token); the scheme
/// is case-insensitive, as HTTP says.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim_start();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Wrong API keys (and admin secrets) per client address ([`address_key`]: IPv6 per /64, what
/// one host usually gets): 10 in a burst, then one every 6 s. An address that has used them up
/// is answered 429 — even with the right key — until it has one again, so the key cannot be
/// guessed at speed from one address. Only addresses that failed are ever refused: an address
/// not in the table, or with attempts left, is never refused for what other addresses did.
///
/// The table holds at most [`ApiGuard::MAX_ADDRESSES`] failing addresses. A new one past that
/// evicts the address whose last failure is oldest (its bucket the most refilled); addresses
/// whose bucket is full again are dropped as failures come in. Cost per failure: O(log n).
/// The price of never refusing an address for the failures of others: a guesser rotating
/// through more addresses than the table holds gets 10 attempts per address per rotation; the
/// key's length (at least 16 characters in prod) is what keeps guessing hopeless.
#[derive(Default)]
pub struct ApiGuard {
    table: parking_lot::Mutex<GuardTable>,
}

#[derive(Default)]
struct GuardTable {
    /// Address → its bucket and the sequence number of its last failure.
    failures: std::collections::HashMap<std::net::IpAddr, (TokenBucket, u64)>,
    /// Sequence number of the last failure → address: the oldest first.
    by_last_failure: std::collections::BTreeMap<u64, std::net::IpAddr>,
    next: u64,
}

impl ApiGuard {
    pub const MAX_ADDRESSES: usize = 10_000;
    const BURST: u32 = 10;
    const PER_SECOND: f64 = 1.0 / 6.0;

    /// Whether `ip` has used up its own attempts.
    fn locked(&self, ip: std::net::IpAddr) -> bool {
        let now = std::time::Instant::now();
        let mut t = self.table.lock();
        t.failures
            .get_mut(&address_key(ip))
            .is_some_and(|(b, _)| !b.has_token(now))
    }

    /// Counts a failure of `ip`.
    fn failed(&self, ip: std::net::IpAddr) {
        let now = std::time::Instant::now();
        let key = address_key(ip);
        let mut t = self.table.lock();
        let t = &mut *t;
        let seq = t.next;
        t.next += 1;
        // Addresses whose oldest failure is fully forgiven: forget them (a few per call).
        for _ in 0..4 {
            let Some((&old_seq, &old)) = t.by_last_failure.first_key_value() else {
                break;
            };
            if old == key || !t.failures.get(&old).is_some_and(|(b, _)| b.is_full(now)) {
                break;
            }
            t.by_last_failure.remove(&old_seq);
            t.failures.remove(&old);
        }
        if let Some((bucket, last)) = t.failures.get_mut(&key) {
            t.by_last_failure.remove(last);
            *last = seq;
            bucket.take(now);
        } else {
            while t.failures.len() >= Self::MAX_ADDRESSES {
                let Some((_, oldest)) = t.by_last_failure.pop_first() else {
                    break;
                };
                t.failures.remove(&oldest);
            }
            let mut bucket = TokenBucket::new(Self::PER_SECOND, Self::BURST, now);
            bucket.take(now);
            t.failures.insert(key, (bucket, seq));
        }
        t.by_last_failure.insert(seq, key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let t = self.table.lock();
        debug_assert_eq!(t.failures.len(), t.by_last_failure.len());
        t.failures.len()
    }
}

/// The 429 of an address out of API key attempts, if `peer` is one.
pub fn api_key_lockout(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    peer: std::net::SocketAddr,
) -> Option<Response> {
    let ip = state.node.admission().client_ip(peer, headers);
    state.api_guard.locked(ip).then(|| {
        let mut r = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong API keys from this address: retry later",
        );
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("6"),
        );
        r
    })
}

/// Counts a wrong API key from `peer`.
pub fn api_key_failed(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    peer: std::net::SocketAddr,
) {
    let ip = state.node.admission().client_ip(peer, headers);
    state.api_guard.failed(ip);
    tracing::warn!(client = %ip, "wrong API key");
}

/// Checks the API key of a request from `peer` (see [`ApiKey`] and [`ApiGuard`]); `Some` is
/// the refusal to answer.
pub fn check_api_key(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> Option<Response> {
    if let Some(locked) = peer.and_then(|p| api_key_lockout(state, headers, p)) {
        return Some(locked);
    }
    if bearer(headers).is_none() {
        return Some(json_error(
            StatusCode::UNAUTHORIZED,
            "missing API key: send Authorization: Bearer <api_key>",
        ));
    }
    if has_api_key(state, headers) {
        return None;
    }
    if let Some(peer) = peer {
        api_key_failed(state, headers, peer);
    }
    Some(json_error(StatusCode::FORBIDDEN, "invalid API key"))
}

/// A JSON error response `{"error": reason}` with the given status.
pub fn json_error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": reason.into() }))).into_response()
}

/// A refusal of the core (admission, a read's authorisation) as an HTTP answer: its status,
/// with `{"error": reason}`.
pub struct Refused(pub Refusal);

impl Refused {
    pub fn status(refusal: &Refusal) -> StatusCode {
        StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        json_error(Refused::status(&self.0), self.0.reason)
    }
}

/// Whether the request carries the API key (`Authorization: Bearer <api_key>`), compared in
/// constant time.
pub fn has_api_key(state: &AppState, headers: &axum::http::HeaderMap) -> bool {
    bearer(headers).is_some_and(|k| bool::from(k.as_bytes().ct_eq(state.config.api_key.as_bytes())))
}

/// Extractor for the backend API's endpoints: the request carries the API key, else 401
/// (missing), 403 (wrong) or 429 (too many wrong ones from this address).
pub struct ApiKey;

impl FromRequestParts<AppState> for ApiKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        match check_api_key(state, &parts.headers, peer) {
            Some(refused) => Err(refused),
            None => Ok(ApiKey),
        }
    }
}

/// A request body's expected JSON shape, named in the 400 answer to a body that does not parse.
pub trait BodyShape {
    const SHAPE: &'static str;
}

/// Extractor of a JSON body of type `T`; anything else is answered 400 with `T`'s shape and the
/// parse error.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + BodyShape> FromRequest<AppState> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let body = read_body(state, req.into_body()).await?;
        serde_json::from_slice(&body).map(ApiJson).map_err(|e| {
            json_error(
                StatusCode::BAD_REQUEST,
                format!("invalid body: expected {} ({e})", T::SHAPE),
            )
        })
    }
}

/// Reads a request body: at most [`body_limit`] bytes (else 413), all of it within the
/// header timeout (else 408: a body trickled in slowly must not hold the connection).
pub async fn read_body(
    state: &AppState,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, Response> {
    let read = axum::body::to_bytes(body, body_limit(state));
    match tokio::time::timeout(state.config.http_header_timeout, read).await {
        Err(_) => Err(json_error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time (limits.http_header_timeout_secs)",
        )),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let status = if too_large {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            Err(json_error(status, format!("request body not read: {e}")))
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// The largest request body any route reads: one message of `max_message_bytes` and 64 KiB
/// of envelope. Larger bodies are answered 413 before they are read.
pub fn body_limit(state: &AppState) -> usize {
    state.node.limits().max_message_bytes + 64 * 1024
}

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
    r = r
        .route("/socket/websocket", get(websocket::upgrade))
        .route(
            "/socket/longpoll",
            get(longpoll::poll)
                .post(longpoll::post)
                .options(longpoll::preflight),
        )
        .route("/sse", get(sse::stream))
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/channels", get(api::channels))
        .route("/api/disconnect", post(api::disconnect))
        .route("/api/channels/{topic}/presence", get(api::presence))
        .route("/api/channels/{topic}/history", get(api::history))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics));
    // (admin console)
    r = crate::admin::routes(r);
    if state.config.supabase {
        // supabase-js connects to `<project>/realtime/v1/websocket`; Supabase's gateway
        // rewrites that to `/socket/websocket`, Plexus serves both.
        r = r.route("/realtime/v1/websocket", get(websocket::upgrade));
    }
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

#[cfg(test)]
mod tests {
    use super::ApiGuard;
    use std::net::IpAddr;

    #[test]
    fn api_key_failures_count_per_ipv4_address_and_ipv6_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let guard = ApiGuard::default();
        for _ in 0..10 {
            assert!(!guard.locked(a));
            guard.failed(a);
        }
        // The whole /64 is out of attempts; another /64 is not.
        assert!(guard.locked(b));
        assert!(!guard.locked(c));
    }

    #[test]
    fn a_full_table_evicts_the_oldest_failure_and_never_locks_an_address_that_did_not_fail() {
        let guard = ApiGuard::default();
        let locked: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            guard.failed(locked);
        }
        for i in 0..ApiGuard::MAX_ADDRESSES as u32 + 500 {
            guard.failed(IpAddr::V4((0x0a00_0000 + i).into()));
            if i == 5_000 {
                // Failing again makes it the most recent failure: not evicted by the next.
                for _ in 0..3 {
                    guard.failed(locked);
                }
            }
        }
        assert_eq!(guard.len(), ApiGuard::MAX_ADDRESSES);
        assert!(guard.locked(locked));
        assert!(!guard.locked("198.51.100.1".parse().unwrap()));
        assert!(!guard.locked("10.0.0.0".parse().unwrap()));
    }
}
