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
use crate::protocol::{Frame, Vsn};
use crate::publication::Publication;
use crate::write_through::RawSocket;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

mod outgoing;
mod wakeup;
pub use outgoing::{CloseReason, Outgoing, Push, Reply};
use wakeup::Wakeup;

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
mod tests;
