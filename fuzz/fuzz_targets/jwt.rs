//! JWT verification (`Verifier::verify`): header and claims handling of untrusted tokens.
//!
//! Two verifiers: HS256 with a fuzz secret, RS256 with `tests/fixtures/keys/rsa_public.pem`.
//! 1. The input as a token string: no panic; a token that verifies (only the seeds, signed with
//!    those keys, can) has three parts, names the verifier's algorithm and a non-empty `sub`.
//! 2. The input as `header JSON \n claims JSON \n signature bytes`, each base64url-encoded into
//!    a token: with that junk signature it must never verify, with either key.
//! 3. The same header and claims correctly signed with the HS256 secret, to reach the claims
//!    checks behind the signature: a refusal is never "bad signature"; an acceptance means the
//!    header says HS256 and the identity is the claims' `sub`, `name`, `roles`, and an `exp`
//!    that is not past (beyond the 5 s leeway).
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use plexus_core::auth::{unix_now, AuthError, Identity, Verifier, VerifyKey, VerifyOptions};
use serde_json::{Map, Value};
use std::sync::OnceLock;

/// The HS256 secret of the seeds in `fuzz/corpus/jwt/` (see its README).
const SECRET: &[u8] = b"plexus-fuzz-hs256-secret";
const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa_public.pem");

struct Keys {
    hs: Verifier,
    rs: Verifier,
    signer: EncodingKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rs = VerifyKey::public_pem(Algorithm::RS256, RSA_PUBLIC, None).expect("fixture key");
        Keys {
            hs: Verifier::hs256(SECRET),
            rs: Verifier::new(vec![rs], VerifyOptions::default()).expect("one key"),
            signer: EncodingKey::from_secret(SECRET),
        }
    })
}

fn check_verified(token: &str, id: &Identity, alg: &str) {
    assert_eq!(
        token.split('.').count(),
        3,
        "a verified token has three parts"
    );
    let header = B64
        .decode(token.split('.').next().unwrap_or_default())
        .expect("a verified header is base64url");
    let header: Map<String, Value> =
        serde_json::from_slice(&header).expect("a verified header is a JSON object");
    assert_eq!(header.get("alg").and_then(Value::as_str), Some(alg));
    assert!(!id.sub.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let k = keys();

    // 1. The input as it is.
    if let Ok(token) = std::str::from_utf8(data) {
        for (v, alg) in [(&k.hs, "HS256"), (&k.rs, "RS256")] {
            match v.verify(token) {
                Ok(id) => check_verified(token, &id, alg),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }

    // 2. Structured, with a junk signature.
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let header = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    let signing_input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let junk = format!("{signing_input}.{}", B64.encode(signature));
    for v in [&k.hs, &k.rs] {
        if let Ok(id) = v.verify(&junk) {
            panic!("a token with a junk signature verified: {id:?}");
        }
    }

    // 3. Correctly signed with the HS256 secret.
    let signature =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &k.signer, Algorithm::HS256)
            .expect("HMAC signing cannot fail");
    let token = format!("{signing_input}.{signature}");
    let before = unix_now();
    match k.hs.verify(&token) {
        Ok(id) => {
            check_verified(&token, &id, "HS256");
            let claims: Map<String, Value> =
                serde_json::from_slice(claims).expect("verified claims are a JSON object");
            assert_eq!(claims.get("sub").and_then(Value::as_str), Some(&*id.sub));
            assert_eq!(
                claims.get("name").and_then(Value::as_str),
                id.name.as_deref()
            );
            let roles: Vec<String> = match claims.get("roles") {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect(),
                Some(Value::String(s)) => vec![s.clone()],
                _ => Vec::new(),
            };
            assert_eq!(id.roles, roles);
            let exp = id.expires_at.expect("a verified token has an exp");
            assert!(
                exp.saturating_add(6) >= before,
                "an expired token verified: exp {exp}, now {before}"
            );
        }
        Err(AuthError::BadSignature) => {
            panic!("a correctly signed HS256 token failed its signature check: {token}")
        }
        Err(_) => {}
    }
});
