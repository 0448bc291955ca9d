//! Configuration: a TOML file overridden by `PLEXUS_*` environment variables and flags.
//!
//! Every setting and its default is listed in `docs/configuration.md`. Loading validates
//! everything up front, one section at a time (`resolve_*`), and fails with a [`ConfigError`]
//! whose message names the file, line and field.

use plexus_core::admission::AdmissionConfig;
use plexus_core::auth::{Algorithm, KeyError, Verifier, VerifyKey, VerifyOptions};
use plexus_core::broker::redis::RedisConfig;
use plexus_core::limits::Limits;
use plexus_core::policy::{ChannelRule, Policy};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";
/// `limits.http_header_timeout_secs`.
pub const DEFAULT_HTTP_HEADER_TIMEOUT_SECS: u64 = 10;
/// `limits.max_pending_connections_per_ip`.
pub const DEFAULT_MAX_PENDING_PER_IP: u32 = 128;
/// `limits.max_pending_connections`.
pub const DEFAULT_MAX_PENDING: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Prod,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Dev => "dev",
            Profile::Prod => "prod",
        }
    }

    fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "dev" => Ok(Profile::Dev),
            "prod" => Ok(Profile::Prod),
            other => Err(ConfigError::UnknownProfile {
                value: other.to_owned(),
            }),
        }
    }
}

/// The file's shape. Every field is optional; unknown fields are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    profile: Option<String>,
    listen: Option<String>,
    jwt_secret: Option<String>,
    api_key: Option<String>,
    // (admin console)
    admin_secret: Option<String>,
    // (demo)
    demo_feed: Option<bool>,
    drain_timeout_secs: Option<u64>,
    drain_notice_secs: Option<u64>,
    metrics_require_api_key: Option<bool>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    auth: FileAuth,
    tls: Option<FileTls>,
    broker: Option<String>,
    redis: Option<FileRedis>,
    #[serde(default)]
    supabase: FileSupabase,
    #[serde(default)]
    channels: Vec<ChannelRule>,
    #[serde(default)]
    hooks: crate::hook_config::FileHooks,
    #[serde(default)]
    webhooks: crate::hook_config::FileWebhooks,
}

/// `[supabase]`: serve Supabase's realtime clients (see docs/supabase.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSupabase {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRedis {
    url: Option<String>,
    prefix: Option<String>,
    node_timeout_secs: Option<u64>,
    tls_ca_file: Option<PathBuf>,
    cluster_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
    redirect_http: Option<String>,
    public_host: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    leeway_secs: Option<u64>,
    issuer: Option<String>,
    audience: Option<String>,
    roles_claim: Option<String>,
    expiry_grace_secs: Option<u64>,
    #[serde(default)]
    keys: Vec<FileKey>,
    #[serde(default)]
    jwks_files: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKey {
    kid: Option<String>,
    algorithm: String,
    secret: Option<String>,
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_message_bytes: Option<usize>,
    idle_timeout_secs: Option<u64>,
    write_timeout_secs: Option<u64>,
    outbox_max_frames: Option<usize>,
    outbox_max_bytes: Option<usize>,
    max_topic_bytes: Option<usize>,
    max_event_bytes: Option<usize>,
    max_channels_per_connection: Option<usize>,
    messages_per_second: Option<f64>,
    message_burst: Option<u32>,
    longpoll_window_secs: Option<u64>,
    http_header_timeout_secs: Option<u64>,
    history_max_bytes: Option<usize>,
    history_topic_max_bytes: Option<usize>,
    history_idle_secs: Option<u64>,
    max_pending_connections_per_ip: Option<u32>,
    max_pending_connections: Option<usize>,
    max_connections_per_ip: Option<u32>,
    max_connections_per_user: Option<u32>,
    connect_rate_per_ip: Option<f64>,
    connect_burst_per_ip: Option<u32>,
}

