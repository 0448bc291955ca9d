//! Webhooks: what the application hears — connects, disconnects (close code, reason,
//! duration), joins, leaves, channels occupied and vacated, presence joins and leaves,
//! anonymous connections' sign-ins, and opted-in client events — as batched, signed `POST {"events": [...]}` requests.
//!
//! Events are queued per node in a bounded queue (`webhooks.queue_max` events and
//! `webhooks.queue_max_bytes`; overflow is counted and logged, never unbounded memory), of
//! which one user may hold at most a tenth ([`SHARE_DIVISOR`]): past it that user's new events
//! are dropped (counted) while other users' still enter. An event is charged to the [`Cause`]
//! its emitter names — the connection whose connect, join, leave or push it reports, including
//! the `channel_occupied` / `channel_vacated` its join or leave caused — under its share key
//! ([`Identity::share_key`]: the user, or the client address of an anonymous connection);
//! this key is internal, the application does not see it. An event with no cause (one a node
//! reports for a lost node) is charged to its `sub`, if any. An event larger than
//! `webhooks.max_event_bytes` has its client-supplied part (`payload`, `meta`) replaced by a
//! marker (`payload_truncated: true, payload_bytes: N`), or is dropped if still too large.
//! One sender task sends the events in batches (at most `webhooks.batch_max` events and
//! `webhooks.max_batch_bytes`), in the order they were emitted, one batch at a time. A batch
//! the application refuses (a 4xx other than 408 and 429) is split in halves, each sent on
//! its own, so that only the event(s) it refuses alone are dropped (counted, logged), never
//! retried; a batch that fails otherwise (transport error, timeout, 408, 429, 5xx) is split
//! the same way and retried with exponential backoff for up to `webhooks.retry_secs` from its
//! first attempt (each event's window starts at its own first attempt) before what is left of
//! it is dropped (counted, logged), so events keep their
//! order per connection (and per node) and nothing is lost while the application is down for
//! less than the retry window. Between the attempts of a single event that fails so, the
//! events after it are sent: if the application takes them it is not down, and the event it
//! fails on is dropped after [`sender::FAILING_STRIKES`] such rounds (counted, logged) instead of
//! holding up the node's other events (those it took arrived before it). Every event has
//! `type`, `at` (Unix ms), a unique `id` and `node`.
//!
//! With a reconnect grace (`webhooks.disconnect_grace_ms`), a user's `disconnect` and what
//! its teardown causes are held, and a reconnect within the grace sends `reconnect` instead
//! of the pair ([`grace`]).
//!
//! A node may have a second sink in Pusher's format ([`Format::Pusher`], see
//! [`crate::pusher::webhooks`]): another [`Webhooks`] with its own queue of the same bounds,
//! fed the Pusher channels' events; only the envelope, the events' fields and the signature
//! differ.

use crate::auth::Identity;
use crate::hooks::{sign, unix_ms, HookTransport};
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub mod grace;
mod sender;
use sender::Sender;

/// The kinds of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Connect = 0,
    Disconnect = 1,
    Join = 2,
    Leave = 3,
    ChannelOccupied = 4,
    ChannelVacated = 5,
    PresenceJoin = 6,
    PresenceLeave = 7,
    ClientEvent = 8,
    /// An anonymous connection signed in as a user (its later events carry the user's `sub`).
    Signin = 9,
    /// A subscriber of a Pusher cache channel found no last event (`pusher:cache_miss`).
    CacheMiss = 10,
    /// A user connected again within the reconnect grace (`webhooks.disconnect_grace_ms`):
    /// sent instead of the held `disconnect` and the new `connect` ([`grace`]).
    Reconnect = 11,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::Connect,
        EventKind::Disconnect,
        EventKind::Join,
        EventKind::Leave,
        EventKind::ChannelOccupied,
        EventKind::ChannelVacated,
        EventKind::PresenceJoin,
        EventKind::PresenceLeave,
        EventKind::ClientEvent,
        EventKind::Signin,
        EventKind::CacheMiss,
        EventKind::Reconnect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::ChannelOccupied => "channel_occupied",
            EventKind::ChannelVacated => "channel_vacated",
            EventKind::PresenceJoin => "presence_join",
            EventKind::PresenceLeave => "presence_leave",
            EventKind::ClientEvent => "client_event",
            EventKind::Signin => "signin",
            EventKind::CacheMiss => "cache_miss",
            EventKind::Reconnect => "reconnect",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A set of event kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventSet(u16);

