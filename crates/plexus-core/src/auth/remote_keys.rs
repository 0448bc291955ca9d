//! Verification keys fetched from JWKS URLs (`auth.jwks_urls`), kept current as the identity
//! provider rotates them.
//!
//! - Each URL is fetched at start ([`RemoteKeys::start`]) and then again after the answer's
//!   `Cache-Control: max-age`, clamped to [[`MIN_REFRESH`], [`MAX_REFRESH`]]
//!   ([`DEFAULT_REFRESH`] without one; `no-cache`/`no-store` without `max-age`: the minimum).
//! - A token naming a `kid` no key has makes the verifier fetch every URL again
//!   ([`RemoteKeys::refetch_for_unknown_kid`]), at most once per
//!   [`UNKNOWN_KID_REFETCH_INTERVAL`] per URL: a flood of made-up kids costs the provider one
//!   request per URL per 30 s. Tokens arriving while such a fetch runs wait for it (at most
//!   [`FETCH_TIMEOUT`]) and are then checked against the new keys.
//! - A fetch replaces that URL's whole key set, so a key the provider removed stops verifying
//!   after the next fetch. A failed fetch (unreachable, not 2xx, not a JWKS, no usable signing
//!   key) keeps the last good set, counts `plexus_jwks_refresh_failures_total`, is logged once
//!   per outage (and its end once), and is retried after [`MIN_REFRESH`].
//! - Keys are taken as [`VerifyKey::from_jwk`] reads them (`alg`/`use`/`key_ops` honoured);
//!   entries that cannot be used (another `kty`, an unsupported curve or alg) are skipped, and
//!   so are symmetric (`oct`) keys: a secret published at a URL verifies nothing. At most
//!   [`MAX_KEYS_PER_URL`] keys per URL are kept.
//!
//! The HTTP GET itself is the binary's ([`JwksFetcher`]), so the core has no HTTP client.

use super::VerifyKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use parking_lot::RwLock;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// The shortest time between two scheduled fetches of a URL, whatever its `max-age`.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
/// The longest time between two scheduled fetches of a URL, whatever its `max-age`.
pub const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// Between two scheduled fetches when the answer has no `max-age`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
/// The shortest time between two fetches of one URL caused by unknown `kid`s.
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// The longest a fetch may take (connect, answer and body), here and in the fetcher.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS answer read, in bytes (the fetcher stops reading past it).
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Keys kept from one URL (the rest are skipped): a token without `kid` is tried against every
/// key of its algorithm.
pub const MAX_KEYS_PER_URL: usize = 100;

/// A successful (2xx) answer of a JWKS URL.
pub struct JwksAnswer {
    pub body: Vec<u8>,
    /// The `Cache-Control` header, if any.
    pub cache_control: Option<String>,
}

/// The HTTP GET of a JWKS URL (the binary's, on its HTTP client).
#[async_trait::async_trait]
pub trait JwksFetcher: Send + Sync {
    /// GETs `url`: a 2xx answer with a body of at most [`MAX_JWKS_BYTES`], within
    /// [`FETCH_TIMEOUT`]; else why not (a status, a timeout, a connection error).
    async fn get(&self, url: &str) -> Result<JwksAnswer, String>;
}

/// One JWKS URL and its current keys.
struct Source {
    url: String,
    /// The keys of the newest fetch that succeeded, and that fetch's number.
    keys: RwLock<(u64, Arc<[VerifyKey]>)>,
    /// Numbers fetches as they start, so that a slow old answer never replaces a newer one.
    started: AtomicU64,
    /// The last fetch failed (the outage is logged once).
    failing: AtomicBool,
    /// When an unknown kid last caused a fetch; held during that fetch.
    last_kid_refetch: tokio::sync::Mutex<Option<Instant>>,
}

/// The keys of every configured JWKS URL (see the module doc).
pub struct RemoteKeys {
    sources: Vec<Source>,
    fetcher: Arc<dyn JwksFetcher>,
}

impl RemoteKeys {
    /// Fetches every URL once (all at the same time), then keeps refreshing each in a
    /// background task (which ends when the last `Arc` is dropped). Returns the keys and the
    /// URLs whose first fetch failed, with why; those are tried again after [`MIN_REFRESH`].
    pub async fn start(
        urls: Vec<String>,
        fetcher: Arc<dyn JwksFetcher>,
    ) -> (Arc<Self>, Vec<(String, String)>) {
        let remote = Arc::new(RemoteKeys {
            sources: urls
                .into_iter()
                .map(|url| Source {
                    url,
                    keys: RwLock::new((0, Arc::from(Vec::new()))),
                    started: AtomicU64::new(0),
                    failing: AtomicBool::new(false),
                    last_kid_refetch: tokio::sync::Mutex::new(None),
                })
                .collect(),
            fetcher,
        });
        let firsts =
            futures_util::future::join_all((0..remote.sources.len()).map(|i| remote.fetch(i)))
                .await;
        let mut failures = Vec::new();
        for (i, first) in firsts.into_iter().enumerate() {
            let delay = first.unwrap_or_else(|e| {
                failures.push((remote.sources[i].url.clone(), e));
                MIN_REFRESH
            });
            Self::keep_fresh(Arc::downgrade(&remote), i, delay);
        }
        (remote, failures)
    }

