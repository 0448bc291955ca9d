//! The WebSocket transport's I/O: reading bytes into the frame decoder (a buffer on the poll
//! stack, never one a connection keeps), writing batches of outgoing messages encoded per
//! protocol with one syscall where possible, closing, and the two short-lived uses of the same
//! framing: refusing a connection after its upgrade (Pusher) and the Autobahn echo endpoint.

use super::*;

/// What [`write_frames`] writes: encoded frames, or outgoing messages encoded as they are
/// written (a broadcast's shared frame is not copied).
pub(super) trait ToFrame {
    fn to_frame(&self, encoding: Encoding) -> Option<Frame>;
    /// About the encoded size in `encoding`.
    fn len_hint(&self, encoding: Encoding) -> usize;
}

impl ToFrame for Frame {
    fn to_frame(&self, _: Encoding) -> Option<Frame> {
        Some(self.clone())
    }

    fn len_hint(&self, _: Encoding) -> usize {
        self.len()
    }
}

impl ToFrame for Outgoing {
    fn len_hint(&self, encoding: Encoding) -> usize {
        match self {
            // A Pusher frame is longer than the Phoenix one (its data is a JSON string): sized
            // by the Phoenix frame, the write buffer was reallocated on every write.
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p)
                if encoding == Encoding::Pusher =>
            {
                p.pusher_frame().map_or(p.frame.len(), |f| f.len())
            }
            Outgoing::Broadcast(p) | Outgoing::BroadcastWithOffset(p) => p.frame.len(),
            other => 64 + other.payload().map_or(0, |p| p.len()),
        }
    }

    fn to_frame(&self, encoding: Encoding) -> Option<Frame> {
        match encoding {
            Encoding::Phoenix(vsn) => self
                .encode(vsn)
                .inspect_err(|e| tracing::debug!(error = %e, "message not encodable"))
                .ok(),
            Encoding::Pusher => self.encode_pusher(),
        }
    }
}

/// Reads once into a stack buffer and feeds the decoder. The buffer lives only during the poll,
/// so it costs the connection nothing while it waits.
/// (Not an `async fn`: its future would hold the arguments beside the closure that uses
/// them, in every idle connection's task.)
pub(super) fn read_events<'a, S>(
    io: &'a mut S,
    decoder: &'a mut FrameDecoder,
    events: &'a mut Vec<WsEvent>,
) -> impl std::future::Future<Output = ReadOutcome> + 'a
where
    S: AsyncRead + Unpin,
{
    poll_fn(move |cx| {
        // Uninitialised: zeroing 8 KiB on every poll (most of them `Pending`) was 15 % of the
        // instructions of a connect + join (BENCHMARKS.md, "Connect cost").
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut buf);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(ReadOutcome::Error(e)),
            Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(ReadOutcome::Eof),
            Poll::Ready(Ok(())) => Poll::Ready(match decoder.feed(rb.filled(), events) {
                Ok(()) => ReadOutcome::Events,
                Err(e) => ReadOutcome::Violation(e.code, e.reason),
            }),
        }
    })
}

/// Writes frames: small ones coalesced into one buffer per write, large payloads directly.
pub(super) async fn write_frames<S, T: ToFrame>(
    io: &mut S,
    items: &[T],
    vsn: Encoding,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::new();
    for frame in items.iter().filter_map(|i| i.to_frame(vsn)) {
        let (op, payload) = match &frame {
            Frame::Text(b) => (OP_TEXT, b),
            Frame::Binary(b) => (OP_BINARY, b),
        };
        let mut h = [0u8; 10];
        let n = encode_header(op, payload.len(), &mut h);
        if payload.len() >= COALESCE {
            if !buf.is_empty() {
                io.write_all(&buf).await?;
                buf.clear();
            }
            io.write_all(&h[..n]).await?;
            io.write_all(payload).await?;
            continue;
        }
        if buf.len() + n + payload.len() > COALESCE {
            io.write_all(&buf).await?;
            buf.clear();
        }
        if buf.capacity() == 0 {
            buf.reserve(COALESCE.min(total_len(items, vsn)));
        }
        buf.extend_from_slice(&h[..n]);
        buf.extend_from_slice(payload);
    }
    if !buf.is_empty() {
        io.write_all(&buf).await?;
    }
    io.flush().await
}

