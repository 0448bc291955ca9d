//! The security model, as a client sees it: every refusal with its client-visible error, and
//! after each one the server still serves others. One prod-profile server with a full rule file.

mod common;

use common::{http_raw, json, ws_headers, Server};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use plexus_client::protocol::Payload;
use plexus_client::{Client, ClientError, ConnectOptions};
use serde_json::{json, Value};
use std::time::Duration;

const HS_SECRET: &str = "security-suite-secret-0123456789";
/// The harness sets PLEXUS_JWT_SECRET; this suite verifies with its [[auth.keys]] only.
const NO_SECRET: &[(&str, &str)] = &[("PLEXUS_JWT_SECRET", "")];
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/");

fn config() -> String {
    format!(
        r#"
profile = "prod"
api_key = "security-api-key"
allowed_origins = ["https://app.example.com"]
trusted_proxies = ["127.0.0.1"]

[auth]
issuer = "https://auth.test"
audience = "plexus"
expiry_grace_secs = 1

[[auth.keys]]
kid = "hs-1"
algorithm = "HS256"
secret = "{HS_SECRET}"

[[auth.keys]]
kid = "rsa-1"
algorithm = "RS256"
public_key_file = "{KEYS}rsa_public.pem"

[limits]
max_connections_per_ip = 5
max_connections_per_user = 3
connect_rate_per_ip = 2
connect_burst_per_ip = 8
max_channels_per_connection = 100
messages_per_second = 5
message_burst = 10
max_message_bytes = 4096

[[channels]]
topic = "room:staff"
join_roles = ["staff"]

[[channels]]
topic = "user:{{sub}}"

[[channels]]
topic = "room:*"
push_events = ["new_msg", "typing"]
event_roles = {{ delete_msg = ["moderator"] }}
max_per_user = 2
"#
    )
}

fn now() -> u64 {
    plexus_core::auth::unix_now()
}

/// Claims that pass every check; tests break one thing at a time.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600, "iss": "https://auth.test", "aud": "plexus"})
}

fn hs(claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("hs-1".into());
    encode(&h, claims, &EncodingKey::from_secret(HS_SECRET.as_bytes())).unwrap()
}

fn token(sub: &str, roles: &[&str]) -> String {
    let mut c = claims(sub);
    c["roles"] = json!(roles);
    hs(&c)
}

/// Every connection of this suite comes "from" its own address through the trusted proxy, so
/// that the per-address limits of one test do not touch another.
async fn connect_from(s: &Server, ip: &str, token: &str) -> Result<Client, ClientError> {
    Client::connect(
        ConnectOptions::new(s.url())
            .token(token)
            .header("X-Forwarded-For", ip),
    )
    .await
}

async fn handshake(
    s: &Server,
    ip: &str,
    query_token: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let mut h = ws_headers();
    h.push(("X-Forwarded-For", ip));
    h.extend_from_slice(extra);
    let path = match query_token {
        Some(t) => format!("/socket/websocket?vsn=2.0.0&token={t}"),
        None => "/socket/websocket?vsn=2.0.0".to_owned(),
    };
    let (status, _, body) = http_raw(s.port, "GET", &path, &h, "").await.unwrap();
    let reason = if status == 101 {
        String::new()
    } else {
        json(&body)["error"].as_str().unwrap_or("").to_owned()
    };
    (status, reason)
}

/// A bystander that must keep working after every refusal.
async fn still_serving(s: &Server) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let ip = format!("198.18.{}.{}", n / 250, n % 250 + 1);
    let mut c = connect_from(s, &ip, &token(&format!("bystander{n}"), &[]))
        .await
        .expect("server still accepts");
    assert!(c.heartbeat().await.unwrap().is_ok());
}

/// (name, query token, extra headers, expected status, expected reason)
type RefusalCase<'a> = (
    &'a str,
    Option<String>,
    Vec<(&'a str, &'a str)>,
    u16,
    &'a str,
);

