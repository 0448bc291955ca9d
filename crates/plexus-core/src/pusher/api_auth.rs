//! Pusher's HTTP API request signatures (pure: no I/O, the clock is a parameter).
//!
//! A request carries `auth_key`, `auth_timestamp` (Unix seconds), `auth_version=1.0`,
//! `body_md5` (hex MD5 of the body, when there is a body) and `auth_signature` in its query
//! string. The signature is hex HMAC-SHA256 with the app's secret over
//! `"METHOD\nPATH\nQUERY"`, where QUERY is every query parameter but `auth_signature`, keys
//! lower-cased, sorted by key, joined as `key=value` with `&`, values not URL-encoded (as the
//! official `pusher` SDKs build it). [`verify`] checks all of it; the signature is compared in
//! constant time.

use super::PusherApp;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

/// How far `auth_timestamp` may be from the server's clock, either way (Pusher's 600 s).
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// Why a request's signature is refused (each answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiAuthError {
    #[error("missing query parameter {0}")]
    Missing(&'static str),
    #[error("unknown auth_key")]
    WrongKey,
    #[error("unsupported auth_version (expected 1.0)")]
    Version,
    #[error("auth_timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("auth_timestamp is more than 600 s from the server's time; check the clock")]
    Stale,
    #[error("body_md5 does not match the body")]
    BodyMd5,
    #[error("invalid auth_signature")]
    Signature,
    #[error("query parameter {0} given more than once")]
    Duplicate(String),
}

/// The query parameters of a verified request, decoded, without the `auth_*` and `body_md5`
/// ones (keys lower-cased).
pub type Params = Vec<(String, String)>;

const AUTH_KEYS: [&str; 5] = [
    "auth_key",
    "auth_timestamp",
    "auth_version",
    "auth_signature",
    "body_md5",
];

/// Hex MD5 of `body`, as `body_md5` carries it.
pub fn body_md5(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The string that is signed: `METHOD\nPATH\nsorted key=value&…` (keys lower-cased).
fn string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(String, &str)> = params
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    sorted.sort();
    let query: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        query.join("&")
    )
}

fn mac(secret: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length: this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
}

/// Signs a request as the SDKs do: returns the full query string (the given `params`, then
/// `auth_key`, `auth_timestamp`, `auth_version`, `body_md5` when `body` is not empty, and
/// `auth_signature`), values not URL-encoded. For tests and tools.
pub fn sign(
    app: &PusherApp,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let mut all: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    all.push(("auth_key".into(), app.key.clone()));
    all.push(("auth_timestamp".into(), timestamp.to_string()));
    all.push(("auth_version".into(), "1.0".into()));
    if !body.is_empty() {
        all.push(("body_md5".into(), body_md5(body)));
    }
    let mut m = mac(&app.secret);
    m.update(string_to_sign(method, path, &all).as_bytes());
    let signature = hex::encode(m.finalize().into_bytes());
    let mut query: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
    query.push(format!("auth_signature={signature}"));
    query.join("&")
}

