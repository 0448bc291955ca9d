//! The Phoenix LongPoll transport, as phoenix.js's `LongPoll` (and its `longPollFallbackMs`
//! option) speaks it.
//!
//! * `GET` without a session: the connection is admitted like a WebSocket (same token, rules
//!   and limits), a session is created and the answer is `{"status": 410, "token": <session>}`.
//! * `GET` with a session token: waits up to the poll window for messages:
//!   `{"status": 200, "token", "messages": [<frame>, …]}`, or `{"status": 204, "token"}`.
//!   A session the server closed (drain, disconnect, slow consumer) or forgot answers
//!   `{"status": 410}`, and phoenix.js reconnects and rejoins.
//! * `POST` with a session token: an ndjson body, one client frame per line (JSON text, or the
//!   base64 of a binary frame); at most [`MAX_POST_LINES`] lines (Phoenix CVE-2026-32689).
//! * A session whose client stops polling for two windows expires; its socket closes like a
//!   WebSocket's would (presence leaves, caps released).
//!
//! Each session owns a [`Socket`], so channel semantics and every rule are the core's.

use crate::admission::Permit;
use crate::auth::Identity;
use crate::node::Node;
use crate::outbox::Outgoing;
use crate::protocol::{decode_client_binary, decode_client_text, Frame, Payload};
use crate::socket::{Draining, Socket};
use base64::Engine;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Lines one POST may carry.
pub const MAX_POST_LINES: usize = 100;
/// Prefix of session tokens (tells them apart from user tokens in the same `token` parameter).
pub const SESSION_PREFIX: &str = "plp.";

struct Session {
    socket: tokio::sync::Mutex<Option<Socket>>,
    outbox: Arc<crate::outbox::Outbox>,
    last_active: Mutex<Instant>,
    polls: AtomicUsize,
}

/// All LongPoll sessions of a node.
pub struct LongPoll {
    node: Arc<Node>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    window: Duration,
}

/// The answer to a poll.
#[derive(Debug, PartialEq, Eq)]
pub enum PollResult {
    Messages(Vec<String>),
    NoContent,
    Gone,
}

/// The answer to a POST.
#[derive(Debug, PartialEq, Eq)]
pub enum PostResult {
    Ok,
    Gone,
    TooManyLines(usize),
    /// A line (one message) is larger than `max_message_bytes`: its size. Nothing was handled.
    TooLarge(usize),
}

