//! Node-to-node messages are signed with the cluster secret: whoever can write to Redis cannot
//! drain a node, read its figures or disconnect users by publishing on the nodes' channels
//! (issue 19, item 5). Real Redis, two real nodes, raw `redis-cli` for the forgeries.

mod common;

use common::cluster::cluster;
use common::{json, Redis, Server};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (installed with redis-server)");
    assert!(out.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The ids of the live nodes, as the nodes registered them in Redis.
fn node_ids(redis: &Redis) -> Vec<String> {
    let ids: Vec<String> = redis_cli(redis, &["--raw", "SMEMBERS", "plexus:nodes"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    ids
}

/// An admin console session on `s` (dev profile: the API key signs in).
async fn health(s: &Server) -> (u16, String) {
    s.http("GET", "/health", &[], "").await.unwrap()
}

/// Waits until `s` logs that it refused a node message.
async fn wait_refused(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.log().contains("refused a node-to-node message") {
        assert!(
            Instant::now() < deadline,
            "no refusal of the forged messages logged:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn forged_node_calls_and_disconnects_are_refused_signed_ones_work() {
    let redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let ids = node_ids(&redis);
    let mut alice_a = nodes[0].client("alice").await;
    let mut alice_b = nodes[1].client("alice").await;
    let mut bob_a = nodes[0].client("bob").await;
    let console_a = nodes[0].admin_session().await;
    let console_b = nodes[1].admin_session().await;

    // Someone with access to Redis listens where a forged call's answer would go.
    let mut spy = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "SUBSCRIBE", "plexus:n:{spy}"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let spy_out = spy.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(spy_out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // "subscribe", the channel, 1: the subscription is in place.
    for _ in 0..3 {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("redis-cli subscribed");
    }

    // The forgeries of the review: a drain and a stats request on every node's channel (the
    // old unsigned format, and the new one signed with a wrong secret), and a disconnect of
    // alice on the control channel.
    for id in &ids {
        let channel = format!("plexus:n:{{{id}}}");
        redis_cli(
            &redis,
            &["PUBLISH", &channel, "Q 8 nobody\nplexus-admin:drain"],
        );
        redis_cli(
            &redis,
            &["PUBLISH", &channel, "Q 9 spy\nplexus-admin:stats"],
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        let header = format!("Q spy 10 {now}");
        let forged = format!("{header} {}\nplexus-admin:drain", "ab".repeat(32));
        redis_cli(&redis, &["PUBLISH", &channel, &forged]);
    }
    redis_cli(
        &redis,
        &["PUBLISH", "plexus:ctl", "disconnect nobody alice"],
    );

    // Fences: signed messages sent after the forgeries on the same channels. A disconnect of
    // bob from node B reaches node A through the control channel...
    let (st, resp) = nodes[1]
        .http(
            "POST",
            "/admin/api/disconnect",
            &[("Authorization", &console_b)],
            r#"{"sub":"bob"}"#,
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{resp}");
    let (bob_code, _) = bob_a.wait_close().await.unwrap();
    // ...and each console reads the other node's figures over the node channels.
    for (s, console) in [(&nodes[0], &console_a), (&nodes[1], &console_b)] {
        let (st, resp) = s
            .http(
                "GET",
                "/admin/api/overview",
                &[("Authorization", console)],
                "",
            )
            .await
            .unwrap();
        assert_eq!(st, 200, "{resp}");
        let overview = json(&resp);
        let listed = overview["nodes"].as_array().unwrap();
        assert_eq!(listed.len(), 2, "{resp}");
        assert!(
            listed.iter().all(|n| n.get("error").is_none()),
            "a signed stats call failed: {resp}"
        );
    }

    // Nothing forged took effect: both nodes healthy, alice still connected on both.
    for s in &nodes {
        let (st, body) = health(s).await;
        assert_eq!(st, 200, "a forged drain drained a node: {body}");
        assert_eq!(json(&body)["status"], "ok", "{body}");
    }
    for alice in [&mut alice_a, &mut alice_b] {
        let reply = tokio::time::timeout(Duration::from_secs(5), alice.heartbeat())
            .await
            .expect("alice's connection answers")
            .expect("alice is still connected");
        assert!(reply.is_ok(), "{reply:?}");
    }
    assert_eq!(bob_code, Some(1001), "a signed disconnect still works");
    // No answer went to the spy's channel.
    let _ = spy.kill();
    let _ = spy.wait();
    let heard: Vec<String> = rx.try_iter().collect();
    assert!(
        heard.iter().all(|l| !l.contains("connections")),
        "a forged stats request was answered: {heard:?}"
    );
    // Each node logged the refusals (once per burst).
    for s in &nodes {
        wait_refused(s).await;
    }

    // A signed drain across nodes still works: node A's console drains node B.
    let b_id = json(
        &nodes[1]
            .http(
                "GET",
                "/admin/api/overview",
                &[("Authorization", &console_b)],
                "",
            )
            .await
            .unwrap()
            .1,
    )["this_node"]
        .as_str()
        .unwrap()
        .to_owned();
    let (st, resp) = nodes[0]
        .http(
            "POST",
            "/admin/api/drain",
            &[("Authorization", &console_a)],
            &serde_json::json!({ "node": b_id }).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{resp}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while health(&nodes[1]).await.0 != 503 {
        assert!(Instant::now() < deadline, "node B did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health(&nodes[0]).await.0, 200);
}
