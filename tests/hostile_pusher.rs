//! Hostile Pusher clients against the real binary in Pusher mode, over raw frames: each test
//! tries to spoof, replay or flood something Pusher's protocol protects, and checks the clear
//! refusal (Pusher's error frames and codes) and that the server keeps serving.

mod common;

use common::pusher::*;
use common::Server;
use serde_json::json;
use tokio_websockets::Message;

async fn still_serving(s: &Server) {
    let (mut ws, _) = connect(s).await;
    send(&mut ws, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(next(&mut ws).await["event"], "pusher:pong");
}

#[tokio::test]
async fn signatures_made_for_another_socket_channel_or_member_are_refused() {
    let s = start(None).await;
    let (mut victim, victim_id) = connect(&s).await;
    let (mut thief, thief_id) = connect(&s).await;
    // A private signature the app gave the victim, replayed by the thief.
    let stolen = sign(&victim_id, "private-payroll");
    let err = subscribe(&mut thief, "private-payroll", Some(stolen)).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    assert_eq!(err["data"]["status"], 401);
    // A presence signature for the thief, with the channel_data changed to another user.
    let mine = json!({"user_id": "thief"}).to_string();
    let auth = sign_presence(&thief_id, "presence-board", &mine);
    let forged = json!({"user_id": "ceo"}).to_string();
    send(
        &mut thief,
        json!({"event": "pusher:subscribe", "data": {"channel": "presence-board", "auth": auth, "channel_data": forged}}),
    )
    .await;
    let err = next(&mut thief).await;
    assert_eq!(err["data"]["status"], 401, "{err}");
    // The victim's sign-in replayed on the thief's socket, or with user_data changed.
    let data = json!({"id": "victim"}).to_string();
    let victim_auth = sign_user(&victim_id, &data);
    for (auth, user_data) in [
        (victim_auth.clone(), data.clone()),
        (
            sign_user(&thief_id, &data),
            json!({"id": "victim", "admin": true}).to_string(),
        ),
    ] {
        send(
            &mut thief,
            json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}),
        )
        .await;
        let err = next(&mut thief).await;
        assert_eq!(err["data"]["code"], 4009, "{err}");
    }
    // The victim's own channel stays the victim's.
    let err = subscribe(&mut thief, "#server-to-user-victim", None).await;
    assert_eq!(err["event"], "pusher:subscription_error", "{err}");
    send(
        &mut victim,
        json!({"event": "pusher:signin", "data": {"auth": victim_auth, "user_data": data}}),
    )
    .await;
    assert_eq!(next(&mut victim).await["event"], "pusher:signin_success");
    still_serving(&s).await;
}

#[tokio::test]
async fn server_events_and_user_ids_cannot_be_forged() {
    // A rule opening every topic to every Phoenix client.
    let s = start(Some("profile = \"dev\"\n[[channels]]\ntopic = \"*\"\n")).await;
    let ch = "presence-room";
    let (mut a, a_id) = connect(&s).await;
    let (mut b, b_id) = connect(&s).await;
    join_presence(&mut a, &a_id, ch, json!({"user_id": "alice"})).await;
    join_presence(&mut b, &b_id, ch, json!({"user_id": "bob"})).await;
    assert_eq!(next(&mut a).await["event"], "pusher_internal:member_added");
    // Internal events from a client are refused, whatever the channel.
    for event in [
        "pusher_internal:member_removed",
        "pusher_internal:subscription_succeeded",
        "pusher:signin_success",
    ] {
        send(
            &mut a,
            json!({"event": event, "channel": ch, "data": {"user_id": "bob"}}),
        )
        .await;
        let err = next(&mut a).await;
        assert_eq!(err["event"], "pusher:error", "{event}: {err}");
    }
    // A client event claiming another user_id arrives with the sender's.
    send(
        &mut a,
        json!({"event": "client-msg", "channel": ch, "data": {"x": 1}, "user_id": "bob"}),
    )
    .await;
    let got = next(&mut b).await;
    assert_eq!(got["event"], "client-msg", "{got}");
    assert_eq!(got["user_id"], "alice");
    // A Phoenix client cannot join a user's server-to-user topic either, even where a rule
    // opens every other topic to it.
    let mut phx = s.client("bob").await;
    let reply = phx.join("#server-to-user-alice", json!({})).await.unwrap();
    assert!(!reply.is_ok(), "{reply:?}");
    still_serving(&s).await;
}

#[tokio::test]
async fn names_floods_and_oversized_input_get_pusher_s_errors() {
    let config = "profile = \"dev\"\n[limits]\nmax_message_bytes = 16384\n";
    let s = start(Some(config)).await;
    let (mut ws, id) = connect(&s).await;
    // Channel names: too long, outside Pusher's alphabet, a server-to-user name of no one.
    for name in [
        "x".repeat(201),
        "room:1".to_owned(),
        "a\u{0}b".to_owned(),
        "#server-to-user-".to_owned(),
    ] {
        let err = subscribe(&mut ws, &name, None).await;
        assert!(
            err["event"] == "pusher:error" || err["event"] == "pusher:subscription_error",
            "{name:?}: {err}"
        );
    }
    // Client events: not on public channels; at most 10 per second (then 4301).
    assert_eq!(subscribe(&mut ws, "lobby", None).await, succeeded("lobby"));
    send(
        &mut ws,
        json!({"event": "client-x", "channel": "lobby", "data": {}}),
    )
    .await;
    assert_eq!(next(&mut ws).await["event"], "pusher:error");
    let ch = "private-flood";
    assert_eq!(
        subscribe(&mut ws, ch, Some(sign(&id, ch))).await,
        succeeded(ch)
    );
    for _ in 0..12 {
        send(
            &mut ws,
            json!({"event": "client-x", "channel": ch, "data": {}}),
        )
        .await;
    }
    // The 11th and 12th are refused (the sender never gets its own client events).
    for _ in 0..2 {
        let err = next(&mut ws).await;
        assert_eq!(err["data"]["code"], 4301, "{err}");
    }
    // Client event data over Pusher's 10 KB is refused; the connection stays.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the rate limit refills
    let big = json!({"event": "client-x", "channel": ch, "data": "y".repeat(11_000)});
    send(&mut ws, big).await;
    let err = next(&mut ws).await;
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert!(err["data"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("too large")));
    // A user_info over 1 KB is refused.
    let big = json!({"user_id": "u", "user_info": "x".repeat(1100)});
    let err = join_presence(&mut ws, &id, "presence-big", big).await;
    assert_eq!(err["data"]["status"], 400, "{err}");
    // A frame over max_message_bytes closes the connection with Pusher's code 4100 (back off).
    use futures_util::SinkExt;
    ws.send(Message::text("x".repeat(20_000))).await.unwrap();
    let err = next(&mut ws).await;
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert_eq!(close_code(&mut ws).await, 4100);
    still_serving(&s).await;
}
