//! Keys from JWKS URLs (`auth.jwks_urls`, `PLEXUS_JWKS_URL`): a real server process fetches
//! them from a local identity provider (a tiny HTTP server here, which counts its fetches and
//! can rotate its keys or go down), and roles read at a claim path (`auth.roles_claim`).
//!
//! The removed-key tests rely on real refreshes, never on a shortened floor: the fetch an
//! unknown `kid` causes (a token signed with the provider's new key replaces the whole set, so
//! the removed key stops verifying at once), and, in the slow test, the scheduled refresh with
//! `max-age=0`, which Plexus clamps to its one-minute floor.

mod common;

use common::{free_port, plexus_command, Server, API_KEY};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use plexus_client::{Client, ConnectOptions};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---- the identity provider ----

struct Published {
    jwks: Value,
    cache_control: String,
    down: bool,
}

/// A JWKS endpoint on a free loopback port: answers `GET /jwks` with the current set (or 503
/// while down) and counts every request.
struct Provider {
    port: u16,
    state: Arc<Mutex<Published>>,
    fetches: Arc<AtomicUsize>,
}

impl Provider {
    async fn start(keys: &[&Key], cache_control: &str) -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(Published {
            jwks: jwks(keys),
            cache_control: cache_control.to_owned(),
            down: false,
        }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (st, count) = (state.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (st, count) = (st.clone(), count.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let (status, body, cc) = {
                        let p = st.lock().unwrap();
                        if p.down {
                            (
                                "503 Service Unavailable",
                                "{}".to_owned(),
                                "no-store".into(),
                            )
                        } else {
                            ("200 OK", p.jwks.to_string(), p.cache_control.clone())
                        }
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncache-control: {cc}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Provider {
            port,
            state,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks", self.port)
    }

    fn publish(&self, keys: &[&Key]) {
        self.state.lock().unwrap().jwks = jwks(keys);
    }

    fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

// ---- keys and tokens ----

/// A signing key of the provider: its private half signs tokens, its JWK is published.
struct Key {
    alg: Algorithm,
    kid: String,
    private: EncodingKey,
    jwk: Value,
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/");

/// The fixture key `name` (`rsa`, `rsa2`, `ec256`, `ec384`, `ed25519`) for `alg` under `kid`.
fn key(name: &str, alg: Algorithm, kid: &str) -> Key {
    let pem = std::fs::read(format!("{FIXTURES}{name}_private.pem")).unwrap();
    let private = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .unwrap();
    let mut jwk = match alg {
        // jsonwebtoken derives no Ed25519 JWK: the fixture JWKS has this key's.
        Algorithm::EdDSA => {
            let fixture: Value =
                serde_json::from_slice(&std::fs::read(format!("{FIXTURES}jwks.json")).unwrap())
                    .unwrap();
            let x = fixture["keys"][1]["x"].clone();
            json!({"kty": "OKP", "crv": "Ed25519", "x": x})
        }
        _ => {
            serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&private, alg).unwrap())
                .unwrap()
        }
    };
    jwk["kid"] = kid.into();
    jwk["use"] = "sig".into();
    Key {
        alg,
        kid: kid.to_owned(),
        private,
        jwk,
    }
}

fn jwks(keys: &[&Key]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

fn exp() -> u64 {
    plexus_core::auth::unix_now() + 3600
}

impl Key {
    /// A token with `claims` signed by this key, its header naming `kid`.
    fn sign_as(&self, kid: &str, claims: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.private).unwrap()
    }

    fn token(&self, sub: &str) -> String {
        self.sign_as(&self.kid, json!({"sub": sub, "exp": exp()}))
    }
}

// ---- the server ----

fn config(urls: &[String], extra: &str) -> String {
    format!(
        r#"
[limits]
connect_rate_per_ip = 0

[auth]
jwks_urls = {urls:?}
{extra}

[[channels]]
topic = "room:*"

[[channels]]
topic = "staff:*"
join_roles = ["admin"]
"#
    )
}

async fn start(provider: &Provider, extra: &str) -> Server {
    Server::start_with(
        Some(&config(&[provider.url()], extra)),
        &[("PLEXUS_PROFILE", "dev")],
    )
    .await
}

async fn connect(s: &Server, token: &str) -> Result<Client, String> {
    Client::connect(ConnectOptions::new(s.url()).token(token))
        .await
        .map_err(|e| e.to_string())
}

async fn metric(s: &Server, name: &str) -> u64 {
    let (_, body) = s.http("GET", "/metrics", &[], "").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

// ---- tests ----

#[tokio::test]
async fn a_rotated_key_works_at_once_and_the_removed_key_stops_with_that_refresh() {
    let old = key("rsa", Algorithm::RS256, "2026-11");
    let new = key("ec256", Algorithm::ES256, "2026-12");
    let provider = Provider::start(&[&old], "public, max-age=86400").await;
    let s = start(&provider, "").await;
    assert_eq!(provider.fetches(), 1, "fetched once at start");
    connect(&s, &old.token("alice")).await.expect("old key");

    // The provider rotates: the old key is removed, a new kid appears.
    provider.publish(&[&new]);
    let mut c = connect(&s, &new.token("bob"))
        .await
        .expect("a token of the new key works on its first connect");
    assert!(c.join("room:1", json!({})).await.unwrap().is_ok());
    assert_eq!(provider.fetches(), 2, "the unknown kid caused one fetch");

    // That fetch replaced the set: the removed key verifies nothing any more.
    assert!(connect(&s, &old.token("alice")).await.is_err());
    assert!(s.log().contains("unknown key id"), "{}", s.log());
    assert_eq!(provider.fetches(), 2, "rate limited: no fetch for this kid");
}

#[tokio::test]
async fn a_flood_of_made_up_kids_costs_the_provider_at_most_one_fetch() {
    // Ed25519: signing 200 tokens with RSA in a debug build would take longer than 30 s.
    let k = key("ed25519", Algorithm::EdDSA, "real");
    let provider = Provider::start(&[&k], "max-age=600").await;
    let s = start(&provider, "").await;
    assert_eq!(provider.fetches(), 1);
    let started = Instant::now();
    // 200 connects, 10 at a time, each naming a kid nobody published.
    for batch in 0..20 {
        let floods = (0..10).map(|i| {
            let t = k.sign_as(
                &format!("made-up-{batch}-{i}-{}", rand_suffix()),
                json!({"sub": "x", "exp": exp()}),
            );
            let s = &s;
            async move { connect(s, &t).await.is_err() }
        });
        let refused = futures_util::future::join_all(floods).await;
        assert!(refused.iter().all(|r| *r), "every made-up kid is refused");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        provider.fetches(),
        2,
        "200 unknown kids within 30 s: one fetch, not one each"
    );
    // The real key is unaffected.
    connect(&s, &k.token("alice")).await.expect("real key");
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(plexus_core::auth::unix_now());
    h.finish() as u32
}

#[tokio::test]
async fn with_the_provider_down_the_last_keys_keep_working() {
    let k = key("ed25519", Algorithm::EdDSA, "ed-1");
    let provider = Provider::start(&[&k], "max-age=600").await;
    let s = start(&provider, "").await;
    assert_eq!(metric(&s, "plexus_jwks_refresh_failures_total").await, 0);

    provider.set_down(true);
    // An unknown kid makes Plexus fetch: the provider answers 503.
    let other = key("rsa2", Algorithm::RS256, "not-published");
    assert!(connect(&s, &other.token("mallory")).await.is_err());
    assert_eq!(provider.fetches(), 2);
    assert_eq!(metric(&s, "plexus_jwks_refresh_failures_total").await, 1);
    let log = s.log();
    assert_eq!(
        log.matches("JWKS fetch failed").count(),
        1,
        "logged once per outage:\n{log}"
    );
    // The last good keys still verify.
    let mut c = connect(&s, &k.token("alice")).await.expect("last good key");
    assert!(c.join("room:1", json!({})).await.unwrap().is_ok());
}

#[tokio::test]
async fn every_signing_algorithm_is_taken_and_enc_keys_are_not() {
    let keys = [
        key("rsa", Algorithm::RS256, "rs256"),
        key("rsa2", Algorithm::PS384, "ps384"),
        key("ec256", Algorithm::ES256, "es256"),
        key("ec384", Algorithm::ES384, "es384"),
        key("ed25519", Algorithm::EdDSA, "eddsa"),
    ];
    // The same RSA key published once more, for encryption only.
    let mut enc = key("rsa", Algorithm::RS256, "enc-1");
    enc.jwk["use"] = "enc".into();
    enc.jwk["alg"] = "RSA-OAEP".into();
    let mut published: Vec<&Key> = keys.iter().collect();
    published.push(&enc);
    let provider = Provider::start(&published, "max-age=600").await;
    let s = start(&provider, "").await;
    for k in &keys {
        connect(&s, &k.token("alice"))
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", k.alg));
    }
    assert!(
        connect(&s, &enc.token("alice")).await.is_err(),
        "a use=enc key verifies nothing"
    );
    // A token whose alg differs from the key's (RS256 key, PS256 token) is refused.
    let rs_as_ps = key("rsa", Algorithm::PS256, "rs256");
    assert!(connect(&s, &rs_as_ps.token("alice")).await.is_err());
}

#[tokio::test]
async fn roles_are_read_at_a_nested_path_and_at_a_namespaced_claim() {
    let k = key("rsa", Algorithm::RS256, "kc");
    let provider = Provider::start(&[&k], "max-age=600").await;

    // Keycloak: realm_access.roles.
    let s = start(&provider, "roles_claim = \"realm_access.roles\"").await;
    let keycloak = k.sign_as(
        "kc",
        json!({"sub": "kc-admin", "exp": exp(), "realm_access": {"roles": ["admin"]}}),
    );
    let mut c = connect(&s, &keycloak).await.unwrap();
    assert!(c.join("staff:1", json!({})).await.unwrap().is_ok());
    // A top-level `roles` is not where this server looks.
    let flat = k.sign_as(
        "kc",
        json!({"sub": "flat", "exp": exp(), "roles": ["admin"]}),
    );
    let mut c = connect(&s, &flat).await.unwrap();
    assert!(!c.join("staff:1", json!({})).await.unwrap().is_ok());
    drop(s);

    // Auth0: a namespaced claim (a URL, dots and slashes in one name), from the environment.
    let s = Server::start_with(
        Some(&config(&[provider.url()], "")),
        &[
            ("PLEXUS_PROFILE", "dev"),
            ("PLEXUS_ROLES_CLAIM", "https://plexus.example.com/roles"),
        ],
    )
    .await;
    let auth0 = k.sign_as(
        "kc",
        json!({"sub": "auth0|1", "exp": exp(), "https://plexus.example.com/roles": ["admin"]}),
    );
    let mut c = connect(&s, &auth0).await.unwrap();
    assert!(c.join("staff:1", json!({})).await.unwrap().is_ok());
    let member = k.sign_as(
        "kc",
        json!({"sub": "auth0|2", "exp": exp(), "https://plexus.example.com/roles": ["member"]}),
    );
    let mut c = connect(&s, &member).await.unwrap();
    assert!(!c.join("staff:1", json!({})).await.unwrap().is_ok());
}

#[tokio::test]
async fn a_jwks_url_alone_is_enough_for_prod_and_no_key_at_all_is_a_startup_error() {
    let k = key("ec384", Algorithm::ES384, "p1");
    let provider = Provider::start(&[&k], "max-age=600").await;
    // Prod (a config file), no PLEXUS_JWT_SECRET: the URL's keys are the only ones.
    let s = Server::start_with(
        Some(&config(&[], "")),
        &[
            ("PLEXUS_JWT_SECRET", ""),
            ("PLEXUS_JWKS_URL", &provider.url()),
        ],
    )
    .await;
    connect(&s, &k.token("alice"))
        .await
        .expect("prod on a JWKS URL");
    drop(s);

    // The URL is down at start and nothing else is configured: no start.
    let dead = format!("http://127.0.0.1:{}/jwks", free_port());
    let dir = std::env::temp_dir().join(format!("plexus-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("prod.toml");
    std::fs::write(&file, config(std::slice::from_ref(&dead), "")).unwrap();
    let out = plexus_command(&[
        ("PLEXUS_JWT_SECRET", ""),
        ("PLEXUS_API_KEY", API_KEY),
        ("PLEXUS_CONFIG", file.to_str().unwrap()),
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no key to verify tokens with") && stderr.contains(&dead),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Plain http:// to a host that is not loopback is a configuration error.
    let out = plexus_command(&[("PLEXUS_JWKS_URL", "http://auth.example.com/jwks")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("PLEXUS_JWKS_URL") && stderr.contains("loopback"),
        "{stderr}"
    );
}

/// Slow (about a minute): the scheduled refresh. `max-age=0` is clamped to the one-minute
/// floor, so the removed key still works well after the rotation, and stops once the refresh
/// has run.
#[tokio::test]
async fn the_scheduled_refresh_honours_the_floor_then_drops_a_removed_key() {
    let old = key("rsa", Algorithm::RS256, "old");
    let new = key("rsa2", Algorithm::RS256, "new");
    let provider = Provider::start(&[&old, &new], "max-age=0").await;
    let s = start(&provider, "").await;
    let started = Instant::now();
    provider.publish(&[&new]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    connect(&s, &old.token("alice"))
        .await
        .expect("no refresh before the floor");
    assert_eq!(provider.fetches(), 1);
    while provider.fetches() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(80),
            "no scheduled refresh"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(55));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(connect(&s, &old.token("alice")).await.is_err());
    connect(&s, &new.token("bob")).await.expect("new key");
}
