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
//! - `exp`, `nbf`, `sub`, `iss` and `aud` may appear only once in the claims (a token naming
//!   one twice is malformed, as jsonwebtoken's struct refused it); of the other claims the last
//!   occurrence counts (as in a JSON map).
//!
//! Claims Plexus does not read are skipped by the parser without being kept: their syntax is
//! checked (and the payload must be UTF-8), except that a `\u` escape naming a lone surrogate
//! in such a skipped string is not refused (serde_json's skipping does not decode escapes).

use super::{AuthError, ClaimPath};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};

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

    /// Whether the signature verifies with `key` (of the token's algorithm); an error for a
    /// signature that is not base64url, or a key the crypto refuses.
    pub(super) fn signed_by(
        &self,
        algorithm: Algorithm,
        key: &DecodingKey,
        hmac: Option<&HmacKey>,
    ) -> Result<bool, AuthError> {
        match hmac {
            Some(mac) => {
                // HS512's 64 bytes fit: a longer signature (which cannot verify) is decoded
                // anyway, to refuse one that is not base64url as malformed.
                let mut buf = [0u8; 64];
                let signature = match URL_SAFE_NO_PAD.decode_slice(self.signature, &mut buf) {
                    Ok(n) => &buf[..n],
                    Err(base64::DecodeSliceError::OutputSliceTooSmall) => {
                        URL_SAFE_NO_PAD
                            .decode(self.signature)
                            .map_err(|_| AuthError::Malformed)?;
                        return Ok(false);
                    }
                    Err(base64::DecodeSliceError::DecodeError(_)) => {
                        return Err(AuthError::Malformed)
                    }
                };
                Ok(mac.verifies(self.message.as_bytes(), signature))
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
