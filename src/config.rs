//! Configuration: a TOML file overridden by `PLEXUS_*` environment variables and flags.
//!
//! Every setting and its default is listed in `docs/configuration.md`. Loading validates
//! everything up front and fails with a message that names the file, line and field.

use plexus_core::admission::AdmissionConfig;
use plexus_core::auth::{Verifier, VerifyKey, VerifyOptions};
use plexus_core::limits::Limits;
use plexus_core::policy::{ChannelRule, Policy};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4000";

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

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "dev" => Ok(Profile::Dev),
            "prod" => Ok(Profile::Prod),
            other => Err(format!(
                "unknown profile {other:?}: expected \"dev\" or \"prod\""
            )),
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
    drain_timeout_secs: Option<u64>,
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
    channels: Vec<ChannelRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRedis {
    url: Option<String>,
    prefix: Option<String>,
    node_timeout_secs: Option<u64>,
    tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
    redirect_http: Option<String>,
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
    pub drain_timeout: Duration,
    pub limits: Limits,
    pub admission: AdmissionConfig,
    pub policy: Policy,
    pub verifier: Verifier,
    /// Native TLS: serve https/wss on `listen` with these files.
    pub tls: Option<crate::tls::TlsFiles>,
    /// A plain-HTTP listener that redirects to https (off unless configured).
    pub http_redirect: Option<SocketAddr>,
    /// `None`: the embedded in-memory broker; `Some`: cluster mode on Redis.
    pub redis: Option<plexus_core::broker::redis::RedisConfig>,
    pub source: Option<PathBuf>,
}

/// Environment overrides, read once (tests pass their own).
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub listen: Option<String>,
    pub profile: Option<String>,
    pub jwt_secret: Option<String>,
    pub api_key: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub broker: Option<String>,
    pub redis_url: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            listen: get("PLEXUS_LISTEN"),
            profile: get("PLEXUS_PROFILE"),
            jwt_secret: get("PLEXUS_JWT_SECRET"),
            api_key: get("PLEXUS_API_KEY"),
            tls_cert: get("PLEXUS_TLS_CERT"),
            tls_key: get("PLEXUS_TLS_KEY"),
            broker: get("PLEXUS_BROKER"),
            redis_url: get("PLEXUS_REDIS_URL"),
        }
    }
}

/// Reads and parses the file, naming it in every error.
fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
}

/// For an error about `channels[i]`, the line of that rule's `[[channels]]` header
/// (", line N"), so that the message points into the file.
fn rule_line(path: &Path, error: &str) -> String {
    let Some(i) = error
        .strip_prefix("channels[")
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return String::new();
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[channels]]"))
        .nth(i)
        .map(|(n, _)| format!(", line {}", n + 1))
        .unwrap_or_default()
}

fn random_token(bytes: usize) -> String {
    use rand::Rng;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(&mut buf[..]);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the verification keys: `jwt_secret` (HS256), `[[auth.keys]]`, `auth.jwks_files`.
fn build_verifier(secret: Option<&str>, auth: &FileAuth, base: &Path) -> Result<Verifier, String> {
    let mut keys = Vec::new();
    if let Some(s) = secret {
        keys.push(VerifyKey::secret(
            jsonwebtoken_alg("HS256")?,
            s.as_bytes(),
            None,
        )?);
    }
    for (i, k) in auth.keys.iter().enumerate() {
        let ctx = |e: String| format!("auth.keys[{i}]: {e}");
        let alg = jsonwebtoken_alg(&k.algorithm).map_err(ctx)?;
        let key = match (&k.secret, &k.public_key, &k.public_key_file) {
            (Some(secret), None, None) => VerifyKey::secret(alg, secret.as_bytes(), k.kid.clone()),
            (None, Some(pem), None) => VerifyKey::public_pem(alg, pem.as_bytes(), k.kid.clone()),
            (None, None, Some(file)) => {
                let path = base.join(file);
                let pem = std::fs::read(&path)
                    .map_err(|e| ctx(format!("cannot read {}: {e}", path.display())))?;
                VerifyKey::public_pem(alg, &pem, k.kid.clone())
            }
            _ => Err("give exactly one of secret, public_key, public_key_file".into()),
        }
        .map_err(ctx)?;
        keys.push(key);
    }
    for file in &auth.jwks_files {
        let path = base.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("auth.jwks_files: cannot read {}: {e}", path.display()))?;
        keys.extend(
            VerifyKey::from_jwks(&text)
                .map_err(|e| format!("auth.jwks_files {}: {e}", path.display()))?,
        );
    }
    let options = VerifyOptions {
        leeway_secs: auth.leeway_secs.unwrap_or(5),
        issuer: auth.issuer.clone(),
        audience: auth.audience.clone(),
        roles_claim: auth.roles_claim.clone().unwrap_or_else(|| "roles".into()),
    };
    Verifier::new(keys, options)
}

