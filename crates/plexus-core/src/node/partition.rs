//! The partition guard: a node cut off from Redis tells its clients before the cluster reaps it.
//!
//! When a node's heartbeat has not been refreshed for `node_timeout`, the other nodes reap it:
//! its users leave presence, its counters go, its disconnects are reported. A node that is
//! merely cut off from Redis (while the others still reach it) would go on serving clients that
//! believe they are present and joined. So once [`CUT_OFF_AFTER`] of `node_timeout` has passed
//! since its last successful heartbeat began, the node closes every connection with 1012
//! (Pusher: 4200; LongPoll and SSE sessions end), as a drain does, so that clients reconnect,
//! to a node that is still in the cluster. It keeps admitting connections, and it does this
//! once per outage: connections opened during the same outage are not closed by it (a total
//! Redis outage, where no node can be reaped, costs one reconnect, never a loop).

use super::Node;
use crate::limits::close_codes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The share of `node_timeout` without a successful heartbeat after which the node closes its
/// clients: 3/4, so that it acts before the others may reap it (at `node_timeout`, at the
/// earliest, counted from the start of the same heartbeat).
pub const CUT_OFF_AFTER: (u32, u32) = (3, 4);

/// The close reason clients are given.
pub const CUT_OFF_REASON: &str = "node cut off from the cluster, reconnect";

/// Starts the guard for `node` if its broker can be reaped (Redis), on the current runtime.
pub(super) fn guard(node: &Arc<Node>) {
    let Some(first) = node.broker.liveness() else {
        return;
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Fine enough to act well before the deadline: 50 ms for a 2 s timeout.
    let tick = (first.timeout / 40).clamp(Duration::from_millis(10), Duration::from_millis(500));
    let node = Arc::downgrade(node);
    rt.spawn(async move {
        // The heartbeat whose outage was acted on: a new outage starts from a newer one.
        let mut acted_on: Option<Instant> = None;
        loop {
            tokio::time::sleep(tick).await;
            let Some(node) = node.upgrade() else { return };
            let Some(l) = node.broker.liveness() else {
                return;
            };
            let silent = l.confirmed.elapsed();
            let limit = l.timeout * CUT_OFF_AFTER.0 / CUT_OFF_AFTER.1;
            if silent < limit || acted_on == Some(l.confirmed) {
                continue;
            }
            acted_on = Some(l.confirmed);
            node.cut_off(silent, l.timeout);
        }
    });
}

impl Node {
    /// Closes every connection: this node may soon be reaped by the others.
    fn cut_off(&self, silent: Duration, timeout: Duration) {
        let closed = self
            .connections
            .close_all(close_codes::SERVICE_RESTART, CUT_OFF_REASON);
        crate::metrics::cut_off_closed();
        tracing::warn!(
            connections = closed,
            silent_ms = silent.as_millis() as u64,
            node_timeout_ms = timeout.as_millis() as u64,
            "no Redis heartbeat for 3/4 of node_timeout: the other nodes may reap this one, \
             closing its clients (1012) so that they reconnect; new connections are still admitted"
        );
    }
}
