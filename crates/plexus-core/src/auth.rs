//! Authentication: turning a connect-time token into an [`Identity`].
//!
//! Tokens are JWTs. This module verifies them (signature with an explicit algorithm allow-list,
//! `exp`) and issues them for the `plexus token` command and the dev profile's token endpoint.
//! Every refusal carries a short, loggable reason that never includes the token itself.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Who a connection belongs to, as established by its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user id (`sub` claim).
    pub sub: Arc<str>,
    /// Roles from the `roles` claim.
    pub roles: Vec<String>,
    /// Optional display name (`name` claim), public: it may be shown to other users.
    pub name: Option<String>,
    /// Expiry as seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The claims Plexus reads and writes.
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
    #[error("malformed token")]
    Malformed,
    #[error("token is missing the required claim {0}")]
    MissingClaim(String),
    #[error("token has an empty sub claim")]
    EmptySubject,
    #[error("token rejected: {0}")]
    Other(String),
}

/// Verifies connect tokens.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// An HS256 verifier for a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::AlgorithmNotAllowed
                }
                ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => AuthError::Malformed,
                other => AuthError::Other(format!("{other:?}")),
            },
        )?;
        let c = data.claims;
        if c.sub.is_empty() {
            return Err(AuthError::EmptySubject);
        }
        Ok(Identity {
            sub: c.sub.into(),
            roles: c.roles,
            name: c.name,
            expires_at: Some(c.exp),
        })
    }
}

/// Issues HS256 tokens (CLI `plexus token`, dev token endpoint, tests, benchmarks).
#[derive(Clone)]
pub struct Issuer {
    key: EncodingKey,
}

impl Issuer {
    pub fn hs256(secret: &[u8]) -> Self {
        Issuer {
            key: EncodingKey::from_secret(secret),
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
        let claims = Claims {
            sub: sub.to_owned(),
            roles: roles.to_vec(),
            name: name.map(str::to_owned),
            exp: now + ttl_secs,
            iat: Some(now),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| AuthError::Other(e.to_string()))
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let old = Claims {
            sub: "a".into(),
            roles: vec![],
            name: None,
            exp: 1000,
            iat: None,
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &old,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(verifier.verify(&t), Err(AuthError::Expired));
    }

    #[test]
    fn alg_none_is_refused() {
        // {"alg":"none","typ":"JWT"} . {"sub":"a","exp":9999999999} . (no signature)
        let t = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert!(Verifier::hs256(b"secret").verify(t).is_err());
    }
}
