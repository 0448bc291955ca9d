//! The signature of every hook and webhook request, so that the application can check that
//! Plexus sent it and refuse replays.
//!
//! Headers: `x-plexus-timestamp: <unix seconds>` and
//! `x-plexus-signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`: the
//! signed text is the timestamp header's value, a dot, then the raw request body.
//! Within the timestamp window a receiver tells a replay by the body's unique `id` (every
//! hook request has one, see [`crate::hooks`]; webhook events have their own).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-plexus-signature";
/// The header carrying the time of signing, in seconds since the Unix epoch.
pub const TIMESTAMP_HEADER: &str = "x-plexus-timestamp";

/// `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The signature headers of a request sent now.
pub fn headers(secret: &[u8], body: &[u8]) -> Vec<(&'static str, String)> {
    let now = crate::hooks::unix_ms() / 1000;
    vec![
        (TIMESTAMP_HEADER, now.to_string()),
        (SIGNATURE_HEADER, signature(secret, now, body)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_reference_hmac() {
        // Computed with Python's standard library (docs/hooks.md shows the same check):
        // hmac.new(b"k", b"1.{}", hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"k", 1, b"{}"),
            "sha256=3dd49b2593d0f9a349e9e71c4bde3e2b862c2be4003fe9b4ba81332029310158"
        );
        assert_ne!(signature(b"k", 2, b"{}"), signature(b"k", 1, b"{}"));
        assert_ne!(signature(b"j", 1, b"{}"), signature(b"k", 1, b"{}"));
    }
}
