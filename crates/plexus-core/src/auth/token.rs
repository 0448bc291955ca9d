//! One pass over a connect token, after its header: the signature checked with a key prepared
//! when the verifier was built, the claims decoded and parsed once, and the checks
//! `jsonwebtoken::decode` applied (as [`super::Verifier`] configured them) done on that parse.
//!
//! `jsonwebtoken::decode` parsed the header twice more, set up the HMAC key (two SHA blocks)
//! on every call, and parsed the claims twice (into the caller's map and into its own
//! validation struct); with a `Validation` built per token that was ~44,000 instructions of a
//! ~145,000-instruction ws connect + join (BENCHMARKS.md, "Connect cost").
//!
//! The checks are those of `jsonwebtoken` 10 with `Validation { algorithms: [key's],
//! required: exp (+ iss, aud when configured), validate_nbf, leeway, iss, aud }`:
//! - `exp` and `nbf` are NumericDates: a non-negative integer, or a finite non-negative float
//!   (rounded); anything else, `null` included, is a malformed claim (for `exp`, which is
//!   required: the claim is missing). Expired when `exp < now - leeway`, not yet valid when
//!   `nbf > now + leeway`.
//! - `iss` / `aud`: a string or an array of strings (`null` counts as absent); when configured,
//!   required and one of them must equal the configured value. Unconfigured, not looked at.
//! - A `sub` that is an array or an object, and an `exp` or `nbf` that is a non-empty array or
//!   object, are malformed (before any other check), anonymous token or not: jsonwebtoken's
//!   parse of its validation struct failed on them (serde_json leaves such a value half-read
//!   after the field's type error), where an empty one was only of the wrong type.
//! - `exp`, `nbf`, `sub`, `iss` and `aud` may appear only once in the claims (a token naming
//!   one twice is malformed, as jsonwebtoken's struct refused it); of the other claims the last
//!   occurrence counts (as in a JSON map).
//!
//! Claims Plexus does not read are skipped by the parser without being kept: their syntax is
//! checked (and the payload must be UTF-8), except that a `\u` escape naming a lone surrogate
//! in such a skipped string is not refused (serde_json's skipping does not decode escapes).
//! serde_json's skipping has no nesting limit, so the decoded payload is first scanned for its
//! bracket depth ([`too_deep`]): nesting of [`MAX_DEPTH`] or more anywhere (the claims object
//! counting as one) is malformed, as `serde_json::from_slice` refused it.
//!
//! Before any of it, a token over [`MAX_TOKEN_BYTES`] is refused ([`AuthError::TooLarge`]),
//! and the signature of an HMAC token is decoded once, not once per candidate key.

use super::{AuthError, ClaimPath};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};

/// The largest token verified, in bytes (as received: base64url text); a longer one is
/// refused before it is decoded. 16 KiB is 4× the largest tokens identity providers issue
/// with many roles or groups (a few KiB), and well inside what carries a token: hyper's
/// request head buffer (~400 KiB, a query or an `Authorization` header) and
/// `limits.max_message_bytes` (1 MiB, `refresh_token` / `access_token`).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The nesting at which serde_json stops parsing (its recursion limit, 128 levels, the
/// claims object included): a payload nested this deep is malformed.
pub(super) const MAX_DEPTH: usize = 128;

/// Whether `json` nests arrays and objects [`MAX_DEPTH`] deep anywhere (brackets inside
/// strings not counted). Exact for valid JSON; invalid JSON is refused by the parser after.
pub(super) fn too_deep(json: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth >= MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// An HMAC key with its key schedule done (the padded key's inner and outer blocks hashed
/// once), cloned for each token.
#[derive(Clone)]
pub(super) enum HmacKey {
    S256(Hmac<Sha256>),
    S384(Hmac<Sha384>),
    S512(Hmac<Sha512>),
}

impl HmacKey {
    /// The prepared key of an HS256/384/512 `key`; `None` for any other algorithm or key.
    pub(super) fn new(algorithm: Algorithm, key: &DecodingKey) -> Option<Self> {
        let secret = key.try_get_hmac_secret().ok()?;
        match algorithm {
            Algorithm::HS256 => Hmac::new_from_slice(secret).ok().map(Self::S256),
            Algorithm::HS384 => Hmac::new_from_slice(secret).ok().map(Self::S384),
            Algorithm::HS512 => Hmac::new_from_slice(secret).ok().map(Self::S512),
            _ => None,
        }
    }

    /// Whether `signature` is the MAC of `message` (compared in constant time).
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        fn check<M: Mac + Clone>(mac: &M, message: &[u8], signature: &[u8]) -> bool {
            let mut mac = mac.clone();
            mac.update(message);
            mac.verify_slice(signature).is_ok()
        }
        match self {
            Self::S256(m) => check(m, message, signature),
            Self::S384(m) => check(m, message, signature),
            Self::S512(m) => check(m, message, signature),
        }
    }
}

/// A token cut at its dots (as jsonwebtoken cuts it: at the last two).
pub(super) struct Parts<'t> {
    /// `header.payload`, what the signature signs.
    message: &'t str,
    payload: &'t str,
    signature: &'t str,
}

