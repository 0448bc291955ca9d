//! The bounded queue of messages waiting to be written to one connection.
//!
//! Fan-out pushes a shared [`Publication`] (one reference count, no copy) into each
//! subscriber's outbox; replies and pushes to this connection alone wait here as
//! [`Outgoing`] values, and the connection's transport encodes them as its protocol needs
//! ([`Outgoing::encode`]) while it drains the queue into its socket. An empty outbox holds no
//! heap memory. When a client stops reading and its queue passes the limits, the outbox closes
//! itself with [`close_codes::SLOW_CONSUMER`] and
//! drops what was queued, so a stalled client never grows server memory without bound.
//!
//! Write-through: a plain-TCP WebSocket connection gives its outbox its socket
//! ([`Outbox::attach_socket`]). While the queue is empty and the connection's task is not
//! writing, a broadcast is then written straight to the socket by the fan-out (one
//! non-blocking vectored `sendmsg`, under this outbox's lock) instead of being queued with a
//! wake-up. Only when the socket takes less than the whole frame does it fall back: nothing
//! written (`WouldBlock`) queues the broadcast as before; a partial write keeps the unwritten
//! rest aside ([`Unsent`]), which the task writes before anything else
//! ([`Outbox::begin_write`]), so the bytes on the wire stay in queue order. Every write of the
//! task happens between [`Outbox::begin_write`] and [`Outbox::end_write`], during which the
//! fan-out queues; the task clears the socket ([`Outbox::detach_socket`]) before closing it.

use crate::limits::close_codes;
use crate::protocol::ws_frame::{encode_header, OP_BINARY, OP_TEXT};
use crate::protocol::{
    encode_broadcast, encode_message_v1, encode_push, encode_reply, encode_reply_v1, json_payload,
    EncodeError, Frame, Payload, Vsn,
};
use crate::publication::Publication;
use crate::write_through::RawSocket;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

mod wakeup;
use wakeup::Wakeup;

/// Why and how a connection is to be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

/// `phx_reply` to the client message `msg_ref`.
#[derive(Clone, Debug)]
pub struct Reply {
    pub join_ref: Option<Box<str>>,
    pub msg_ref: Option<Box<str>>,
    pub topic: Box<str>,
    pub status: &'static str,
    pub response: Payload,
}

/// A server push to this connection alone (`phx_close`, `presence_state`, `token_expired`).
#[derive(Clone, Debug)]
pub struct Push {
    pub join_ref: Option<Box<str>>,
    pub msg_ref: Option<Box<str>>,
    pub topic: Box<str>,
    pub event: &'static str,
    pub payload: Payload,
}

/// One message waiting for a connection: two words, so that a queue (and the batch a
/// transport drains it into) stays small.
#[derive(Clone, Debug)]
pub enum Outgoing {
    Reply(Box<Reply>),
    Push(Box<Push>),
    /// A broadcast shared with every subscriber of its topic, sent in Phoenix's shape
    /// (`ref` null).
    Broadcast(Arc<Publication>),
    /// The same, with its history offset in `ref`: the receiver's join asked for offsets.
    BroadcastWithOffset(Arc<Publication>),
    /// A frame already encoded in the connection's own protocol: what a protocol other than
    /// Phoenix's says that the core has no message for (Pusher's `connection_established`,
    /// `subscription_succeeded`, `pong`…).
    Raw(Box<Frame>),
}

impl Outgoing {
    /// A broadcast for a receiver that wants offsets (`with_offset`) or not.
    pub fn broadcast(p: Arc<Publication>, with_offset: bool) -> Self {
        if with_offset {
            Outgoing::BroadcastWithOffset(p)
        } else {
            Outgoing::Broadcast(p)
        }
    }

    /// The publication of a broadcast.
    pub fn publication(&self) -> Option<&Arc<Publication>> {
        match self {
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => Some(p),
            _ => None,
        }
    }

