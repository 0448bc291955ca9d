//! Connecting: the handshake, token sources and refusals, profiles and the CLI.

mod common;

use common::{http_raw, json, ws_headers, Server, API_KEY, SECRET};
use plexus_client::{Client, ConnectOptions};
use serde_json::json;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_plexus"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[tokio::test]
async fn refused_connects_answer_json_and_log_why() {
    let s = Server::start().await;
    let h = ws_headers();
    // No token.
    let (st, _, body) = http_raw(s.port, "GET", "/socket/websocket?vsn=2.0.0", &h, "")
        .await
        .unwrap();
    assert_eq!(st, 401);
    assert_eq!(json(&body)["error"], "missing token");
    // Garbage token.
    let (st, _, body) = http_raw(
        s.port,
        "GET",
        "/socket/websocket?vsn=2.0.0&token=abc",
        &h,
        "",
    )
    .await
    .unwrap();
    assert_eq!(st, 403);
    assert_eq!(json(&body)["error"], "malformed token");
    // Expired token (beyond the leeway).
    let expired = {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let claims = json!({"sub": "alice", "exp": plexus_core::auth::unix_now() - 120});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let (st, _, body) = http_raw(
        s.port,
        "GET",
        &format!("/socket/websocket?vsn=2.0.0&token={expired}"),
        &h,
        "",
    )
    .await
    .unwrap();
    assert_eq!(st, 403);
    assert_eq!(json(&body)["error"], "token expired");
    // Wrong secret.
    let forged = plexus_core::auth::Issuer::hs256(b"another-secret")
        .issue("alice", &[], None, 60)
        .unwrap();
    let (st, _, body) = http_raw(
        s.port,
        "GET",
        &format!("/socket/websocket?vsn=2.0.0&token={forged}"),
        &h,
        "",
    )
    .await
    .unwrap();
    assert_eq!(st, 403);
    assert_eq!(json(&body)["error"], "bad token signature");
    let log = s.log();
    for reason in [
        "missing token",
        "malformed token",
        "token expired",
        "bad token signature",
    ] {
        assert!(
            log.contains(&format!("reason={reason}")) || log.contains(reason),
            "log lacks {reason}:\n{log}"
        );
    }
    assert!(!log.contains(&forged), "the log must not contain tokens");
    // The server still serves.
    let mut c = s.client("alice").await;
    assert!(c.heartbeat().await.unwrap().is_ok());
}

#[tokio::test]
async fn handshake_errors_are_400_with_a_reason() {
    let s = Server::start().await;
    let token = s.token("alice");
    // No vsn is V1, as in Phoenix; 1.x and 2.x are served; anything else is refused, logged.
    for q in ["", "&vsn=1.0.0", "&vsn=2.0.0"] {
        let (st, _, _) = http_raw(
            s.port,
            "GET",
            &format!("/socket/websocket?token={token}{q}"),
            &ws_headers(),
            "",
        )
        .await
        .unwrap();
        assert_eq!(st, 101, "vsn {q:?}");
    }
    let (st, _, body) = http_raw(
        s.port,
        "GET",
        &format!("/socket/websocket?vsn=3.0.0&token={token}"),
        &ws_headers(),
        "",
    )
    .await
    .unwrap();
    assert_eq!(st, 400);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("unsupported vsn \"3.0.0\""));
    assert!(
        s.log().contains("unsupported vsn") && s.log().contains("connection refused"),
        "{}",
        s.log()
    );
    let (st, _, body) = http_raw(s.port, "GET", "/socket/websocket?vsn=2.0.0", &[], "")
        .await
        .unwrap();
    assert_eq!(st, 400);
    assert!(json(&body)["error"].as_str().unwrap().contains("upgrade"));
    let (st, _, body) = http_raw(s.port, "GET", "/nope", &[], "").await.unwrap();
    assert_eq!(st, 404);
    assert_eq!(json(&body)["error"], "no such endpoint");
}

#[tokio::test]
async fn auth_token_subprotocol_is_accepted_and_answered_with_phoenix() {
    let s = Server::start().await;
    let token = s.token("alice");
    // phoenix.js: btoa(token) without padding.
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(&token)
    };
    let proto = format!("phoenix, base64url.bearer.phx.{b64}");
    let mut h = ws_headers();
    h.push(("Sec-WebSocket-Protocol", &proto));
    let (st, head, _) = http_raw(s.port, "GET", "/socket/websocket?vsn=2.0.0", &h, "")
        .await
        .unwrap();
    assert_eq!(st, 101, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: phoenix"),
        "{head}"
    );
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");

    let mut c = Client::connect(
        ConnectOptions::new(s.url())
            .token(token)
            .token_as_subprotocol(),
    )
    .await
    .unwrap();
    assert!(c.join("room:lobby", json!({})).await.unwrap().is_ok());
}

