//! A topic's history in Redis: a stream capped by count (`<prefix>:hist:<topic>`), its offset
//! counter (`off`), epoch (`epoch`) and the replication id of the Redis instance that wrote
//! them (`rid`), all expiring after the rule's TTL (or `history_idle`) since the last publish.
//! A publish appends, assigns the offset and fans out in one Lua script
//! ([`super::scripts::PUBLISH_HISTORY`]), so every node delivers it from its subscription in
//! offset order; a read (a script too, [`super::scripts::READ_HISTORY`]) returns the entries
//! after an offset with the epoch, so that a client whose history was lost (Redis restarted
//! empty, TTL, a promoted replica that missed writes) is told instead of silently missing
//! messages.

use super::envelope::parse_sender;
use super::{err, sender_header, RedisBroker};
use crate::broker::{BrokerError, HistoryItem, HistoryPage};
use crate::protocol::{encode_broadcast_parts, Frame};
use crate::publication::{HistoryOpts, Publication};
use crate::ConnId;
use bytes::Bytes;
use redis::AsyncCommands;
use std::sync::Arc;

impl RedisBroker {
    /// Publishes `publication` into its topic's history (see the module's doc).
    pub(super) async fn publish_with_history(
        &self,
        publication: Publication,
        opts: HistoryOpts,
        origin: &str,
        channel: &str,
    ) -> Result<Option<u64>, BrokerError> {
        // History: the script assigns the offset and publishes; every node (this one too)
        // delivers from its subscription, in offset order.
        self.check_up()
            .map_err(|e| err(format!("history unavailable, not published: {e}")))?;
        // The script puts the offset between the two parts of the frame.
        let parts =
            encode_broadcast_parts(&publication.topic, &publication.event, &publication.payload)
                .map_err(err)?;
        let kind = if parts.binary { "b" } else { "t" };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let topic = &publication.topic;
        let sender = sender_header(&publication);
        // What a replay needs to deliver the entry as the live publication was: the excluded
        // connection and the sender fields (most entries have neither, and store nothing).
        let as_sent = if origin.contains('/') || !sender.is_empty() {
            format!("{origin}{sender}")
        } else {
            String::new()
        };
        let mut c = self.conn.clone();
        let started = std::time::Instant::now();
        let result: Result<(u64, String), _> = self
            .publish_history
            .key(self.topic_key("off", topic))
            .key(self.topic_key("hist", topic))
            .key(self.topic_key("epoch", topic))
            .key(self.topic_key("rid", topic))
            .arg(parts.head.as_ref())
            .arg(parts.tail.as_ref())
            .arg(kind)
            .arg(opts.size.max(1))
            .arg(opts.ttl.unwrap_or(self.cfg.history_idle).as_millis().max(1) as u64)
            .arg(channel)
            .arg(origin)
            .arg(new_epoch())
            .arg(now_ms)
            .arg(sender)
            .arg(as_sent)
            .arg(if self.conn.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            })
            .invoke_async(&mut c)
            .await;
        crate::metrics::redis_round_trip("publish_history", started.elapsed());
        match result {
            // This node's delivery follows the epoch from its subscription (see `gaps`).
            Ok((offset, _epoch)) => Ok(Some(offset)),
            Err(e) => {
                self.failed("history publish", &e);
                Err(err(format!("history unavailable, not published: {e}")))
            }
        }
    }

    /// `topic`'s history as Redis holds it now, in one script ([`super::scripts::READ_HISTORY`]):
    /// the epoch (a new one if there was none, or if another Redis instance wrote the history),
    /// the top offset, and the entries after `after` up to the top (none for `None`; from the
    /// start when `expect` names another epoch than the current one).
    pub(super) async fn read_state(
        &self,
        topic: &str,
        after: Option<u64>,
        expect: Option<&str>,
    ) -> redis::RedisResult<(String, u64, Vec<HistoryItem>)> {
        let mut c = self.conn.clone();
        let started = std::time::Instant::now();
        let (epoch, top, reply): (String, u64, redis::streams::StreamRangeReply) = self
            .read_history_script
            .key(self.topic_key("off", topic))
            .key(self.topic_key("hist", topic))
            .key(self.topic_key("epoch", topic))
            .key(self.topic_key("rid", topic))
            .arg(new_epoch())
            .arg(self.cfg.history_idle.as_millis().max(1) as u64)
            .arg(after.map(|a| a.to_string()).unwrap_or_default())
            .arg(expect.unwrap_or_default())
            .invoke_async(&mut c)
            .await?;
        crate::metrics::redis_round_trip("read_history", started.elapsed());
        Ok((epoch, top, self.decode_entries(topic, reply)))
    }

    /// The entries of `topic` after `since`, with the epoch.
    pub(super) async fn read_history(
        &self,
        topic: &str,
        since: Option<u64>,
    ) -> Result<HistoryPage, BrokerError> {
        self.check_up()?;
        // Up to `top` only, read in the same step: a publish landing after it is not in the
        // page; it reaches the reader live (held aside during a recovering join), so a replay
        // that also carried it would deliver it twice.
        let (epoch, top, items) = self.read_state(topic, since, None).await.map_err(|e| {
            self.failed("history read", &e);
            err(e)
        })?;
        // This node subscribed before reading (a join does): what comes after `top` reaches it
        // live, so its delivery of the topic starts there if it had not started yet.
        self.start_cursor(topic, &epoch, top);
        let Some(since) = since else {
            return Ok(HistoryPage {
                epoch,
                top,
                complete: true,
                items: Vec::new(),
            });
        };
        let first = items.first().map_or(top.saturating_add(1), |i| i.offset);
        let complete = since >= top || since.saturating_add(1) >= first;
        Ok(HistoryPage {
            epoch,
            top,
            complete,
            items,
        })
    }

    /// The last retained entry of `topic`, read without creating anything (no epoch is
    /// settled: a name nobody published on leaves no key behind).
    pub(super) async fn read_last(&self, topic: &str) -> Result<Option<HistoryItem>, BrokerError> {
        self.check_up()?;
        let mut c = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = c
            .xrevrange_count(self.topic_key("hist", topic), "+", "-", 1)
            .await
            .map_err(|e| {
                self.failed("history read", &e);
                err(e)
            })?;
        Ok(self.decode_entries(topic, reply).pop())
    }

    /// Stream entries as publications (stored once, as the frame: event and payload are
    /// decoded for the reader).
    fn decode_entries(
        &self,
        topic: &str,
        reply: redis::streams::StreamRangeReply,
    ) -> Vec<HistoryItem> {
        let mut items = Vec::new();
        for entry in reply.ids {
            let offset: u64 = entry
                .id
                .split('-')
                .next()
                .and_then(|o| o.parse().ok())
                .unwrap_or(0);
            let get = |k: &str| -> Vec<u8> { entry.get::<Vec<u8>>(k).unwrap_or_default() };
            let frame_bytes = Bytes::from(get("f"));
            let frame = if get("k") == b"b" {
                Frame::Binary(frame_bytes)
            } else {
                Frame::Text(frame_bytes)
            };
            // As sent: `<origin>[ <sender fields>]` (see `PUBLISH_HISTORY`); the excluded
            // connection is this node's only if the origin is.
            let header = String::from_utf8(get("h")).unwrap_or_default();
            let mut fields = header.split(' ').filter(|f| !f.is_empty());
            let exclude = fields.next().and_then(|origin| {
                let (node, conn) = origin.split_once('/')?;
                (node == self.node_id).then(|| conn.parse::<ConnId>().ok())?
            });
            match Publication::from_frame(topic, frame, Some(offset), exclude) {
                Ok(p) => items.push(HistoryItem {
                    offset,
                    publication: Arc::new(p.with_sender(parse_sender(fields))),
                }),
                Err(e) => self.failed("decoding a history entry", &e),
            }
        }
        items
    }
}

/// A fresh random epoch, used when a topic's history starts (again).
fn new_epoch() -> String {
    use rand::Rng;
    format!("{:08x}", rand::rng().random::<u32>())
}
