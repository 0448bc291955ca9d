//! Admission: every check a new connection passes before it exists, whatever its transport.
//!
//! In order: the client's address (from `X-Forwarded-For` only when the peer is a trusted
//! proxy), the connection-attempt rate of that address, the browser `Origin`, the token, and the
//! concurrent-connection caps per address and per user. A refusal carries the HTTP status and
//! the reason the client sees; the caller logs it.
//!
//! Everything counted per address counts per [`address_key`]: an IPv4 address, or the /64 of an
//! IPv6 address (what one host usually gets) — the rate and caps here, the HTTP gate and the
//! wrong-API-key guard of the binary alike.
//!
//! An admitted connection holds a [`Permit`]; dropping it releases its place in the caps. An
//! anonymous connection that signs in moves its place to the user, node-wide and cluster-wide
//! ([`Permit::move_to_user`]).

use crate::auth::{AuthError, Identity};
use crate::broker::{Broker, CounterKey};
use crate::ratelimit::TokenBucket;
use http::HeaderMap;
use ipnet::IpNet;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Connect-time limits and trust settings.
#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    /// Concurrent connections from one client address (0 = unlimited).
    pub max_connections_per_ip: u32,
    /// Concurrent connections of one user (`sub`) (0 = unlimited).
    pub max_connections_per_user: u32,
    /// Connection attempts per second from one address (sustained rate; 0 = unlimited).
    pub connect_rate_per_ip: f64,
    /// Connection attempts one address may make in a burst.
    pub connect_burst_per_ip: u32,
    /// Browser origins allowed besides the server's own (same host as the request).
    /// Entries are exact origins (`https://app.example.com`) or `*` for any.
    pub allowed_origins: Vec<String>,
    /// Also allow loopback origins (`http://localhost:*`, `http://127.0.0.1:*`): the dev profile.
    pub allow_loopback_origins: bool,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_connections_per_ip: 256,
            max_connections_per_user: 32,
            connect_rate_per_ip: 20.0,
            connect_burst_per_ip: 40,
            allowed_origins: Vec::new(),
            allow_loopback_origins: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Why a connection was refused: the HTTP status and the client-visible reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

impl From<AuthError> for Refusal {
    fn from(e: AuthError) -> Self {
        let status = if e == AuthError::MissingToken {
            401
        } else {
            403
        };
        Refusal::new(status, e.to_string())
    }
}

#[derive(Default)]
struct Counts {
    /// Per [`address_key`].
    per_ip: HashMap<IpAddr, u32>,
    /// Only with a per-user cap (`max_connections_per_user` > 0): without one nothing reads
    /// these counts, and each distinct user's entry cost ~55 bytes per idle connection
    /// (BENCHMARKS.md, "Memory per idle connection").
    per_user: HashMap<Arc<str>, u32>,
}

/// Node-wide admission state.
pub struct Admission {
    config: AdmissionConfig,
    counts: Mutex<Counts>,
    /// Connection attempts per [`address_key`].
    attempts: Mutex<HashMap<IpAddr, TokenBucket>>,
}

/// A place in the connection caps; released on drop (cluster-wide places too).
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
    sub: Arc<str>,
    /// Boxed: most permits hold none, and every connection carries one.
    cluster: Option<Box<ClusterClaims>>,
}

/// Cluster counters held by a permit, and the broker to give them back to.
type ClusterClaims = (Arc<dyn Broker>, Vec<CounterKey>);

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("ip", &self.ip)
            .field("sub", &self.sub)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(held) = self.cluster.take() {
            let (broker, keys) = *held;
            for key in keys {
                broker.clone().release_detached(key);
            }
        }
        let key = address_key(self.ip);
        let mut c = self.admission.counts.lock();
        if let Some(n) = c.per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&key);
            }
        }
        if let Some(n) = c.per_user.get_mut(&self.sub) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(&self.sub);
            }
        }
    }
}