impl<'t> Parts<'t> {
    pub(super) fn split(token: &'t str) -> Option<Self> {
        let (message, signature) = token.rsplit_once('.')?;
        let (_header, payload) = message.rsplit_once('.')?;
        Some(Parts {
            message,
            payload,
            signature,
        })
    }

    /// The signature decoded for the HMAC keys (once per token, whichever key verifies it);
    /// an error for one that is not base64url.
    pub(super) fn hmac_signature(&self) -> Result<Signature, AuthError> {
        let mut sig = Signature {
            buf: [0u8; 64],
            len: 0,
            too_long: false,
        };
        match URL_SAFE_NO_PAD.decode_slice(self.signature, &mut sig.buf) {
            Ok(n) => sig.len = n,
            // HS512's 64 bytes fit: a longer signature (which cannot verify) is decoded
            // anyway, to refuse one that is not base64url as malformed.
            Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                URL_SAFE_NO_PAD
                    .decode(self.signature)
                    .map_err(|_| AuthError::Malformed)?;
                sig.too_long = true;
            }
            Err(base64::DecodeSliceError::DecodeError(_)) => return Err(AuthError::Malformed),
        }
        Ok(sig)
    }

    /// Whether the signature verifies with `key` (of the token's algorithm): with its prepared
    /// HMAC key against `signature` ([`Parts::hmac_signature`]), else by jsonwebtoken; an
    /// error for a signature that is not base64url, or a key the crypto refuses.
    pub(super) fn signed_by(
        &self,
        algorithm: Algorithm,
        key: &DecodingKey,
        hmac: Option<(&HmacKey, &Signature)>,
    ) -> Result<bool, AuthError> {
        match hmac {
            Some((mac, sig)) => {
                Ok(!sig.too_long && mac.verifies(self.message.as_bytes(), &sig.buf[..sig.len]))
            }
            None => jsonwebtoken::crypto::verify(
                self.signature,
                self.message.as_bytes(),
                key,
                algorithm,
            )
            .map_err(|e| jwt_error(e.kind())),
        }
    }

    /// The payload decoded and parsed, keeping what [`ParsedClaims`] holds.
    pub(super) fn claims(&self, roles_path: &ClaimPath) -> Result<ParsedClaims, AuthError> {
        let json = URL_SAFE_NO_PAD
            .decode(self.payload)
            .map_err(|_| AuthError::Malformed)?;
        if too_deep(&json) {
            return Err(AuthError::Malformed);
        }
        let json = std::str::from_utf8(&json).map_err(|_| AuthError::Malformed)?;
        let mut de = serde_json::Deserializer::from_str(json);
        let claims = de::Deserializer::deserialize_map(
            &mut de,
            ClaimsVisitor {
                roles: roles_path.first(),
            },
        )
        .map_err(|_| AuthError::Malformed)?;
        de.end().map_err(|_| AuthError::Malformed)?;
        Ok(claims)
    }
}

/// An HMAC signature, decoded: at most HS512's 64 bytes, else `too_long` (cannot verify).
pub(super) struct Signature {
    buf: [u8; 64],
    len: usize,
    too_long: bool,
}

/// A jsonwebtoken error as a refusal.
pub(super) fn jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => AuthError::AlgorithmNotAllowed,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => AuthError::Malformed,
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::Other(format!("claim {c} has the wrong format"))
        }
        other => AuthError::Other(format!("{other:?}")),
    }
}

/// The claims the verifier reads, each as its JSON value; `None` when absent.
#[derive(Default)]
pub(super) struct ParsedClaims {
    pub exp: Option<Value>,
    pub nbf: Option<Value>,
    pub sub: Option<Value>,
    pub iss: Option<Value>,
    pub aud: Option<Value>,
    pub name: Option<Value>,
    /// Supabase's `role` (anonymous tokens).
    pub role: Option<Value>,
    pub info: Option<Value>,
    /// The top-level claim the roles path starts at.
    pub roles: Option<Value>,
}

/// What the checks need of the verifier's options.
pub(super) struct Checks<'a> {
    pub leeway: u64,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
}

impl ParsedClaims {
    /// The checks beyond the signature, in jsonwebtoken's order (see the module doc).
    pub(super) fn check(&self, checks: &Checks<'_>, now: u64) -> Result<(), AuthError> {
        if self.unparsable() {
            return Err(AuthError::Malformed);
        }
        let exp = numeric_date(self.exp.as_ref());
        let nbf = numeric_date(self.nbf.as_ref());
        let iss = names(self.iss.as_ref());
        let aud = names(self.aud.as_ref());
        let missing = |c: &str| Err(AuthError::MissingClaim(c.into()));
        if !matches!(exp, Parse::Parsed(_)) {
            return missing("exp");
        }
        if checks.issuer.is_some() && !matches!(iss, Parse::Parsed(_)) {
            return missing("iss");
        }
        if checks.audience.is_some() && !matches!(aud, Parse::Parsed(_)) {
            return missing("aud");
        }
        if matches!(nbf, Parse::Failed) {
            return Err(AuthError::Other("claim nbf has the wrong format".into()));
        }
        if matches!(exp, Parse::Parsed(exp) if exp < now.saturating_sub(checks.leeway)) {
            return Err(AuthError::Expired);
        }
        if matches!(nbf, Parse::Parsed(nbf) if nbf > now.saturating_add(checks.leeway)) {
            return Err(AuthError::NotYetValid);
        }
        if let (Parse::Parsed(iss), Some(want)) = (&iss, checks.issuer) {
            if !iss.contains(want) {
                return Err(AuthError::WrongIssuer);
            }
        }
        if let (Parse::Parsed(aud), Some(want)) = (&aud, checks.audience) {
            if !aud.contains(want) {
                return Err(AuthError::WrongAudience);
            }
        }
        Ok(())
    }
}

