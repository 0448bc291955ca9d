//! The registry of a node's live connections: ids, their outboxes and users, so that the node
//! can close one user's connections (API disconnect, a cluster request) or all of them (drain).

use crate::auth::Identity;
use crate::outbox::Outbox;
use crate::ConnId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

struct Entry {
    outbox: Arc<Outbox>,
    sub: Arc<str>,
}

/// Live connections of this node.
pub struct Connections {
    live: Mutex<HashMap<ConnId, Entry>>,
    next_id: AtomicU64,
    draining: AtomicBool,
    /// Wakes [`Connections::until_draining`] when draining starts.
    drain_started: tokio::sync::Notify,
    /// Connections unregistered whose departures (their channels left in the cluster: the
    /// presence removal, the leave's diff) are not finished yet: a drain waits for them too.
    departing: Arc<AtomicUsize>,
}

/// Counts one connection as departing until dropped ([`Connections::departing`]).
pub struct Departing(Arc<AtomicUsize>);

impl Drop for Departing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            drain_started: tokio::sync::Notify::new(),
            departing: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Connections {
    /// Counts a connection whose teardown is still telling the cluster, until the guard is
    /// dropped: take it before unregistering.
    pub fn departing(&self) -> Departing {
        self.departing.fetch_add(1, Ordering::AcqRel);
        Departing(self.departing.clone())
    }

    /// Connections whose departures are not finished.
    pub fn departing_count(&self) -> usize {
        self.departing.load(Ordering::Acquire)
    }

    /// Registers a connection with a new outbox of the given bounds; `None` while draining.
    pub fn register(
        &self,
        identity: &Identity,
        max_frames: usize,
        max_bytes: usize,
    ) -> Option<(ConnId, Arc<Outbox>)> {
        if self.is_draining() {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Outbox::new(max_frames, max_bytes));
        self.live.lock().insert(
            id,
            Entry {
                outbox: outbox.clone(),
                sub: identity.sub.clone(),
            },
        );
        Some((id, outbox))
    }

    /// A connection's user changed (an anonymous connection signed in): closing that user's
    /// connections now closes this one too.
    pub fn set_user(&self, id: ConnId, sub: Arc<str>) {
        if let Some(e) = self.live.lock().get_mut(&id) {
            e.sub = sub;
        }
    }

    pub fn unregister(&self, id: ConnId) {
        self.live.lock().remove(&id);
    }

    pub fn count(&self) -> usize {
        self.live.lock().len()
    }

    /// Messages waiting in every outbox: `(total, deepest)`.
    pub fn outbox_depths(&self) -> (usize, usize) {
        let outboxes: Vec<Arc<Outbox>> = self
            .live
            .lock()
            .values()
            .map(|e| e.outbox.clone())
            .collect();
        outboxes
            .iter()
            .map(|o| o.depth())
            .fold((0, 0), |(sum, max), d| (sum + d, max.max(d)))
    }

    /// Asks every connection of user `sub` to close; returns how many.
    pub fn close_user(&self, sub: &str, code: u16, reason: &'static str) -> usize {
        let live = self.live.lock();
        let mut n = 0;
        for entry in live.values().filter(|e| &*e.sub == sub) {
            entry.outbox.close(code, reason);
            n += 1;
        }
        n
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Refuses new connections from now on (live ones stay).
    pub fn stop_admitting(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain_started.notify_waiters();
    }

    /// Completes once the node drains (at once if it already does).
    pub async fn until_draining(&self) {
        loop {
            let notified = self.drain_started.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    /// Refuses new connections from now on and asks every live one to close.
    pub fn drain(&self, code: u16, reason: &'static str) {
        self.stop_admitting();
        self.close_all(code, reason);
    }

    /// Asks every live connection to close (new ones are still admitted); returns how many.
    pub fn close_all(&self, code: u16, reason: &'static str) -> usize {
        let live = self.live.lock();
        for entry in live.values() {
            entry.outbox.close(code, reason);
        }
        live.len()
    }
}
