//! Server-side WebSocket framing (RFC 6455): a pure, incremental decoder and header encoder.
//!
//! Hand-written because it is the memory hot path: an idle connection must hold no read
//! buffer. The transport reads into a stack buffer and feeds the bytes here; this decoder keeps
//! heap memory only for a frame that arrived incomplete or a fragmented message, and frees it as
//! soon as the frame completes. (A general-purpose WebSocket crate kept an 8 KiB buffer per
//! connection, see BENCHMARKS.md.)
//!
//! Checks everything a server must: client frames are masked, reserved bits are zero, opcodes
//! are known, control frames are short and unfragmented, continuation frames continue
//! something, text is UTF-8, close codes are valid, messages fit the size limit.

use bytes::Bytes;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Something the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// A close frame: code (if any) and reason.
    Close(Option<u16>, String),
}

/// A violation that ends the connection with the given close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsError {
    pub code: u16,
    pub reason: &'static str,
}

const fn protocol(reason: &'static str) -> WsError {
    WsError { code: 1002, reason }
}

/// Incremental frame decoder for one connection.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    /// Bytes of a frame that has not fully arrived yet (empty when idle).
    partial: Vec<u8>,
    /// A fragmented data message being assembled: opcode and payload so far. Boxed: rare,
    /// and every idle connection holds a decoder.
    message: Option<Box<(u8, Vec<u8>)>>,
    max_message: usize,
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl FrameDecoder {
    pub fn new(max_message: usize) -> Self {
        FrameDecoder {
            partial: Vec::new(),
            message: None,
            max_message,
        }
    }

    /// Heap bytes held right now (0 for an idle connection).
    pub fn buffered_capacity(&self) -> usize {
        self.partial.capacity() + self.message.as_ref().map_or(0, |m| m.1.capacity())
    }

    /// Feeds bytes read from the socket; complete events are appended to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<WsEvent>) -> Result<(), WsError> {
        if self.partial.is_empty() {
            let used = self.parse(data, out)?;
            if used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let used = self.parse(&buf, out)?;
            buf.drain(..used);
            if !buf.is_empty() {
                self.partial = buf;
            }
        }
        Ok(())
    }

    /// Parses as many complete frames as `data` holds; returns the bytes consumed.
    fn parse(&mut self, data: &[u8], out: &mut Vec<WsEvent>) -> Result<usize, WsError> {
        let mut pos = 0;
        while let Some(h) = self.header(&data[pos..])? {
            let start = pos + h.header_len;
            let end = start + h.payload_len;
            if data.len() < end {
                break;
            }
            let mut payload = data[start..end].to_vec();
            unmask(&mut payload, h.mask);
            pos = end;
            self.frame(h.fin, h.opcode, payload, out)?;
        }
        Ok(pos)
    }

    /// Parses and validates a frame header; `None` if more bytes are needed.
    fn header(&self, d: &[u8]) -> Result<Option<Header>, WsError> {
        if d.len() < 2 {
            return Ok(None);
        }
        let fin = d[0] & 0x80 != 0;
        if d[0] & 0x70 != 0 {
            return Err(protocol("reserved bits set (no extension negotiated)"));
        }
        let opcode = d[0] & 0x0F;
        let masked = d[1] & 0x80 != 0;
        if !masked {
            return Err(protocol("client frames must be masked"));
        }
        let (len, mut header_len) = match d[1] & 0x7F {
            126 => {
                if d.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([d[2], d[3]]) as u64, 4)
            }
            127 => {
                if d.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&d[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(protocol("invalid payload length"));
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err(protocol("fragmented control frame"));
                }
                if len > 125 {
                    return Err(protocol("control frame longer than 125 bytes"));
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.message.is_some() {
                    return Err(protocol("new data frame inside a fragmented message"));
                }
            }
            OP_CONTINUATION => {
                if self.message.is_none() {
                    return Err(protocol("continuation frame without a message to continue"));
                }
            }
            _ => return Err(protocol("unknown opcode")),
        }
        let so_far = self.message.as_ref().map_or(0, |m| m.1.len()) as u64;
        if len.saturating_add(so_far) > self.max_message as u64 {
            return Err(WsError {
                code: 1009,
                reason: "message too big",
            });
        }
        if d.len() < header_len + 4 {
            return Ok(None);
        }
        let mask = [
            d[header_len],
            d[header_len + 1],
            d[header_len + 2],
            d[header_len + 3],
        ];
        header_len += 4;
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            header_len,
            payload_len: len as usize,
        }))
    }

    fn frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: Vec<u8>,
        out: &mut Vec<WsEvent>,
    ) -> Result<(), WsError> {
        match opcode {
            OP_PING => out.push(WsEvent::Ping(Bytes::from(payload))),
            OP_PONG => out.push(WsEvent::Pong),
            OP_CLOSE => out.push(close_event(&payload)?),
            OP_TEXT | OP_BINARY if fin => out.push(data_event(opcode, payload)?),
            OP_TEXT | OP_BINARY => self.message = Some(Box::new((opcode, payload))),
            _ => {
                // Continuation (validated in header()).
                let Some(mut message) = self.message.take() else {
                    return Err(protocol("continuation frame without a message to continue"));
                };
                message.1.extend_from_slice(&payload);
                if fin {
                    let (op, buf) = *message;
                    out.push(data_event(op, buf)?);
                } else {
                    self.message = Some(message);
                }
            }
        }
        Ok(())
    }
}

