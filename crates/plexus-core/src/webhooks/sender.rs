//! The task that sends the queued events in batches: splitting a batch the application
//! refuses or fails on, retrying with backoff within `webhooks.retry_secs`, and dropping an
//! event it keeps failing on after [`FAILING_STRIKES`] rounds (see the parent module).

use super::*;

/// How often the application may take the events after one it keeps failing on (a 5xx, a
/// timeout) before that one is dropped.
pub(super) const FAILING_STRIKES: u32 = 3;

/// How one request for a part of a batch ended.
enum Attempt {
    Delivered,
    /// A 4xx other than 408 and 429: the application will not take it, retrying is useless.
    Refused(String),
    /// Anything else (transport error, timeout, 408, 429, 5xx): worth retrying.
    Failed(String),
}

/// The task that sends batches.
pub(super) struct Sender {
    pub(super) config: WebhooksConfig,
    pub(super) secret: String,
    pub(super) transport: Arc<dyn HookTransport>,
    pub(super) ledger: Arc<Ledger>,
    pub(super) counters: Arc<WebhookCounters>,
}

impl Sender {
    pub(super) async fn run(self, rx: mpsc::Receiver<Queued>) {
        let mut inbox = Inbox { rx, carried: None };
        let mut batch: Vec<Queued> = Vec::new();
        while inbox.fill(&mut batch, &self.config, true).await > 0 {
            self.deliver(&mut batch, &mut inbox).await;
            for e in &batch {
                self.ledger.release(e);
            }
            self.counters
                .pending
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            batch.clear();
        }
    }

    /// Sends one batch: a part that fails is split in halves, sent in order; a single event
    /// the application refuses (4xx) is dropped at once. A single event that fails otherwise
    /// is retried with backoff until its retry window (from its first attempt) ends;
    /// between its attempts the next events (of this batch, else from the queue) are sent: if
    /// the application takes them, it is not down but failing on this event, which is then
    /// dropped after [`FAILING_STRIKES`] such failures rather than holding up the others.
    /// Events taken from the queue so (a probe) have a retry window of their own, from their
    /// first attempt, not the rest of the batch's.
    async fn deliver(&self, batch: &mut Vec<Queued>, inbox: &mut Inbox) {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 0u32;
        // The parts still to send, each with the start of its retry window (its events' first
        // attempt); the last one is sent next.
        let mut todo: Vec<(Range<usize>, Instant)> = Vec::with_capacity(8);
        todo.push((0..batch.len(), Instant::now()));
        // The event failing alone (its index) and how often the application took the events
        // after it meanwhile.
        let mut strikes: (usize, u32) = (usize::MAX, 0);
        while let Some((part, since)) = todo.pop() {
            attempt += 1;
            let why = match self.attempt(&batch[part.clone()]).await {
                Attempt::Delivered => {
                    self.delivered(part.len());
                    if attempt > 1 && todo.is_empty() {
                        tracing::info!(
                            events = batch.len(),
                            attempts = attempt,
                            "webhook batch delivered after retries or splits"
                        );
                    }
                    continue;
                }
                Attempt::Refused(why) => {
                    self.refused(batch, (part, since), &why, &mut todo);
                    continue;
                }
                Attempt::Failed(why) => why,
            };
            self.counters
                .failed_attempts
                .fetch_add(1, Ordering::Relaxed);
            if since.elapsed() + pause > self.config.retry_for {
                self.counters
                    .dropped_expired
                    .fetch_add(part.len() as u64, Ordering::Relaxed);
                tracing::warn!(events = part.len(), attempts = attempt, reason = %why, "webhook batch dropped: still failing after webhooks.retry_secs");
                // Each later part still gets its one attempt.
                continue;
            }
            if attempt == 1 || attempt.is_multiple_of(10) {
                tracing::warn!(events = part.len(), attempt, reason = %why, retry_in = ?pause, "webhook delivery failed, retrying");
            }
            if part.len() > 1 {
                split(&mut todo, part, since);
            } else {
                // Down, or failing on this event only? Send the events after it. Events taken
                // from the queue for this get a retry window of their own from now.
                let probe = match todo.pop() {
                    Some(p) => Some(p),
                    None => {
                        let from = batch.len();
                        let added = inbox.fill(batch, &self.config, false).await;
                        (added > 0).then(|| (from..from + added, Instant::now()))
                    }
                };
                if let Some((probe, probe_since)) = probe {
                    attempt += 1;
                    match self.attempt(&batch[probe.clone()]).await {
                        Attempt::Delivered => {
                            self.delivered(probe.len());
                            if strikes.0 != part.start {
                                strikes = (part.start, 0);
                            }
                            strikes.1 += 1;
                            if strikes.1 >= FAILING_STRIKES {
                                let e = &batch[part.start];
                                let n = self
                                    .counters
                                    .dropped_failing
                                    .fetch_add(1, Ordering::Relaxed);
                                if n < 10 || n.is_multiple_of(100) {
                                    tracing::warn!(event = e.kind.name(), bytes = e.text.len(), share = e.sub.as_deref(), reason = %why, dropped = n + 1, "webhook event dropped: the application failed on it while it took the events after it");
                                }
                                continue;
                            }
                        }
                        Attempt::Refused(probe_why) => {
                            self.refused(batch, (probe, probe_since), &probe_why, &mut todo);
                        }
                        Attempt::Failed(_) => {
                            // Down, it seems: the probe waits behind the event, in order.
                            self.counters
                                .failed_attempts
                                .fetch_add(1, Ordering::Relaxed);
                            todo.push((probe, probe_since));
                        }
                    }
                }
                todo.push((part, since));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.config.backoff_max);
        }
    }

