//! Unit tests of [`super`] (longpoll.rs).

use super::*;
use crate::protocol::{encode_client_push, Payload};

#[test]
fn parse_body_decodes_text_and_base64_lines_in_order() {
    let Frame::Binary(bin) = encode_client_push(
        Some("3"),
        Some("4"),
        "room:a",
        "file",
        &Payload::Binary(Bytes::from_static(b"\x00\xff")),
    )
    .unwrap() else {
        panic!("expected a binary frame")
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bin);
    let body =
        format!("  [\"3\",\"3\",\"room:lobby\",\"phx_join\",{{}}]\r\n\n{b64}\n\t\nnot base64!\n");
    let out = parse_body(body.as_bytes(), MAX_POST_LINES, 1024, Vsn::V2).unwrap();
    assert_eq!(out.len(), 3);
    let join = out[0].as_ref().unwrap();
    assert_eq!(
        (join.topic.as_str(), join.event.as_str()),
        ("room:lobby", "phx_join")
    );
    let push = out[1].as_ref().unwrap();
    assert_eq!(push.msg_ref.as_deref(), Some("4"));
    match &push.payload {
        Payload::Binary(b) => assert_eq!(&b[..], b"\x00\xff"),
        Payload::Json(_) => panic!("expected a binary payload"),
    }
    // Neither JSON nor base64: a decode error for that line only.
    assert!(out[2].is_err());
    assert!(parse_body(b"", MAX_POST_LINES, 1024, Vsn::V2)
        .unwrap()
        .is_empty());
    assert!(parse_body(b" \n\r\n", MAX_POST_LINES, 1024, Vsn::V2)
        .unwrap()
        .is_empty());
}

#[test]
fn parse_body_limits_lines_and_sizes() {
    let line = "[null,\"1\",\"phoenix\",\"heartbeat\",{}]\n";
    assert_eq!(
        parse_body(line.repeat(3).as_bytes(), 3, 1024, Vsn::V2)
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        parse_body(line.repeat(4).as_bytes(), 3, 1024, Vsn::V2).unwrap_err(),
        BodyError::TooManyLines(4)
    );
    // A text line counts its bytes; a base64 line what it decodes to.
    let text = format!("[null,\"1\",\"t\",\"e\",\"{}\"]", "x".repeat(100));
    assert_eq!(
        parse_body(text.as_bytes(), 10, 100, Vsn::V2).unwrap_err(),
        BodyError::TooLarge(text.len())
    );
    let b64 = "A".repeat(136); // decodes to 102 bytes
    assert_eq!(
        parse_body(b64.as_bytes(), 10, 100, Vsn::V2).unwrap_err(),
        BodyError::TooLarge(102)
    );
    assert_eq!(
        parse_body(b64.as_bytes(), 10, 102, Vsn::V2).unwrap().len(),
        1
    );
}