fn jsonwebtoken_alg(name: &str) -> Result<plexus_core::auth::Algorithm, String> {
    name.parse().map_err(|_| {
        format!("unknown algorithm {name:?}: use HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384 or EdDSA")
    })
}

/// Resolves the configuration: file, then environment, then flags (`listen`, `profile`).
pub fn load(
    path: Option<&Path>,
    env: &Env,
    flag_listen: Option<&str>,
    flag_profile: Option<&str>,
) -> Result<Config, String> {
    let file = match path {
        Some(p) => read_file(p)?,
        None => FileConfig::default(),
    };
    let profile_name = flag_profile
        .map(str::to_owned)
        .or_else(|| env.profile.clone())
        .or(file.profile.clone());
    let profile = match profile_name {
        Some(p) => Profile::parse(&p)?,
        None if path.is_some() => Profile::Prod,
        None => Profile::Dev,
    };

    let listen_str = flag_listen
        .map(str::to_owned)
        .or_else(|| env.listen.clone())
        .or(file.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_str.parse().map_err(|_| {
        format!("invalid listen address {listen_str:?}: expected host:port, e.g. 127.0.0.1:4000")
    })?;
    if profile == Profile::Dev && !listen.ip().is_loopback() {
        return Err(format!(
            "the dev profile only binds loopback addresses, not {listen}: its token endpoint is open to anyone. \
             Use PLEXUS_PROFILE=prod with PLEXUS_JWT_SECRET and PLEXUS_API_KEY to listen on {listen}."
        ));
    }

    let secret = env.jwt_secret.clone().or(file.jwt_secret.clone());
    let api_key = env.api_key.clone().or(file.api_key.clone());
    let (jwt_secret, jwt_secret_generated, api_key, api_key_generated) = match profile {
        Profile::Prod => {
            let mut missing = Vec::new();
            let has_keys = !file.auth.keys.is_empty() || !file.auth.jwks_files.is_empty();
            if secret.is_none() && !has_keys {
                missing.push(
                    "a JWT secret (jwt_secret in the file or PLEXUS_JWT_SECRET) or [[auth.keys]]",
                );
            }
            if api_key.is_none() {
                missing.push("an API key (api_key in the file or PLEXUS_API_KEY)");
            }
            if !missing.is_empty() {
                return Err(format!("the prod profile needs {}", missing.join(" and ")));
            }
            if secret.as_ref().is_some_and(|s| s.len() < 16) {
                return Err("jwt_secret must be at least 16 characters in the prod profile".into());
            }
            (
                secret.unwrap_or_default(),
                false,
                api_key.unwrap_or_default(),
                false,
            )
        }
        Profile::Dev => {
            let (s, sg) = match secret {
                Some(s) => (s, false),
                None => (random_token(32), true),
            };
            let (k, kg) = match api_key {
                Some(k) => (k, false),
                None => (random_token(16), true),
            };
            (s, sg, k, kg)
        }
    };

    let defaults = Limits::default();
    let l = &file.limits;
    let limits = Limits {
        max_message_bytes: l.max_message_bytes.unwrap_or(defaults.max_message_bytes),
        idle_timeout: l
            .idle_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.idle_timeout),
        write_timeout: l
            .write_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.write_timeout),
        outbox_max_frames: l.outbox_max_frames.unwrap_or(defaults.outbox_max_frames),
        outbox_max_bytes: l.outbox_max_bytes.unwrap_or(defaults.outbox_max_bytes),
        max_topic_bytes: l.max_topic_bytes.unwrap_or(defaults.max_topic_bytes),
        max_event_bytes: l.max_event_bytes.unwrap_or(defaults.max_event_bytes),
        max_channels_per_connection: l
            .max_channels_per_connection
            .unwrap_or(defaults.max_channels_per_connection),
        expiry_grace: file
            .auth
            .expiry_grace_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.expiry_grace),
        messages_per_second: l
            .messages_per_second
            .unwrap_or(defaults.messages_per_second),
        message_burst: l.message_burst.unwrap_or(defaults.message_burst),
        longpoll_window: l
            .longpoll_window_secs
            .map(Duration::from_secs)
            .unwrap_or(defaults.longpoll_window),
    };
    let adm = AdmissionConfig::default();
    let mut trusted_proxies = Vec::new();
    for p in &file.trusted_proxies {
        let net = p
            .parse::<ipnet::IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("trusted_proxies: {p:?} is not an IP address or CIDR range"))?;
        trusted_proxies.push(net);
    }
    let admission = AdmissionConfig {
        max_connections_per_ip: l
            .max_connections_per_ip
            .unwrap_or(adm.max_connections_per_ip),
        max_connections_per_user: l
            .max_connections_per_user
            .unwrap_or(adm.max_connections_per_user),
        connect_rate_per_ip: l.connect_rate_per_ip.unwrap_or(adm.connect_rate_per_ip),
        connect_burst_per_ip: l.connect_burst_per_ip.unwrap_or(adm.connect_burst_per_ip),
        allowed_origins: file.allowed_origins.clone(),
        allow_loopback_origins: profile == Profile::Dev,
        trusted_proxies,
    };
    if limits.messages_per_second < 0.0 || admission.connect_rate_per_ip < 0.0 {
        return Err(
            "limits.messages_per_second and limits.connect_rate_per_ip must not be negative".into(),
        );
    }
    if limits.max_message_bytes < 1024 {
        return Err("limits.max_message_bytes must be at least 1024".into());
    }
    if limits.longpoll_window < Duration::from_secs(1) {
        return Err("limits.longpoll_window_secs must be at least 1".into());
    }
    if limits.write_timeout < Duration::from_secs(1) {
        return Err("limits.write_timeout_secs must be at least 1".into());
    }
    if limits.idle_timeout < Duration::from_secs(1) {
        return Err("limits.idle_timeout_secs must be at least 1".into());
    }

    let policy = if file.channels.is_empty() && profile == Profile::Dev {
        Policy::dev_default()
    } else {
        Policy::new(file.channels).map_err(|e| match path {
            Some(p) => format!(
                "invalid config file {}{}: {e}",
                p.display(),
                rule_line(p, &e)
            ),
            None => e,
        })?
    };

    let base = path
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let secret_for_keys = (!jwt_secret.is_empty()).then_some(jwt_secret.as_str());
    let verifier = build_verifier(secret_for_keys, &file.auth, &base).map_err(|e| match path {
        Some(p) => format!("invalid config file {}: {e}", p.display()),
        None => e,
    })?;

    let (tls, http_redirect) = {
        let file_tls = file.tls.as_ref();
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
            _ => return Err("TLS needs both a certificate and a key (tls.cert and tls.key, or PLEXUS_TLS_CERT and PLEXUS_TLS_KEY)".into()),
        };
        let redirect = match file_tls.and_then(|t| t.redirect_http.as_deref()) {
            Some(r) => {
                let a: SocketAddr = r
                    .parse()
                    .map_err(|_| format!("invalid tls.redirect_http {r:?}: expected host:port"))?;
                if profile == Profile::Dev && !a.ip().is_loopback() {
                    return Err(format!("the dev profile only binds loopback addresses, not {a} (tls.redirect_http)"));
                }
                Some(a)
            }
            None => None,
        };
        (tls, redirect)
    };

    let broker = env
        .broker
        .clone()
        .or(file.broker.clone())
        .unwrap_or_else(|| {
            if env.redis_url.is_some() {
                "redis".into()
            } else {
                "memory".into()
            }
        });
    let redis = match broker.as_str() {
        "memory" => None,
        "redis" => {
            let r = file.redis.as_ref();
            let defaults = plexus_core::broker::redis::RedisConfig::default();
            let node_timeout = r
                .and_then(|r| r.node_timeout_secs)
                .map(Duration::from_secs)
                .unwrap_or(defaults.node_timeout);
            if node_timeout < Duration::from_secs(1) {
                return Err("redis.node_timeout_secs must be at least 1".into());
            }
            Some(plexus_core::broker::redis::RedisConfig {
                url: env
                    .redis_url
                    .clone()
                    .or_else(|| r.and_then(|r| r.url.clone()))
                    .unwrap_or(defaults.url),
                prefix: r.and_then(|r| r.prefix.clone()).unwrap_or(defaults.prefix),
                node_timeout,
                tls_ca: match r.and_then(|r| r.tls_ca_file.as_ref()) {
                    Some(f) => {
                        let path = base.join(f);
                        Some(std::fs::read(&path).map_err(|e| {
                            format!("redis.tls_ca_file: cannot read {}: {e}", path.display())
                        })?)
                    }
                    None => None,
                },
            })
        }
        other => {
            return Err(format!(
                "unknown broker {other:?}: expected \"memory\" or \"redis\""
            ))
        }
    };

    Ok(Config {
        profile,
        listen,
        jwt_secret,
        jwt_secret_generated,
        api_key,
        api_key_generated,
        drain_timeout: Duration::from_secs(file.drain_timeout_secs.unwrap_or(10)),
        limits,
        admission,
        policy,
        verifier,
        tls,
        http_redirect,
        redis,
        source: path.map(Path::to_path_buf),
    })
}