impl Permit {
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The connection's user changed (an anonymous connection signed in as `sub`): its place
    /// in the per-user cap moves to `sub`, on this node and cluster-wide (through `broker`),
    /// refused with `too many connections for this user` if that user's is full on either
    /// (the permit then stays as it was). If the broker is unreachable the node-wide cap
    /// holds alone, as at connect, and the cluster-wide place stays under the old id.
    pub async fn move_to_user(
        &mut self,
        broker: &Arc<dyn Broker>,
        sub: &Arc<str>,
    ) -> Result<(), Refusal> {
        let max = self.admission.config.max_connections_per_user;
        let old = self.sub.clone();
        self.move_local(sub, max)?;
        if max == 0 {
            return Ok(());
        }
        let new_key = CounterKey::UserConnections(sub.clone());
        match broker.claim(&new_key, max).await {
            Ok(true) => {
                let old_key = CounterKey::UserConnections(old);
                let claims = self
                    .cluster
                    .get_or_insert_with(|| Box::new((broker.clone(), Vec::new())));
                let given_back = match claims.1.iter().position(|k| *k == old_key) {
                    Some(i) => Some(std::mem::replace(&mut claims.1[i], new_key)),
                    None => {
                        claims.1.push(new_key);
                        None
                    }
                };
                if let Some(key) = given_back {
                    claims.0.clone().release_detached(key);
                }
                Ok(())
            }
            Ok(false) => {
                // Back to the old id: its place was this connection's a moment ago.
                let _ = self.move_local(&old, 0);
                Err(Refusal::new(429, "too many connections for this user"))
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster limit unavailable, node-wide limit applies");
                Ok(())
            }
        }
    }

