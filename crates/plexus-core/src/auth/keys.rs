//! The keys tokens are checked with ([`VerifyKey`]): one key bound to one algorithm, from a
//! shared secret (HS*), a PEM public key (RS*, PS*, ES256/384, EdDSA) or a JWKS entry, whose
//! `alg`, `use` and `key_ops` are honoured and whose type must fit its algorithm. An HMAC key's
//! key schedule is done once, here, not per token.

use super::token::HmacKey;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::str::FromStr;

/// One verification key, bound to one algorithm.
#[derive(Clone)]
pub struct VerifyKey {
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
    /// For HS256/384/512: the key with its HMAC key schedule done once, here.
    pub(super) hmac: Option<HmacKey>,
}

pub(super) fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// A verification key that cannot be used; the text says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

impl VerifyKey {
    pub(super) fn with(kid: Option<String>, algorithm: Algorithm, key: DecodingKey) -> Self {
        let hmac = HmacKey::new(algorithm, &key);
        VerifyKey {
            kid,
            algorithm,
            key,
            hmac,
        }
    }

    /// A shared-secret key for HS256, HS384 or HS512.
    pub fn secret(
        algorithm: Algorithm,
        secret: &[u8],
        kid: Option<String>,
    ) -> Result<Self, KeyError> {
        if !is_hmac(algorithm) {
            return Err(KeyError(format!(
                "a secret can only be used with HS256/HS384/HS512, not {algorithm:?}"
            )));
        }
        if secret.is_empty() {
            return Err(KeyError("the secret is empty".into()));
        }
        Ok(VerifyKey::with(
            kid,
            algorithm,
            DecodingKey::from_secret(secret),
        ))
    }

    /// A public key in PEM for RS*, PS*, ES256/ES384 or EdDSA.
    pub fn public_pem(
        algorithm: Algorithm,
        pem: &[u8],
        kid: Option<String>,
    ) -> Result<Self, KeyError> {
        use Algorithm::*;
        let key = match algorithm {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => DecodingKey::from_rsa_pem(pem),
            ES256 | ES384 => DecodingKey::from_ec_pem(pem),
            EdDSA => DecodingKey::from_ed_pem(pem),
            HS256 | HS384 | HS512 => {
                return Err(KeyError(format!(
                    "{algorithm:?} needs a secret, not a public key"
                )))
            }
        }
        .map_err(|e| KeyError(format!("invalid {algorithm:?} public key: {e}")))?;
        Ok(VerifyKey::with(kid, algorithm, key))
    }

    /// Every usable key of a JWKS document (a file): a key that cannot be used is an error,
    /// except one marked for another use than signatures (`use` not `sig`, or `key_ops`
    /// without `verify`), which is left out. See [`VerifyKey::from_jwk`].
    pub fn from_jwks(json: &str) -> Result<Vec<Self>, KeyError> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| KeyError(format!("invalid JWKS: {e}")))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            if let Some(key) =
                Self::from_jwk(jwk).map_err(|e| KeyError(format!("JWKS key {i}: {}", e.0)))?
            {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return Err(KeyError("the JWKS has no keys".into()));
        }
        Ok(keys)
    }

    /// One JWKS entry as a verification key; `Ok(None)` for a key meant for something else
    /// than signatures (`use` other than `sig`, or `key_ops` without `verify`). The key's
    /// `alg` is honoured and must fit its type; without `alg` the type implies it (RSA →
    /// RS256, EC P-256 → ES256, P-384 → ES384, Ed25519 → EdDSA, oct → HS256).
    pub fn from_jwk(jwk: &Jwk) -> Result<Option<Self>, KeyError> {
        use Algorithm::*;
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
            || jwk
                .common
                .key_operations
                .as_ref()
                .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
        {
            return Ok(None);
        }
        let algorithm = match &jwk.common.key_algorithm {
            Some(ka) => Algorithm::from_str(&format!("{ka:?}"))
                .map_err(|_| KeyError(format!("unsupported alg {ka:?}")))?,
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => RS256,
                AlgorithmParameters::EllipticCurve(p) => match p.curve {
                    EllipticCurve::P256 => ES256,
                    EllipticCurve::P384 => ES384,
                    _ => return Err(KeyError("unsupported curve".into())),
                },
                AlgorithmParameters::OctetKeyPair(_) => EdDSA,
                AlgorithmParameters::OctetKey(_) => HS256,
            },
        };
        let fits = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => {
                matches!(algorithm, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
            }
            AlgorithmParameters::EllipticCurve(p) => matches!(
                (&p.curve, algorithm),
                (EllipticCurve::P256, ES256) | (EllipticCurve::P384, ES384)
            ),
            AlgorithmParameters::OctetKeyPair(p) => {
                p.curve == EllipticCurve::Ed25519 && algorithm == EdDSA
            }
            AlgorithmParameters::OctetKey(_) => is_hmac(algorithm),
        };
        if !fits {
            return Err(KeyError(format!(
                "alg {algorithm:?} does not fit the key's type"
            )));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError(e.to_string()))?;
        if is_hmac(algorithm) && !key.try_get_hmac_secret().is_ok_and(|s| !s.is_empty()) {
            return Err(KeyError(
                "the oct key's k (the HMAC secret) is empty".into(),
            ));
        }
        Ok(Some(VerifyKey::with(
            jwk.common.key_id.clone(),
            algorithm,
            key,
        )))
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
}
