//! Authentication: turning a connect-time token into an [`Identity`].
//!
//! Tokens are JWTs verified against a [`Verifier`]'s keys: several keys at once (for rotation), each
//! bound to exactly one algorithm — HS256/384/512 with a shared secret, RS256/384/512 and
//! PS256/384/512 with an RSA public key, ES256/ES384 with an EC public key, EdDSA with an
//! Ed25519 public key — given as PEM, in a JWKS file, or fetched from JWKS URLs and refreshed
//! as the identity provider rotates them ([`remote_keys`]). A token is only ever checked with
//! a key whose algorithm equals the token's `alg`, and the key's type fixes its algorithm
//! family, so `alg: none` and HS/RS key confusion (an HS256 token "signed" with an RSA public
//! key) cannot verify by construction.
//!
//! Checked: signature, `exp` (required), `nbf`, and `iss` / `aud` when configured, with a
//! clock-skew leeway. Roles are read at a configurable claim path ([`claim_path`]). Every
//! refusal is an [`AuthError`] whose text names the reason and never contains the token.
//!
//! A token needs a `sub`, except an *anonymous* one: with [`VerifyOptions::anon_role`] set
//! (Supabase channels on), a verified token whose `role` (Supabase's claim) or roles name that
//! role — Supabase's anon key — is an anonymous [`Identity`] with a `sub` of its own,
//! `anon:<uuid>`, never taken from the token. A connection may upgrade it once to a user
//! (`socket.rs`).

use jsonwebtoken::errors::ErrorKind;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::{DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
pub use token::MAX_TOKEN_BYTES;
use token::{Checks, ParsedClaims, Parts};

pub mod claim_path;
mod keys;
pub mod remote_keys;
mod roles;
mod token;

pub use claim_path::ClaimPath;
use keys::is_hmac;
pub use keys::{KeyError, VerifyKey};
pub use remote_keys::RemoteKeys;
pub use roles::Roles;

/// Who a connection belongs to, as established by its token.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The user id (`sub` claim).
    pub sub: Arc<str>,
    /// Roles from the roles claim (`roles` unless configured otherwise), shared with every
    /// identity of the same roles.
    pub roles: Roles,
    /// Optional display name (`name` claim), public: it may be shown to other users.
    pub name: Option<String>,
    /// Optional public profile (`info` claim, any JSON), shown to other users in presence.
    pub info: Option<Box<RawValue>>,
    /// Expiry as seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// An anonymous token (see the module doc): no user, `sub` is `anon:<uuid>`.
    pub anonymous: bool,
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.sub == other.sub
            && self.roles == other.roles
            && self.name == other.name
            && self.info.as_ref().map(|r| r.get()) == other.info.as_ref().map(|r| r.get())
            && self.expires_at == other.expires_at
            && self.anonymous == other.anonymous
    }
}

impl Identity {
    /// An identity with just a user id (tests, internal use).
    pub fn new(sub: &str) -> Self {
        Identity {
            sub: sub.into(),
            roles: Roles::none(),
            name: None,
            info: None,
            expires_at: None,
            anonymous: false,
        }
    }

    /// The verified user's id, as other users may be shown it: `None` for an anonymous
    /// connection.
    pub fn user(&self) -> Option<&str> {
        (!self.anonymous).then_some(&*self.sub)
    }

    /// The key this identity's fair shares are counted under (the hook breaker's distinct
    /// users, the per-user cap on hook calls in flight, the webhook queue's per-user share):
    /// `u:<sub>` for a user; for an anonymous identity, whose `sub` is new on every
    /// connection, `a:<address>` — the client address's
    /// [`address_key`](crate::admission::address_key) (IPv4, or IPv6 /64), `a:` alone when the
    /// address is unknown — so that opening more anonymous connections does not multiply a
    /// client's share.
    pub fn share_key(&self, addr: Option<std::net::IpAddr>) -> Arc<str> {
        match (self.anonymous, addr) {
            (false, _) => format!("u:{}", self.sub).into(),
            (true, Some(ip)) => format!("a:{}", crate::admission::address_key(ip)).into(),
            (true, None) => "a:".into(),
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains(role)
    }
}

/// The claims Plexus writes when it issues a token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    MissingToken,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("bad token signature")]
    BadSignature,
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("unknown key id")]
    UnknownKid,
    #[error("wrong token audience")]
    WrongAudience,
    #[error("wrong token issuer")]
    WrongIssuer,
    #[error("malformed token")]
    Malformed,
    #[error("token too large (over 16 KiB)")]
    TooLarge,
    #[error("token is missing the required claim {0}")]
    MissingClaim(String),
    #[error("token has an empty or non-string sub claim")]
    BadSubject,
    #[error("token refresh must keep the same sub")]
    SubjectChanged,
    #[error("a signed-in connection cannot become anonymous again: reconnect")]
    BackToAnonymous,
    #[error("token rejected: {0}")]
    Other(String),
}

/// The largest clock-skew leeway the verifier applies (larger settings are refused by the
/// configuration and capped here), so that `now - leeway` and `exp + leeway` cannot overflow.
pub const MAX_LEEWAY_SECS: u64 = 3600;

