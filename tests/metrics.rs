//! `/metrics` read with a Prometheus text parser (`prometheus-parse`) before and after a small
//! load on a real server: the latency histograms (publish→write, fan-out, join) move and stay
//! well formed, refusals are counted by stage and reason, connections by transport, and
//! today's metric names are all still there.

mod common;

use common::{Redis, Server};
use plexus_client::{Client, ConnectOptions};
use prometheus_parse::{Scrape, Value};
use serde_json::json;
use std::time::Duration;

async fn scrape(s: &Server) -> Scrape {
    let (status, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    assert_eq!(status, 200);
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

/// A histogram's buckets (cumulative counts by upper bound), or `None` before any sample.
fn histogram(s: &Scrape, name: &str) -> Option<Vec<(f64, f64)>> {
    s.samples
        .iter()
        .find(|x| x.metric == name)
        .map(|x| match &x.value {
            Value::Histogram(h) => h.iter().map(|b| (b.less_than, b.count)).collect(),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
}

/// Samples of `name` in a histogram (its +Inf bucket); 0 before any.
fn count(s: &Scrape, name: &str) -> f64 {
    histogram(s, name).map_or(0.0, |b| {
        // Cumulative: never decreasing, and the last bound is +Inf.
        assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "{name}: {b:?}");
        assert_eq!(b.last().map(|l| l.0), Some(f64::INFINITY), "{name}");
        b.last().map_or(0.0, |l| l.1)
    })
}

/// A counter's or gauge's value, with the given labels.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{name} is not a number: {other:?}"),
        })
}

#[tokio::test]
async fn histograms_move_under_a_small_load() {
    let s = Server::start().await;
    let before = scrape(&s).await;
    for name in [
        "plexus_connections",
        "plexus_topics",
        "plexus_connections_total",
        "plexus_messages_in_total",
        "plexus_broadcasts_total",
        "plexus_joins_refused_total",
        "plexus_broker_errors_total",
        "plexus_http_connections",
        "plexus_http_refused_total",
        "plexus_http_timeouts_total",
        "plexus_history_topics",
        "plexus_history_bytes",
        "plexus_broker_up",
        "plexus_draining",
        "plexus_outbox_messages",
        "plexus_outbox_max_messages",
    ] {
        assert!(value(&before, name, &[]).is_some(), "{name} missing");
    }
    assert_eq!(
        value(
            &before,
            "plexus_connections_refused_total",
            &[("status", "403")]
        ),
        Some(0.0)
    );
    assert_eq!(count(&before, "plexus_publish_to_write_seconds"), 0.0);

    // Load: three subscribers, 30 broadcasts, a refused join, a bad token, a bad vsn.
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = s.client(&format!("m{i}")).await;
        assert!(c.join("room:metrics", json!({})).await.unwrap().is_ok());
        clients.push(c);
    }
    for i in 0..30 {
        s.broadcast("room:metrics", "tick", json!({ "i": i })).await;
    }
    for c in &mut clients {
        for _ in 0..30 {
            c.recv_event_timeout("room:metrics", "tick", Duration::from_secs(5))
                .await
                .unwrap()
                .expect("a tick");
        }
    }
    assert!(!clients[0]
        .join("secret:x", json!({}))
        .await
        .unwrap()
        .is_ok());
    assert!(
        Client::connect(ConnectOptions::new(s.url()).token("not.a.token"))
            .await
            .is_err()
    );
    let (status, _) = s
        .http(
            "GET",
            "/socket/websocket?vsn=9.0.0",
            &common::ws_headers(),
            "",
        )
        .await
        .unwrap();
    assert_eq!(status, 400);

    let after = scrape(&s).await;
    // One publish→write sample per broadcast (the first write of it), presence diffs too.
    let written = count(&after, "plexus_publish_to_write_seconds");
    assert!(written >= 30.0, "publish→write samples: {written}");
    assert!(count(&after, "plexus_fanout_seconds") >= 30.0);
    let receivers = histogram(&after, "plexus_fanout_receivers").unwrap();
    // 30 broadcasts reached 3 subscribers each: at least 30 samples above the "2" bucket.
    let at_most_2 = receivers.iter().find(|b| b.0 == 2.0).unwrap().1;
    let all = receivers.last().unwrap().1;
    assert!(all - at_most_2 >= 30.0, "{receivers:?}");
    assert!(count(&after, "plexus_join_seconds") >= 4.0);
    for (stage, reason) in [
        ("join", "unauthorized"),
        ("connect", "bad_token"),
        ("vsn", "unsupported_vsn"),
    ] {
        assert_eq!(
            value(
                &after,
                "plexus_refusals_total",
                &[("stage", stage), ("reason", reason)]
            ),
            Some(1.0),
            "{stage}/{reason}"
        );
    }
    assert_eq!(
        value(
            &after,
            "plexus_transport_connections",
            &[("transport", "websocket")]
        ),
        Some(3.0)
    );
    assert_eq!(value(&after, "plexus_connections", &[]), Some(3.0));
    assert!(value(&after, "plexus_broadcasts_total", &[]).unwrap() >= 30.0);
    assert_eq!(
        value(
            &after,
            "plexus_connections_refused_total",
            &[("status", "403")]
        ),
        Some(1.0)
    );
    // The text says what each metric is.
    assert!(after
        .docs
        .get("plexus_publish_to_write_seconds")
        .is_some_and(|d| d.contains("first write of it to a client")));
}

