//! A topic's history in Redis: a stream capped by count (`<prefix>:hist:<topic>`), its offset
//! counter (`off`) and epoch (`epoch`), all expiring after the rule's TTL (or
//! `history_idle`) since the last publish. A publish appends, assigns the offset and fans out
//! in one Lua script ([`super::scripts::PUBLISH_HISTORY`]), so every node delivers it from its
//! subscription in offset order; a read returns the entries after an offset with the epoch, so
//! that a client whose history was lost (Redis restarted empty, TTL) is told instead of
//! silently missing messages.

use super::{err, sender_header, RedisBroker};
use crate::broker::{BrokerError, HistoryItem, HistoryPage};
use crate::protocol::{encode_broadcast_parts, Frame};
use crate::publication::{HistoryOpts, Publication};
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
        let epoch = {
            use rand::Rng;
            format!("{:08x}", rand::rng().random::<u32>())
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let topic = &publication.topic;
        let mut c = self.conn.clone();
        let started = std::time::Instant::now();
        let result: Result<(u64, String), _> = self
            .publish_history
            .key(self.topic_key("off", topic))
            .key(self.topic_key("hist", topic))
            .key(self.topic_key("epoch", topic))
            .arg(parts.head.as_ref())
            .arg(parts.tail.as_ref())
            .arg(kind)
            .arg(opts.size.max(1))
            .arg(opts.ttl.unwrap_or(self.cfg.history_idle).as_millis().max(1) as u64)
            .arg(channel)
            .arg(origin)
            .arg(epoch)
            .arg(now_ms)
            .arg(sender_header(&publication))
            .arg(if self.conn.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            })
            .invoke_async(&mut c)
            .await;
        crate::metrics::redis_round_trip("publish_history", started.elapsed());
        match result {
            Ok((offset, epoch)) => {
                self.remember_epoch(topic, epoch);
                Ok(Some(offset))
            }
            Err(e) => {
                self.failed("history publish", &e);
                Err(err(format!("history unavailable, not published: {e}")))
            }
        }
    }

    /// The entries of `topic` after `since`, with the epoch.
    pub(super) async fn read_history(
        &self,
        topic: &str,
        since: Option<u64>,
    ) -> Result<HistoryPage, BrokerError> {
        self.check_up()?;
        let mut c = self.conn.clone();
        let (top, epoch): (Option<u64>, Option<String>) = redis::pipe()
            .get(self.topic_key("off", topic))
            .get(self.topic_key("epoch", topic))
            .query_async(&mut c)
            .await
            .map_err(|e| {
                self.failed("history read", &e);
                err(e)
            })?;
        let top = top.unwrap_or(0);
        let epoch = match epoch {
            Some(e) => e,
            // No history yet (or it expired / Redis lost it): settle an epoch now, so that
            // offsets handed out from here on are tied to it.
            None => self.settle_epoch(&mut c, topic).await.map_err(err)?,
        };
        self.remember_epoch(topic, epoch.clone());
        let Some(since) = since else {
            return Ok(HistoryPage {
                epoch,
                top,
                complete: true,
                items: Vec::new(),
            });
        };
        if since >= top {
            // Nothing after `since` (also guards the range below against overflow).
            return Ok(HistoryPage {
                epoch,
                top,
                complete: true,
                items: Vec::new(),
            });
        }
        // Up to `top` only: a publish landing between the GET above and this read is not in
        // the page; it reaches the reader live (held aside during a recovering join), so a
        // replay that also carried it would deliver it twice.
        let reply: redis::streams::StreamRangeReply = c
            .xrange(
                self.topic_key("hist", topic),
                format!("{}-0", since + 1),
                format!("{top}-0"),
            )
            .await
            .map_err(|e| {
                self.failed("history read", &e);
                err(e)
            })?;
        let items = self.decode_entries(topic, reply);
        let first = items.first().map_or(top + 1, |i| i.offset);
        let complete = since.saturating_add(1) >= first;
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
            match Publication::from_frame(topic, frame, Some(offset), None) {
                Ok(p) => items.push(HistoryItem {
                    offset,
                    publication: Arc::new(p),
                }),
                Err(e) => self.failed("decoding a history entry", &e),
            }
        }
        items
    }
}
