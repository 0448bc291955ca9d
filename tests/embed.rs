//! The embedding API (`plexus::embed`, docs/embedding.md) through real sockets: the example
//! program `examples/embed_axum.rs` run as its own process (its routes and Plexus's side by
//! side, joins decided by its Rust authorizer, a publish from its handler, presence, a drain
//! on SIGTERM), and an application built here whose authorizer misbehaves (panics, hangs,
//! answers too much) without taking a connection down.

mod common;

use common::http_raw;
use plexus::embed::{JoinAttempt, JoinAuthorizer, JoinDecision, Plexus, PublishError};
use plexus_client::{Client, ConnectOptions};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example's binary, beside the `plexus` binary this test was built with: `cargo test`
/// and `cargo nextest run` build examples with the tests. If it is missing or older than its
/// sources (a run of `cargo test --test embed` alone), it is built here first.
fn example_binary() -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_plexus"));
    let profile_dir = server.parent().expect("the binary's directory");
    let binary = profile_dir.join("examples").join("embed_axum");
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sources = ["examples/embed_axum.rs", "src", "crates/plexus-core/src"];
    let newest = sources
        .iter()
        .filter_map(|s| newest_mtime(&root.join(s)))
        .max();
    if built.is_some() && built >= newest {
        return binary;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "embed_axum", "--profile"])
        .arg(&profile)
        .arg("--target-dir")
        .arg(profile_dir.parent().expect("the target directory"))
        .current_dir(&root)
        .status()
        .expect("run cargo build --example embed_axum");
    assert!(status.success(), "cargo build --example embed_axum failed");
    binary
}

/// The latest modification time of a file, or of the files under a directory.
fn newest_mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| newest_mtime(&e.ok()?.path()))
        .max()
}

/// The example running on a free port; killed if the test ends before it stops.
struct Example {
    child: Child,
    port: u16,
    stdout: std::sync::mpsc::Receiver<String>,
}

impl Example {
    fn start() -> Example {
        let mut child = Command::new(example_binary())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("EMBED_AXUM_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the example");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the example says where it listens");
        let port = first
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
            .port();
        Example {
            child,
            port,
            stdout: rx,
        }
    }