/// Broadcasts whose only receivers are a LongPoll session or an SSE stream are timed too:
/// one publish→write sample each, when the poll's answer or the stream's chunk takes them.
#[tokio::test]
async fn longpoll_and_sse_deliveries_are_timed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start().await;
    let written = |x: &Scrape| count(x, "plexus_publish_to_write_seconds");
    let before = written(&scrape(&s).await);

    // LongPoll: a session joined to room:lp, polled after each broadcast.
    let mut session = s.longpoll_session("poller").await;
    let join = "[\"1\",\"1\",\"room:lp\",\"phx_join\",{}]";
    let q = |t: &str| format!("/socket/longpoll?vsn=2.0.0&token={t}");
    s.http("POST", &q(&session), &[], join).await.unwrap();
    let mut got = 0;
    for n in 0..3 {
        s.broadcast("room:lp", "tick", json!({"n": n})).await;
        // Poll until the broadcast came (the join reply and presence come first).
        for _ in 0..5 {
            let (_, body) = s.http("GET", &q(&session), &[], "").await.unwrap();
            let polled = common::json(&body);
            session = polled["token"].as_str().unwrap_or(&session).to_owned();
            let ticks = polled["messages"].as_array().map_or(0, |m| {
                m.iter()
                    .filter(|m| m.as_str().unwrap().contains("\"tick\""))
                    .count()
            });
            got += ticks;
            if ticks > 0 {
                break;
            }
        }
    }
    assert_eq!(got, 3, "the LongPoll session received the broadcasts");
    let after_lp = written(&scrape(&s).await);
    assert!(
        after_lp - before >= 3.0,
        "LongPoll samples: {before} -> {after_lp}"
    );

    // SSE: a stream of room:sse, read until each broadcast's event arrived.
    let mut sse = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let token = s.token("reader");
    let req = format!(
        "GET /sse?topic=room:sse&token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    );
    sse.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    for n in 0..3 {
        // The stream is open (its headers came) before the first broadcast.
        if n == 0 {
            while !seen.contains("\r\n\r\n") {
                let k = tokio::time::timeout(Duration::from_secs(5), sse.read(&mut buf))
                    .await
                    .expect("SSE headers")
                    .unwrap();
                assert!(k > 0, "stream closed: {seen}");
                seen.push_str(&String::from_utf8_lossy(&buf[..k]));
            }
        }
        s.broadcast("room:sse", "tick", json!({"n": n})).await;
        let want = format!("\"n\":{n}");
        while !seen.contains(&want) {
            let k = tokio::time::timeout(Duration::from_secs(5), sse.read(&mut buf))
                .await
                .expect("an SSE event")
                .unwrap();
            assert!(k > 0, "stream closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..k]));
        }
    }
    let after_sse = written(&scrape(&s).await);
    assert!(
        after_sse - after_lp >= 3.0,
        "SSE samples: {after_lp} -> {after_sse}"
    );
}

#[tokio::test]
async fn the_grafana_dashboard_only_queries_metrics_the_server_exports() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/docs/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let s = Server::start().await;
    let mut c = s.client("g").await;
    assert!(c.join("room:g", json!({})).await.unwrap().is_ok());
    s.broadcast("room:g", "e", json!({})).await;
    c.recv_event_timeout("room:g", "e", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the broadcast");
    // Refusals appear with their labels once one happened.
    assert!(!c.join("secret:x", json!({})).await.unwrap().is_ok());
    let scrape = scrape(&s).await;
    let exported: std::collections::HashSet<&str> =
        scrape.samples.iter().map(|x| x.metric.as_str()).collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let Some(name) = word.strip_prefix("plexus_").map(|_| word) else {
                    continue;
                };
                let base = name.strip_suffix("_bucket").unwrap_or(name);
                queried += 1;
                // Redis round trips exist only with the Redis broker (the test below), hook and
                // webhook figures only with hooks configured (tests/hooks.rs).
                if base == "plexus_redis_round_trip_seconds"
                    || base.starts_with("plexus_hook_")
                    || base.starts_with("plexus_webhook_")
                {
                    continue;
                }
                assert!(
                    exported.contains(base),
                    "{base} (panel {}) is not exported",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 20, "{queried}");
}

#[tokio::test]
async fn redis_round_trips_and_reconnects_are_measured() {
    let mut redis = Redis::start();
    let config = "profile = \"dev\"\nbroker = \"redis\"\n[redis]\nnode_timeout_secs = 2\n";
    let s = Server::start_with(Some(config), &[("PLEXUS_REDIS_URL", &redis.url())]).await;
    s.broadcast("room:r", "e", json!({})).await;
    let m = scrape(&s).await;
    let publishes = s_count(&m, "publish_history") + s_count(&m, "publish");
    assert!(publishes >= 1.0, "no Redis publish round trip measured");
    assert_eq!(value(&m, "plexus_redis_reconnects_total", &[]), Some(0.0));
    redis.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let mut reconnects = 0.0;
    for _ in 0..100 {
        let m = scrape(&s).await;
        reconnects = value(&m, "plexus_redis_reconnects_total", &[]).unwrap_or(0.0);
        if reconnects >= 1.0 && value(&m, "plexus_broker_up", &[]) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reconnects >= 1.0, "{}", s.log());
}

/// Samples of the Redis round-trip histogram for one operation.
fn s_count(s: &Scrape, op: &str) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == "plexus_redis_round_trip_seconds" && x.labels.get("op") == Some(op))
        .map(|x| match &x.value {
            Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            _ => 0.0,
        })
        .sum()
}