    /// The scheduled refresh of source `i`, first after `delay`.
    fn keep_fresh(remote: Weak<Self>, i: usize, mut delay: Duration) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(delay).await;
                let Some(remote) = remote.upgrade() else {
                    return;
                };
                delay = remote.fetch(i).await.unwrap_or(MIN_REFRESH);
            }
        });
    }

    /// The configured URLs.
    pub fn urls(&self) -> Vec<&str> {
        self.sources.iter().map(|s| s.url.as_str()).collect()
    }

    /// The current key set of every URL.
    pub fn snapshot(&self) -> Vec<Arc<[VerifyKey]>> {
        self.sources
            .iter()
            .map(|s| s.keys.read().1.clone())
            .collect()
    }

    /// Keys held now, over all URLs.
    pub fn key_count(&self) -> usize {
        self.sources.iter().map(|s| s.keys.read().1.len()).sum()
    }

    /// Whether a key of some URL has this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.sources
            .iter()
            .any(|s| s.keys.read().1.iter().any(|k| k.kid() == Some(kid)))
    }

    /// Fetches every URL again for a token whose `kid` no key has, unless an unknown kid
    /// already did so less than [`UNKNOWN_KID_REFETCH_INTERVAL`] ago for that URL. A caller
    /// that finds such a fetch running waits for it; returns when the keys are as fresh as
    /// this allows (at most [`FETCH_TIMEOUT`] later).
    pub async fn refetch_for_unknown_kid(&self) {
        futures_util::future::join_all((0..self.sources.len()).map(|i| async move {
            let src = &self.sources[i];
            let mut last = src.last_kid_refetch.lock().await;
            if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFETCH_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
            let _ = self.fetch(i).await;
        }))
        .await;
    }

    /// Fetches source `i` and, if its answer has usable keys, replaces its set. Returns the
    /// time until the next scheduled fetch, or why the fetch failed (counted and logged).
    async fn fetch(&self, i: usize) -> Result<Duration, String> {
        let src = &self.sources[i];
        let number = src.started.fetch_add(1, Ordering::Relaxed) + 1;
        let answer = match tokio::time::timeout(FETCH_TIMEOUT, self.fetcher.get(&src.url)).await {
            Ok(answer) => answer,
            Err(_) => Err("timed out".to_owned()),
        };
        let parsed = answer.and_then(|a| {
            let (keys, skipped) = parse_jwks(&a.body)?;
            Ok((keys, skipped, refresh_interval(a.cache_control.as_deref())))
        });
        match parsed {
            Ok((keys, skipped, next)) => {
                let count = keys.len();
                {
                    let mut current = src.keys.write();
                    if current.0 < number {
                        *current = (number, keys.into());
                    }
                }
                for why in &skipped {
                    tracing::debug!(url = %src.url, "JWKS entry skipped: {why}");
                }
                if src.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %src.url, keys = count, "JWKS URL answers again; its keys are current");
                } else {
                    tracing::debug!(url = %src.url, keys = count, skipped = skipped.len(), next_in_secs = next.as_secs(), "JWKS fetched");
                }
                Ok(next)
            }
            Err(e) => {
                crate::metrics::jwks_refresh_failed();
                if !src.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(url = %src.url, error = %e, "JWKS fetch failed: the last good keys of this URL stay in use (logged once until a fetch succeeds)");
                } else {
                    tracing::debug!(url = %src.url, error = %e, "JWKS fetch failed again");
                }
                Err(e)
            }
        }
    }
}

/// The usable signing keys of a JWKS answer, and why the other entries were skipped; an
/// error if the body is no JWKS or has no usable signing key.
pub fn parse_jwks(body: &[u8]) -> Result<(Vec<VerifyKey>, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let doc: Document =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, entry) in doc.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(entry) {
            Ok(jwk) => jwk,
            Err(e) => {
                skipped.push(format!("key {i}: {e}"));
                continue;
            }
        };
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            skipped.push(format!(
                "key {i}: a shared secret (oct) is never taken from a URL"
            ));
            continue;
        }
        match VerifyKey::from_jwk(&jwk) {
            Ok(Some(_)) if keys.len() >= MAX_KEYS_PER_URL => {
                skipped.push(format!("key {i}: more than {MAX_KEYS_PER_URL} keys"));
            }
            Ok(Some(key)) => keys.push(key),
            Ok(None) => skipped.push(format!("key {i}: not for signatures")),
            Err(e) => skipped.push(format!("key {i}: {e}")),
        }
    }
    if keys.is_empty() {
        let why = if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join("; "))
        };
        return Err(format!("the JWKS has no usable signing key{why}"));
    }
    Ok((keys, skipped))
}

