//! The server-side WebSocket frame decoder (`FrameDecoder::feed`, RFC 6455).
//!
//! Input: two bytes of message-size limit, one byte `n`, `n % 8 + 1` chunk sizes, then the
//! byte stream. The stream is fed once whole and once in chunks of those sizes (cycled, empty
//! feeds included): the events and the first violation must be the same whatever the
//! chunking. Events obey the protocol: text is UTF-8, data messages fit the limit, pings carry
//! at most 125 bytes, close codes are valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::protocol::ws_frame::{FrameDecoder, WsEvent};

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let max = u16::from_le_bytes([head[0], head[1]]) as usize;
    let n = (head[2] % 8) as usize + 1;
    if rest.len() < n {
        return;
    }
    let (sizes, stream) = rest.split_at(n);
    let mut sizes: Vec<usize> = sizes.iter().map(|b| (*b % 64) as usize).collect();
    if sizes.iter().all(|s| *s == 0) {
        sizes.push(1);
    }

    let mut whole = FrameDecoder::new(max);
    let mut whole_events = Vec::new();
    let whole_result = whole.feed(stream, &mut whole_events);

    let mut chunked = FrameDecoder::new(max);
    let mut chunked_events = Vec::new();
    let mut chunked_result = Ok(());
    let mut pos = 0;
    for size in sizes.iter().cycle() {
        let end = (pos + size).min(stream.len());
        chunked_result = chunked.feed(&stream[pos..end], &mut chunked_events);
        pos = end;
        if chunked_result.is_err() || pos == stream.len() {
            break;
        }
    }

    assert_eq!(
        whole_result, chunked_result,
        "the verdict depends on chunking"
    );
    assert_eq!(
        whole_events, chunked_events,
        "the events depend on chunking"
    );

    for e in &whole_events {
        match e {
            WsEvent::Text(t) => {
                assert!(t.len() <= max);
                assert!(std::str::from_utf8(t).is_ok(), "text event is not UTF-8");
            }
            WsEvent::Binary(b) => assert!(b.len() <= max),
            WsEvent::Ping(p) => assert!(p.len() <= 125),
            WsEvent::Pong => {}
            WsEvent::Close(code, reason) => {
                if let Some(c) = code {
                    assert!(matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999), "{c}");
                } else {
                    assert!(reason.is_empty());
                }
                assert!(reason.len() <= 123);
            }
        }
    }
    if let Err(e) = whole_result {
        assert!(matches!(e.code, 1002 | 1007 | 1009), "{e:?}");
    }
});