impl ParsedClaims {
    /// Whether jsonwebtoken's claims parse failed on these values (see the module doc): a
    /// `sub` that is an array or object, an `exp` or `nbf` that is a non-empty one.
    fn unparsable(&self) -> bool {
        let non_empty = |v: &Option<Value>| match v {
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            _ => false,
        };
        matches!(self.sub, Some(Value::Array(_) | Value::Object(_)))
            || non_empty(&self.exp)
            || non_empty(&self.nbf)
    }
}

/// A claim as the checks read it.
enum Parse<T> {
    Parsed(T),
    /// Present with a value of the wrong type.
    Failed,
    /// Absent or `null`.
    Absent,
}

/// A NumericDate as jsonwebtoken reads one: an unsigned integer, or a finite non-negative
/// float below 2^64, rounded. `null` is of the wrong type (unlike for `iss` and `aud`).
fn numeric_date(v: Option<&Value>) -> Parse<u64> {
    match v {
        None => Parse::Absent,
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Parse::Parsed(u)
            } else if n.is_i64() {
                Parse::Failed
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                        Parse::Parsed(f.round() as u64)
                    }
                    _ => Parse::Failed,
                }
            }
        }
        Some(_) => Parse::Failed,
    }
}

/// `iss` or `aud`: one string or an array of strings.
enum Names<'a> {
    One(&'a str),
    Many(&'a [Value]),
}

impl Names<'_> {
    fn contains(&self, want: &str) -> bool {
        match self {
            Names::One(s) => *s == want,
            Names::Many(items) => items.iter().any(|v| v.as_str() == Some(want)),
        }
    }
}

fn names(v: Option<&Value>) -> Parse<Names<'_>> {
    match v {
        None | Some(Value::Null) => Parse::Absent,
        Some(Value::String(s)) => Parse::Parsed(Names::One(s)),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            Parse::Parsed(Names::Many(items))
        }
        Some(_) => Parse::Failed,
    }
}

/// Which of [`ParsedClaims`]' fields a claim name fills.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Exp,
    Nbf,
    Sub,
    Iss,
    Aud,
    Name,
    Role,
    Info,
    Other,
}

impl Slot {
    /// A registered claim jsonwebtoken's validation read: a second occurrence is refused.
    fn once(self) -> bool {
        matches!(
            self,
            Slot::Exp | Slot::Nbf | Slot::Sub | Slot::Iss | Slot::Aud
        )
    }
}

/// Reads a claim name without keeping it: its slot, and whether it is the roles claim.
struct KeySeed<'p> {
    roles: &'p str,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = (Slot, bool);

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = (Slot, bool);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a claim name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        let slot = match name {
            "exp" => Slot::Exp,
            "nbf" => Slot::Nbf,
            "sub" => Slot::Sub,
            "iss" => Slot::Iss,
            "aud" => Slot::Aud,
            "name" => Slot::Name,
            "role" => Slot::Role,
            "info" => Slot::Info,
            _ => Slot::Other,
        };
        Ok((slot, name == self.roles))
    }
}

/// The claims object, one pass (see the module doc).
struct ClaimsVisitor<'p> {
    roles: &'p str,
}

impl<'de> Visitor<'de> for ClaimsVisitor<'_> {
    type Value = ParsedClaims;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ParsedClaims, A::Error> {
        let mut c = ParsedClaims::default();
        while let Some((slot, is_roles)) = map.next_key_seed(KeySeed { roles: self.roles })? {
            if slot == Slot::Other && !is_roles {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value: Value = map.next_value()?;
            let field = match slot {
                Slot::Exp => &mut c.exp,
                Slot::Nbf => &mut c.nbf,
                Slot::Sub => &mut c.sub,
                Slot::Iss => &mut c.iss,
                Slot::Aud => &mut c.aud,
                Slot::Name => &mut c.name,
                Slot::Role => &mut c.role,
                Slot::Info => &mut c.info,
                Slot::Other => {
                    c.roles = Some(value);
                    continue;
                }
            };
            if slot.once() && field.is_some() {
                return Err(de::Error::custom("a registered claim appears twice"));
            }
            if is_roles {
                c.roles = Some(value.clone());
            }
            *field = Some(value);
        }
        Ok(c)
    }
}
