//! Unit tests of [`super`] (auth.rs).

use super::*;
use serde_json::json;

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

fn exp() -> u64 {
    unix_now() + 600
}

#[test]
fn round_trip_and_refusals() {
    let issuer = Issuer::hs256(b"secret");
    let verifier = Verifier::hs256(b"secret");
    let t = issuer
        .issue("alice", &["member".into()], Some("Alice"), 60)
        .unwrap();
    let id = verifier.verify(&t).unwrap();
    assert_eq!(&*id.sub, "alice");
    assert!(id.has_role("member"));
    assert_eq!(id.name.as_deref(), Some("Alice"));

    assert_eq!(
        Verifier::hs256(b"other").verify(&t),
        Err(AuthError::BadSignature)
    );
    assert_eq!(verifier.verify("garbage"), Err(AuthError::Malformed));
    assert_eq!(verifier.verify(""), Err(AuthError::MissingToken));
    let k = EncodingKey::from_secret(b"secret");
    let old = sign(Algorithm::HS256, &k, None, json!({"sub": "a", "exp": 1000}));
    assert_eq!(verifier.verify(&old), Err(AuthError::Expired));
    let later = sign(
        Algorithm::HS256,
        &k,
        None,
        json!({"sub": "a", "exp": exp(), "nbf": unix_now() + 300}),
    );
    assert_eq!(verifier.verify(&later), Err(AuthError::NotYetValid));
    let no_exp = sign(Algorithm::HS256, &k, None, json!({"sub": "a"}));
    assert_eq!(
        verifier.verify(&no_exp),
        Err(AuthError::MissingClaim("exp".into()))
    );
    let no_sub = sign(Algorithm::HS256, &k, None, json!({"exp": exp()}));
    assert_eq!(
        verifier.verify(&no_sub),
        Err(AuthError::MissingClaim("sub".into()))
    );
    let hs512 = sign(
        Algorithm::HS512,
        &k,
        None,
        json!({"sub": "a", "exp": exp()}),
    );
    assert_eq!(verifier.verify(&hs512), Err(AuthError::AlgorithmNotAllowed));
}

#[test]
fn alg_none_is_refused() {
    // {"alg":"none","typ":"JWT"} . {"sub":"a","exp":9999999999} . (no signature)
    let t = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
    assert_eq!(
        Verifier::hs256(b"secret").verify(t),
        Err(AuthError::AlgorithmNotAllowed)
    );
}

#[test]
fn kid_rotation_audience_issuer_and_roles_claim() {
    let keys = vec![
        VerifyKey::secret(Algorithm::HS256, b"old-secret", Some("2026-10".into())).unwrap(),
        VerifyKey::secret(Algorithm::HS384, b"new-secret", Some("2026-11".into())).unwrap(),
    ];
    let opts = VerifyOptions {
        issuer: Some("https://auth.example".into()),
        audience: Some("plexus".into()),
        roles_claim: "groups".into(),
        ..VerifyOptions::default()
    };
    let v = Verifier::new(keys, opts).unwrap();
    let good = json!({"sub": "a", "exp": exp(), "iss": "https://auth.example", "aud": "plexus", "groups": ["admin"]});
    let old = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"old-secret"),
        Some("2026-10"),
        good.clone(),
    );
    let new = sign(
        Algorithm::HS384,
        &EncodingKey::from_secret(b"new-secret"),
        Some("2026-11"),
        good.clone(),
    );
    assert!(v.verify(&old).unwrap().has_role("admin"));
    assert!(v.verify(&new).is_ok());
    let unknown = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"old-secret"),
        Some("nope"),
        good.clone(),
    );
    assert_eq!(v.verify(&unknown), Err(AuthError::UnknownKid));
    let mut bad_aud = good.clone();
    bad_aud["aud"] = json!("other");
    let t = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"old-secret"),
        Some("2026-10"),
        bad_aud,
    );
    assert_eq!(v.verify(&t), Err(AuthError::WrongAudience));
    let mut bad_iss = good;
    bad_iss["iss"] = json!("https://evil.example");
    let t = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"old-secret"),
        Some("2026-10"),
        bad_iss,
    );
    assert_eq!(v.verify(&t), Err(AuthError::WrongIssuer));
}

#[test]
fn secrets_only_for_hmac() {
    assert!(VerifyKey::secret(Algorithm::RS256, b"x", None).is_err());
    assert!(VerifyKey::public_pem(Algorithm::HS256, b"x", None).is_err());
}

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/keys/");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}{name}")).unwrap()
}