/// The resolved configuration the server runs with.
#[derive(Debug)]
pub struct Config {
    pub profile: Profile,
    pub listen: SocketAddr,
    /// HS256 secret; `generated` is true when the dev profile made one up for this run.
    pub jwt_secret: String,
    pub jwt_secret_generated: bool,
    pub api_key: String,
    pub api_key_generated: bool,
    // (admin console)
    /// The secret that signs in to `/admin`; `None`: the console is disabled (the prod
    /// default). The dev profile defaults it to the API key.
    pub admin_secret: Option<String>,
    // (demo)
    /// The server publishes the demo's live data (`demo:live`) through its own HTTP API while
    /// someone subscribes: default on in dev, off in prod.
    pub demo_feed: bool,
    pub drain_timeout: Duration,
    /// On SIGTERM: how long `/health` says `draining` (new connections refused with 503)
    /// before the listener closes and clients are closed.
    pub drain_notice: Duration,
    /// `/metrics` answers only with the API key.
    pub metrics_require_api_key: bool,
    pub limits: Limits,
    /// Connections that are not admitted clients (HTTP requests, handshakes): how long one may
    /// take to send its request headers (also the TLS handshake and keep-alive idle time).
    pub http_header_timeout: Duration,
    /// Caps on those connections, per client address and in total.
    pub gate: crate::gate::GateLimits,
    pub admission: AdmissionConfig,
    pub policy: Policy,
    pub verifier: Verifier,
    /// Native TLS: serve https/wss on `listen` with these files.
    pub tls: Option<crate::tls::TlsFiles>,
    /// A plain-HTTP listener that redirects to https (off unless configured).
    pub http_redirect: Option<SocketAddr>,
    /// Where redirects point: `https://<public_host><path>` (never the request's `Host`).
    pub public_host: Option<String>,
    /// `None`: the embedded in-memory broker; `Some`: cluster mode on Redis.
    pub redis: Option<RedisConfig>,
    /// Supabase realtime clients are served: `realtime:` channels, `/realtime/v1/websocket`,
    /// the `apikey` parameter as a token source.
    pub supabase: bool,
    /// Application hooks and webhooks (`[hooks]`, `[webhooks]`); `None`: none configured.
    pub hooks: Option<crate::hook_config::HookSettings>,
    /// Settings that are valid but probably not what was meant: logged at start and printed
    /// by `plexus check`.
    pub warnings: Vec<String>,
    pub source: Option<PathBuf>,
}

/// Environment overrides, read once (tests pass their own). This is the only reader of the
/// `PLEXUS_*` settings below; the flags `--listen` and `--profile` have no `env` of their own.
/// (`PLEXUS_CONFIG` picks the file and is clap's, as `--config`; `PLEXUS_LOG` is the logger's.)
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub listen: Option<String>,
    pub profile: Option<String>,
    pub jwt_secret: Option<String>,
    pub api_key: Option<String>,
    pub admin_secret: Option<String>,
    /// `PLEXUS_DEMO_FEED`: `true`/`1` or `false`/`0`.
    pub demo_feed: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub broker: Option<String>,
    pub redis_url: Option<String>,
    /// `PLEXUS_CLUSTER_SECRET`: signs node-to-node messages (`redis.cluster_secret`).
    pub cluster_secret: Option<String>,
    /// `PLEXUS_SUPABASE`: `true`/`1` or `false`/`0`.
    pub supabase: Option<String>,
    /// The hook and webhook variables that are set ([`crate::hook_config::ENV_VARS`]).
    pub hooks: Vec<(String, String)>,
}

impl Env {
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            listen: get("PLEXUS_LISTEN"),
            profile: get("PLEXUS_PROFILE"),
            jwt_secret: get("PLEXUS_JWT_SECRET"),
            api_key: get("PLEXUS_API_KEY"),
            admin_secret: get("PLEXUS_ADMIN_SECRET"),
            demo_feed: get("PLEXUS_DEMO_FEED"),
            tls_cert: get("PLEXUS_TLS_CERT"),
            tls_key: get("PLEXUS_TLS_KEY"),
            broker: get("PLEXUS_BROKER"),
            redis_url: get("PLEXUS_REDIS_URL"),
            cluster_secret: get("PLEXUS_CLUSTER_SECRET"),
            supabase: get("PLEXUS_SUPABASE"),
            hooks: crate::hook_config::ENV_VARS
                .iter()
                .filter_map(|k| get(k).map(|v| (k.to_string(), v)))
                .collect(),
        }
    }
}

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
    /// The same for text given to [`parse_str`], which has no file.
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
        missing.push("a JWT secret (jwt_secret in the file or PLEXUS_JWT_SECRET) or [[auth.keys]]");
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

/// Reads the file, naming it in the error.
fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and parses the file, naming it in every error.
fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    parse_toml(&read_text(path)?, Some(path))
}

/// Parses the TOML text of the file `path` (`None`: text given to [`parse_str`]).
fn parse_toml(text: &str, path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|source| match path {
        Some(path) => ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        },
        None => ConfigError::ParseText { source },
    })
}

/// Reads a file that the configuration names (a key, a JWKS, a CA): `std::fs::read` for
/// [`load`], a refusal for [`parse_str`], which reads nothing.
type ReadFn<'a> = &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>;

/// For an error about `channels[i]`, the line of that rule's `[[channels]]` header, so that
/// the message points into the file.
fn rule_line(text: &str, index: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[channels]]"))
        .nth(index)
        .map(|(n, _)| n + 1)
}

