//! Webhooks: what the application hears — connects, disconnects (close code, reason,
//! duration), joins, leaves, channels occupied and vacated, presence joins and leaves, and
//! opted-in client events — as batched, signed `POST {"events": [...]}` requests.
//!
//! Events are queued per node in a bounded queue (`webhooks.queue_max` events and
//! `webhooks.queue_max_bytes`; overflow is counted and logged, never unbounded memory). One
//! sender task sends them in batches, in the order they were emitted, one batch at a time; a
//! batch that fails (transport error, non-2xx) is retried with exponential backoff for up to
//! `webhooks.retry_secs` before it is dropped (counted, logged), so events keep their order
//! per connection (and per node) and nothing is lost while the application is down for less
//! than the retry window. Every event has `type`, `at` (Unix ms), a unique `id` and `node`.

use crate::hooks::{sign, unix_ms, HookTransport};
use bytes::Bytes;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Connect,
        EventKind::Disconnect,
        EventKind::Join,
        EventKind::Leave,
        EventKind::ChannelOccupied,
        EventKind::ChannelVacated,
        EventKind::PresenceJoin,
        EventKind::PresenceLeave,
        EventKind::ClientEvent,
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
    /// connect, disconnect, join, leave, channel_occupied, channel_vacated.
    pub const DEFAULT: EventSet = EventSet(0b11_1111);

    pub fn of(kinds: &[EventKind]) -> Self {
        EventSet(kinds.iter().fold(0, |acc, k| acc | 1 << *k as u16))
    }

    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & (1 << kind as u16) != 0
    }
}

/// Webhook settings.
#[derive(Clone, Debug)]
pub struct WebhooksConfig {
    pub url: String,
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
}

impl WebhooksConfig {
    /// The defaults (documented in docs/hooks.md) for `url`.
    pub fn new(url: String) -> Self {
        WebhooksConfig {
            url,
            events: EventSet::DEFAULT,
            queue_max: 10_000,
            queue_max_bytes: 16 * 1024 * 1024,
            batch_max: 100,
            batch_wait: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(120),
            backoff_max: Duration::from_secs(5),
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
    pub batches: AtomicU64,
    /// Attempts that failed (each retried until the window ends).
    pub failed_attempts: AtomicU64,
    /// Events waiting (queued or in the batch being sent).
    pub pending: AtomicU64,
}

/// The webhook sender of a node.
pub struct Webhooks {
    config: WebhooksConfig,
    tx: mpsc::Sender<String>,
    queued_bytes: Arc<AtomicUsize>,
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
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(WebhookCounters::default());
        let sender = Sender {
            config: config.clone(),
            secret,
            transport,
            queued_bytes: queued_bytes.clone(),
            counters: counters.clone(),
        };
        tokio::spawn(sender.run(rx));
        Arc::new(Webhooks {
            config,
            tx,
            queued_bytes,
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
    /// `topic`, …); `type`, `at`, `id` and `node` are added here.
    pub fn emit(&self, kind: EventKind, fields: Value) {
        if !self.enabled(kind) {
            return;
        }
        let mut event = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        event.insert("type".into(), kind.name().into());
        event.insert("at".into(), unix_ms().into());
        event.insert("id".into(), format!("{}-{seq}", self.node_id).into());
        event.insert("node".into(), (*self.node_id).into());
        let text = Value::Object(event).to_string();
        let len = text.len();
        let bytes = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        let refused = if bytes + len > self.config.queue_max_bytes {
            true
        } else {
            self.tx.try_send(text).is_err()
        };
        if refused {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            let n = self
                .counters
                .dropped_overflow
                .fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(
                    event = kind.name(),
                    dropped = n + 1,
                    "webhook queue full (webhooks.queue_max / queue_max_bytes): event dropped"
                );
            }
            return;
        }
        self.counters.emitted.fetch_add(1, Ordering::Relaxed);
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
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

/// The task that sends batches.
struct Sender {
    config: WebhooksConfig,
    secret: String,
    transport: Arc<dyn HookTransport>,
    queued_bytes: Arc<AtomicUsize>,
    counters: Arc<WebhookCounters>,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<String>) {
        let mut batch: Vec<String> = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.config.batch_wait;
            while batch.len() < self.config.batch_max.max(1) {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(e)) => batch.push(e),
                    Ok(None) | Err(_) => break,
                }
            }
            self.deliver(&batch).await;
            let bytes: usize = batch.iter().map(String::len).sum();
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.counters
                .pending
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
        }
    }

    /// Sends one batch, retrying until it is accepted or the retry window ends.
    async fn deliver(&self, batch: &[String]) {
        let mut body = String::with_capacity(batch.iter().map(|e| e.len() + 1).sum::<usize>() + 12);
        body.push_str("{\"events\":[");
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(e);
        }
        body.push_str("]}");
        let body = Bytes::from(body);
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut headers = sign::headers(self.secret.as_bytes(), &body);
            headers.push(("x-plexus-hook", "webhook".to_owned()));
            let sent = tokio::time::timeout(
                self.config.timeout,
                self.transport.post(
                    &self.config.url,
                    &headers,
                    body.clone(),
                    self.config.timeout,
                ),
            )
            .await;
            let failure = match sent {
                Ok(Ok(a)) if (200..300).contains(&a.status) => None,
                Ok(Ok(a)) => Some(format!("HTTP status {}", a.status)),
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no answer within {:?}", self.config.timeout)),
            };
            let Some(why) = failure else {
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .delivered
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if attempt > 1 {
                    tracing::info!(
                        events = batch.len(),
                        attempts = attempt,
                        "webhook batch delivered after retries"
                    );
                }
                return;
            };
            self.counters
                .failed_attempts
                .fetch_add(1, Ordering::Relaxed);
            if started.elapsed() + pause > self.config.retry_for {
                self.counters
                    .dropped_expired
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::warn!(events = batch.len(), attempts = attempt, reason = %why, "webhook batch dropped: still failing after webhooks.retry_secs");
                return;
            }
            if attempt == 1 || attempt.is_multiple_of(10) {
                tracing::warn!(events = batch.len(), attempt, reason = %why, retry_in = ?pause, "webhook delivery failed, retrying");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.config.backoff_max);
        }
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
        ] {
            assert!(d.contains(k), "{k:?}");
        }
        assert!(!d.contains(EventKind::PresenceJoin));
        assert!(!d.contains(EventKind::ClientEvent));
        assert!(EventSet::of(&[EventKind::ClientEvent]).contains(EventKind::ClientEvent));
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.name()), Some(k));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }
}