/// A client that stops reading while its outbox stays under its bounds is dropped by the write
/// timeout: counted in `plexus_write_timeout_closes_total`, not as a slow consumer.
#[tokio::test]
async fn a_stalled_client_dropped_by_the_write_timeout_is_counted_apart() {
    let config = "profile = \"dev\"\n[limits]\nwrite_timeout_secs = 1\noutbox_max_bytes = 67108864\n\n[[channels]]\ntopic = \"room:*\"\n";
    let s = Server::start_with(Some(config), &[]).await;
    let before = scrape(&s).await;
    assert_eq!(
        value(&before, "plexus_write_timeout_closes_total", &[]),
        Some(0.0)
    );
    let mut stalled = Client::connect(ConnectOptions::new(s.url()).token(s.token("stalled")))
        .await
        .unwrap();
    assert!(stalled.join("room:wt", json!({})).await.unwrap().is_ok());
    // 300 broadcasts of 50 kB (15 MB, 300 frames: under both outbox bounds) fill the kernel's
    // socket buffers of a client that reads nothing; the write that blocks then times out.
    let pad = "x".repeat(50_000);
    for n in 0..300 {
        s.broadcast("room:wt", "blob", json!({"n": n, "pad": pad}))
            .await;
    }
    let mut after = scrape(&s).await;
    for _ in 0..50 {
        if value(&after, "plexus_write_timeout_closes_total", &[]) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = scrape(&s).await;
    }
    assert_eq!(
        value(&after, "plexus_write_timeout_closes_total", &[]),
        Some(1.0),
        "{}",
        s.log()
    );
    assert_eq!(
        value(&after, "plexus_slow_consumer_closes_total", &[]),
        Some(0.0)
    );
    drop(stalled);
}