    fn delivered(&self, events: usize) {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters
            .delivered
            .fetch_add(events as u64, Ordering::Relaxed);
    }

    /// The application refused `part` (a 4xx): split it, or drop it if it is one event.
    fn refused(
        &self,
        batch: &[Queued],
        (part, since): (Range<usize>, Instant),
        why: &str,
        todo: &mut Vec<(Range<usize>, Instant)>,
    ) {
        self.counters
            .failed_attempts
            .fetch_add(1, Ordering::Relaxed);
        if part.len() > 1 {
            split(todo, part, since);
            return;
        }
        let e = &batch[part.start];
        let n = self
            .counters
            .dropped_rejected
            .fetch_add(1, Ordering::Relaxed);
        if n < 10 || n.is_multiple_of(100) {
            tracing::warn!(event = e.kind.name(), bytes = e.text.len(), share = e.sub.as_deref(), reason = %why, dropped = n + 1, "webhook event refused by the application (4xx): dropped, not retried");
        }
    }

    /// One signed request with `events`, in the sink's [`Format`].
    async fn attempt(&self, events: &[Queued]) -> Attempt {
        let mut body = String::with_capacity(
            events.iter().map(|e| e.text.len() + 1).sum::<usize>() + self.config.format.overhead(),
        );
        match &self.config.format {
            Format::Plexus => body.push_str("{\"events\":["),
            Format::Pusher { .. } => {
                body.push_str("{\"time_ms\":");
                body.push_str(&unix_ms().to_string());
                body.push_str(",\"events\":[");
            }
        }
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&e.text);
        }
        body.push_str("]}");
        let body = Bytes::from(body);
        let headers = match &self.config.format {
            Format::Plexus => {
                let mut headers = sign::headers(self.secret.as_bytes(), &body);
                headers.push(("x-plexus-hook", "webhook".to_owned()));
                headers
            }
            Format::Pusher { key } => vec![
                ("x-pusher-key", key.clone()),
                (
                    "x-pusher-signature",
                    pusher_signature(self.secret.as_bytes(), &body),
                ),
            ],
        };
        let sent = tokio::time::timeout(
            self.config.timeout,
            self.transport
                .post(&self.config.url, &headers, body, self.config.timeout),
        )
        .await;
        match sent {
            Ok(Ok(a)) if (200..300).contains(&a.status) => Attempt::Delivered,
            Ok(Ok(a)) if (400..500).contains(&a.status) && a.status != 408 && a.status != 429 => {
                Attempt::Refused(format!("HTTP status {}", a.status))
            }
            Ok(Ok(a)) => Attempt::Failed(format!("HTTP status {}", a.status)),
            Ok(Err(e)) => Attempt::Failed(e),
            Err(_) => Attempt::Failed(format!("no answer within {:?}", self.config.timeout)),
        }
    }
}

/// Replaces `part` (of two events or more) by its halves, the first to be sent first.
fn split(todo: &mut Vec<(Range<usize>, Instant)>, part: Range<usize>, since: Instant) {
    let mid = part.start + part.len() / 2;
    todo.push((mid..part.end, since));
    todo.push((part.start..mid, since));
}

/// `hex(HMAC-SHA256(secret, body))`: Pusher's webhook signature (`X-Pusher-Signature`).
fn pusher_signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn pusher_signature_matches_a_reference_hmac() {
        // Python: hmac.new(b"secret", b'{"time_ms":1,"events":[]}', hashlib.sha256).hexdigest()
        assert_eq!(
            super::pusher_signature(b"secret", br#"{"time_ms":1,"events":[]}"#),
            "7f7f57446968d787e73e1325b85147edc7991af069e8fffdc6a4e6fcc288693c"
        );
    }
}
