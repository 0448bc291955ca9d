//! Configuration: a TOML file overridden by `PLEXUS_*` environment variables and flags.
//!
//! Every setting and its default is listed in `docs/configuration.md`. Loading validates
//! everything up front, one section at a time (`resolve_*`), and fails with a [`ConfigError`]
//! whose message names the file, line and field.
//!
//! One module per section: `auth` (secrets and token keys), `limits` (`[limits]` and who
//! may connect), `tls`, `redis` (the broker), [`hooks`] (`[hooks]` and `[webhooks]`);
//! this module holds the whole ([`Config`], [`Env`]) and the order they are resolved in.

mod auth;
mod error;
mod file;

use file::{parse_toml, read_file, read_referenced, read_text, rule_line, FileConfig, ReadFn};
pub mod hooks;
mod limits;
mod presence;
mod pusher;
mod redis;
mod tls;

pub use error::ConfigError;

use auth::{build_verifier, resolve_jwks_urls, resolve_secrets};
use limits::{resolve_admission, resolve_limits};
use plexus_core::admission::AdmissionConfig;
use plexus_core::auth::Verifier;
use plexus_core::broker::redis::RedisConfig;
use plexus_core::limits::Limits;
use plexus_core::policy::{ChannelRule, Policy};
use pusher::{resolve_pusher, resolve_pusher_webhooks};
use redis::{resolve_broker, resolve_cluster_secret};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tls::resolve_tls;

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

