//! Unit tests of [`super`] (codec.rs).

use super::*;

fn text(f: &Frame) -> &str {
    match f {
        Frame::Text(b) => std::str::from_utf8(b).unwrap(),
        Frame::Binary(_) => panic!("expected text"),
    }
}

#[test]
fn decodes_a_phoenix_js_join() {
    let m = decode_client_text(br#"["3","3","room:lobby","phx_join",{"token":"x"}]"#).unwrap();
    assert_eq!(m.join_ref.as_deref(), Some("3"));
    assert_eq!(m.msg_ref.as_deref(), Some("3"));
    assert_eq!(m.topic, "room:lobby");
    assert_eq!(m.event, "phx_join");
    assert_eq!(m.payload.as_json().unwrap().get(), r#"{"token":"x"}"#);
}

#[test]
fn heartbeat_has_null_join_ref() {
    let m = decode_client_text(br#"[null,"7","phoenix","heartbeat",{}]"#).unwrap();
    assert_eq!(m.join_ref, None);
    assert_eq!(m.msg_ref.as_deref(), Some("7"));
}

#[test]
fn wrong_arity_keeps_the_ref_for_the_error_reply() {
    let e = decode_client_text(br#"[null,"9","room:a","x"]"#).unwrap_err();
    assert_eq!(e.msg_ref.as_deref(), Some("9"));
    assert_eq!(e.topic.as_deref(), Some("room:a"));
    assert!(e.reason.contains("got 4"), "{}", e.reason);
}

#[test]
fn rejects_non_json_and_wrong_types() {
    assert!(decode_client_text(b"hello").is_err());
    assert!(decode_client_text(b"{}").is_err());
    assert!(decode_client_text(br#"[null,"1",5,"ev",{}]"#)
        .unwrap_err()
        .reason
        .contains("topic"));
    assert!(decode_client_text(br#"[null,"1","t",[],{}]"#)
        .unwrap_err()
        .reason
        .contains("event"));
}

#[test]
fn reply_and_broadcast_text_layout() {
    let f = encode_reply(
        Some("1"),
        Some("2"),
        "room:a",
        "ok",
        &Payload::empty_object(),
    )
    .unwrap();
    assert_eq!(
        text(&f),
        r#"["1","2","room:a","phx_reply",{"response":{},"status":"ok"}]"#
    );
    let p = Payload::json(&serde_json::json!({"body":"hi \"x\""})).unwrap();
    let f = encode_broadcast(None, "room:\"a", "new_msg", &p).unwrap();
    assert_eq!(
        text(&f),
        r#"[null,null,"room:\"a","new_msg",{"body":"hi \"x\""}]"#
    );
}

#[test]
fn offset_broadcast_equals_a_broadcast_with_that_ref() {
    let p = Payload::json(&serde_json::json!({"body": "x"})).unwrap();
    assert_eq!(
        encode_broadcast_with_offset(42, "room:\"a", "msg", &p).unwrap(),
        encode_broadcast(Some("42"), "room:\"a", "msg", &p).unwrap()
    );
    let b = Payload::Binary(Bytes::from_static(b"\x01"));
    assert_eq!(
        encode_broadcast_with_offset(7, "t", "e", &b).unwrap(),
        encode_broadcast(None, "t", "e", &b).unwrap()
    );
}

fn raw_json(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

/// The expected frames are those of Phoenix's own serializer tests
/// (`test/phoenix/socket/v2_json_serializer_test.exs`).
#[test]
fn frames_are_byte_for_byte_phoenix_s() {
    let m = Payload::Json(raw_json("\"m\""));
    // V2: fastlane (broadcast), message, reply.
    assert_eq!(
        text(&encode_broadcast(None, "t", "e", &m).unwrap()),
        r#"[null,null,"t","e","m"]"#
    );
    assert_eq!(
        text(&encode_push(None, None, "t", "e", &m).unwrap()),
        r#"[null,null,"t","e","m"]"#
    );
    assert_eq!(
        text(&encode_reply(None, None, "t", "ok", &m).unwrap()),
        r#"[null,null,"t","phx_reply",{"response":"m","status":"ok"}]"#
    );
}

#[test]
fn binary_push_round_trip() {
    let payload = Payload::Binary(Bytes::from_static(&[0, 1, 2, 255]));
    let Frame::Binary(b) =
        encode_client_push(Some("1"), Some("5"), "room:a", "file", &payload).unwrap()
    else {
        panic!()
    };
    let m = decode_client_binary(&b).unwrap();
    assert_eq!(m.join_ref.as_deref(), Some("1"));
    assert_eq!(m.msg_ref.as_deref(), Some("5"));
    assert_eq!(m.topic, "room:a");
    assert_eq!(m.event, "file");
    match m.payload {
        Payload::Binary(p) => assert_eq!(&p[..], &[0, 1, 2, 255]),
        _ => panic!(),
    }
}

#[test]
fn server_binary_frames_decode_like_phoenix_js() {
    let payload = Payload::Binary(Bytes::from_static(b"\x01\x02"));
    let Frame::Binary(b) = encode_broadcast(None, "t", "ev", &payload).unwrap() else {
        panic!()
    };
    assert_eq!(&b[..], b"\x02\x01\x02tev\x01\x02");
    assert_eq!(
        decode_server_binary(&b).unwrap(),
        ServerBinary::Broadcast {
            topic: "t".into(),
            event: "ev".into(),
            payload: Bytes::from_static(b"\x01\x02")
        }
    );
    let Frame::Binary(b) = encode_reply(Some("1"), Some("2"), "t", "ok", &payload).unwrap() else {
        panic!()
    };
    assert_eq!(&b[..], b"\x01\x01\x01\x01\x0212tok\x01\x02");
    let Frame::Binary(b) = encode_push(Some("1"), None, "t", "ev", &payload).unwrap() else {
        panic!()
    };
    assert_eq!(&b[..], b"\x00\x01\x01\x021tev\x01\x02");
}

/// The frames realtime-js 2.119.1 sends for `send({type: 'broadcast', event: 'x', ...})`.
#[test]
fn supabase_user_broadcasts_decode_to_the_text_envelope() {
    let mut frame = vec![3, 1, 1, 14, 1, 0, 1];
    frame.extend_from_slice(b"67realtime:room1x");
    frame.extend_from_slice("{\"hello\":\"wörld\"}".as_bytes());
    let m = decode_client_binary(&Bytes::from(frame)).unwrap();
    assert_eq!(
        (
            m.join_ref.as_deref(),
            m.msg_ref.as_deref(),
            m.topic.as_str(),
            m.event.as_str()
        ),
        (Some("6"), Some("7"), "realtime:room1", "broadcast")
    );
    assert_eq!(
        m.payload.as_json().unwrap().get(),
        r#"{"type":"broadcast","event":"x","payload":{"hello":"wörld"}}"#
    );
    // ArrayBuffer payloads (encoding 0) and broken JSON are errors with the ref kept.
    let mut raw = vec![3, 1, 1, 14, 1, 0, 0];
    raw.extend_from_slice(b"68realtime:room1x\x01\x02");
    let e = decode_client_binary(&Bytes::from(raw)).unwrap_err();
    assert_eq!(
        (e.msg_ref.as_deref(), e.topic.as_deref()),
        (Some("8"), Some("realtime:room1"))
    );
    let mut bad = vec![3, 1, 1, 1, 1, 0, 1];
    bad.extend_from_slice(b"12tx{oops");
    assert!(decode_client_binary(&Bytes::from(bad)).is_err());
    assert!(decode_client_binary(&Bytes::from_static(&[3, 1, 1])).is_err());
}

#[test]
fn truncated_binary_frames_are_errors_not_panics() {
    for bytes in [
        &b""[..],
        b"\x00",
        b"\x00\x05\x00\x00\x00ab",
        b"\x07abc",
        b"\x01\x01",
    ] {
        let b = Bytes::copy_from_slice(bytes);
        assert!(decode_client_binary(&b).is_err());
        let _ = decode_server_binary(&b);
    }
}

#[test]
fn long_names_cannot_go_binary() {
    let topic = "x".repeat(256);
    let p = Payload::Binary(Bytes::new());
    assert_eq!(
        encode_broadcast(None, &topic, "e", &p),
        Err(EncodeError::FieldTooLong("topic"))
    );
}
