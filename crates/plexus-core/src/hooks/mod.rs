//! Application hooks: the application's backend decides connects, joins and client pushes,
//! over HTTP (docs/hooks.md is the contract).
//!
//! The core builds each request (`{"type": "connect"|"join"|"push", "id", "sub", "roles",
//! "claims", "topic", "params", "conn", "addr", "node", …}`, `id` a random 128-bit hex string
//! unique to the request, so that the application can refuse a replay), signs it ([`sign`]),
//! sends it through a [`HookTransport`] and reads the answer strictly ([`answer`]). The transport is a trait so
//! that this library stays free of an HTTP client: the server binary implements it (with a
//! keep-alive client and TLS), tests can implement it with anything.
//!
//! Every call is bounded: a request larger than `max_request_bytes` is refused locally (never
//! sent: `params too large for the hook`), a per-node cap on calls in flight (above it a call
//! fails at once), a per-user share of it ([`per_user_in_flight`]: above it the user's call
//! fails at once with `hook unavailable (busy)`), a timeout, and a [`breaker`] per URL. Users
//! are told apart by their share key ([`Identity::share_key`]): an anonymous connection counts
//! as its client address, not as a new user. A 4xx answer (other than 408 and
//! 429) is the application's refusal of that one request: the client is refused with
//! `refused by the hook (HTTP <status>)` and the breaker does not count it. Any failure —
//! timeout, transport error, 5xx, 408, 429, an answer of the wrong shape, cap, open circuit —
//! is [`HookFailure`]: the client gets the error `hook unavailable` (`hook unavailable (busy)`
//! past its user's share of the calls in flight), never a hang; the breaker
//! counts the failures of each user once. Channel rules are checked before any hook: a hook
//! can only narrow what they allow. Join decisions may be cached briefly ([`cache`]).
//!
//! [`Webhooks`](crate::webhooks) (what the application hears) share the transport and secret.
//! An application that embeds Plexus can decide joins in its own process too
//! ([`in_process`]), asked before the HTTP join hook.

pub mod answer;
pub mod breaker;
pub mod cache;
pub mod in_process;
mod outcome;
pub mod sign;

pub use outcome::{HookCounters, HookKind, Outcome};

use crate::auth::Identity;
use answer::Decision;
use async_trait::async_trait;
use breaker::{Breaker, BreakerConfig};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The reason clients are given when a hook fails.
pub const UNAVAILABLE: &str = "hook unavailable";

/// The reason a call is refused when its user already has its share of the calls in flight.
pub const BUSY: &str = "hook unavailable (busy)";

/// One user's (share key's) share of `hooks.max_concurrent`: the calls it may have in flight
/// at once, `max(4, max_concurrent / 8)`.
pub fn per_user_in_flight(max_concurrent: usize) -> usize {
    (max_concurrent / 8).max(4)
}

/// Largest answer body read from a hook (a larger one is a failure).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The default of `hooks.max_request_bytes`: the largest hook request body sent.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An HTTP answer.
#[derive(Clone, Debug)]
pub struct HookAnswer {
    pub status: u16,
    pub body: Bytes,
}

/// Sends signed POSTs for hooks and webhooks (implemented by the server binary).
#[async_trait]
pub trait HookTransport: Send + Sync + 'static {
    /// POSTs `body` (JSON) with `headers` to `url`, giving up after `timeout`; reads at most
    /// [`MAX_ANSWER_BYTES`] of the answer. `Err` describes a failure to get an answer.
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<HookAnswer, String>;
}

/// Hook settings of a node.
#[derive(Clone, Debug)]
pub struct HooksConfig {
    /// The HMAC secret of every request's signature.
    pub secret: String,
    /// Called before a connection is admitted.
    pub connect_url: Option<String>,
    /// The join hook of every channel rule that names none (`join_hook = "off"`: none).
    pub join_url: Option<String>,
    /// How long a call may take.
    pub timeout: Duration,
    /// Calls in flight at once on this node; above it a call fails at once.
    pub max_concurrent: usize,
    pub breaker: BreakerConfig,
    /// Join decisions (allow and deny) are reused this long (zero: not cached).
    pub join_cache_ttl: Duration,
    /// Most cached join decisions.
    pub join_cache_max: usize,
    /// Most bytes the cached join decisions may be counted as.
    pub join_cache_max_bytes: usize,
    /// Largest request body (serialized JSON) sent to a hook; a larger request is refused
    /// locally, the hook is not called.
    pub max_request_bytes: usize,
}

