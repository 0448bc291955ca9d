//! The `[tls]` section (or `PLEXUS_TLS_CERT`/`PLEXUS_TLS_KEY`): native TLS and the optional
//! plain-HTTP redirect listener.

use super::{ConfigError, Env, Profile};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) redirect_http: Option<String>,
    pub(super) public_host: Option<String>,
}

/// Native TLS (environment, then `[tls]`) and the optional plain-HTTP redirect listener.
pub(super) fn resolve_tls(
    env: &Env,
    file_tls: Option<&FileTls>,
    base: &Path,
    profile: Profile,
) -> Result<(Option<crate::tls::TlsFiles>, Option<SocketAddr>), ConfigError> {
    let cert = env
        .tls_cert
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| file_tls.map(|t| base.join(&t.cert)));
    let key = env
        .tls_key
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| file_tls.map(|t| base.join(&t.key)));
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert, key }),
        (None, None) => None,
        _ => return Err(ConfigError::TlsPair),
    };
    let redirect = match file_tls.and_then(|t| t.redirect_http.as_deref()) {
        Some(r) => {
            let addr: SocketAddr = r.parse().map_err(|_| ConfigError::Redirect {
                value: r.to_owned(),
            })?;
            if profile == Profile::Dev && !addr.ip().is_loopback() {
                return Err(ConfigError::DevRedirectNotLoopback { addr });
            }
            if file_tls
                .and_then(|t| t.public_host.as_deref())
                .is_none_or(str::is_empty)
            {
                return Err(ConfigError::RedirectHost);
            }
            Some(addr)
        }
        None => None,
    };
    Ok((tls, redirect))
}
