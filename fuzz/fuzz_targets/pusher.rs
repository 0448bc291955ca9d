//! Pusher's protocol 7 codec (`protocol/pusher.rs`).
//!
//! Arbitrary bytes through `decode_client`: it never panics, and what it refuses has a reason.
//! What it accepts re-encodes as the server's frames for it — the channel event a client event
//! becomes, `subscription_succeeded`, `subscription_error` — which are JSON objects with the
//! same event and channel, and a client event's `data` survives as Pusher delivers it (a JSON
//! string as that string, anything else as the string of the same JSON). `pusher:error` frames
//! of the refusal reasons are JSON too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::protocol::pusher::{self, ClientMessage};
use serde_json::Value;

fn parse(s: &str) -> Value {
    serde_json::from_str(s).expect("a server frame is JSON")
}

fuzz_target!(|data: &[u8]| {
    let msg = match pusher::decode_client(data) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.0.is_empty());
            let err = parse(&pusher::error(None, &e.0));
            assert_eq!(err["data"]["message"], Value::String(e.0));
            return;
        }
    };
    match msg {
        ClientMessage::Ping | ClientMessage::Pong => {}
        ClientMessage::Subscribe { channel, .. } | ClientMessage::Unsubscribe { channel } => {
            let _ = pusher::valid_channel_name(&channel);
            let ok = parse(&pusher::subscription_succeeded(&channel));
            assert_eq!(ok["channel"], Value::String(channel.clone()));
            let err = parse(&pusher::subscription_error(
                &channel,
                "AuthError",
                "no",
                401,
            ));
            assert_eq!(err["channel"], Value::String(channel));
        }
        ClientMessage::Signin { auth: _, user_data } => {
            // The signed user_data is echoed back as it is, whatever it holds.
            let ok = parse(&pusher::signin_success(&user_data));
            assert_eq!(ok["data"]["user_data"], Value::String(user_data.clone()));
            if let Some(channel) = pusher::server_to_user_channel(&user_data) {
                assert!(pusher::is_server_to_user_channel(&channel));
            }
        }
        ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } => {
            // A presence client event's frame carries the sender's user_id.
            let with_user = parse(&pusher::channel_event_from(
                &event,
                &channel,
                &data,
                Some(&channel),
            ));
            assert_eq!(with_user["user_id"], Value::String(channel.clone()));
            assert!(event.starts_with(pusher::CLIENT_EVENT_PREFIX));
            let sent: Value = serde_json::from_str(&data).expect("client event data is JSON");
            let frame = parse(&pusher::channel_event(&event, &channel, &data));
            assert_eq!(frame["event"], Value::String(event));
            assert_eq!(frame["channel"], Value::String(channel));
            let delivered = frame["data"].as_str().expect("data is a string");
            match sent {
                Value::String(s) => assert_eq!(delivered, s),
                other => assert_eq!(parse(delivered), other),
            }
        }
    }
});
