//! How this node reaches Redis, in one of three modes chosen by the URL:
//!
//! * `redis://[:password@]host:port[/db]` (or `rediss://`): **one Redis**. Commands go through
//!   one multiplexed connection that reconnects by itself; the subscription is a RESP2 pub/sub
//!   connection (`SUBSCRIBE`/`PUBLISH`).
//! * `redis+sentinel://[:password@]h1:p1,h2:p2,h3:p3/<master-name>` (or `rediss+sentinel://`):
//!   **Sentinel**. The primary is asked of the sentinels each time the subscription
//!   (re)connects; when it moved (a failover), the command connection is replaced, so commands
//!   follow within one reconnect. The password is the Redis servers'; sentinels are asked
//!   without one.
//! * `redis+cluster://[:password@]h1:p1,h2:p2,h3:p3` (or `rediss+cluster://`), any reachable
//!   seed nodes: **Redis Cluster**. Commands are routed by key slot (every key of a topic
//!   carries the topic's hash tag, see `RedisBroker::topic_key`); fan-out uses sharded pub/sub
//!   (`SSUBSCRIBE`/`SPUBLISH`) over RESP3 on the same per-shard connections, which the redis
//!   crate re-subscribes per slot after a slot moves, a failover or a reconnect.
//!
//! [`Conn`] hides the difference from the rest of the broker: it is a
//! [`redis::aio::ConnectionLike`], cloned per use like a connection manager. What differs —
//! multi-key pipelines, which a cluster refuses across slots — goes through
//! [`Conn::run_all`].

use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, Pipeline, PushInfo, RedisFuture, RedisResult, Value};
use std::sync::Arc;
use std::time::Duration;

/// Where the cluster's Redis is, parsed from the URL.
pub(super) enum Target {
    Single(redis::Client),
    Sentinel {
        sentinel: tokio::sync::Mutex<SentinelClient>,
        /// What the sentinels named last (`host:port`), to notice a failover.
        current: parking_lot::Mutex<Option<String>>,
    },
    Cluster(ClusterClient),
}

/// The parts of a `redis+cluster://` or `redis+sentinel://` URL.
#[derive(Debug, PartialEq)]
pub(super) struct MultiUrl {
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub hosts: Vec<(String, u16)>,
    /// Sentinel's master name (the path).
    pub name: Option<String>,
}

/// Parses `redis+cluster://` / `redis+sentinel://` URLs (`None` for any other scheme).
pub(super) fn parse_multi(url: &str) -> Option<Result<(bool, MultiUrl), String>> {
    let (scheme, rest) = url.split_once("://")?;
    let (tls, sentinel) = match scheme {
        "redis+cluster" => (false, false),
        "rediss+cluster" => (true, false),
        "redis+sentinel" => (false, true),
        "rediss+sentinel" => (true, true),
        _ => return None,
    };
    Some(parse_rest(rest, sentinel).map(|mut u| {
        u.tls = tls;
        (sentinel, u)
    }))
}

fn parse_rest(rest: &str, sentinel: bool) -> Result<MultiUrl, String> {
    // The credentials end at the last `@` (a password may hold `?`, `#` or `/`); a query or
    // fragment can only follow the hosts.
    let (auth, rest) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (username, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => (
                (!u.is_empty()).then(|| decode(u)),
                (!p.is_empty()).then(|| decode(p)),
            ),
            None => (None, Some(decode(a))),
        },
    };
    let (hosts, path) = match rest.split_once('/') {
        Some((h, p)) => (h, p.trim_end_matches('/')),
        None => (rest, ""),
    };
    let mut out = Vec::new();
    for h in hosts.split(',').filter(|h| !h.is_empty()) {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("invalid port in `{h}`"))?,
            ),
            None => (h, if sentinel { 26379 } else { 6379 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("empty host in `{h}`"));
        }
        out.push((host.to_owned(), port));
    }
    if out.is_empty() {
        return Err("no host: list at least one `host:port`".into());
    }
    let name = if sentinel {
        if path.is_empty() || path.contains('/') {
            return Err(
                "the path must be the master's name: redis+sentinel://h1:p1,h2:p2/<master-name>"
                    .into(),
            );
        }
        Some(decode(path))
    } else {
        None
    };
    Ok(MultiUrl {
        tls: false,
        username,
        password,
        hosts: out,
        name,
    })
}