/// Checks beyond the signature.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required `aud` (one of), if any.
    pub audience: Option<String>,
    /// Where the roles are in the claims (array of strings, or one string): a path, see
    /// [`ClaimPath`] (`roles`, `realm_access.roles`, `https://example.com/roles`).
    pub roles_claim: String,
    /// The role of anonymous tokens (Supabase's `anon`): a token whose `role` claim or roles
    /// name it is accepted without `sub` as an anonymous identity. `None`: every token needs a
    /// `sub`.
    pub anon_role: Option<String>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            leeway_secs: 5,
            issuer: None,
            audience: None,
            roles_claim: "roles".into(),
            anon_role: None,
        }
    }
}

/// Verifies connect tokens against a set of keys: the configured ones, and those fetched from
/// JWKS URLs ([`RemoteKeys`], replaced at run time as the provider rotates them).
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<VerifyKey>,
    remote: Option<Arc<RemoteKeys>>,
    roles_path: ClaimPath,
    options: VerifyOptions,
}

impl std::fmt::Debug for Verifier {
    /// Lists the keys by algorithm and kid, never their material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                format!(
                    "{:?}{}",
                    k.algorithm,
                    k.kid
                        .as_deref()
                        .map(|k| format!("/{k}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("jwks_urls", &self.remote.as_ref().map(|r| r.urls()))
            .field("options", &self.options)
            .finish()
    }
}

impl Verifier {
    pub fn new(keys: Vec<VerifyKey>, options: VerifyOptions) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError("no verification key configured".into()));
        }
        Self::for_jwks_urls(keys, options)
    }

    /// A verifier whose `keys` may be empty: JWKS URLs are to supply more
    /// ([`Verifier::set_remote_keys`]); until then it refuses every token. The roles claim
    /// path must parse ([`ClaimPath`]).
    pub fn for_jwks_urls(keys: Vec<VerifyKey>, options: VerifyOptions) -> Result<Self, KeyError> {
        let roles_path = ClaimPath::parse(&options.roles_claim)
            .map_err(|e| KeyError(format!("roles claim path {e}")))?;
        Ok(Verifier {
            keys,
            remote: None,
            roles_path,
            options,
        })
    }

    /// Adds the keys fetched from JWKS URLs (shared by every clone made afterwards).
    pub fn set_remote_keys(&mut self, remote: Arc<RemoteKeys>) {
        self.remote = Some(remote);
    }

    /// Whether any key can verify a token now (configured or fetched).
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty() || self.remote.as_ref().is_some_and(|r| r.key_count() > 0)
    }

    /// An HS256 verifier for one shared secret with default options. An empty secret gives a
    /// verifier that accepts no token (anyone could sign with it), as the configuration refuses
    /// one.
    pub fn hs256(secret: &[u8]) -> Self {
        let keys = if secret.is_empty() {
            Vec::new()
        } else {
            vec![VerifyKey::with(
                None,
                Algorithm::HS256,
                DecodingKey::from_secret(secret),
            )]
        };
        Verifier {
            keys,
            remote: None,
            roles_path: ClaimPath::claim("roles"),
            options: VerifyOptions::default(),
        }
    }

    /// The configured keys (not those fetched from JWKS URLs).
    pub fn keys(&self) -> &[VerifyKey] {
        &self.keys
    }

    /// [`Verifier::verify`], except that a token naming a `kid` that no key has, with JWKS
    /// URLs configured, first has them fetched again ([`RemoteKeys::refetch_for_unknown_kid`]:
    /// at most once per 30 s per URL, waiting at most for one fetch's timeout), so that a
    /// token signed with a key the provider just published is accepted at once.
    pub async fn verify_fetching(&self, token: &str) -> Result<Identity, AuthError> {
        let header = Self::header(token)?;
        if let (Some(remote), Some(kid)) = (&self.remote, &header.kid) {
            let known =
                self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) || remote.has_kid(kid);
            if !known {
                remote.refetch_for_unknown_kid().await;
            }
        }
        self.verify_with_header(token, &header)
    }

    /// Verifies `token` against the keys as they are now (never fetches).
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_with_header(token, &Self::header(token)?)
    }

    /// The token's header, parsed once per verification.
    fn header(token: &str) -> Result<Header, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName => AuthError::AlgorithmNotAllowed,
            _ if header_names_an_alg(token) => AuthError::AlgorithmNotAllowed,
            _ => AuthError::Malformed,
        })
    }

    /// The candidate keys for `header` (by `kid`, then by algorithm), tried in order: a bad
    /// signature moves on to the next key, any other refusal is final. The claims are parsed
    /// once, after a signature verified.
    fn verify_with_header(&self, token: &str, header: &Header) -> Result<Identity, AuthError> {
        let fetched = self
            .remote
            .as_ref()
            .map(|r| r.snapshot())
            .unwrap_or_default();
        let all_keys = || {
            self.keys
                .iter()
                .chain(fetched.iter().flat_map(|s| s.iter()))
        };
        let candidates: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => {
                let with_kid: Vec<&VerifyKey> = all_keys()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .collect();
                if with_kid.is_empty() {
                    // Keys configured without a kid still accept tokens that carry one (if
                    // one has the token's algorithm: else the kid is what is wrong).
                    let anonymous: Vec<&VerifyKey> = all_keys()
                        .filter(|k| k.kid.is_none() && k.algorithm == header.alg)
                        .collect();
                    if anonymous.is_empty() {
                        return Err(AuthError::UnknownKid);
                    }
                    anonymous
                } else {
                    with_kid
                        .into_iter()
                        .filter(|k| k.algorithm == header.alg)
                        .collect()
                }
            }
            None => all_keys().filter(|k| k.algorithm == header.alg).collect(),
        };
        if candidates.is_empty() {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        // The header parsed, so the token has its three parts.
        let parts = Parts::split(token).ok_or(AuthError::Malformed)?;
        // Every candidate has the token's algorithm: an HMAC signature is decoded once here.
        let signature = if is_hmac(header.alg) {
            Some(parts.hmac_signature()?)
        } else {
            None
        };
        for key in candidates {
            let hmac = key.hmac.as_ref().zip(signature.as_ref());
            if parts.signed_by(key.algorithm, &key.key, hmac)? {
                let claims = parts.claims(&self.roles_path)?;
                let checks = Checks {
                    leeway: self.options.leeway_secs.min(MAX_LEEWAY_SECS),
                    issuer: self.options.issuer.as_deref(),
                    audience: self.options.audience.as_deref(),
                };
                claims.check(&checks, clock_now()?)?;
                return self.identity(claims);
            }
        }
        Err(AuthError::BadSignature)
    }

    fn identity(&self, c: ParsedClaims) -> Result<Identity, AuthError> {
        let roles = match c.roles.as_ref().and_then(|top| self.roles_path.below(top)) {
            Some(Value::Array(items)) => Roles::new(items.iter().filter_map(Value::as_str)),
            Some(Value::String(s)) => Roles::new([s.as_str()]),
            _ => Roles::none(),
        };
        let anonymous = self.options.anon_role.as_deref().is_some_and(|anon| {
            c.role.as_ref().and_then(Value::as_str) == Some(anon) || roles.contains(anon)
        });
        let sub = match c.sub {
            // Never the token's: one anon key is shared by every visitor.
            _ if anonymous => format!("anon:{}", uuid::Uuid::new_v4()),
            None => return Err(AuthError::MissingClaim("sub".into())),
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(_) => return Err(AuthError::BadSubject),
        };
        let name = match c.name {
            Some(Value::String(n)) => Some(n),
            _ => None,
        };
        let info = c
            .info
            .and_then(|v| serde_json::value::to_raw_value(&v).ok());
        // The verifier accepts a fractional `exp` (NumericDate may be non-integer): whatever it
        // accepted is enforced live, rounded down.
        let expires_at = c.exp.as_ref().and_then(|e| {
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
}

/// Whether the token's header is readable JSON naming some `alg` (such as `none`) that the
/// JWT library does not know: refused as "algorithm not allowed" rather than "malformed".
fn header_names_an_alg(token: &str) -> bool {
    use base64::Engine;
    let Some(first) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
        .is_some_and(|h| h.get("alg").is_some_and(Value::is_string))
}

/// Issues HS256 tokens (CLI `plexus token`, dev token endpoint, tests, benchmarks). Cloning
/// shares the key: the server's state holds one and is cloned several times per request
/// (copying the secret was 6 of ~107 allocations of a ws connect + join).
#[derive(Clone)]
pub struct Issuer {
    key: Arc<EncodingKey>,
}

impl Issuer {
    pub fn hs256(secret: &[u8]) -> Self {
        Issuer {
            key: Arc::new(EncodingKey::from_secret(secret)),
        }
    }

    pub fn issue(
        &self,
        sub: &str,
        roles: &[String],
        name: Option<&str>,
        ttl_secs: u64,
    ) -> Result<String, AuthError> {
        let now = unix_now();
        self.issue_claims(&Claims {
            sub: sub.to_owned(),
            roles: roles.to_vec(),
            name: name.map(str::to_owned),
            exp: now.saturating_add(ttl_secs),
            iat: Some(now),
            iss: None,
            aud: None,
        })
    }

    /// Signs `claims` as they are (e.g. with `iss` and `aud` for a server that requires them).
    pub fn issue_claims(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key)
            .map_err(|e| AuthError::Other(e.to_string()))
    }
}

/// Seconds since the Unix epoch of `t`; `None` before 1970.
fn secs_since_epoch(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// The clock for checking `exp` and `nbf`: refused (rather than read as 1970, which would let
/// every expired token pass) when it is before the epoch.
fn clock_now() -> Result<u64, AuthError> {
    secs_since_epoch(SystemTime::now())
        .ok_or_else(|| AuthError::Other("the server's clock is before 1970".into()))
}

/// Seconds since the Unix epoch, 0 when the clock is before it (issuing, timers; verification
/// uses a clock that refuses then).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod hardening_tests;
#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod tests;
