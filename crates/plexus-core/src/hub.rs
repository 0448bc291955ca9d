//! The hub: which local connections subscribe to which topic, and fan-out.
//!
//! A broadcast arrives here already encoded (see [`Publication`]); the hub hands the same
//! shared bytes to every local subscriber's [`Outbox`]. Topics are spread over shards so that
//! joins on different topics do not contend; a fan-out takes one shard read lock per message.

use crate::outbox::Outbox;
use crate::protocol::{encode_broadcast, EncodeError, Frame, Payload};
use crate::ConnId;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

const SHARDS: usize = 64;

/// How much history a topic keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryOpts {
    /// Entries kept (at least 1).
    pub size: usize,
    /// Entries older than this are dropped (`None`: only the size limit applies).
    pub ttl: Option<std::time::Duration>,
}

/// One broadcast, encoded once for all receivers.
#[derive(Clone, Debug)]
pub struct Publication {
    pub topic: Arc<str>,
    pub event: Arc<str>,
    pub payload: Payload,
    /// The frame every subscriber receives (its `ref` carries the offset on history topics).
    pub frame: Frame,
    /// A local connection that must not receive it (the sender of a client push).
    pub exclude: Option<ConnId>,
    /// Set for topics with history: the broker assigns `offset` and re-encodes the frame.
    pub history: Option<HistoryOpts>,
    /// Position in the topic's history, assigned by the broker.
    pub offset: Option<u64>,
}

impl Publication {
    pub fn new(
        topic: &str,
        event: &str,
        payload: Payload,
        exclude: Option<ConnId>,
    ) -> Result<Self, EncodeError> {
        let frame = encode_broadcast(None, topic, event, &payload)?;
        Ok(Publication {
            topic: topic.into(),
            event: event.into(),
            payload,
            frame,
            exclude,
            history: None,
            offset: None,
        })
    }

    /// A publication received from another node: only its frame matters here.
    pub fn remote(topic: &str, frame: Frame, offset: Option<u64>, exclude: Option<ConnId>) -> Self {
        Publication {
            topic: topic.into(),
            event: "".into(),
            payload: Payload::empty_object(),
            frame,
            exclude,
            history: None,
            offset,
        }
    }

    /// A publication that goes into the topic's history.
    pub fn with_history(mut self, opts: HistoryOpts) -> Self {
        self.history = Some(opts);
        self
    }

    /// Assigns the history offset and encodes it into the frame's `ref`
    /// (`[null, "<offset>", topic, event, payload]`).
    pub fn set_offset(&mut self, offset: u64) -> Result<(), EncodeError> {
        self.frame = encode_broadcast(
            Some(&offset.to_string()),
            &self.topic,
            &self.event,
            &self.payload,
        )?;
        self.offset = Some(offset);
        Ok(())
    }
}

type Subscribers = HashMap<ConnId, Arc<Outbox>>;
type Shard = RwLock<HashMap<Arc<str>, Subscribers>>;

/// Topic → local subscribers.
pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
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
        }
    }

    fn shard(&self, topic: &str) -> &Shard {
        let h = self.hasher.hash_one(topic) as usize;
        &self.shards[h % SHARDS]
    }

    /// Adds a subscriber. Returns `(added, first)`: whether `conn` was not yet subscribed, and
    /// whether it is the topic's first local subscriber (the node then subscribes to the topic
    /// on the broker).
    pub fn subscribe(&self, topic: &str, conn: ConnId, outbox: Arc<Outbox>) -> (bool, bool) {
        let mut shard = self.shard(topic).write();
        match shard.get_mut(topic) {
            Some(subs) => (subs.insert(conn, outbox).is_none(), false),
            None => {
                let mut subs = HashMap::with_capacity(1);
                subs.insert(conn, outbox);
                shard.insert(topic.into(), subs);
                (true, true)
            }
        }
    }

    /// Removes a subscriber. Returns `true` if the topic has no local subscriber left.
    pub fn unsubscribe(&self, topic: &str, conn: ConnId) -> bool {
        let mut shard = self.shard(topic).write();
        let Some(subs) = shard.get_mut(topic) else {
            return false;
        };
        if subs.remove(&conn).is_none() {
            return false;
        }
        if subs.is_empty() {
            shard.remove(topic);
            true
        } else {
            false
        }
    }

    /// Hands the publication's frame to every local subscriber of its topic.
    /// Returns how many received it.
    pub fn deliver(&self, publication: &Publication) -> usize {
        let shard = self.shard(&publication.topic).read();
        let Some(subs) = shard.get(&*publication.topic) else {
            return 0;
        };
        let mut n = 0;
        for (id, outbox) in subs {
            if Some(*id) == publication.exclude {
                continue;
            }
            if outbox.push_publication(publication) {
                n += 1;
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

    #[test]
    fn fan_out_shares_one_buffer_and_skips_the_sender() {
        let hub = Hub::new();
        let a = Arc::new(Outbox::new(10, 10_000));
        let b = Arc::new(Outbox::new(10, 10_000));
        assert_eq!(hub.subscribe("room:a", 1, a.clone()), (true, true));
        assert_eq!(hub.subscribe("room:a", 2, b.clone()), (true, false));
        assert_eq!(hub.subscribe("room:a", 2, b.clone()), (false, false));
        let p = Publication::new("room:a", "msg", Payload::empty_object(), Some(1)).unwrap();
        assert_eq!(hub.deliver(&p), 1);
        let mut out = Vec::new();
        a.drain_into(&mut out);
        assert!(out.is_empty());
        b.drain_into(&mut out);
        assert_eq!(out.len(), 1);
        // Same allocation, not a copy.
        assert_eq!(out[0].bytes().as_ptr(), p.frame.bytes().as_ptr());
        assert!(!hub.unsubscribe("room:a", 1));
        assert!(hub.unsubscribe("room:a", 2));
        assert_eq!(hub.topics(), vec![]);
    }
}
