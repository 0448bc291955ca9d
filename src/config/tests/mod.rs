//! Tests of loading and validating the configuration.

use super::*;

pub(super) fn write(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::new(text)
}

/// A minimal temp file helper (no extra dependency).
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn new(text: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "plexus-config-test-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&p, text).unwrap();
            TempPath(p)
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn no_file_means_dev_with_generated_secrets_on_loopback() {
    let c = load(None, &Env::default(), None, None).unwrap();
    assert_eq!(c.profile, Profile::Dev);
    assert!(c.jwt_secret_generated && c.api_key_generated);
    assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    let e = load(None, &Env::default(), Some("0.0.0.0:4000"), None).unwrap_err();
    assert!(matches!(e, ConfigError::DevNotLoopback { .. }), "{e:?}");
    assert!(e.to_string().contains("loopback"), "{e}");
}

#[test]
fn prod_needs_secret_and_key() {
    let env = Env {
        profile: Some("prod".into()),
        ..Env::default()
    };
    let e = load(None, &env, None, None).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::MissingProdSecrets {
                jwt_secret: true,
                api_key: true
            }
        ),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(e.contains("JWT secret") && e.contains("API key"), "{e}");
    let env = Env {
        profile: Some("prod".into()),
        jwt_secret: Some("0123456789abcdef0123".into()),
        api_key: Some("api-key-0123456789".into()),
        listen: Some("0.0.0.0:9000".into()),
        ..Env::default()
    };
    let c = load(None, &env, None, None).unwrap();
    assert_eq!(c.profile, Profile::Prod);
    assert_eq!(c.listen.port(), 9000);
}

#[test]
fn prod_refuses_a_short_api_key_and_a_huge_leeway() {
    let env = Env {
        profile: Some("prod".into()),
        jwt_secret: Some("0123456789abcdef0123".into()),
        api_key: Some("short-key".into()),
        ..Env::default()
    };
    let e = load(None, &env, None, None).unwrap_err();
    assert!(matches!(e, ConfigError::ShortApiKey), "{e:?}");
    let f = write("[auth]\nleeway_secs = 18446744073709551615\n");
    let env = Env {
        api_key: Some("api-key-0123456789".into()),
        jwt_secret: Some("0123456789abcdef0123".into()),
        ..Env::default()
    };
    let e = load(Some(&f.0), &env, None, None).unwrap_err();
    assert!(
        e.to_string().contains("auth.leeway_secs must be at most"),
        "{e}"
    );
    let f = write("profile = \"dev\"\n[limits]\nmessages_per_second = nan\n");
    let e = load(Some(&f.0), &Env::default(), None, None).unwrap_err();
    assert!(e.to_string().contains("messages_per_second"), "{e}");
}

#[test]
fn file_is_prod_and_env_overrides_it() {
    let f = write(
        "listen = \"127.0.0.1:5000\"\njwt_secret = \"file-secret-0123456789\"\napi_key = \"file-key-0123456789\"\n\
         [limits]\nidle_timeout_secs = 30\n[[channels]]\ntopic = \"room:*\"\necho = true\n",
    );
    let env = Env {
        api_key: Some("env-key-0123456789".into()),
        ..Env::default()
    };
    let c = load(Some(&f.0), &env, None, None).unwrap();
    assert_eq!(c.profile, Profile::Prod);
    assert_eq!(c.listen.port(), 5000);
    assert_eq!(c.api_key, "env-key-0123456789");
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(30));
    assert!(c.policy.rules()[0].echo);
}

#[test]
fn supabase_anon_role_defaults_to_anon_and_can_be_turned_off() {
    let secret = "0123456789abcdef0";
    let anon_key = plexus_core::auth::Issuer::hs256(secret.as_bytes())
        .issue("ignored", &["anon".to_owned()], None, 60)
        .unwrap();
    let base = format!("jwt_secret = \"{secret}\"\napi_key = \"api-key-0123456789\"\n");
    let anonymous = |text: &str, env: &Env| {
        let c = parse_str(text, env, None, None).unwrap();
        c.verifier.verify(&anon_key).unwrap().anonymous
    };
    // Supabase off: no anonymous tokens; on: the default role `anon`.
    assert!(!anonymous(&base, &Env::default()));
    let on = format!("{base}[supabase]\nenabled = true\n");
    assert!(anonymous(&on, &Env::default()));
    let other = format!("{base}[supabase]\nenabled = true\nanon_role = \"guest\"\n");
    assert!(!anonymous(&other, &Env::default()));
    let off = Env {
        supabase_anon_role: Some("off".into()),
        ..Env::default()
    };
    assert!(!anonymous(&on, &off));
}