impl EventSet {
    /// connect, disconnect, join, leave, channel_occupied, channel_vacated, signin.
    pub const DEFAULT: EventSet = EventSet(0b10_0011_1111);

    pub fn of(kinds: &[EventKind]) -> Self {
        EventSet(kinds.iter().fold(0, |acc, k| acc | 1 << *k as u16))
    }

    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & (1 << kind as u16) != 0
    }
}

/// How a sink's requests look. Both formats share the queue, its bounds and shares, the
/// batching, the splits and the retries: only the body's envelope, the events' fields and the
/// signature differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// Plexus's: `{"events": [...]}`, each event with `type`, `at`, `id` and `node` added here,
    /// signed with the hook secret ([`sign`]).
    Plexus,
    /// Pusher's (docs/pusher.md): `{"time_ms": <unix ms>, "events": [...]}`, each event as its
    /// emitter built it (`name`, `channel`, …), with `X-Pusher-Key: <key>` and
    /// `X-Pusher-Signature: hex(HMAC-SHA256(app secret, body))`. An event larger than
    /// `max_event_bytes` is dropped (Pusher's receivers know no truncation marker).
    Pusher { key: String },
}

impl Format {
    /// The most bytes of a request body that are not events: `{"events":[` and `]}` (plus
    /// `"time_ms":<13 digits>,` for Pusher's).
    fn overhead(&self) -> usize {
        match self {
            Format::Plexus => BATCH_OVERHEAD,
            Format::Pusher { .. } => BATCH_OVERHEAD + 30,
        }
    }
}

/// Webhook settings.
#[derive(Clone, Debug)]
pub struct WebhooksConfig {
    pub url: String,
    /// The requests' format ([`Format::Plexus`] unless set).
    pub format: Format,
    pub events: EventSet,
    pub queue_max: usize,
    pub queue_max_bytes: usize,
    /// Most events in one request.
    pub batch_max: usize,
    /// How long the sender waits for more events before sending a batch that is not full.
    pub batch_wait: Duration,
    /// How long one request may take.
    pub timeout: Duration,
    /// How long a failing batch is retried before it is dropped.
    pub retry_for: Duration,
    /// The longest pause between two attempts (pauses double from 100 ms up to it).
    pub backoff_max: Duration,
    /// The largest encoded event: past it the event's `payload` / `meta` is replaced by a
    /// marker, and an event still larger is dropped.
    pub max_event_bytes: usize,
    /// The largest request body: a batch is cut before the event that would pass it (a batch
    /// always holds at least one event).
    pub max_batch_bytes: usize,
    /// The reconnect grace (`webhooks.disconnect_grace_ms`, [`grace`]): zero, none.
    pub disconnect_grace: Duration,
    /// The most events a node holds for the grace at once (`webhooks.disconnect_grace_max`).
    pub disconnect_grace_max: usize,
}

/// The connection that caused an event: the event counts against its share of the queue.
#[derive(Clone, Copy, Debug)]
pub struct Cause<'a> {
    pub identity: &'a Identity,
    /// The client's address (it keys anonymous connections).
    pub addr: Option<std::net::IpAddr>,
}

impl Cause<'_> {
    /// The share key the event is charged to.
    pub fn key(&self) -> Arc<str> {
        self.identity.share_key(self.addr)
    }
}

/// One user (a share key) may hold at most `1 / SHARE_DIVISOR` of the queue's events and bytes
/// (but may always queue one event when it has none queued).
pub const SHARE_DIVISOR: usize = 10;

