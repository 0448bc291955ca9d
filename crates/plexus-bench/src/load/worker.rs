//! A load worker process: holds a slice of the subscribers (at most ~19,000 sockets, the
//! per-process file limit here), from its own loopback source addresses, on a multi-threaded
//! runtime. The coordinator drives it over stdin/stdout, one JSON line each way:
//!
//! * on start it connects and subscribes everyone, then prints
//!   `{"ready":N,"failed":F,"first_error":…,"secs":S}`;
//! * `take` prints `{"received":N,"hist":[[bucket,count],…],"closed":C,"closed_stalled":S,
//!   "stalled_close_codes":{"1013":N,"none":M}}` and zeroes the first two (`closed`: sockets of
//!   counted subscribers that ended, `closed_stalled`: those of stalled ones, and by the close
//!   code the server sent them, `none` when the socket ended without a close frame);
//! * `stall` makes every `stall_every`-th subscriber stop reading (a slow consumer) and stop
//!   counting; `resume` lets them read again (without counting), so that a socket the server
//!   closed while they stalled is seen to end; `quit` exits.

use super::adapter::{stamps, Proto, Step};
use super::histogram::Histogram;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_websockets::{ClientBuilder, Message};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub proto: Proto,
    /// `ws://` or `wss://` URL; `{topic}`, `{token}` and `{i}` are filled in per subscriber.
    /// Several URLs separated by whitespace spread the subscribers over them.
    pub url: String,
    /// Subscribers `from..to` of the whole run.
    pub from: usize,
    pub to: usize,
    pub topic: String,
    /// Subscriber i joins `topic` (one topic) or `topic_<i mod topics>`.
    pub topics: usize,
    pub sources: Vec<IpAddr>,
    /// HS256 secret: `{token}` is a JWT for user `u<i>` (each subscriber a distinct user).
    pub secret: Option<String>,
    /// PEM of the CA that signed the server's certificate, for `wss://`.
    pub ca_pem: Option<String>,
    pub concurrency: usize,
    /// With `stall`, subscribers with `i % stall_every == 0` stop reading (0: none).
    pub stall_every: usize,
    /// `wss://` without TLS session resumption (every handshake a full one).
    #[serde(default)]
    pub no_resume: bool,
    /// Reconnect storm (`storm.rs`): a refused or failed connect is retried with phoenix.js's
    /// backoff, and each subscriber's time until joined is recorded.
    #[serde(default)]
    pub storm: bool,
    /// `wss://` with resumption: each subscriber has its own TLS session store (as each
    /// browser has) and connects, joins and leaves once before the measured connect, so the
    /// measured one resumes its own session — a reconnect. The worker prints
    /// `{"warm":S}` and waits for `go` on stdin before the measured connect.
    #[serde(default)]
    pub tls_warmup: bool,
}

pub fn topic_of(base: &str, topics: usize, i: usize) -> String {
    if topics <= 1 {
        base.to_owned()
    } else {
        format!("{base}_{}", i % topics)
    }
}

