//! The WebSocket transport: drives one upgraded connection.
//!
//! One task per connection selects over three things: inbound bytes (framed by
//! [`FrameDecoder`], decoded as Phoenix messages and handed to the [`Socket`]; on a Pusher
//! connection, handed to its [`PusherConn`]), the connection's
//! [`Outbox`](crate::outbox::Outbox) (drained in batches and written with one syscall where
//! possible), and the idle timer.
//!
//! Write-through: on a plain-TCP Phoenix connection the outbox gets the raw socket, and the
//! fan-out writes broadcasts to it itself while nothing is queued (see [`crate::outbox`]).
//! Every write this task makes is then bracketed by `begin_write`/`end_write` and starts with
//! the rest of a frame the fan-out wrote in part; the socket is detached from the outbox before
//! the task's final writes (close frame) and before it is closed.
//!
//! Memory: reads go into a buffer on the poll stack, never into one owned by the connection, so
//! an idle connection holds no read or write buffer at all; its state lives in one exactly
//! sized heap block (`Conn`) and the task's future stays small; see `BENCHMARKS.md`.
//!
//! This file holds the connection's loop; `io.rs` reads, writes and closes, and refuses
//! connections after their upgrade.

use crate::admission::Permit;
use crate::auth::Identity;
use crate::expiry::ExpiryStep;
use crate::limits::close_codes;
use crate::node::Node;
use crate::outbox::Outgoing;
use crate::protocol::ws_frame::{
    close_frame, encode_header, FrameDecoder, WsEvent, OP_BINARY, OP_PONG, OP_TEXT,
};
use crate::protocol::{Frame, Vsn};
use crate::pusher::connection::PusherConn;
use crate::socket::Socket;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

mod io;
use crate::outbox::Unsent;
use crate::write_through::RawSocket;
use io::{close, read_events, write_frames, write_unsent};
pub use io::{echo, refuse};

/// Size of the stack buffer one read fills.
const READ_CHUNK: usize = 8 * 1024;
/// Small frames are coalesced into one write buffer up to this size.
const COALESCE: usize = 64 * 1024;

/// The protocol a connection speaks, chosen at the handshake.
pub enum Wire {
    /// Phoenix Channels, in the serializer version negotiated by `vsn`.
    Phoenix(Vsn),
    /// Pusher's protocol 7 (`/app/{key}`), with the connection's Pusher state.
    Pusher(Box<PusherConn>),
}

/// How outgoing messages are encoded (the part of [`Wire`] the write path needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Phoenix(Vsn),
    Pusher,
}