    /// Moves this node's per-user count of the permit to `sub`, refused if `sub` already has
    /// `max` (0: no limit).
    fn move_local(&mut self, sub: &Arc<str>, max: u32) -> Result<(), Refusal> {
        if self.admission.config.max_connections_per_user == 0 {
            // Not counted per user (see `Counts::per_user`).
            self.sub = sub.clone();
            return Ok(());
        }
        let mut c = self.admission.counts.lock();
        if max > 0 && c.per_user.get(sub).copied().unwrap_or(0) >= max {
            return Err(Refusal::new(429, "too many connections for this user"));
        }
        if let Some(n) = c.per_user.get_mut(&self.sub) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(&self.sub);
            }
        }
        *c.per_user.entry(sub.clone()).or_insert(0) += 1;
        self.sub = sub.clone();
        Ok(())
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Arc<Self> {
        Arc::new(Admission {
            config,
            counts: Mutex::new(Counts::default()),
            attempts: Mutex::new(HashMap::new()),
        })
    }

    /// The cluster-wide caps per user and per address, through the broker: the units taken
    /// are held by `permit` and given back with it. `Err(Some(refusal))` when a cap is full;
    /// `Err(None)` when the broker is unreachable (the node-wide caps hold alone).
    pub async fn claim_cluster(
        &self,
        broker: &Arc<dyn Broker>,
        permit: &mut Permit,
        ip: IpAddr,
        who: &Identity,
    ) -> Result<(), Option<Refusal>> {
        let mut held = Vec::new();
        let mut unreachable = false;
        for (key, limit, reason) in [
            (
                CounterKey::UserConnections(who.sub.clone()),
                self.config.max_connections_per_user,
                "too many connections for this user",
            ),
            (
                CounterKey::AddressConnections(address_key(ip)),
                self.config.max_connections_per_ip,
                "too many connections from this address",
            ),
        ] {
            if limit == 0 {
                continue;
            }
            match broker.claim(&key, limit).await {
                Ok(true) => held.push(key),
                Ok(false) => {
                    for k in held {
                        let _ = broker.release(&k).await;
                    }
                    return Err(Some(Refusal::new(429, reason)));
                }
                Err(e) => {
                    unreachable = true;
                    tracing::debug!(error = %e, "cluster limit unavailable, node-wide limit applies");
                }
            }
        }
        if !held.is_empty() {
            permit.cluster = Some(Box::new((broker.clone(), held)));
        }
        if unreachable {
            Err(None)
        } else {
            Ok(())
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.config
    }

    /// The client's address: the peer, or — when the peer is a trusted proxy — the rightmost
    /// address in `X-Forwarded-For` that is not itself a trusted proxy. Entries may carry a port
    /// (`1.2.3.4:5555`, `[2001:db8::1]:5555`); at an entry that is not an address (nothing to
    /// the right of it can be trusted to have checked what lies left of it) the peer is used.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = canonical(peer.ip());
        if !self.is_trusted(peer_ip) {
            return peer_ip;
        }
        // Split the raw bytes, then read each entry: a proxy appends the address it saw to
        // the line the client sent, so bytes the client wrote that are not text must make
        // only the client's own entries unreadable, never the proxy's.
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(|entry| std::str::from_utf8(entry).unwrap_or("").trim())
            .collect();
        for entry in entries.into_iter().rev() {
            let Some(ip) = forwarded_address(entry) else {
                return peer_ip;
            };
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        peer_ip
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.config
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// Counts one connection attempt of `ip` (per [`address_key`]); refuses past the
    /// per-address rate.
    pub fn check_rate(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.config.connect_rate_per_ip <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut attempts = self.attempts.lock();
        if attempts.len() > 100_000 {
            // Forget addresses whose bucket has refilled: they are not limited anyway.
            attempts.retain(|_, b| !b.is_full(now));
        }
        let bucket = attempts.entry(address_key(ip)).or_insert_with(|| {
            TokenBucket::new(
                self.config.connect_rate_per_ip,
                self.config.connect_burst_per_ip,
                now,
            )
        });
        if bucket.take(now) {
            Ok(())
        } else {
            Err(Refusal::new(
                429,
                "too many connection attempts from this address, slow down",
            ))
        }
    }

    /// Checks the `Origin` header. Requests without one (non-browser clients) pass.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(origin) = headers.get(http::header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("").trim();
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if origin_host(origin).is_some_and(|h| h.eq_ignore_ascii_case(host)) {
            return Ok(()); // same origin
        }
        if self
            .config
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
        {
            return Ok(());
        }
        if self.config.allow_loopback_origins && is_loopback_origin(origin) {
            return Ok(());
        }
        Err(Refusal::new(
            403,
            format!("origin not allowed: {origin} (add it to allowed_origins)"),
        ))
    }

    /// Takes a place in the per-address (per [`address_key`]) and per-user caps.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr, who: &Identity) -> Result<Permit, Refusal> {
        let key = address_key(ip);
        let mut c = self.counts.lock();
        let ip_n = c.per_ip.get(&key).copied().unwrap_or(0);
        if self.config.max_connections_per_ip > 0 && ip_n >= self.config.max_connections_per_ip {
            return Err(Refusal::new(429, "too many connections from this address"));
        }
        let user_n = c.per_user.get(&who.sub).copied().unwrap_or(0);
        if self.config.max_connections_per_user > 0
            && user_n >= self.config.max_connections_per_user
        {
            return Err(Refusal::new(429, "too many connections for this user"));
        }
        *c.per_ip.entry(key).or_insert(0) += 1;
        if self.config.max_connections_per_user > 0 {
            *c.per_user.entry(who.sub.clone()).or_insert(0) += 1;
        }
        Ok(Permit {
            admission: self.clone(),
            ip,
            sub: who.sub.clone(),
            cluster: None,
        })
    }

    /// Live connections of one user on this node (counted only with a per-user cap: 0
    /// without one).
    pub fn user_connections(&self, sub: &str) -> u32 {
        self.counts.lock().per_user.get(sub).copied().unwrap_or(0)
    }
}

/// The address one `X-Forwarded-For` entry names: `ip`, `ip:port`, `[v6]` or `[v6]:port`;
/// `None` for anything else (an empty entry, `unknown`, a name).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<std::net::Ipv6Addr>().ok())
        .map(|v6| canonical(IpAddr::V6(v6)))
}

/// The key everything counted per client address counts under: an IPv4 address (an
/// IPv4-mapped IPv6 address counts as its IPv4 address), or the /64 of an IPv6 address — what
/// one host usually gets, so that a host cannot multiply its allowance by changing the low bits.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// `https://host:port` → `host:port`.
fn origin_host(origin: &str) -> Option<&str> {
    origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'))
}

fn is_loopback_origin(origin: &str) -> bool {
    let Some(hostport) = origin_host(origin) else {
        return false;
    };
    let host = if let Some(rest) = hostport.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests;