fn random_token(bytes: usize) -> String {
    use rand::Rng;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The profile: flag, environment, file; else prod with a file and dev without.
fn resolve_profile(
    flag: Option<&str>,
    env: &Env,
    file: &FileConfig,
    has_file: bool,
) -> Result<Profile, ConfigError> {
    match flag.or(env.profile.as_deref()).or(file.profile.as_deref()) {
        Some(p) => Profile::parse(p),
        None if has_file => Ok(Profile::Prod),
        None => Ok(Profile::Dev),
    }
}

/// The listen address: flag, environment, file, default; loopback only in dev.
fn resolve_listen(
    flag: Option<&str>,
    env: &Env,
    file: &FileConfig,
    profile: Profile,
) -> Result<SocketAddr, ConfigError> {
    let value = flag
        .or(env.listen.as_deref())
        .or(file.listen.as_deref())
        .unwrap_or(DEFAULT_LISTEN);
    // An address, or a host name and port (`localhost:4000`): its first address.
    let addr: SocketAddr = match value.parse() {
        Ok(a) => a,
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(value)
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| ConfigError::Listen {
                value: value.to_owned(),
            })?,
    };
    if profile == Profile::Dev && !addr.ip().is_loopback() {
        return Err(ConfigError::DevNotLoopback { addr });
    }
    Ok(addr)
}

/// The JWT secret and API key, and whether the dev profile generated them.
struct Secrets {
    jwt_secret: String,
    jwt_secret_generated: bool,
    api_key: String,
    api_key_generated: bool,
}

/// Secrets from environment, then file: required in prod, made up for this run in dev.
fn resolve_secrets(profile: Profile, env: &Env, file: &FileConfig) -> Result<Secrets, ConfigError> {
    let secret = env.jwt_secret.clone().or(file.jwt_secret.clone());
    let api_key = env.api_key.clone().or(file.api_key.clone());
    match profile {
        Profile::Prod => {
            let has_keys = !file.auth.keys.is_empty() || !file.auth.jwks_files.is_empty();
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

/// Per-connection limits from `[limits]` (and `auth.expiry_grace_secs`), checked for sense.
fn resolve_limits(l: &FileLimits, expiry_grace_secs: Option<u64>) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let secs = |v: Option<u64>, default: Duration| v.map(Duration::from_secs).unwrap_or(default);
    let limits = Limits {
        max_message_bytes: l.max_message_bytes.unwrap_or(defaults.max_message_bytes),
        idle_timeout: secs(l.idle_timeout_secs, defaults.idle_timeout),
        write_timeout: secs(l.write_timeout_secs, defaults.write_timeout),
        outbox_max_frames: l.outbox_max_frames.unwrap_or(defaults.outbox_max_frames),
        outbox_max_bytes: l.outbox_max_bytes.unwrap_or(defaults.outbox_max_bytes),
        max_topic_bytes: l.max_topic_bytes.unwrap_or(defaults.max_topic_bytes),
        max_event_bytes: l.max_event_bytes.unwrap_or(defaults.max_event_bytes),
        max_channels_per_connection: l
            .max_channels_per_connection
            .unwrap_or(defaults.max_channels_per_connection),
        expiry_grace: secs(expiry_grace_secs, defaults.expiry_grace),
        messages_per_second: l
            .messages_per_second
            .unwrap_or(defaults.messages_per_second),
        message_burst: l.message_burst.unwrap_or(defaults.message_burst),
        longpoll_window: secs(l.longpoll_window_secs, defaults.longpoll_window),
        history: plexus_core::limits::HistoryBudget {
            max_bytes: l.history_max_bytes.unwrap_or(defaults.history.max_bytes),
            topic_max_bytes: l
                .history_topic_max_bytes
                .unwrap_or(defaults.history.topic_max_bytes),
            idle: secs(l.history_idle_secs, defaults.history.idle),
        },
    };
    if limits.history.topic_max_bytes > limits.history.max_bytes {
        return Err(ConfigError::TooLarge {
            field: "limits.history_topic_max_bytes (more than limits.history_max_bytes)",
            max: limits.history.max_bytes as u64,
        });
    }
    if limits.messages_per_second.is_nan() || limits.messages_per_second < 0.0 {
        return Err(ConfigError::Negative {
            field: "limits.messages_per_second",
        });
    }
    for (field, value, min) in [
        (
            "limits.max_message_bytes",
            limits.max_message_bytes as u64,
            1024,
        ),
        (
            "limits.longpoll_window_secs",
            limits.longpoll_window.as_secs(),
            1,
        ),
        (
            "limits.write_timeout_secs",
            limits.write_timeout.as_secs(),
            1,
        ),
        ("limits.idle_timeout_secs", limits.idle_timeout.as_secs(), 1),
        ("limits.history_idle_secs", limits.history.idle.as_secs(), 1),
        (
            "limits.http_header_timeout_secs",
            l.http_header_timeout_secs
                .unwrap_or(DEFAULT_HTTP_HEADER_TIMEOUT_SECS),
            1,
        ),
    ] {
        if value < min {
            return Err(ConfigError::TooSmall { field, min });
        }
    }
    Ok(limits)
}

/// Who may connect: per-IP/per-user caps from `[limits]`, origins, trusted proxies.
fn resolve_admission(file: &FileConfig, profile: Profile) -> Result<AdmissionConfig, ConfigError> {
    let defaults = AdmissionConfig::default();
    let l = &file.limits;
    let connect_rate_per_ip = l
        .connect_rate_per_ip
        .unwrap_or(defaults.connect_rate_per_ip);
    if connect_rate_per_ip.is_nan() || connect_rate_per_ip < 0.0 {
        return Err(ConfigError::Negative {
            field: "limits.connect_rate_per_ip",
        });
    }
    let trusted_proxies = file
        .trusted_proxies
        .iter()
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::TrustedProxy { value: p.clone() })
        })
        .collect::<Result<_, _>>()?;
    Ok(AdmissionConfig {
        max_connections_per_ip: l
            .max_connections_per_ip
            .unwrap_or(defaults.max_connections_per_ip),
        max_connections_per_user: l
            .max_connections_per_user
            .unwrap_or(defaults.max_connections_per_user),
        connect_rate_per_ip,
        connect_burst_per_ip: l
            .connect_burst_per_ip
            .unwrap_or(defaults.connect_burst_per_ip),
        allowed_origins: file.allowed_origins.clone(),
        allow_loopback_origins: profile == Profile::Dev,
        trusted_proxies,
    })
}