/// Subscriber i's URL among several separated by whitespace (e.g. one per node of a cluster):
/// URL (i / topics) mod count, so that every topic has subscribers behind every URL (subscriber
/// i joins topic i mod topics).
pub fn url_of(urls: &str, topics: usize, i: usize) -> &str {
    let n = urls.split_whitespace().count().max(1);
    urls.split_whitespace()
        .nth((i / topics.max(1)) % n)
        .unwrap_or_default()
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Shared {
    received: AtomicU64,
    closed: AtomicU64,
    closed_stalled: AtomicU64,
    /// How the stalled subscribers' sockets ended: by the server's close code, or `none`
    /// (EOF or reset, no close frame). At most one entry per close code.
    stalled_close_codes: Mutex<BTreeMap<String, u64>>,
    hist: Histogram,
    stalled: AtomicBool,
    /// `true` once `resume` came: stalled subscribers read again.
    resume: tokio::sync::watch::Sender<bool>,
}

/// What connecting everyone cost the client side, beyond ready/failed.
#[derive(Default)]
pub(super) struct ConnectStats {
    /// `wss://` handshakes that resumed a TLS session.
    pub resumed: AtomicU64,
    /// Connect attempts retried (storm).
    pub retries: AtomicU64,
    /// Time from the start until each subscriber was joined (storm), µs.
    pub joined_after: Histogram,
}

pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(super) type Ws = tokio_websockets::WebSocketStream<Box<dyn Io>>;

fn tls_config(pem_path: &str, resume: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(pem_path).map_err(|e| format!("{pem_path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("bad PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad certificate: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // rustls resumes by default from an in-memory store of 256 server names (here one: every
    // subscriber connects to the same address), each holding the last few TLS 1.3 tickets;
    // every resumed connection receives fresh ones, as a browser's would.
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// Opens one subscriber's socket and subscribes it; counts a resumed TLS session in `stats`.
pub(super) async fn subscribe(
    spec: &Spec,
    i: usize,
    token: Option<&str>,
    tls: Option<Arc<rustls::ClientConfig>>,
    stats: &ConnectStats,
) -> Result<Ws, String> {
    let topic = topic_of(&spec.topic, spec.topics, i);
    let url = url_of(&spec.url, spec.topics, i)
        .replace("{topic}", &topic)
        .replace("{i}", &i.to_string())
        .replace("{token}", token.unwrap_or(""));
    let uri: http::Uri = url.parse().map_err(|e| format!("bad url {url}: {e}"))?;
    let host = uri.host().unwrap_or("127.0.0.1").to_owned();
    let secure = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("loopback IPs only: {host}"))?;
    if !ip.is_loopback() {
        return Err(format!("loopback addresses only, not {ip}"));
    }
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if !spec.sources.is_empty() {
        socket
            .bind(SocketAddr::new(spec.sources[i % spec.sources.len()], 0))
            .map_err(|e| format!("bind: {e}"))?;
    }
    let stream = socket
        .connect(SocketAddr::new(ip, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let io: Box<dyn Io> = match (secure, tls) {
        (true, Some(config)) => {
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("server name {host}: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                stats.resumed.fetch_add(1, Ordering::Relaxed);
            }
            Box::new(tls)
        }
        (true, None) => return Err("wss:// needs --ca-pem".into()),
        (false, _) => Box::new(stream),
    };
    let (mut ws, _) = ClientBuilder::from_uri(uri)
        .connect_on(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    for hello in spec.proto.hello(&topic) {
        ws.send(Message::text(hello))
            .await
            .map_err(|e| e.to_string())?;
    }
    if spec.proto.ready_on_open() {
        return Ok(ws);
    }
    loop {
        let msg = ws
            .next()
            .await
            .ok_or("closed before subscribed")?
            .map_err(|e| e.to_string())?;
        let Some(text) = msg.as_text() else { continue };
        match spec.proto.before_ready(text, &topic) {
            Step::Ready => return Ok(ws),
            Step::Reply(r) => ws.send(Message::text(r)).await.map_err(|e| e.to_string())?,
            Step::Refused(why) => return Err(format!("refused: {why}")),
            Step::Nothing => {}
        }
    }
}

/// Reads a subscribed socket until it closes, counting and timing every message.
async fn read(mut ws: Ws, proto: Proto, shared: Arc<Shared>, stalls: bool) {
    let mut hb = tokio::time::interval(Duration::from_secs(25));
    hb.tick().await;
    let mut close_code = None;
    loop {
        // Biased: the heartbeat's timer is polled only when no frame is ready.
        tokio::select! {
            biased;
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else { break };
                if msg.is_close() {
                    close_code = msg.as_close().map(|(code, _)| u16::from(code));
                    continue;
                }
                if stalls && shared.stalled.load(Ordering::Relaxed) && !*shared.resume.borrow() {
                    // A slow consumer: holds its socket and reads nothing more until `resume`.
                    let _ = shared.resume.subscribe().wait_for(|r| *r).await;
                }
                let now = now_us();
                let payload: &[u8] = msg.as_payload();
                let mut n = 0;
                for sent in stamps(payload) {
                    n += 1;
                    shared.hist.record(now.saturating_sub(sent));
                }
                if n > 0 {
                    if !(shared.stalled.load(Ordering::Relaxed) && stalls) {
                        shared.received.fetch_add(n, Ordering::Relaxed);
                    }
                } else if let Some(Step::Reply(r)) = msg.as_text().map(|t| proto.control(t)) {
                    if ws.send(Message::text(r)).await.is_err() {
                        break;
                    }
                }
            }
            _ = hb.tick(), if proto.heartbeat().is_some() => {
                if let Some(h) = proto.heartbeat() {
                    if ws.send(Message::text(h)).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    if stalls && shared.stalled.load(Ordering::Relaxed) {
        shared.closed_stalled.fetch_add(1, Ordering::Relaxed);
        let code = close_code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        if let Ok(mut codes) = shared.stalled_close_codes.lock() {
            *codes.entry(code).or_default() += 1;
        }
    } else {
        shared.closed.fetch_add(1, Ordering::Relaxed);
    }
}

pub async fn run(spec: Spec) -> Result<(), String> {
    let spec = Arc::new(spec);
    let shared = Arc::new(Shared::default());
    let tls = match &spec.ca_pem {
        Some(p) => Some(tls_config(p, !spec.no_resume)?),
        None => None,
    };
    let stats = Arc::new(ConnectStats::default());
    let issuer = spec
        .secret
        .as_ref()
        .map(|s| plexus_core::auth::Issuer::hs256(s.as_bytes()));
    let sem = Arc::new(Semaphore::new(spec.concurrency.max(1)));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    // One TLS config (and session store) per subscriber with a warm-up; else one shared.
    let mut own_tls: Vec<Option<Arc<rustls::ClientConfig>>> = Vec::new();
    if let (true, Some(base)) = (spec.tls_warmup, &tls) {
        let warm_started = Instant::now();
        let mut tasks = Vec::new();
        for i in spec.from..spec.to {
            let mut c = (**base).clone();
            c.resumption = rustls::client::Resumption::store(Arc::new(
                rustls::client::ClientSessionMemoryCache::new(1),
            ));
            let c = Arc::new(c);
            own_tls.push(Some(c.clone()));
            let permit = sem
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let token = match &issuer {
                Some(iss) => Some(
                    iss.issue(&format!("u{i}"), &[], None, 3600)
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let spec = spec.clone();
            let warm_stats = ConnectStats::default();
            tasks.push(tokio::spawn(async move {
                // Joined: the session tickets, sent after the handshake, have been read.
                let r = tokio::time::timeout(
                    Duration::from_secs(30),
                    subscribe(&spec, i, token.as_deref(), Some(c), &warm_stats),
                )
                .await;
                drop(permit);
                if let Ok(Ok(mut ws)) = r {
                    let _ = ws.close().await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        println!(
            "{}",
            serde_json::json!({"warm": warm_started.elapsed().as_secs_f64()})
        );
        match lines.next_line().await {
            Ok(Some(go)) if go.trim() == "go" => {}
            _ => return Ok(()),
        }
    }
    let started = Instant::now();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    for i in spec.from..spec.to {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let token = match &issuer {
            Some(iss) => Some(crate::bench_token(iss, &format!("u{i}"))?),
            None => None,
        };
        let tls = match own_tls.get(i - spec.from) {
            Some(own) => own.clone(),
            None => tls.clone(),
        };
        let (spec, shared, done, stats) =
            (spec.clone(), shared.clone(), done_tx.clone(), stats.clone());
        tokio::spawn(async move {
            let r = if spec.storm {
                super::storm::subscribe_retrying(&spec, i, token.as_deref(), tls, &stats, started)
                    .await
            } else {
                tokio::time::timeout(
                    Duration::from_secs(30),
                    subscribe(&spec, i, token.as_deref(), tls, &stats),
                )
                .await
                .unwrap_or_else(|_| Err("timed out".into()))
            };
            drop(permit);
            match r {
                Ok(ws) => {
                    let _ = done.send(Ok(()));
                    let stalls = spec.stall_every > 0 && i % spec.stall_every == 0;
                    read(ws, spec.proto, shared, stalls).await;
                }
                Err(e) => {
                    let _ = done.send(Err(e));
                }
            }
        });
    }
    drop(done_tx);
    let (mut ready, mut failed, mut first_error) = (0usize, 0usize, None);
    while let Some(r) = done_rx.recv().await {
        match r {
            Ok(()) => ready += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        if ready + failed == spec.to - spec.from {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "ready": ready, "failed": failed, "first_error": first_error, "secs": secs,
            "resumed": stats.resumed.load(Ordering::Relaxed),
            "retries": stats.retries.load(Ordering::Relaxed),
            "joined_after": stats.joined_after.take(),
        })
    );
    while let Ok(Some(cmd)) = lines.next_line().await {
        match cmd.trim() {
            "take" => println!(
                "{}",
                serde_json::json!({
                    "received": shared.received.swap(0, Ordering::Relaxed),
                    "hist": shared.hist.take(),
                    "closed": shared.closed.load(Ordering::Relaxed),
                    "closed_stalled": shared.closed_stalled.load(Ordering::Relaxed),
                    "stalled_close_codes": shared.stalled_close_codes.lock().map(|c| c.clone()).unwrap_or_default(),
                })
            ),
            "stall" => {
                shared.stalled.store(true, Ordering::Relaxed);
                println!("{{}}");
            }
            "resume" => {
                shared.resume.send_replace(true);
                println!("{{}}");
            }
            _ => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{topic_of, url_of};
    use std::collections::HashSet;

    #[test]
    fn several_urls_give_every_topic_subscribers_behind_each() {
        let urls = "ws://a/s ws://b/s";
        let mut seen = HashSet::new();
        for i in 0..40 {
            seen.insert((topic_of("t", 10, i), url_of(urls, 10, i)));
        }
        // 10 topics x 2 URLs, each pair used.
        assert_eq!(seen.len(), 20);
        assert_eq!(url_of(urls, 10, 9), "ws://a/s");
        assert_eq!(url_of(urls, 10, 10), "ws://b/s");
        assert_eq!(url_of("ws://one", 1, 7), "ws://one");
        assert_eq!(url_of("", 1, 7), "");
    }
}
