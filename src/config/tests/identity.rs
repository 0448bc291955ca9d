//! Tests of keys from identity providers (`auth.jwks_urls`) and the roles claim path.

use super::*;

#[test]
fn jwks_urls_are_https_or_loopback_http_and_enough_for_prod() {
    let api = Env {
        api_key: Some("k".repeat(16)),
        ..Env::default()
    };
    // A URL alone: prod needs no jwt_secret.
    let c = parse_str(
        "[auth]\njwks_urls = [\"https://idp.example.com/.well-known/jwks.json\"]\n",
        &api,
        None,
        None,
    )
    .unwrap();
    assert_eq!(c.profile, Profile::Prod);
    assert_eq!(
        c.jwks_urls,
        ["https://idp.example.com/.well-known/jwks.json"]
    );
    assert!(c.verifier.keys().is_empty());
    // Without any key source, prod still refuses to start.
    let e = parse_str("", &api, None, None).unwrap_err();
    assert!(e.to_string().contains("auth.jwks_urls"), "{e}");
    // The environment replaces the file's list, comma-separated.
    let env = Env {
        jwks_urls: Some("http://127.0.0.1:9/jwks, http://localhost:9/a,http://[::1]:9/b".into()),
        ..Env {
            api_key: api.api_key.clone(),
            ..Env::default()
        }
    };
    let c = parse_str(
        "[auth]\njwks_urls = [\"https://other.example.com/jwks\"]\n",
        &env,
        None,
        None,
    )
    .unwrap();
    assert_eq!(
        c.jwks_urls,
        [
            "http://127.0.0.1:9/jwks",
            "http://localhost:9/a",
            "http://[::1]:9/b"
        ]
    );
    for (bad, says) in [
        ("http://idp.example.com/jwks", "loopback"),
        ("http://10.0.0.1/jwks", "loopback"),
        ("ftp://idp.example.com/jwks", "https"),
        ("not a url", "not a URL"),
    ] {
        let e = parse_str(
            &format!("[auth]\njwks_urls = [{bad:?}]\n"),
            &api,
            None,
            None,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("auth.jwks_urls") && text.contains(says),
            "{bad}: {text}"
        );
    }
    let env = Env {
        jwks_urls: Some("http://idp.example.com/jwks".into()),
        ..Env::default()
    };
    let e = parse_str("", &env, None, Some("dev")).unwrap_err();
    assert!(e.to_string().contains("PLEXUS_JWKS_URL"), "{e}");
    // Set but naming no URL (a stray comma, spaces): an error, not a silent "no JWKS URL"
    // that would drop the file's `auth.jwks_urls`.
    for blank in [",", " , ", " "] {
        let env = Env {
            jwks_urls: Some(blank.into()),
            ..Env::default()
        };
        let e = parse_str(
            "[auth]\njwks_urls = [\"https://idp.example.com/jwks\"]\n",
            &env,
            None,
            Some("dev"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("PLEXUS_JWKS_URL"), "{blank:?}: {e}");
    }
    // Spaces around items and empty items between them are fine.
    let env = Env {
        jwks_urls: Some(" https://a.example/jwks ,, https://b.example/jwks ".into()),
        ..Env::default()
    };
    let c = parse_str("", &env, None, Some("dev")).unwrap();
    assert_eq!(
        c.jwks_urls,
        ["https://a.example/jwks", "https://b.example/jwks"]
    );
}

#[test]
fn roles_claim_path_from_file_or_environment() {
    let token = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123"),
        )
        .unwrap()
    };
    let exp = plexus_core::auth::unix_now() + 60;
    let base = Env {
        jwt_secret: Some("0123456789abcdef0123".into()),
        ..Env::default()
    };
    let c = parse_str(
        "[auth]\nroles_claim = \"realm_access.roles\"\n",
        &base,
        None,
        Some("dev"),
    )
    .unwrap();
    let id = c
        .verifier
        .verify(&token(serde_json::json!({
            "sub": "a", "exp": exp, "realm_access": {"roles": ["admin"]}
        })))
        .unwrap();
    assert_eq!(id.roles, vec!["admin"]);
    let env = Env {
        roles_claim: Some("https://example.com/roles".into()),
        ..base.clone()
    };
    let c = parse_str(
        "[auth]\nroles_claim = \"realm_access.roles\"\n",
        &env,
        None,
        Some("dev"),
    )
    .unwrap();
    let id = c
        .verifier
        .verify(&token(serde_json::json!({
            "sub": "a", "exp": exp, "https://example.com/roles": "editor"
        })))
        .unwrap();
    assert_eq!(id.roles, vec!["editor"]);
    let e = parse_str("[auth]\nroles_claim = \"a..b\"\n", &base, None, Some("dev")).unwrap_err();
    assert!(e.to_string().contains("empty claim name"), "{e}");
}