#[test]
fn asymmetric_keys_and_jwks() {
    let claims = json!({"sub": "a", "exp": exp()});
    let cases = [
        (Algorithm::RS256, "rsa"),
        (Algorithm::PS256, "rsa"),
        (Algorithm::RS512, "rsa"),
        (Algorithm::ES256, "ec256"),
        (Algorithm::ES384, "ec384"),
        (Algorithm::EdDSA, "ed25519"),
    ];
    for (alg, name) in cases {
        let private = fixture(&format!("{name}_private.pem"));
        let enc = match alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&private),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&private),
            _ => EncodingKey::from_rsa_pem(&private),
        }
        .unwrap();
        let key =
            VerifyKey::public_pem(alg, &fixture(&format!("{name}_public.pem")), None).unwrap();
        let v = Verifier::new(vec![key], VerifyOptions::default()).unwrap();
        let t = sign(alg, &enc, None, claims.clone());
        assert!(v.verify(&t).is_ok(), "{alg:?}");
    }

    let jwks = String::from_utf8(fixture("jwks.json")).unwrap();
    let keys = VerifyKey::from_jwks(&jwks).unwrap();
    assert_eq!(keys.len(), 2);
    let v = Verifier::new(keys, VerifyOptions::default()).unwrap();
    let rsa2 = EncodingKey::from_rsa_pem(&fixture("rsa2_private.pem")).unwrap();
    let ed = EncodingKey::from_ed_pem(&fixture("ed25519_private.pem")).unwrap();
    assert!(v
        .verify(&sign(
            Algorithm::RS256,
            &rsa2,
            Some("rsa-2026-11"),
            claims.clone()
        ))
        .is_ok());
    assert!(v
        .verify(&sign(
            Algorithm::EdDSA,
            &ed,
            Some("ed-2026-11"),
            claims.clone()
        ))
        .is_ok());
    assert_eq!(
        v.verify(&sign(
            Algorithm::RS256,
            &rsa2,
            Some("other"),
            claims.clone()
        )),
        Err(AuthError::UnknownKid)
    );
    // A token signed with another RSA key under the right kid.
    let rsa1 = EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap();
    assert_eq!(
        v.verify(&sign(
            Algorithm::RS256,
            &rsa1,
            Some("rsa-2026-11"),
            claims.clone()
        )),
        Err(AuthError::BadSignature)
    );
}

#[test]
fn hs_rs_key_confusion_is_impossible() {
    // The attacker signs HS256 with the server's RSA *public* key as the HMAC secret.
    let public = fixture("rsa_public.pem");
    let key = VerifyKey::public_pem(Algorithm::RS256, &public, None).unwrap();
    let v = Verifier::new(vec![key], VerifyOptions::default()).unwrap();
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public),
        None,
        json!({"sub": "a", "exp": exp()}),
    );
    assert_eq!(v.verify(&forged), Err(AuthError::AlgorithmNotAllowed));
}

#[test]
fn anon_role_tokens_are_anonymous_with_an_id_of_their_own() {
    let key = EncodingKey::from_secret(b"s");
    let anon = sign(
        Algorithm::HS256,
        &key,
        None,
        json!({"role": "anon", "sub": "chosen", "exp": exp()}),
    );
    let no_sub = sign(
        Algorithm::HS256,
        &key,
        None,
        json!({"role": "x", "exp": exp()}),
    );
    // Without an anon role (Supabase off) every token needs its sub.
    let strict = Verifier::hs256(b"s");
    assert_eq!(strict.verify(&anon).map(|i| i.anonymous), Ok(false));
    assert_eq!(
        strict.verify(&no_sub),
        Err(AuthError::MissingClaim("sub".into()))
    );
    let opts = VerifyOptions {
        anon_role: Some("anon".into()),
        ..VerifyOptions::default()
    };
    let keys = vec![VerifyKey::secret(Algorithm::HS256, b"s", None).unwrap()];
    let v = Verifier::new(keys, opts).unwrap();
    let (a, b) = (v.verify(&anon).unwrap(), v.verify(&anon).unwrap());
    assert!(a.anonymous && a.sub.starts_with("anon:") && a.sub != b.sub);
    assert_eq!(a.user(), None);
    // Another role without sub is still refused.
    assert_eq!(
        v.verify(&no_sub),
        Err(AuthError::MissingClaim("sub".into()))
    );
}