/// Writes the rest of a frame the fan-out wrote in part (nothing for `None`).
pub(super) async fn write_unsent<S>(io: &mut S, unsent: Option<&Unsent>) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let Some(unsent) = unsent else {
        return Ok(());
    };
    let (head, body) = unsent.parts();
    io.write_all(head).await?;
    io.write_all(body).await?;
    io.flush().await
}

/// About the bytes `items` take on the wire (for the write buffer's first reservation).
pub(super) fn total_len<T: ToFrame>(items: &[T], encoding: Encoding) -> usize {
    items.iter().map(|i| i.len_hint(encoding) + 10).sum()
}

/// Sends a close frame, half-closes, then reads and discards what the peer still sends
/// (bounded in time and bytes) until it closes too. Lingering avoids the TCP reset that unread
/// data would cause, which could destroy the close frame before the peer reads it.
pub(super) async fn close<S>(io: &mut S, code: u16, reason: &str) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let write = async {
        io.write_all(&close_frame(code, reason)).await?;
        io.flush().await
    };
    tokio::time::timeout(Duration::from_secs(2), write)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "close frame not written")
        })??;
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    let mut budget: usize = 1024 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = vec![0u8; 1024];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || n >= budget {
                break;
            }
            budget -= n;
        }
    })
    .await;
    Ok(())
}

/// Refuses an upgraded connection as Pusher does: one text frame (its `pusher:error`), then a
/// close with `code`.
pub async fn refuse<S>(mut io: S, text: &str, code: u16, reason: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = [Frame::Text(bytes::Bytes::from(text.to_owned()))];
    let written = tokio::time::timeout(
        Duration::from_secs(2),
        write_frames(&mut io, &frame, Encoding::Pusher),
    )
    .await;
    if matches!(written, Ok(Ok(()))) {
        let _ = close(&mut io, code, reason).await;
    }
}

/// A raw WebSocket echo over the same framing code, for conformance testing (Autobahn
/// fuzzingclient, `scripts/autobahn`). Served only by the dev profile at `/dev/echo`.
pub async fn echo<S>(mut io: S, max_message: usize)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut decoder = FrameDecoder::new(max_message);
    let mut events = Vec::new();
    loop {
        let violation = match read_events(&mut io, &mut decoder, &mut events).await {
            ReadOutcome::Events => None,
            ReadOutcome::Eof | ReadOutcome::Error(_) => return,
            ReadOutcome::Violation(code, reason) => Some((code, reason)),
        };
        let mut out = Vec::new();
        for event in events.drain(..) {
            match event {
                WsEvent::Text(b) => out.push(Frame::Text(b)),
                WsEvent::Binary(b) => out.push(Frame::Binary(b)),
                WsEvent::Ping(p) => {
                    if write_frames(&mut io, &out, Encoding::Phoenix(Vsn::V2))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    out.clear();
                    let mut h = [0u8; 10];
                    let n = encode_header(OP_PONG, p.len(), &mut h);
                    let mut pong = h[..n].to_vec();
                    pong.extend_from_slice(&p);
                    if io.write_all(&pong).await.is_err() {
                        return;
                    }
                }
                WsEvent::Pong => {}
                WsEvent::Close(code, _) => {
                    let _ = write_frames(&mut io, &out, Encoding::Phoenix(Vsn::V2)).await;
                    let _ = io.write_all(&close_frame(code.unwrap_or(1000), "")).await;
                    let _ = io.shutdown().await;
                    return;
                }
            }
        }
        if write_frames(&mut io, &out, Encoding::Phoenix(Vsn::V2))
            .await
            .is_err()
        {
            return;
        }
        if let Some((code, reason)) = violation {
            let _ = close(&mut io, code, reason).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;
    use crate::publication::Publication;

    #[test]
    fn the_write_buffer_is_sized_for_the_frames_of_the_connection_s_protocol() {
        // A Pusher frame carries the payload as a JSON string: every quote escaped, longer
        // than the Phoenix frame the hint once used.
        let payload = Payload::json(&serde_json::json!({"a": "b", "c": "d", "e": "f"}))
            .expect("a JSON payload");
        let p = Publication::new("bench", "m", payload, None).expect("a publication");
        let items = [Outgoing::Broadcast(Arc::new(p))];
        for encoding in [Encoding::Pusher, Encoding::Phoenix(Vsn::V2)] {
            let frame = items[0].to_frame(encoding).expect("a frame");
            assert!(
                total_len(&items, encoding) >= frame.len() + 2,
                "{encoding:?}: hint {} for a frame of {}",
                total_len(&items, encoding),
                frame.len()
            );
        }
    }
}
