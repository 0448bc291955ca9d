//! No silent gaps: this node delivers each subscribed history topic's offsets exactly once and
//! in order, whatever its Redis subscription missed or repeated.
//!
//! Per subscribed history topic the node keeps a [`Cursor`]: the epoch and the last offset it
//! delivered to its subscribers. A publication from the subscription (its header carries the
//! epoch, see [`super::envelope`]) at or below the cursor is a duplicate and is dropped; the
//! next offset is delivered; a later one is a gap: the missing offsets are read from the
//! stream and delivered first, in order. A publication of another epoch makes Redis the judge
//! (one read, [`RedisBroker::read_state`]): if its epoch is current, the node is told
//! ([`BrokerEvent::HistoryReset`], offset 0) and the new epoch is delivered from its start;
//! if the cursor's epoch is still current, the publication is a stale one and is dropped.
//! After the subscription reconnects, [`RedisBroker::catch_up_after_reconnect`] does the same
//! for every cursor against what the history holds. Live publications that arrive meanwhile
//! wait in the subscription's stream (an unbounded queue filled by the connection's own task)
//! and are then dropped as duplicates or delivered.
//!
//! When offsets cannot be replayed (the stream was trimmed by its size or TTL, or the read
//! failed), the node is told with a [`BrokerEvent::HistoryReset`] in the *same* epoch whose
//! `offset` is the last offset lost: clients reload their state and continue from there, as
//! after a reset. Nothing is skipped without a notice.
//!
//! Only the subscription task moves an existing cursor (its messages and its catch-up run one
//! after the other); a history read starts a missing one, at the top it read, since the node
//! subscribed before reading.

use super::RedisBroker;
use crate::broker::{BrokerEvent, HistoryItem};
use crate::publication::Publication;
use std::sync::Arc;

/// Where this node's delivery of one history topic stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Cursor {
    pub epoch: String,
    /// The last offset delivered (0: none yet in this epoch).
    pub last: u64,
}

impl RedisBroker {
    /// Starts `topic`'s cursor at (`epoch`, `top`) unless it has one (or is not subscribed).
    pub(super) fn start_cursor(&self, topic: &str, epoch: &str, top: u64) {
        if !self.topics.lock().contains(topic) {
            return;
        }
        self.cursors
            .lock()
            .entry(topic.to_owned())
            .or_insert_with(|| Cursor {
                epoch: epoch.to_owned(),
                last: top,
            });
    }

    /// Moves `topic`'s cursor (kept only while the topic is subscribed).
    fn set_cursor(&self, topic: &str, epoch: &str, last: u64) {
        if !self.topics.lock().contains(topic) {
            return;
        }
        self.cursors.lock().insert(
            topic.to_owned(),
            Cursor {
                epoch: epoch.to_owned(),
                last,
            },
        );
    }

    /// Delivers a history publication from the subscription: once, in order, gaps replayed
    /// first (see the module's doc).
    pub(super) async fn deliver_history(
        &self,
        topic: &str,
        epoch: &str,
        offset: u64,
        publication: Arc<Publication>,
    ) {
        // The common cases under one lock, without copying the cursor.
        let cursor = {
            let mut cursors = self.cursors.lock();
            match cursors.get_mut(topic) {
                Some(c) if c.epoch == epoch && offset <= c.last => return, // a duplicate
                Some(c) if c.epoch == epoch && offset == c.last.saturating_add(1) => {
                    c.last = offset;
                    None
                }
                Some(c) => Some(c.clone()),
                None => {
                    drop(cursors);
                    // First publication since this node subscribed (no history read started
                    // the cursor).
                    self.set_cursor(topic, epoch, offset);
                    None
                }
            }
        };
        let Some(cursor) = cursor else {
            self.hub.deliver(&publication);
            return;
        };
        // A gap, or another epoch: what Redis holds now decides.
        let state = self
            .read_state(topic, Some(cursor.last), Some(&cursor.epoch))
            .await;
        let (current, top, items) = match state {
            Ok(s) => s,
            Err(e) => {
                // Cannot replay: the subscribers are told what they lost, then delivery goes on.
                self.failed("history gap read", &e);
                tracing::warn!(topic, "history gap not replayed: subscribers are told");
                self.reset(topic, epoch, offset.saturating_sub(1)).await;
                self.set_cursor(topic, epoch, offset);
                self.hub.deliver(&publication);
                return;
            }
        };
        let start = if current == cursor.epoch {
            cursor.last
        } else {
            tracing::warn!(topic, "history epoch changed: subscribers are told");
            self.reset(topic, &current, 0).await;
            0
        };
        // The publication belongs to the current epoch: replay up to it, then deliver it.
        // Otherwise it is stale (its epoch was replaced): replay what the current one holds.
        let live = current == epoch;
        let until = if live { offset.saturating_sub(1) } else { top };
        let last = self.replay(topic, &current, start, until, items).await;
        if live {
            self.set_cursor(topic, epoch, offset);
            self.hub.deliver(&publication);
        } else {
            self.set_cursor(topic, &current, last);
        }
    }