#[tokio::test]
async fn connect_refusals_table() {
    let s = Server::start_with(Some(&config()), NO_SECRET).await;
    let rsa_public = std::fs::read(format!("{KEYS}rsa_public.pem")).unwrap();
    let rsa_private = std::fs::read(format!("{KEYS}rsa_private.pem")).unwrap();

    let mut expired = claims("a");
    expired["exp"] = json!(now() - 120);
    let mut early = claims("a");
    early["nbf"] = json!(now() + 300);
    let mut wrong_aud = claims("a");
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = claims("a");
    wrong_iss["iss"] = json!("https://evil.test");
    let mut no_iss = claims("a");
    no_iss.as_object_mut().unwrap().remove("iss");
    let mut no_aud = claims("a");
    no_aud.as_object_mut().unwrap().remove("aud");
    let unknown_kid = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("nope".into());
        encode(
            &h,
            &claims("a"),
            &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        )
        .unwrap()
    };
    // HS256 "signed" with the server's RSA public key as the HMAC secret, under the RSA kid.
    let confused = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        encode(&h, &claims("a"), &EncodingKey::from_secret(&rsa_public)).unwrap()
    };
    let alg_none = {
        use base64::Engine;
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims("a"))
        )
    };
    let rsa_ok = {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa-1".into());
        encode(
            &h,
            &claims("rsa-user"),
            &EncodingKey::from_rsa_pem(&rsa_private).unwrap(),
        )
        .unwrap()
    };

    // Over the 16 KiB cap (validly signed), and claims nested 200 deep in a claim Plexus
    // does not read.
    let mut big = claims("a");
    big["pad"] = json!("x".repeat(17 * 1024));
    let oversized = hs(&big);
    let bearer_oversized = format!("Bearer {oversized}");
    let deep = {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        // serde_json's Value refuses that nesting itself: the claims are written as text.
        let mut text = claims("a").to_string();
        text.pop();
        text.push_str(&format!(
            r#","skipped":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ));
        let input = format!("{}.{}", b64(r#"{"alg":"HS256","typ":"JWT"}"#), b64(&text));
        let sig = jsonwebtoken::crypto::sign(
            input.as_bytes(),
            &EncodingKey::from_secret(HS_SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{input}.{sig}")
    };

    let cases: Vec<RefusalCase> = vec![
        ("no token", None, vec![], 401, "missing token"),
        (
            "token over 16 KiB",
            Some(oversized),
            vec![],
            403,
            "token too large (over 16 KiB)",
        ),
        (
            "token over 16 KiB as Authorization: Bearer",
            None,
            vec![("Authorization", bearer_oversized.as_str())],
            403,
            "token too large (over 16 KiB)",
        ),
        (
            "claims nested 200 deep",
            Some(deep),
            vec![],
            403,
            "malformed token",
        ),
        (
            "garbage token",
            Some("garbage".into()),
            vec![],
            403,
            "malformed token",
        ),
        (
            "alg none",
            Some(alg_none),
            vec![],
            403,
            "token algorithm not allowed",
        ),
        (
            "HS256 with the RSA public key",
            Some(confused),
            vec![],
            403,
            "token algorithm not allowed",
        ),
        ("expired", Some(hs(&expired)), vec![], 403, "token expired"),
        (
            "not yet valid",
            Some(hs(&early)),
            vec![],
            403,
            "token not yet valid",
        ),
        (
            "wrong aud",
            Some(hs(&wrong_aud)),
            vec![],
            403,
            "wrong token audience",
        ),
        (
            "no iss while auth.issuer is configured",
            Some(hs(&no_iss)),
            vec![],
            403,
            "iss",
        ),
        (
            "no aud while auth.audience is configured",
            Some(hs(&no_aud)),
            vec![],
            403,
            "aud",
        ),
        (
            "wrong iss",
            Some(hs(&wrong_iss)),
            vec![],
            403,
            "wrong token issuer",
        ),
        (
            "unknown kid",
            Some(unknown_kid),
            vec![],
            403,
            "unknown key id",
        ),
        (
            "foreign origin",
            Some(token("a", &[])),
            vec![("Origin", "https://evil.example")],
            403,
            "origin not allowed",
        ),
    ];
    for (i, (name, tok, extra, status, reason)) in cases.into_iter().enumerate() {
        let ip = format!("192.0.2.{}", i + 1);
        let (got_status, got_reason) = handshake(&s, &ip, tok.as_deref(), &extra).await;
        assert_eq!(got_status, status, "{name}: {got_reason}");
        assert!(
            got_reason.contains(reason),
            "{name}: {got_reason:?} lacks {reason:?}"
        );
        still_serving(&s).await;
    }
    // The right origin and an RS256 token pass; so does Authorization: Bearer.
    let (st, r) = handshake(
        &s,
        "192.0.2.50",
        Some(&rsa_ok),
        &[("Origin", "https://app.example.com")],
    )
    .await;
    assert_eq!(st, 101, "{r}");
    let bearer = format!("Bearer {}", token("bearer-user", &[]));
    let (st, r) = handshake(&s, "192.0.2.51", None, &[("Authorization", &bearer)]).await;
    assert_eq!(st, 101, "{r}");
    let log = s.log();
    assert!(
        log.contains("reason=token expired") && log.contains("reason=unknown key id"),
        "{log}"
    );
}

#[tokio::test]
async fn connection_caps_per_address_and_per_user_and_attempt_rate() {
    let s = Server::start_with(Some(&config()), NO_SECRET).await;
    // Per address: 5.
    let mut held = Vec::new();
    for i in 0..5 {
        held.push(
            connect_from(&s, "203.0.113.1", &token(&format!("u{i}"), &[]))
                .await
                .unwrap(),
        );
    }
    let (st, reason) = handshake(&s, "203.0.113.1", Some(&token("u9", &[])), &[]).await;
    assert_eq!(
        (st, reason.as_str()),
        (429, "too many connections from this address")
    );
    // Per user: 3, from different addresses.
    for i in 0..3 {
        held.push(
            connect_from(&s, &format!("203.0.113.{}", 10 + i), &token("tabs", &[]))
                .await
                .unwrap(),
        );
    }
    let (st, reason) = handshake(&s, "203.0.113.20", Some(&token("tabs", &[])), &[]).await;
    assert_eq!(
        (st, reason.as_str()),
        (429, "too many connections for this user")
    );
    // Closing one frees a place.
    held.pop().unwrap().close().await;
    let mut ok = false;
    for _ in 0..50 {
        if handshake(&s, "203.0.113.21", Some(&token("tabs", &[])), &[])
            .await
            .0
            == 101
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the user's freed place was not released");
    // Attempt rate: a burst of 8, then 429 until tokens refill.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(handshake(&s, "203.0.113.99", Some("garbage"), &[]).await.0);
    }
    assert_eq!(
        statuses.iter().filter(|&&st| st == 403).count(),
        8,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&st| st == 429).count(),
        4,
        "{statuses:?}"
    );
    still_serving(&s).await;
}

#[tokio::test]
async fn channel_and_event_rules() {
    let s = Server::start_with(Some(&config()), NO_SECRET).await;
    let mut alice = connect_from(&s, "198.51.100.10", &token("alice", &[]))
        .await
        .unwrap();
    let mut moderator = connect_from(&s, "198.51.100.11", &token("mod", &["moderator"]))
        .await
        .unwrap();

    // Role required.
    let r = alice.join("room:staff", json!({})).await.unwrap();
    assert_eq!(r.json(), json!({"reason": "unauthorized", "retry": false}));
    let mut staff = connect_from(&s, "198.51.100.12", &token("sam", &["staff"]))
        .await
        .unwrap();
    assert!(staff.join("room:staff", json!({})).await.unwrap().is_ok());
    // {sub} binding.
    assert!(alice.join("user:alice", json!({})).await.unwrap().is_ok());
    assert_eq!(
        alice
            .join("user:bob", json!({}))
            .await
            .unwrap()
            .reason()
            .as_deref(),
        Some("unauthorized")
    );
    // Unmatched topics are denied.
    assert_eq!(
        alice
            .join("elsewhere", json!({}))
            .await
            .unwrap()
            .reason()
            .as_deref(),
        Some("unauthorized")
    );

    // Event rules: allowed, not listed, role-gated.
    alice.join("room:lobby", json!({})).await.unwrap();
    moderator.join("room:lobby", json!({})).await.unwrap();
    assert!(alice
        .push_json("room:lobby", "new_msg", &json!({"n": 1}))
        .await
        .unwrap()
        .is_ok());
    moderator.recv_event("room:lobby", "new_msg").await.unwrap();
    let r = alice
        .push_json("room:lobby", "shout", &json!({}))
        .await
        .unwrap();
    assert_eq!(r.reason().as_deref(), Some("unauthorized"));
    let r = alice
        .push_json("room:lobby", "delete_msg", &json!({"id": 1}))
        .await
        .unwrap();
    assert_eq!(r.reason().as_deref(), Some("unauthorized"));
    assert!(
        moderator
            .recv_timeout(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none(),
        "a refused push must not be broadcast"
    );
    assert!(moderator
        .push_json("room:lobby", "delete_msg", &json!({"id": 1}))
        .await
        .unwrap()
        .is_ok());
    alice.recv_event("room:lobby", "delete_msg").await.unwrap();
    still_serving(&s).await;
}

#[tokio::test]
async fn max_per_user_and_channel_count() {
    let s = Server::start_with(Some(&config()), NO_SECRET).await;
    let t = token("multi", &[]);
    let mut c1 = connect_from(&s, "198.51.100.20", &t).await.unwrap();
    let mut c2 = connect_from(&s, "198.51.100.21", &t).await.unwrap();
    let mut c3 = connect_from(&s, "198.51.100.22", &t).await.unwrap();
    assert!(c1.join("room:p", json!({})).await.unwrap().is_ok());
    assert!(c2.join("room:p", json!({})).await.unwrap().is_ok());
    let r = c3.join("room:p", json!({})).await.unwrap();
    assert_eq!(r.status, "error");
    assert!(r.reason().unwrap().contains("max_per_user"), "{r:?}");
    assert_eq!(r.json()["retry"], true);
    // A leave frees the place.
    c1.leave("room:p").await.unwrap();
    assert!(c3.join("room:p", json!({})).await.unwrap().is_ok());

    // 100 channels per connection, then refused (on a server without a message rate limit).
    let s = Server::start_with(
        Some(&config().replace("messages_per_second = 5", "messages_per_second = 0")),
        NO_SECRET,
    )
    .await;
    let mut many = connect_from(&s, "198.51.100.23", &token("collector", &[]))
        .await
        .unwrap();
    for i in 0..100 {
        assert!(
            many.join(&format!("room:c{i}"), json!({}))
                .await
                .unwrap()
                .is_ok(),
            "join {i}"
        );
    }
    let r = many.join("room:c100", json!({})).await.unwrap();
    assert_eq!(r.reason().as_deref(), Some("too many channels"));
    still_serving(&s).await;
}

#[tokio::test]
async fn flood_gets_rate_limited_then_closed_and_oversize_closes_1009() {
    let s = Server::start_with(Some(&config()), NO_SECRET).await;
    let mut flooder = connect_from(&s, "198.51.100.30", &token("flood", &[]))
        .await
        .unwrap();
    // Burst 10: the 11th message in a row is refused with a reply.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(flooder.heartbeat().await.unwrap().status);
    }
    assert_eq!(
        statuses.iter().filter(|st| *st == "ok").count(),
        10,
        "{statuses:?}"
    );
    let r = flooder.heartbeat().await.unwrap();
    assert_eq!(r.reason().as_deref(), Some("rate limited"));
    // Sustained: keep sending without waiting; the server closes with 1008.
    let mut closed = None;
    for _ in 0..200 {
        if let Err(e) = flooder
            .send_text(r#"[null,"x","phoenix","heartbeat",{}]"#)
            .await
        {
            closed = Some(format!("{e}"));
            break;
        }
    }
    let (code, reason) = match flooder.wait_close().await {
        Ok(c) => c,
        Err(e) => panic!("expected a close, got {e} ({closed:?})"),
    };
    assert_eq!((code, reason.as_str()), (Some(1008), "rate limit exceeded"));

    let mut big = connect_from(&s, "198.51.100.31", &token("big", &[]))
        .await
        .unwrap();
    big.join("room:big", json!({})).await.unwrap();
    let body = "x".repeat(10_000);
    match big
        .push(
            "room:big",
            "new_msg",
            Payload::json(&json!({"body": body})).unwrap(),
        )
        .await
    {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, Some(1009)),
        other => panic!("expected close 1009, got {other:?}"),
    }
    still_serving(&s).await;
}

#[tokio::test]
async fn expired_token_closes_4001_unless_refreshed_in_band() {
    let s = Server::start_with(Some(&config()), NO_SECRET).await;
    let mut short = claims("short");
    short["exp"] = json!(now() + 1);
    // Not refreshed: warned, then closed after the 1 s grace.
    let mut c = connect_from(&s, "198.51.100.40", &hs(&short))
        .await
        .unwrap();
    let warn = c.recv_event("phoenix", "token_expired").await.unwrap();
    assert!(warn.payload.as_json().unwrap().get().contains("grace_ms"));
    let (code, reason) = c.wait_close().await.unwrap();
    assert_eq!((code, reason.as_str()), (Some(4001), "token expired"));

    // Refreshed: stays open well past the old expiry. (A token of its own, not yet expired:
    // the first one already was by now, and would be warned about before the refresh lands.)
    let mut short = claims("short");
    short["exp"] = json!(now() + 2);
    let mut r = connect_from(&s, "198.51.100.41", &hs(&short))
        .await
        .unwrap();
    let reply = r
        .request(
            None,
            "phoenix",
            "refresh_token",
            Payload::json(&json!({"token": token("short", &[])})).unwrap(),
        )
        .await
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    // Another user's token is refused.
    let reply = r
        .request(
            None,
            "phoenix",
            "refresh_token",
            Payload::json(&json!({"token": token("mallory", &[])})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.reason().as_deref(),
        Some("token refresh must keep the same sub")
    );
    tokio::time::sleep(Duration::from_millis(2800)).await;
    assert!(r.heartbeat().await.unwrap().is_ok());
    let extra = r.recv_timeout(Duration::from_millis(50)).await.unwrap();
    assert!(extra.is_none(), "{extra:?}");
    still_serving(&s).await;
}

#[tokio::test]
async fn cli_tokens_carry_the_issuer_and_audience_the_server_requires() {
    let s = Server::start_with(Some(&config()), NO_SECRET).await;
    let issue = |extra: &[&str]| {
        let mut args = vec!["token", "--sub", "cli-user", "--secret", HS_SECRET];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_plexus"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let bare = issue(&[]);
    let (status, reason) = handshake(&s, "192.0.2.60", Some(&bare), &[]).await;
    assert_eq!(status, 403, "{reason}");
    let full = issue(&["--iss", "https://auth.test", "--aud", "plexus"]);
    let (status, reason) = handshake(&s, "192.0.2.61", Some(&full), &[]).await;
    assert_eq!(status, 101, "{reason}");
}
