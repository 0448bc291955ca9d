//! Node to node: requests another node answers (LongPoll polls and POSTs of the sessions it
//! holds), over Redis pub/sub. Each node subscribes to `<prefix>:n:<node>`; a call publishes
//! `Q <id> <from>\n<request>` there and waits for `R <id>\n<answer>` on its own channel.
//! Both directions are bounded ([`MAX_NODE_REQUESTS`]).

use super::{err, RedisBroker};
use crate::broker::BrokerError;
use bytes::Bytes;
use redis::AsyncCommands;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

/// Calls to other nodes in flight, and requests from them being answered, at most.
pub(super) const MAX_NODE_REQUESTS: usize = 10_000;

impl RedisBroker {
    /// The channel where node `node` receives requests from the others, and their answers.
    pub(super) fn node_channel(&self, node: &str) -> String {
        self.key(&["n", node])
    }

    /// A message on this node's channel: `Q <id> <from>\n<request>` or `R <id>\n<answer>`.
    pub(super) async fn on_node_message(&self, data: &[u8]) {
        let Some(nl) = data.iter().position(|b| *b == b'\n') else {
            return;
        };
        let header = String::from_utf8_lossy(&data[..nl]).into_owned();
        let body = Bytes::copy_from_slice(&data[nl + 1..]);
        let mut parts = header.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("R"), Some(id), None) => {
                let waiter = id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| self.pending.lock().remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(body);
                }
            }
            (Some("Q"), Some(id), Some(from)) => {
                let Some(handler) = self.requests.get().and_then(Weak::upgrade) else {
                    return;
                };
                // Answered in a task of its own: a poll waits, the subscription must not.
                let Ok(permit) = self.serving.clone().try_acquire_owned() else {
                    self.failed("node request", &"too many requests from other nodes");
                    return;
                };
                let reply_to = self.node_channel(from);
                let header = format!("R {id}\n");
                let mut conn = self.conn.clone();
                tokio::spawn(async move {
                    let answer = handler.handle_request(body).await;
                    drop(permit);
                    let mut msg = header.into_bytes();
                    msg.extend_from_slice(&answer);
                    let _ = conn.publish::<_, _, ()>(reply_to, msg).await;
                });
            }
            _ => {}
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
            pending.insert(id, tx);
        }
        let mut msg = format!("Q {id} {}\n", self.node_id).into_bytes();
        msg.extend_from_slice(&request);
        let mut c = self.conn.clone();
        let delivered: Result<i64, _> = c.publish(self.node_channel(node), msg).await;
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
