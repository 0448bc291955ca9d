//! Live connections per transport on this node: WebSockets and SSE streams are counted by
//! their routes with a guard that lives as long as the connection (LongPoll sessions are
//! counted by the core's session table). Read by `/metrics` and the admin console.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The process-wide counts.
pub struct TransportCounts {
    websocket: AtomicUsize,
    sse: AtomicUsize,
}

static COUNTS: TransportCounts = TransportCounts {
    websocket: AtomicUsize::new(0),
    sse: AtomicUsize::new(0),
};

/// Which counted transport a guard holds.
#[derive(Clone, Copy, Debug)]
pub enum Counted {
    WebSocket,
    Sse,
}

/// Counts one connection while it lives.
pub struct Guard(Counted);

impl TransportCounts {
    pub fn get() -> &'static TransportCounts {
        &COUNTS
    }

    pub fn websocket(&self) -> usize {
        self.websocket.load(Ordering::Relaxed)
    }

    pub fn sse(&self) -> usize {
        self.sse.load(Ordering::Relaxed)
    }

    fn counter(&self, which: Counted) -> &AtomicUsize {
        match which {
            Counted::WebSocket => &self.websocket,
            Counted::Sse => &self.sse,
        }
    }

    /// Counts a connection until the guard is dropped.
    pub fn open(which: Counted) -> Guard {
        COUNTS.counter(which).fetch_add(1, Ordering::Relaxed);
        Guard(which)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        COUNTS.counter(self.0).fetch_sub(1, Ordering::Relaxed);
    }
}
