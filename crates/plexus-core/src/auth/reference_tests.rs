//! The one-pass verification ([`super::token`]) against the verification it replaced
//! (`jsonwebtoken::decode` with a `Validation` per token, claims into a JSON map), kept here as
//! the reference: the same tokens must be accepted as the same identities and refused for the
//! same reasons, over claims at the edges of each check.

use super::*;
use jsonwebtoken::Validation;
use serde_json::json;

/// The verification before the one-pass rewrite, for one key (as `Verifier::verify_with` was).
pub(super) fn reference(v: &Verifier, token: &str, key: &VerifyKey) -> Result<Identity, AuthError> {
    let mut val = Validation::new(key.algorithm);
    val.algorithms = vec![key.algorithm];
    val.leeway = v.options.leeway_secs.min(MAX_LEEWAY_SECS);
    val.validate_nbf = true;
    let mut required = vec!["exp"];
    if v.options.issuer.is_some() {
        required.push("iss");
    }
    if v.options.audience.is_some() {
        required.push("aud");
    }
    val.set_required_spec_claims(&required);
    match &v.options.audience {
        Some(aud) => val.set_audience(&[aud]),
        None => val.validate_aud = false,
    }
    if let Some(iss) = &v.options.issuer {
        val.set_issuer(&[iss]);
    }
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &val)
        .map_err(|e| token::jwt_error(e.kind()))?;
    let mut c = data.claims;
    let roles = match v.roles_path.get(&c) {
        Some(Value::Array(items)) => Roles::new(items.iter().filter_map(Value::as_str)),
        Some(Value::String(s)) => Roles::new([s.as_str()]),
        _ => Roles::none(),
    };
    let anonymous = v.options.anon_role.as_deref().is_some_and(|anon| {
        c.get("role").and_then(Value::as_str) == Some(anon) || roles.contains(anon)
    });
    let sub = match c.get("sub") {
        _ if anonymous => "anon".to_owned(),
        None => return Err(AuthError::MissingClaim("sub".into())),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(AuthError::BadSubject),
    };
    let name = c.get("name").and_then(|n| n.as_str()).map(str::to_owned);
    let info = c
        .remove("info")
        .and_then(|v| serde_json::value::to_raw_value(&v).ok());
    let expires_at = c.get("exp").and_then(|e| {
        e.as_u64().or_else(|| {
            e.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.floor() as u64)
        })
    });
    Ok(Identity {
        sub: sub.into(),
        roles,
        name,
        info,
        expires_at,
        anonymous,
    })
}

/// An anonymous identity's `sub` is new each time: compare it as "anon". Which of several
/// missing required claims jsonwebtoken names depends on a `HashSet`'s order: compare them as
/// one.
pub(super) fn comparable(r: Result<Identity, AuthError>) -> Result<Identity, AuthError> {
    match r {
        Ok(mut id) => {
            if id.anonymous {
                id.sub = "anon".into();
            }
            Ok(id)
        }
        Err(AuthError::MissingClaim(c)) if c != "sub" => Err(AuthError::MissingClaim("*".into())),
        Err(e) => Err(e),
    }
}

