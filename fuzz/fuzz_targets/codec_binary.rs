//! The Phoenix V2 binary codec (kind byte, one length byte per field, fields, payload).
//!
//! Arbitrary bytes through `decode_client_binary` (kind 0 push, kind 3 Supabase user
//! broadcast) and `decode_server_binary` (push, reply, broadcast). Whatever decodes must
//! re-encode to exactly the input bytes: client pushes with `encode_client_push`, server frames
//! with `encode_push`, `encode_reply` and `encode_broadcast` (the layout has no slack, so decode
//! is the inverse of encode). A user broadcast decodes to event `broadcast` with a JSON
//! envelope `{"type": "broadcast", "event", "payload"}` that holds the event it carried.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use plexus_core::protocol::{
    decode_client_binary, decode_server_binary, encode_broadcast, encode_client_push, encode_push,
    encode_reply, Frame, Payload, ServerBinary,
};

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let expected = Frame::Binary(input.clone());

    match decode_client_binary(&input) {
        Ok(m) if data[0] == 3 => {
            assert_eq!(m.event, "broadcast");
            let raw = m
                .payload
                .as_json()
                .expect("a user broadcast decodes to JSON");
            // The user payload stays raw (like a text frame's, it may hold numbers a Value
            // cannot represent); the envelope around it is well formed.
            #[derive(serde::Deserialize)]
            struct Envelope<'a> {
                r#type: String,
                event: String,
                #[serde(borrow)]
                payload: &'a serde_json::value::RawValue,
            }
            let v: Envelope = serde_json::from_str(raw.get()).expect("a valid envelope");
            assert_eq!(v.r#type, "broadcast");
            let event = &data[7 + data[1] as usize + data[2] as usize + data[3] as usize..]
                [..data[4] as usize];
            assert_eq!(v.event.as_bytes(), event);
            assert!(!v.payload.get().is_empty());
        }
        Ok(m) => {
            assert_eq!(data[0], 0, "clients send only kind 0");
            assert!(matches!(m.payload, Payload::Binary(_)));
            assert!(m.join_ref.as_deref() != Some("") && m.msg_ref.as_deref() != Some(""));
            let frame = encode_client_push(
                m.join_ref.as_deref(),
                m.msg_ref.as_deref(),
                &m.topic,
                &m.event,
                &m.payload,
            )
            .expect("decoded fields are at most 255 bytes");
            assert_eq!(frame, expected, "encode(decode(x)) != x (client push)");
        }
        Err(e) => assert!(!e.reason.is_empty()),
    }

    let frame = match decode_server_binary(&input) {
        Ok(ServerBinary::Push {
            join_ref,
            topic,
            event,
            payload,
        }) => encode_push(
            join_ref.as_deref(),
            None,
            &topic,
            &event,
            &Payload::Binary(payload),
        ),
        Ok(ServerBinary::Reply {
            join_ref,
            msg_ref,
            topic,
            status,
            payload,
        }) => encode_reply(
            join_ref.as_deref(),
            msg_ref.as_deref(),
            &topic,
            &status,
            &Payload::Binary(payload),
        ),
        Ok(ServerBinary::Broadcast {
            topic,
            event,
            payload,
        }) => encode_broadcast(None, &topic, &event, &Payload::Binary(payload)),
        Err(_) => return,
    };
    let frame = frame.expect("decoded fields are at most 255 bytes");
    assert_eq!(frame, expected, "encode(decode(x)) != x (server frame)");
});
