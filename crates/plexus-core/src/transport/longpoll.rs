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
//! * **No batch lost with its answer:** every `200` answer carries a new token
//!   (`<session>~<n>`), and phoenix.js polls next with the token of the last answer it read.
//!   The session keeps its last batch until a poll shows it arrived (a poll with the new
//!   token); a poll with the previous token gets the same batch again. A poll answer can be
//!   lost on its way — the client hung up, a balancer cut the request, or the node that
//!   forwarded the poll was draining and answered 204 itself — and without this the messages
//!   it carried were gone while the session lived on. The kept batch is at most one drain of
//!   the outbox (bounded like the outbox).
//!
//! * **One poll waits per session:** a new poll of a session makes the one already waiting
//!   answer at once (`204`, as Phoenix's LongPoll server does), so a client that polls many
//!   times at once holds at most one poll (two for a moment), never one per request.
//!
//! Each session owns a [`Socket`], so channel semantics and every rule are the core's.
//!
//! **No sticky routing needed:** a session token names the node that holds the session
//! (`plp.<node>.<random>`). A poll or POST that reaches another node of the cluster is
//! forwarded to that node over the broker ([`Broker::call_node`](crate::broker::Broker)) and
//! its answer relayed, as Phoenix routes LongPoll requests over PubSub; so LongPoll works
//! behind a round-robin balancer. The forwarding node first asks the owner whether it holds
//! the session (the caller's gate slot is released only then: a made-up token does not leave
//! the gate), and forwards at most [`FORWARDED_PER_CONNECTION`] × `max_connections_per_ip`
//! polls per client address at once (past that: [`PollResult::Busy`]), so that one address
//! cannot fill the table of calls to other nodes that every user's forwarded polls share.

use crate::admission::Permit;
use crate::auth::Identity;
use crate::broker::RequestHandler;
use crate::node::Node;
use crate::outbox::Outgoing;
use crate::protocol::{DecodeError, Frame, Message, Vsn};
use crate::socket::{Draining, Socket};
use base64::Engine;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

/// Lines one POST may carry.
pub const MAX_POST_LINES: usize = 100;
/// Prefix of session tokens (tells them apart from user tokens in the same `token` parameter).
pub const SESSION_PREFIX: &str = "plp.";
/// Forwarded polls one client address may have in flight per connection it may hold
/// (`max_connections_per_ip`): one waiting poll per session, and its successor for a moment.
pub const FORWARDED_PER_CONNECTION: usize = 2;
/// How long a forwarding node waits for the owner to say whether it holds a session (the
/// poll is still in the gate meanwhile); no answer: `{"status": 410}`.
pub const HELD_TIMEOUT: Duration = Duration::from_secs(2);

struct Session {
    socket: tokio::sync::Mutex<Option<Socket>>,
    outbox: Arc<crate::outbox::Outbox>,
    /// The protocol version the session was opened with.
    vsn: Vsn,
    last_active: Mutex<Instant>,
    polls: AtomicUsize,
    /// The answer sequence and the last batch, until a poll acknowledges it.
    delivery: Mutex<Delivery>,
    /// Wakes the other polls of the session when one of them took a batch.
    delivered: tokio::sync::Notify,
    /// The number of the session's newest poll: an older one still waiting answers at once.
    newest_poll: AtomicU64,
    /// Wakes the waiting polls when a newer one arrives.
    superseded: tokio::sync::Notify,
}

#[derive(Default)]
struct Delivery {
    /// Batches answered so far: the `<n>` of the token the next poll should carry.
    seq: u64,
    /// The batch answered with token `seq`, kept until a poll carries that token.
    last: Vec<String>,
}

/// `<session>~<n>`: the token of a session's `n`th batch answer (`n` = 0: the bare session).
fn answer_token(session: &str, n: u64) -> String {
    if n == 0 {
        session.to_owned()
    } else {
        format!("{session}~{n}")
    }
}

/// A poll token's session and answer sequence (`None`: not a sequence this server wrote).
fn split_token(token: &str) -> (&str, Option<u64>) {
    match token.rsplit_once('~') {
        Some((session, n)) => (session, n.parse().ok().filter(|n| *n > 0)),
        None => (token, Some(0)),
    }
}

