//! The bounded queue of encoded frames waiting to be written to one connection.
//!
//! Fan-out pushes a cheap clone of a shared [`Bytes`](bytes::Bytes) buffer into each
//! subscriber's outbox; the connection's own task drains it into its socket. An empty outbox
//! holds no heap memory. When a client stops reading and its queue passes the limits, the outbox
//! closes itself with [`close_codes::SLOW_CONSUMER`](crate::limits::close_codes::SLOW_CONSUMER)
//! and drops what was queued, so a stalled client never grows server memory without bound.

use crate::limits::close_codes;
use crate::protocol::Frame;
use parking_lot::Mutex;
use std::collections::VecDeque;
use tokio::sync::Notify;

/// Why and how a connection is to be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    close: Option<CloseReason>,
    /// While a join recovers history: broadcasts wait here, so that none is lost between
    /// subscribing and reading history, and duplicates of replayed ones can be dropped.
    held: Option<Vec<Held>>,
}

struct Held {
    frame: Frame,
    topic: std::sync::Arc<str>,
    offset: Option<u64>,
}

/// One connection's outbound queue; shared between the hub (producers) and the transport.
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    max_frames: u32,
    max_bytes: u32,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            max_frames: max_frames.min(u32::MAX as usize) as u32,
            max_bytes: max_bytes.min(u32::MAX as usize) as u32,
        }
    }

    /// Queues a frame. Returns `false` if the outbox is closed (or just closed because the
    /// client is too slow); the frame is dropped then.
    pub fn push(&self, frame: Frame) -> bool {
        self.enqueue(frame, None)
    }

    /// Queues a broadcast; while [`Outbox::hold`] is in effect it waits aside. One lock per
    /// subscriber per broadcast: this is the fan-out's inner loop.
    pub fn push_publication(&self, p: &crate::hub::Publication) -> bool {
        self.enqueue(p.frame.clone(), Some(p))
    }

    fn enqueue(&self, frame: Frame, publication: Option<&crate::hub::Publication>) -> bool {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return false;
        }
        let queued = st.frames.len() + st.held.as_ref().map_or(0, Vec::len);
        if queued >= self.max_frames as usize || st.bytes + frame.len() > self.max_bytes as usize {
            // Slow consumer: drop everything queued and close, in the same critical section.
            st.frames = VecDeque::new();
            st.held = None;
            st.bytes = 0;
            st.close = Some(CloseReason {
                code: close_codes::SLOW_CONSUMER,
                reason: "slow consumer: outbound queue full",
            });
            drop(st);
            self.notify.notify_one();
            return false;
        }
        st.bytes += frame.len();
        if let (Some(held), Some(p)) = (st.held.as_mut(), publication) {
            held.push(Held {
                frame,
                topic: p.topic.clone(),
                offset: p.offset,
            });
            return true;
        }
        let was_empty = st.frames.is_empty();
        st.frames.push_back(frame);
        drop(st);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Starts holding broadcasts aside (replies still go straight to the queue).
    pub fn hold(&self) {
        let mut st = self.state.lock();
        if st.held.is_none() {
            st.held = Some(Vec::new());
        }
    }

    /// Ends the hold: held broadcasts join the queue in arrival order, except those of `topic`
    /// at or below `replayed_up_to` (already sent by the replay).
    pub fn release(&self, topic: &str, replayed_up_to: u64) {
        let mut st = self.state.lock();
        let Some(held) = st.held.take() else {
            return;
        };
        let mut queued = false;
        for h in held {
            let duplicate = &*h.topic == topic && h.offset.is_some_and(|o| o <= replayed_up_to);
            if duplicate {
                st.bytes = st.bytes.saturating_sub(h.frame.len());
            } else {
                st.frames.push_back(h.frame);
                queued = true;
            }
        }
        drop(st);
        if queued {
            self.notify.notify_one();
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
        self.notify.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// Moves every queued frame into `out` and returns the close request, if any.
    /// Frees the queue's memory once it is empty.
    pub fn drain_into(&self, out: &mut Vec<Frame>) -> Option<CloseReason> {
        let mut st = self.state.lock();
        out.extend(st.frames.drain(..));
        st.bytes = st
            .held
            .as_ref()
            .map_or(0, |h| h.iter().map(|h| h.frame.len()).sum());
        if st.frames.capacity() > 16 {
            st.frames = VecDeque::new();
        }
        st.close.clone()
    }

    /// Completes when something was queued or a close was requested since the last drain.
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn overflow_closes_as_slow_consumer_and_drops_the_queue() {
        let o = Outbox::new(2, 1000);
        let f = Frame::Text(Bytes::from_static(b"x"));
        assert!(o.push(f.clone()));
        assert!(o.push(f.clone()));
        assert!(!o.push(f.clone()));
        let mut out = Vec::new();
        let close = o.drain_into(&mut out);
        assert!(out.is_empty());
        assert_eq!(close.unwrap().code, close_codes::SLOW_CONSUMER);
    }

    #[test]
    fn hold_then_release_drops_replayed_duplicates_and_keeps_order() {
        use crate::hub::Publication;
        use crate::protocol::Payload;
        let o = Outbox::new(100, 100_000);
        o.hold();
        let p = |topic: &str, offset: Option<u64>| {
            let mut p = Publication::new(topic, "e", Payload::empty_object(), None).unwrap();
            if let Some(off) = offset {
                p.set_offset(off).unwrap();
            }
            assert!(o.push_publication(&p));
            p.frame
        };
        let a4 = p("a", Some(4));
        let b1 = p("b", None);
        let a6 = p("a", Some(6));
        let reply = Frame::Text(Bytes::from_static(b"reply"));
        assert!(o.push(reply.clone()));
        o.release("a", 5);
        let mut out = Vec::new();
        o.drain_into(&mut out);
        assert_eq!(out, vec![reply, b1, a6]);
        assert!(!out.contains(&a4));
    }

    #[test]
    fn byte_limit_counts_too() {
        let o = Outbox::new(100, 10);
        assert!(o.push(Frame::Text(Bytes::from_static(b"123456"))));
        assert!(!o.push(Frame::Text(Bytes::from_static(b"123456"))));
    }

    #[test]
    fn close_keeps_queued_frames_and_first_reason() {
        let o = Outbox::new(10, 1000);
        assert!(o.push(Frame::Text(Bytes::from_static(b"a"))));
        o.close(1012, "draining");
        o.close(1001, "other");
        assert!(!o.push(Frame::Text(Bytes::from_static(b"b"))));
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
