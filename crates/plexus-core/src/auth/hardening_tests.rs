//! Tests of the refusals a security review of the one-pass verification ([`super::token`])
//! asked for: nesting depth, `sub` of the wrong type, the clock, the token size cap, empty
//! HMAC secrets from JWKS, and signatures, encodings, keys and headers at the edges. Where
//! the verification it replaced ([`reference`]) decides the same, they are compared with it.

use super::reference_tests::{comparable, reference, signed};
use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

const SECRET: &[u8] = b"hardening-secret";

fn key() -> VerifyKey {
    VerifyKey::secret(Algorithm::HS256, SECRET, None).unwrap()
}

fn verifier(opts: VerifyOptions) -> Verifier {
    Verifier::new(vec![key()], opts).unwrap()
}

fn fut() -> u64 {
    unix_now() + 600
}

/// `header.payload` (as given, not re-encoded) with its HS256 signature.
fn sign_input(secret: &[u8], input: &str) -> String {
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{input}.{sig}")
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A token with `header` (JSON) and `claims` (JSON) as given, HS256-signed with `secret`.
fn with_header(header: &str, claims: &str, secret: &[u8]) -> String {
    sign_input(
        secret,
        &format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes())),
    )
}

/// The same base64url text with its last character's unused low bits set (non-canonical).
fn non_canonical_end(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = *s.as_bytes().last().unwrap();
    let i = ALPHABET.iter().position(|&c| c == last).unwrap();
    assert_eq!(i & 1, 0, "canonical ends have their unused bits clear");
    format!("{}{}", &s[..s.len() - 1], ALPHABET[i + 1] as char)
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn deep_nesting_anywhere_in_the_claims_is_malformed() {
    let v = verifier(VerifyOptions::default());
    let claims = |n: &str| format!(r#"{{"sub":"a","exp":{},"skipped":{n}}}"#, fut());
    let deep = signed(Algorithm::HS256, SECRET, &claims(&nested(200)));
    assert_eq!(v.verify(&deep), Err(AuthError::Malformed));
    assert!(v
        .verify(&signed(Algorithm::HS256, SECRET, &claims(&nested(100))))
        .is_ok());
    // Brackets inside strings do not count.
    let in_string = format!("\"{}\\\"{}\"", "[".repeat(300), "{".repeat(300));
    assert!(v
        .verify(&signed(Algorithm::HS256, SECRET, &claims(&in_string)))
        .is_ok());
    // A claim Plexus reads, too.
    let info = format!(r#"{{"sub":"a","exp":{},"info":{}}}"#, fut(), nested(200));
    assert_eq!(
        v.verify(&signed(Algorithm::HS256, SECRET, &info)),
        Err(AuthError::Malformed)
    );
    // The boundary is serde_json's, as the reference parsed it: 127 levels below the claims
    // object pass... (126 + the object = 127), 127 + the object = 128 do not.
    for depth in 120..=130 {
        let t = signed(Algorithm::HS256, SECRET, &claims(&nested(depth)));
        let got = v.verify(&t);
        assert_eq!(
            comparable(got.clone()),
            comparable(reference(&v, &t, &key())),
            "{depth}"
        );
        assert_eq!(got.is_ok(), depth < 127, "{depth}");
    }
}

#[test]
fn a_sub_that_is_an_array_or_object_is_refused_anonymous_or_not() {
    let anon = VerifyOptions {
        anon_role: Some("anon".into()),
        ..VerifyOptions::default()
    };
    for opts in [VerifyOptions::default(), anon.clone()] {
        let v = verifier(opts);
        for sub in [json!([1]), json!({}), json!([]), json!({"a": "b"})] {
            for claims in [
                json!({"sub": sub, "exp": fut()}),
                json!({"role": "anon", "sub": sub, "exp": fut()}),
            ] {
                let t = signed(Algorithm::HS256, SECRET, &claims.to_string());
                let got = v.verify(&t);
                assert_eq!(got, Err(AuthError::Malformed), "{claims}");
                assert_eq!(got, reference(&v, &t, &key()), "{claims}");
            }
        }
    }
    // Anonymous tokens without a sub, or with a string one, still pass.
    let v = verifier(anon);
    for claims in [
        json!({"role": "anon", "exp": fut()}),
        json!({"role": "anon", "sub": "x", "exp": fut()}),
    ] {
        let id = v
            .verify(&signed(Algorithm::HS256, SECRET, &claims.to_string()))
            .unwrap();
        assert!(id.anonymous && id.sub.starts_with("anon:"));
    }
}

#[test]
fn a_clock_before_1970_refuses_rather_than_reading_as_1970() {
    let before = UNIX_EPOCH - std::time::Duration::from_secs(1);
    assert_eq!(secs_since_epoch(before), None);
    assert_eq!(secs_since_epoch(UNIX_EPOCH), Some(0));
    assert!(clock_now().is_ok_and(|n| n > 1_700_000_000));
}

#[test]
fn tokens_over_the_cap_are_refused_before_decoding() {
    let v = verifier(VerifyOptions::default());
    let base = signed(
        Algorithm::HS256,
        SECRET,
        &json!({"sub": "a", "exp": fut(), "pad": ""}).to_string(),
    );
    // Padded with an unread claim to exactly the cap, then one byte more.
    let sized = |len: usize| {
        let pad = "x".repeat((len - base.len()) * 3 / 4 + 3);
        let mut t = signed(
            Algorithm::HS256,
            SECRET,
            &json!({"sub": "a", "exp": fut(), "pad": pad}).to_string(),
        );
        let mut pad = pad;
        while t.len() > len {
            pad.pop();
            t = signed(
                Algorithm::HS256,
                SECRET,
                &json!({"sub": "a", "exp": fut(), "pad": pad}).to_string(),
            );
        }
        t
    };
    let at_cap = sized(MAX_TOKEN_BYTES);
    assert!(at_cap.len() <= MAX_TOKEN_BYTES && at_cap.len() > MAX_TOKEN_BYTES - 4);
    assert!(v.verify(&at_cap).is_ok());
    let over = format!("{}.{}", "A".repeat(MAX_TOKEN_BYTES), "A");
    assert_eq!(v.verify(&over), Err(AuthError::TooLarge));
    let over_signed = sized(MAX_TOKEN_BYTES + 8);
    assert!(over_signed.len() > MAX_TOKEN_BYTES);
    assert_eq!(v.verify(&over_signed), Err(AuthError::TooLarge));
    assert_eq!(
        AuthError::TooLarge.to_string(),
        "token too large (over 16 KiB)"
    );
    assert_eq!(MAX_TOKEN_BYTES, 16 * 1024);
}

#[test]
fn an_empty_hmac_secret_in_a_jwks_is_a_config_error() {
    for k in [r#""k":"""#, r#""k":"","alg":"HS512""#] {
        let jwks = format!(r#"{{"keys":[{{"kty":"oct",{k}}}]}}"#);
        let err = VerifyKey::from_jwks(&jwks).err().unwrap();
        assert!(err.0.contains("empty"), "{err}");
    }
    let ok = format!(r#"{{"keys":[{{"kty":"oct","k":"{}"}}]}}"#, b64(b"s"));
    assert_eq!(VerifyKey::from_jwks(&ok).unwrap().len(), 1);
}

#[test]
fn an_hs256_verifier_with_an_empty_secret_accepts_no_token() {
    let claims = json!({"sub": "a", "exp": fut()}).to_string();
    let forged = signed(Algorithm::HS256, b"", &claims);
    let v = Verifier::hs256(b"");
    assert!(!v.has_keys());
    assert!(v.verify(&forged).is_err());
    // The same token under a real secret's verifier: refused too; a real one passes.
    assert!(Verifier::hs256(SECRET).verify(&forged).is_err());
    let real = signed(Algorithm::HS256, SECRET, &claims);
    assert_eq!(&*Verifier::hs256(SECRET).verify(&real).unwrap().sub, "a");
}

#[test]
fn signature_and_payload_encodings_at_the_edges() {
    let v = verifier(VerifyOptions::default());
    let claims = json!({"sub": "a", "exp": fut()}).to_string();
    let t = signed(Algorithm::HS256, SECRET, &claims);
    let (input, sig) = t.rsplit_once('.').unwrap();
    let (header, payload) = input.split_once('.').unwrap();
    let mut cases = vec![
        // 88 characters of the alphabet: 66 bytes, longer than any HMAC; one not of it.
        (
            format!("{input}.{}", "A".repeat(88)),
            AuthError::BadSignature,
        ),
        (format!("{input}.{}!", "A".repeat(87)), AuthError::Malformed),
        (
            format!("{input}.{}", non_canonical_end(sig)),
            AuthError::Malformed,
        ),
        (format!("{input}.+{}", &sig[1..]), AuthError::Malformed),
        (format!("{input}./{}", &sig[1..]), AuthError::Malformed),
        // The payload's own encoding, validly signed.
        (
            sign_input(SECRET, &format!("{header}.+{}", &payload[1..])),
            AuthError::Malformed,
        ),
        (
            sign_input(SECRET, &format!("{header}./{}", &payload[1..])),
            AuthError::Malformed,
        ),
    ];
    // A payload whose length leaves unused bits in its last character.
    let mut odd = claims.clone();
    while odd.len().is_multiple_of(3) {
        odd = format!("{odd} ");
    }
    let odd_payload = b64(odd.as_bytes());
    assert!(v
        .verify(&sign_input(SECRET, &format!("{header}.{odd_payload}")))
        .is_ok());
    cases.push((
        sign_input(
            SECRET,
            &format!("{header}.{}", non_canonical_end(&odd_payload)),
        ),
        AuthError::Malformed,
    ));
    for (bad, want) in cases {
        let got = v.verify(&bad);
        assert_eq!(got, Err(want.clone()), "{bad}");
        assert_eq!(got, reference(&v, &bad, &key()), "{bad}");
    }
}

#[test]
fn candidate_keys_and_algorithms() {
    let claims = json!({"sub": "a", "exp": fut()}).to_string();
    let one = VerifyKey::secret(Algorithm::HS256, b"one", None).unwrap();
    let two = VerifyKey::secret(Algorithm::HS256, b"two", None).unwrap();
    let v = Verifier::new(vec![one, two], VerifyOptions::default()).unwrap();
    assert!(v.verify(&signed(Algorithm::HS256, b"two", &claims)).is_ok());
    assert!(v.verify(&signed(Algorithm::HS256, b"one", &claims)).is_ok());
    assert_eq!(
        v.verify(&signed(Algorithm::HS256, b"three", &claims)),
        Err(AuthError::BadSignature)
    );
    // A kid naming an HS384 key, the token saying HS256 (and signed with that key's secret).
    let k384 = VerifyKey::secret(Algorithm::HS384, b"k", Some("k1".into())).unwrap();
    let v = Verifier::new(vec![k384], VerifyOptions::default()).unwrap();
    let t = with_header(r#"{"alg":"HS256","kid":"k1"}"#, &claims, b"k");
    assert_eq!(v.verify(&t), Err(AuthError::AlgorithmNotAllowed));
}

#[test]
fn claims_of_the_wrong_type_are_refused_as_the_reference_refused_them() {
    let configured = VerifyOptions {
        issuer: Some("https://auth.example".into()),
        audience: Some("plexus".into()),
        ..VerifyOptions::default()
    };
    let (iss, aud) = ("https://auth.example", "plexus");
    let f = fut();
    for (opts, claims, want) in [
        (
            VerifyOptions::default(),
            json!({"sub": "a", "exp": [1]}),
            AuthError::Malformed,
        ),
        (
            VerifyOptions::default(),
            json!({"sub": "a", "exp": []}),
            AuthError::MissingClaim("exp".into()),
        ),
        (
            VerifyOptions::default(),
            json!({"sub": "a", "exp": f, "nbf": {"a": 1}}),
            AuthError::Malformed,
        ),
        (
            VerifyOptions::default(),
            json!({"sub": "a", "exp": f, "nbf": {}}),
            AuthError::Other("claim nbf has the wrong format".into()),
        ),
        (
            configured.clone(),
            json!({"sub": "a", "exp": f, "iss": null, "aud": aud}),
            AuthError::MissingClaim("iss".into()),
        ),
        (
            configured.clone(),
            json!({"sub": "a", "exp": f, "iss": iss, "aud": null}),
            AuthError::MissingClaim("aud".into()),
        ),
    ] {
        let v = verifier(opts);
        let t = signed(Algorithm::HS256, SECRET, &claims.to_string());
        let got = v.verify(&t);
        assert_eq!(got, Err(want), "{claims}");
        assert_eq!(
            comparable(got),
            comparable(reference(&v, &t, &key())),
            "{claims}"
        );
    }
}

#[test]
fn header_fields_plexus_does_not_act_on() {
    let v = verifier(VerifyOptions::default());
    let claims = json!({"sub": "a", "exp": fut()}).to_string();
    // `crit`: not understood, and not refused — pinned to what the old path (jsonwebtoken's
    // decode_header + decode, which ignore it) did. Plexus honours no header extension, so a
    // token claiming one it must understand still verifies only by a configured key.
    let crit = with_header(r#"{"alg":"HS256","crit":["x"]}"#, &claims, SECRET);
    assert!(v.verify(&crit).is_ok());
    assert_eq!(
        comparable(v.verify(&crit)),
        comparable(reference(&v, &crit, &key()))
    );
    // An embedded `jwk` or a `jku` never verifies: only configured keys do.
    let attacker = b"attacker-secret";
    let jwk = format!(
        r#"{{"alg":"HS256","jwk":{{"kty":"oct","k":"{}"}}}}"#,
        b64(attacker)
    );
    let jku = r#"{"alg":"HS256","jku":"https://evil.example/jwks.json"}"#;
    for header in [jwk.as_str(), jku] {
        assert_eq!(
            v.verify(&with_header(header, &claims, attacker)),
            Err(AuthError::BadSignature),
            "{header}"
        );
        assert!(v.verify(&with_header(header, &claims, SECRET)).is_ok());
    }
}