/// The `[[channels]]` rules; with none, dev gets its open default and prod denies every join.
fn resolve_policy(
    rules: Vec<ChannelRule>,
    profile: Profile,
    path: Option<&Path>,
    text: Option<&str>,
) -> Result<Policy, ConfigError> {
    if rules.is_empty() && profile == Profile::Dev {
        // (demo) the chat's room:* and the demo's classroom and live-data topics.
        return crate::demo::rules::dev_policy().map_err(|e| ConfigError::Rule {
            file: None,
            line: None,
            message: e.to_string(),
        });
    }
    Policy::new(rules).map_err(|e| ConfigError::Rule {
        file: path.map(Path::to_path_buf),
        line: text.and_then(|t| rule_line(t, e.index)),
        message: e.to_string(),
    })
}

/// Builds the verification keys: `jwt_secret` (HS256), `[[auth.keys]]`, `auth.jwks_files`.
/// Key files are relative to `base`; errors name the config file `path`.
fn build_verifier(
    secret: Option<&str>,
    auth: &FileAuth,
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
    };
    Verifier::new(keys, options).map_err(|e| ConfigError::Verifier {
        file: file(),
        message: e.0,
    })
}

/// Reads a file the configuration points to (`field` names the setting).
fn read_referenced(field: &str, path: &Path, read: ReadFn) -> Result<Vec<u8>, ConfigError> {
    read(path).map_err(|source| ConfigError::ReadFile {
        field: field.to_owned(),
        path: path.to_path_buf(),
        source,
    })
}

