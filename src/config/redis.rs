//! The broker: the embedded in-memory default, or Redis (`broker`, `PLEXUS_REDIS_URL`, the
//! `[redis]` section) for a cluster of nodes, and the secret its nodes sign their messages
//! to each other with.

use super::auth::Secrets;
use super::{read_referenced, ConfigError, Env, FileConfig, Profile, ReadFn};
use plexus_core::broker::redis::RedisConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRedis {
    pub(super) url: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) node_timeout_secs: Option<u64>,
    pub(super) tls_ca_file: Option<PathBuf>,
    pub(super) cluster_secret: Option<String>,
}

/// The broker: `None` for the in-memory one, else Redis from environment, then `[redis]`.
/// `PLEXUS_REDIS_URL` alone selects Redis.
pub(super) fn resolve_broker(
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
pub(super) fn resolve_redis(
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
pub(super) const DEV_CLUSTER_SECRET: &str = "plexus dev cluster secret (not secret)";

/// The secret node-to-node messages are signed with (`PLEXUS_CLUSTER_SECRET` over
/// `redis.cluster_secret`): at least 16 characters in prod. Unset, it is the API key, which
/// every node of a cluster shares anyway (the broker derives its key from it, never using it
/// as is); in dev without an API key, a well-known one, with a warning.
pub(super) fn resolve_cluster_secret(
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
