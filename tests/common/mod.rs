//! Test harness: starts the real `plexus` binary on a free port and talks to it over real
//! sockets (the Rust client for WebSocket, raw HTTP/1.1 for the API).
#![allow(dead_code)]

pub mod cluster;
pub mod hook_app;
pub mod pusher;
pub mod receiver;
pub mod redis_topology;
pub mod tokens;

use plexus_client::{Client, ConnectOptions};
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const API_KEY: &str = "test-api-key-0123456789";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    log_path: PathBuf,
    config_path: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Server {
    /// Dev profile with a fixed secret and API key.
    pub async fn start() -> Server {
        Self::start_with(None, &[]).await
    }

    /// Starts with an optional config file body and extra environment.
    pub async fn start_with(config: Option<&str>, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let dir = std::env::temp_dir();
        let tag = format!("plexus-test-{}-{port}", std::process::id());
        let log_path = dir.join(format!("{tag}.log"));
        let config_path = config.map(|c| {
            let p = dir.join(format!("{tag}.toml"));
            std::fs::write(&p, c).expect("write config");
            p
        });
        let mut s = Server {
            child: None,
            port,
            log_path,
            config_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.spawn().await;
        s
    }

    pub fn command(&self) -> Command {
        // PLEXUS_TEST_BIN: another build of the server (a before/after comparison).
        let bin = std::env::var_os("PLEXUS_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_plexus").into());
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PLEXUS_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("PLEXUS_JWT_SECRET", SECRET)
            .env("PLEXUS_API_KEY", API_KEY)
            .env("PLEXUS_LOG", "info,plexus_core=debug");
        if let Some(p) = &self.config_path {
            cmd.env("PLEXUS_CONFIG", p);
        }
        // Run a suite with a setting the servers would otherwise not get (the environment is
        // cleared above): `PLEXUS_WEBSOCKET_WRITE_THROUGH=1 cargo test --test channels`.
        for k in ["PLEXUS_WEBSOCKET_WRITE_THROUGH"] {
            if let Ok(v) = std::env::var(k) {
                cmd.env(k, v);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let child = self
            .command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn plexus");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _)) = self.http("GET", "/health", &[], "").await {
                return;
            }
            // A TLS server does not answer plain HTTP: wait for its log line instead.
            if self.log().contains("listening on https://") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("plexus exited early with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "server did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/socket", self.port)
    }

    pub fn token(&self, sub: &str) -> String {
        plexus_core::auth::Issuer::hs256(SECRET.as_bytes())
            .issue(sub, &[], None, 3600)
            .expect("token")
    }

    pub async fn client(&self, sub: &str) -> Client {
        Client::connect(ConnectOptions::new(self.url()).token(self.token(sub)))
            .await
            .expect("connect")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills the process with SIGKILL (no drain, no goodbye).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn restart(&mut self) {
        self.terminate();
        self.spawn().await;
    }

    /// `POST /api/broadcast` with the API key; asserts 200 and returns the JSON answer.
    #[allow(dead_code)] // not every test file publishes through the API
    pub async fn broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: serde_json::Value,
    ) -> serde_json::Value {
        let (st, resp) = self
            .post_broadcast(topic, event, payload)
            .await
            .expect("the API answers");
        assert_eq!(st, 200, "{resp}");
        json(&resp)
    }

    /// `POST /api/broadcast` of `{"n": n}` as event `msg`; the status (0: no answer).
    pub async fn try_broadcast(&self, topic: &str, n: u64) -> u16 {
        match self
            .post_broadcast(topic, "msg", serde_json::json!({ "n": n }))
            .await
        {
            Ok((st, _)) => st,
            Err(_) => 0,
        }
    }

    /// `POST /api/broadcast` with the API key, whatever the answer: (status, body).
    pub async fn post_broadcast(
        &self,
        topic: &str,
        event: &str,
        payload: serde_json::Value,
    ) -> std::io::Result<(u16, String)> {
        let auth = format!("Bearer {API_KEY}");
        let req = serde_json::json!({"topic": topic, "event": event, "payload": payload});
        self.http(
            "POST",
            "/api/broadcast",
            &[("Authorization", &auth)],
            &req.to_string(),
        )
        .await
    }

    /// Opens a LongPoll session for `sub` (`GET /socket/longpoll` with its token): asserts the
    /// 200 answer and returns the session token.
    pub async fn longpoll_session(&self, sub: &str) -> String {
        let token = self.token(sub);
        let (status, body) = self
            .http(
                "GET",
                &format!("/socket/longpoll?vsn=2.0.0&token={token}"),
                &[],
                "",
            )
            .await
            .expect("the server answers");
        assert_eq!(status, 200, "{body}");
        let session = json(&body)["token"].as_str().unwrap_or_default().to_owned();
        assert!(session.starts_with("plp."), "{body}");
        session
    }

    /// Signs in to the admin console with the API key (`POST /admin/api/session`); returns the
    /// `Authorization` header value of the session.
    pub async fn admin_session(&self) -> String {
        let body = serde_json::json!({ "secret": API_KEY }).to_string();
        let (st, resp) = self
            .http("POST", "/admin/api/session", &[], &body)
            .await
            .expect("the server answers");
        assert_eq!(st, 200, "{resp}");
        format!(
            "Bearer {}",
            json(&resp)["token"].as_str().unwrap_or_default()
        )
    }

    /// A raw HTTP/1.1 request; returns (status, body).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        let (status, _, body) = http_raw(self.port, method, path, headers, body).await?;
        Ok((status, body))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.log_path);
        if let Some(p) = &self.config_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A raw HTTP/1.1 request: (status, head, body). Reads until the server closes, or only the
/// head for a 101 response.
pub async fn http_raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("timeout"))??;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.starts_with(b"HTTP/1.1 101") && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text}")))?;
    Ok((status, head.to_owned(), body.to_owned()))
}