/// Native TLS (environment, then `[tls]`) and the optional plain-HTTP redirect listener.
fn resolve_tls(
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

/// The broker: `None` for the in-memory one, else Redis from environment, then `[redis]`.
/// `PLEXUS_REDIS_URL` alone selects Redis.
fn resolve_broker(
    env: &Env,
    file: &FileConfig,
    base: &Path,
    read: ReadFn,
) -> Result<Option<RedisConfig>, ConfigError> {
    let default_broker = if env.redis_url.is_some() {
        "redis"
    } else {
        "memory"
    };
    match env
        .broker
        .as_deref()
        .or(file.broker.as_deref())
        .unwrap_or(default_broker)
    {
        "memory" => Ok(None),
        "redis" => resolve_redis(env, file.redis.as_ref(), base, read).map(Some),
        other => Err(ConfigError::UnknownBroker {
            value: other.to_owned(),
        }),
    }
}

/// The `[redis]` section, with `PLEXUS_REDIS_URL` over `redis.url`.
fn resolve_redis(
    env: &Env,
    r: Option<&FileRedis>,
    base: &Path,
    read: ReadFn,
) -> Result<RedisConfig, ConfigError> {
    let defaults = RedisConfig::default();
    let node_timeout = r
        .and_then(|r| r.node_timeout_secs)
        .map(Duration::from_secs)
        .unwrap_or(defaults.node_timeout);
    if node_timeout < Duration::from_secs(1) {
        return Err(ConfigError::TooSmall {
            field: "redis.node_timeout_secs",
            min: 1,
        });
    }
    let tls_ca = match r.and_then(|r| r.tls_ca_file.as_ref()) {
        Some(f) => Some(read_referenced("redis.tls_ca_file", &base.join(f), read)?),
        None => None,
    };
    Ok(RedisConfig {
        url: env
            .redis_url
            .clone()
            .or_else(|| r.and_then(|r| r.url.clone()))
            .unwrap_or(defaults.url),
        prefix: r.and_then(|r| r.prefix.clone()).unwrap_or(defaults.prefix),
        node_timeout,
        tls_ca,
        history_idle: RedisConfig::default().history_idle,
        // Set by `resolve` (it needs the API key).
        cluster_secret: String::new(),
    })
}

/// What the dev profile signs node-to-node messages with when it has neither a cluster secret
/// nor an API key of its own (both made up per node, so no two nodes would share them).
const DEV_CLUSTER_SECRET: &str = "plexus dev cluster secret (not secret)";

/// The secret node-to-node messages are signed with (`PLEXUS_CLUSTER_SECRET` over
/// `redis.cluster_secret`): at least 16 characters in prod. Unset, it is the API key, which
/// every node of a cluster shares anyway (the broker derives its key from it, never using it
/// as is); in dev without an API key, a well-known one, with a warning.
fn resolve_cluster_secret(
    profile: Profile,
    env: &Env,
    r: Option<&FileRedis>,
    secrets: &Secrets,
    warnings: &mut Vec<String>,
) -> Result<String, ConfigError> {
    let given = env
        .cluster_secret
        .clone()
        .or_else(|| r.and_then(|r| r.cluster_secret.clone()));
    match given {
        Some(s) if s.is_empty() => Err(ConfigError::Invalid {
            field: "redis.cluster_secret",
            message: "must not be empty (leave it out to derive it from the API key)".into(),
        }),
        Some(s) if profile == Profile::Prod && s.len() < 16 => Err(ConfigError::Invalid {
            field: "redis.cluster_secret",
            message: "must be at least 16 characters in the prod profile".into(),
        }),
        Some(s) => Ok(s),
        None if !secrets.api_key_generated && !secrets.api_key.is_empty() => {
            Ok(secrets.api_key.clone())
        }
        None => {
            warnings.push(
                "dev profile with Redis and neither redis.cluster_secret nor an API key: \
                 node-to-node messages are signed with a well-known dev secret \
                 (set PLEXUS_CLUSTER_SECRET or PLEXUS_API_KEY on every node)"
                    .to_owned(),
            );
            Ok(DEV_CLUSTER_SECRET.to_owned())
        }
    }
}

/// Resolves the configuration, one section at a time, each from flag (`listen`, `profile`),
/// environment, file and default, in that order of priority.
pub fn load(
    path: Option<&Path>,
    env: &Env,
    flag_listen: Option<&str>,
    flag_profile: Option<&str>,
) -> Result<Config, ConfigError> {
    let text = path.map(read_text).transpose()?;
    resolve(
        text.as_deref(),
        path,
        env,
        flag_listen,
        flag_profile,
        &|f| std::fs::read(f),
    )
}

/// Resolves the configuration from TOML `text` as [`load`] does from a file holding it (so
/// the default profile is prod), except that it touches no file system: a setting that names
/// a file to read (`auth.keys[i].public_key_file`, `auth.jwks_files`, `redis.tls_ca_file`)
/// fails with [`ConfigError::ReadFile`], and errors name no file. Pure, for tests and the
/// fuzzer (`fuzz/fuzz_targets/config.rs`). TLS paths are only recorded, as by `load`.
pub fn parse_str(
    text: &str,
    env: &Env,
    flag_listen: Option<&str>,
    flag_profile: Option<&str>,
) -> Result<Config, ConfigError> {
    resolve(Some(text), None, env, flag_listen, flag_profile, &|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "parse_str reads no files",
        ))
    })
}

