//! Node to node: requests another node answers (LongPoll polls and POSTs of the sessions it
//! holds, the admin console's requests), over Redis pub/sub. Each node subscribes to
//! `<prefix>:n:<node>`; a call publishes a signed `Q` message there and waits for the signed
//! `R` answer on its own channel, from the node it called (see [`signing`](super::signing):
//! unsigned, wrongly signed, stale and replayed messages are refused). Both directions are
//! bounded ([`MAX_NODE_REQUESTS`]).

use super::signing::{Kind, Refused};
use super::{err, RedisBroker};
use crate::broker::BrokerError;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

/// Calls to other nodes in flight, and requests from them being answered, at most.
pub(super) const MAX_NODE_REQUESTS: usize = 10_000;

impl RedisBroker {
    /// The channel where node `node` receives requests from the others, and their answers.
    pub(super) fn node_channel(&self, node: &str) -> String {
        self.node_key("n", node)
    }

    /// A message on this node's channel: a signed call or the answer to one of this node's.
    pub(super) async fn on_node_message(&self, channel: &str, data: &[u8]) {
        let opened = match self.signer.open(channel, data) {
            Ok(m) => m,
            Err(why) => return self.refused(channel, why),
        };
        match opened.kind {
            Kind::Reply => {
                let mut pending = self.pending.lock();
                // Only the node that was called answers a call.
                if pending
                    .get(&opened.id)
                    .is_some_and(|(node, _)| node == opened.from)
                {
                    if let Some((_, w)) = pending.remove(&opened.id) {
                        let _ = w.send(Bytes::copy_from_slice(opened.body));
                    }
                }
            }
            Kind::Call => {
                let Some(handler) = self.requests.get().and_then(Weak::upgrade) else {
                    return;
                };
                // Answered in a task of its own: a poll waits, the subscription must not.
                let Ok(permit) = self.serving.clone().try_acquire_owned() else {
                    self.failed("node request", &"too many requests from other nodes");
                    return;
                };
                // The answer goes to the caller's channel only (the signed sender).
                let reply_to = self.node_channel(opened.from);
                let id = opened.id;
                let body = Bytes::copy_from_slice(opened.body);
                let mut conn = self.conn.clone();
                let cluster = self.conn.is_cluster();
                let signer = self.signer.clone();
                let me = self.node_id.clone();
                tokio::spawn(async move {
                    let answer = handler.handle_request(body).await;
                    drop(permit);
                    let msg = signer.seal(&reply_to, Kind::Reply, &me, id, &answer);
                    let cmd = if cluster { "SPUBLISH" } else { "PUBLISH" };
                    let _ = redis::cmd(cmd)
                        .arg(&reply_to)
                        .arg(msg)
                        .query_async::<()>(&mut conn)
                        .await;
                });
            }
            Kind::Disconnect => self.refused(channel, Refused::Malformed),
        }
    }

    /// Drops a message that failed its checks: counted, logged once per burst.
    pub(super) fn refused(&self, channel: &str, why: Refused) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(100) {
            tracing::warn!(
                channel,
                reason = %why,
                refused = n + 1,
                "refused a node-to-node message (a node with another cluster secret, or \
                 someone else writing to Redis)"
            );
        }
    }

    pub(super) async fn call(
        &self,
        node: &str,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, BrokerError> {
        self.check_up()?;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= MAX_NODE_REQUESTS {
                return Err(err("too many calls to other nodes in flight"));
            }
            pending.insert(id, (node.to_owned(), tx));
        }
        let channel = self.node_channel(node);
        let msg = self
            .signer
            .seal(&channel, Kind::Call, &self.node_id, id, &request);
        let mut c = self.conn.clone();
        let delivered: Result<i64, _> = self.publish_cmd(&channel, &msg).query_async(&mut c).await;
        let answer = match delivered {
            Ok(0) => Err(err(format!("node {node} is gone"))),
            Ok(_) => tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| err(format!("node {node} did not answer in time")))
                .and_then(|r| r.map_err(|_| err("the call was dropped"))),
            Err(e) => Err(err(e)),
        };
        if answer.is_err() {
            self.pending.lock().remove(&id);
        }
        answer
    }
}