    /// Bytes this message counts against the outbox's byte limit (about its encoded size).
    fn weight(&self) -> usize {
        match self {
            Outgoing::Reply(r) => {
                48 + refs_len(&r.join_ref, &r.msg_ref) + r.topic.len() + r.response.len()
            }
            Outgoing::Push(p) => {
                32 + refs_len(&p.join_ref, &p.msg_ref)
                    + p.topic.len()
                    + p.event.len()
                    + p.payload.len()
            }
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => p.frame.len(),
            Outgoing::Raw(f) => f.len(),
        }
    }

    /// The message's payload (a reply's `response`); `None` for a raw frame.
    pub fn payload(&self) -> Option<&Payload> {
        match self {
            Outgoing::Reply(r) => Some(&r.response),
            Outgoing::Push(p) => Some(&p.payload),
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => Some(&p.payload),
            Outgoing::Raw(_) => None,
        }
    }

    /// The frame of this message for a Pusher connection, or `None` for what Pusher's protocol
    /// has no frame for: broadcasts as Pusher channel events (encoded once per publication),
    /// error replies as `pusher:error`, raw frames as they are. Successful replies and the
    /// Phoenix pushes (`phx_close`, presence, `token_expired`) say nothing to a Pusher client.
    pub fn encode_pusher(&self) -> Option<Frame> {
        match self {
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => p
                .pusher_frame()
                .inspect_err(|e| tracing::debug!(error = %e, "broadcast not encodable for Pusher"))
                .ok(),
            Outgoing::Raw(f) => Some((**f).clone()),
            Outgoing::Reply(r) if r.status == "error" => {
                let reason = r
                    .response
                    .as_json()
                    .and_then(|raw| serde_json::from_str::<ErrorReason>(raw.get()).ok())
                    .map_or_else(|| "error".to_owned(), |e| e.reason);
                let text = crate::protocol::pusher::error(None, &reason);
                Some(Frame::Text(bytes::Bytes::from(text)))
            }
            Outgoing::Reply(_) | Outgoing::Push(_) => None,
        }
    }

    /// The frame of this message for a connection speaking `vsn` (a broadcast's shared frame
    /// is not copied).
    pub fn encode(&self, vsn: Vsn) -> Result<Frame, EncodeError> {
        match (self, vsn) {
            (Outgoing::Broadcast(p), _) => p.frame_for(vsn, false),
            (Outgoing::BroadcastWithOffset(p), _) => p.frame_for(vsn, true),
            (Outgoing::Reply(r), Vsn::V2) => encode_reply(
                r.join_ref.as_deref(),
                r.msg_ref.as_deref(),
                &r.topic,
                r.status,
                &r.response,
            ),
            (Outgoing::Push(p), Vsn::V2) => encode_push(
                p.join_ref.as_deref(),
                p.msg_ref.as_deref(),
                &p.topic,
                p.event,
                &p.payload,
            ),
            (Outgoing::Reply(r), Vsn::V1) => Ok(encode_reply_v1(
                r.msg_ref.as_deref(),
                &r.topic,
                r.status,
                &json_payload(&r.response),
            )),
            (Outgoing::Push(p), Vsn::V1) => Ok(encode_message_v1(
                p.msg_ref.as_deref(),
                &p.topic,
                p.event,
                &p.payload,
            )),
            (Outgoing::Raw(f), _) => Ok((**f).clone()),
        }
    }