/// What ended the read side.
enum ReadOutcome {
    /// Events were decoded (possibly none).
    Events,
    /// The peer closed the TCP connection.
    Eof,
    Error(std::io::Error),
    Violation(u16, &'static str),
}

/// A connection's state between polls, in one heap block of its exact size: the task's
/// future holds a pointer to it, the timer and whatever the current await needs. (Kept in
/// the future itself, these fields cost more than their size: an async fn's arguments stay in
/// the future beside the locals they were moved into, and the layout of its suspend points
/// does not overlap well.) See "Memory per idle connection" in `BENCHMARKS.md`.
struct Conn<S> {
    socket: Socket,
    io: S,
    decoder: FrameDecoder,
    events: Vec<WsEvent>,
    /// What the bytes read past the handshake held, handled before the first read. Boxed:
    /// rare, and used once.
    pending_read: Option<Box<ReadOutcome>>,
    /// Set on Pusher connections.
    pusher: Option<Box<PusherConn>>,
    /// When the connection is idle for too long (moved by every read). Here rather than in
    /// the task's future: what the future keeps across its idle await does not pack as well.
    idle_deadline: Instant,
}

/// Serves an upgraded WebSocket for an authenticated identity until either side closes,
/// speaking the protocol (and version) `wire` negotiated at the handshake. `pre_read` holds bytes the
/// HTTP layer read past the handshake (usually empty). The connection is registered and its
/// state allocated here, before the returned future first runs.
///
/// `raw`: the plain TCP socket under `io` (never given for TLS), for the write-through
/// fan-out of a Phoenix connection; `io` must own that socket.
pub fn serve<S>(
    node: Arc<Node>,
    identity: Identity,
    permit: Permit,
    wire: Wire,
    io: S,
    pre_read: &[u8],
    raw: Option<RawSocket>,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (encoding, pusher) = match wire {
        Wire::Phoenix(vsn) => (Encoding::Phoenix(vsn), None),
        Wire::Pusher(p) => (Encoding::Pusher, Some(p)),
    };
    let opened = match Socket::open(node.clone(), identity, permit) {
        Ok(mut socket) => {
            if let Some(p) = &pusher {
                socket.set_pusher_socket(p.socket_id());
                p.established(&socket, node.limits().idle_timeout);
            }
            // Pusher connections keep the task's path (their batches are translated).
            if let (Some(raw), Encoding::Phoenix(vsn)) = (raw, encoding) {
                socket.outbox().attach_socket(raw, vsn);
            }
            let mut decoder = FrameDecoder::new(node.limits().max_message_bytes);
            let mut events = Vec::new();
            let pending_read = (!pre_read.is_empty()).then(|| {
                Box::new(
                    decoder
                        .feed(pre_read, &mut events)
                        .map(|_| ReadOutcome::Events)
                        .unwrap_or_else(|e| ReadOutcome::Violation(e.code, e.reason)),
                )
            });
            Ok(Box::new(Conn {
                socket,
                io,
                decoder,
                events,
                pending_read,
                pusher,
                idle_deadline: Instant::now() + node.limits().idle_timeout,
            }))
        }
        // Boxed like the state: what the future captures stays in it for the connection's life.
        Err(_) => Err(Box::new(io)),
    };
    async move {
        match opened {
            Ok(conn) => run(conn, encoding).await,
            Err(mut io) => {
                let code = match encoding {
                    Encoding::Pusher => crate::protocol::pusher::codes::RECONNECT,
                    Encoding::Phoenix(_) => close_codes::SERVICE_RESTART,
                };
                let _ = Box::pin(close(&mut *io, code, "server restarting")).await;
            }
        }
    }
}

/// How long after the last frame the server sends a Pusher connection its `pusher:ping`
/// before the idle close (`pong_wait` before it).
fn pong_wait(idle: Duration) -> Duration {
    idle - PusherConn::activity_timeout(idle).min(idle)
}

/// When the connection's timer next fires for idleness (a Pusher connection not yet pinged:
/// for its ping).
fn wake_at(idle_deadline: Instant, idle: Duration, pusher: &Option<Box<PusherConn>>) -> Instant {
    match pusher {
        Some(p) if !p.pinged => idle_deadline - pong_wait(idle),
        _ => idle_deadline,
    }
}

/// The connection's loop. Memory: what is live across its idle await stays in the task of
/// every idle connection, so it reaches the state through `conn` (one pointer) and reads its
/// settings from the node's limits when it needs them, instead of keeping them in locals.
async fn run<S>(mut conn: Box<Conn<S>>, vsn: Encoding)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timer = tokio::time::sleep(conn.socket.node().limits().idle_timeout);
    tokio::pin!(timer);
    // Pusher connections: the server's `pusher:ping` after the activity timeout of silence,
    // then the idle close if nothing comes back.
    conn.rearm(timer.as_mut());
    let mut closing = false;