/// [`load`] once the file's `text` (if any) is read; `path` is that file (named in errors,
/// base of relative paths), `None` for [`parse_str`]; `read` reads the files it names.
fn resolve(
    text: Option<&str>,
    path: Option<&Path>,
    env: &Env,
    flag_listen: Option<&str>,
    flag_profile: Option<&str>,
    read: ReadFn,
) -> Result<Config, ConfigError> {
    let mut file = match text {
        Some(t) => parse_toml(t, path)?,
        None => FileConfig::default(),
    };
    // Files the config file names (keys, TLS, CA) are relative to its directory.
    let base = path.and_then(Path::parent).unwrap_or(Path::new(""));
    let profile = resolve_profile(flag_profile, env, &file, text.is_some())?;
    let listen = resolve_listen(flag_listen, env, &file, profile)?;
    let secrets = resolve_secrets(profile, env, &file)?;
    let limits = resolve_limits(&file.limits, file.auth.expiry_grace_secs)?;
    let admission = resolve_admission(&file, profile)?;
    let supabase = match env.supabase.as_deref() {
        None => file.supabase.enabled.unwrap_or(false),
        Some("1" | "true") => true,
        Some("0" | "false") => false,
        Some(other) => {
            return Err(ConfigError::Invalid {
                field: "PLEXUS_SUPABASE",
                message: format!("{other:?} is not true, false, 1 or 0"),
            })
        }
    };
    let admin_secret = resolve_admin_secret(profile, env, &file, &secrets.api_key)?;
    let demo_feed = match env.demo_feed.as_deref() {
        None => file.demo_feed.unwrap_or(profile == Profile::Dev),
        Some("1" | "true") => true,
        Some("0" | "false") => false,
        Some(other) => {
            return Err(ConfigError::Invalid {
                field: "PLEXUS_DEMO_FEED",
                message: format!("{other:?} is not true, false, 1 or 0"),
            })
        }
    };
    let mut warnings = Vec::new();
    if profile == Profile::Prod && file.channels.is_empty() {
        warnings.push(
            "no [[channels]] rules: the prod profile refuses every join (docs/configuration.md)"
                .to_owned(),
        );
    }
    let rules_use_hooks = file
        .channels
        .iter()
        .any(|r| r.push_hook.is_some() || r.join_hook.as_deref().is_some_and(|u| u != "off"));
    let hooks =
        crate::hook_config::resolve(&env.hooks, &file.hooks, &file.webhooks, rules_use_hooks)?;
    let policy = resolve_policy(std::mem::take(&mut file.channels), profile, path, text)?
        .with_supabase(supabase);
    let hs256 = Some(secrets.jwt_secret.as_str()).filter(|s| !s.is_empty());
    let verifier = build_verifier(hs256, &file.auth, path, base, read)?;
    let (tls, http_redirect) = resolve_tls(env, file.tls.as_ref(), base, profile)?;
    let mut redis = resolve_broker(env, &file, base, read)?;
    if let Some(r) = redis.as_mut() {
        // History keys in Redis expire too (after their TTL, else after this idle time).
        r.history_idle = limits.history.idle;
        r.cluster_secret =
            resolve_cluster_secret(profile, env, file.redis.as_ref(), &secrets, &mut warnings)?;
    }
    Ok(Config {
        profile,
        listen,
        jwt_secret: secrets.jwt_secret,
        jwt_secret_generated: secrets.jwt_secret_generated,
        api_key: secrets.api_key,
        api_key_generated: secrets.api_key_generated,
        admin_secret,
        demo_feed,
        drain_timeout: Duration::from_secs(file.drain_timeout_secs.unwrap_or(10)),
        drain_notice: Duration::from_secs(file.drain_notice_secs.unwrap_or(0)),
        metrics_require_api_key: file.metrics_require_api_key.unwrap_or(false),
        limits,
        http_header_timeout: Duration::from_secs(
            file.limits
                .http_header_timeout_secs
                .unwrap_or(DEFAULT_HTTP_HEADER_TIMEOUT_SECS),
        ),
        gate: crate::gate::GateLimits {
            per_ip: file
                .limits
                .max_pending_connections_per_ip
                .unwrap_or(DEFAULT_MAX_PENDING_PER_IP),
            total: file
                .limits
                .max_pending_connections
                .unwrap_or(DEFAULT_MAX_PENDING),
        },
        admission,
        policy,
        verifier,
        tls,
        http_redirect,
        public_host: file.tls.as_ref().and_then(|t| t.public_host.clone()),
        redis,
        supabase,
        hooks,
        warnings,
        source: path.map(Path::to_path_buf),
    })
}

// (admin console)
/// `admin_secret` (`PLEXUS_ADMIN_SECRET` over the file): at least 16 characters in prod; unset
/// in prod disables `/admin`; unset in dev, the API key signs in.
fn resolve_admin_secret(
    profile: Profile,
    env: &Env,
    file: &FileConfig,
    api_key: &str,
) -> Result<Option<String>, ConfigError> {
    let given = env.admin_secret.clone().or(file.admin_secret.clone());
    match (profile, given) {
        (_, Some(s)) if s.is_empty() => Err(ConfigError::Invalid {
            field: "admin_secret",
            message: "must not be empty (leave it out to disable the console in prod)".into(),
        }),
        (Profile::Prod, Some(s)) if s.len() < 16 => Err(ConfigError::Invalid {
            field: "admin_secret",
            message: "must be at least 16 characters in the prod profile".into(),
        }),
        (_, Some(s)) => Ok(Some(s)),
        (Profile::Dev, None) => Ok(Some(api_key.to_owned())),
        (Profile::Prod, None) => Ok(None),
    }
}

