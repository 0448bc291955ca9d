//! `GET /app/{key}`: Pusher's WebSocket endpoint (protocol 7, as pusher-js 8.x connects),
//! routed only in Pusher mode (`[pusher]`, `PLEXUS_PUSHER_*`).
//!
//! The connection is admitted like `/socket/websocket`'s (client address, connect rate,
//! `Origin`, draining, per-address caps, the connect hook; refusals are the same JSON HTTP
//! answers) as an anonymous identity `pusher:<socket_id>`: Pusher clients carry no token.
//! Then the WebSocket is upgraded and served by the core's WebSocket transport speaking
//! Pusher's protocol. As Pusher does, a wrong app key or protocol version is told after the
//! upgrade: `pusher:error` with the code, then a close with that code (4001 unknown key;
//! 4007 unsupported protocol version; 4006 an unreadable one; 4008 none).

use super::json_error;
use crate::state::AppState;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use plexus_core::auth::Identity;
use plexus_core::protocol::pusher::{self as wire, codes};
use plexus_core::pusher::connection::PusherConn;
use plexus_core::pusher::new_socket_id;
use plexus_core::transport::websocket::{self, Wire};
use std::collections::HashMap;
use std::net::SocketAddr;

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
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let frame = wire::error(Some(code), &reason);
                websocket::refuse(TokioIo::new(upgraded), &frame, code, &reason).await;
            }
        });
        return super::websocket::switching_protocols(&ws_key, false);
    }
    let socket_id = new_socket_id();
    let node = state.node.clone();
    let identify = |_: &plexus_core::Node| {
        let mut identity = Identity::new(&format!("pusher:{socket_id}"));
        identity.anonymous = true;
        Ok(identity)
    };
    let (identity, permit) = match node.admit_as(peer, req.headers(), identify).await {
        Ok(admitted) => admitted,
        Err(refusal) => return super::Refused(refusal).into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let pusher = Box::new(PusherConn::new(app, socket_id));
    let admitted = Box::new((node, identity, permit, pusher));
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let (node, identity, permit, pusher) = *admitted;
                let _counted = crate::transport_counts::TransportCounts::open(
                    crate::transport_counts::Counted::WebSocket,
                );
                tracing::debug!(peer = %peer, socket_id = pusher.socket_id(), "pusher websocket connected");
                let wire = Wire::Pusher(pusher);
                websocket::serve(node, identity, permit, wire, TokioIo::new(upgraded), &[]).await;
                tracing::debug!(peer = %peer, "pusher websocket closed");
            }
            Err(e) => tracing::debug!(peer = %peer, error = %e, "upgrade failed"),
        }
    });
    super::websocket::switching_protocols(&ws_key, false)
}
