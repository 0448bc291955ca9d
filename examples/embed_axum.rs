//! Plexus inside an existing axum application (docs/embedding.md walks through it).
//!
//! The application has its own routes (a page, a stand-in login that hands out tokens, an
//! endpoint that posts a message to a room) and mounts Plexus's WebSocket, LongPoll and SSE
//! endpoints next to them. It decides who may join which room in Rust (`Rooms`, the
//! in-process twin of the HTTP join hook), publishes from its own handlers, reads presence,
//! and drains Plexus's clients on Ctrl-C / SIGTERM before the server stops.
//!
//! ```text
//! cargo run --example embed_axum                  # http://127.0.0.1:4000
//! curl 'http://127.0.0.1:4000/login?user=alice'    # {"token": "…"}
//! # connect: ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0&token=…, join "room:lobby"
//! curl -X POST -H 'content-type: application/json' -d '{"text": "hi"}' \
//!   http://127.0.0.1:4000/rooms/lobby/messages
//! curl http://127.0.0.1:4000/rooms/lobby/members
//! ```
//!
//! `EMBED_AXUM_LISTEN` sets the address (`127.0.0.1:0` picks a free port); the first line on
//! stdout is `listening on http://<addr>`. `PLEXUS_*` variables override the configuration
//! as they do for the `plexus` binary (`PLEXUS_REDIS_URL` for a cluster, for one).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use plexus::embed::{JoinAttempt, JoinAuthorizer, JoinDecision, Plexus};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The configuration the `plexus` binary would read from a file: one rule for the rooms.
/// (A real application keeps its secrets out of the source: `PLEXUS_JWT_SECRET`,
/// `PLEXUS_API_KEY` override these.)
const CONFIG: &str = r#"
jwt_secret = "embed-axum-example-secret-0123456789"
api_key = "embed-axum-example-api-key-0123456789"
drain_timeout_secs = 5

[[channels]]
topic = "room:*"
presence = true
push_events = ["chat"]
"#;

/// Who may join which room: the application's own rules, in Rust.
struct Rooms {
    /// Seats handed out so far (shown in presence).
    seats: AtomicU64,
}

impl JoinAuthorizer for Rooms {
    async fn authorize(&self, join: &JoinAttempt<'_>) -> JoinDecision {
        let Some(room) = join.topic().strip_prefix("room:") else {
            return JoinDecision::deny("not a room");
        };
        if join.sub() == "mallory" {
            return JoinDecision::deny("banned from every room");
        }
        if room == "vip" && !join.has_role("vip") {
            return JoinDecision::deny("the vip room is for vip members");
        }
        let seat = self.seats.fetch_add(1, Ordering::Relaxed) + 1;
        let mut reply = serde_json::Map::new();
        reply.insert("welcome".into(), format!("hello {}", join.sub()).into());
        let mut meta = serde_json::Map::new();
        meta.insert("seat".into(), seat.into());
        JoinDecision::allow().with_reply(reply).with_meta(meta)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("embed_axum: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed_axum: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config =
        plexus::config::parse_str(CONFIG, &plexus::config::Env::from_process(), None, None)?;
    let plexus = Plexus::builder(config)
        .join_authorizer(Rooms {
            seats: AtomicU64::new(0),
        })
        .join_timeout(Duration::from_secs(1))
        .build()
        .await?;

    // The application's own routes, then Plexus's next to them.
    let app = Router::new()
        .route("/", get(index))
        .route("/login", get(login))
        .route("/rooms/{room}/messages", post(post_message))
        .route("/rooms/{room}/members", get(members))
        .with_state(plexus.clone())
        .merge(plexus.router());

    let listen = std::env::var("EMBED_AXUM_LISTEN").unwrap_or_else(|_| "127.0.0.1:4000".to_owned());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Plexus's routes need the client's address: `into_make_service_with_connect_info`.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(plexus.drain_after(shutdown_signal()))
    .await?;
    println!("stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM: the application's own shutdown signal.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    println!("shutting down: draining Plexus's clients");
}

async fn index() -> &'static str {
    "The application's own page. Plexus is at /socket/websocket, /socket/longpoll and /sse.\n"
}

#[derive(Deserialize)]
struct Login {
    user: String,
    #[serde(default)]
    role: Option<String>,
}

/// A stand-in for the application's login: a real one checks a password or a session.
async fn login(State(plexus): State<Plexus>, Query(q): Query<Login>) -> Response {
    if q.user.is_empty() || q.user.len() > 64 {
        return error(StatusCode::BAD_REQUEST, "user: 1 to 64 bytes".into());
    }
    let roles: Vec<String> = q.role.into_iter().collect();
    match plexus.issue_token(&q.user, &roles, Duration::from_secs(3600)) {
        Ok(token) => Json(json!({ "token": token })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct Message {
    text: String,
}

/// The application publishes from its own code: here, a message posted over plain HTTP.
async fn post_message(
    State(plexus): State<Plexus>,
    Path(room): Path<String>,
    Json(msg): Json<Message>,
) -> Response {
    let topic = format!("room:{room}");
    let payload = json!({ "text": msg.text, "from": "the application" });
    match plexus.publish(&topic, "message", &payload).await {
        Ok(_) => Json(json!({ "published": topic })).into_response(),
        Err(e @ plexus::embed::PublishError::Invalid(_)) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Who is in a room, read from Plexus's presence.
async fn members(State(plexus): State<Plexus>, Path(room): Path<String>) -> Response {
    let present = plexus.presence(&format!("room:{room}")).await;
    Json(json!({ "room": room, "members": present })).into_response()
}

fn error(status: StatusCode, reason: String) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}
