//! `GET /app/{key}`: Pusher's WebSocket endpoint (protocol 7, as pusher-js 8.x connects),
//! routed only in Pusher mode (`[pusher]`, `PLEXUS_PUSHER_*`).
//!
//! The connection is admitted like `/socket/websocket`'s (client address, connect rate,
//! `Origin`, draining, per-address caps, the connect hook) as an anonymous identity `pusher:<socket_id>`: Pusher clients carry no token.
//! Then the WebSocket is upgraded and served by the core's WebSocket transport speaking
//! Pusher's protocol. As Pusher does, a wrong app key or protocol version is told after the
//! upgrade: `pusher:error` with the code, then a close with that code (4001 unknown key;
//! 4007 unsupported protocol version; 4006 an unreadable one; 4008 none), and so are refused
//! admissions (see `close_code`: 4100, 4200, 4009), at most `MAX_REFUSING` at once.

use super::json_error;
use crate::state::AppState;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use plexus_core::admission::Refusal;
use plexus_core::auth::Identity;
use plexus_core::protocol::pusher::{self as wire, codes};
use plexus_core::pusher::connection::PusherConn;
use plexus_core::pusher::new_socket_id;
use plexus_core::transport::websocket::{self, Wire};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::Semaphore;

pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(key): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    mut req: Request,
) -> Response {
    let Some(app) = state.pusher_app.clone() else {
        return json_error(StatusCode::NOT_FOUND, "no such endpoint");
    };
    let Some(ws_key) = super::websocket::handshake_key(req.headers()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request (Connection: Upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13)",
        );
    };
    // Refused after the upgrade, as Pusher refuses them: pusher-js reads the close code.
    let refusal = if key != app.key {
        Some((codes::APP_NOT_FOUND, "unknown app key".to_owned()))
    } else {
        wire::negotiate(params.get("protocol").map(String::as_str)).err()
    };
    if let Some((code, reason)) = refusal {
        tracing::info!(peer = %peer, code, reason, "pusher connection refused");
        plexus_core::metrics::refused("connect", &reason);
        return refuse_after_upgrade(req, &ws_key, code, reason, StatusCode::BAD_REQUEST);
    }
    let socket_id = new_socket_id();
    let node = state.node.clone();
    let identify = async {
        let mut identity = Identity::new(&format!("pusher:{socket_id}"));
        identity.anonymous = true;
        Ok(identity)
    };
    let (identity, permit) = match node.admit_as(peer, req.headers(), identify).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            // Told as Pusher tells it (pusher-js acts on the close code); counted and logged
            // by the admission.
            let status = super::Refused::status(&refusal);
            let code = close_code(&refusal, node.is_draining());
            return refuse_after_upgrade(req, &ws_key, code, refusal.reason, status);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let counts = state.pusher_counts.clone().unwrap_or_default();
    let pusher = Box::new(PusherConn::new(app, socket_id, counts));
    let admitted = Box::new((node, identity, permit, pusher));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (node, identity, permit, pusher) = super::websocket::unbox(admitted);
                let _counted = crate::transport_counts::TransportCounts::open(
                    crate::transport_counts::Counted::WebSocket,
                );
                tracing::debug!(peer = %peer, socket_id = pusher.socket_id(), "pusher websocket connected");
                let wire = Wire::Pusher(pusher);
                websocket::serve(
                    node,
                    identity,
                    permit,
                    wire,
                    TokioIo::new(upgraded),
                    &[],
                    None,
                )
                .await;
                tracing::debug!(peer = %peer, "pusher websocket closed");
            }
            Err(e) => tracing::debug!(peer = %peer, error = %e, "upgrade failed"),
        }
    });
    super::websocket::switching_protocols(&ws_key, false)
}

/// The Pusher close code of an admission refusal: 4200 (reconnect now, to another node) while
/// the node drains; 4100 (over capacity: reconnect after a back-off) for limits (429) and an
/// unavailable connect hook (503); 4009 (unauthorized: pusher-js stops reconnecting) when the
/// `Origin` or the connect hook refuses (403).
fn close_code(refusal: &Refusal, draining: bool) -> u16 {
    match refusal.status {
        503 if draining => codes::RECONNECT,
        429 | 503 => codes::OVER_CAPACITY,
        _ => codes::UNAUTHORIZED,
    }
}

/// Refused connections being told so after their upgrade, at most this many at once: past it
/// they get the HTTP status instead (a refusal costs the server no more than that while a
/// flood lasts). Each is held at most [`REFUSAL_TIMEOUT`].
const MAX_REFUSING: usize = 1024;
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(3);
static REFUSING: Semaphore = Semaphore::const_new(MAX_REFUSING);

/// Upgrades, then sends `pusher:error {code, message}` and closes with `code`, as Pusher
/// refuses a connection; with [`MAX_REFUSING`] refusals under way, answers `status` with a
/// JSON body instead.
fn refuse_after_upgrade(
    mut req: Request,
    ws_key: &[u8],
    code: u16,
    reason: String,
    status: StatusCode,
) -> Response {
    let Ok(permit) = REFUSING.try_acquire() else {
        return json_error(status, reason);
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _permit = permit;
        let refused = async {
            if let Ok(upgraded) = on_upgrade.await {
                let frame = wire::error(Some(code), &reason);
                websocket::refuse(TokioIo::new(upgraded), &frame, code, &reason).await;
            }
        };
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refused).await;
    });
    super::websocket::switching_protocols(ws_key, false)
}