/// All LongPoll sessions of a node.
pub struct LongPoll {
    node: Arc<Node>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    window: Duration,
    /// Polls this node forwards to other nodes now, per client address.
    forwarded: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// The answer to a poll.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PollResult {
    /// A batch, and the token the next poll carries to acknowledge it.
    Messages(Vec<String>, String),
    NoContent,
    Gone,
    /// Not forwarded: the client's address has too many polls forwarded to other nodes.
    Busy,
}

/// The answer to a POST.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
            forwarded: Arc::new(Mutex::new(HashMap::new())),
        });
        let weak = Arc::downgrade(&lp);
        tokio::spawn(reap(weak.clone(), window));
        lp.node.broker().set_request_handler(weak);
        lp
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Opens a session for an admitted identity, speaking `vsn`; returns its token.
    pub fn open(&self, identity: Identity, permit: Permit, vsn: Vsn) -> Result<String, Draining> {
        let socket = Socket::open(self.node.clone(), identity, permit)?;
        let outbox = socket.outbox().clone();
        let token = new_token(self.node.broker().node_id());
        let session = Arc::new(Session {
            socket: tokio::sync::Mutex::new(Some(socket)),
            outbox,
            vsn,
            last_active: Mutex::new(Instant::now()),
            polls: AtomicUsize::new(0),
            delivery: Mutex::new(Delivery::default()),
            delivered: tokio::sync::Notify::new(),
            newest_poll: AtomicU64::new(0),
            superseded: tokio::sync::Notify::new(),
        });
        self.sessions.lock().insert(token.clone(), session);
        Ok(token)
    }

    fn get(&self, token: &str) -> Option<Arc<Session>> {
        self.sessions.lock().get(split_token(token).0).cloned()
    }

    /// Whether the session of a token (a poll's `<session>~<n>` too) is held here.
    pub fn exists(&self, token: &str) -> bool {
        self.sessions.lock().contains_key(split_token(token).0)
    }

    /// The node that holds session `token`, when it is another node of the cluster.
    pub fn remote_node<'a>(&self, token: &'a str) -> Option<&'a str> {
        let (node, _) = token.strip_prefix(SESSION_PREFIX)?.split_once('.')?;
        (node != self.node.broker().node_id()).then_some(node)
    }

    /// Asks the node holding a session to answer a poll or POST of it.
    async fn forward(&self, node: &str, request: &Forwarded<'_>) -> Option<Answer> {
        let timeout = match request {
            Forwarded::Held { .. } => HELD_TIMEOUT,
            _ => self.window + Duration::from_secs(5),
        };
        let request = serde_json::to_vec(request).ok()?;
        let answer = self
            .node
            .broker()
            .call_node(node, Bytes::from(request), timeout)
            .await
            .inspect_err(|e| tracing::debug!(node, error = %e, "longpoll request not forwarded"))
            .ok()?;
        serde_json::from_slice(&answer).ok()
    }

    /// Takes one of `ip`'s places for a forwarded poll (`None`: it has none left).
    fn forward_place(&self, ip: IpAddr) -> Option<ForwardPlace> {
        let cap = self.node.admission().config().max_connections_per_ip as usize;
        let mut forwarded = self.forwarded.lock();
        let n = forwarded.entry(ip).or_insert(0);
        if cap > 0 && *n >= cap.saturating_mul(FORWARDED_PER_CONNECTION) {
            return None;
        }
        *n += 1;
        Some(ForwardPlace {
            table: self.forwarded.clone(),
            ip,
        })
    }

    /// Waits up to the window for messages of session `token` (held here, or forwarded to
    /// the node that holds it), polled from client address `ip`. `held` is called once the
    /// session is known to be held (here, or by the node that answered for it): the caller
    /// releases its gate slot then.
    pub async fn poll(&self, token: &str, ip: IpAddr, held: impl FnOnce()) -> PollResult {
        if !self.exists(token) {
            if let Some(node) = self.remote_node(token) {
                let Some(_place) = self.forward_place(ip) else {
                    return PollResult::Busy;
                };
                match self.forward(node, &Forwarded::Held { token }).await {
                    Some(Answer::Held(true)) => held(),
                    _ => return PollResult::Gone,
                }
                // A draining node ends the polls it forwards at once (204: the client polls
                // again, through a node that stays), so that it can stop without cutting them.
                let request = Forwarded::Poll { token };
                return tokio::select! {
                    answer = self.forward(node, &request) => match answer {
                        Some(Answer::Poll(r)) => r,
                        _ => PollResult::Gone,
                    },
                    _ = self.node.until_draining() => PollResult::NoContent,
                };
            }
        }
        held();
        self.poll_here(token).await
    }

    async fn poll_here(&self, token: &str) -> PollResult {
        let (key, seq) = split_token(token);
        let Some(session) = self.get(key) else {
            return PollResult::Gone;
        };
        let Some(seq) = seq else {
            return PollResult::Gone;
        };
        // A guard, not a plain decrement at the end: when the client goes away hyper drops
        // this future mid-wait, and the session must still count as not polling.
        let _polling = PollGuard::new(session.clone());
        // This poll is the session's newest: one still waiting answers now.
        let me = session.newest_poll.fetch_add(1, Ordering::AcqRel) + 1;
        session.superseded.notify_waiters();
        let deadline = Instant::now() + self.window;
        loop {
            // Registered before looking, so that a newer poll arriving meanwhile wakes this one.
            let superseded = session.superseded.notified();
            tokio::pin!(superseded);
            superseded.as_mut().enable();
            if session.newest_poll.load(Ordering::Acquire) != me {
                // The outbox wakes one waiter only (the last to wait): this poll may have taken
                // a wake-up meant for the newer one, or registered over it. Waking the newer
                // poll through `delivered` makes it look at the outbox again.
                session.delivered.notify_waiters();
                return PollResult::NoContent;
            }
            // Registered before looking, so that a batch taken meanwhile by another poll of
            // this session (one its client gave up on) wakes this one.
            let delivered = session.delivered.notified();
            tokio::pin!(delivered);
            delivered.as_mut().enable();
            let close = {
                let mut d = session.delivery.lock();
                if seq.checked_add(1) == Some(d.seq) && !d.last.is_empty() {
                    // The last answer did not arrive: the same batch again.
                    return PollResult::Messages(d.last.clone(), answer_token(key, d.seq));
                }
                if seq != d.seq {
                    // Older than the last answer: what the client holds cannot be told.
                    return PollResult::Gone;
                }
                // The client has everything answered so far.
                d.last = Vec::new();
                let mut batch = Vec::new();
                let close = session.outbox.drain_into(&mut batch);
                let vsn = session.vsn;
                let texts: Vec<String> =
                    batch.iter().filter_map(|m| message_text(m, vsn)).collect();
                // Handed to the poll's answer: the publish→write histogram's first write.
                batch
                    .iter()
                    .filter_map(Outgoing::publication)
                    .for_each(|p| p.written());
                if !texts.is_empty() {
                    d.seq += 1;
                    d.last = texts.clone();
                    drop(d);
                    session.delivered.notify_waiters();
                    return PollResult::Messages(texts, answer_token(key, seq + 1));
                }
                close
            };
            if close.is_some() {
                self.close(key).await;
                return PollResult::Gone;
            }
            // Biased: a superseded poll leaves without touching the outbox's one waker.
            tokio::select! {
                biased;
                _ = &mut superseded => {}
                _ = &mut delivered => {}
                _ = session.outbox.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return PollResult::NoContent,
            }
        }
    }

    /// Handles a POST body of session `token` (held here, or forwarded to the node that
    /// holds it).
    pub async fn post(&self, token: &str, body: &[u8]) -> PostResult {
        if !self.exists(token) {
            if let Some(node) = self.remote_node(token) {
                let body = base64::engine::general_purpose::STANDARD.encode(body);
                return match self.forward(node, &Forwarded::Post { token, body }).await {
                    Some(Answer::Post(r)) => r,
                    _ => PostResult::Gone,
                };
            }
        }
        self.post_here(token, body).await
    }

    async fn post_here(&self, token: &str, body: &[u8]) -> PostResult {
        let Some(session) = self.get(token) else {
            return PostResult::Gone;
        };
        *session.last_active.lock() = Instant::now();
        let max = self.node.limits().max_message_bytes;
        let decoded = match parse_body(body, MAX_POST_LINES, max, session.vsn) {
            Ok(decoded) => decoded,
            Err(BodyError::TooManyLines(n)) => return PostResult::TooManyLines(n),
            Err(BodyError::TooLarge(n)) => return PostResult::TooLarge(n),
        };
        // Handled in a task of its own: if the client hangs up mid-POST, hyper drops this
        // future, but a join or leave must not stop halfway.
        let handled = tokio::spawn(async move {
            let mut guard = session.socket.lock().await;
            let Some(socket) = guard.as_mut() else {
                return PostResult::Gone;
            };
            for decoded in decoded {
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
        let session = self.sessions.lock().remove(split_token(token).0);
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

/// One of a client address's places for a forwarded poll, given back when dropped.
struct ForwardPlace {
    table: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for ForwardPlace {
    fn drop(&mut self) {
        let mut table = self.table.lock();
        if let Some(n) = table.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&self.ip);
            }
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

/// Why a LongPoll POST body was refused as a whole (nothing in it is handled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// More non-blank lines than allowed: their number.
    #[error("{0} lines is more than a POST may carry")]
    TooManyLines(usize),
    /// A line (one message) is larger than the message size limit: its size.
    #[error("a {0}-byte message is larger than the limit")]
    TooLarge(usize),
}

/// Parses a LongPoll POST body: ndjson, one client frame per line, each either JSON text
/// (a line starting with `[` or `{`, decoded as `vsn` says) or the standard base64 of a binary frame (a line that is not
/// valid base64 is decoded as text, so that its error is answered like any malformed frame).
/// Lines are trimmed of ASCII whitespace and blank lines are skipped.
///
/// Refused as a whole: more than `max_lines` lines, or a line larger than `max_message_bytes`
/// (the same size rule as a WebSocket message; a base64 line counts as what it decodes to,
/// `len / 4 * 3`). Otherwise one decode result per line, in order. Pure: no I/O.
pub fn parse_body(
    body: &[u8],
    max_lines: usize,
    max_message_bytes: usize,
    vsn: Vsn,
) -> Result<Vec<Result<Message, DecodeError>>, BodyError> {
    let is_json = |l: &[u8]| matches!(l.first(), Some(b'[' | b'{'));
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .map(trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() > max_lines {
        return Err(BodyError::TooManyLines(lines.len()));
    }
    if let Some(big) = lines
        .iter()
        .map(|l| if is_json(l) { l.len() } else { l.len() / 4 * 3 })
        .find(|n| *n > max_message_bytes)
    {
        return Err(BodyError::TooLarge(big));
    }
    Ok(lines
        .into_iter()
        .map(|line| {
            if is_json(line) {
                vsn.decode_text(line)
            } else {
                match base64::engine::general_purpose::STANDARD.decode(line) {
                    Ok(bin) => vsn.decode_binary(&Bytes::from(bin)),
                    Err(_) => vsn.decode_text(line),
                }
            }
        })
        .collect())
}

/// The JSON text of a message for the `messages` array. phoenix.js's LongPoll only parses
/// text, so a binary payload travels as JSON `{"binary": <base64>}`.
fn message_text(item: &Outgoing, vsn: Vsn) -> Option<String> {
    match item.encode_text(vsn) {
        Ok(Frame::Text(b)) => String::from_utf8(b.to_vec()).ok(),
        Ok(Frame::Binary(_)) => None,
        Err(e) => {
            tracing::debug!(error = %e, "message not encodable");
            None
        }
    }
}

/// `plp.<node>.<random>`: the node that holds the session, and 192 random bits.
fn new_token(node: &str) -> String {
    use rand::Rng;
    let mut bytes = [0u8; 24];
    rand::rng().fill(&mut bytes);
    format!(
        "{SESSION_PREFIX}{node}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A poll or POST forwarded to the node that holds the session.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Forwarded<'a> {
    /// Whether the session is held there (answered at once).
    Held {
        token: &'a str,
    },
    Poll {
        token: &'a str,
    },
    /// `body`: the POST body, base64.
    Post {
        token: &'a str,
        body: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Answer {
    Held(bool),
    Poll(PollResult),
    Post(PostResult),
}

#[async_trait::async_trait]
impl RequestHandler for LongPoll {
    /// A poll or POST another node forwarded: answered for the sessions held here only (a
    /// forwarded request is never forwarded again).
    async fn handle_request(&self, request: Bytes) -> Bytes {
        let answer = match serde_json::from_slice::<Forwarded>(&request) {
            Ok(Forwarded::Held { token }) => Answer::Held(self.exists(token)),
            Ok(Forwarded::Poll { token }) => Answer::Poll(self.poll_here(token).await),
            Ok(Forwarded::Post { token, body }) => {
                match base64::engine::general_purpose::STANDARD.decode(body) {
                    Ok(body) => Answer::Post(self.post_here(token, &body).await),
                    Err(_) => Answer::Post(PostResult::Gone),
                }
            }
            Err(_) => Answer::Poll(PollResult::Gone),
        };
        Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())
    }
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

#[cfg(test)]
mod tests;