    /// The frame of this message as text, for transports that carry no binary frames
    /// (LongPoll): a binary payload travels as JSON `{"binary": "<base64>"}`.
    pub fn encode_text(&self, vsn: Vsn) -> Result<Frame, EncodeError> {
        let Some(binary @ Payload::Binary(_)) = self.payload() else {
            return self.encode(vsn);
        };
        if vsn == Vsn::V1 {
            return self.encode(vsn);
        }
        let payload = Payload::Json(json_payload(binary).into_owned());
        match self {
            Outgoing::Reply(r) => encode_reply(
                r.join_ref.as_deref(),
                r.msg_ref.as_deref(),
                &r.topic,
                r.status,
                &payload,
            ),
            Outgoing::Push(p) => encode_push(
                p.join_ref.as_deref(),
                p.msg_ref.as_deref(),
                &p.topic,
                p.event,
                &payload,
            ),
            // Binary broadcasts carry no offset.
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => {
                encode_broadcast(None, &p.topic, &p.event, &payload)
            }
            Outgoing::Raw(f) => Ok((**f).clone()),
        }
    }
}

/// The `reason` of an error reply.
#[derive(serde::Deserialize)]
struct ErrorReason {
    reason: String,
}

/// The bytes of a message's refs (a client chooses them, up to a whole message's size).
fn refs_len(join_ref: &Option<Box<str>>, msg_ref: &Option<Box<str>>) -> usize {
    join_ref.as_ref().map_or(0, |s| s.len()) + msg_ref.as_ref().map_or(0, |s| s.len())
}

/// The rest of a frame the fan-out wrote only in part: written by the connection's task
/// before anything else.
pub struct Unsent {
    /// The frame's WebSocket header and payload, and how many of their bytes were written.
    header: [u8; 10],
    header_len: u8,
    payload: Bytes,
    written: usize,
    publication: Arc<Publication>,
}

impl Unsent {
    /// The bytes still to write: the rest of the header, then the rest of the payload.
    pub fn parts(&self) -> (&[u8], &[u8]) {
        let h = self.header_len as usize;
        if self.written < h {
            (&self.header[self.written..h], &self.payload)
        } else {
            (&[], &self.payload[self.written - h..])
        }
    }

    /// The broadcast this was part of (its first-write time is recorded once it is written).
    pub fn publication(&self) -> &Arc<Publication> {
        &self.publication
    }
}

/// What became of a broadcast handed to an outbox ([`Outbox::deliver`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written whole to the socket by the fan-out (write-through).
    Written,
    /// Written in part by the fan-out; the task writes the rest.
    Partial,
    /// Queued for the connection's task (or held aside, or a replayed duplicate skipped).
    Queued,
    /// Not taken: the outbox is closed.
    Dropped,
}

/// Where and how the fan-out may write a connection's broadcasts itself.
#[derive(Clone, Copy)]
struct Direct {
    socket: RawSocket,
    vsn: Vsn,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    close: Option<CloseReason>,
    /// While a join recovers history: broadcasts wait here, so that none is lost between
    /// subscribing and reading history, and duplicates of replayed ones can be dropped.
    held: Option<Vec<Outgoing>>,
    /// After a replay up to offset N of a topic, live broadcasts of that topic at or below N
    /// are duplicates even when they arrive after the hold ended: on a cluster a broadcast
    /// can be in history (and so in the replay) while its live copy is still on its way from
    /// Redis. Live broadcasts of a topic come in offset order, so the first one past N (or
    /// one without an offset: a `history_reset`) ends the floor.
    floors: Vec<(Arc<str>, u64)>,
    /// The socket the fan-out writes to while the queue is empty (write-through), if any.
    direct: Option<Direct>,
    /// The connection's task is writing (between `begin_write` and `end_write`): the fan-out
    /// queues.
    writing: bool,
    /// The rest of a frame the fan-out wrote in part.
    unsent: Option<Box<Unsent>>,
}

/// Whether `p` is a duplicate of a replayed broadcast; retires the floor it passes.
fn below_floor(floors: &mut Vec<(Arc<str>, u64)>, p: &Publication) -> bool {
    let Some(i) = floors.iter().position(|(t, _)| **t == *p.topic) else {
        return false;
    };
    match p.offset {
        Some(o) if o <= floors[i].1 => true,
        _ => {
            floors.swap_remove(i);
            false
        }
    }
}

