//! The backend HTTP API: publishing with the API key, listing channels, health and metrics.

mod common;

use common::{json, Server, API_KEY};
use plexus_client::{Client, ConnectOptions};
use serde_json::json;

fn auth() -> String {
    format!("Bearer {API_KEY}")
}

#[tokio::test]
async fn api_broadcast_reaches_every_subscriber() {
    let s = Server::start().await;
    let mut a = s.client("alice").await;
    let mut b = s.client("bob").await;
    a.join("room:news", json!({})).await.unwrap();
    b.join("room:news", json!({})).await.unwrap();
    let auth = auth();
    let body = r#"{"topic":"room:news","event":"headline","payload":{"title":"Plexus ships"}}"#;
    let (st, resp) = s
        .http("POST", "/api/broadcast", &[("Authorization", &auth)], body)
        .await
        .unwrap();
    assert_eq!(st, 200, "{resp}");
    for c in [&mut a, &mut b] {
        let m = c.recv_event("room:news", "headline").await.unwrap();
        assert_eq!(
            m.payload.as_json().unwrap().get(),
            r#"{"title":"Plexus ships"}"#
        );
    }
}

#[tokio::test]
async fn api_requires_the_key_and_a_valid_body() {
    let s = Server::start().await;
    let body = r#"{"topic":"room:a","event":"e","payload":{}}"#;
    let (st, resp) = s.http("POST", "/api/broadcast", &[], body).await.unwrap();
    assert_eq!(st, 401);
    assert!(json(&resp)["error"].as_str().unwrap().contains("API key"));
    let (st, resp) = s
        .http(
            "POST",
            "/api/broadcast",
            &[("Authorization", "Bearer nope")],
            body,
        )
        .await
        .unwrap();
    assert_eq!(st, 403);
    assert_eq!(json(&resp)["error"], "invalid API key");
    let auth = auth();
    for bad in [
        "not json",
        r#"{"topic":"room:a"}"#,
        r#"{"topic":"","event":"e"}"#,
        r#"{"topic":"a","event":"phx_close"}"#,
    ] {
        let (st, resp) = s
            .http("POST", "/api/broadcast", &[("Authorization", &auth)], bad)
            .await
            .unwrap();
        assert_eq!(st, 400, "{bad} → {resp}");
        assert!(json(&resp)["error"].is_string());
    }
    let (st, _) = s.http("GET", "/api/channels", &[], "").await.unwrap();
    assert_eq!(st, 401);
}