pub(super) fn signed(alg: Algorithm, secret: &[u8], claims: &str) -> String {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = b64(format!(r#"{{"alg":"{alg:?}","typ":"JWT"}}"#).as_bytes());
    let input = format!("{header}.{}", b64(claims.as_bytes()));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &EncodingKey::from_secret(secret), alg)
        .unwrap();
    format!("{input}.{sig}")
}

#[test]
fn one_pass_verification_agrees_with_jsonwebtoken_decode() {
    let now = unix_now();
    let (fut, past) = (now + 600, now - 600);
    let claim_sets: Vec<String> = vec![
        json!({"sub": "a", "exp": fut}).to_string(),
        json!({"sub": "a", "exp": fut, "roles": ["x", 1, "y"], "name": "A", "info": {"b": 1, "a": [1.5, "z"]}}).to_string(),
        json!({"sub": "a", "exp": fut, "roles": "solo", "name": 5}).to_string(),
        json!({"sub": "a", "exp": past}).to_string(),
        json!({"sub": "a", "exp": now - 3}).to_string(),
        json!({"sub": "a", "exp": now - 30}).to_string(),
        json!({"sub": "a", "exp": fut as f64 + 0.7}).to_string(),
        json!({"sub": "a", "exp": -5}).to_string(),
        json!({"sub": "a", "exp": "soon"}).to_string(),
        json!({"sub": "a", "exp": null}).to_string(),
        json!({"sub": "a", "exp": 1e30}).to_string(),
        json!({"sub": "a"}).to_string(),
        json!({"exp": fut}).to_string(),
        json!({"sub": "", "exp": fut}).to_string(),
        json!({"sub": null, "exp": fut}).to_string(),
        json!({"sub": 7, "exp": fut}).to_string(),
        json!({"sub": [1], "exp": fut}).to_string(),
        json!({"sub": {}, "exp": fut}).to_string(),
        json!({"role": "anon", "sub": {}, "exp": fut}).to_string(),
        json!({"role": "anon", "sub": 7, "exp": fut}).to_string(),
        json!({"sub": "a", "exp": [1]}).to_string(),
        json!({"sub": "a", "exp": []}).to_string(),
        json!({"sub": "a", "exp": {"a": 1}}).to_string(),
        json!({"sub": "a", "exp": fut, "nbf": {"a": 1}}).to_string(),
        json!({"sub": "a", "exp": fut, "nbf": {}}).to_string(),
        json!({"sub": "a", "exp": fut, "nbf": [[]]}).to_string(),
        json!({"sub": "a", "exp": fut, "nbf": now + 300}).to_string(),
        json!({"sub": "a", "exp": fut, "nbf": now + 3}).to_string(),
        json!({"sub": "a", "exp": fut, "nbf": now - 300}).to_string(),
        json!({"sub": "a", "exp": fut, "nbf": "x"}).to_string(),
        json!({"sub": "a", "exp": fut, "nbf": null}).to_string(),
        json!({"sub": "a", "exp": fut, "iss": "https://auth.example"}).to_string(),
        json!({"sub": "a", "exp": fut, "iss": ["x", "https://auth.example"]}).to_string(),
        json!({"sub": "a", "exp": fut, "iss": ["x"]}).to_string(),
        json!({"sub": "a", "exp": fut, "iss": 3}).to_string(),
        json!({"sub": "a", "exp": fut, "iss": "https://evil.example"}).to_string(),
        json!({"sub": "a", "exp": fut, "aud": "plexus", "iss": "https://auth.example"}).to_string(),
        json!({"sub": "a", "exp": fut, "aud": ["other", "plexus"], "iss": "https://auth.example"}).to_string(),
        json!({"sub": "a", "exp": fut, "aud": [], "iss": "https://auth.example"}).to_string(),
        json!({"sub": "a", "exp": fut, "aud": "other", "iss": "https://auth.example"}).to_string(),
        json!({"sub": "a", "exp": fut, "aud": ["plexus", 1]}).to_string(),
        json!({"role": "anon", "exp": fut}).to_string(),
        json!({"role": "anon", "sub": "chosen", "exp": fut, "roles": ["user"]}).to_string(),
        json!({"sub": "a", "exp": fut, "roles": ["anon"]}).to_string(),
        json!({"sub": "a", "exp": fut, "realm_access": {"roles": ["admin"]}, "groups": "g"}).to_string(),
        json!({"sub": "a", "exp": fut, "realm_access": ["no"]}).to_string(),
        json!({"sub": "a", "exp": fut, "info": null}).to_string(),
        // Duplicates: a registered claim twice is malformed; another claim's last counts.
        format!(r#"{{"sub":"a","exp":{fut},"exp":{fut}}}"#),
        format!(r#"{{"sub":"a","sub":"b","exp":{fut}}}"#),
        format!(r#"{{"sub":"a","exp":{fut},"name":"1","name":"2","roles":["r"],"roles":"s"}}"#),
        // Escaped names and values, unread claims of every kind.
        format!(r#"{{"s\u0075b":"\u00e9\n","exp":{fut},"jti":"x\"y","n":[1,{{"d":null}}],"t":true}}"#),
        // Not an object, trailing bytes, broken JSON.
        "[1]".to_owned(),
        format!(r#"{{"sub":"a","exp":{fut}}} x"#),
        format!(r#"{{"sub":"a","exp":{fut}"#),
        "\u{feff}{}".to_owned(),
    ];
    let option_sets = [
        VerifyOptions::default(),
        VerifyOptions {
            issuer: Some("https://auth.example".into()),
            audience: Some("plexus".into()),
            roles_claim: "realm_access.roles".into(),
            leeway_secs: 0,
            ..VerifyOptions::default()
        },
        VerifyOptions {
            issuer: Some("https://auth.example".into()),
            roles_claim: "groups".into(),
            anon_role: Some("anon".into()),
            leeway_secs: 60,
            ..VerifyOptions::default()
        },
        VerifyOptions {
            roles_claim: "sub".into(),
            anon_role: Some("anon".into()),
            ..VerifyOptions::default()
        },
    ];
    let mut checked = 0;
    for opts in option_sets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let key = VerifyKey::secret(alg, b"reference-secret", None).unwrap();
            let v = Verifier::new(vec![key.clone()], opts.clone()).unwrap();
            for claims in &claim_sets {
                for secret in [&b"reference-secret"[..], b"wrong"] {
                    let t = signed(alg, secret, claims);
                    let want = comparable(reference(&v, &t, &key));
                    assert_eq!(comparable(v.verify(&t)), want, "{claims} {opts:?} {alg:?}");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 4 * 3 * 55 * 2);
}

#[test]
fn signatures_at_the_edges() {
    let key = VerifyKey::secret(Algorithm::HS256, b"s", None).unwrap();
    let v = Verifier::new(vec![key.clone()], VerifyOptions::default()).unwrap();
    let claims = json!({"sub": "a", "exp": unix_now() + 60}).to_string();
    let t = signed(Algorithm::HS256, b"s", &claims);
    assert!(v.verify(&t).is_ok());
    let (input, sig) = t.rsplit_once('.').unwrap();
    // Padding, a non-base64 signature, a truncated, extended or empty one, a fourth part,
    // two parts.
    for (bad, why) in [
        (format!("{input}.{sig}="), Some(AuthError::Malformed)),
        (format!("{input}.{sig}!"), Some(AuthError::Malformed)),
        (format!("{input}.{}", &sig[..sig.len() - 2]), None),
        (
            format!("{input}.{}", &sig[..sig.len() - 3]),
            Some(AuthError::BadSignature),
        ),
        (format!("{input}.{sig}AAAA"), Some(AuthError::BadSignature)),
        (format!("{input}."), Some(AuthError::BadSignature)),
        (format!("{t}.{sig}"), None),
        (input.to_owned(), None),
    ] {
        let got = v.verify(&bad);
        assert!(got.is_err(), "{bad}");
        if let Some(why) = why {
            assert_eq!(got, Err(why), "{bad}");
        }
        // Past the header (which both parse alike), the reference refuses it the same way.
        if jsonwebtoken::decode_header(&bad).is_ok() {
            assert_eq!(got, reference(&v, &bad, &key), "{bad}");
        }
    }
}
