//! The optional short cache of join decisions (`hooks.join_cache_secs`, off by default): the
//! same request — the same kind (a live join with a connection, or a history read without
//! one), user, roles, claims, client address, topic and params — within the TTL gets the
//! decision the hook gave last time, without a call. Every component of the key is
//! length-prefixed (roles one by one), so no two different requests share a key. The
//! connection id is not in it: a decision is reused across one user's connections.
//!
//! Bounded in entries (`hooks.join_cache_max`) and in bytes (`hooks.join_cache_max_bytes`).
//! A key is a SHA-256 digest (32 bytes, whatever the params); joins whose params exceed
//! [`PARAMS_MAX`] bytes and decisions whose reply, meta and reason exceed [`DECISION_MAX`]
//! bytes are not cached. Entries expire in insertion order (one TTL for all), so a queue
//! gives the oldest at once: making room never scans the cache.

use super::answer::Decision;
use crate::auth::Identity;
use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Joins with params larger than this (serialized) are not cached.
pub const PARAMS_MAX: usize = 4096;
/// Decisions whose reply, meta and reason together exceed this (serialized) are not cached.
pub const DECISION_MAX: usize = 2048;
/// What an entry costs besides its decision: its key, queue slot and bookkeeping.
const ENTRY_OVERHEAD: usize = 128;

type Key = [u8; 32];

/// What a join decision depends on: everything the application is sent except the
/// connection id, the node, the time and the request id.
pub struct KeyParts<'a> {
    pub url: &'a str,
    /// A read without a connection (HTTP history polling), not a live join.
    pub read: bool,
    pub who: &'a Identity,
    pub claims: &'a Value,
    pub topic: &'a str,
    pub params: &'a Value,
    pub addr: Option<std::net::IpAddr>,
}

struct Entry {
    at: Instant,
    seq: u64,
    bytes: usize,
    decision: Decision,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// (seq, key) in insertion order; an item whose seq no longer matches its entry is stale.
    queue: VecDeque<(u64, Key)>,
    bytes: usize,
    seq: u64,
}

impl Inner {
    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= e.bytes;
        }
    }

    /// Drops the oldest queue item (and its entry if still current).
    fn pop_oldest(&mut self) {
        if let Some((seq, key)) = self.queue.pop_front() {
            if self.entries.get(&key).is_some_and(|e| e.seq == seq) {
                self.remove(&key);
            }
        }
    }

    /// Whether the oldest queue item is stale or its entry expired.
    fn oldest_expired(&self, now: Instant, ttl: Duration) -> bool {
        let Some((seq, key)) = self.queue.front() else {
            return false;
        };
        match self.entries.get(key) {
            Some(e) if e.seq == *seq => now.duration_since(e.at) >= ttl,
            _ => true,
        }
    }
}

pub struct JoinCache {
    ttl: Duration,
    max: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

/// Writes `v` with object keys sorted, so equal params give equal bytes.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn decision_bytes(d: &Decision) -> usize {
    let len = |m: &Option<serde_json::Map<String, Value>>| {
        m.as_ref().map_or(0, |m| {
            serde_json::to_vec(m).map_or(usize::MAX / 4, |v| v.len())
        })
    };
    len(&d.reply) + len(&d.meta) + d.reason.len()
}