    /// After the subscription reconnected: every subscribed history topic continues from where
    /// this node's delivery stood, or, when its epoch changed (Redis lost the data, or another
    /// instance holds it now), the node is told and the new epoch is delivered from its start.
    pub(super) async fn catch_up_after_reconnect(&self) {
        let topics: Vec<String> = self.cursors.lock().keys().cloned().collect();
        for topic in topics {
            self.catch_up(&topic).await;
        }
    }

    /// Catches `topic` up with its history (see [`Self::catch_up_after_reconnect`]); also run
    /// for one topic when a cluster shard confirms a (re-)subscription of its channel. Nothing
    /// to do for a topic without a cursor.
    pub(super) async fn catch_up(&self, topic: &str) {
        let Some(cursor) = self.cursors.lock().get(topic).cloned() else {
            return;
        };
        let (current, top, items) = match self
            .read_state(topic, Some(cursor.last), Some(&cursor.epoch))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                // The next publication finds the gap (or the new epoch) and replays it.
                self.failed("history catch-up", &e);
                return;
            }
        };
        let start = if current == cursor.epoch {
            cursor.last
        } else {
            tracing::warn!(
                topic,
                "history lost or replaced during the Redis outage: clients are told"
            );
            self.reset(topic, &current, 0).await;
            0
        };
        let last = self.replay(topic, &current, start, top, items).await;
        if last > start {
            tracing::info!(topic, from = start + 1, to = last, "history caught up");
        }
        self.set_cursor(topic, &current, last.max(start));
    }

    /// Delivers `items` (entries of `epoch` after `start`) up to offset `until`, in order; a
    /// missing offset (trimmed, expired) is reported as a reset up to the one before the next
    /// entry. Returns the last offset delivered or reported.
    async fn replay(
        &self,
        topic: &str,
        epoch: &str,
        start: u64,
        until: u64,
        items: Vec<HistoryItem>,
    ) -> u64 {
        let mut last = start;
        for item in items
            .into_iter()
            .filter(|i| i.offset > start && i.offset <= until)
        {
            if item.offset > last.saturating_add(1) {
                tracing::warn!(
                    topic,
                    from = last + 1,
                    to = item.offset - 1,
                    "history no longer holds missed offsets: subscribers are told"
                );
                self.reset(topic, epoch, item.offset - 1).await;
            }
            self.hub.deliver(&item.publication);
            last = item.offset;
        }
        if last < until {
            tracing::warn!(
                topic,
                from = last + 1,
                to = until,
                "history no longer holds missed offsets: subscribers are told"
            );
            self.reset(topic, epoch, until).await;
            last = until;
        }
        last
    }

    /// Tells the node that `topic`'s subscribers lost its history up to `offset` of `epoch`.
    async fn reset(&self, topic: &str, epoch: &str, offset: u64) {
        self.report(BrokerEvent::HistoryReset {
            topic: topic.to_owned(),
            epoch: epoch.to_owned(),
            offset,
        })
        .await;
    }
}
