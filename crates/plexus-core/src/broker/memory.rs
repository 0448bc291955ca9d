//! The embedded in-memory broker: one node, no network. Publishing is local delivery; history
//! is a ring buffer per topic, lost on restart (the epoch changes, so clients learn that their
//! offsets are void).
//!
//! Retained history is bounded ([`HistoryBudget`]): each message is kept once (its encoded
//! frame; event and payload are decoded from it when history is read), a topic keeps at most
//! `topic_max_bytes`, all topics together at most `max_bytes` — past it the topics published
//! to least recently lose their entries first — and a sweep drops entries past their TTL,
//! entries of topics nobody subscribes to that nobody published to for `idle`, and then the
//! topics left with neither subscribers nor entries once nobody read or published them for a
//! minute. Reading history creates no entry: only the topic's epoch record (so that a joiner's
//! epoch is the one later publishes use, and an HTTP poller's stays the same).
//! Bytes freed are counted ([`HistoryStats::freed`]): the binary gives the heap memory they
//! held back to the system after enough of them (src/allocator.rs).

use super::{
    Broker, BrokerError, CounterKey, HistoryItem, HistoryPage, HistoryStats, HoldKey, Removal,
};
use crate::hub::Hub;
use crate::limits::HistoryBudget;
use crate::protocol::Frame;
use crate::publication::Publication;
use crate::ConnId;
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A hold's record: its id and value ([`Broker::hold_put`]).
type HeldRecord = (Box<str>, Box<str>);

/// Bytes one retained entry counts, besides its frame (offset, instant, queue slot).
const ENTRY_OVERHEAD: usize = 48;

/// A topic's record, locked, owning its `Arc`.
type TopicGuard = parking_lot::lock_api::ArcMutexGuard<parking_lot::RawMutex, TopicHistory>;

/// A topic with neither entries nor subscribers is forgotten once nobody read or published it
/// for this long.
const FORGET_AFTER: Duration = Duration::from_secs(60);

struct Retained {
    offset: u64,
    frame: Frame,
    at: Instant,
}

impl Retained {
    fn cost(&self) -> usize {
        self.frame.len() + ENTRY_OVERHEAD
    }
}

struct TopicHistory {
    epoch: String,
    top: u64,
    entries: VecDeque<Retained>,
    bytes: usize,
    ttl: Option<Duration>,
    last_publish: Instant,
    /// Last read or publish.
    last_touch: Instant,
    /// Forgotten by the sweep: a publish or read that got this record before it was removed
    /// must look it up again.
    removed: bool,
}

impl TopicHistory {
    /// Drops entries from the front while `drop_front` says so; returns the bytes freed.
    fn drop_while(&mut self, mut drop_front: impl FnMut(&Retained, usize) -> bool) -> usize {
        let mut freed = 0;
        while let Some(front) = self.entries.front() {
            if !drop_front(front, self.bytes) {
                break;
            }
            let cost = front.cost();
            self.entries.pop_front();
            self.bytes -= cost;
            freed += cost;
        }
        if self.entries.is_empty() {
            self.entries = VecDeque::new();
        }
        freed
    }

    fn expire(&mut self, now: Instant) -> usize {
        match self.ttl {
            Some(ttl) => self.drop_while(|e, _| now.duration_since(e.at) > ttl),
            None => 0,
        }
    }

    fn clear(&mut self) -> usize {
        self.drop_while(|_, _| true)
    }
}

pub struct MemoryBroker {
    hub: Arc<Hub>,
    budget: HistoryBudget,
    epoch_prefix: String,
    generation: AtomicU64,
    histories: Mutex<HashMap<Box<str>, Arc<Mutex<TopicHistory>>>>,
    /// Bytes retained by all topics.
    bytes: AtomicUsize,
    /// Bytes of history freed since start ([`HistoryStats::freed`]).
    freed: AtomicU64,
    /// Webhooks held for the reconnect grace ([`HoldKey`]): (id, value) per key, oldest
    /// first. Bounded by the node's cap on held events (`webhooks.disconnect_grace_max`):
    /// each entry is removed by its holder at the end of the grace if no claim took it first.
    holds: Mutex<HashMap<HoldKey, VecDeque<HeldRecord>>>,
}

