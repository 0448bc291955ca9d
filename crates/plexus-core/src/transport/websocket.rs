//! The WebSocket transport: drives one upgraded connection.
//!
//! One task per connection selects over three things: inbound frames (decoded and handed to the
//! [`Socket`]), the connection's [`Outbox`](crate::outbox::Outbox) (drained into the socket in
//! batches, then flushed once), and the idle timer. Nothing else is allocated per message.

use crate::auth::Identity;
use crate::limits::close_codes;
use crate::node::Node;
use crate::protocol::{decode_client_binary, decode_client_text, Frame};
use crate::socket::Socket;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_websockets::{CloseCode, Message, WebSocketStream};

/// `tokio-websockets` settings for server connections under the node's limits.
pub fn server_builder(node: &Node) -> tokio_websockets::ServerBuilder {
    tokio_websockets::ServerBuilder::new().limits(
        tokio_websockets::Limits::default().max_payload_len(Some(node.limits().max_message_bytes)),
    )
}

fn to_ws(frame: Frame) -> Message {
    match frame {
        Frame::Text(b) => Message::text(b),
        Frame::Binary(b) => Message::binary(b),
    }
}

/// Serves an upgraded WebSocket for an authenticated identity until either side closes.
pub async fn serve<S>(node: Arc<Node>, identity: Identity, mut ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut socket = match Socket::open(node.clone(), identity) {
        Ok(s) => s,
        Err(_) => {
            let _ = close(&mut ws, close_codes::SERVICE_RESTART, "server restarting").await;
            return;
        }
    };
    let outbox = socket.outbox().clone();
    let idle = node.limits().idle_timeout;
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let mut batch: Vec<Frame> = Vec::new();

    let close_with: Option<(u16, &'static str)> = loop {
        tokio::select! {
            biased;
            _ = outbox.changed() => {
                let close_req = outbox.drain_into(&mut batch);
                let mut failed = false;
                for frame in batch.drain(..) {
                    if ws.feed(to_ws(frame)).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if batch.capacity() > 64 {
                    batch = Vec::new();
                }
                if failed || ws.flush().await.is_err() {
                    break None;
                }
                if let Some(c) = close_req {
                    break Some((c.code, c.reason));
                }
            }
            incoming = ws.next() => match incoming {
                None => break None,
                Some(Err(e)) => {
                    // tokio-websockets has queued the matching close frame (1002, 1007, 1009).
                    tracing::debug!(conn = socket.id(), error = %e, "websocket error");
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
                    linger(ws.get_mut()).await;
                    break None;
                }
                Some(Ok(msg)) => {
                    timer.as_mut().reset(Instant::now() + idle);
                    if msg.is_text() || msg.is_binary() {
                        let is_text = msg.is_text();
                        let data = bytes::Bytes::from(msg.into_payload());
                        let decoded = if is_text {
                            decode_client_text(&data)
                        } else {
                            decode_client_binary(&data)
                        };
                        match decoded {
                            Ok(m) => socket.handle(m).await,
                            Err(e) => socket.handle_decode_error(e),
                        }
                    } else if msg.is_close() {
                        // The library answers the close; keep polling to flush it.
                        continue;
                    }
                }
            },
            _ = &mut timer => break Some((close_codes::IDLE_TIMEOUT, "heartbeat timeout")),
        }
    };
    if let Some((code, reason)) = close_with {
        let _ = close(&mut ws, code, reason).await;
    }
    socket.close().await;
}

/// After a protocol error: half-close our side, then read and discard what the peer still
/// sends (bounded in time and bytes) so that the kernel does not answer unread data with a
/// reset that would destroy the close frame before the peer reads it.
async fn linger<S>(io: &mut S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = io.shutdown().await;
    let mut buf = [0u8; 1024];
    let mut budget: usize = 4 * 1024 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || n >= budget {
                break;
            }
            budget -= n;
        }
    })
    .await;
}

/// Sends a close frame and waits briefly for the peer's answer.
async fn close<S>(
    ws: &mut WebSocketStream<S>,
    code: u16,
    reason: &str,
) -> Result<(), tokio_websockets::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = CloseCode::try_from(code).unwrap_or(CloseCode::INTERNAL_SERVER_ERROR);
    ws.send(Message::close(Some(code), reason)).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}