/// The time until the next scheduled fetch, from an answer's `Cache-Control` (see the module
/// doc).
pub fn refresh_interval(cache_control: Option<&str>) -> Duration {
    let Some(cc) = cache_control else {
        return DEFAULT_REFRESH;
    };
    let mut no_cache = false;
    for directive in cc.split(',') {
        let directive = directive.trim();
        let (name, value) = directive.split_once('=').unwrap_or((directive, ""));
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "max-age" => {
                if let Ok(secs) = value.trim().trim_matches('"').parse::<u64>() {
                    return Duration::from_secs(secs).clamp(MIN_REFRESH, MAX_REFRESH);
                }
            }
            "no-cache" | "no-store" => no_cache = true,
            _ => {}
        }
    }
    if no_cache {
        MIN_REFRESH
    } else {
        DEFAULT_REFRESH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_clamped_to_a_minute_and_a_day() {
        let at = |cc: &str| refresh_interval(Some(cc)).as_secs();
        assert_eq!(refresh_interval(None), DEFAULT_REFRESH);
        assert_eq!(at("public, max-age=3600"), 3600);
        assert_eq!(at("max-age=0"), 60);
        assert_eq!(at("Max-Age=\"5\""), 60);
        assert_eq!(at("max-age=999999999999"), 86_400);
        assert_eq!(at("public, must-revalidate"), 600);
        assert_eq!(at("no-store"), 60);
        assert_eq!(at("max-age=junk"), 600);
    }

    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/keys/");

    /// A provider in memory: serves `body`, counts the calls, takes 50 ms per answer.
    struct Fake {
        body: parking_lot::Mutex<Vec<u8>>,
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl JwksFetcher for Fake {
        async fn get(&self, _url: &str) -> Result<JwksAnswer, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(JwksAnswer {
                body: self.body.lock().clone(),
                cache_control: Some("max-age=600".into()),
            })
        }
    }

    #[tokio::test]
    async fn tokens_of_a_new_kid_share_one_fetch_and_made_up_kids_wait_30_s() {
        use crate::auth::{AuthError, Verifier, VerifyOptions};
        let full: Value =
            serde_json::from_slice(&std::fs::read(format!("{KEYS}jwks.json")).unwrap()).unwrap();
        let ed_only = serde_json::json!({"keys": [full["keys"][1]]});
        let fake = Arc::new(Fake {
            body: parking_lot::Mutex::new(serde_json::to_vec(&ed_only).unwrap()),
            calls: Default::default(),
        });
        let (remote, failures) =
            RemoteKeys::start(vec!["https://idp.example/jwks".into()], fake.clone()).await;
        assert!(failures.is_empty());
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        assert!(!remote.has_kid("rsa-2026-11"));
        let mut v = Verifier::for_jwks_urls(Vec::new(), VerifyOptions::default()).unwrap();
        v.set_remote_keys(remote.clone());
        assert!(v.has_keys());

        // The provider publishes its RSA key; eight tokens of it arrive at once.
        *fake.body.lock() = serde_json::to_vec(&full).unwrap();
        let rsa2 = jsonwebtoken::EncodingKey::from_rsa_pem(
            &std::fs::read(format!("{KEYS}rsa2_private.pem")).unwrap(),
        )
        .unwrap();
        let sign = |kid: &str| {
            let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            h.kid = Some(kid.into());
            let exp = crate::auth::unix_now() + 60;
            jsonwebtoken::encode(&h, &serde_json::json!({"sub": "a", "exp": exp}), &rsa2).unwrap()
        };
        let t = sign("rsa-2026-11");
        let all = futures_util::future::join_all((0..8).map(|_| v.verify_fetching(&t))).await;
        assert!(all.iter().all(Result::is_ok), "{all:?}");
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2, "one fetch for all");
        // A made-up kid within 30 s: refused without a fetch.
        assert_eq!(
            v.verify_fetching(&sign("made-up")).await,
            Err(AuthError::UnknownKid)
        );
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn unusable_entries_are_skipped_and_an_empty_set_is_an_error() {
        let jwks = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/keys/jwks.json"
        ))
        .unwrap();
        let mut doc: Value = serde_json::from_slice(&jwks).unwrap();
        let keys = doc["keys"].as_array_mut().unwrap();
        let mut enc = keys[0].clone();
        enc["kid"] = "enc".into();
        enc["use"] = "enc".into();
        keys.push(enc);
        keys.push(serde_json::json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"}));
        keys.push(serde_json::json!({"kty": "XYZ", "kid": "future"}));
        let mut wrong_alg = keys[0].clone();
        wrong_alg["kid"] = "wrong".into();
        wrong_alg["alg"] = "ES256".into();
        keys.push(wrong_alg);
        let (keys, skipped) = parse_jwks(&serde_json::to_vec(&doc).unwrap()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid().unwrap_or("")).collect();
        assert_eq!(kids, ["rsa-2026-11", "ed-2026-11"]);
        assert_eq!(skipped.len(), 4, "{skipped:?}");

        let only_enc = serde_json::json!({"keys": [doc["keys"][2]]});
        let Err(err) = parse_jwks(&serde_json::to_vec(&only_enc).unwrap()) else {
            panic!("a JWKS with only an enc key has no signing key");
        };
        assert!(err.contains("no usable signing key"), "{err}");
        assert!(parse_jwks(b"<html>").is_err_and(|e| e.contains("not a JWKS")));
    }
}
