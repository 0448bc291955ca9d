//! The broker: the embedded in-memory default, or Redis (`broker`, `PLEXUS_REDIS_URL`, the
//! `[redis]` section) for a cluster of nodes.

use super::{read_referenced, ConfigError, Env, FileConfig, ReadFn};
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
    })
}