#[test]
fn websocket_write_through_is_off_unless_the_file_or_env_turns_it_on() {
    let base = "jwt_secret = \"0123456789abcdef0\"\napi_key = \"api-key-0123456789\"\n";
    let on_in_file = format!("{base}[websocket]\nwrite_through = true\n");
    let env = |v: &str| Env {
        websocket_write_through: Some(v.into()),
        ..Env::default()
    };
    let write_through = |text: &str, env: &Env| {
        parse_str(text, env, None, None)
            .unwrap()
            .websocket_write_through
    };
    assert!(!write_through(base, &Env::default()));
    assert!(write_through(&on_in_file, &Env::default()));
    assert!(write_through(base, &env("1")));
    // The environment beats the file.
    assert!(!write_through(&on_in_file, &env("false")));
    let err = parse_str(base, &env("yes"), None, None).unwrap_err();
    assert!(
        err.to_string().contains("PLEXUS_WEBSOCKET_WRITE_THROUGH"),
        "{err}"
    );
    let err = parse_str(
        &format!("{base}[websocket]\nwrite_through = 1\n"),
        &Env::default(),
        None,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("write_through"), "{err}");
}

#[test]
fn parse_str_is_load_without_files() {
    let text = "jwt_secret = \"0123456789abcdef0\"\napi_key = \"api-key-0123456789\"\n\
                [limits]\nmax_message_bytes = 4096\n[[channels]]\ntopic = \"room:*\"\n";
    let c = parse_str(text, &Env::default(), None, None).unwrap();
    assert_eq!(c.profile, Profile::Prod);
    assert_eq!(c.limits.max_message_bytes, 4096);
    assert!(c.source.is_none());
    let f = write(text);
    let l = load(Some(&f.0), &Env::default(), None, None).unwrap();
    assert_eq!((l.profile, l.listen), (c.profile, c.listen));
    // Errors name no file, but the rule's line is still found.
    let e = parse_str(
        "[[channels]]\ntopic = \"ro*om\"\n",
        &Env::default(),
        None,
        Some("dev"),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Rule {
                line: Some(1),
                file: None,
                ..
            }
        ),
        "{e:?}"
    );
    let e = parse_str("listen = [", &Env::default(), None, None).unwrap_err();
    assert!(matches!(e, ConfigError::ParseText { .. }), "{e:?}");
    assert!(e.to_string().starts_with("invalid configuration: "), "{e}");
    // It reads no file, not even one that exists.
    let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
    let e = parse_str(
        &format!("[auth]\njwks_files = [{jwks:?}]\n"),
        &Env::default(),
        None,
        Some("dev"),
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::ReadFile { .. }), "{e:?}");
}

#[test]
fn errors_name_the_line_and_field() {
    let f = write("jwt_secret = \"x\"\n[[channels]]\ntopic = \"room:*\"\nechoo = true\n");
    let e = load(Some(&f.0), &Env::default(), None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 4") && e.contains("echoo"), "{e}");
    let f = write("[[channels]]\ntopic = \"a\"\n\n[[channels]]\ntopic = \"ro*om\"\n");
    let env = Env {
        jwt_secret: Some("0123456789abcdef0".into()),
        api_key: Some("api-key-0123456789".into()),
        ..Env::default()
    };
    let e = load(Some(&f.0), &env, None, None).unwrap_err();
    assert!(
        matches!(e, ConfigError::Rule { line: Some(4), .. }),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains("line 4") && e.contains("channels[1]") && e.contains("topic"),
        "{e}"
    );
}

/// Secrets for a prod file, so that sections after them are reached.
const PROD: &str = "jwt_secret = \"0123456789abcdef0\"\napi_key = \"api-key-0123456789\"\n";

#[test]
fn section_errors_name_their_field() {
    let cases = [
        (
            "[limits]\nmessages_per_second = -1.0\n",
            "limits.messages_per_second must not be negative",
        ),
        (
            "[limits]\nconnect_rate_per_ip = -0.5\n",
            "limits.connect_rate_per_ip must not be negative",
        ),
        (
            "[limits]\nmax_message_bytes = 10\n",
            "limits.max_message_bytes must be at least 1024",
        ),
        (
            "[limits]\nidle_timeout_secs = 0\n",
            "limits.idle_timeout_secs must be at least 1",
        ),
        (
            "[limits]\nhttp_header_timeout_secs = 0\n",
            "limits.http_header_timeout_secs must be at least 1",
        ),
        (
            "trusted_proxies = [\"nope\"]\n",
            "trusted_proxies: \"nope\"",
        ),
        ("broker = \"kafka\"\n", "unknown broker \"kafka\""),
        (
            "broker = \"redis\"\n[redis]\nnode_timeout_secs = 0\n",
            "redis.node_timeout_secs must be at least 1",
        ),
        (
            "[[auth.keys]]\nalgorithm = \"HS999\"\nsecret = \"s\"\n",
            "auth.keys[0]: unknown algorithm \"HS999\"",
        ),
        (
            "[[auth.keys]]\nalgorithm = \"HS256\"\n",
            "auth.keys[0]: give exactly one of",
        ),
    ];
    for (section, want) in cases {
        let f = write(&format!("{PROD}{section}"));
        let e = load(Some(&f.0), &Env::default(), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{section:?}: {e}");
    }
    let f = write(&format!("{PROD}[limits]\nmessages_per_second = -1.0\n"));
    let e = load(Some(&f.0), &Env::default(), None, None).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::Negative {
                field: "limits.messages_per_second"
            }
        ),
        "{e:?}"
    );
}