    async fn token(&self, user: &str, role: Option<&str>) -> String {
        let path = match role {
            Some(r) => format!("/login?user={user}&role={r}"),
            None => format!("/login?user={user}"),
        };
        let (status, _, body) = http_raw(self.port, "GET", &path, &[], "").await.unwrap();
        assert_eq!(status, 200, "{body}");
        common::json(&body)["token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }

    async fn client(&self, token: String) -> Client {
        Client::connect(
            ConnectOptions::new(format!("ws://127.0.0.1:{}/socket", self.port)).token(token),
        )
        .await
        .expect("connect")
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_example_app_serves_its_routes_and_plexus_s_decides_joins_publishes_and_drains() {
    let mut app = Example::start();
    let port = app.port;

    // The application's own route, beside Plexus's.
    let (status, _, body) = http_raw(port, "GET", "/", &[], "").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("application's own page"), "{body}");
    // The HTTP API is not mounted unless asked for (the application's router has no such path).
    let (status, _, _) = http_raw(port, "POST", "/api/broadcast", &[], "{}")
        .await
        .unwrap();
    assert_eq!(status, 404);
    // Plexus's SSE endpoint is mounted: it refuses a request without a token as Plexus does.
    let (status, _, body) = http_raw(port, "GET", "/sse?topic=room:lobby", &[], "")
        .await
        .unwrap();
    assert!(matches!(status, 401 | 403), "{status} {body}");
    assert!(common::json(&body)["error"].is_string(), "{body}");

    // Allowed by the Rust authorizer: its reply and presence meta reach the client.
    let mut alice = app.client(app.token("alice", None).await).await;
    let reply = alice.join("room:lobby", json!({})).await.unwrap();
    assert!(reply.is_ok(), "{:?}", reply.json());
    assert_eq!(reply.json()["welcome"], "hello alice");
    let state = alice
        .recv_event_timeout("room:lobby", "presence_state", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("presence_state");
    let state: serde_json::Value =
        serde_json::from_str(state.payload.as_json().unwrap().get()).unwrap();
    assert_eq!(state["alice"]["metas"][0]["seat"], 1, "{state}");

    // Refused by the Rust authorizer, with its reason; the connection stays.
    let mut bob = app.client(app.token("bob", None).await).await;
    let refused = bob.join("room:vip", json!({})).await.unwrap();
    assert!(!refused.is_ok());
    assert_eq!(
        refused.reason().as_deref(),
        Some("the vip room is for vip members")
    );
    assert_eq!(refused.json()["retry"], false);
    let mut mallory = app.client(app.token("mallory", None).await).await;
    let refused = mallory.join("room:lobby", json!({})).await.unwrap();
    assert_eq!(refused.reason().as_deref(), Some("banned from every room"));
    // A role in the token lets another user in; bob's connection still works.
    let mut carol = app.client(app.token("carol", Some("vip")).await).await;
    assert!(carol.join("room:vip", json!({})).await.unwrap().is_ok());
    assert!(bob.join("room:lobby", json!({})).await.unwrap().is_ok());

    // Published from the application's handler (Rust code), received over the WebSocket.
    let (status, _, body) = http_raw(
        port,
        "POST",
        "/rooms/lobby/messages",
        &[],
        r#"{"text": "hello room"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let msg = alice
        .recv_event_timeout("room:lobby", "message", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the application's message");
    let payload: serde_json::Value =
        serde_json::from_str(msg.payload.as_json().unwrap().get()).unwrap();
    assert_eq!(
        payload,
        json!({"text": "hello room", "from": "the application"})
    );
    // A topic Plexus refuses is the application's 400, not a publish.
    let long_room = "x".repeat(300);
    let (status, _, body) = http_raw(
        port,
        "POST",
        &format!("/rooms/{long_room}/messages"),
        &[],
        r#"{"text": "x"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");

    // Presence read from Rust: alice and bob in the lobby (seats from the authorizer), not
    // mallory.
    let (status, _, body) = http_raw(port, "GET", "/rooms/lobby/members", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let members = &common::json(&body)["members"];
    assert_eq!(members["alice"][0]["seat"], 1, "{body}");
    assert!(members["bob"][0]["seat"].is_u64(), "{body}");
    assert!(members.get("mallory").is_none(), "{body}");
    assert_eq!(members.as_object().unwrap().len(), 2, "{body}");

    // The application's shutdown signal drains Plexus's clients (1012) and the process ends
    // by itself, successfully.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(app.child.id().to_string())
        .status();
    let (code, _) = alice.wait_close().await.expect("closed by the drain");
    assert_eq!(code, Some(1012));
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = app.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the example did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut said = Vec::new();
    while let Ok(line) = app.stdout.recv_timeout(Duration::from_secs(5)) {
        said.push(line);
    }
    assert!(said.iter().any(|l| l == "stopped"), "{said:?}");
}

/// Decides by topic, misbehaving on purpose.
struct Unruly;

impl JoinAuthorizer for Unruly {
    async fn authorize(&self, join: &JoinAttempt<'_>) -> JoinDecision {
        match join.topic() {
            "room:panic" => panic!("the application's bug"),
            "room:slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                JoinDecision::allow()
            }
            "room:big" => {
                let mut meta = serde_json::Map::new();
                meta.insert("blob".into(), "x".repeat(5000).into());
                JoinDecision::allow().with_meta(meta)
            }
            "room:quiet" => JoinDecision::deny(""),
            "room:long" => JoinDecision::deny("r".repeat(500)),
            _ => {
                assert!(join.connection().is_some());
                assert_eq!(join.params()["hello"], "there");
                JoinDecision::allow()
            }
        }
    }
}

const CONFIG: &str = r#"
jwt_secret = "test-secret-0123456789abcdef"
api_key = "test-api-key-0123456789"
drain_timeout_secs = 5
[[channels]]
topic = "room:*"
"#;

async fn serve(plexus: &Plexus, connect_info: bool) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().merge(plexus.router());
    let shutdown = plexus.drain_after(std::future::pending());
    let task = if connect_info {
        tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await;
        })
    } else {
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        })
    };
    (port, task)
}

#[tokio::test]
async fn a_misbehaving_authorizer_refuses_joins_and_the_connection_lives_on() {
    let config = plexus::config::parse_str(CONFIG, &Default::default(), None, None).unwrap();
    let plexus = Plexus::builder(config)
        .join_authorizer(Unruly)
        .join_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let (port, _server) = serve(&plexus, true).await;
    let token = plexus
        .issue_token("alice", &[], Duration::from_secs(60))
        .unwrap();
    let mut c =
        Client::connect(ConnectOptions::new(format!("ws://127.0.0.1:{port}/socket")).token(token))
            .await
            .unwrap();
    for (topic, reason, retry) in [
        ("room:panic", "hook unavailable".to_owned(), true),
        ("room:slow", "hook unavailable".to_owned(), true),
        ("room:big", "hook unavailable".to_owned(), true),
        ("room:quiet", "unauthorized".to_owned(), false),
        ("room:long", "r".repeat(200), false),
    ] {
        let started = Instant::now();
        let r = c.join(topic, json!({})).await.unwrap();
        assert!(!r.is_ok(), "{topic}");
        assert_eq!(r.reason().as_deref(), Some(reason.as_str()), "{topic}");
        assert_eq!(r.json()["retry"], retry, "{topic}");
        assert!(started.elapsed() < Duration::from_secs(3), "{topic}");
    }
    // The same connection joins a room the authorizer allows (its params reach it).
    let r = c.join("room:ok", json!({"hello": "there"})).await.unwrap();
    assert!(r.is_ok(), "{:?}", r.json());
    assert_eq!(plexus.connection_count(), 1);

    // Server events are Plexus's own: not publishable from Rust either.
    assert!(matches!(
        plexus.publish("room:ok", "phx_reply", &json!({})).await,
        Err(PublishError::Invalid(_))
    ));
    assert!(matches!(
        plexus.publish("", "news", &json!({})).await,
        Err(PublishError::Invalid(_))
    ));
    plexus
        .publish("room:ok", "news", &json!({"n": 1}))
        .await
        .unwrap();
    let m = c
        .recv_event_timeout("room:ok", "news", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the publish");
    assert_eq!(m.payload.as_json().unwrap().get(), r#"{"n":1}"#);

    // A drain closes the client with 1012 and reports nothing left open.
    assert_eq!(plexus.drain().await, 0);
    let (code, _) = c.wait_close().await.unwrap();
    assert_eq!(code, Some(1012));
}

#[tokio::test]
async fn served_without_the_client_address_the_routes_say_so() {
    let config = plexus::config::parse_str(CONFIG, &Default::default(), None, None).unwrap();
    let plexus = Plexus::builder(config).build().await.unwrap();
    let (port, _server) = serve(&plexus, false).await;
    let (status, _, body) = http_raw(port, "GET", "/socket/websocket?vsn=2.0.0", &[], "")
        .await
        .unwrap();
    assert_eq!(status, 500);
    assert!(
        common::json(&body)["error"]
            .as_str()
            .is_some_and(|e| e.contains("into_make_service_with_connect_info")),
        "{body}"
    );
}

/// Lets anyone into `news:*` except `news:secret`, and says who asked.
struct NewsDesk;

impl JoinAuthorizer for NewsDesk {
    async fn authorize(&self, join: &JoinAttempt<'_>) -> JoinDecision {
        if join.topic() == "news:secret" {
            return JoinDecision::deny(format!(
                "not for {} (history read: {})",
                join.sub(),
                join.connection().is_none() && join.params()["history"] == true
            ));
        }
        JoinDecision::allow()
    }
}

#[tokio::test]
async fn history_reads_over_the_http_api_ask_the_authorizer_too() {
    let config = plexus::config::parse_str(
        r#"
        jwt_secret = "test-secret-0123456789abcdef"
        api_key = "test-api-key-0123456789"
        [[channels]]
        topic = "news:*"
        history_size = 10
        "#,
        &Default::default(),
        None,
        None,
    )
    .unwrap();
    let plexus = Plexus::builder(config)
        .join_authorizer(NewsDesk)
        .with_http_api(true)
        .build()
        .await
        .unwrap();
    let (port, _server) = serve(&plexus, true).await;
    for topic in ["news:open", "news:secret"] {
        assert_eq!(
            plexus
                .publish(topic, "story", &json!({"t": 1}))
                .await
                .unwrap(),
            Some(1)
        );
    }
    let token = plexus
        .issue_token("alice", &[], Duration::from_secs(60))
        .unwrap();
    let read = |topic: &'static str| {
        let token = token.clone();
        async move {
            http_raw(
                port,
                "GET",
                &format!("/api/channels/{topic}/history?since=0&token={token}"),
                &[],
                "",
            )
            .await
            .unwrap()
        }
    };
    let (status, _, body) = read("news:open").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(common::json(&body)["messages"][0]["payload"]["t"], 1);
    let (status, _, body) = read("news:secret").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        common::json(&body)["error"],
        "not for alice (history read: true)"
    );
    // The API key reads everything (the authorizer decides for users, as the join hook).
    let (status, _, _) = http_raw(
        port,
        "GET",
        "/api/channels/news:secret/history?since=0",
        &[("Authorization", "Bearer test-api-key-0123456789")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
}
