//! A node cut off from Redis while the others still reach it (a partition): it closes its
//! clients (1012, Pusher 4200) before the others reap it, keeps admitting connections without
//! closing them again during the same outage, and once its link returns it is whole again in
//! the cluster. The cut is a TCP proxy between node A and a real `redis-server` that the test
//! black-holes: it stops forwarding without closing anything, as a lost route does.

mod common;

use common::cluster::payload;
use common::receiver::{Answer, Receiver, HOOK_SECRET};
use common::{Redis, Server, API_KEY};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const CONFIG: &str = r#"
profile = "dev"
broker = "redis"
[redis]
node_timeout_secs = 2
[[channels]]
topic = "room:*"
presence = true
"#;

/// A TCP proxy on loopback to `127.0.0.1:<upstream>` that can be made a black hole: while
/// cut, it reads and forwards nothing (bytes wait in the kernel's buffers) and connects
/// nothing new, but closes nothing either; once healed, everything flows again.
struct Proxy {
    port: u16,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    if rx.wait_for(|o| *o).await.is_err() {
                        return;
                    }
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::spawn(pipe(dr, uw, rx.clone()));
                    pipe(ur, dw, rx).await;
                });
            }
        });
        Proxy { port, open, task }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while the link is open; ends when either side closes.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut open: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if open.wait_for(|o| *o).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Read just before the cut: held until the link heals, like a packet in flight.
        if open.wait_for(|o| *o).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Webhook events with the instant each arrived.
type Arrivals = Arc<Mutex<Vec<(Instant, Value)>>>;

async fn receiver() -> (Receiver, Arrivals) {
    let arrivals: Arrivals = Default::default();
    let seen = arrivals.clone();
    let recv = Receiver::start(move |path, body| {
        if path == "/webhook" {
            let now = Instant::now();
            for e in body["events"].as_array().into_iter().flatten() {
                seen.lock().push((now, e.clone()));
            }
        }
        Answer::Json(json!({}))
    })
    .await;
    (recv, arrivals)
}

async fn node(redis_url: &str, recv: &Receiver) -> Server {
    let hook = recv.url("/webhook");
    let env = [
        ("PLEXUS_REDIS_URL", redis_url),
        ("PLEXUS_HOOK_SECRET", HOOK_SECRET),
        ("PLEXUS_WEBHOOK_URL", hook.as_str()),
        ("PLEXUS_WEBHOOK_EVENTS", "connect,disconnect,presence_leave"),
    ];
    Server::start_with(Some(CONFIG), &env).await
}

/// Waits (up to `within`) for a `presence_diff` on `topic` whose `side` ("joins"/"leaves")
/// names `key`; returns when it arrived.
async fn diff_naming(
    c: &mut plexus_client::Client,
    topic: &str,
    side: &str,
    key: &str,
    within: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(m) = c
            .recv_event_timeout(topic, "presence_diff", left)
            .await
            .unwrap()
        {
            if payload(&m)[side][key].is_object() {
                return Some(Instant::now());
            }
        }
    }
    None
}

