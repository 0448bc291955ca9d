//! A Redis cluster of real `plexus` nodes for the cluster suites (`cluster.rs`,
//! `cluster_history.rs`): one configuration, the nodes started on one `redis-server`, and
//! small helpers to read broadcasts and publish through a node's API.

use super::{RedisUrl, Server};
use plexus_client::protocol::Message;
use serde_json::Value;

/// The cluster suites' configuration: `room:*` with presence and history, `limited:*` with
/// one join per user, `plain:*` without either, `race:*` with a long history (publishers
/// racing readers must not outrun it on a loaded machine).
pub const CONFIG: &str = r#"
profile = "dev"
broker = "redis"
[redis]
node_timeout_secs = 2
[limits]
max_connections_per_user = 2
[[channels]]
topic = "room:*"
presence = true
history_size = 100
[[channels]]
topic = "limited:*"
max_per_user = 1
[[channels]]
topic = "plain:*"
[[channels]]
topic = "race:*"
history_size = 100000
"#;

pub async fn cluster(redis: &impl RedisUrl, n: usize) -> Vec<Server> {
    let url = redis.url();
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Server::start_with(Some(CONFIG), &[("PLEXUS_REDIS_URL", &url)]).await);
    }
    nodes
}

pub fn payload(m: &Message) -> Value {
    serde_json::from_str(m.payload.as_json().unwrap().get()).unwrap()
}

pub async fn broadcast(s: &Server, topic: &str, event: &str, body: Value) -> Value {
    s.broadcast(topic, event, body).await
}
