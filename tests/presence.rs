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

// ---- Merged presence diffs (`presence.diff_interval_ms`, crates/plexus-core/src/presence_diffs.rs)

/// A member's view, merged as phoenix.js `Presence.syncState`/`syncDiff` do: key → phx_refs.
#[derive(Default, Debug, PartialEq)]
struct View(std::collections::BTreeMap<String, std::collections::BTreeSet<String>>);

impl View {
    fn refs(entry: &Value) -> Vec<String> {
        entry["metas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["phx_ref"].as_str().unwrap().to_owned())
            .collect()
    }

    fn state(state: &Value) -> View {
        let mut v = View::default();
        for (key, entry) in state.as_object().unwrap() {
            v.0.insert(key.clone(), Self::refs(entry).into_iter().collect());
        }
        v
    }

    fn diff(&mut self, diff: &Value) {
        for (key, entry) in diff["joins"].as_object().unwrap() {
            self.0
                .entry(key.clone())
                .or_default()
                .extend(Self::refs(entry));
        }
        for (key, entry) in diff["leaves"].as_object().unwrap() {
            if let Some(refs) = self.0.get_mut(key) {
                for r in Self::refs(entry) {
                    refs.remove(&r);
                }
                if refs.is_empty() {
                    self.0.remove(key);
                }
            }
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Applies every `presence_diff` that arrives within `quiet` of the previous one; returns
/// how many there were.
async fn apply_diffs(c: &mut Client, topic: &str, view: &mut View, quiet: Duration) -> usize {
    let mut n = 0;
    while let Some(m) = c
        .recv_event_timeout(topic, "presence_diff", quiet)
        .await
        .unwrap()
    {
        view.diff(&payload(&m));
        n += 1;
    }
    n
}

/// What a member that joins now is told: the topic's presence as a fresh `presence_state`.
async fn fresh_view(s: &Server, topic: &str) -> View {
    let mut probe = s.client("probe").await;
    assert!(probe.join(topic, json!({})).await.unwrap().is_ok());
    let state = payload(&probe.recv_event(topic, "presence_state").await.unwrap());
    let mut v = View::state(&state);
    v.0.remove("probe");
    probe.close().await;
    v
}

use std::time::Duration;

#[tokio::test]
async fn joins_inside_one_interval_leave_as_one_diff_and_a_join_left_inside_it_cancels() {
    let s = Server::start_with(None, &[("PLEXUS_PRESENCE_DIFF_INTERVAL_MS", "1000")]).await;
    let mut watcher = s.client("watcher").await;
    assert!(watcher.join("room:m", json!({})).await.unwrap().is_ok());
    let mut view = View::state(&payload(
        &watcher
            .recv_event("room:m", "presence_state")
            .await
            .unwrap(),
    ));
    let young_until = tokio::time::Instant::now()
        + plexus_core::presence_diffs::YOUNG_FOR
        + Duration::from_millis(1200);
    // Its own join comes back merged, alone.
    assert_eq!(
        apply_diffs(
            &mut watcher,
            "room:m",
            &mut view,
            Duration::from_millis(1500)
        )
        .await,
        1
    );

    // 20 users join at once: the watcher hears one diff naming all of them.
    let joiners = futures_util::future::join_all((0..20).map(|i| {
        let s = &s;
        async move {
            let mut c = s.client(&format!("user{i:02}")).await;
            assert!(c.join("room:m", json!({})).await.unwrap().is_ok());
            c
        }
    }))
    .await;
    let first = payload(&watcher.recv_event("room:m", "presence_diff").await.unwrap());
    assert_eq!(first["joins"].as_object().unwrap().len(), 20, "{first}");
    assert_eq!(first["leaves"], json!({}));
    view.diff(&first);
    assert_eq!(
        apply_diffs(
            &mut watcher,
            "room:m",
            &mut view,
            Duration::from_millis(1500)
        )
        .await,
        0,
        "one diff for the 20 joins"
    );

    // Inside one interval: "ghost" joins and leaves, "stayer" joins, user00 leaves. The
    // watcher is young no more by then (a young member gets the cancelled leave too).
    apply_diffs(
        &mut watcher,
        "room:m",
        &mut view,
        young_until.saturating_duration_since(tokio::time::Instant::now()),
    )
    .await;
    let mut ghost = s.client("ghost").await;
    assert!(ghost.join("room:m", json!({})).await.unwrap().is_ok());
    let mut stayer = s.client("stayer").await;
    assert!(stayer.join("room:m", json!({})).await.unwrap().is_ok());
    assert!(ghost.leave("room:m").await.unwrap().is_ok());
    let mut joiners = joiners.into_iter();
    joiners.next().unwrap().close().await;
    let diff = payload(&watcher.recv_event("room:m", "presence_diff").await.unwrap());
    assert_eq!(
        diff["joins"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["stayer"],
        "{diff}"
    );
    assert_eq!(
        diff["leaves"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["user00"],
        "the ghost's join and leave cancelled: {diff}"
    );
    view.diff(&diff);
    apply_diffs(
        &mut watcher,
        "room:m",
        &mut view,
        Duration::from_millis(1500),
    )
    .await;
    let mut expected: Vec<String> = (1..20).map(|i| format!("user{i:02}")).collect();
    expected.extend(["stayer".into(), "watcher".into()]);
    expected.sort();
    assert_eq!(view.keys(), expected);
    assert_eq!(view, fresh_view(&s, "room:m").await);
    drop(joiners);
}

#[tokio::test]
async fn a_member_joining_mid_interval_ends_exact_even_when_what_it_saw_cancels() {
    let s = Server::start_with(None, &[("PLEXUS_PRESENCE_DIFF_INTERVAL_MS", "1000")]).await;
    let mut old = s.client("old").await;
    assert!(old.join("room:y", json!({})).await.unwrap().is_ok());
    let mut old_view = View::state(&payload(
        &old.recv_event("room:y", "presence_state").await.unwrap(),
    ));
    apply_diffs(
        &mut old,
        "room:y",
        &mut old_view,
        Duration::from_millis(1500),
    )
    .await;

    // Inside one interval: the ghost joins, "late" joins (its presence_state has the ghost),
    // the ghost leaves: its join and leave cancel, yet late must drop it.
    let mut ghost = s.client("ghost").await;
    assert!(ghost.join("room:y", json!({})).await.unwrap().is_ok());
    let mut late = s.client("late").await;
    assert!(late.join("room:y", json!({})).await.unwrap().is_ok());
    let mut late_view = View::state(&payload(
        &late.recv_event("room:y", "presence_state").await.unwrap(),
    ));
    assert!(late_view.0.contains_key("ghost"), "{late_view:?}");
    assert!(ghost.leave("room:y").await.unwrap().is_ok());

    apply_diffs(
        &mut late,
        "room:y",
        &mut late_view,
        Duration::from_millis(1500),
    )
    .await;
    let n = apply_diffs(
        &mut old,
        "room:y",
        &mut old_view,
        Duration::from_millis(1500),
    )
    .await;
    assert_eq!(n, 1, "one diff: late's join");
    assert_eq!(late_view.keys(), ["late", "old"]);
    assert_eq!(old_view, late_view);
    assert_eq!(old_view, fresh_view(&s, "room:y").await);
}

#[tokio::test]
async fn a_pending_diff_is_bounded_and_flushed_early_when_full() {
    let s = Server::start_with(None, &[("PLEXUS_PRESENCE_DIFF_INTERVAL_MS", "1000")]).await;
    let mut watcher = s.client("watcher").await;
    assert!(watcher.join("room:b", json!({})).await.unwrap().is_ok());
    let mut view = View::state(&payload(
        &watcher
            .recv_event("room:b", "presence_state")
            .await
            .unwrap(),
    ));
    apply_diffs(
        &mut watcher,
        "room:b",
        &mut view,
        Duration::from_millis(1500),
    )
    .await;
    // 30 updates of a 3 KB meta: ~180 KB of changes, past the 64 KiB bound of a pending diff.
    let mut writer = s.client("writer").await;
    assert!(writer.join("room:b", json!({})).await.unwrap().is_ok());
    for i in 0..30 {
        let r = writer
            .push(
                "room:b",
                "presence_update",
                Payload::json(&json!({"blob": format!("{i:03}{}", "x".repeat(3000))})).unwrap(),
            )
            .await
            .unwrap();
        assert!(r.is_ok(), "{r:?}");
    }
    let mut sizes = Vec::new();
    while let Some(m) = watcher
        .recv_event_timeout("room:b", "presence_diff", Duration::from_millis(1500))
        .await
        .unwrap()
    {
        sizes.push(m.payload.len());
        view.diff(&payload(&m));
    }
    assert!(sizes.len() >= 2, "flushed early when full: {sizes:?}");
    // The bound (64 KiB) plus the change that crossed it (a leave and a join of ≤ 4 KiB each).
    assert!(
        sizes.iter().all(|n| *n < 64 * 1024 + 10 * 1024),
        "{sizes:?}"
    );
    assert_eq!(view, fresh_view(&s, "room:b").await);
}

#[tokio::test]
async fn interval_zero_sends_each_diff_at_once() {
    let s = Server::start_with(None, &[("PLEXUS_PRESENCE_DIFF_INTERVAL_MS", "0")]).await;
    let mut watcher = s.client("watcher").await;
    assert!(watcher.join("room:z", json!({})).await.unwrap().is_ok());
    watcher.recv_event("room:z", "presence_diff").await.unwrap();
    let mut a = s.client("a").await;
    assert!(a.join("room:z", json!({})).await.unwrap().is_ok());
    let mut b = s.client("b").await;
    assert!(b.join("room:z", json!({})).await.unwrap().is_ok());
    for key in ["a", "b"] {
        let d = payload(&watcher.recv_event("room:z", "presence_diff").await.unwrap());
        assert_eq!(
            d["joins"].as_object().unwrap().keys().collect::<Vec<_>>(),
            [key]
        );
    }
}

#[tokio::test]
async fn diffs_from_another_node_are_merged_on_the_receiving_node() {
    let redis = common::Redis::start();
    let url = redis.url();
    let env = [
        ("PLEXUS_REDIS_URL", url.as_str()),
        ("PLEXUS_PRESENCE_DIFF_INTERVAL_MS", "1000"),
    ];
    let a = Server::start_with(Some(common::cluster::CONFIG), &env).await;
    let b = Server::start_with(Some(common::cluster::CONFIG), &env).await;
    let mut watcher = a.client("watcher").await;
    assert!(watcher.join("room:c", json!({})).await.unwrap().is_ok());
    let mut view = View::state(&payload(
        &watcher
            .recv_event("room:c", "presence_state")
            .await
            .unwrap(),
    ));
    // Until the watcher is young no more (it would get the ghost's cancelled leave below).
    apply_diffs(
        &mut watcher,
        "room:c",
        &mut view,
        plexus_core::presence_diffs::YOUNG_FOR + Duration::from_millis(1500),
    )
    .await;
    // 10 users join on B at once (B publishes each diff; A merges what it receives).
    let on_b = futures_util::future::join_all((0..10).map(|i| {
        let b = &b;
        async move {
            let mut c = b.client(&format!("remote{i}")).await;
            assert!(c.join("room:c", json!({})).await.unwrap().is_ok());
            c
        }
    }))
    .await;
    let d = payload(&watcher.recv_event("room:c", "presence_diff").await.unwrap());
    assert_eq!(d["joins"].as_object().unwrap().len(), 10, "{d}");
    view.diff(&d);
    // A ghost joins and leaves on B inside one interval, a local member arrives on A.
    let mut ghost = b.client("ghost").await;
    assert!(ghost.join("room:c", json!({})).await.unwrap().is_ok());
    assert!(ghost.leave("room:c").await.unwrap().is_ok());
    let mut local = a.client("local").await;
    assert!(local.join("room:c", json!({})).await.unwrap().is_ok());
    let d = payload(&watcher.recv_event("room:c", "presence_diff").await.unwrap());
    assert!(
        d["joins"].get("ghost").is_none() && d["leaves"].get("ghost").is_none(),
        "{d}"
    );
    view.diff(&d);
    apply_diffs(
        &mut watcher,
        "room:c",
        &mut view,
        Duration::from_millis(1500),
    )
    .await;
    assert_eq!(view.0.len(), 12, "{view:?}");
    assert_eq!(view, fresh_view(&b, "room:c").await);
    drop(on_b);
}
