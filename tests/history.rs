//! History and recovery: offsets on broadcasts (to joins that ask with `recover` or `offsets`),
//! replay after a reconnect (exactly the missed messages, in order, before live ones), "too
//! old" and "other epoch" answers, and HTTP polling.

mod common;

use common::{json, Server, API_KEY};
use plexus_client::protocol::Message;
use plexus_client::Client;
use serde_json::{json, Value};
use std::time::Duration;

fn offset(m: &Message) -> u64 {
    m.msg_ref
        .as_deref()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no offset in {m:?}"))
}

fn body(m: &Message) -> Value {
    serde_json::from_str(m.payload.as_json().unwrap().get()).unwrap()
}

async fn api_broadcast(s: &Server, topic: &str, n: u64) -> Value {
    s.broadcast(topic, "msg", json!({ "n": n })).await
}

#[tokio::test]
async fn reconnect_with_last_offset_gets_exactly_the_missed_messages_in_order() {
    let s = Server::start().await;
    let mut reader = s.client("reader").await;
    let reply = reader
        .join("room:hist", json!({"recover": null}))
        .await
        .unwrap();
    let epoch = reply.json()["epoch"].as_str().unwrap().to_owned();
    assert_eq!(reply.json()["offset"], 0);
    for n in 1..=3 {
        assert_eq!(api_broadcast(&s, "room:hist", n).await["offset"], n);
    }
    let mut last = 0;
    for n in 1..=3 {
        let m = reader.recv_event("room:hist", "msg").await.unwrap();
        assert_eq!((offset(&m), body(&m)["n"].as_u64()), (n, Some(n)));
        last = offset(&m);
    }
    reader.close().await;

    // Missed while away: 5 messages, from the API and from another client.
    let mut writer = s.client("writer").await;
    writer.join("room:hist", json!({})).await.unwrap();
    for n in 4..=6 {
        api_broadcast(&s, "room:hist", n).await;
    }
    for n in 7..=8 {
        writer
            .push_json("room:hist", "msg", &json!({"n": n}))
            .await
            .unwrap();
    }

    let mut back = s.client("reader").await;
    let reply = back
        .join(
            "room:hist",
            json!({"recover": {"epoch": epoch, "offset": last}}),
        )
        .await
        .unwrap();
    assert_eq!(reply.json()["recovered"], true, "{:?}", reply.json());
    assert_eq!(reply.json()["offset"], 8);
    for n in 4..=8 {
        let m = back.recv_event("room:hist", "msg").await.unwrap();
        assert_eq!((offset(&m), body(&m)["n"].as_u64()), (n, Some(n)));
    }
    // Then live, and nothing twice.
    api_broadcast(&s, "room:hist", 9).await;
    let m = back.recv_event("room:hist", "msg").await.unwrap();
    assert_eq!(offset(&m), 9);
    assert!(back
        .recv_event_timeout("room:hist", "msg", Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn recovery_during_a_steady_stream_loses_and_doubles_nothing() {
    let s = Server::start().await;
    let mut first = s.client("reader").await;
    let epoch = first
        .join("room:stream", json!({"recover": null}))
        .await
        .unwrap()
        .json()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    first.close().await;
    // A publisher keeps going while the reader recovers.
    let port = s.port;
    let publisher = tokio::spawn(async move {
        let auth = format!("Bearer {API_KEY}");
        for n in 1..=300u64 {
            let payload =
                json!({"topic": "room:stream", "event": "msg", "payload": {"n": n}}).to_string();
            let _ = common::http_raw(
                port,
                "POST",
                "/api/broadcast",
                &[("Authorization", &auth)],
                &payload,
            )
            .await;
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut reader = s.client("reader").await;
    let reply = reader
        .join(
            "room:stream",
            json!({"recover": {"epoch": epoch, "offset": 0}}),
        )
        .await
        .unwrap();
    assert_eq!(reply.json()["recovered"], true, "{:?}", reply.json());
    publisher.await.unwrap();
    let mut seen = Vec::new();
    while let Some(m) = reader
        .recv_event_timeout("room:stream", "msg", Duration::from_millis(500))
        .await
        .unwrap()
    {
        seen.push(offset(&m));
    }
    assert_eq!(seen, (1..=300).collect::<Vec<u64>>());
}

#[tokio::test]
async fn too_old_and_other_epoch_are_reported_not_replayed() {
    let cfg = "profile = \"dev\"\n[[channels]]\ntopic = \"room:*\"\nhistory_size = 3\n";
    let mut s = Server::start_with(Some(cfg), &[]).await;
    let mut c = s.client("a").await;
    let epoch = c
        .join("room:old", json!({"recover": null}))
        .await
        .unwrap()
        .json()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for n in 1..=10 {
        api_broadcast(&s, "room:old", n).await;
    }
    let mut again = s.client("a").await;
    let reply = again
        .join(
            "room:old",
            json!({"recover": {"epoch": epoch, "offset": 2}}),
        )
        .await
        .unwrap();
    assert_eq!(reply.json()["recovered"], false);
    assert_eq!(reply.json()["offset"], 10);
    assert!(again
        .recv_event_timeout("room:old", "msg", Duration::from_millis(200))
        .await
        .unwrap()
        .is_none());
    // Within the retained window it works.
    let reply = again
        .join(
            "room:old",
            json!({"recover": {"epoch": epoch, "offset": 7}}),
        )
        .await
        .unwrap();
    assert_eq!(reply.json()["recovered"], true);
    let m = again.recv_event("room:old", "msg").await.unwrap();
    assert_eq!(offset(&m), 8);

    // A restarted memory node has lost its history: another epoch.
    s.restart().await;
    let mut after = s.client("a").await;
    let reply = after
        .join(
            "room:old",
            json!({"recover": {"epoch": epoch, "offset": 10}}),
        )
        .await
        .unwrap();
    assert_eq!(reply.json()["recovered"], false);
    assert_ne!(reply.json()["epoch"].as_str().unwrap(), epoch);
}

#[tokio::test]
async fn http_polling_of_history() {
    let s = Server::start().await;
    for n in 1..=4 {
        api_broadcast(&s, "room:poll", n).await;
    }
    let auth = format!("Bearer {API_KEY}");
    let (st, resp) = s
        .http(
            "GET",
            "/api/channels/room:poll/history?since=2",
            &[("Authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{resp}");
    let page = json(&resp);
    assert_eq!(page["complete"], true);
    assert_eq!(page["offset"], 4);
    assert_eq!(
        page["messages"],
        json!([
            {"offset": 3, "event": "msg", "payload": {"n": 3}},
            {"offset": 4, "event": "msg", "payload": {"n": 4}},
        ])
    );
    // With a user token that may join the topic.
    let token = s.token("poller");
    let (st, resp) = s
        .http(
            "GET",
            &format!("/api/channels/room:poll/history?since=3&token={token}"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{resp}");
    assert_eq!(json(&resp)["messages"].as_array().unwrap().len(), 1);
    // Another epoch: everything retained, marked incomplete.
    let (_, resp) = s
        .http(
            "GET",
            "/api/channels/room:poll/history?since=3&epoch=bogus",
            &[("Authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(json(&resp)["complete"], false);
    assert_eq!(json(&resp)["messages"].as_array().unwrap().len(), 4);
    // Refusals.
    let (st, resp) = s
        .http(
            "GET",
            "/api/channels/secret/history",
            &[("Authorization", &format!("Bearer {token}"))],
            "",
        )
        .await
        .unwrap();
    assert_eq!(st, 403, "{resp}");
    let (st, _) = s
        .http("GET", "/api/channels/room:poll/history", &[], "")
        .await
        .unwrap();
    assert_eq!(st, 401);
}

#[tokio::test]
async fn presence_diffs_carry_no_offset_and_do_not_enter_history() {
    let s = Server::start().await;
    let mut a: Client = s.client("a").await;
    a.join("room:mixed", json!({"recover": null}))
        .await
        .unwrap();
    let diff = a.recv_event("room:mixed", "presence_diff").await.unwrap();
    assert_eq!(diff.msg_ref, None);
    let auth = format!("Bearer {API_KEY}");
    let (_, resp) = s
        .http(
            "GET",
            "/api/channels/room:mixed/history",
            &[("Authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(json(&resp)["offset"], 0);
}

#[tokio::test]
async fn offsets_reach_only_joins_that_ask_for_them() {
    let s = Server::start().await;
    let mut plain = s.client("plain").await;
    let mut asks = s.client("asks").await;
    let mut recovers = s.client("recovers").await;
    plain.join("room:who", json!({})).await.unwrap();
    asks.join("room:who", json!({"offsets": true}))
        .await
        .unwrap();
    recovers
        .join("room:who", json!({"recover": null}))
        .await
        .unwrap();
    api_broadcast(&s, "room:who", 1).await;
    // Phoenix's shape for a plain join: `[null, null, topic, event, payload]`.
    let m = plain.recv_event("room:who", "msg").await.unwrap();
    assert_eq!((m.join_ref, m.msg_ref), (None, None));
    for c in [&mut asks, &mut recovers] {
        let m = c.recv_event("room:who", "msg").await.unwrap();
        assert_eq!((m.join_ref.clone(), offset(&m)), (None, 1));
    }
}
