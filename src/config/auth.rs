//! Who is who: the JWT secret and API key (`jwt_secret`, `api_key`) and the `[auth]` section
//! (`[[auth.keys]]`, `auth.jwks_files`, `auth.jwks_urls`, issuer, audience, roles claim path)
//! that build the token [`Verifier`]. The JWKS URLs are only checked here; the server fetches
//! them at start (`src/jwks_client.rs`, `plexus_core::auth::remote_keys`).

use super::{random_token, read_referenced, ConfigError, Env, FileConfig, Profile, ReadFn};
use plexus_core::auth::{Algorithm, KeyError, Verifier, VerifyKey, VerifyOptions};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuth {
    pub(super) leeway_secs: Option<u64>,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) roles_claim: Option<String>,
    pub(super) expiry_grace_secs: Option<u64>,
    #[serde(default)]
    pub(super) keys: Vec<FileKey>,
    #[serde(default)]
    pub(super) jwks_files: Vec<PathBuf>,
    #[serde(default)]
    pub(super) jwks_urls: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileKey {
    pub(super) kid: Option<String>,
    pub(super) algorithm: String,
    pub(super) secret: Option<String>,
    pub(super) public_key: Option<String>,
    pub(super) public_key_file: Option<PathBuf>,
}

/// The JWT secret and API key, and whether the dev profile generated them.
pub(super) struct Secrets {
    pub(super) jwt_secret: String,
    pub(super) jwt_secret_generated: bool,
    pub(super) api_key: String,
    pub(super) api_key_generated: bool,
}

/// Secrets from environment, then file: required in prod, made up for this run in dev.
pub(super) fn resolve_secrets(
    profile: Profile,
    env: &Env,
    file: &FileConfig,
) -> Result<Secrets, ConfigError> {
    let secret = env.jwt_secret.clone().or(file.jwt_secret.clone());
    let api_key = env.api_key.clone().or(file.api_key.clone());
    match profile {
        Profile::Prod => {
            let has_keys = !file.auth.keys.is_empty()
                || !file.auth.jwks_files.is_empty()
                || !file.auth.jwks_urls.is_empty();
            let no_secret = secret.is_none() && !has_keys;
            if no_secret || api_key.is_none() {
                return Err(ConfigError::MissingProdSecrets {
                    jwt_secret: no_secret,
                    api_key: api_key.is_none(),
                });
            }
            if secret.as_ref().is_some_and(|s| s.len() < 16) {
                return Err(ConfigError::ShortJwtSecret);
            }
            if api_key.as_ref().is_some_and(|k| k.len() < 16) {
                return Err(ConfigError::ShortApiKey);
            }
            Ok(Secrets {
                jwt_secret: secret.unwrap_or_default(),
                jwt_secret_generated: false,
                api_key: api_key.unwrap_or_default(),
                api_key_generated: false,
            })
        }
        Profile::Dev => Ok(Secrets {
            jwt_secret_generated: secret.is_none(),
            jwt_secret: secret.unwrap_or_else(|| random_token(32)),
            api_key_generated: api_key.is_none(),
            api_key: api_key.unwrap_or_else(|| random_token(16)),
        }),
    }
}

/// Builds the verification keys: `jwt_secret` (HS256), `[[auth.keys]]`, `auth.jwks_files`.
/// Key files are relative to `base`; errors name the config file `path`.
pub(super) fn build_verifier(
    secret: Option<&str>,
    auth: &FileAuth,
    anon_role: Option<String>,
    path: Option<&Path>,
    base: &Path,
    read: ReadFn,
) -> Result<Verifier, ConfigError> {
    let file = || path.map(Path::to_path_buf);
    let key_error = |field: &str| {
        let field = field.to_owned();
        move |e: KeyError| ConfigError::Key {
            file: file(),
            field,
            message: e.0,
        }
    };
    let mut keys = Vec::new();
    if let Some(s) = secret {
        keys.push(
            VerifyKey::secret(Algorithm::HS256, s.as_bytes(), None)
                .map_err(key_error("jwt_secret"))?,
        );
    }
    for (i, k) in auth.keys.iter().enumerate() {
        let field = format!("auth.keys[{i}]");
        let alg = k
            .algorithm
            .parse()
            .map_err(|_| ConfigError::UnknownAlgorithm {
                file: file(),
                field: field.clone(),
                name: k.algorithm.clone(),
            })?;
        let key = match (&k.secret, &k.public_key, &k.public_key_file) {
            (Some(secret), None, None) => VerifyKey::secret(alg, secret.as_bytes(), k.kid.clone()),
            (None, Some(pem), None) => VerifyKey::public_pem(alg, pem.as_bytes(), k.kid.clone()),
            (None, None, Some(f)) => {
                let pem = read_referenced(&field, &base.join(f), read)?;
                VerifyKey::public_pem(alg, &pem, k.kid.clone())
            }
            _ => {
                return Err(ConfigError::KeySource {
                    file: file(),
                    field,
                })
            }
        }
        .map_err(key_error(&field))?;
        keys.push(key);
    }
    for f in &auth.jwks_files {
        let jwks_path = base.join(f);
        let jwks_error = |e: String| {
            key_error("auth.jwks_files")(KeyError(format!("{}: {e}", jwks_path.display())))
        };
        let text = String::from_utf8(read_referenced("auth.jwks_files", &jwks_path, read)?)
            .map_err(|e| jwks_error(e.to_string()))?;
        keys.extend(VerifyKey::from_jwks(&text).map_err(|e| jwks_error(e.0))?);
    }
    let leeway_secs = auth.leeway_secs.unwrap_or(5);
    if leeway_secs > plexus_core::auth::MAX_LEEWAY_SECS {
        return Err(ConfigError::TooLarge {
            field: "auth.leeway_secs",
            max: plexus_core::auth::MAX_LEEWAY_SECS,
        });
    }
    let options = VerifyOptions {
        leeway_secs,
        issuer: auth.issuer.clone(),
        audience: auth.audience.clone(),
        roles_claim: auth.roles_claim.clone().unwrap_or_else(|| "roles".into()),
        anon_role,
    };
    let verifier = if auth.jwks_urls.is_empty() {
        Verifier::new(keys, options)
    } else {
        // The URLs are fetched at start; the server refuses to start if no key results.
        Verifier::for_jwks_urls(keys, options)
    };
    verifier.map_err(|e| ConfigError::Verifier {
        file: file(),
        message: e.0,
    })
}

/// `auth.jwks_urls` (`PLEXUS_JWKS_URL`, comma-separated, over the file): `https://`, or
/// `http://` to a loopback host only (`localhost`, `127.0.0.0/8`, `::1`).
pub(super) fn resolve_jwks_urls(env: Option<&str>, auth: &mut FileAuth) -> Result<(), ConfigError> {
    let field = match env {
        Some(list) => {
            auth.jwks_urls = list
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            "PLEXUS_JWKS_URL"
        }
        None => "auth.jwks_urls",
    };
    for url in &auth.jwks_urls {
        check_jwks_url(url).map_err(|message| ConfigError::Invalid { field, message })?;
    }
    Ok(())
}

fn check_jwks_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    let host = url.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{text:?}: plain http:// only to a loopback host (localhost, 127.0.0.1, [::1]); use https://"
        )),
        _ => Err(format!("{text:?}: not an https:// URL")),
    }
}
