//! Presence over real sockets: `presence_state` on join, `presence_diff` on join, update,
//! leave and disconnect, in the shapes phoenix.js merges; the backend API view.

mod common;

use common::{json, Server, API_KEY};
use plexus_client::protocol::Payload;
use plexus_client::Client;
use serde_json::{json, Value};

fn payload(m: &plexus_client::protocol::Message) -> Value {
    serde_json::from_str(m.payload.as_json().unwrap().get()).unwrap()
}

async fn named(s: &Server, sub: &str, name: &str) -> Client {
    let token = plexus_core::auth::Issuer::hs256(common::SECRET.as_bytes())
        .issue(sub, &[], Some(name), 3600)
        .unwrap();
    Client::connect(plexus_client::ConnectOptions::new(s.url()).token(token))
        .await
        .unwrap()
}

#[tokio::test]
async fn state_on_join_and_diffs_for_join_update_leave_and_disconnect() {
    let s = Server::start().await;
    let mut alice = named(&s, "alice", "Alice").await;
    assert!(alice.join("room:p", json!({})).await.unwrap().is_ok());
    let state = payload(&alice.recv_event("room:p", "presence_state").await.unwrap());
    let metas = state["alice"]["metas"].as_array().unwrap();
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0]["name"], "Alice");
    assert!(metas[0]["phx_ref"].is_string() && metas[0]["online_at"].is_u64());
    assert!(!state.to_string().contains("eyJ"), "no token in presence");
    // Everyone, the joiner included, also gets the join as a diff (phoenix.js dedupes by phx_ref).
    let own = payload(&alice.recv_event("room:p", "presence_diff").await.unwrap());
    assert_eq!(
        own["joins"]["alice"]["metas"][0]["phx_ref"],
        metas[0]["phx_ref"]
    );

    let mut bob = named(&s, "bob", "Bob").await;
    bob.join("room:p", json!({})).await.unwrap();
    let state = payload(&bob.recv_event("room:p", "presence_state").await.unwrap());
    assert_eq!(state.as_object().unwrap().len(), 2);
    let diff = payload(&alice.recv_event("room:p", "presence_diff").await.unwrap());
    assert_eq!(diff["joins"]["bob"]["metas"][0]["name"], "Bob");
    assert_eq!(diff["leaves"], json!({}));

    // Meta update: a leave of the old meta and a join of the new one.
    let r = bob
        .push(
            "room:p",
            "presence_update",
            Payload::json(&json!({"status": "typing", "name": "forged"})).unwrap(),
        )
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
    let diff = payload(&alice.recv_event("room:p", "presence_diff").await.unwrap());
    let new = &diff["joins"]["bob"]["metas"][0];
    let old = &diff["leaves"]["bob"]["metas"][0];
    assert_eq!(new["status"], "typing");
    assert_eq!(
        new["name"], "Bob",
        "server-owned keys cannot be overwritten"
    );
    assert_eq!(new["phx_ref_prev"], old["phx_ref"]);

    // The merged meta is capped: growing it key by key is refused once it would pass 4 KiB.
    let big = |k: &str| Payload::json(&json!({ k: "x".repeat(3000) })).unwrap();
    assert!(bob
        .push("room:p", "presence_update", big("a"))
        .await
        .unwrap()
        .is_ok());
    alice.recv_event("room:p", "presence_diff").await.unwrap();
    let r = bob
        .push("room:p", "presence_update", big("b"))
        .await
        .unwrap();
    assert!(r.reason().unwrap().contains("too large"), "{r:?}");

    // The API sees the same state.
    let auth = format!("Bearer {API_KEY}");
    let (st, body) = s
        .http(
            "GET",
            "/api/channels/room:p/presence",
            &[("Authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(st, 200);
    let api = json(&body);
    assert_eq!(api["presence"]["bob"]["metas"][0]["status"], "typing");

    // Leave, then a disconnect: both are leaves.
    bob.leave("room:p").await.unwrap();
    let diff = payload(&alice.recv_event("room:p", "presence_diff").await.unwrap());
    assert_eq!(diff["leaves"]["bob"]["metas"][0]["status"], "typing");
    let mut carol = named(&s, "carol", "Carol").await;
    carol.join("room:p", json!({})).await.unwrap();
    alice.recv_event("room:p", "presence_diff").await.unwrap();
    drop(carol);
    let diff = payload(&alice.recv_event("room:p", "presence_diff").await.unwrap());
    assert!(diff["leaves"]["carol"].is_object(), "{diff}");
    let (_, body) = s
        .http(
            "GET",
            "/api/channels/room:p/presence",
            &[("Authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        json(&body)["presence"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["alice"]
    );
}

#[tokio::test]
async fn javascript_builtin_names_are_ordinary_keys() {
    let s = Server::start().await;
    let mut watcher = s.client("watcher").await;
    watcher.join("room:keys", json!({})).await.unwrap();
    let mut others = Vec::new();
    for sub in ["__proto__", "constructor", "hasOwnProperty", "toString"] {
        let mut c = s.client(sub).await;
        assert!(
            c.join("room:keys", json!({})).await.unwrap().is_ok(),
            "{sub}"
        );
        others.push(c);
    }
    let auth = format!("Bearer {API_KEY}");
    let (_, body) = s
        .http(
            "GET",
            "/api/channels/room:keys/presence",
            &[("Authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    let keys: Vec<String> = json(&body)["presence"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for sub in [
        "__proto__",
        "constructor",
        "hasOwnProperty",
        "toString",
        "watcher",
    ] {
        assert!(keys.iter().any(|k| k == sub), "{sub} missing from {keys:?}");
    }
}