fn data_event(opcode: u8, payload: Vec<u8>) -> Result<WsEvent, WsError> {
    if opcode == OP_TEXT {
        if std::str::from_utf8(&payload).is_err() {
            return Err(WsError {
                code: 1007,
                reason: "text message is not valid UTF-8",
            });
        }
        Ok(WsEvent::Text(Bytes::from(payload)))
    } else {
        Ok(WsEvent::Binary(Bytes::from(payload)))
    }
}

fn close_event(payload: &[u8]) -> Result<WsEvent, WsError> {
    match payload.len() {
        0 => Ok(WsEvent::Close(None, String::new())),
        1 => Err(protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| WsError {
                code: 1007,
                reason: "close reason is not valid UTF-8",
            })?;
            Ok(WsEvent::Close(Some(code), reason.to_owned()))
        }
    }
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        c[0] ^= mask[0];
        c[1] ^= mask[1];
        c[2] ^= mask[2];
        c[3] ^= mask[3];
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Encodes an unmasked server frame header into `out`; returns its length (2, 4 or 10).
pub fn encode_header(opcode: u8, payload_len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | (opcode & 0x0F);
    if payload_len < 126 {
        out[1] = payload_len as u8;
        2
    } else if payload_len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// A complete close frame with `code` and `reason` (truncated to fit 125 bytes).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut reason = reason;
    while reason.len() > 123 {
        let mut cut = 123;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    let mut header = [0u8; 10];
    let n = encode_header(OP_CLOSE, payload.len(), &mut header);
    let mut frame = header[..n].to_vec();
    frame.extend_from_slice(&payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if payload.len() < 126 {
            f.push(0x80 | payload.len() as u8);
        } else if payload.len() <= 65535 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        unmask(&mut p, mask);
        f.extend_from_slice(&p);
        f
    }

    fn feed_all(d: &mut FrameDecoder, data: &[u8]) -> Result<Vec<WsEvent>, WsError> {
        let mut out = Vec::new();
        d.feed(data, &mut out)?;
        Ok(out)
    }

    #[test]
    fn text_binary_ping_close() {
        let mut d = FrameDecoder::new(1 << 20);
        let mut data = client_frame(true, OP_TEXT, b"hello");
        data.extend(client_frame(true, OP_BINARY, &[0, 255]));
        data.extend(client_frame(true, OP_PING, b"p"));
        data.extend(client_frame(
            true,
            OP_CLOSE,
            &[0x03, 0xE8, b'b', b'y', b'e'],
        ));
        let ev = feed_all(&mut d, &data).unwrap();
        assert_eq!(
            ev,
            vec![
                WsEvent::Text(Bytes::from_static(b"hello")),
                WsEvent::Binary(Bytes::from_static(&[0, 255])),
                WsEvent::Ping(Bytes::from_static(b"p")),
                WsEvent::Close(Some(1000), "bye".into()),
            ]
        );
        assert_eq!(d.buffered_capacity(), 0);
    }

    #[test]
    fn byte_by_byte_and_then_idle_holds_nothing() {
        let mut d = FrameDecoder::new(1 << 20);
        let big = vec![b'x'; 70_000];
        let data = client_frame(true, OP_TEXT, &big);
        let mut got = Vec::new();
        for chunk in data.chunks(999) {
            got.extend(feed_all(&mut d, chunk).unwrap());
        }
        assert_eq!(got, vec![WsEvent::Text(Bytes::from(big))]);
        assert_eq!(d.buffered_capacity(), 0);
    }

    #[test]
    fn fragments_with_interleaved_ping() {
        let mut d = FrameDecoder::new(1 << 20);
        let mut data = client_frame(false, OP_TEXT, b"hel");
        data.extend(client_frame(true, OP_PING, b""));
        data.extend(client_frame(false, OP_CONTINUATION, b"lo "));
        data.extend(client_frame(true, OP_CONTINUATION, "wörld".as_bytes()));
        let ev = feed_all(&mut d, &data).unwrap();
        assert_eq!(
            ev,
            vec![
                WsEvent::Ping(Bytes::new()),
                WsEvent::Text(Bytes::from("hello wörld"))
            ]
        );
    }

    #[test]
    fn violations() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x01, b'a'], 1002),                      // unmasked
            (client_frame(true, 0x3, b""), 1002),                // unknown opcode
            (client_frame(false, OP_PING, b""), 1002),           // fragmented control
            (client_frame(true, OP_PING, &[0; 126]), 1002),      // long control
            (client_frame(true, OP_CONTINUATION, b"x"), 1002),   // nothing to continue
            (client_frame(true, OP_TEXT, &[0xff, 0xfe]), 1007),  // bad utf-8
            (client_frame(true, OP_CLOSE, &[0x03, 0xED]), 1002), // 1005 not allowed
            (client_frame(true, OP_CLOSE, &[0x03]), 1002),       // 1-byte close
            (client_frame(true, OP_BINARY, &[0; 2000]), 1009),   // too big
            (
                {
                    let mut f = client_frame(true, OP_TEXT, b"a");
                    f[0] |= 0x40;
                    f
                },
                1002,
            ), // rsv
        ];
        for (data, code) in cases {
            let mut d = FrameDecoder::new(1024);
            assert_eq!(feed_all(&mut d, &data).unwrap_err().code, code, "{data:?}");
        }
        let mut d = FrameDecoder::new(1024);
        let mut data = client_frame(false, OP_TEXT, b"a");
        data.extend(client_frame(true, OP_TEXT, b"b"));
        assert_eq!(feed_all(&mut d, &data).unwrap_err().code, 1002);
    }

    #[test]
    fn too_big_is_detected_from_the_header_alone() {
        let mut d = FrameDecoder::new(1024);
        let data = client_frame(true, OP_BINARY, &[0; 5000]);
        assert_eq!(feed_all(&mut d, &data[..14]).unwrap_err().code, 1009);
    }

    #[test]
    fn header_encoding() {
        let mut h = [0u8; 10];
        assert_eq!(encode_header(OP_TEXT, 5, &mut h), 2);
        assert_eq!(&h[..2], &[0x81, 5]);
        assert_eq!(encode_header(OP_BINARY, 300, &mut h), 4);
        assert_eq!(&h[..4], &[0x82, 126, 1, 44]);
        assert_eq!(encode_header(OP_TEXT, 70_000, &mut h), 10);
        assert_eq!(&h[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        let c = close_frame(1012, &"é".repeat(100));
        assert!(c.len() <= 127);
        assert_eq!(&c[..4], &[0x88, c.len() as u8 - 2, 0x03, 0xF4]);
    }
}
