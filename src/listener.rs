//! The listener: accepts TCP connections (the gate bounds those not yet admitted), does the
//! TLS handshake when configured, and serves HTTP/1.1 with WebSocket upgrades on each, until
//! the server stops; a plain-TCP WebSocket may get its raw socket for the write-through fan-out.

use crate::gate::{Gate, Slot};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// How connections are served before they are admitted clients.
#[derive(Clone)]
pub(crate) struct Http {
    pub(crate) gate: Arc<Gate>,
    /// For the TLS handshake, for each request's headers, and for a kept-alive connection's
    /// wait for its next request.
    pub(crate) header_timeout: Duration,
    /// `websocket.write_through`: WebSockets upgraded on a plain TCP connection get its raw
    /// socket for the fan-out to write to (off: none is attached, the task writes everything).
    pub(crate) write_through: bool,
}

/// Accepts connections until `stop` turns true, then lets in-flight HTTP requests finish
/// (upgraded WebSockets are drained by the node, not here). A connection the gate refuses is
/// closed at once.
pub(crate) async fn serve_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    http: Http,
    mut stop: watch::Receiver<bool>,
    in_flight: Arc<()>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let pass = match http.gate.enter(peer.ip()) {
            Ok(pass) => pass,
            Err(full) => {
                let n = http.gate.refused.load(std::sync::atomic::Ordering::Relaxed);
                // One line per burst, not one per refused socket.
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(client = %peer.ip(), cap = ?full, refused = n, "connection refused: too many connections not yet admitted (limits.max_pending_connections*)");
                }
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let stop = stop.clone();
        let http = http.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            serve_connection(tcp, peer, app, tls, &http, Slot::new(pass), stop).await;
            drop(in_flight);
        });
    }
}

/// Serves one HTTP/1.1 connection; on stop, finishes the request in flight and closes.
async fn serve_http<I>(
    io: I,
    service: impl HttpService,
    peer: SocketAddr,
    http: &Http,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            http.gate
                .timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::debug!(peer = %peer, error = %e, "http connection error");
    }
}

/// The hyper service type every connection uses.
trait HttpService:
    hyper::service::Service<
        hyper::Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<T> HttpService for T where
    T: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<TlsAcceptor>,
    http: &Http,
    slot: Slot,
    stop: watch::Receiver<bool>,
) {
    // A plain TCP connection's socket, for the write-through fan-out of a WebSocket upgraded
    // on it, when `websocket.write_through` is on (never a TLS one: its bytes go through the
    // TLS session).
    #[cfg(unix)]
    let raw = (http.write_through && tls.is_none())
        .then(|| plexus_core::write_through::RawSocket::of(&tcp));
    #[cfg(not(unix))]
    let raw: Option<plexus_core::write_through::RawSocket> = None;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(slot.clone());
        if let Some(raw) = raw {
            req.extensions_mut().insert(raw);
        }
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    match tls {
        None => serve_http(TokioIo::new(tcp), service, peer, http, stop).await,
        Some(acceptor) => {
            let stream = match tokio::time::timeout(http.header_timeout, acceptor.accept(tcp)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    http.gate
                        .timeouts
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(peer = %peer, "TLS handshake timed out");
                    return;
                }
            };
            serve_http(TokioIo::new(stream), service, peer, http, stop).await
        }
    }
}