    let close_with: Option<(u16, &'static str)> = 'conn: loop {
        let outcome = match conn.pending_read.take() {
            Some(o) => *o,
            None => {
                let c = &mut *conn;
                tokio::select! {
                    biased;
                    _ = c.socket.outbox().changed() => {
                        // Boxed: the write's state exists only while it runs, instead of
                        // taking room in every idle connection's task.
                        if let Some(end) = Box::pin(conn.write_queued(timer.as_mut(), vsn)).await {
                            break 'conn end;
                        }
                        continue 'conn;
                    }
                    outcome = read_events(&mut c.io, &mut c.decoder, &mut c.events) => outcome,
                    _ = &mut timer => {
                        let now = Instant::now();
                        let limits = conn.socket.node().limits();
                        let idle = limits.idle_timeout;
                        let grace = limits.expiry_grace;
                        match conn.socket.expiry_mut().fire(now) {
                            ExpiryStep::Warn => conn.socket.notify_token_expired(grace),
                            ExpiryStep::Close => break 'conn Some((close_codes::TOKEN_EXPIRED, "token expired")),
                            ExpiryStep::None if now >= conn.idle_deadline => {
                                break 'conn Some(match conn.pusher {
                                    Some(_) => (crate::protocol::pusher::codes::PONG_NOT_RECEIVED, "pong reply not received"),
                                    None => (close_codes::IDLE_TIMEOUT, "heartbeat timeout"),
                                })
                            }
                            ExpiryStep::None => {
                                let c = &mut *conn;
                                if let Some(p) = c.pusher.as_mut().filter(|p| !p.pinged) {
                                    if now >= c.idle_deadline - pong_wait(idle) {
                                        p.ping(&c.socket);
                                    }
                                }
                            }
                        }
                        conn.rearm(timer.as_mut());
                        continue 'conn;
                    }
                }
            }
        };
        // A violation still lets the frames before it count (Autobahn's strict behaviour).
        let violation = match outcome {
            ReadOutcome::Eof => break None,
            ReadOutcome::Error(e) => {
                tracing::debug!(conn = conn.socket.id(), error = %e, "websocket read failed");
                break None;
            }
            ReadOutcome::Violation(code, reason) => {
                tracing::debug!(
                    conn = conn.socket.id(),
                    code,
                    reason,
                    "websocket protocol violation"
                );
                Some((code, reason))
            }
            ReadOutcome::Events => None,
        };
        conn.idle_deadline = Instant::now() + conn.socket.node().limits().idle_timeout;
        if let Some(p) = conn.pusher.as_mut() {
            // Any frame (a WebSocket ping too) shows the connection is alive.
            p.pinged = false;
        }
        // Boxed, like the writes: the handling of a read is not an idle connection's state.
        if Box::pin(conn.handle_events(timer.as_mut(), vsn, &mut closing))
            .await
            .is_err()
        {
            break 'conn None;
        }
        // A token refresh among the messages replaced the expiry.
        conn.rearm(timer.as_mut());
        if violation.is_some() {
            // Deliver the replies to the frames before the violation, then close.
            let c = &mut *conn;
            let mut batch = Vec::new();
            let (unsent, _) = c.socket.outbox().begin_write(&mut batch);
            if let Some(p) = c.pusher.as_mut() {
                p.translate(&mut batch);
            }
            timer
                .as_mut()
                .reset(Instant::now() + c.socket.node().limits().write_timeout);
            let written = Box::pin(async {
                tokio::select! {
                    r = async {
                        write_unsent(&mut c.io, unsent.as_deref()).await?;
                        write_frames(&mut c.io, &batch, vsn).await
                    } => r.is_ok(),
                    _ = &mut timer => false,
                }
            })
            .await;
            if !written {
                break None;
            }
            break violation;
        }
    };
    // From here on only this task writes to the socket, and it may close it. The rest of a
    // frame the fan-out wrote in part goes out before the close frame.
    let unsent: Option<Box<Unsent>> = conn.socket.outbox().detach_socket();
    // The closing steps run once per connection; boxed, their state does not weigh on the
    // task of every idle connection.
    if let Some((code, reason)) = close_with {
        conn.socket.set_close_info(code, reason);
        let Conn { io, pusher, .. } = &mut *conn;
        let _ = Box::pin(async {
            if tokio::time::timeout(
                Duration::from_secs(1),
                write_unsent(&mut *io, unsent.as_deref()),
            )
            .await
            .map_or(true, |r| r.is_err())
            {
                return Ok(());
            }
            // A Pusher client is told why (`pusher:error`) and gets Pusher's close code.
            let code = match pusher {
                Some(_) => {
                    let code = crate::protocol::pusher::close_code(code);
                    let text = crate::protocol::pusher::error(Some(code), reason);
                    let frame = [Frame::Text(bytes::Bytes::from(text))];
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        write_frames(&mut *io, &frame, vsn),
                    )
                    .await;
                    code
                }
                None => code,
            };
            close(io, code, reason).await
        })
        .await;
    }
    let Conn { socket, .. } = *conn;
    Box::pin(socket.close()).await;
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Sets the timer to the next idle, ping or token expiry deadline.
    fn rearm(&self, timer: Pin<&mut tokio::time::Sleep>) {
        let idle = self.socket.node().limits().idle_timeout;
        timer.reset(
            self.socket
                .expiry()
                .next(wake_at(self.idle_deadline, idle, &self.pusher)),
        );
    }

    /// Writes what the outbox holds, under the write timeout (which borrows the connection's
    /// one timer: no extra `Sleep` in the task; back to idle/expiry after). `Some(end)` ends
    /// the connection (`end`: the close to send, if any).
    async fn write_queued(
        &mut self,
        mut timer: Pin<&mut tokio::time::Sleep>,
        vsn: Encoding,
    ) -> Option<Option<(u16, &'static str)>> {
        // Nothing kept between writes: an idle connection holds no batch.
        let mut batch = Vec::new();
        let (unsent, close_req) = self.socket.outbox().begin_write(&mut batch);
        if let Some(p) = self.pusher.as_mut() {
            p.translate(&mut batch);
        }
        timer
            .as_mut()
            .reset(Instant::now() + self.socket.node().limits().write_timeout);
        let written = tokio::select! {
            r = async {
                write_unsent(&mut self.io, unsent.as_deref()).await?;
                write_frames(&mut self.io, &batch, vsn).await
            } => Ok(r),
            _ = &mut timer => Err(()),
        };
        if matches!(written, Ok(Ok(()))) {
            self.socket.outbox().end_write();
            unsent.iter().for_each(|u| u.publication().written());
            batch
                .iter()
                .filter_map(Outgoing::publication)
                .for_each(|p| p.written());
        }
        drop(batch);
        self.rearm(timer);
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Some(None),
            Err(_) => {
                tracing::info!(conn = self.socket.id(), sub = %self.socket.identity().sub, "client stopped reading: write timed out, dropping the connection");
                crate::metrics::write_timed_out();
                return Some(None);
            }
        }
        close_req.map(|c| Some((c.code, c.reason)))
    }

    /// Hands the events of a read to the socket (or the Pusher connection) and writes the
    /// pongs and the close echo they asked for, under the write timeout. `Err(())`: the
    /// connection ends (written a close echo, or the write failed).
    async fn handle_events(
        &mut self,
        mut timer: Pin<&mut tokio::time::Sleep>,
        vsn: Encoding,
        closing: &mut bool,
    ) -> Result<(), ()> {
        let Conn {
            socket,
            io,
            events,
            pusher,
            ..
        } = self;
        // Pongs and the close echo to write (a local: nothing kept between reads).
        let mut control = Vec::new();
        for event in events.drain(..) {
            let phoenix = match (vsn, pusher.as_mut(), &event) {
                (Encoding::Phoenix(v), _, _) => v,
                (Encoding::Pusher, Some(p), WsEvent::Text(data) | WsEvent::Binary(data)) => {
                    Box::pin(p.handle(socket, data)).await;
                    continue;
                }
                // Control frames are the same whatever the protocol.
                (Encoding::Pusher, _, _) => Vsn::V2,
            };
            match event {
                WsEvent::Text(data) => match phoenix.decode_text(&data) {
                    Ok(m) if socket.handle_inline(&m) => {}
                    Ok(m) => Box::pin(socket.handle(m)).await,
                    Err(e) => socket.handle_decode_error(e),
                },
                // V1 clients may send their JSON objects as binary frames (heartbeats too).
                WsEvent::Binary(data) => match phoenix.decode_binary(&data) {
                    Ok(m) if socket.handle_inline(&m) => {}
                    Ok(m) => Box::pin(socket.handle(m)).await,
                    Err(e) => socket.handle_decode_error(e),
                },
                WsEvent::Ping(payload) => {
                    // Collected and written below, under the write timeout.
                    let mut h = [0u8; 10];
                    let n = encode_header(OP_PONG, payload.len(), &mut h);
                    control.extend_from_slice(&h[..n]);
                    control.extend_from_slice(&payload);
                }
                WsEvent::Pong => {}
                WsEvent::Close(code, _) => {
                    // 1005: the client's close frame had no code.
                    socket.set_close_info(code.unwrap_or(1005), "closed by the client");
                    // Echo the close, then end the connection.
                    control.extend_from_slice(&close_frame(code.unwrap_or(1000), ""));
                    *closing = true;
                    break;
                }
            }
        }
        // Nothing kept between reads: an idle connection holds no event list.
        *events = Vec::new();
        if control.is_empty() {
            return Ok(());
        }
        // Every write has the write timeout (a client that floods pings and never reads must
        // not pin this task); like the outbox's, it borrows the connection's one timer.
        timer
            .as_mut()
            .reset(Instant::now() + socket.node().limits().write_timeout);
        let unsent = socket.outbox().begin_control_write();
        let sent = tokio::select! {
            r = async {
                write_unsent(&mut *io, unsent.as_deref()).await?;
                io.write_all(&control).await
            } => r.is_ok(),
            _ = &mut timer => false,
        };
        if sent && !*closing {
            socket.outbox().end_write();
        }
        drop(control);
        if !sent || *closing {
            if *closing {
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
            }
            return Err(());
        }
        Ok(())
    }
}
