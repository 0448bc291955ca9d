//! The Phoenix V2 JSON text codec (`[join_ref, ref, topic, event, payload]`).
//!
//! Arbitrary bytes through `decode_client_text` and `decode_server_text` (one implementation
//! today: they must agree). A decoded message re-encoded with `encode_client_push` decodes to
//! the same fields, and re-encoding that is byte-identical (encoding is a fixed point). The
//! server's own frames for it (`encode_push`, and `encode_reply` wrapping the payload as
//! `{"response", "status"}`) decode as server text to the same fields, payload kept verbatim.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::protocol::{
    decode_client_text, decode_server_text, encode_client_push, encode_push, encode_reply, Frame,
    Message, Payload,
};
use serde_json::value::RawValue;

type Fields = (Option<String>, Option<String>, String, String, String);

fn fields(m: &Message) -> Fields {
    let payload = match &m.payload {
        Payload::Json(raw) => raw.get().to_owned(),
        Payload::Binary(_) => panic!("a text frame decoded to a binary payload"),
    };
    (
        m.join_ref.clone(),
        m.msg_ref.clone(),
        m.topic.clone(),
        m.event.clone(),
        payload,
    )
}

fn text(frame: &Frame) -> &[u8] {
    match frame {
        Frame::Text(b) => b,
        Frame::Binary(_) => panic!("a JSON payload was encoded as a binary frame"),
    }
}

#[derive(serde::Deserialize)]
struct Reply<'a> {
    status: String,
    #[serde(borrow)]
    response: &'a RawValue,
}

fuzz_target!(|data: &[u8]| {
    let client = decode_client_text(data);
    let server = decode_server_text(data);
    let m = match (client, server) {
        (Ok(c), Ok(s)) => {
            assert_eq!(
                fields(&c),
                fields(&s),
                "client and server decoders disagree"
            );
            c
        }
        (Err(c), Err(s)) => {
            assert_eq!(c, s, "client and server decoders disagree");
            assert!(!c.reason.is_empty());
            return;
        }
        _ => panic!("one decoder accepted what the other refused"),
    };
    let original = fields(&m);
    let (join_ref, msg_ref) = (m.join_ref.as_deref(), m.msg_ref.as_deref());

    let frame = encode_client_push(join_ref, msg_ref, &m.topic, &m.event, &m.payload)
        .expect("a JSON payload always encodes");
    let again = decode_client_text(text(&frame)).expect("a re-encoded message decodes");
    assert_eq!(fields(&again), original, "round trip changed a field");
    let frame2 = encode_client_push(
        again.join_ref.as_deref(),
        again.msg_ref.as_deref(),
        &again.topic,
        &again.event,
        &again.payload,
    )
    .expect("a JSON payload always encodes");
    assert_eq!(frame, frame2, "encoding is not a fixed point");

    let push = encode_push(join_ref, msg_ref, &m.topic, &m.event, &m.payload)
        .expect("a JSON payload always encodes");
    let push = decode_server_text(text(&push)).expect("a server push decodes");
    assert_eq!(fields(&push), original);

    let reply = encode_reply(join_ref, msg_ref, &m.topic, "ok", &m.payload)
        .expect("a JSON payload always encodes");
    let reply = decode_server_text(text(&reply)).expect("a server reply decodes");
    assert_eq!(reply.event, "phx_reply");
    assert_eq!(
        (&reply.join_ref, &reply.msg_ref, &reply.topic),
        (&m.join_ref, &m.msg_ref, &m.topic)
    );
    let body = reply.payload.as_json().expect("a JSON reply").get();
    let body: Reply = serde_json::from_str(body).expect("the reply body is {status, response}");
    assert_eq!(body.status, "ok");
    assert_eq!(
        body.response.get(),
        original.4,
        "the response is the payload verbatim"
    );
});