/// Verifies a request to the app's HTTP API: `method`, the request's `path` as sent, its raw
/// `query` string (percent-encoded), its `body`, and the server's time `now` (Unix seconds).
/// Returns the other query parameters, decoded.
pub fn verify(
    app: &PusherApp,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    now: u64,
) -> Result<Params, ApiAuthError> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
        .collect();
    // A repeated key would make the signed string ambiguous: the SDKs never send one.
    let mut keys: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(ApiAuthError::Duplicate(w[0].chars().take(40).collect()));
    }
    let get = |name: &'static str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or(ApiAuthError::Missing(name))
    };
    let signature = get("auth_signature")?;
    if get("auth_key")? != app.key {
        return Err(ApiAuthError::WrongKey);
    }
    if get("auth_version")? != "1.0" {
        return Err(ApiAuthError::Version);
    }
    let timestamp: u64 = get("auth_timestamp")?
        .parse()
        .map_err(|_| ApiAuthError::BadTimestamp)?;
    if timestamp.abs_diff(now) > MAX_CLOCK_SKEW_SECS {
        return Err(ApiAuthError::Stale);
    }
    // A body must be covered by the signature through its MD5; a given MD5 must match.
    match params.iter().find(|(k, _)| k == "body_md5") {
        Some((_, md5)) if !md5.eq_ignore_ascii_case(&body_md5(body)) => {
            return Err(ApiAuthError::BodyMd5)
        }
        None if !body.is_empty() => return Err(ApiAuthError::Missing("body_md5")),
        _ => {}
    }
    let signature = hex::decode(signature).map_err(|_| ApiAuthError::Signature)?;
    let mut m = mac(&app.secret);
    m.update(string_to_sign(method, path, &params).as_bytes());
    // `verify_slice` compares in constant time.
    m.verify_slice(&signature)
        .map_err(|_| ApiAuthError::Signature)?;
    Ok(params
        .into_iter()
        .filter(|(k, _)| !AUTH_KEYS.contains(&k.as_str()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> PusherApp {
        PusherApp {
            app_id: "3".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
            max_presence_members: 100,
        }
    }

    const NOW: u64 = 1_353_088_179;

    #[test]
    fn pusher_documented_example() {
        // The worked example of Pusher's HTTP API reference ("Generating authentication
        // signatures"): same key, secret, timestamp, body and expected signature.
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(body_md5(body), "ec365a775a4cd0599faeb73354201b6f");
        let q = sign(&app(), "POST", "/apps/3/events", &[], body, NOW);
        assert!(
            q.ends_with(
                "auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
            ),
            "{q}"
        );
        assert_eq!(
            verify(&app(), "POST", "/apps/3/events", &q, body, NOW),
            Ok(vec![])
        );
    }

    #[test]
    fn md5_matches_known_vectors() {
        assert_eq!(body_md5(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(body_md5(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn other_params_are_signed_sorted_and_returned_decoded() {
        let q = sign(
            &app(),
            "GET",
            "/apps/3/channels",
            &[("info", "user_count"), ("filter_by_prefix", "presence-")],
            b"",
            NOW,
        );
        let params = verify(&app(), "GET", "/apps/3/channels", &q, b"", NOW).unwrap();
        assert_eq!(
            params,
            vec![
                ("info".to_string(), "user_count".to_string()),
                ("filter_by_prefix".to_string(), "presence-".to_string())
            ]
        );
        // Percent-encoded on the wire, the same values are signed decoded.
        let encoded = q.replace("presence-", "presence%2D");
        assert!(verify(&app(), "GET", "/apps/3/channels", &encoded, b"", NOW).is_ok());
        // A changed parameter breaks the signature.
        let changed = q.replace("user_count", "subscription_count");
        assert_eq!(
            verify(&app(), "GET", "/apps/3/channels", &changed, b"", NOW),
            Err(ApiAuthError::Signature)
        );
    }

    #[test]
    fn refusals() {
        let body = br#"{"name":"e","channel":"c","data":"x"}"#;
        let q = sign(&app(), "POST", "/apps/3/events", &[], body, NOW);
        let v = |method: &str, path: &str, q: &str, body: &[u8], now: u64| {
            verify(&app(), method, path, q, body, now)
        };
        assert!(v("POST", "/apps/3/events", &q, body, NOW).is_ok());
        // Another method, path or body.
        assert_eq!(
            v("GET", "/apps/3/events", &q, body, NOW),
            Err(ApiAuthError::Signature)
        );
        assert_eq!(
            v("POST", "/apps/4/events", &q, body, NOW),
            Err(ApiAuthError::Signature)
        );
        assert_eq!(
            v("POST", "/apps/3/events", &q, b"{}", NOW),
            Err(ApiAuthError::BodyMd5)
        );
        // Clock: 600 s either way is accepted, 601 s is not.
        assert!(v("POST", "/apps/3/events", &q, body, NOW + 600).is_ok());
        assert!(v("POST", "/apps/3/events", &q, body, NOW - 600).is_ok());
        assert_eq!(
            v("POST", "/apps/3/events", &q, body, NOW + 601),
            Err(ApiAuthError::Stale)
        );
        assert_eq!(
            v("POST", "/apps/3/events", &q, body, NOW - 601),
            Err(ApiAuthError::Stale)
        );
        // Another secret.
        let other = PusherApp {
            secret: "another-secret-000".into(),
            ..app()
        };
        let forged = sign(&other, "POST", "/apps/3/events", &[], body, NOW);
        assert_eq!(
            v("POST", "/apps/3/events", &forged, body, NOW),
            Err(ApiAuthError::Signature)
        );
        // Another key.
        let other = PusherApp {
            key: "other".into(),
            ..app()
        };
        let q2 = sign(&other, "POST", "/apps/3/events", &[], body, NOW);
        assert_eq!(
            v("POST", "/apps/3/events", &q2, body, NOW),
            Err(ApiAuthError::WrongKey)
        );
        // Missing pieces, garbage.
        for name in [
            "auth_signature",
            "auth_key",
            "auth_version",
            "auth_timestamp",
        ] {
            let without: Vec<&str> = q
                .split('&')
                .filter(|p| !p.starts_with(&format!("{name}=")))
                .collect();
            assert_eq!(
                v("POST", "/apps/3/events", &without.join("&"), body, NOW),
                Err(ApiAuthError::Missing(name))
            );
        }
        let no_md5: Vec<&str> = q
            .split('&')
            .filter(|p| !p.starts_with("body_md5="))
            .collect();
        assert_eq!(
            v("POST", "/apps/3/events", &no_md5.join("&"), body, NOW),
            Err(ApiAuthError::Missing("body_md5"))
        );
        assert_eq!(
            v(
                "POST",
                "/apps/3/events",
                &q.replace("auth_version=1.0", "auth_version=2.0"),
                body,
                NOW
            ),
            Err(ApiAuthError::Version)
        );
        assert_eq!(
            v(
                "POST",
                "/apps/3/events",
                &q.replace(&format!("auth_timestamp={NOW}"), "auth_timestamp=soon"),
                body,
                NOW
            ),
            Err(ApiAuthError::BadTimestamp)
        );
        let bad_hex = format!("{}zz", &q[..q.len() - 2]);
        assert_eq!(
            v("POST", "/apps/3/events", &bad_hex, body, NOW),
            Err(ApiAuthError::Signature)
        );
        assert_eq!(
            v("POST", "/apps/3/events", "", body, NOW),
            Err(ApiAuthError::Missing("auth_signature"))
        );
        assert_eq!(
            v("POST", "/apps/3/events", "%zz&&=&", body, NOW),
            Err(ApiAuthError::Missing("auth_signature"))
        );
        // Repeated keys, even of a correctly signed request, and whatever their case.
        assert_eq!(
            v(
                "POST",
                "/apps/3/events",
                &format!("{q}&auth_signature=00"),
                body,
                NOW
            ),
            Err(ApiAuthError::Duplicate("auth_signature".into()))
        );
        assert_eq!(
            v(
                "POST",
                "/apps/3/events",
                &format!("{q}&AUTH_KEY=x"),
                body,
                NOW
            ),
            Err(ApiAuthError::Duplicate("auth_key".into()))
        );
    }
}
