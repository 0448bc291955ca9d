//! The hub: which local connections subscribe to which topic, and fan-out.
//!
//! A broadcast arrives here already encoded (see [`Publication`]); the hub hands the same
//! `Arc<Publication>` to every local subscriber's [`Outbox`]. Topics are spread over shards so that
//! joins on different topics do not contend; a fan-out takes one shard read lock per message.
//! Presence diffs may wait a moment to leave merged ([`crate::presence_diffs`]).

use crate::outbox::{Delivery, Outbox};
use crate::presence_diffs::{DiffCoalescer, Flush};
use crate::protocol::events;
use crate::publication::Publication;
use crate::ConnId;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

const SHARDS: usize = 64;

/// A local subscriber: its outbox, and whether its join asked for history offsets.
type Subscribers = HashMap<ConnId, (Arc<Outbox>, bool)>;
type Shard = RwLock<HashMap<Arc<str>, Subscribers>>;

/// Topic → local subscribers.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// `None`: every presence diff is delivered at once (`presence.diff_interval_ms = 0`).
    presence_diffs: Option<DiffCoalescer>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            presence_diffs: None,
        }
    }

    /// A hub whose presence diffs are merged over `interval` per topic (zero: none are, as
    /// [`Hub::new`]).
    pub fn with_presence_diff_interval(interval: Duration) -> Arc<Self> {
        if interval.is_zero() {
            return Arc::new(Self::new());
        }
        Arc::new_cyclic(|hub| Hub {
            presence_diffs: Some(DiffCoalescer::new(interval, hub.clone())),
            ..Self::new()
        })
    }

    /// The presence diff coalescer, when diffs are merged.
    pub fn presence_diffs(&self) -> Option<&DiffCoalescer> {
        self.presence_diffs.as_ref()
    }

    fn shard(&self, topic: &str) -> &Shard {
        &self.shards[self.shard_index(topic)]
    }

    /// The shard of `topic`, of [`Hub::SHARDS`]: for state kept beside the hub's, locked in the
    /// same grain.
    pub fn shard_index(&self, topic: &str) -> usize {
        self.hasher.hash_one(topic) as usize % SHARDS
    }

    /// How many shards the topics are spread over.
    pub const SHARDS: usize = SHARDS;

    /// Adds a subscriber. Returns `(added, first)`: whether `conn` was not yet subscribed, and
    /// whether it is the topic's first local subscriber (the node then subscribes to the topic
    /// on the broker). `with_offset`: the subscriber gets history offsets in `ref`.
    pub fn subscribe(
        &self,
        topic: &str,
        conn: ConnId,
        outbox: Arc<Outbox>,
        with_offset: bool,
    ) -> (bool, bool) {
        let mut shard = self.shard(topic).write();
        match shard.get_mut(topic) {
            Some(subs) => (subs.insert(conn, (outbox, with_offset)).is_none(), false),
            None => {
                let mut subs = HashMap::with_capacity(1);
                subs.insert(conn, (outbox, with_offset));
                shard.insert(topic.into(), subs);
                (true, true)
            }
        }
    }

    /// Removes a subscriber. Returns `(removed, emptied)`: whether `conn` was subscribed, and
    /// whether the topic has no local subscriber left (the node then unsubscribes from the
    /// topic on the broker).
    pub fn unsubscribe(&self, topic: &str, conn: ConnId) -> (bool, bool) {
        let mut shard = self.shard(topic).write();
        let Some(subs) = shard.get_mut(topic) else {
            return (false, false);
        };
        if subs.remove(&conn).is_none() {
            return (false, false);
        }
        if subs.is_empty() {
            shard.remove(topic);
            (true, true)
        } else {
            (true, false)
        }
    }

    /// Hands the publication's frame to every local subscriber of its topic.
    /// Returns how many received it.
    /// A presence diff, when diffs are merged, waits for its topic's next flush instead
    /// (and 0 is returned).
    pub fn deliver(&self, publication: &Arc<Publication>) -> usize {
        if let Some(coalescer) = &self.presence_diffs {
            if &*publication.event == events::PRESENCE_DIFF && publication.history.is_none() {
                // Not a diff it can merge (Err): delivered as it came.
                if let Ok(flush) = coalescer.add(publication) {
                    publication.not_timed();
                    if let Some(f) = flush {
                        self.deliver_flush(f);
                    }
                    return 0;
                }
            }
        }
        let started = std::time::Instant::now();
        let (n, through) = self.deliver_untimed(publication);
        crate::metrics::fanout(started.elapsed(), n, through);
        if n == 0 {
            publication.not_timed();
        }
        n
    }

    /// Returns how many received it, and of them how many got it written straight to their
    /// socket (whole, in part).
    fn deliver_untimed(&self, publication: &Arc<Publication>) -> (usize, [usize; 2]) {
        let shard = self.shard(&publication.topic).read();
        let Some(subs) = shard.get(&*publication.topic) else {
            return (0, [0, 0]);
        };
        let (mut n, mut through) = (0, [0, 0]);
        for (id, (outbox, with_offset)) in subs {
            if Some(*id) == publication.exclude {
                continue;
            }
            match outbox.deliver(publication, *with_offset) {
                Delivery::Dropped => continue,
                Delivery::Queued => {}
                Delivery::Written => through[0] += 1,
                Delivery::Partial => through[1] += 1,
            }
            n += 1;
        }
        (n, through)
    }

    /// Delivers a merged presence diff: the young members' version to them, the other one
    /// to everyone else.
    pub(crate) fn deliver_flush(&self, flush: Flush) -> usize {
        let started = std::time::Instant::now();
        let Some(topic) = flush
            .others
            .as_ref()
            .or(flush.for_young.as_ref().map(|(p, _)| p))
            .map(|p| p.topic.clone())
        else {
            return 0;
        };
        let shard = self.shard(&topic).read();
        let Some(subs) = shard.get(&*topic) else {
            return 0;
        };
        let mut n = 0;
        for (id, (outbox, with_offset)) in subs {
            let publication = match &flush.for_young {
                Some((p, young)) if young.contains(id) => p,
                _ => match &flush.others {
                    Some(p) => p,
                    None => continue,
                },
            };
            if outbox.push_publication(publication, *with_offset) {
                n += 1;
            }
        }
        drop(shard);
        // Merged presence diffs always take the queue (never written through).
        crate::metrics::fanout(started.elapsed(), n, [0, 0]);
        for p in flush
            .others
            .iter()
            .chain(flush.for_young.iter().map(|(p, _)| p))
        {
            if n == 0 {
                p.not_timed();
            }
        }
        n
    }

    /// Local subscriber count of one topic.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.shard(topic).read().get(topic).map_or(0, |s| s.len())
    }

    /// Every topic with local subscribers, with its subscriber count, sorted by name.
    pub fn topics(&self) -> Vec<(String, usize)> {
        let mut all: Vec<(String, usize)> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .map(|(t, subs)| (t.to_string(), subs.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::Outgoing;
    use crate::protocol::Payload;

    #[test]
    fn fan_out_shares_one_buffer_and_skips_the_sender() {
        let hub = Hub::new();
        let a = Arc::new(Outbox::new(10, 10_000));
        let b = Arc::new(Outbox::new(10, 10_000));
        assert_eq!(hub.subscribe("room:a", 1, a.clone(), false), (true, true));
        assert_eq!(hub.subscribe("room:a", 2, b.clone(), false), (true, false));
        assert_eq!(hub.subscribe("room:a", 2, b.clone(), false), (false, false));
        let p =
            Arc::new(Publication::new("room:a", "msg", Payload::empty_object(), Some(1)).unwrap());
        assert_eq!(hub.deliver(&p), 1);
        let mut out = Vec::new();
        a.drain_into(&mut out);
        assert!(out.is_empty());
        b.drain_into(&mut out);
        assert_eq!(out.len(), 1);
        // The same publication, not a copy.
        assert!(matches!(&out[0], Outgoing::Broadcast(got) if Arc::ptr_eq(got, &p)));
        assert_eq!(hub.unsubscribe("room:a", 1), (true, false));
        assert_eq!(hub.unsubscribe("room:a", 1), (false, false));
        assert_eq!(hub.unsubscribe("room:a", 2), (true, true));
        assert_eq!(hub.topics(), vec![]);
    }
}