/// Headers of a WebSocket handshake.
pub fn ws_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The `plexus` binary with the test secrets, a free port and `env`, not started (for a test
/// that runs it to its exit, e.g. a refused configuration).
pub fn plexus_command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plexus"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PLEXUS_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("PLEXUS_JWT_SECRET", SECRET)
        .env("PLEXUS_API_KEY", API_KEY);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A private `redis-server` on a free port, stopped on drop; `stop`/`start` simulate outages.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        // Another test may take the free port between its pick and the bind: then the
        // redis-server here exits, and the port answers for someone else's. Picked again.
        for _ in 0..5 {
            let mut r = Redis {
                port: free_port(),
                child: None,
            };
            if r.try_restart() {
                return r;
            }
        }
        panic!("redis-server did not start on a free port in 5 tries");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, empty.
    pub fn restart(&mut self) {
        assert!(
            self.try_restart(),
            "port {} was taken by another process while this redis-server was down",
            self.port
        );
    }

    /// Starts on `self.port`; false when the port turned out to be another process's.
    fn try_restart(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        let pid = child.id().to_string();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false; // could not bind
                }
            }
            // Ours only if the process answering is the one started here.
            if let Ok(info) = redis_topology::info(self.port, "server") {
                if info.get("process_id") == Some(&pid) {
                    return true;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a cluster suite needs of its Redis: where it is.
pub trait RedisUrl {
    fn url(&self) -> String;
}

impl RedisUrl for Redis {
    fn url(&self) -> String {
        Redis::url(self)
    }
}

/// The Redis a mode-agnostic cluster test runs on: one `redis-server`, or, with
/// `PLEXUS_TEST_REDIS_MODE=cluster` / `sentinel`, a Redis Cluster (3 primaries + 3 replicas) or
/// a Sentinel setup (1 primary, 1 replica, 3 sentinels) of its own. `scripts/test` runs the
/// cluster suites once per mode.
pub enum SuiteRedis {
    Single(Redis),
    Cluster(redis_topology::RedisCluster),
    Sentinel(redis_topology::RedisSentinel),
}

impl SuiteRedis {
    pub async fn start() -> SuiteRedis {
        match std::env::var("PLEXUS_TEST_REDIS_MODE").as_deref() {
            Ok("cluster") => SuiteRedis::Cluster(redis_topology::RedisCluster::start().await),
            Ok("sentinel") => {
                SuiteRedis::Sentinel(redis_topology::RedisSentinel::start("plexus").await)
            }
            Ok("") | Ok("single") | Err(_) => SuiteRedis::Single(Redis::start()),
            Ok(other) => panic!("PLEXUS_TEST_REDIS_MODE={other}: single, cluster or sentinel"),
        }
    }
}

impl RedisUrl for SuiteRedis {
    fn url(&self) -> String {
        SuiteRedis::url(self)
    }
}

impl SuiteRedis {
    pub fn url(&self) -> String {
        match self {
            SuiteRedis::Single(r) => r.url(),
            SuiteRedis::Cluster(c) => c.url(),
            SuiteRedis::Sentinel(s) => s.url(),
        }
    }
}