impl JoinCache {
    pub fn new(ttl: Duration, max: usize, max_bytes: usize) -> Self {
        JoinCache {
            ttl,
            max,
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The cache key of a join, `None` when caching is off or the params are too large to
    /// cache. Roles and claims are part of it: a token refresh that changes them asks again.
    /// A history read and a live join never share a key.
    pub fn key(&self, k: &KeyParts<'_>) -> Option<Key> {
        if self.ttl.is_zero() || self.max == 0 || self.max_bytes == 0 {
            return None;
        }
        let mut p = String::new();
        canonical(k.params, &mut p);
        if p.len() > PARAMS_MAX {
            return None;
        }
        let mut c = String::new();
        canonical(k.claims, &mut c);
        let addr = k.addr.map(|a| a.to_string()).unwrap_or_default();
        let mut h = Sha256::new();
        let mut field = |part: &[u8]| {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        };
        field(b"plexus join cache v2");
        field(k.url.as_bytes());
        field(if k.read { b"read" } else { b"join" });
        field(k.who.sub.as_bytes());
        field(&(k.who.roles.len() as u64).to_be_bytes());
        for role in k.who.roles.iter() {
            field(role.as_bytes());
        }
        field(c.as_bytes());
        field(k.topic.as_bytes());
        field(p.as_bytes());
        field(addr.as_bytes());
        Some(h.finalize().into())
    }

    pub fn get(&self, key: &Key) -> Option<Decision> {
        let mut inner = self.inner.lock();
        match inner.entries.get(key) {
            Some(e) if e.at.elapsed() < self.ttl => Some(e.decision.clone()),
            Some(_) => {
                inner.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches `decision` unless it is too large; makes room by dropping the oldest entries.
    pub fn put(&self, key: Key, decision: Decision) {
        let size = decision_bytes(&decision);
        if size > DECISION_MAX {
            return;
        }
        let bytes = size + ENTRY_OVERHEAD;
        if bytes > self.max_bytes {
            return;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock();
        inner.remove(&key);
        // Expired entries first, then the oldest while over a bound.
        while inner.oldest_expired(now, self.ttl) {
            inner.pop_oldest();
        }
        while !inner.queue.is_empty()
            && (inner.entries.len() >= self.max
                || inner.bytes + bytes > self.max_bytes
                || inner.queue.len() >= self.max.saturating_mul(2))
        {
            inner.pop_oldest();
        }
        inner.seq += 1;
        let seq = inner.seq;
        inner.queue.push_back((seq, key));
        inner.bytes += bytes;
        inner.entries.insert(
            key,
            Entry {
                at: now,
                seq,
                bytes,
                decision,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the cached entries are counted as.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Roles;
    use crate::hooks::answer::{Broadcast, Decision};
    use serde_json::json;

    fn allow() -> Decision {
        Decision {
            allow: true,
            reason: String::new(),
            reply: None,
            meta: None,
            broadcast: Broadcast::Original,
        }
    }

    fn parts<'a>(
        who: &'a Identity,
        claims: &'a Value,
        topic: &'a str,
        params: &'a Value,
    ) -> KeyParts<'a> {
        KeyParts {
            url: "u",
            read: false,
            who,
            claims,
            topic,
            params,
            addr: None,
        }
    }

    fn key(c: &JoinCache, topic: &str) -> Key {
        c.key(&parts(&Identity::new("a"), &json!({}), topic, &Value::Null))
            .unwrap()
    }

    #[test]
    fn bounded_and_expiring() {
        let who = Identity::new("a");
        let off = JoinCache::new(Duration::ZERO, 10, 1 << 20);
        assert!(off
            .key(&parts(&who, &json!({}), "t", &Value::Null))
            .is_none());
        let c = JoinCache::new(Duration::from_millis(50), 2, 1 << 20);
        for t in ["t1", "t2", "t3"] {
            c.put(key(&c, t), allow());
        }
        assert_eq!(c.len(), 2, "the cap holds");
        assert!(c.get(&key(&c, "t1")).is_none(), "the oldest made room");
        assert!(c.get(&key(&c, "t3")).is_some());
        std::thread::sleep(Duration::from_millis(60));
        c.put(key(&c, "t4"), allow());
        assert_eq!(c.len(), 1, "expired entries are dropped");
        assert!(c.get(&key(&c, "t3")).is_none());
        assert!(c.get(&key(&c, "t4")).is_some());
    }

    #[test]
    fn bytes_bounded_and_large_items_not_cached() {
        let c = JoinCache::new(Duration::from_secs(60), 1000, 3 * ENTRY_OVERHEAD + 100);
        for i in 0..10 {
            c.put(key(&c, &format!("t{i}")), allow());
        }
        assert_eq!(c.len(), 3);
        assert!(c.bytes() <= 3 * ENTRY_OVERHEAD + 100);
        let big = json!({ "x": "y".repeat(PARAMS_MAX) });
        assert!(c
            .key(&parts(&Identity::new("a"), &json!({}), "t", &big))
            .is_none());
        let mut d = allow();
        d.reply = json!({ "x": "y".repeat(DECISION_MAX) })
            .as_object()
            .cloned();
        c.put(key(&c, "big"), d);
        assert!(c.get(&key(&c, "big")).is_none());
    }

    #[test]
    fn claims_and_param_order() {
        let c = JoinCache::new(Duration::from_secs(60), 10, 1 << 20);
        let who = Identity::new("a");
        let k = |claims: Value, params: Value| c.key(&parts(&who, &claims, "t", &params)).unwrap();
        assert_ne!(
            k(json!({"info": {"plan": "free"}}), json!({})),
            k(json!({"info": {"plan": "pro"}}), json!({}))
        );
        assert_eq!(
            k(json!({}), json!({"a": 1, "b": [1, {"c": 2, "d": 3}]})),
            k(json!({}), json!({"b": [1, {"d": 3, "c": 2}], "a": 1}))
        );
    }

    #[test]
    fn kind_roles_and_address_are_unambiguous() {
        let c = JoinCache::new(Duration::from_secs(60), 10, 1 << 20);
        let mut one = Identity::new("a");
        one.roles = Roles::new(["a,b"]);
        let mut two = Identity::new("a");
        two.roles = Roles::new(["a", "b"]);
        let (claims, params) = (json!({}), json!({"history": true}));
        let k = |p: KeyParts<'_>| c.key(&p).unwrap();
        assert_ne!(
            k(parts(&one, &claims, "t", &params)),
            k(parts(&two, &claims, "t", &params)),
            "roles [\"a,b\"] and [\"a\", \"b\"]"
        );
        let join = parts(&two, &claims, "t", &params);
        let read = KeyParts {
            read: true,
            ..parts(&two, &claims, "t", &params)
        };
        assert_ne!(k(join), k(read), "a history read is not a join");
        let from = |ip: &str| KeyParts {
            addr: ip.parse().ok(),
            ..parts(&two, &claims, "t", &params)
        };
        assert_ne!(k(from("203.0.113.9")), k(from("203.0.113.10")));
        assert_eq!(k(from("203.0.113.9")), k(from("203.0.113.9")));
    }
}