impl LongPoll {
    /// Creates the session table and its reaper task (which ends with the table).
    pub fn new(node: Arc<Node>, window: Duration) -> Arc<Self> {
        let lp = Arc::new(LongPoll {
            node,
            sessions: Mutex::new(HashMap::new()),
            window,
        });
        let weak = Arc::downgrade(&lp);
        tokio::spawn(reap(weak, window));
        lp
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Opens a session for an admitted identity; returns its token.
    pub fn open(&self, identity: Identity, permit: Permit) -> Result<String, Draining> {
        let socket = Socket::open(self.node.clone(), identity, permit)?;
        let outbox = socket.outbox().clone();
        let token = new_token();
        let session = Arc::new(Session {
            socket: tokio::sync::Mutex::new(Some(socket)),
            outbox,
            last_active: Mutex::new(Instant::now()),
            polls: AtomicUsize::new(0),
        });
        self.sessions.lock().insert(token.clone(), session);
        Ok(token)
    }

    fn get(&self, token: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(token).cloned()
    }

    pub fn exists(&self, token: &str) -> bool {
        self.sessions.lock().contains_key(token)
    }

    /// Waits up to the window for messages of session `token`.
    pub async fn poll(&self, token: &str) -> PollResult {
        let Some(session) = self.get(token) else {
            return PollResult::Gone;
        };
        // A guard, not a plain decrement at the end: when the client goes away hyper drops
        // this future mid-wait, and the session must still count as not polling.
        let _polling = PollGuard::new(session.clone());
        let deadline = Instant::now() + self.window;
        loop {
            let mut batch = Vec::new();
            let close = session.outbox.drain_into(&mut batch);
            if !batch.is_empty() {
                return PollResult::Messages(batch.into_iter().filter_map(message_text).collect());
            }
            if close.is_some() {
                self.close(token).await;
                return PollResult::Gone;
            }
            tokio::select! {
                _ = session.outbox.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return PollResult::NoContent,
            }
        }
    }

    /// Handles a POST body of session `token`.
    pub async fn post(&self, token: &str, body: &[u8]) -> PostResult {
        let Some(session) = self.get(token) else {
            return PostResult::Gone;
        };
        *session.last_active.lock() = Instant::now();
        let lines: Vec<&[u8]> = body
            .split(|b| *b == b'\n')
            .map(trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.len() > MAX_POST_LINES {
            return PostResult::TooManyLines(lines.len());
        }
        // The same size rule as a WebSocket message (a base64 line counts as what it decodes to).
        let max = self.node.limits().max_message_bytes;
        if let Some(big) = lines
            .iter()
            .map(|l| {
                if l.first() == Some(&b'[') {
                    l.len()
                } else {
                    l.len() / 4 * 3
                }
            })
            .find(|n| *n > max)
        {
            return PostResult::TooLarge(big);
        }
        // Handled in a task of its own: if the client hangs up mid-POST, hyper drops this
        // future, but a join or leave must not stop halfway.
        let lines: Vec<Vec<u8>> = lines.into_iter().map(<[u8]>::to_vec).collect();
        let handled = tokio::spawn(async move {
            let mut guard = session.socket.lock().await;
            let Some(socket) = guard.as_mut() else {
                return PostResult::Gone;
            };
            for line in lines {
                let decoded = if line.first() == Some(&b'[') {
                    decode_client_text(&line)
                } else {
                    match base64::engine::general_purpose::STANDARD.decode(&line) {
                        Ok(bin) => decode_client_binary(&Bytes::from(bin)),
                        Err(_) => decode_client_text(&line),
                    }
                };
                match decoded {
                    Ok(m) => socket.handle(m).await,
                    Err(e) => socket.handle_decode_error(e),
                }
            }
            PostResult::Ok
        });
        handled.await.unwrap_or(PostResult::Gone)
    }

    /// Ends a session: its socket leaves every channel. The leaving runs in a task of its own:
    /// the caller (a poll) is dropped mid-way when its client hangs up, and the broker's part
    /// of the teardown (unsubscribing, presence leaves) must still happen.
    pub async fn close(&self, token: &str) {
        let session = self.sessions.lock().remove(token);
        if let Some(session) = session {
            let closing = tokio::spawn(async move {
                let socket = session.socket.lock().await.take();
                if let Some(socket) = socket {
                    socket.close().await;
                }
            });
            let _ = closing.await;
        }
    }
}

/// Marks a session as being polled for as long as it lives.
struct PollGuard(Arc<Session>);

impl PollGuard {
    fn new(session: Arc<Session>) -> Self {
        session.polls.fetch_add(1, Ordering::AcqRel);
        *session.last_active.lock() = Instant::now();
        PollGuard(session)
    }
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        *self.0.last_active.lock() = Instant::now();
        self.0.polls.fetch_sub(1, Ordering::AcqRel);
    }
}

fn trim(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(line.len());
    let end = line
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &line[start..end]
}

/// The JSON text of a message for the `messages` array. phoenix.js's LongPoll only parses
/// text, so a binary payload travels as JSON `{"binary": <base64>}`.
fn message_text(item: Outgoing) -> Option<String> {
    let frame = match item.payload() {
        Payload::Binary(b) => {
            let data = serde_json::json!({ "binary": base64::engine::general_purpose::STANDARD.encode(b) });
            Payload::json(&data).and_then(|p| item.encode_with(&p))
        }
        Payload::Json(_) => item.encode(),
    };
    match frame {
        Ok(Frame::Text(b)) => String::from_utf8(b.to_vec()).ok(),
        Ok(Frame::Binary(_)) => None,
        Err(e) => {
            tracing::debug!(error = %e, "message not encodable");
            None
        }
    }
}

fn new_token() -> String {
    use rand::Rng;
    let mut bytes = [0u8; 24];
    rand::rng().fill(&mut bytes);
    format!(
        "{SESSION_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Closes sessions that stopped polling for two windows, or that the server closed.
async fn reap(lp: Weak<LongPoll>, window: Duration) {
    let tick = (window / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let Some(lp) = lp.upgrade() else {
            return;
        };
        let now = Instant::now();
        let expired: Vec<String> =
            lp.sessions
                .lock()
                .iter()
                .filter(|(_, s)| {
                    let idle = now.duration_since(*s.last_active.lock());
                    let polling = s.polls.load(Ordering::Acquire) > 0;
                    // Closed by the server (drain, disconnect, slow consumer) and nobody waiting:
                    // its next poll would only hear 410.
                    let gone = !polling && (idle > window * 2 || s.outbox.is_closed());
                    // A token that expired and was not refreshed in time ends the session, as it
                    // closes a WebSocket (4001).
                    let expired =
                        s.socket.try_lock().ok().is_some_and(|g| {
                            g.as_ref().is_some_and(|sock| sock.expiry().over(now))
                        });
                    gone || expired
                })
                .map(|(t, _)| t.clone())
                .collect();
        for token in expired {
            tracing::debug!("longpoll session expired");
            lp.close(&token).await;
        }
    }
}