/// `{"events":[` and `]}`.
const BATCH_OVERHEAD: usize = 13;

impl WebhooksConfig {
    /// The defaults (documented in docs/hooks.md) for `url`.
    pub fn new(url: String) -> Self {
        WebhooksConfig {
            url,
            format: Format::Plexus,
            events: EventSet::DEFAULT,
            queue_max: 10_000,
            queue_max_bytes: 16 * 1024 * 1024,
            batch_max: 100,
            batch_wait: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(120),
            backoff_max: Duration::from_secs(5),
            max_event_bytes: 64 * 1024,
            max_batch_bytes: 1024 * 1024,
            disconnect_grace: Duration::ZERO,
            disconnect_grace_max: grace::DEFAULT_MAX_HELD,
        }
    }
}

/// Webhook figures (the `/metrics` counters).
#[derive(Default)]
pub struct WebhookCounters {
    pub emitted: AtomicU64,
    pub delivered: AtomicU64,
    /// Events refused because the queue was full.
    pub dropped_overflow: AtomicU64,
    /// Events dropped after their batch failed for the whole retry window.
    pub dropped_expired: AtomicU64,
    /// Events the application refused on their own (a 4xx other than 408/429): dropped, not
    /// retried.
    pub dropped_rejected: AtomicU64,
    /// Events refused because their user already held its share of the queue.
    pub dropped_share: AtomicU64,
    /// Events dropped because the application kept failing on them (5xx, timeout) while it
    /// took the events after them ([`sender::FAILING_STRIKES`] times).
    pub dropped_failing: AtomicU64,
    /// Events dropped because they were larger than `max_event_bytes` even without their
    /// payload.
    pub dropped_oversize: AtomicU64,
    /// Events sent with their `payload` / `meta` replaced by a marker (`max_event_bytes`).
    pub truncated: AtomicU64,
    pub batches: AtomicU64,
    /// Attempts that failed (each retried until the window ends).
    pub failed_attempts: AtomicU64,
    /// Events waiting (queued or in the batch being sent).
    pub pending: AtomicU64,
}

/// The webhook sender of a node.
pub struct Webhooks {
    config: WebhooksConfig,
    tx: mpsc::Sender<Queued>,
    ledger: Arc<Ledger>,
    node_id: Arc<str>,
    seq: AtomicU64,
    pub counters: Arc<WebhookCounters>,
}

impl Webhooks {
    /// Starts the sender task (on the current Tokio runtime).
    pub fn start(
        config: WebhooksConfig,
        secret: String,
        transport: Arc<dyn HookTransport>,
        node_id: Arc<str>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(config.queue_max.max(1));
        let ledger = Arc::new(Ledger::default());
        let counters = Arc::new(WebhookCounters::default());
        let sender = Sender {
            config: config.clone(),
            secret,
            transport,
            ledger: ledger.clone(),
            counters: counters.clone(),
        };
        tokio::spawn(sender.run(rx));
        Arc::new(Webhooks {
            config,
            tx,
            ledger,
            node_id,
            seq: AtomicU64::new(0),
            counters,
        })
    }

    pub fn config(&self) -> &WebhooksConfig {
        &self.config
    }

    pub fn enabled(&self, kind: EventKind) -> bool {
        self.config.events.contains(kind)
    }

    /// Queues an event of `kind` (if enabled) with `fields` (an object: `sub`, `conn`,
    /// `topic`, …), charged to its `sub`; `type`, `at`, `id` and `node` are added here.
    pub fn emit(&self, kind: EventKind, fields: Value) {
        self.emit_as(kind, None, fields);
    }