/// Percent-decoding of the URL's user, password and name.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Target {
    /// The target `url` names (`tls_ca`: a CA certificate to trust for `rediss`).
    pub(super) fn open(
        url: &str,
        tls_ca: Option<&[u8]>,
        push: tokio::sync::mpsc::UnboundedSender<PushInfo>,
    ) -> Result<Target, String> {
        let certs = |ca: &[u8]| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.to_vec()),
        };
        let Some(multi) = parse_multi(url) else {
            let client = match tls_ca {
                Some(ca) => redis::Client::build_with_tls(url, certs(ca)),
                None => redis::Client::open(url),
            }
            .map_err(|e| e.to_string())?;
            return Ok(Target::Single(client));
        };
        let (sentinel, u) = multi?;
        if sentinel {
            let addrs = u
                .hosts
                .iter()
                .map(|(h, p)| {
                    if u.tls {
                        ConnectionAddr::TcpTls {
                            host: h.clone(),
                            port: *p,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(h.clone(), *p)
                    }
                })
                .collect::<Vec<_>>();
            let mut b = SentinelClientBuilder::new(
                addrs,
                u.name.clone().unwrap_or_default(),
                SentinelServerType::Master,
            )
            .map_err(|e| e.to_string())?;
            if let Some(p) = &u.password {
                b = b.set_client_to_redis_password(p);
            }
            if let Some(n) = &u.username {
                b = b.set_client_to_redis_username(n);
            }
            if u.tls {
                b = b.set_client_to_redis_tls_mode(redis::TlsMode::Secure);
                if let Some(ca) = tls_ca {
                    b = b
                        .set_client_to_redis_certificates(certs(ca))
                        .set_client_to_sentinel_certificates(certs(ca));
                }
            }
            let client = b.build().map_err(|e| e.to_string())?;
            return Ok(Target::Sentinel {
                sentinel: tokio::sync::Mutex::new(client),
                current: parking_lot::Mutex::new(None),
            });
        }
        let scheme = if u.tls { "rediss" } else { "redis" };
        let nodes: Vec<String> = u
            .hosts
            .iter()
            // An IPv6 literal goes back into brackets (`redis://[::1]:7000`).
            .map(|(h, p)| match h.contains(':') {
                true => format!("{scheme}://[{h}]:{p}"),
                false => format!("{scheme}://{h}:{p}"),
            })
            .collect();
        let mut b = ClusterClientBuilder::new(nodes)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2))
            .retries(3)
            .max_retry_wait(500);
        if let Some(p) = &u.password {
            b = b.password(p);
        }
        if let Some(n) = &u.username {
            b = b.username(n);
        }
        if let Some(ca) = tls_ca {
            b = b.certs(certs(ca));
        }
        Ok(Target::Cluster(b.build().map_err(|e| e.to_string())?))
    }

    /// The mode, for logs and the admin console.
    pub(super) fn mode(&self) -> &'static str {
        match self {
            Target::Single(_) => "single",
            Target::Sentinel { .. } => "sentinel",
            Target::Cluster(_) => "cluster",
        }
    }

    /// The client of the server to use now: the one server, or the primary the sentinels name
    /// (asked each time). `None` in cluster mode.
    pub(super) async fn direct_client(&self) -> Option<RedisResult<redis::Client>> {
        match self {
            Target::Single(c) => Some(Ok(c.clone())),
            Target::Sentinel { sentinel, .. } => {
                Some(sentinel.lock().await.async_get_client().await)
            }
            Target::Cluster(_) => None,
        }
    }

    /// Notes the primary the sentinels named; true when it changed (a failover).
    pub(super) fn primary_moved(&self, client: &redis::Client) -> bool {
        let Target::Sentinel { current, .. } = self else {
            return false;
        };
        let addr = client.get_connection_info().addr().to_string();
        let mut cur = current.lock();
        let moved = cur.as_deref().is_some_and(|c| c != addr);
        *cur = Some(addr);
        moved
    }

    /// The command connection.
    pub(super) async fn connect(&self) -> RedisResult<Conn> {
        match self {
            Target::Cluster(c) => Ok(Conn::Cluster(c.get_async_connection().await?)),
            _ => {
                let client = match self.direct_client().await {
                    Some(c) => c?,
                    None => unreachable_cluster()?,
                };
                self.primary_moved(&client);
                let m = manager(&client).await?;
                Ok(Conn::Direct(Arc::new(RwLock::new(m))))
            }
        }
    }
}

fn unreachable_cluster() -> RedisResult<redis::Client> {
    Err(redis::RedisError::from((
        redis::ErrorKind::Client,
        "no direct client in cluster mode",
    )))
}