/// One connection's outbound queue; shared between the hub (producers) and the transport.
pub struct Outbox {
    state: Mutex<State>,
    wakeup: Wakeup,
    max_frames: u32,
    max_bytes: u32,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            wakeup: Wakeup::default(),
            max_frames: max_frames.min(u32::MAX as usize) as u32,
            max_bytes: max_bytes.min(u32::MAX as usize) as u32,
        }
    }

    /// Queues a message. Returns `false` if the outbox is closed (or just closed because the
    /// client is too slow); the message is dropped then.
    pub fn push(&self, item: Outgoing) -> bool {
        let mut st = self.state.lock();
        if !self.admit(&mut st, item.weight()) {
            drop(st);
            self.wakeup.notify();
            return false;
        }
        self.queue(st, item);
        true
    }

    /// Queues a broadcast; while [`Outbox::hold`] is in effect it waits aside. Returns
    /// `false` if the outbox is closed (or just closed: slow consumer).
    pub fn push_publication(&self, p: &Arc<Publication>, with_offset: bool) -> bool {
        self.deliver(p, with_offset) != Delivery::Dropped
    }

    /// Hands a broadcast to this connection: written straight to its socket (write-through),
    /// or queued (held aside while [`Outbox::hold`] is in effect). One lock per subscriber per
    /// broadcast: this is the fan-out's inner loop.
    ///
    /// Write-through: with a socket attached, nothing queued or held, nothing left unsent and
    /// the task not writing, the frame is written to the socket here; only what the socket did
    /// not take is left to the task (see the module's documentation).
    pub fn deliver(&self, p: &Arc<Publication>, with_offset: bool) -> Delivery {
        let mut st = self.state.lock();
        if !st.floors.is_empty() && below_floor(&mut st.floors, p) {
            return if st.close.is_none() {
                Delivery::Queued
            } else {
                Delivery::Dropped
            };
        }
        if let Some(direct) = st.direct {
            if !st.writing
                && st.queue.is_empty()
                && st.unsent.is_none()
                && st.held.is_none()
                && st.close.is_none()
            {
                match write_through(direct, p, with_offset) {
                    WriteThrough::Whole => {
                        drop(st);
                        p.written();
                        return Delivery::Written;
                    }
                    WriteThrough::Part(unsent) => {
                        st.unsent = Some(unsent);
                        drop(st);
                        self.wakeup.notify();
                        return Delivery::Partial;
                    }
                    // Queued as before; an error will be the task's to find on its own write.
                    WriteThrough::Nothing => {}
                }
            }
        }
        if !self.admit(&mut st, p.frame.len()) {
            drop(st);
            self.wakeup.notify();
            return Delivery::Dropped;
        }
        if let Some(held) = st.held.as_mut() {
            held.push(Outgoing::broadcast(p.clone(), with_offset));
            return Delivery::Queued;
        }
        self.queue(st, Outgoing::broadcast(p.clone(), with_offset));
        Delivery::Queued
    }

    /// Counts `weight` more bytes, or closes the outbox as a slow consumer (dropping what was
    /// queued, in the same critical section) when the limits would be passed.
    fn admit(&self, st: &mut State, weight: usize) -> bool {
        if st.close.is_some() {
            return false;
        }
        let queued = st.queue.len() + st.held.as_ref().map_or(0, Vec::len);
        if queued >= self.max_frames as usize || st.bytes + weight > self.max_bytes as usize {
            st.queue = VecDeque::new();
            st.held = None;
            st.bytes = 0;
            st.close = Some(CloseReason {
                code: close_codes::SLOW_CONSUMER,
                reason: "slow consumer: outbound queue full",
            });
            crate::metrics::slow_consumer_closed();
            return false;
        }
        st.bytes += weight;
        true
    }

    fn queue(&self, mut st: parking_lot::MutexGuard<'_, State>, item: Outgoing) {
        let was_empty = st.queue.is_empty();
        st.queue.push_back(item);
        drop(st);
        if was_empty {
            self.wakeup.notify();
        }
    }

    /// Lets the fan-out write broadcasts straight to `socket`, encoded for `vsn`, while the
    /// queue is empty (write-through). The caller must call [`Outbox::detach_socket`] before
    /// the socket is closed.
    pub fn attach_socket(&self, socket: RawSocket, vsn: Vsn) {
        self.state.lock().direct = Some(Direct { socket, vsn });
    }

    /// Stops the write-through: from now on nothing writes to the attached socket but the
    /// connection's task, which may close it. Returns the rest of a frame the fan-out wrote in
    /// part, which must be written before anything else goes to the socket.
    pub fn detach_socket(&self) -> Option<Box<Unsent>> {
        let mut st = self.state.lock();
        st.direct = None;
        st.unsent.take()
    }

    /// The connection's task is about to write to the socket: until [`Outbox::end_write`] the
    /// fan-out queues. Moves every queued message into `out`; returns the rest of a frame the
    /// fan-out wrote in part (to be written first) and the close request, if any.
    pub fn begin_write(
        &self,
        out: &mut Vec<Outgoing>,
    ) -> (Option<Box<Unsent>>, Option<CloseReason>) {
        let mut st = self.state.lock();
        st.writing = true;
        (st.unsent.take(), drain(&mut st, out))
    }

    /// The connection's task is about to write a frame of its own (a pong, the echo of a
    /// close): until [`Outbox::end_write`] the fan-out queues. Returns the rest of a frame the
    /// fan-out wrote in part, to be written first.
    pub fn begin_control_write(&self) -> Option<Box<Unsent>> {
        let mut st = self.state.lock();
        st.writing = true;
        st.unsent.take()
    }

    /// The task's write is over: the fan-out may write through again once the queue is empty.
    pub fn end_write(&self) {
        self.state.lock().writing = false;
    }

    /// Starts holding broadcasts aside (replies still go straight to the queue).
    pub fn hold(&self) {
        let mut st = self.state.lock();
        if st.held.is_none() {
            st.held = Some(Vec::new());
        }
    }

    /// Ends the hold: held broadcasts join the queue in arrival order, except those of `topic`
    /// at or below `replayed_up_to` (already sent by the replay); later live ones at or below
    /// it are dropped too (see `State::floors`).
    pub fn release(&self, topic: &str, replayed_up_to: u64) {
        let mut st = self.state.lock();
        st.floors.retain(|(t, _)| **t != *topic);
        if replayed_up_to > 0 {
            st.floors.push((Arc::from(topic), replayed_up_to));
        }
        let Some(held) = st.held.take() else {
            return;
        };
        let mut queued = false;
        for item in held {
            let duplicate = item.publication().is_some_and(|p| {
                &*p.topic == topic && p.offset.is_some_and(|o| o <= replayed_up_to)
            });
            if duplicate {
                st.bytes = st.bytes.saturating_sub(item.weight());
            } else {
                st.queue.push_back(item);
                queued = true;
            }
        }
        drop(st);
        if queued {
            self.wakeup.notify();
        }
    }

    /// Asks the connection to close after writing what is already queued.
    /// The first close wins.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut st = self.state.lock();
        if st.close.is_none() {
            st.close = Some(CloseReason { code, reason });
        }
        drop(st);
        self.wakeup.notify();
    }

    /// The close requested, if any.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.state.lock().close.clone()
    }

    /// Messages waiting to be written (metrics).
    pub fn depth(&self) -> usize {
        let st = self.state.lock();
        st.queue.len() + st.held.as_ref().map_or(0, Vec::len)
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// Moves every queued message into `out` and returns the close request, if any.
    /// Frees the queue's memory once it is empty.
    pub fn drain_into(&self, out: &mut Vec<Outgoing>) -> Option<CloseReason> {
        drain(&mut self.state.lock(), out)
    }

    /// Completes when something was queued or a close was requested since the last drain.
    /// Meant for one consumer at a time: of two tasks waiting at once, only the last to wait
    /// is woken (see `outbox/wakeup.rs`).
    pub fn changed(&self) -> impl std::future::Future<Output = ()> + '_ {
        // Not an `async fn`: its future would add a wrapper to every idle connection's task.
        self.wakeup.wait()
    }
}