/// The default `[supabase] anon_role`: Supabase's anon key says `"role": "anon"`.
pub const DEFAULT_SUPABASE_ANON_ROLE: &str = "anon";

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
    /// The demo's pages are served (`/`, `/demo/*`, `/assets/*`): default on in dev, off in
    /// prod (then those paths answer 404).
    pub demo: bool,
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
    /// JWKS URLs whose keys the verifier also takes (fetched at start, then refreshed):
    /// checked `https://` (or loopback `http://`) URLs.
    pub jwks_urls: Vec<String>,
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
    /// `websocket.write_through`: the fan-out writes a broadcast straight to a plain-TCP
    /// Phoenix connection's socket while nothing is queued for it (default off: cheaper per
    /// delivery at moderate rates, but it falls behind at high ones; BENCHMARKS.md).
    pub websocket_write_through: bool,
    /// Pusher's clients and HTTP API are served for this app (`[pusher]`); `None`: off.
    pub pusher: Option<plexus_core::pusher::PusherApp>,
    /// Pusher-format webhooks (`[pusher] webhook_url`); `None`: off.
    pub pusher_webhooks: Option<plexus_core::webhooks::WebhooksConfig>,
    /// Application hooks and webhooks (`[hooks]`, `[webhooks]`); `None`: none configured.
    pub hooks: Option<hooks::HookSettings>,
    /// `presence.diff_interval_ms`: presence diffs are merged per topic over this long
    /// (zero: each is sent at once).
    pub presence_diff_interval: Duration,
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
    /// `PLEXUS_JWKS_URL`: JWKS URLs, comma-separated (replaces `auth.jwks_urls`).
    pub jwks_urls: Option<String>,
    /// `PLEXUS_ROLES_CLAIM`: the roles claim path (replaces `auth.roles_claim`).
    pub roles_claim: Option<String>,
    pub admin_secret: Option<String>,
    /// `PLEXUS_DEMO`: `true`/`1` or `false`/`0`.
    pub demo: Option<String>,
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
    /// `PLEXUS_SUPABASE_ANON_ROLE`: the role of anonymous tokens (`off`: none are accepted).
    pub supabase_anon_role: Option<String>,
    /// `PLEXUS_WEBSOCKET_WRITE_THROUGH`: `true`/`1` or `false`/`0`.
    pub websocket_write_through: Option<String>,
    /// `PLEXUS_PUSHER_APP_ID`, `PLEXUS_PUSHER_KEY`, `PLEXUS_PUSHER_SECRET`.
    pub pusher_app_id: Option<String>,
    pub pusher_key: Option<String>,
    pub pusher_secret: Option<String>,
    /// `PLEXUS_PUSHER_MAX_PRESENCE_MEMBERS`: members per presence channel (0: no limit).
    pub pusher_max_presence_members: Option<String>,
    /// `PLEXUS_PUSHER_WEBHOOK_URL`, `PLEXUS_PUSHER_WEBHOOK_EVENTS` (comma-separated).
    pub pusher_webhook_url: Option<String>,
    pub pusher_webhook_events: Option<String>,
    /// `PLEXUS_PRESENCE_DIFF_INTERVAL_MS`: `presence.diff_interval_ms`.
    pub presence_diff_interval_ms: Option<String>,
    /// The hook and webhook variables that are set ([`hooks::ENV_VARS`]).
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
            jwks_urls: get("PLEXUS_JWKS_URL"),
            roles_claim: get("PLEXUS_ROLES_CLAIM"),
            admin_secret: get("PLEXUS_ADMIN_SECRET"),
            demo: get("PLEXUS_DEMO"),
            demo_feed: get("PLEXUS_DEMO_FEED"),
            tls_cert: get("PLEXUS_TLS_CERT"),
            tls_key: get("PLEXUS_TLS_KEY"),
            broker: get("PLEXUS_BROKER"),
            redis_url: get("PLEXUS_REDIS_URL"),
            cluster_secret: get("PLEXUS_CLUSTER_SECRET"),
            supabase: get("PLEXUS_SUPABASE"),
            supabase_anon_role: get("PLEXUS_SUPABASE_ANON_ROLE"),
            websocket_write_through: get("PLEXUS_WEBSOCKET_WRITE_THROUGH"),
            pusher_app_id: get("PLEXUS_PUSHER_APP_ID"),
            pusher_key: get("PLEXUS_PUSHER_KEY"),
            pusher_secret: get("PLEXUS_PUSHER_SECRET"),
            pusher_max_presence_members: get("PLEXUS_PUSHER_MAX_PRESENCE_MEMBERS"),
            pusher_webhook_url: get("PLEXUS_PUSHER_WEBHOOK_URL"),
            pusher_webhook_events: get("PLEXUS_PUSHER_WEBHOOK_EVENTS"),
            presence_diff_interval_ms: get("PLEXUS_PRESENCE_DIFF_INTERVAL_MS"),
            hooks: hooks::ENV_VARS
                .iter()
                .filter_map(|k| get(k).map(|v| (k.to_string(), v)))
                .collect(),
        }
    }
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
    resolve_jwks_urls(env.jwks_urls.as_deref(), &mut file.auth)?;
    if let Some(path) = &env.roles_claim {
        file.auth.roles_claim = Some(path.clone());
    }
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
    let pusher = resolve_pusher(profile, env, &file.pusher)?;
    let pusher_webhooks =
        resolve_pusher_webhooks(env, &file.pusher, &file.webhooks, pusher.as_ref())?;
    let admin_secret = resolve_admin_secret(profile, env, &file, &secrets.api_key)?;
    let presence_diff_interval =
        presence::resolve_diff_interval(env.presence_diff_interval_ms.as_deref(), &file.presence)?;
    let demo = env_bool("PLEXUS_DEMO", env.demo.as_deref())?
        .or(file.demo)
        .unwrap_or(profile == Profile::Dev);
    let demo_feed = env_bool("PLEXUS_DEMO_FEED", env.demo_feed.as_deref())?
        .or(file.demo_feed)
        .unwrap_or(profile == Profile::Dev);
    let websocket_write_through = env_bool(
        "PLEXUS_WEBSOCKET_WRITE_THROUGH",
        env.websocket_write_through.as_deref(),
    )?
    .or(file.websocket.write_through)
    .unwrap_or(false);
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
    let hooks = hooks::resolve(&env.hooks, &file.hooks, &file.webhooks, rules_use_hooks)?;
    let policy = resolve_policy(std::mem::take(&mut file.channels), profile, path, text)?
        .with_supabase(supabase);
    let hs256 = Some(secrets.jwt_secret.as_str()).filter(|s| !s.is_empty());
    // Anonymous tokens (Supabase's anon key) only where Supabase's clients are served.
    let anon_role = supabase
        .then(|| {
            env.supabase_anon_role
                .clone()
                .or_else(|| file.supabase.anon_role.clone())
                .unwrap_or_else(|| DEFAULT_SUPABASE_ANON_ROLE.to_owned())
        })
        .filter(|r| !r.is_empty() && r != "off");
    let verifier = build_verifier(hs256, &file.auth, anon_role, path, base, read)?;
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
        demo,
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
        jwks_urls: std::mem::take(&mut file.auth.jwks_urls),
        tls,
        http_redirect,
        public_host: file.tls.as_ref().and_then(|t| t.public_host.clone()),
        redis,
        supabase,
        websocket_write_through,
        pusher,
        pusher_webhooks,
        hooks,
        presence_diff_interval,
        warnings,
        source: path.map(Path::to_path_buf),
    })
}

/// A boolean environment variable: `true`/`1` or `false`/`0`; `None` when unset.
fn env_bool(field: &'static str, value: Option<&str>) -> Result<Option<bool>, ConfigError> {
    match value {
        None => Ok(None),
        Some("1" | "true") => Ok(Some(true)),
        Some("0" | "false") => Ok(Some(false)),
        Some(other) => Err(ConfigError::Invalid {
            field,
            message: format!("{other:?} is not true, false, 1 or 0"),
        }),
    }
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
mod tests;
