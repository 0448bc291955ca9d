//! Join quotas: how many times one user may be joined to one topic at once (a channel rule's
//! `max_per_user`), counted on this node and, through the broker, across the cluster.
//!
//! A successful [`JoinCounter::claim`] returns a [`JoinQuota`]; the joined channel holds it,
//! and dropping it gives the join back (here at once, in the cluster in the background), so
//! every way a channel ends — leave, disconnect, a cancelled task — releases it exactly once.

use crate::broker::{Broker, CounterKey};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// (topic, sub).
type Key = (Arc<str>, Arc<str>);

/// This node's join counts for the channels whose rule sets `max_per_user`.
pub struct JoinCounter {
    local: Mutex<HashMap<Key, u32>>,
    broker: Arc<dyn Broker>,
}

/// One counted join; gives itself back when dropped.
pub struct JoinQuota {
    counter: Arc<JoinCounter>,
    key: Key,
    /// Also counted in the cluster (or being counted: a claim cut short is given back too).
    cluster: bool,
}

impl JoinCounter {
    pub fn new(broker: Arc<dyn Broker>) -> Arc<Self> {
        Arc::new(JoinCounter {
            local: Mutex::new(HashMap::new()),
            broker,
        })
    }

    /// Counts one more join of `sub` to `topic` unless that would make more than `max`, on
    /// this node or in the cluster. When the broker is unreachable the node-wide count holds
    /// alone.
    pub async fn claim(
        self: &Arc<Self>,
        topic: &str,
        sub: &Arc<str>,
        max: u32,
    ) -> Option<JoinQuota> {
        let key: Key = (topic.into(), sub.clone());
        {
            let mut local = self.local.lock();
            let n = local.entry(key.clone()).or_insert(0);
            if *n >= max {
                return None;
            }
            *n += 1;
        }
        // From here, dropping the quota (even while the claim below is awaited) gives it back.
        let mut quota = JoinQuota {
            counter: self.clone(),
            key,
            cluster: true,
        };
        match self.broker.claim(&quota.cluster_key(), max).await {
            Ok(true) => Some(quota),
            Ok(false) => {
                quota.cluster = false;
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster max_per_user unavailable, node-wide limit applies");
                quota.cluster = false;
                Some(quota)
            }
        }
    }

    /// Joins of `sub` to `topic` counted on this node.
    pub fn count(&self, topic: &str, sub: &str) -> u32 {
        self.local
            .lock()
            .get(&(Arc::from(topic), Arc::from(sub)))
            .copied()
            .unwrap_or(0)
    }

    fn release_local(&self, key: &Key) {
        let mut local = self.local.lock();
        if let Some(n) = local.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                local.remove(key);
            }
        }
    }
}

impl JoinQuota {
    fn cluster_key(&self) -> CounterKey {
        CounterKey::UserJoins {
            topic: self.key.0.clone(),
            sub: self.key.1.clone(),
        }
    }
}

impl Drop for JoinQuota {
    fn drop(&mut self) {
        self.counter.release_local(&self.key);
        if self.cluster {
            self.counter
                .broker
                .clone()
                .release_detached(self.cluster_key());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::memory::MemoryBroker;
    use crate::hub::Hub;

    #[tokio::test]
    async fn a_quota_is_given_back_when_dropped() {
        let counter = JoinCounter::new(MemoryBroker::new(Arc::new(Hub::new())));
        let alice: Arc<str> = "alice".into();
        let a = counter.claim("room:1", &alice, 2).await.unwrap();
        let b = counter.claim("room:1", &alice, 2).await.unwrap();
        assert!(counter.claim("room:1", &alice, 2).await.is_none());
        assert!(counter.claim("room:2", &alice, 2).await.is_some());
        assert_eq!(counter.count("room:1", "alice"), 2);
        drop(a);
        assert_eq!(counter.count("room:1", "alice"), 1);
        let _c = counter.claim("room:1", &alice, 2).await.unwrap();
        drop(b);
        assert_eq!(counter.count("room:1", "alice"), 1);
    }
}