#[tokio::test]
async fn channels_lists_live_topics_with_counts() {
    let s = Server::start().await;
    let mut a = s.client("alice").await;
    let mut b = s.client("bob").await;
    a.join("room:one", json!({})).await.unwrap();
    b.join("room:one", json!({})).await.unwrap();
    b.join("room:two", json!({})).await.unwrap();
    let auth = auth();
    let (st, resp) = s
        .http("GET", "/api/channels", &[("Authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(
        json(&resp)["channels"],
        json!([{"topic": "room:one", "subscribers": 2}, {"topic": "room:two", "subscribers": 1}])
    );
    b.close().await;
    // The close is processed asynchronously; poll briefly.
    let mut last = String::new();
    for _ in 0..50 {
        let (_, resp) = s
            .http("GET", "/api/channels", &[("Authorization", &auth)], "")
            .await
            .unwrap();
        if json(&resp)["channels"] == json!([{"topic": "room:one", "subscribers": 1}]) {
            return;
        }
        last = resp;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("channels did not update after a disconnect: {last}");
}

#[tokio::test]
async fn health_and_metrics() {
    let s = Server::start().await;
    let _c = s.client("alice").await;
    let (st, body) = s.http("GET", "/health", &[], "").await.unwrap();
    assert_eq!(st, 200);
    assert_eq!(json(&body)["status"], "ok");
    assert_eq!(json(&body)["connections"], 1);
    let (st, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(st, 200);
    assert!(body.contains("plexus_connections 1"), "{body}");
    assert!(
        body.contains("plexus_connections_refused_total{status=\"403\"} 0"),
        "{body}"
    );
    // Refusals are counted by status; refused joins too.
    let forged = ConnectOptions::new(s.url()).token("not.a.token");
    assert!(Client::connect(forged).await.is_err());
    assert!(Client::connect(ConnectOptions::new(s.url())).await.is_err());
    let mut c = s.client("bob").await;
    assert!(!c.join("secret:x", json!({})).await.unwrap().is_ok());
    let (_, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    for line in [
        "plexus_connections_refused_total{status=\"403\"} 1",
        "plexus_connections_refused_total{status=\"401\"} 1",
        "plexus_joins_refused_total 1",
    ] {
        assert!(body.contains(line), "{line} in {body}");
    }
    assert!(
        s.log().contains("join refused"),
        "refused joins are logged at INFO"
    );
}

#[tokio::test]
async fn api_disconnect_closes_the_users_sockets_with_1001() {
    let s = Server::start().await;
    let mut a1 = s.client("alice").await;
    let mut a2 = s.client("alice").await;
    let mut b = s.client("bob").await;
    let auth = auth();
    let (st, resp) = s
        .http(
            "POST",
            "/api/disconnect",
            &[("Authorization", &auth)],
            r#"{"sub":"alice"}"#,
        )
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert_eq!(json(&resp)["disconnected"], 2);
    for c in [&mut a1, &mut a2] {
        let (code, _) = c.wait_close().await.unwrap();
        assert_eq!(code, Some(1001));
    }
    assert!(b.heartbeat().await.unwrap().is_ok());
    let (st, _) = s
        .http("POST", "/api/disconnect", &[("Authorization", &auth)], "{}")
        .await
        .unwrap();
    assert_eq!(st, 400);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_others_keep_receiving() {
    let cfg = "profile = \"dev\"\n[limits]\nwrite_timeout_secs = 1\noutbox_max_bytes = 262144\n";
    let s = Server::start_with(Some(cfg), &[]).await;
    let mut stalled = s.client("slow").await;
    let mut healthy = s.client("fast").await;
    stalled.join("room:firehose", json!({})).await.unwrap();
    healthy.join("room:firehose", json!({})).await.unwrap();
    let auth = auth();
    let blob = "x".repeat(60_000);
    let body =
        format!(r#"{{"topic":"room:firehose","event":"blob","payload":{{"data":"{blob}"}}}}"#);
    // ~24 MB: more than the kernel buffers and the outbox limit hold for a client that never reads.
    for i in 0..400 {
        let (st, _) = s
            .http("POST", "/api/broadcast", &[("Authorization", &auth)], &body)
            .await
            .unwrap();
        assert_eq!(st, 200);
        // The healthy client keeps up: it reads after every broadcast (reading only every few
        // let its own queue fill on a loaded machine, and it was closed as a slow consumer too).
        while healthy
            .recv_timeout(std::time::Duration::from_millis(if i % 20 == 0 {
                5
            } else {
                1
            }))
            .await
            .unwrap()
            .is_some()
        {}
    }
    // The stalled client is dropped: the topic is left with one subscriber.
    let mut last = String::new();
    for _ in 0..200 {
        while healthy
            .recv_timeout(std::time::Duration::from_millis(5))
            .await
            .unwrap()
            .is_some()
        {}
        let (_, resp) = s
            .http("GET", "/api/channels", &[("Authorization", &auth)], "")
            .await
            .unwrap();
        if json(&resp)["channels"] == json!([{"topic": "room:firehose", "subscribers": 1}]) {
            assert!(healthy.heartbeat().await.unwrap().is_ok());
            return;
        }
        last = resp;
    }
    panic!("the stalled client was not dropped: {last}\n{}", s.log());
}