/// A connection manager to one server (fails fast: short timeouts and few retries, so that
/// nothing waits long on a dead server).
pub(super) async fn manager(client: &redis::Client) -> RedisResult<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    client.get_connection_manager_with_config(cfg).await
}

/// The command connection of any mode (cheap to clone, like a connection manager).
#[derive(Clone)]
pub(super) enum Conn {
    /// One server, or Sentinel's primary (replaced after a failover).
    Direct(Arc<RwLock<ConnectionManager>>),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Replaces the server behind a direct connection (Sentinel named another primary).
    pub(super) fn replace(&self, m: ConnectionManager) {
        if let Conn::Direct(d) = self {
            *d.write() = m;
        }
    }

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Runs `cmds` and returns their replies in order: one pipeline on one server; in a
    /// cluster, where a pipeline must stay in one slot, each command on its own, concurrently.
    pub(super) async fn run_all(&self, cmds: Vec<Cmd>) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Conn::Direct(_) => {
                let mut pipe = redis::pipe();
                for c in cmds {
                    pipe.add_command(c);
                }
                let mut c = self.clone();
                pipe.query_async(&mut c).await
            }
            Conn::Cluster(cc) => {
                let futs = cmds.into_iter().map(|cmd| {
                    let mut c = cc.clone();
                    async move { cmd.query_async::<Value>(&mut c).await }
                });
                futures_util::future::join_all(futs)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }
}

impl Conn {
    /// Every key matching `pattern` (`SCAN`; in a cluster, on every primary).
    pub(super) async fn scan_match(&self, pattern: &str) -> RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        match self {
            Conn::Direct(_) => {
                let mut c = self.clone();
                let mut iter: redis::AsyncIter<String> =
                    redis::AsyncCommands::scan_match(&mut c, pattern).await?;
                while let Some(k) = iter.next_item().await {
                    keys.push(k?);
                }
            }
            Conn::Cluster(cc) => {
                let mut cc = cc.clone();
                for (host, port) in primaries(&mut cc).await? {
                    let mut cursor: u64 = 0;
                    loop {
                        let mut cmd = redis::cmd("SCAN");
                        cmd.arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(1000);
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let reply = cc.route_command(cmd, route).await?;
                        let (next, batch): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                        keys.extend(batch);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                }
            }
        }
        Ok(keys)
    }
}

/// The cluster's primaries that are not failing (`CLUSTER NODES`).
async fn primaries(cc: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(cc).await?;
    Ok(nodes
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let _id = f.next()?;
            let addr = f.next()?;
            let flags = f.next()?;
            if !flags.split(',').any(|x| x == "master") || flags.contains("fail") {
                return None;
            }
            let hostport = addr.split('@').next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect())
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Direct(d) => {
                let mut m = d.read().clone();
                Box::pin(async move { m.req_packed_command(cmd).await })
            }
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Direct(d) => {
                let mut m = d.read().clone();
                Box::pin(async move { m.req_packed_commands(pipeline, offset, count).await })
            }
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Direct(d) => d.read().get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_and_sentinel_urls_parse() {
        let (s, u) = parse_multi("redis+cluster://h1:7000,h2:7001,h3")
            .unwrap()
            .unwrap();
        assert!(!s);
        assert_eq!(
            u.hosts,
            vec![
                ("h1".into(), 7000),
                ("h2".into(), 7001),
                ("h3".into(), 6379)
            ]
        );
        let (s, u) = parse_multi("rediss+sentinel://:p%40ss@a:26379,b/mymaster")
            .unwrap()
            .unwrap();
        assert!(s && u.tls);
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.name.as_deref(), Some("mymaster"));
        assert_eq!(u.hosts[1], ("b".into(), 26379));
        assert!(parse_multi("redis://h:1").is_none());
        assert!(parse_multi("redis+sentinel://a:1").unwrap().is_err());
        assert!(parse_multi("redis+cluster://").unwrap().is_err());
        assert!(parse_multi("redis+cluster://h:x").unwrap().is_err());
        let (_, u) = parse_multi("redis+cluster://:a?b#c@h:1?x=1")
            .unwrap()
            .unwrap();
        assert_eq!(u.password.as_deref(), Some("a?b#c"));
        assert_eq!(u.hosts, vec![("h".into(), 1)]);
        let (_, u) = parse_multi("redis+cluster://[::1]:7000").unwrap().unwrap();
        assert_eq!(u.hosts, vec![("::1".into(), 7000)]);
    }
}