/// Moves every queued message into `out` and returns the close request, if any.
fn drain(st: &mut State, out: &mut Vec<Outgoing>) -> Option<CloseReason> {
    // The queue's buffer goes with its items (no copy when `out` is empty): an idle
    // connection's outbox holds no buffer between deliveries.
    let queue = std::mem::take(&mut st.queue);
    if out.is_empty() {
        *out = Vec::from(queue);
    } else {
        out.extend(queue);
    }
    st.bytes = st
        .held
        .as_ref()
        .map_or(0, |h| h.iter().map(Outgoing::weight).sum());
    st.close.clone()
}

/// What a write-through did.
enum WriteThrough {
    /// The whole frame was written.
    Whole,
    /// Some of it: the rest is the task's.
    Part(Box<Unsent>),
    /// Nothing (`WouldBlock`, an error, or a frame that could not be encoded): queue it.
    Nothing,
}

/// Writes `p`'s frame for `direct.vsn` to `direct.socket` (called under the outbox's lock).
fn write_through(direct: Direct, p: &Arc<Publication>, with_offset: bool) -> WriteThrough {
    let Ok(frame) = p.frame_for(direct.vsn, with_offset) else {
        return WriteThrough::Nothing;
    };
    let (op, payload) = match frame {
        Frame::Text(b) => (OP_TEXT, b),
        Frame::Binary(b) => (OP_BINARY, b),
    };
    let mut header = [0u8; 10];
    let header_len = encode_header(op, payload.len(), &mut header);
    match direct.socket.send(&header[..header_len], &payload) {
        Ok(n) if n == header_len + payload.len() => WriteThrough::Whole,
        Ok(0) | Err(_) => WriteThrough::Nothing,
        Ok(written) => WriteThrough::Part(Box::new(Unsent {
            header,
            header_len: header_len as u8,
            payload,
            written,
            publication: p.clone(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(topic: &str) -> Outgoing {
        Outgoing::Push(Box::new(Push {
            join_ref: None,
            msg_ref: None,
            topic: topic.into(),
            event: "e",
            payload: Payload::empty_object(),
        }))
    }

    /// The encoded text of what was drained.
    fn texts(out: &[Outgoing]) -> Vec<String> {
        out.iter()
            .map(|o| String::from_utf8(o.encode(Vsn::V2).unwrap().bytes().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn overflow_closes_as_slow_consumer_and_drops_the_queue() {
        let o = Outbox::new(2, 1000);
        assert!(o.push(item("x")));
        assert!(o.push(item("x")));
        assert!(!o.push(item("x")));
        let mut out = Vec::new();
        let close = o.drain_into(&mut out);
        assert!(out.is_empty());
        assert_eq!(close.unwrap().code, close_codes::SLOW_CONSUMER);
    }

    #[test]
    fn hold_then_release_drops_replayed_duplicates_and_keeps_order() {
        let o = Outbox::new(100, 100_000);
        o.hold();
        let p = |topic: &str, offset: Option<u64>| {
            let mut p = Publication::new(topic, "e", Payload::empty_object(), None).unwrap();
            if let Some(off) = offset {
                p.set_offset(off).unwrap();
            }
            let p = Arc::new(p);
            assert!(o.push_publication(&p, true));
            String::from_utf8(p.frame.bytes().to_vec()).unwrap()
        };
        let a4 = p("a", Some(4));
        let b1 = p("b", None);
        let a6 = p("a", Some(6));
        assert!(o.push(item("reply")));
        o.release("a", 5);
        let mut out = Vec::new();
        o.drain_into(&mut out);
        let out = texts(&out);
        assert_eq!(out, vec![texts(&[item("reply")])[0].clone(), b1, a6]);
        assert!(!out.contains(&a4));
    }

    #[test]
    fn live_copies_of_replayed_broadcasts_arriving_after_the_release_are_dropped() {
        let o = Outbox::new(100, 100_000);
        let p = |topic: &str, offset: Option<u64>| {
            let mut p = Publication::new(topic, "e", Payload::empty_object(), None).unwrap();
            if let Some(off) = offset {
                p.set_offset(off).unwrap();
            }
            Arc::new(p)
        };
        let text = |p: &Arc<Publication>| String::from_utf8(p.frame.bytes().to_vec()).unwrap();
        o.hold();
        o.release("a", 5);
        // Late live copies of 4 and 5 (in the replay), then 6, then a late-looking 3 that can
        // only belong to a new history (the floor ended at 6).
        let (a4, a5, b2, a6, a3) = (
            p("a", Some(4)),
            p("a", Some(5)),
            p("b", Some(2)),
            p("a", Some(6)),
            p("a", Some(3)),
        );
        for x in [&a4, &a5, &b2, &a6, &a3] {
            assert!(o.push_publication(x, true));
        }
        let mut out = Vec::new();
        o.drain_into(&mut out);
        assert_eq!(texts(&out), vec![text(&b2), text(&a6), text(&a3)]);
        // A release without a replay lifts the topic's floor.
        o.hold();
        o.release("c", 9);
        o.hold();
        o.release("c", 0);
        let c1 = p("c", Some(1));
        assert!(o.push_publication(&c1, true));
        let mut out = Vec::new();
        o.drain_into(&mut out);
        assert_eq!(texts(&out), vec![text(&c1)]);
    }

    #[test]
    fn a_broadcast_is_shared_not_copied() {
        let o = Outbox::new(10, 10_000);
        let p = Arc::new(Publication::new("t", "e", Payload::empty_object(), None).unwrap());
        assert!(o.push_publication(&p, false));
        let mut out = Vec::new();
        o.drain_into(&mut out);
        let Outgoing::Broadcast(got) = &out[0] else {
            panic!("expected a broadcast")
        };
        assert!(Arc::ptr_eq(got, &p));
    }

    #[test]
    fn refs_count_against_the_byte_limit() {
        let o = Outbox::new(100, 10_000);
        let echoed = Outgoing::Reply(Box::new(Reply {
            join_ref: None,
            msg_ref: Some("r".repeat(6_000).into()),
            topic: "t".into(),
            status: "ok",
            response: Payload::empty_object(),
        }));
        assert!(o.push(echoed.clone()));
        assert!(!o.push(echoed), "two 6 kB refs passed a 10 kB limit");
    }

    #[test]
    fn a_queued_message_is_two_words() {
        assert_eq!(std::mem::size_of::<Outgoing>(), 16);
    }

    #[test]
    fn byte_limit_counts_too() {
        let o = Outbox::new(100, 100);
        let big = |n: usize| {
            Outgoing::Push(Box::new(Push {
                join_ref: None,
                msg_ref: None,
                topic: "t".into(),
                event: "e",
                payload: Payload::json(&"x".repeat(n)).unwrap(),
            }))
        };
        assert!(o.push(big(40)));
        assert!(!o.push(big(40)));
    }

    #[test]
    fn close_keeps_queued_frames_and_first_reason() {
        let o = Outbox::new(10, 1000);
        assert!(o.push(item("a")));
        o.close(1012, "draining");
        o.close(1001, "other");
        assert!(!o.push(item("b")));
        let mut out = Vec::new();
        let close = o.drain_into(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            close,
            Some(CloseReason {
                code: 1012,
                reason: "draining"
            })
        );
    }
}