    /// [`Webhooks::emit`], the event charged to the share key `share` (else to its `sub`).
    pub fn emit_as(&self, kind: EventKind, share: Option<Arc<str>>, fields: Value) {
        if !self.enabled(kind) {
            return;
        }
        let mut event = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        if self.config.format == Format::Plexus {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            event.insert("type".into(), kind.name().into());
            event.insert("at".into(), unix_ms().into());
            event.insert("id".into(), format!("{}-{seq}", self.node_id).into());
            event.insert("node".into(), (*self.node_id).into());
        }
        let sub: Option<Arc<str>> = share.or_else(|| {
            event
                .get("sub")
                .and_then(Value::as_str)
                .map(|s| format!("u:{s}").into())
        });
        let Ok(mut text) = serde_json::to_string(&event) else {
            return; // a map of JSON values always encodes
        };
        if text.len() > self.config.max_event_bytes {
            let size = text.len();
            let shrunk = match self.config.format {
                Format::Plexus => shrink(&mut event, self.config.max_event_bytes),
                Format::Pusher { .. } => None,
            };
            match shrunk {
                Some(smaller) => {
                    text = smaller;
                    let n = self.counters.truncated.fetch_add(1, Ordering::Relaxed);
                    if n < 10 || n.is_multiple_of(1000) {
                        tracing::warn!(event = kind.name(), bytes = size, share = sub.as_deref(), truncated = n + 1, "webhook event larger than webhooks.max_event_bytes: sent without its payload");
                    }
                }
                None => {
                    let n = self
                        .counters
                        .dropped_oversize
                        .fetch_add(1, Ordering::Relaxed);
                    if n < 10 || n.is_multiple_of(1000) {
                        tracing::warn!(event = kind.name(), bytes = size, share = sub.as_deref(), dropped = n + 1, "webhook event larger than webhooks.max_event_bytes even without its payload: dropped");
                    }
                    return;
                }
            }
        }
        let queued = Queued { text, kind, sub };
        if let Err((queued, why)) = self.enqueue(queued) {
            let counter = match why {
                Refused::Full => &self.counters.dropped_overflow,
                Refused::Share => &self.counters.dropped_share,
            };
            let n = counter.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                match why {
                    Refused::Full => tracing::warn!(
                        event = kind.name(),
                        dropped = n + 1,
                        "webhook queue full (webhooks.queue_max / queue_max_bytes): event dropped"
                    ),
                    Refused::Share => tracing::warn!(
                        event = kind.name(),
                        share = queued.sub.as_deref(),
                        dropped = n + 1,
                        "webhook events of one user past its share of the queue (a tenth of webhooks.queue_max / queue_max_bytes): event dropped"
                    ),
                }
            }
            return;
        }
        self.counters.emitted.fetch_add(1, Ordering::Relaxed);
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// Puts `e` in the queue if the node's bounds and its user's share allow it.
    fn enqueue(&self, e: Queued) -> Result<(), (Queued, Refused)> {
        let len = e.text.len();
        let max_events = self.config.queue_max.max(1);
        let max_bytes = self.config.queue_max_bytes;
        let mut subs = self.ledger.subs.lock();
        if let Some(sub) = &e.sub {
            if let Some(share) = subs.get(sub) {
                if share.events >= (max_events / SHARE_DIVISOR).max(1)
                    || share.bytes + len > max_bytes / SHARE_DIVISOR
                {
                    return Err((e, Refused::Share));
                }
            }
        }
        if self.ledger.bytes.load(Ordering::Acquire) + len > max_bytes {
            return Err((e, Refused::Full));
        }
        let sub = e.sub.clone();
        match self.tx.try_send(e) {
            Ok(()) => {
                self.ledger.bytes.fetch_add(len, Ordering::AcqRel);
                if let Some(sub) = sub {
                    let share = subs.entry(sub).or_default();
                    share.events += 1;
                    share.bytes += len;
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e)) => {
                Err((e, Refused::Full))
            }
        }
    }

