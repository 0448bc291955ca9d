//! The embedded in-memory broker: one node, no network. Publishing is local delivery; history
//! is a ring buffer per topic, lost on restart (the epoch changes, so clients learn that their
//! offsets are void).

use super::{Broker, BrokerError, CounterKey, HistoryItem, HistoryPage};
use crate::hub::Hub;
use crate::publication::Publication;
use crate::ConnId;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

struct Retained {
    item: HistoryItem,
    at: Instant,
}

struct TopicHistory {
    epoch: String,
    top: u64,
    entries: VecDeque<Retained>,
}

impl TopicHistory {
    fn expire(&mut self, ttl: Option<std::time::Duration>, now: Instant) {
        if let Some(ttl) = ttl {
            while self
                .entries
                .front()
                .is_some_and(|e| now.duration_since(e.at) > ttl)
            {
                self.entries.pop_front();
            }
        }
    }
}

pub struct MemoryBroker {
    hub: Arc<Hub>,
    epoch_prefix: String,
    generation: std::sync::atomic::AtomicU64,
    histories: Mutex<HashMap<Box<str>, Arc<Mutex<TopicHistory>>>>,
    /// Last TTL seen per topic, applied when reading.
    ttls: Mutex<HashMap<Box<str>, Option<std::time::Duration>>>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        let broker = Arc::new(Self::unswept(hub));
        // TTLs apply even to topics nobody touches again: a sweep every few seconds frees
        // their expired entries.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&broker);
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    let Some(b) = weak.upgrade() else { return };
                    b.sweep();
                }
            });
        }
        broker
    }

    /// Drops expired entries of every topic with a TTL.
    pub fn sweep(&self) {
        let ttls: Vec<(Box<str>, std::time::Duration)> = self
            .ttls
            .lock()
            .iter()
            .filter_map(|(t, ttl)| ttl.map(|ttl| (t.clone(), ttl)))
            .collect();
        let now = Instant::now();
        for (topic, ttl) in ttls {
            let history = self.histories.lock().get(&topic).cloned();
            if let Some(h) = history {
                let mut h = h.lock();
                h.expire(Some(ttl), now);
                if h.entries.is_empty() {
                    h.entries = VecDeque::new();
                }
            }
        }
    }

    fn unswept(hub: Arc<Hub>) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let seed = RandomState::new().hash_one(std::time::SystemTime::now());
        MemoryBroker {
            hub,
            epoch_prefix: format!("{:08x}", seed as u32),
            generation: std::sync::atomic::AtomicU64::new(1),
            histories: Mutex::new(HashMap::new()),
            ttls: Mutex::new(HashMap::new()),
        }
    }

    fn topic_history(&self, topic: &str) -> Arc<Mutex<TopicHistory>> {
        self.histories
            .lock()
            .entry(topic.into())
            .or_insert_with(|| {
                let g = self
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Arc::new(Mutex::new(TopicHistory {
                    epoch: format!("{}-{g}", self.epoch_prefix),
                    top: 0,
                    entries: VecDeque::new(),
                }))
            })
            .clone()
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, mut publication: Publication) -> Result<Option<u64>, BrokerError> {
        let Some(opts) = publication.history else {
            self.hub.deliver(&Arc::new(publication));
            return Ok(None);
        };
        let history = self.topic_history(&publication.topic);
        // Offset assignment, retention and delivery under one lock: subscribers of a topic
        // see its offsets in order.
        let mut h = history.lock();
        let offset = h.top + 1;
        publication
            .set_offset(offset)
            .map_err(|e| BrokerError(e.to_string()))?;
        h.top = offset;
        let now = Instant::now();
        let publication = Arc::new(publication);
        h.entries.push_back(Retained {
            item: HistoryItem {
                offset,
                publication: publication.clone(),
            },
            at: now,
        });
        while h.entries.len() > opts.size.max(1) {
            h.entries.pop_front();
        }
        h.expire(opts.ttl, now);
        self.hub.deliver(&publication);
        drop(h);
        self.ttls
            .lock()
            .insert(publication.topic.as_ref().into(), opts.ttl);
        Ok(Some(offset))
    }

    async fn history(&self, topic: &str, since: Option<u64>) -> Result<HistoryPage, BrokerError> {
        let history = self.topic_history(topic);
        let ttl = self.ttls.lock().get(topic).copied().flatten();
        let mut h = history.lock();
        h.expire(ttl, Instant::now());
        let Some(since) = since else {
            return Ok(HistoryPage {
                epoch: h.epoch.clone(),
                top: h.top,
                complete: true,
                items: Vec::new(),
            });
        };
        let first = h.entries.front().map_or(h.top + 1, |e| e.item.offset);
        let complete = since >= h.top || since.saturating_add(1) >= first;
        let items = h
            .entries
            .iter()
            .filter(|e| e.item.offset > since)
            .map(|e| e.item.clone())
            .collect();
        Ok(HistoryPage {
            epoch: h.epoch.clone(),
            top: h.top,
            complete,
            items,
        })
    }

    async fn subscribe(&self, _topic: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _topic: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    // One node keeps no cluster state: nothing to clean up in the background.
    fn presence_remove_detached(self: Arc<Self>, _topic: &str, _conn: ConnId) {}

    fn release_detached(self: Arc<Self>, _key: CounterKey) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;
    use crate::publication::HistoryOpts;

    fn publication(n: u64) -> Publication {
        Publication::new(
            "t",
            "e",
            Payload::json(&serde_json::json!({ "n": n })).unwrap(),
            None,
        )
        .unwrap()
        .with_history(HistoryOpts { size: 3, ttl: None })
    }

    #[tokio::test]
    async fn offsets_retention_and_completeness() {
        let b = MemoryBroker::new(Arc::new(Hub::new()));
        assert_eq!(b.history("t", None).await.unwrap().top, 0);
        for n in 1..=5 {
            assert_eq!(b.publish(publication(n)).await.unwrap(), Some(n));
        }
        let page = b.history("t", Some(3)).await.unwrap();
        assert!(page.complete);
        assert_eq!(
            page.items.iter().map(|i| i.offset).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert!(
            String::from_utf8_lossy(page.items[0].publication.frame.bytes())
                .starts_with(r#"[null,"4","t","e""#)
        );
        // Offsets 2..=5 needed but 2 is gone (size 3 keeps 3..=5).
        let page = b.history("t", Some(1)).await.unwrap();
        assert!(!page.complete);
        let page = b.history("t", Some(2)).await.unwrap();
        assert!(page.complete);
        assert_eq!(page.items.len(), 3);
        assert!(b.history("t", Some(5)).await.unwrap().items.is_empty());
        // Another broker (a restarted node) has another epoch.
        let b2 = MemoryBroker::new(Arc::new(Hub::new()));
        assert_ne!(b2.history("t", None).await.unwrap().epoch, page.epoch);
    }
}