impl HooksConfig {
    /// The defaults (documented in docs/hooks.md) with `secret`.
    pub fn new(secret: String) -> Self {
        HooksConfig {
            secret,
            connect_url: None,
            join_url: None,
            timeout: Duration::from_secs(2),
            max_concurrent: 256,
            breaker: BreakerConfig {
                threshold: 5,
                cooldown: Duration::from_secs(5),
            },
            join_cache_ttl: Duration::ZERO,
            join_cache_max: 10_000,
            join_cache_max_bytes: 4 << 20,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// A hook call that gave no decision; the client gets its `reason` ([`UNAVAILABLE`], or
/// [`BUSY`] past the user's share of the calls in flight).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookFailure {
    pub reason: &'static str,
}

/// What a join or push hook is told about the connection.
pub struct Caller<'a> {
    pub identity: &'a Identity,
    /// `None` for a read without a connection (HTTP history polling).
    pub conn: Option<crate::ConnId>,
    pub addr: Option<std::net::IpAddr>,
}

/// The hooks of a node.
pub struct Hooks {
    config: HooksConfig,
    transport: Arc<dyn HookTransport>,
    node_id: Arc<str>,
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Calls in flight per share key (entries removed at zero).
    user_in_flight: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    cache: cache::JoinCache,
    pub counters: HookCounters,
    /// Failures logged, to log one line per burst.
    failures_logged: AtomicU64,
}

impl Hooks {
    pub fn new(config: HooksConfig, transport: Arc<dyn HookTransport>, node_id: Arc<str>) -> Self {
        Hooks {
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent.max(1))),
            cache: cache::JoinCache::new(
                config.join_cache_ttl,
                config.join_cache_max,
                config.join_cache_max_bytes,
            ),
            config,
            transport,
            node_id,
            user_in_flight: Arc::new(Mutex::new(HashMap::new())),
            breakers: Mutex::new(HashMap::new()),
            counters: HookCounters::default(),
            failures_logged: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> &HooksConfig {
        &self.config
    }

    pub fn transport(&self) -> &Arc<dyn HookTransport> {
        &self.transport
    }

    /// This node's id in hook requests and connection ids.
    pub fn node_id(&self) -> &Arc<str> {
        &self.node_id
    }

    /// A connection's id as the application sees it: `<node>-<n>`, unique in the cluster.
    pub fn conn_id(&self, conn: crate::ConnId) -> String {
        format!("{}-{conn}", self.node_id)
    }

    /// The join hook of a rule: its own, else the default (`"off"`: none).
    pub fn join_url<'a>(&'a self, rule_url: Option<&'a str>) -> Option<&'a str> {
        match rule_url {
            Some("off") => None,
            Some(url) => Some(url),
            None => self.config.join_url.as_deref(),
        }
    }

    /// The connect hook: `Ok(None)` when there is none.
    pub async fn connect(
        &self,
        identity: &Identity,
        addr: std::net::IpAddr,
    ) -> Result<Option<Decision>, HookFailure> {
        let Some(url) = self.config.connect_url.as_deref() else {
            return Ok(None);
        };
        let mut body = identity_json("connect", identity, &self.node_id);
        body["addr"] = addr.to_string().into();
        let key = identity.share_key(Some(addr));
        self.call(HookKind::Connect, url, &identity.sub, &key, None, body)
            .await
            .map(|(d, _)| Some(d))
    }

    /// A join hook call (its decision may come from the cache).
    pub async fn join(
        &self,
        url: &str,
        caller: &Caller<'_>,
        topic: &str,
        params: Value,
    ) -> Result<Decision, HookFailure> {
        let mut body = self.caller_json("join", caller);
        let key = self.cache.key(&cache::KeyParts {
            url,
            read: caller.conn.is_none(),
            who: caller.identity,
            claims: &body["claims"],
            topic,
            params: &params,
            addr: caller.addr,
        });
        if let Some(d) = key.as_ref().and_then(|k| self.cache.get(k)) {
            self.count(HookKind::Join, Outcome::Cached);
            return Ok(d);
        }
        body["topic"] = topic.into();
        body["params"] = params;
        let who = caller.identity.share_key(caller.addr);
        let (d, answered) = self
            .call(
                HookKind::Join,
                url,
                &caller.identity.sub,
                &who,
                Some(topic),
                body,
            )
            .await?;
        // Only the application's own decisions are cached, not local refusals or 4xx.
        if let (Some(k), true) = (key, answered) {
            self.cache.put(k, d.clone());
        }
        Ok(d)
    }