/// The secret `plexus token` signs with: flag/env, else the file's.
pub fn token_secret(path: Option<&Path>, flag: Option<&str>) -> Result<String, String> {
    if let Some(s) = flag {
        return Ok(s.to_owned());
    }
    if let Some(p) = path {
        if let Some(s) = read_file(p)?.jwt_secret {
            return Ok(s);
        }
    }
    Err("no secret: pass --secret, set PLEXUS_JWT_SECRET, or give --config with jwt_secret".into())
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
        assert!(e.contains("loopback"), "{e}");
    }

    #[test]
    fn prod_needs_secret_and_key() {
        let env = Env {
            profile: Some("prod".into()),
            ..Env::default()
        };
        let e = load(None, &env, None, None).unwrap_err();
        assert!(e.contains("JWT secret") && e.contains("API key"), "{e}");
        let env = Env {
            profile: Some("prod".into()),
            jwt_secret: Some("0123456789abcdef0123".into()),
            api_key: Some("k".into()),
            listen: Some("0.0.0.0:9000".into()),
            ..Env::default()
        };
        let c = load(None, &env, None, None).unwrap();
        assert_eq!(c.profile, Profile::Prod);
        assert_eq!(c.listen.port(), 9000);
    }

    #[test]
    fn file_is_prod_and_env_overrides_it() {
        let f = write(
            "listen = \"127.0.0.1:5000\"\njwt_secret = \"file-secret-0123456789\"\napi_key = \"file-key\"\n\
             [limits]\nidle_timeout_secs = 30\n[[channels]]\ntopic = \"room:*\"\necho = true\n",
        );
        let env = Env {
            api_key: Some("env-key".into()),
            ..Env::default()
        };
        let c = load(Some(&f.0), &env, None, None).unwrap();
        assert_eq!(c.profile, Profile::Prod);
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.api_key, "env-key");
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(30));
        assert!(c.policy.rules()[0].echo);
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let f = write("jwt_secret = \"x\"\n[[channels]]\ntopic = \"room:*\"\nechoo = true\n");
        let e = load(Some(&f.0), &Env::default(), None, None).unwrap_err();
        assert!(e.contains("line 4") && e.contains("echoo"), "{e}");
        let f = write("[[channels]]\ntopic = \"a\"\n\n[[channels]]\ntopic = \"ro*om\"\n");
        let env = Env {
            jwt_secret: Some("0123456789abcdef0".into()),
            api_key: Some("k".into()),
            ..Env::default()
        };
        let e = load(Some(&f.0), &env, None, None).unwrap_err();
        assert!(
            e.contains("line 4") && e.contains("channels[1]") && e.contains("topic"),
            "{e}"
        );
    }
}