impl MemoryBroker {
    /// A broker with the default [`HistoryBudget`].
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Self::with_budget(hub, HistoryBudget::default())
    }

    pub fn with_budget(hub: Arc<Hub>, budget: HistoryBudget) -> Arc<Self> {
        let broker = Arc::new(Self::unswept(hub, budget));
        // TTLs and the idle limit apply even to topics nobody touches again: a sweep every
        // few seconds frees their entries.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&broker);
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let Some(b) = weak.upgrade() else { return };
                    b.sweep(Instant::now());
                }
            });
        }
        broker
    }

    fn unswept(hub: Arc<Hub>, budget: HistoryBudget) -> Self {
        use std::hash::{BuildHasher, RandomState};
        let seed = RandomState::new().hash_one(std::time::SystemTime::now());
        MemoryBroker {
            hub,
            budget,
            epoch_prefix: format!("{:08x}", seed as u32),
            generation: AtomicU64::new(1),
            histories: Mutex::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
            freed: AtomicU64::new(0),
            holds: Mutex::new(HashMap::new()),
        }
    }

    /// Drops expired and idle entries, and forgets topics left with neither entries nor local
    /// subscribers.
    pub fn sweep(&self, now: Instant) {
        let topics: Vec<(Box<str>, Arc<Mutex<TopicHistory>>)> = self
            .histories
            .lock()
            .iter()
            .map(|(t, h)| (t.clone(), h.clone()))
            .collect();
        let mut forget = Vec::new();
        for (topic, history) in topics {
            let mut h = history.lock();
            let mut freed = h.expire(now);
            let unsubscribed = self.hub.subscriber_count(&topic) == 0;
            if unsubscribed && now.duration_since(h.last_publish) > self.budget.idle {
                freed += h.clear();
            }
            self.release(freed);
            if unsubscribed
                && h.entries.is_empty()
                && now.duration_since(h.last_touch) > FORGET_AFTER
            {
                forget.push(topic);
            }
        }
        if forget.is_empty() {
            return;
        }
        let mut histories = self.histories.lock();
        for topic in forget {
            let Some(history) = histories.get(&topic).cloned() else {
                continue;
            };
            // Still empty and unsubscribed with the topic locked: marked removed under that
            // lock, so a publish or read that already holds this record looks it up again.
            let mut h = history.lock();
            if h.entries.is_empty() && self.hub.subscriber_count(&topic) == 0 {
                h.removed = true;
                drop(h);
                histories.remove(&topic);
            }
        }
    }

    /// Past the node-wide budget: the topics published to least recently lose their entries
    /// until the total is back under three quarters of the budget (so that a node at its
    /// budget does not scan every topic on every publish).
    fn evict(&self) {
        let mut topics: Vec<(Instant, Arc<Mutex<TopicHistory>>)> = self
            .histories
            .lock()
            .values()
            .map(|h| (h.lock().last_publish, h.clone()))
            .collect();
        topics.sort_by_key(|(at, _)| *at);
        let target = self.budget.max_bytes / 4 * 3;
        for (_, history) in topics {
            if self.bytes.load(Ordering::Relaxed) <= target {
                break;
            }
            let freed = history.lock().clear();
            self.release(freed);
        }
    }

    /// Counts `freed` bytes of entries dropped; returns the total retained before.
    fn release(&self, freed: usize) -> usize {
        if freed == 0 {
            return self.bytes.load(Ordering::Relaxed);
        }
        self.freed.fetch_add(freed as u64, Ordering::Relaxed);
        self.bytes.fetch_sub(freed, Ordering::Relaxed)
    }

    /// The topic's record (created if missing), and its lock; never one the sweep removed.
    fn locked(&self, topic: &str, ttl: Option<Duration>) -> (Arc<Mutex<TopicHistory>>, TopicGuard) {
        loop {
            let history = self
                .histories
                .lock()
                .entry(topic.into())
                .or_insert_with(|| {
                    let g = self.generation.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    Arc::new(Mutex::new(TopicHistory {
                        epoch: format!("{}-{g}", self.epoch_prefix),
                        top: 0,
                        entries: VecDeque::new(),
                        bytes: 0,
                        ttl,
                        last_publish: now,
                        last_touch: now,
                        removed: false,
                    }))
                })
                .clone();
            let guard = Mutex::lock_arc(&history);
            if !guard.removed {
                return (history, guard);
            }
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn hold_put(
        &self,
        key: &HoldKey,
        id: &str,
        value: &str,
        _ttl: Duration,
    ) -> Result<(), BrokerError> {
        let mut holds = self.holds.lock();
        holds
            .entry(key.clone())
            .or_default()
            .push_back((id.into(), value.into()));
        Ok(())
    }

    async fn hold_take(&self, key: &HoldKey) -> Result<Option<String>, BrokerError> {
        let mut holds = self.holds.lock();
        let Some(held) = holds.get_mut(key) else {
            return Ok(None);
        };
        // Entries have no expiry here: the holder releases its own at the end of the grace,
        // so that whichever of the claim and the release comes first wins.
        let taken = held.pop_front().map(|(_, value)| value.into());
        if held.is_empty() {
            holds.remove(key);
        }
        Ok(taken)
    }

    async fn hold_release(&self, key: &HoldKey, id: &str) -> Result<bool, BrokerError> {
        let mut holds = self.holds.lock();
        let Some(held) = holds.get_mut(key) else {
            return Ok(false);
        };
        let found = held.iter().position(|(i, _)| &**i == id);
        if let Some(i) = found {
            held.remove(i);
        }
        if held.is_empty() {
            holds.remove(key);
        }
        Ok(found.is_some())
    }

    async fn publish(&self, mut publication: Publication) -> Result<Option<u64>, BrokerError> {
        let Some(opts) = publication.history else {
            self.hub.deliver(&Arc::new(publication));
            return Ok(None);
        };
        // Offset assignment, retention and delivery under one lock: subscribers of a topic
        // see its offsets in order.
        let (history, mut h) = self.locked(&publication.topic, opts.ttl);
        let offset = h.top + 1;
        publication
            .set_offset(offset)
            .map_err(|e| BrokerError(e.to_string()))?;
        h.top = offset;
        let now = Instant::now();
        h.ttl = opts.ttl;
        h.last_publish = now;
        h.last_touch = now;
        let entry = Retained {
            offset,
            frame: publication.frame.clone(),
            at: now,
        };
        let added = entry.cost();
        h.entries.push_back(entry);
        h.bytes += added;
        // Counted under the topic's lock, before anything can free this entry.
        self.bytes.fetch_add(added, Ordering::Relaxed);
        // The oldest entries go past `history_size` entries or the topic's byte cap.
        let excess = h.entries.len().saturating_sub(opts.size.max(1));
        let cap = self.budget.topic_max_bytes;
        let mut dropped = 0;
        let mut freed = h.drop_while(|_, bytes| {
            let drop = dropped < excess || bytes > cap;
            dropped += usize::from(drop);
            drop
        });
        freed += h.expire(now);
        let publication = Arc::new(publication);
        self.hub.deliver(&publication);
        let total = self.release(freed).saturating_sub(freed);
        drop(h);
        drop(history);
        if total > self.budget.max_bytes {
            self.evict();
        }
        Ok(Some(offset))
    }

    async fn history(&self, topic: &str, since: Option<u64>) -> Result<HistoryPage, BrokerError> {
        let (_history, mut h) = self.locked(topic, None);
        let now = Instant::now();
        h.last_touch = now;
        self.release(h.expire(now));
        let Some(since) = since else {
            return Ok(HistoryPage {
                epoch: h.epoch.clone(),
                top: h.top,
                complete: true,
                items: Vec::new(),
            });
        };
        let first = h.entries.front().map_or(h.top + 1, |e| e.offset);
        let complete = since >= h.top || since.saturating_add(1) >= first;
        let mut items = Vec::new();
        for e in h.entries.iter().filter(|e| e.offset > since) {
            // Kept once, as the frame: the rest is decoded for the reader.
            let publication = Publication::from_frame(topic, e.frame.clone(), Some(e.offset), None)
                .map_err(|e| BrokerError(e.to_string()))?;
            items.push(HistoryItem {
                offset: e.offset,
                publication: Arc::new(publication),
            });
        }
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
    fn presence_remove_detached(self: Arc<Self>, _topic: &str, _conn: ConnId) -> Removal {
        Removal::NONE
    }

    fn release_detached(self: Arc<Self>, _key: CounterKey) {}

    fn history_stats(&self) -> Option<HistoryStats> {
        Some(HistoryStats {
            topics: self.histories.lock().len(),
            bytes: self.bytes.load(Ordering::Relaxed),
            freed: self.freed.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;
    use crate::publication::HistoryOpts;

    fn publication(topic: &str, n: u64, pad: usize) -> Publication {
        Publication::new(
            topic,
            "e",
            Payload::json(&serde_json::json!({ "n": n, "pad": "x".repeat(pad) })).unwrap(),
            None,
        )
        .unwrap()
        .with_history(HistoryOpts { size: 3, ttl: None })
    }

    fn broker(budget: HistoryBudget) -> MemoryBroker {
        MemoryBroker::unswept(Arc::new(Hub::new()), budget)
    }

    #[tokio::test]
    async fn offsets_retention_and_completeness() {
        let b = broker(HistoryBudget::default());
        assert_eq!(b.history("t", None).await.unwrap().top, 0);
        for n in 1..=5 {
            assert_eq!(b.publish(publication("t", n, 0)).await.unwrap(), Some(n));
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
        assert_eq!(&*page.items[0].publication.event, "e");
        // Offsets 2..=5 needed but 2 is gone (size 3 keeps 3..=5).
        let page = b.history("t", Some(1)).await.unwrap();
        assert!(!page.complete);
        let page = b.history("t", Some(2)).await.unwrap();
        assert!(page.complete);
        assert_eq!(page.items.len(), 3);
        assert!(b.history("t", Some(5)).await.unwrap().items.is_empty());
        // Another broker (a restarted node) has another epoch.
        let b2 = broker(HistoryBudget::default());
        b2.publish(publication("t", 1, 0)).await.unwrap();
        assert_ne!(b2.history("t", None).await.unwrap().epoch, page.epoch);
    }

    #[tokio::test]
    async fn reads_leave_only_epochs_that_the_sweep_forgets() {
        let b = broker(HistoryBudget::default());
        for i in 0..1000 {
            let page = b.history(&format!("t{i}"), Some(0)).await.unwrap();
            assert_eq!((page.top, page.complete), (0, true));
        }
        assert_eq!(b.history_stats().unwrap().bytes, 0);
        // A joiner's epoch is the one the first publish uses.
        let epoch = b.history("kept", None).await.unwrap().epoch;
        b.publish(publication("kept", 1, 0)).await.unwrap();
        assert_eq!(b.history("kept", None).await.unwrap().epoch, epoch);
        // Read records stay while they are read (an HTTP poller keeps its epoch), then go.
        b.sweep(Instant::now());
        assert_eq!(b.history_stats().unwrap().topics, 1001);
        b.sweep(Instant::now() + FORGET_AFTER + Duration::from_secs(1));
        assert_eq!(b.history_stats().unwrap().topics, 1);
    }

    #[tokio::test]
    async fn the_budget_bounds_every_topic_and_all_of_them() {
        let b = broker(HistoryBudget {
            max_bytes: 100_000,
            topic_max_bytes: 25_000,
            idle: Duration::from_secs(3600),
        });
        // One topic: at most 25 kB of 10 kB messages, the oldest go first.
        for n in 1..=3 {
            b.publish(publication("big", n, 10_000)).await.unwrap();
        }
        let page = b.history("big", Some(0)).await.unwrap();
        assert_eq!(
            page.items.iter().map(|i| i.offset).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(!page.complete);
        // Forty topics of 20 kB: the total stays within the budget, the latest survive.
        for t in 0..40 {
            for n in 1..=2 {
                b.publish(publication(&format!("room:{t}"), n, 10_000))
                    .await
                    .unwrap();
            }
            assert!(b.history_stats().unwrap().bytes <= 100_000);
        }
        let latest = b.history("room:39", Some(0)).await.unwrap();
        assert_eq!(latest.items.len(), 2);
        let oldest = b.history("room:0", Some(0)).await.unwrap();
        assert!(oldest.items.is_empty() && !oldest.complete);
    }

    #[tokio::test]
    async fn idle_unsubscribed_topics_are_dropped_then_forgotten() {
        let b = broker(HistoryBudget {
            idle: Duration::from_secs(60),
            ..HistoryBudget::default()
        });
        b.publish(publication("t", 1, 100)).await.unwrap();
        let first = b.history("t", None).await.unwrap().epoch;
        b.sweep(Instant::now());
        assert_eq!(b.history_stats().unwrap().topics, 1);
        b.sweep(Instant::now() + Duration::from_secs(61));
        let stats = b.history_stats().unwrap();
        assert_eq!((stats.topics, stats.bytes), (0, 0));
        // Recreated later: a new epoch, so old offsets are not taken for the new ones.
        let again = b.history("t", None).await.unwrap().epoch;
        assert_ne!(again, first);
    }

    #[tokio::test]
    async fn a_hold_is_claimed_or_released_exactly_once_oldest_first() {
        let b = broker(HistoryBudget::default());
        let key = HoldKey::Disconnect("alice".into());
        let ttl = Duration::from_secs(1);
        b.hold_put(&key, "n/1", "n-1", ttl).await.unwrap();
        b.hold_put(&key, "n/2", "n-2", ttl).await.unwrap();
        // The first connect pairs with the oldest disconnect; its holder then finds it gone.
        assert_eq!(b.hold_take(&key).await.unwrap().as_deref(), Some("n-1"));
        assert!(!b.hold_release(&key, "n/1").await.unwrap());
        // The other was not claimed: its holder sends it, and nothing is left to claim.
        assert!(b.hold_release(&key, "n/2").await.unwrap());
        assert_eq!(b.hold_take(&key).await.unwrap(), None);
        assert!(b.holds.lock().is_empty());
        // Keys do not mix.
        let other = HoldKey::PresenceLeave {
            topic: "room:1".into(),
            member: "alice".into(),
        };
        b.hold_put(&other, "n/3", "n-3", ttl).await.unwrap();
        assert_eq!(b.hold_take(&key).await.unwrap(), None);
        assert_eq!(b.hold_take(&other).await.unwrap().as_deref(), Some("n-3"));
    }
}
