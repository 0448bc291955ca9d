//! Where the API key is checked: the `Authorization: Bearer` header, the [`ApiKey`] extractor
//! of the backend API, and the [`ApiGuard`] that answers 429 to an address that sent too many
//! wrong keys (or admin secrets: the console's sign-in uses the same guard).

use crate::routes::json_error;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use plexus_core::admission::address_key;
use plexus_core::ratelimit::TokenBucket;
use subtle::ConstantTimeEq;

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
    pub(crate) fn locked(&self, ip: std::net::IpAddr) -> bool {
        let now = std::time::Instant::now();
        let mut t = self.table.lock();
        t.failures
            .get_mut(&address_key(ip))
            .is_some_and(|(b, _)| !b.has_token(now))
    }

    /// Counts a failure of `ip`.
    pub(crate) fn failed(&self, ip: std::net::IpAddr) {
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