    /// Waits until every queued event was sent (or dropped), at most `within` (a draining
    /// node flushes its last disconnects before it exits).
    pub async fn flush(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.counters.pending.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One queued event: its JSON text, its kind and the share key it counts against (`sub`:
/// `u:<sub>` or `a:<address>`, see [`Identity::share_key`]; logged as `share`).
struct Queued {
    text: String,
    kind: EventKind,
    sub: Option<Arc<str>>,
}

/// Why an event did not enter the queue.
enum Refused {
    Full,
    Share,
}

/// What is queued (or in the batch being sent): bytes in all, events and bytes per user.
#[derive(Default)]
struct Ledger {
    bytes: AtomicUsize,
    subs: Mutex<HashMap<Arc<str>, Share>>,
}

#[derive(Default)]
struct Share {
    events: usize,
    bytes: usize,
}

impl Ledger {
    /// `e` left the queue (delivered or dropped).
    fn release(&self, e: &Queued) {
        let mut subs = self.subs.lock();
        self.bytes.fetch_sub(e.text.len(), Ordering::AcqRel);
        if let Some(sub) = &e.sub {
            if let Some(share) = subs.get_mut(sub) {
                share.events = share.events.saturating_sub(1);
                share.bytes = share.bytes.saturating_sub(e.text.len());
                if share.events == 0 {
                    subs.remove(sub);
                }
            }
        }
    }
}

/// `event` (encoded larger than `max`) without its client-supplied part — `payload` (client
/// events), then `meta` (presence) — each replaced by `<field>_truncated: true` and
/// `<field>_bytes` (its encoded size); `None` if it is still larger than `max`.
fn shrink(event: &mut Map<String, Value>, max: usize) -> Option<String> {
    for field in ["payload", "meta"] {
        let Some(v) = event.remove(field) else {
            continue;
        };
        let bytes = v.to_string().len();
        event.insert(format!("{field}_truncated"), true.into());
        event.insert(format!("{field}_bytes"), bytes.into());
        let text = serde_json::to_string(event).ok()?;
        if text.len() <= max {
            return Some(text);
        }
    }
    None
}

/// What the sender takes from the queue, and the event that did not fit in the last batch.
struct Inbox {
    rx: mpsc::Receiver<Queued>,
    carried: Option<Queued>,
}

impl Inbox {
    /// Appends the next events to `batch`, at most `batch_max` and `max_batch_bytes` of
    /// request body; `wait`: for the first, then for more until `batch_wait` ends (else only
    /// those queued already). Returns how many (0: none, or the queue closed).
    async fn fill(
        &mut self,
        batch: &mut Vec<Queued>,
        config: &WebhooksConfig,
        wait: bool,
    ) -> usize {
        let first = match self.carried.take() {
            Some(e) => e,
            None if wait => match self.rx.recv().await {
                Some(e) => e,
                None => return 0,
            },
            None => match self.rx.try_recv() {
                Ok(e) => e,
                Err(_) => return 0,
            },
        };
        let mut size = config.format.overhead() + first.text.len();
        batch.push(first);
        let mut added = 1;
        let deadline = tokio::time::Instant::now() + config.batch_wait;
        while added < config.batch_max.max(1) {
            let next = if wait {
                tokio::time::timeout_at(deadline, self.rx.recv())
                    .await
                    .ok()
                    .flatten()
            } else {
                self.rx.try_recv().ok()
            };
            let Some(e) = next else {
                break;
            };
            if size + 1 + e.text.len() > config.max_batch_bytes {
                self.carried = Some(e);
                break;
            }
            size += 1 + e.text.len();
            batch.push(e);
            added += 1;
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_sets_and_names() {
        let d = EventSet::DEFAULT;
        for k in [
            EventKind::Connect,
            EventKind::Disconnect,
            EventKind::Join,
            EventKind::Leave,
            EventKind::ChannelOccupied,
            EventKind::ChannelVacated,
            EventKind::Signin,
        ] {
            assert!(d.contains(k), "{k:?}");
        }
        assert!(!d.contains(EventKind::PresenceJoin));
        assert!(!d.contains(EventKind::ClientEvent));
        assert!(!d.contains(EventKind::CacheMiss));
        assert!(!d.contains(EventKind::Reconnect));
        assert!(EventSet::of(&[EventKind::ClientEvent]).contains(EventKind::ClientEvent));
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.name()), Some(k));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }
}