#[tokio::test]
async fn dev_token_endpoint_only_in_dev() {
    let s = Server::start().await;
    let (st, body) = s
        .http("GET", "/dev/token?sub=carol", &[], "")
        .await
        .unwrap();
    assert_eq!(st, 200);
    let token = json(&body)["token"].as_str().unwrap().to_owned();
    let mut c = Client::connect(ConnectOptions::new(s.url()).token(token))
        .await
        .unwrap();
    assert!(c.join("room:lobby", json!({})).await.unwrap().is_ok());
    let (st, _) = s.http("GET", "/dev/token", &[], "").await.unwrap();
    assert_eq!(st, 400);

    let prod = Server::start_with(None, &[("PLEXUS_PROFILE", "prod")]).await;
    let (st, _) = prod
        .http("GET", "/dev/token?sub=carol", &[], "")
        .await
        .unwrap();
    assert_eq!(st, 404);
}

#[tokio::test]
async fn demo_page_and_vendored_client_are_served() {
    let s = Server::start().await;
    let (st, body) = s.http("GET", "/", &[], "").await.unwrap();
    assert_eq!(st, 200);
    assert!(body.contains("/assets/phoenix.min.js") && body.contains("room:lobby"));
    let (st, body) = s
        .http("GET", "/assets/phoenix.min.js", &[], "")
        .await
        .unwrap();
    assert_eq!(st, 200);
    assert!(body.starts_with("var Phoenix="));
}

#[test]
fn prod_refuses_to_start_without_secret_and_key() {
    let out = bin()
        .env("PLEXUS_PROFILE", "prod")
        .env("PLEXUS_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JWT secret") && err.contains("API key"),
        "{err}"
    );
}

#[test]
fn dev_refuses_non_loopback_and_bad_config_is_named() {
    let out = bin().env("PLEXUS_LISTEN", "0.0.0.0:4999").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));

    let path = std::env::temp_dir().join(format!("plexus-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "jwt_secret = \"0123456789abcdefgh\"\napi_key = \"k\"\n[[channels]]\ntopic = \"room:*\"\nbogus = 1\n").unwrap();
    let out = bin().arg("--config").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5") && err.contains("bogus"), "{err}");
}

#[tokio::test]
async fn cli_token_connects_and_help_documents_flags() {
    let s = Server::start().await;
    let out = bin()
        .args([
            "token", "--sub", "dave", "--role", "member", "--ttl", "1h", "--secret", SECRET,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let id = plexus_core::auth::Verifier::hs256(SECRET.as_bytes())
        .verify(&token)
        .unwrap();
    assert_eq!(&*id.sub, "dave");
    assert_eq!(id.roles, vec!["member".to_owned()]);
    let mut c = Client::connect(ConnectOptions::new(s.url()).token(token))
        .await
        .unwrap();
    assert!(c.heartbeat().await.unwrap().is_ok());

    let out = bin()
        .args(["token", "--sub", "x", "--ttl", "soon", "--secret", "s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let help = String::from_utf8(bin().args(["token", "--help"]).output().unwrap().stdout).unwrap();
    for flag in ["--sub", "--role", "--ttl", "--secret", "--name", "--config"] {
        assert!(help.contains(flag), "token --help lacks {flag}");
    }
    let help = String::from_utf8(bin().arg("--help").output().unwrap().stdout).unwrap();
    for flag in ["--config", "--listen", "--profile", "serve", "token"] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let _ = API_KEY;
}

#[tokio::test]
async fn json_logs_carry_refusals_with_their_reason_and_topic() {
    let s = Server::start_with(None, &[("PLEXUS_LOG_FORMAT", "json")]).await;
    let mut c = s.client("alice").await;
    assert!(!c
        .join("secret:x", serde_json::json!({}))
        .await
        .unwrap()
        .is_ok());
    let refused = http_raw(s.port, "GET", "/socket/websocket?vsn=9", &ws_headers(), "")
        .await
        .unwrap();
    assert_eq!(refused.0, 400);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let lines: Vec<serde_json::Value> = s
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let join = lines
        .iter()
        .find(|l| l["message"] == "join refused")
        .expect("a join refused line");
    assert_eq!(
        (&join["level"], &join["topic"], &join["sub"]),
        (
            &serde_json::json!("INFO"),
            &serde_json::json!("secret:x"),
            &serde_json::json!("alice")
        )
    );
    assert!(
        join["reason"].is_string() && join["conn"].is_u64(),
        "{join}"
    );
    assert!(lines.iter().any(|l| l["message"] == "connection refused"
        && l["reason"].as_str().is_some_and(|r| r.contains("vsn"))));
}
