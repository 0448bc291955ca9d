//! Cluster mode: several real `plexus` processes sharing a real `redis-server` started by the
//! test. Fan-out, presence, limits, node death, Redis outages, remote disconnects, TLS to
//! Redis. History and recovery across nodes are in `cluster_history.rs`.

mod common;

use common::cluster::{broadcast, cluster, payload};
use common::{json, Redis, Server, API_KEY};
use plexus_client::{Client, ClientError, ConnectOptions};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn broadcasts_cross_nodes_from_clients_and_the_api() {
    let redis = common::SuiteRedis::start().await;
    let nodes = cluster(&redis, 3).await;
    let mut on_a = nodes[0].client("alice").await;
    let mut also_b = nodes[1].client("bea").await;
    let mut on_b = nodes[1].client("bob").await;
    for c in [&mut on_a, &mut also_b, &mut on_b] {
        assert!(c.join("plain:x", json!({})).await.unwrap().is_ok());
    }
    // A push on B reaches A (through Redis) and B's other client (locally), not the sender.
    on_b.push_json("plain:x", "msg", &json!({"from": "b"}))
        .await
        .unwrap();
    assert_eq!(
        payload(&on_a.recv_event("plain:x", "msg").await.unwrap())["from"],
        "b"
    );
    assert_eq!(
        payload(&also_b.recv_event("plain:x", "msg").await.unwrap())["from"],
        "b"
    );
    assert!(on_b
        .recv_event_timeout("plain:x", "msg", Duration::from_millis(300))
        .await
        .unwrap()
        .is_none());
    // The API of C, a node without subscribers.
    broadcast(&nodes[2], "plain:x", "api", json!({"n": 1})).await;
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(
            payload(&c.recv_event("plain:x", "api").await.unwrap())["n"],
            1
        );
    }
    // Channels are listed cluster-wide by any node.
    let auth = format!("Bearer {API_KEY}");
    let (_, resp) = nodes[2]
        .http("GET", "/api/channels", &[("Authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(
        json(&resp)["channels"],
        json!([{"topic": "plain:x", "subscribers": 3}])
    );
}

#[tokio::test]
async fn presence_and_limits_are_cluster_wide() {
    let redis = common::SuiteRedis::start().await;
    let nodes = cluster(&redis, 3).await;
    let mut alice = nodes[0].client("alice").await;
    alice.join("room:p", json!({})).await.unwrap();
    let mut bob = nodes[1].client("bob").await;
    bob.join("room:p", json!({})).await.unwrap();
    let state = payload(&bob.recv_event("room:p", "presence_state").await.unwrap());
    let mut keys: Vec<&String> = state.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["alice", "bob"]);
    // Alice on A sees Bob's join made on B.
    loop {
        let d = payload(&alice.recv_event("room:p", "presence_diff").await.unwrap());
        if d["joins"]["bob"].is_object() {
            break;
        }
    }
    let auth = format!("Bearer {API_KEY}");
    let (_, resp) = nodes[2]
        .http(
            "GET",
            "/api/channels/room:p/presence",
            &[("Authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(json(&resp)["presence"].as_object().unwrap().len(), 2);

    // Connections per user: 2 in the whole cluster.
    let _second = nodes[1].client("alice").await;
    let third =
        Client::connect(ConnectOptions::new(nodes[2].url()).token(nodes[2].token("alice"))).await;
    match third {
        Err(ClientError::Handshake(e)) => assert!(e.contains("429"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a third connection of alice was accepted"),
    }
    // max_per_user = 1 on limited:* across nodes.
    let mut carol_a = nodes[0].client("carol").await;
    let mut carol_b = nodes[1].client("carol").await;
    assert!(carol_a.join("limited:1", json!({})).await.unwrap().is_ok());
    let r = carol_b.join("limited:1", json!({})).await.unwrap();
    assert!(r.reason().unwrap().contains("max_per_user"), "{r:?}");
    carol_a.leave("limited:1").await.unwrap();
    let mut ok = false;
    for _ in 0..20 {
        if carol_b.join("limited:1", json!({})).await.unwrap().is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the place freed on A was not usable on B");
}

#[tokio::test]
async fn a_killed_node_leaves_no_ghosts() {
    let redis = common::SuiteRedis::start().await;
    let mut nodes = cluster(&redis, 2).await;
    let mut ghost = nodes[0].client("ghost").await;
    ghost.join("room:k", json!({})).await.unwrap();
    let mut watcher = nodes[1].client("watcher").await;
    watcher.join("room:k", json!({})).await.unwrap();
    let state = payload(
        &watcher
            .recv_event("room:k", "presence_state")
            .await
            .unwrap(),
    );
    assert!(state["ghost"].is_object(), "{state}");
    let killed = Instant::now();
    nodes[0].kill9();
    loop {
        let d = payload(
            &watcher
                .recv_event("room:k", "presence_diff")
                .await
                .unwrap_or_else(|e| panic!("no leave: {e}")),
        );
        if d["leaves"]["ghost"].is_object() {
            break;
        }
    }
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "ghost left after {took:?} (node_timeout 2 s)"
    );
    let auth = format!("Bearer {API_KEY}");
    let (_, resp) = nodes[1]
        .http(
            "GET",
            "/api/channels/room:k/presence",
            &[("Authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert!(json(&resp)["presence"]["ghost"].is_null(), "{resp}");
    drop(ghost);
}

#[tokio::test]
async fn redis_outage_keeps_local_traffic_and_cross_node_delivery_resumes() {
    let mut redis = Redis::start();
    let nodes = cluster(&redis, 2).await;
    let mut a1 = nodes[0].client("a1").await;
    let mut a2 = nodes[0].client("a2").await;
    let mut b1 = nodes[1].client("b1").await;
    for c in [&mut a1, &mut a2, &mut b1] {
        c.join("plain:o", json!({})).await.unwrap();
    }
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Local traffic on A goes on.
    let _ = a1
        .push_json("plain:o", "msg", &json!({"during": true}))
        .await
        .unwrap();
    assert_eq!(
        payload(&a2.recv_event("plain:o", "msg").await.unwrap())["during"],
        true
    );
    assert!(a2.heartbeat().await.unwrap().is_ok());
    let (_, health) = nodes[0].http("GET", "/health", &[], "").await.unwrap();
    assert_eq!(json(&health)["broker_up"], false);

    redis.restart();
    let back = Instant::now();
    // Within 5 s, B's pushes reach A again.
    let mut delivered = false;
    while back.elapsed() < Duration::from_secs(5) {
        let _ = b1
            .push_json("plain:o", "msg", &json!({"after": true}))
            .await;
        if let Some(m) = a1
            .recv_event_timeout("plain:o", "msg", Duration::from_millis(200))
            .await
            .unwrap()
        {
            if payload(&m)["after"] == true {
                delivered = true;
                break;
            }
        }
    }
    assert!(delivered, "cross-node delivery did not resume within 5 s");
    let (_, health) = nodes[0].http("GET", "/health", &[], "").await.unwrap();
    assert_eq!(json(&health)["broker_up"], true);
}

#[tokio::test]
async fn during_a_redis_outage_pushes_fail_fast_and_every_acknowledged_message_arrives() {
    let mut redis = Redis::start();
    // An outage shorter than 3/4 of node_timeout: the nodes keep their clients (past it they
    // close them once, tests/redis_partition.rs).
    let config = common::cluster::CONFIG.replace("node_timeout_secs = 2", "node_timeout_secs = 20");
    let url = redis.url();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(Server::start_with(Some(&config), &[("PLEXUS_REDIS_URL", &url)]).await);
    }
    let mut a = nodes[0].client("a").await;
    let mut b = nodes[1].client("b").await;
    for c in [&mut a, &mut b] {
        c.join("room:out", json!({"recover": null})).await.unwrap();
    }
    let mut acked = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut n = 0;
    for phase in 0..3 {
        if phase == 1 {
            redis.stop();
        } else if phase == 2 {
            redis.restart();
        }
        // 2 s before, a 10 s outage, 3 s after Redis is back.
        let secs = [2, 10, 3][phase];
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            n += 1;
            let started = Instant::now();
            let r = a
                .push_json("room:out", "msg", &json!({"n": n}))
                .await
                .unwrap();
            slowest = slowest.max(started.elapsed());
            if r.is_ok() {
                acked.push(n);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a push reply took {slowest:?}: the broker must fail fast while Redis is down"
    );
    assert!(acked.len() > 20, "{acked:?}");
    // Every acknowledged message reaches the other node's client, once, in order: when Redis
    // came back empty, B's client is told (`history_reset`), and what A published to the new
    // history before B resubscribed is replayed to it (tests/history_gaps.rs pins that race).
    let mut got = Vec::new();
    while let Some(m) = b.recv_timeout(Duration::from_secs(3)).await.unwrap() {
        if m.event == "msg" {
            got.push(payload(&m)["n"].as_u64().unwrap());
        }
    }
    assert_eq!(got, acked, "acknowledged but not delivered (or doubled)");
    // The pushing client was never closed as a flood.
    assert!(a.heartbeat().await.unwrap().is_ok());
    // One log line per failure burst, not one per message (about 200 pushes failed).
    for node in &nodes {
        let log = node.log();
        let warnings = log.lines().filter(|l| l.contains("WARN")).count();
        assert!(warnings < 25, "{warnings} WARN lines:\n{log}");
    }
}

#[tokio::test]
async fn api_disconnect_reaches_every_node() {
    let redis = common::SuiteRedis::start().await;
    let nodes = cluster(&redis, 2).await;
    let mut on_a = nodes[0].client("dora").await;
    let mut on_b = nodes[1].client("dora").await;
    // A connection is registered (and can be disconnected) once its upgrade is done on the
    // server's side, a moment after the client has it: a reply proves it (under load that
    // moment was long enough for the disconnect to pass it by once).
    for c in [&mut on_a, &mut on_b] {
        assert!(c.heartbeat().await.unwrap().is_ok());
    }
    let auth = format!("Bearer {API_KEY}");
    let (st, resp) = nodes[1]
        .http(
            "POST",
            "/api/disconnect",
            &[("Authorization", &auth)],
            r#"{"sub":"dora"}"#,
        )
        .await
        .unwrap();
    assert_eq!(st, 200, "{resp}");
    for c in [&mut on_a, &mut on_b] {
        let (code, _) = c.wait_close().await.unwrap();
        assert_eq!(code, Some(1001));
    }
}

#[tokio::test]
async fn tls_and_password_to_redis() {
    use std::process::{Command, Stdio};
    let dir = std::env::temp_dir().join(format!("plexus-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A throwaway CA and a server certificate it signs (a self-signed leaf is no trust anchor).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), server_key.serialize_pem()).unwrap();
    let port = common::free_port();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _redis = KillOnDrop(
        Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--requirepass", "s3cret", "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(dir.join("cert.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("key.pem"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server with TLS did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let cfg = format!(
        "profile = \"dev\"\nbroker = \"redis\"\n[redis]\nurl = \"rediss://:s3cret@localhost:{port}\"\ntls_ca_file = \"{}\"\n[[channels]]\ntopic = \"plain:*\"\n",
        dir.join("ca.pem").display()
    );
    let a = Server::start_with(Some(&cfg), &[]).await;
    let b = Server::start_with(Some(&cfg), &[]).await;
    let (_, health) = a.http("GET", "/health", &[], "").await.unwrap();
    assert_eq!(json(&health)["broker_up"], true, "{}", a.log());
    let mut on_a = a.client("x").await;
    on_a.join("plain:tls", json!({})).await.unwrap();
    broadcast(&b, "plain:tls", "msg", json!({"over": "tls"})).await;
    assert_eq!(
        payload(&on_a.recv_event("plain:tls", "msg").await.unwrap())["over"],
        "tls"
    );
    // A wrong password is a clear startup error.
    let bad = cfg.replace("s3cret", "wrong");
    let path = dir.join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .env_clear()
        .env("PLEXUS_CONFIG", &path)
        .env(
            "PLEXUS_LISTEN",
            format!("127.0.0.1:{}", common::free_port()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect to Redis"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node drained (SIGTERM) tells the others' members that its clients left, through Redis,
/// before it exits: the drain waits for each closed connection's departures (the presence
/// removal, then the leave's diff), not only for the connections to be gone. (Once one of 100
/// leaves was lost on a loaded machine when the process ended first.) The node timeout is
/// long, so no reap can stand in for the leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_s_presence_leaves_reach_the_other_nodes_before_it_exits() {
    let redis = common::Redis::start();
    let url = redis.url();
    let config = common::cluster::CONFIG
        .replace("node_timeout_secs = 2", "node_timeout_secs = 30")
        .replace(
            "max_connections_per_user = 2",
            "max_connections_per_user = 0\nmax_connections_per_ip = 0\nconnect_rate_per_ip = 0.0\nmax_pending_connections_per_ip = 0",
        );
    let mut a = Server::start_with(Some(&config), &[("PLEXUS_REDIS_URL", &url)]).await;
    let b = Server::start_with(Some(&config), &[("PLEXUS_REDIS_URL", &url)]).await;
    let mut watcher = b.client("watcher").await;
    assert!(watcher.join("room:d", json!({})).await.unwrap().is_ok());
    let mut members = Vec::new();
    for i in 0..100 {
        let mut c = a.client(&format!("m{i}")).await;
        assert!(c.join("room:d", json!({})).await.unwrap().is_ok());
        members.push(c);
    }
    let code = tokio::task::spawn_blocking(move || a.terminate())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let mut left = std::collections::BTreeSet::new();
    while let Some(m) = watcher
        .recv_event_timeout("room:d", "presence_diff", Duration::from_secs(3))
        .await
        .unwrap()
    {
        if let Some(l) = payload(&m)["leaves"].as_object() {
            left.extend(l.keys().cloned());
        }
    }
    assert_eq!(left.len(), 100, "leaves heard on B: {left:?}");
}