/// The secret `plexus token` signs with: flag/env, else the file's.
pub fn token_secret(path: Option<&Path>, flag: Option<&str>) -> Result<String, ConfigError> {
    if let Some(s) = flag {
        return Ok(s.to_owned());
    }
    if let Some(p) = path {
        if let Some(s) = read_file(p)?.jwt_secret {
            return Ok(s);
        }
    }
    Err(ConfigError::NoTokenSecret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::new(text)
    }

    /// A minimal temp file helper (no extra dependency).
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "plexus-config-test-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn no_file_means_dev_with_generated_secrets_on_loopback() {
        let c = load(None, &Env::default(), None, None).unwrap();
        assert_eq!(c.profile, Profile::Dev);
        assert!(c.jwt_secret_generated && c.api_key_generated);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        let e = load(None, &Env::default(), Some("0.0.0.0:4000"), None).unwrap_err();
        assert!(matches!(e, ConfigError::DevNotLoopback { .. }), "{e:?}");
        assert!(e.to_string().contains("loopback"), "{e}");
    }

    #[test]
    fn prod_needs_secret_and_key() {
        let env = Env {
            profile: Some("prod".into()),
            ..Env::default()
        };
        let e = load(None, &env, None, None).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::MissingProdSecrets {
                    jwt_secret: true,
                    api_key: true
                }
            ),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("JWT secret") && e.contains("API key"), "{e}");
        let env = Env {
            profile: Some("prod".into()),
            jwt_secret: Some("0123456789abcdef0123".into()),
            api_key: Some("api-key-0123456789".into()),
            listen: Some("0.0.0.0:9000".into()),
            ..Env::default()
        };
        let c = load(None, &env, None, None).unwrap();
        assert_eq!(c.profile, Profile::Prod);
        assert_eq!(c.listen.port(), 9000);
    }

    #[test]
    fn prod_refuses_a_short_api_key_and_a_huge_leeway() {
        let env = Env {
            profile: Some("prod".into()),
            jwt_secret: Some("0123456789abcdef0123".into()),
            api_key: Some("short-key".into()),
            ..Env::default()
        };
        let e = load(None, &env, None, None).unwrap_err();
        assert!(matches!(e, ConfigError::ShortApiKey), "{e:?}");
        let f = write("[auth]\nleeway_secs = 18446744073709551615\n");
        let env = Env {
            api_key: Some("api-key-0123456789".into()),
            jwt_secret: Some("0123456789abcdef0123".into()),
            ..Env::default()
        };
        let e = load(Some(&f.0), &env, None, None).unwrap_err();
        assert!(
            e.to_string().contains("auth.leeway_secs must be at most"),
            "{e}"
        );
        let f = write("profile = \"dev\"\n[limits]\nmessages_per_second = nan\n");
        let e = load(Some(&f.0), &Env::default(), None, None).unwrap_err();
        assert!(e.to_string().contains("messages_per_second"), "{e}");
    }

    #[test]
    fn file_is_prod_and_env_overrides_it() {
        let f = write(
            "listen = \"127.0.0.1:5000\"\njwt_secret = \"file-secret-0123456789\"\napi_key = \"file-key-0123456789\"\n\
             [limits]\nidle_timeout_secs = 30\n[[channels]]\ntopic = \"room:*\"\necho = true\n",
        );
        let env = Env {
            api_key: Some("env-key-0123456789".into()),
            ..Env::default()
        };
        let c = load(Some(&f.0), &env, None, None).unwrap();
        assert_eq!(c.profile, Profile::Prod);
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.api_key, "env-key-0123456789");
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(30));
        assert!(c.policy.rules()[0].echo);
    }

    #[test]
    fn parse_str_is_load_without_files() {
        let text = "jwt_secret = \"0123456789abcdef0\"\napi_key = \"api-key-0123456789\"\n\
                    [limits]\nmax_message_bytes = 4096\n[[channels]]\ntopic = \"room:*\"\n";
        let c = parse_str(text, &Env::default(), None, None).unwrap();
        assert_eq!(c.profile, Profile::Prod);
        assert_eq!(c.limits.max_message_bytes, 4096);
        assert!(c.source.is_none());
        let f = write(text);
        let l = load(Some(&f.0), &Env::default(), None, None).unwrap();
        assert_eq!((l.profile, l.listen), (c.profile, c.listen));
        // Errors name no file, but the rule's line is still found.
        let e = parse_str(
            "[[channels]]\ntopic = \"ro*om\"\n",
            &Env::default(),
            None,
            Some("dev"),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Rule {
                    line: Some(1),
                    file: None,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = parse_str("listen = [", &Env::default(), None, None).unwrap_err();
        assert!(matches!(e, ConfigError::ParseText { .. }), "{e:?}");
        assert!(e.to_string().starts_with("invalid configuration: "), "{e}");
        // It reads no file, not even one that exists.
        let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/jwks.json");
        let e = parse_str(
            &format!("[auth]\njwks_files = [{jwks:?}]\n"),
            &Env::default(),
            None,
            Some("dev"),
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::ReadFile { .. }), "{e:?}");
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let f = write("jwt_secret = \"x\"\n[[channels]]\ntopic = \"room:*\"\nechoo = true\n");
        let e = load(Some(&f.0), &Env::default(), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4") && e.contains("echoo"), "{e}");
        let f = write("[[channels]]\ntopic = \"a\"\n\n[[channels]]\ntopic = \"ro*om\"\n");
        let env = Env {
            jwt_secret: Some("0123456789abcdef0".into()),
            api_key: Some("api-key-0123456789".into()),
            ..Env::default()
        };
        let e = load(Some(&f.0), &env, None, None).unwrap_err();
        assert!(
            matches!(e, ConfigError::Rule { line: Some(4), .. }),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains("line 4") && e.contains("channels[1]") && e.contains("topic"),
            "{e}"
        );
    }

    /// Secrets for a prod file, so that sections after them are reached.
    const PROD: &str = "jwt_secret = \"0123456789abcdef0\"\napi_key = \"api-key-0123456789\"\n";

    #[test]
    fn section_errors_name_their_field() {
        let cases = [
            (
                "[limits]\nmessages_per_second = -1.0\n",
                "limits.messages_per_second must not be negative",
            ),
            (
                "[limits]\nconnect_rate_per_ip = -0.5\n",
                "limits.connect_rate_per_ip must not be negative",
            ),
            (
                "[limits]\nmax_message_bytes = 10\n",
                "limits.max_message_bytes must be at least 1024",
            ),
            (
                "[limits]\nidle_timeout_secs = 0\n",
                "limits.idle_timeout_secs must be at least 1",
            ),
            (
                "[limits]\nhttp_header_timeout_secs = 0\n",
                "limits.http_header_timeout_secs must be at least 1",
            ),
            (
                "trusted_proxies = [\"nope\"]\n",
                "trusted_proxies: \"nope\"",
            ),
            ("broker = \"kafka\"\n", "unknown broker \"kafka\""),
            (
                "broker = \"redis\"\n[redis]\nnode_timeout_secs = 0\n",
                "redis.node_timeout_secs must be at least 1",
            ),
            (
                "[[auth.keys]]\nalgorithm = \"HS999\"\nsecret = \"s\"\n",
                "auth.keys[0]: unknown algorithm \"HS999\"",
            ),
            (
                "[[auth.keys]]\nalgorithm = \"HS256\"\n",
                "auth.keys[0]: give exactly one of",
            ),
        ];
        for (section, want) in cases {
            let f = write(&format!("{PROD}{section}"));
            let e = load(Some(&f.0), &Env::default(), None, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{section:?}: {e}");
        }
        let f = write(&format!("{PROD}[limits]\nmessages_per_second = -1.0\n"));
        let e = load(Some(&f.0), &Env::default(), None, None).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Negative {
                    field: "limits.messages_per_second"
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn cluster_secret_is_given_or_the_api_key_and_never_short_in_prod() {
        let redis = |section: &str| format!("{PROD}broker = \"redis\"\n[redis]\n{section}");
        // Unset: the API key, which every node of a cluster shares.
        let c = parse_str(&redis(""), &Env::default(), None, None).unwrap();
        assert_eq!(c.redis.unwrap().cluster_secret, "api-key-0123456789");
        // Given: the file's, the environment's over it.
        let text = redis("cluster_secret = \"file-cluster-secret-0123\"\n");
        let c = parse_str(&text, &Env::default(), None, None).unwrap();
        assert_eq!(c.redis.unwrap().cluster_secret, "file-cluster-secret-0123");
        let env = Env {
            cluster_secret: Some("env-cluster-secret-0123".into()),
            ..Env::default()
        };
        let c = parse_str(&text, &env, None, None).unwrap();
        assert_eq!(c.redis.unwrap().cluster_secret, "env-cluster-secret-0123");
        // Short in prod, or empty: refused with the key's name.
        let e = parse_str(
            &redis("cluster_secret = \"short\"\n"),
            &Env::default(),
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("redis.cluster_secret") && e.contains("16"),
            "{e}"
        );
        let e = parse_str(
            &redis("cluster_secret = \"\"\n"),
            &Env::default(),
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("redis.cluster_secret"), "{e}");
        // Dev without an API key of its own: a well-known secret, and a warning.
        let c = parse_str("broker = \"redis\"\n", &Env::default(), None, Some("dev")).unwrap();
        assert_eq!(c.redis.unwrap().cluster_secret, DEV_CLUSTER_SECRET);
        assert!(c.warnings.iter().any(|w| w.contains("cluster_secret")));
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default_for_listen_and_profile() {
        let c = load(None, &Env::default(), None, None).unwrap();
        assert_eq!(c.listen.port(), 4000);
        let f = write(&format!("{PROD}listen = \"127.0.0.1:5001\"\n"));
        let c = load(Some(&f.0), &Env::default(), None, None).unwrap();
        assert_eq!((c.listen.port(), c.profile), (5001, Profile::Prod));
        let env = Env {
            listen: Some("127.0.0.1:5002".into()),
            profile: Some("dev".into()),
            ..Env::default()
        };
        let c = load(Some(&f.0), &env, None, None).unwrap();
        assert_eq!((c.listen.port(), c.profile), (5002, Profile::Dev));
        let c = load(Some(&f.0), &env, Some("127.0.0.1:5003"), Some("prod")).unwrap();
        assert_eq!((c.listen.port(), c.profile), (5003, Profile::Prod));
    }

    #[test]
    fn missing_files_and_tokens_are_typed() {
        let missing = std::env::temp_dir().join("plexus-config-test-does-not-exist.toml");
        let e = load(Some(&missing), &Env::default(), None, None).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        assert!(e.to_string().starts_with("cannot read config file"), "{e}");
        let e = token_secret(None, None).unwrap_err();
        assert!(e.to_string().contains("--secret"), "{e}");
        assert_eq!(token_secret(None, Some("s")).unwrap(), "s");
    }
}
