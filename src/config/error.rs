//! [`ConfigError`]: why a configuration cannot be loaded, each message naming the file,
//! line or field to fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why the configuration cannot be loaded. `main` prints it as `plexus: {error}` and exits 2,
/// so each message names the file, line or field to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Bad TOML or a field of the wrong type or name; the message has the line.
    #[error("invalid config file {}: {source}", .path.display())]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// The same for text given to [`parse_str`](super::parse_str), which has no file.
    #[error("invalid configuration: {source}")]
    ParseText { source: toml::de::Error },
    #[error("unknown profile {value:?}: expected \"dev\" or \"prod\"")]
    UnknownProfile { value: String },
    #[error("invalid listen address {value:?}: expected host:port, e.g. 127.0.0.1:4000")]
    Listen { value: String },
    #[error(
        "the dev profile only binds loopback addresses, not {addr}: its token endpoint is open to anyone. \
         Use PLEXUS_PROFILE=prod with PLEXUS_JWT_SECRET and PLEXUS_API_KEY to listen on {addr}."
    )]
    DevNotLoopback { addr: SocketAddr },
    #[error("the dev profile only binds loopback addresses, not {addr} (tls.redirect_http)")]
    DevRedirectNotLoopback { addr: SocketAddr },
    /// The prod profile lacks a way to verify tokens (`jwt_secret`), an API key, or both.
    #[error("the prod profile needs {}", missing_secrets(*.jwt_secret, *.api_key))]
    MissingProdSecrets { jwt_secret: bool, api_key: bool },
    #[error("jwt_secret must be at least 16 characters in the prod profile")]
    ShortJwtSecret,
    #[error("api_key must be at least 16 characters in the prod profile")]
    ShortApiKey,
    #[error("{field} must not be negative")]
    Negative { field: &'static str },
    #[error("{field} must be at least {min}")]
    TooSmall { field: &'static str, min: u64 },
    /// A number above its maximum.
    #[error("{field} must be at most {max}")]
    TooLarge { field: &'static str, max: u64 },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("trusted_proxies: {value:?} is not an IP address or CIDR range")]
    TrustedProxy { value: String },
    /// A `[[channels]]` rule is invalid; `line` is that rule's header in `file`.
    #[error("{}{message}", in_file(.file.as_deref(), *.line))]
    Rule {
        file: Option<PathBuf>,
        line: Option<usize>,
        message: String,
    },
    /// A verification key (`jwt_secret`, `auth.keys[i]`, `auth.jwks_files`) is unusable.
    #[error("{}{field}: {message}", in_file(.file.as_deref(), None))]
    Key {
        file: Option<PathBuf>,
        field: String,
        message: String,
    },
    #[error(
        "{}{field}: unknown algorithm {name:?}: use HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384 or EdDSA",
        in_file(.file.as_deref(), None)
    )]
    UnknownAlgorithm {
        file: Option<PathBuf>,
        field: String,
        name: String,
    },
    #[error(
        "{}{field}: give exactly one of secret, public_key, public_key_file",
        in_file(.file.as_deref(), None)
    )]
    KeySource {
        file: Option<PathBuf>,
        field: String,
    },
    /// The keys do not make a verifier (e.g. there is none).
    #[error("{}{message}", in_file(.file.as_deref(), None))]
    Verifier {
        file: Option<PathBuf>,
        message: String,
    },
    /// A file the configuration points to (a key, a JWKS, a CA) cannot be read.
    #[error("{field}: cannot read {}: {source}", .path.display())]
    ReadFile {
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS needs both a certificate and a key (tls.cert and tls.key, or PLEXUS_TLS_CERT and PLEXUS_TLS_KEY)")]
    TlsPair,
    #[error("invalid tls.redirect_http {value:?}: expected host:port")]
    Redirect { value: String },
    #[error("tls.redirect_http needs tls.public_host: the host name (and :port, if not 443) that redirects point to, e.g. \"chat.example.com\"")]
    RedirectHost,
    #[error("unknown broker {value:?}: expected \"memory\" or \"redis\"")]
    UnknownBroker { value: String },
    #[error("no secret: pass --secret, set PLEXUS_JWT_SECRET, or give --config with jwt_secret")]
    NoTokenSecret,
}

/// "a JWT secret … and an API key": what `MissingProdSecrets` lacks.
fn missing_secrets(jwt_secret: bool, api_key: bool) -> String {
    let mut missing = Vec::new();
    if jwt_secret {
        missing.push("a JWT secret (jwt_secret in the file or PLEXUS_JWT_SECRET), [[auth.keys]], auth.jwks_files or auth.jwks_urls (PLEXUS_JWKS_URL)");
    }
    if api_key {
        missing.push("an API key (api_key in the file or PLEXUS_API_KEY)");
    }
    missing.join(" and ")
}

/// "invalid config file F, line N: " for errors about the file's content ("" without a file).
fn in_file(file: Option<&Path>, line: Option<usize>) -> String {
    match (file, line) {
        (Some(f), Some(n)) => format!("invalid config file {}, line {n}: ", f.display()),
        (Some(f), None) => format!("invalid config file {}: ", f.display()),
        (None, _) => String::new(),
    }
}
