//! The Redis broker's settings ([`RedisConfig`]), and how a Redis URL is written in logs
//! (password redacted).

use std::time::Duration;

/// Cluster settings.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` (one Redis),
    /// `redis+sentinel://h1:p1,h2:p2,h3:p3/<master-name>` (Sentinel) or
    /// `redis+cluster://h1:p1,h2:p2,h3:p3` (Redis Cluster); see `link.rs`.
    pub url: String,
    /// Key and channel prefix, so that several clusters can share one Redis.
    pub prefix: String,
    /// A node that stops refreshing its heartbeat for this long is dead: its presence leaves.
    pub node_timeout: Duration,
    /// For `rediss://` URLs: the CA certificate (PEM) to trust instead of the system roots.
    pub tls_ca: Option<Vec<u8>>,
    /// A topic's history keys expire this long after its last publish when its rule sets no
    /// TTL (`limits.history_idle_secs`): nothing in Redis lives forever.
    pub history_idle: Duration,
    /// What node-to-node messages are signed with (`redis.cluster_secret`, else the API key):
    /// the same on every node of the cluster. Never empty ([`RedisBroker::connect`](super::RedisBroker::connect) refuses).
    pub cluster_secret: String,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("node_timeout", &self.node_timeout)
            .field("tls_ca", &self.tls_ca.as_ref().map(|_| "<pem>"))
            .field("history_idle", &self.history_idle)
            .field("cluster_secret", &"<redacted>")
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "plexus".into(),
            node_timeout: Duration::from_secs(20),
            tls_ca: None,
            history_idle: Duration::from_secs(3600),
            cluster_secret: String::new(),
        }
    }
}

/// Redacts a password in a Redis URL for logs.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}