    /// A push hook call.
    pub async fn push(
        &self,
        url: &str,
        caller: &Caller<'_>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> Result<Decision, HookFailure> {
        let mut body = self.caller_json("push", caller);
        body["topic"] = topic.into();
        body["event"] = event.into();
        body["payload"] = payload;
        let who = caller.identity.share_key(caller.addr);
        self.call(
            HookKind::Push,
            url,
            &caller.identity.sub,
            &who,
            Some(topic),
            body,
        )
        .await
        .map(|(d, _)| d)
    }

    fn caller_json(&self, kind: &str, caller: &Caller<'_>) -> Value {
        let mut body = identity_json(kind, caller.identity, &self.node_id);
        if let Some(conn) = caller.conn {
            body["conn"] = self.conn_id(conn).into();
        }
        if let Some(addr) = caller.addr {
            body["addr"] = addr.to_string().into();
        }
        body
    }

    fn count(&self, kind: HookKind, outcome: Outcome) {
        self.counters.calls[kind as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn breaker(&self, url: &str) -> Arc<Breaker> {
        self.breakers
            .lock()
            .entry(url.to_owned())
            .or_default()
            .clone()
    }

    /// One call for `sub` (counted under its share key `who`): the decision, and whether the
    /// application gave it (a 2xx answer; `false` for a local refusal of a request too large,
    /// or a 4xx answer).
    async fn call(
        &self,
        kind: HookKind,
        url: &str,
        sub: &str,
        who: &Arc<str>,
        topic: Option<&str>,
        mut body: Value,
    ) -> Result<(Decision, bool), HookFailure> {
        body["id"] = request_id().into();
        let body = Bytes::from(body.to_string());
        if body.len() > self.config.max_request_bytes {
            self.count(kind, Outcome::TooLarge);
            let reason = match kind {
                HookKind::Connect => TOKEN_TOO_LARGE,
                HookKind::Join => PARAMS_TOO_LARGE,
                HookKind::Push => PAYLOAD_TOO_LARGE,
            };
            tracing::info!(
                hook = kind.name(),
                sub,
                topic,
                bytes = body.len(),
                max = self.config.max_request_bytes,
                "hook request too large: refused, not sent (hooks.max_request_bytes)"
            );
            return Ok((Decision::refusal(reason), false));
        }
        let breaker = self.breaker(url);
        let fail = |outcome: Outcome, why: &str| {
            self.count(kind, outcome);
            let n = self.failures_logged.fetch_add(1, Ordering::Relaxed);
            if outcome != Outcome::Open || n.is_multiple_of(100) {
                tracing::warn!(
                    hook = kind.name(),
                    url,
                    sub,
                    topic,
                    result = outcome.name(),
                    reason = why,
                    "hook unavailable"
                );
            }
            HookFailure {
                reason: UNAVAILABLE,
            }
        };
        let Some(_user_slot) = UserSlot::take(
            &self.user_in_flight,
            who,
            per_user_in_flight(self.config.max_concurrent),
        ) else {
            self.count(kind, Outcome::Busy);
            tracing::info!(
                hook = kind.name(),
                sub,
                topic,
                "hook call refused: this user already has its share of the calls in flight (hooks.max_concurrent / 8, at least 4)"
            );
            return Err(HookFailure { reason: BUSY });
        };
        // Dropped without an outcome (this future cancelled, or the call never sent), the
        // ticket gives a half-open circuit's trial back.
        let Some(ticket) = breaker.allow(who, Instant::now()) else {
            return Err(fail(Outcome::Open, "circuit open after repeated failures"));
        };
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            drop(ticket);
            return Err(fail(
                Outcome::Busy,
                "too many hook calls in flight (hooks.max_concurrent)",
            ));
        };
        let mut headers = sign::headers(self.config.secret.as_bytes(), &body);
        headers.push(("x-plexus-hook", kind.name().to_owned()));
        let started = Instant::now();
        let sent = tokio::time::timeout(
            self.config.timeout,
            self.transport
                .post(url, &headers, body, self.config.timeout),
        )
        .await;
        self.counters.micros[kind as usize]
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        crate::metrics::hook_call(kind.name(), started.elapsed());
        let result = match sent {
            Err(_) => Err((
                Outcome::Timeout,
                format!("no answer within {:?}", self.config.timeout),
            )),
            Ok(Err(e)) if e.contains("timed out") => Err((Outcome::Timeout, e)),
            Ok(Err(e)) => Err((Outcome::Error, e)),
            Ok(Ok(a)) if refuses_request(a.status) => {
                // The application's answer about this request, not a sign that it is down:
                // the breaker does not count it (the ticket is dropped without an outcome).
                drop(ticket);
                self.count(kind, Outcome::Rejected);
                tracing::info!(
                    hook = kind.name(),
                    sub,
                    topic,
                    status = a.status,
                    "hook refused the request with a 4xx"
                );
                let reason = match a.status {
                    413 => format!("request too large for the hook (HTTP {})", a.status),
                    s => format!("refused by the hook (HTTP {s})"),
                };
                return Ok((Decision::refusal(&reason), false));
            }
            Ok(Ok(a)) if !(200..300).contains(&a.status) => {
                Err((Outcome::Error, format!("HTTP status {}", a.status)))
            }
            Ok(Ok(a)) => answer::parse(&a.body).map_err(|e| (Outcome::Invalid, e)),
        };
        match result {
            Ok(d) => {
                ticket.success();
                if d.allow {
                    self.count(kind, Outcome::Allow);
                    tracing::debug!(hook = kind.name(), sub, topic, "hook allowed");
                } else {
                    self.count(kind, Outcome::Deny);
                    tracing::info!(hook = kind.name(), sub, topic, reason = %d.reason, "hook denied");
                }
                Ok((d, true))
            }
            Err((outcome, why)) => {
                if ticket.failure(&self.config.breaker, Instant::now()) {
                    self.counters.circuit_opened.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(hook = kind.name(), url, cooldown = ?self.config.breaker.cooldown, "hook circuit opened: calls fail at once until the cooldown ends");
                }
                Err(fail(outcome, &why))
            }
        }
    }
}

/// One call in flight of a share key: taken if the key has fewer than `max`, given back when
/// dropped.
struct UserSlot {
    map: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    key: Arc<str>,
}

impl UserSlot {
    fn take(
        map: &Arc<Mutex<HashMap<Arc<str>, usize>>>,
        key: &Arc<str>,
        max: usize,
    ) -> Option<Self> {
        let mut m = map.lock();
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            map: map.clone(),
            key: key.clone(),
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock();
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// The reason a join is refused with when its request would exceed `max_request_bytes`.
pub const PARAMS_TOO_LARGE: &str = "params too large for the hook";
/// The same for a push.
pub const PAYLOAD_TOO_LARGE: &str = "payload too large for the hook";
/// The same for a connection (the token's public claims).
pub const TOKEN_TOO_LARGE: &str = "token claims too large for the hook";

/// A 4xx answer that refuses one request: any but 408 (Request Timeout) and 429 (Too Many
/// Requests), which say the application is overloaded and count as failures.
fn refuses_request(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// A request's unique id: 128 random bits in hex.
fn request_id() -> String {
    use rand::Rng;
    format!("{:032x}", rand::rng().random::<u128>())
}

/// The identity part of a request: `type`, `sub`, `roles`, `claims` (the public claims Plexus
/// keeps: `name`, `info`, `exp`), `node`, `at`.
fn identity_json(kind: &str, identity: &Identity, node: &str) -> Value {
    let mut claims = serde_json::Map::new();
    if let Some(name) = &identity.name {
        claims.insert("name".into(), name.clone().into());
    }
    if let Some(info) = identity
        .info
        .as_ref()
        .and_then(|i| serde_json::from_str::<Value>(i.get()).ok())
    {
        claims.insert("info".into(), info);
    }
    if let Some(exp) = identity.expires_at {
        claims.insert("exp".into(), exp.into());
    }
    json!({
        "type": kind,
        "sub": &*identity.sub,
        "roles": identity.roles,
        "claims": claims,
        "node": node,
        "at": unix_ms(),
    })
}