#[test]
fn cluster_secret_is_given_or_the_api_key_and_never_short_in_prod() {
    let redis = |section: &str| format!("{PROD}broker = \"redis\"\n[redis]\n{section}");
    // Unset: the API key, which every node of a cluster shares.
    let c = parse_str(&redis(""), &Env::default(), None, None).unwrap();
    assert_eq!(c.redis.unwrap().cluster_secret, "api-key-0123456789");
    // Given: the file's, the environment's over it.
    let text = redis("cluster_secret = \"file-cluster-secret-0123\"\n");
    let c = parse_str(&text, &Env::default(), None, None).unwrap();
    assert_eq!(c.redis.unwrap().cluster_secret, "file-cluster-secret-0123");
    let env = Env {
        cluster_secret: Some("env-cluster-secret-0123".into()),
        ..Env::default()
    };
    let c = parse_str(&text, &env, None, None).unwrap();
    assert_eq!(c.redis.unwrap().cluster_secret, "env-cluster-secret-0123");
    // Short in prod, or empty: refused with the key's name.
    let e = parse_str(
        &redis("cluster_secret = \"short\"\n"),
        &Env::default(),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("redis.cluster_secret") && e.contains("16"),
        "{e}"
    );
    let e = parse_str(
        &redis("cluster_secret = \"\"\n"),
        &Env::default(),
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("redis.cluster_secret"), "{e}");
    // Dev without an API key of its own: a well-known secret, and a warning.
    let c = parse_str("broker = \"redis\"\n", &Env::default(), None, Some("dev")).unwrap();
    assert_eq!(
        c.redis.unwrap().cluster_secret,
        super::redis::DEV_CLUSTER_SECRET
    );
    assert!(c.warnings.iter().any(|w| w.contains("cluster_secret")));
}

#[test]
fn flag_beats_env_beats_file_beats_default_for_listen_and_profile() {
    let c = load(None, &Env::default(), None, None).unwrap();
    assert_eq!(c.listen.port(), 4000);
    let f = write(&format!("{PROD}listen = \"127.0.0.1:5001\"\n"));
    let c = load(Some(&f.0), &Env::default(), None, None).unwrap();
    assert_eq!((c.listen.port(), c.profile), (5001, Profile::Prod));
    let env = Env {
        listen: Some("127.0.0.1:5002".into()),
        profile: Some("dev".into()),
        ..Env::default()
    };
    let c = load(Some(&f.0), &env, None, None).unwrap();
    assert_eq!((c.listen.port(), c.profile), (5002, Profile::Dev));
    let c = load(Some(&f.0), &env, Some("127.0.0.1:5003"), Some("prod")).unwrap();
    assert_eq!((c.listen.port(), c.profile), (5003, Profile::Prod));
}

#[test]
fn missing_files_and_tokens_are_typed() {
    let missing = std::env::temp_dir().join("plexus-config-test-does-not-exist.toml");
    let e = load(Some(&missing), &Env::default(), None, None).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(e.to_string().starts_with("cannot read config file"), "{e}");
    let e = token_secret(None, None).unwrap_err();
    assert!(e.to_string().contains("--secret"), "{e}");
    assert_eq!(token_secret(None, Some("s")).unwrap(), "s");
}

mod identity;
mod pusher;
