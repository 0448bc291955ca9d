//! The console's node-to-node requests: another node's figures (for the overview) and a drain
//! asked from any node's console, carried by the broker's node calls.
//!
//! A node has one handler for the requests other nodes send it, and LongPoll already uses it
//! to forward polls. [`Dispatcher`] takes its place: requests that begin with [`PREFIX`] are
//! the console's, everything else goes on to LongPoll as before.

use super::views::node_stats;
use crate::state::AppState;
use bytes::Bytes;
use plexus_core::broker::RequestHandler;
use plexus_core::transport::longpoll::LongPoll;
use plexus_core::Node;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// How console requests begin (LongPoll's are JSON objects: they begin with `{`).
pub const PREFIX: &[u8] = b"plexus-admin:";
/// How long the console waits for another node's answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Routes requests from other nodes to the console or to LongPoll.
#[derive(Default)]
pub struct Dispatcher {
    longpoll: OnceLock<Weak<LongPoll>>,
    state: OnceLock<AppStateRef>,
}

/// What the console needs to answer (set once the router's state exists).
struct AppStateRef(AppState);

impl Dispatcher {
    /// Registers a dispatcher as `node`'s request handler. Call before `LongPoll::new` (whose
    /// own registration then does nothing), then [`Dispatcher::set_longpoll`] and
    /// [`Dispatcher::set_state`].
    pub fn install(node: &Node) -> Arc<Self> {
        let d = Arc::new(Dispatcher::default());
        let weak: Weak<dyn RequestHandler> = Arc::downgrade(&d) as _;
        node.broker().set_request_handler(weak);
        d
    }

    pub fn set_longpoll(&self, lp: &Arc<LongPoll>) {
        let _ = self.longpoll.set(Arc::downgrade(lp));
    }

    pub fn set_state(&self, state: AppState) {
        let _ = self.state.set(AppStateRef(state));
    }
}

#[async_trait::async_trait]
impl RequestHandler for Dispatcher {
    async fn handle_request(&self, request: Bytes) -> Bytes {
        if let Some(what) = request.strip_prefix(PREFIX) {
            let Some(AppStateRef(state)) = self.state.get() else {
                return Bytes::from_static(b"{\"error\":\"starting\"}");
            };
            let answer = match what {
                b"stats" => node_stats(state),
                b"drain" => {
                    drain_here(state);
                    json!({ "ok": true })
                }
                _ => json!({ "error": "unknown admin request" }),
            };
            return Bytes::from(answer.to_string());
        }
        match self.longpoll.get().and_then(Weak::upgrade) {
            Some(lp) => lp.handle_request(request).await,
            None => Bytes::new(),
        }
    }
}

/// Drains this node: new connections are refused (503, `/health` says draining) and live ones
/// are closed with 1012 so that they reconnect to another node. The process keeps running
/// (restart or stop it to serve again).
pub fn drain_here(state: &AppState) {
    tracing::info!("draining at the admin console's request");
    state.node.stop_admitting();
    state.node.drain();
}

/// Asks node `id` for its figures, or to drain.
pub async fn call(state: &AppState, id: &str, what: &str) -> Result<Value, String> {
    let mut request = PREFIX.to_vec();
    request.extend_from_slice(what.as_bytes());
    let answer = state
        .node
        .broker()
        .call_node(id, Bytes::from(request), CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&answer).map_err(|e| format!("unreadable answer from node {id}: {e}"))
}

/// The figures of every live node of the cluster, this one first; a node that does not answer
/// is listed with its `error`.
pub async fn all_node_stats(state: &AppState) -> Vec<Value> {
    let me = state.node.broker().node_id().to_owned();
    let mut out = vec![node_stats(state)];
    let ids = match state.node.broker().node_ids().await {
        Ok(ids) => ids,
        Err(e) => {
            out[0]["cluster_error"] = json!(e.to_string());
            return out;
        }
    };
    let others: Vec<String> = ids.into_iter().filter(|id| *id != me).collect();
    let calls = others.iter().map(|id| call(state, id, "stats"));
    let answers = futures_util::future::join_all(calls).await;
    for (id, answer) in others.iter().zip(answers) {
        out.push(match answer {
            Ok(v) => v,
            Err(e) => json!({ "id": id, "error": e }),
        });
    }
    out
}
