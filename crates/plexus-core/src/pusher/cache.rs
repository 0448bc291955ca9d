//! Pusher's cache channels: `cache-`, `private-cache-`, `private-encrypted-cache-` and
//! `presence-cache-` (authorised as the kind after `cache`'s removal would be: private ones
//! need the private signature, presence ones the presence signature).
//!
//! A cache channel is a topic with a history of one ([`history_opts`]: its last event, kept
//! [`CACHE_TTL`], as Pusher keeps it), in the broker's history — the memory broker's, bounded
//! by `limits.history`, or Redis's, shared by every node — unless a channel rule gives the
//! topic a history of its own. Right after `pusher_internal:subscription_succeeded` a
//! subscriber gets that last event as a normal event frame, else
//! `{"event": "pusher:cache_miss", "channel": …}` (pusher-js emits it on the channel) and the
//! `cache_miss` webhook.
//!
//! Broadcasts that arrive between the subscription and the history read are held aside
//! ([`crate::outbox::Outbox::hold`]) and released after the cached event, minus the one the
//! cache already carried: the subscriber gets the last event once, then what came after.

use crate::publication::HistoryOpts;
use crate::socket::Socket;
use crate::webhooks::EventKind;
use std::time::Duration;

/// The prefixes of cache channels.
pub const PREFIXES: [&str; 4] = [
    "cache-",
    "private-cache-",
    "private-encrypted-cache-",
    "presence-cache-",
];

/// How long a cache channel keeps its last event (Pusher's: 30 minutes).
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// Whether `channel` is a cache channel.
pub fn is_cache_channel(channel: &str) -> bool {
    PREFIXES.iter().any(|p| channel.starts_with(p))
}

/// The history of a cache channel that no rule gives one: its last event, for [`CACHE_TTL`].
pub fn history_opts() -> HistoryOpts {
    HistoryOpts {
        size: 1,
        ttl: Some(CACHE_TTL),
    }
}

/// Before a subscription to `channel`: on a cache channel, holds broadcasts aside until
/// [`after_subscribe`] (which must follow, whatever the join's outcome).
pub fn before_subscribe(socket: &Socket, channel: &str) {
    if is_cache_channel(channel) {
        socket.outbox().hold();
    }
}

/// After the subscription to `channel` ended (`joined`: it succeeded, and its
/// `subscription_succeeded` is queued): on a cache channel, queues its last event or
/// `pusher:cache_miss` (and the `cache_miss` webhook), then releases what was held.
pub async fn after_subscribe(socket: &Socket, channel: &str, joined: bool) {
    if !is_cache_channel(channel) {
        return;
    }
    if !joined {
        socket.outbox().release(channel, 0);
        return;
    }
    let node = socket.node();
    // The last retained publication (read without creating anything for the name).
    let last = match node.broker().last(channel).await {
        Ok(item) => item,
        Err(e) => {
            tracing::warn!(conn = socket.id(), channel, error = %e, "cache channel: history unavailable, answered cache_miss");
            None
        }
    };
    let mut replayed_up_to = 0;
    let frame = last.and_then(|item| {
        replayed_up_to = item.offset;
        item.publication.pusher_frame().ok()
    });
    match frame {
        Some(frame) => {
            socket
                .outbox()
                .push(crate::outbox::Outgoing::Raw(Box::new(frame)));
        }
        None => {
            socket.outbox().push(crate::outbox::Outgoing::Raw(Box::new(
                crate::protocol::Frame::Text(bytes::Bytes::from(
                    crate::protocol::pusher::cache_miss(channel),
                )),
            )));
            node.pusher_webhook(
                EventKind::CacheMiss,
                channel,
                Some(socket.webhook_cause()),
                |_| {},
            );
            node.webhook_by(EventKind::CacheMiss, socket.webhook_cause(), || {
                serde_json::json!({
                    "sub": &*socket.identity().sub,
                    "conn": node.public_conn_id(socket.id()),
                    "topic": channel,
                })
            });
        }
    }
    socket.outbox().release(channel, replayed_up_to);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_prefixes() {
        for c in [
            "cache-a",
            "private-cache-a",
            "private-encrypted-cache-a",
            "presence-cache-a",
        ] {
            assert!(is_cache_channel(c), "{c}");
        }
        for c in [
            "a",
            "private-a",
            "presence-a",
            "xcache-a",
            "private-encrypted-a",
        ] {
            assert!(!is_cache_channel(c), "{c}");
        }
    }
}
