//! The optional short cache of join decisions (`hooks.join_cache_secs`, off by default): the
//! same user joining the same topic with the same params within the TTL gets the decision
//! the hook gave last time, without a call. Bounded by `hooks.join_cache_max` entries: when
//! full, expired entries are dropped, and if none expired, the decision is not cached.

use super::answer::Decision;
use crate::auth::Identity;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct JoinCache {
    ttl: Duration,
    max: usize,
    entries: Mutex<HashMap<String, (Instant, Decision)>>,
}

impl JoinCache {
    pub fn new(ttl: Duration, max: usize) -> Self {
        JoinCache {
            ttl,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cache key of a join, `None` when caching is off. Roles are part of it: a token
    /// refresh with other roles asks again.
    pub fn key(&self, url: &str, who: &Identity, topic: &str, params: &Value) -> Option<String> {
        if self.ttl.is_zero() || self.max == 0 {
            return None;
        }
        Some(format!(
            "{url}\n{}\n{}\n{topic}\n{params}",
            who.sub,
            who.roles.join(",")
        ))
    }

    pub fn get(&self, key: &str) -> Option<Decision> {
        let mut entries = self.entries.lock();
        match entries.get(key) {
            Some((at, d)) if at.elapsed() < self.ttl => Some(d.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, key: String, decision: Decision) {
        let mut entries = self.entries.lock();
        if entries.len() >= self.max {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= self.max {
                return;
            }
        }
        entries.insert(key, (Instant::now(), decision));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::answer::{Broadcast, Decision};

    fn allow() -> Decision {
        Decision {
            allow: true,
            reason: String::new(),
            reply: None,
            meta: None,
            broadcast: Broadcast::Original,
        }
    }

    #[test]
    fn bounded_and_expiring() {
        let who = Identity::new("a");
        let off = JoinCache::new(Duration::ZERO, 10);
        assert!(off.key("u", &who, "t", &Value::Null).is_none());
        let c = JoinCache::new(Duration::from_millis(50), 2);
        for t in ["t1", "t2", "t3"] {
            let k = c.key("u", &who, t, &Value::Null).unwrap();
            c.put(k, allow());
        }
        assert_eq!(c.len(), 2, "the cap holds");
        assert!(c
            .get(&c.key("u", &who, "t1", &Value::Null).unwrap())
            .is_some());
        std::thread::sleep(Duration::from_millis(60));
        c.put(c.key("u", &who, "t3", &Value::Null).unwrap(), allow());
        assert_eq!(c.len(), 1, "expired entries make room");
        let t1 = c.key("u", &who, "t1", &Value::Null).unwrap();
        assert!(c.get(&t1).is_none());
        let t3 = c.key("u", &who, "t3", &Value::Null).unwrap();
        assert!(c.get(&t3).is_some());
    }
}
