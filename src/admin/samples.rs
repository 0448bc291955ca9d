//! The series behind the console's charts: every [`INTERVAL`] a sampler task records this
//! node's connections (per transport) and its message rates, keeping the last [`KEEP`]
//! samples (five minutes) in a ring. Fixed size: nothing a client does makes it grow.

use crate::transport_counts::TransportCounts;
use parking_lot::Mutex;
use plexus_core::transport::longpoll::LongPoll;
use plexus_core::Node;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: 150 × 2 s = 5 minutes.
pub const KEEP: usize = 150;

/// One sample.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sample {
    /// Unix time in milliseconds.
    pub t: u64,
    pub connections: usize,
    pub websocket: usize,
    pub longpoll: usize,
    pub sse: usize,
    /// Client messages handled per second since the previous sample.
    pub messages_in_per_sec: f64,
    /// Broadcasts published per second since the previous sample.
    pub broadcasts_per_sec: f64,
}

#[derive(Default)]
pub struct Samples {
    ring: Mutex<VecDeque<Sample>>,
}

impl Samples {
    /// The samples kept, oldest first.
    pub fn series(&self) -> Vec<Sample> {
        self.ring.lock().iter().copied().collect()
    }

    fn push(&self, s: Sample) {
        let mut ring = self.ring.lock();
        if ring.len() >= KEEP {
            ring.pop_front();
        }
        ring.push_back(s);
    }
}

/// Connections of this node now, per transport (LongPoll sessions, SSE streams, and the
/// WebSockets counted by the route).
pub fn transports(longpoll: &LongPoll) -> (usize, usize, usize) {
    let counts = TransportCounts::get();
    (counts.websocket(), longpoll.session_count(), counts.sse())
}

/// Samples every [`INTERVAL`] until the console is dropped.
pub async fn run(admin: Weak<super::Admin>, node: Arc<Node>, longpoll: Arc<LongPoll>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(std::time::Instant, u64, u64)> = None;
    loop {
        tick.tick().await;
        let Some(admin) = admin.upgrade() else {
            return;
        };
        let now = std::time::Instant::now();
        let msgs = node.counters.messages_in.load(Ordering::Relaxed);
        let casts = node.counters.broadcasts.load(Ordering::Relaxed);
        let (mut m_rate, mut b_rate) = (0.0, 0.0);
        if let Some((t0, m0, b0)) = last {
            let secs = now.duration_since(t0).as_secs_f64().max(0.001);
            m_rate = msgs.saturating_sub(m0) as f64 / secs;
            b_rate = casts.saturating_sub(b0) as f64 / secs;
        }
        last = Some((now, msgs, casts));
        let (websocket, lp, sse) = transports(&longpoll);
        admin.samples.push(Sample {
            t: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            connections: node.connection_count(),
            websocket,
            longpoll: lp,
            sse,
            messages_in_per_sec: (m_rate * 10.0).round() / 10.0,
            broadcasts_per_sec: (b_rate * 10.0).round() / 10.0,
        });
    }
}