/// The presence keys of `topic` as node `s` sees the cluster's.
async fn presence_keys(s: &Server, topic: &str) -> Vec<String> {
    let auth = format!("Bearer {API_KEY}");
    let path = format!("/api/channels/{topic}/presence");
    let (_, body) = s
        .http("GET", &path, &[("Authorization", &auth)], "")
        .await
        .unwrap();
    let mut keys: Vec<String> = common::json(&body)["presence"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

async fn broker_up(s: &Server) -> bool {
    let (_, body) = s.http("GET", "/health", &[], "").await.unwrap();
    common::json(&body)["broker_up"] == true
}

#[tokio::test]
async fn a_node_cut_off_from_redis_closes_its_clients_before_it_is_reaped_and_rejoins() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port).await;
    let (recv, arrivals) = receiver().await;
    let mut a = node(&proxy.url(), &recv).await;
    let b = node(&redis.url(), &recv).await;

    let mut alice = a.client("alice").await;
    assert!(alice.join("room:p", json!({})).await.unwrap().is_ok());
    let mut watcher = b.client("watcher").await;
    assert!(watcher.join("room:p", json!({})).await.unwrap().is_ok());
    let state = payload(
        &watcher
            .recv_event("room:p", "presence_state")
            .await
            .unwrap(),
    );
    assert!(state["alice"].is_object(), "{state}");

    proxy.cut();
    let cut = Instant::now();
    let alice_closed = tokio::spawn(async move {
        loop {
            match alice.wait_close().await {
                Ok(close) => return (Instant::now(), close),
                Err(plexus_client::ClientError::Timeout) => continue,
                Err(e) => panic!("alice: {e}"),
            }
        }
    });
    let left = diff_naming(
        &mut watcher,
        "room:p",
        "leaves",
        "alice",
        Duration::from_secs(8),
    )
    .await
    .expect("B's client never saw alice leave: A was not reaped");
    let (closed, (code, reason)) = alice_closed.await.unwrap();
    assert_eq!(code, Some(1012), "{reason}");
    assert!(reason.contains("cut off"), "{reason}");
    assert!(
        closed < left,
        "alice was closed {:?} after the cut, B's client saw her leave after {:?}: A must tell \
         its clients first",
        closed - cut,
        left - cut
    );
    // B reports alice's disconnect as reaped; A told her first.
    let reaped_at = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = arrivals.lock().iter().find_map(|(t, e)| {
                (e["type"] == "disconnect" && e["reaped"] == true && e["sub"] == "alice")
                    .then_some(*t)
            });
            if let Some(t) = found {
                break t;
            }
            assert!(Instant::now() < deadline, "{:#?}", arrivals.lock());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(closed < reaped_at, "closed after the reaped disconnect");
    println!(
        "after the cut: alice closed at {:?}, B's client saw her leave at {:?}, the reaped \
         disconnect arrived at {:?}",
        closed - cut,
        left - cut,
        reaped_at - cut
    );
    // A's own `disconnect` of alice says why (webhooks do not go through Redis).
    let own = arrivals.lock().iter().any(|(_, e)| {
        e["type"] == "disconnect" && e["sub"] == "alice" && e["code"] == 1012 && e["reaped"] != true
    });
    assert!(own, "{:#?}", arrivals.lock());
    let log = a.log();
    assert!(log.contains("closing its clients"), "{log}");

    // Still cut off: A admits connections and does not close them again (no reconnect loop).
    let mut carol = a.client("carol").await;
    let joined = carol
        .join("room:p", json!({}))
        .await
        .unwrap_or_else(|e| panic!("carol's join during the cut: {e}\n{}", a.log()));
    assert!(joined.is_ok(), "{joined:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(carol.heartbeat().await.unwrap().is_ok());
    assert!(
        cut.elapsed() > Duration::from_secs(4),
        "the outage was not long enough to prove anything"
    );

    // While cut off, A says so (the subscription alone looks fine: a silent link breaks no
    // connection).
    assert!(!broker_up(&a).await, "A still says its broker is up");
    proxy.heal();
    let healed = Instant::now();
    // A is back in the cluster once its health says so (what a balancer's check sees).
    while !broker_up(&a).await {
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "A did not reconnect\n{}",
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client that reconnects to A is present again for B's clients.
    let mut alice = a.client("alice").await;
    assert!(alice.join("room:p", json!({})).await.unwrap().is_ok());
    let seen = diff_naming(
        &mut watcher,
        "room:p",
        "joins",
        "alice",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        seen.is_some(),
        "B's client never saw alice join again\n{}",
        a.log()
    );
    // A noticed that it had been reaped and wrote its state again: the cluster's presence
    // (read on B) holds A's clients, carol included, whose join was made during the cut.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = presence_keys(&b, "room:p").await;
        if keys == ["alice", "carol", "watcher"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence on B {:?} after the link returned: {keys:?}\n{}",
            healed.elapsed(),
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its counters too: B counts A's two subscribers of room:p again.
    let auth = format!("Bearer {API_KEY}");
    let (_, body) = b
        .http("GET", "/api/channels", &[("Authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(
        common::json(&body)["channels"],
        json!([{"topic": "room:p", "subscribers": 3}])
    );
    // Carol's later leave reaches B's client (A is in the cluster again).
    carol.close().await;
    assert!(
        diff_naming(
            &mut watcher,
            "room:p",
            "leaves",
            "carol",
            Duration::from_secs(5)
        )
        .await
        .is_some(),
        "carol's leave did not reach B"
    );
    // And its connection registry: if A dies now, B reports the disconnect of alice's new
    // connection (made after the link returned) as reaped. (Not before the first reaping's
    // 10 s lock on A has expired: about 8 s from here.)
    let killed = Instant::now();
    a.kill9();
    let deadline = Instant::now() + Duration::from_secs(14);
    loop {
        let reported = arrivals.lock().iter().any(|(t, e)| {
            *t > killed && e["type"] == "disconnect" && e["reaped"] == true && e["sub"] == "alice"
        });
        if reported {
            break;
        }
        assert!(Instant::now() < deadline, "{:#?}", arrivals.lock());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(alice);
    drop(proxy);
}

/// The other transports of a cut-off node: a Pusher connection is told 4200 (reconnect now),
/// a LongPoll session ends (its next poll answers 410).
#[tokio::test]
async fn pusher_and_longpoll_clients_of_a_cut_off_node_are_told_too() {
    let redis = Redis::start();
    let proxy = Proxy::start(redis.port).await;
    let url = proxy.url();
    let mut env = common::pusher::pusher_env();
    env.push(("PLEXUS_REDIS_URL", &url));
    let a = Server::start_with(Some(CONFIG), &env).await;
    let (mut ws, _) = common::pusher::connect(&a).await;
    let session = a.longpoll_session("poller").await;
    let poll = format!("/socket/longpoll?vsn=2.0.0&token={session}");
    let beat = r#"[null,"1","phoenix","heartbeat",{}]"#;
    let (_, body) = a.http("POST", &poll, &[], beat).await.unwrap();
    assert_eq!(common::json(&body)["status"], 200, "{body}");

    proxy.cut();
    let cut = Instant::now();
    assert_eq!(common::pusher::close_code(&mut ws).await, 4200);
    let closed = cut.elapsed();
    assert!(
        closed < Duration::from_secs(2),
        "closed {closed:?} after the cut: node_timeout is 2 s"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, body) = a.http("POST", &poll, &[], beat).await.unwrap();
        if common::json(&body)["status"] == 410 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the LongPoll session lives on: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A Pusher client that connects during the cut is served and stays.
    let (mut again, _) = common::pusher::connect(&a).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    common::pusher::send(&mut again, json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(
        common::pusher::next(&mut again).await["event"],
        "pusher:pong"
    );
    proxy.heal();
}

/// Every node cut off at once (a total Redis outage, as far as the nodes can tell): each
/// closes its clients once, the clients that reconnect meanwhile stay, and when the links
/// return the cluster is whole (presence and cross-node delivery).
#[tokio::test]
async fn when_every_node_is_cut_off_clients_reconnect_once_and_no_more() {
    let redis = Redis::start();
    let (pa, pb) = (
        Proxy::start(redis.port).await,
        Proxy::start(redis.port).await,
    );
    // A 4 s node timeout (cut off after 3 s without a heartbeat): with 2 s, a heartbeat that a
    // loaded CI machine answers 1.5 s late after the heal is a second outage, and the
    // "closed once" assertion below then fails for a reason the test is not about.
    let config = CONFIG.replace("node_timeout_secs = 2", "node_timeout_secs = 4");
    let a = Server::start_with(Some(&config), &[("PLEXUS_REDIS_URL", &pa.url())]).await;
    let b = Server::start_with(Some(&config), &[("PLEXUS_REDIS_URL", &pb.url())]).await;
    let mut first = [a.client("ann").await, b.client("bo").await];
    for c in first.iter_mut() {
        assert!(c.join("room:t", json!({})).await.unwrap().is_ok());
    }
    pa.cut();
    pb.cut();
    for c in first.iter_mut() {
        let (code, reason) = c.wait_close().await.unwrap();
        assert_eq!(code, Some(1012), "{reason}");
    }
    // Reconnected during the outage, to either node: served, and not closed again.
    let mut ann = a.client("ann").await;
    let mut bo = b.client("bo").await;
    for c in [&mut ann, &mut bo] {
        assert!(c.join("room:t", json!({})).await.unwrap().is_ok());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for c in [&mut ann, &mut bo] {
        assert!(c.heartbeat().await.unwrap().is_ok());
    }
    pa.heal();
    pb.heal();
    let healed = Instant::now();
    while !(broker_up(&a).await && broker_up(&b).await) {
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "not reconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both nodes' clients of the outage are in the cluster's presence, and cross-node
    // delivery works again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while presence_keys(&a, "room:t").await != ["ann", "bo"] {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            presence_keys(&a, "room:t").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let _ = bo.push_json("room:t", "msg", &json!({"from": "bo"})).await;
        if let Some(m) = ann
            .recv_event_timeout("room:t", "msg", Duration::from_millis(200))
            .await
            .unwrap()
        {
            assert_eq!(payload(&m)["from"], "bo");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cross-node delivery after the outage"
        );
    }
    // The outage closed each node's clients once (the log line, once per node).
    for n in [&a, &b] {
        assert_eq!(
            n.log().matches("closing its clients").count(),
            1,
            "{}",
            n.log()
        );
    }
}
