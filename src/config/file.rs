//! The configuration file: its shape ([`FileConfig`], one optional field per setting,
//! unknown fields refused) and how it and the files it names are read, every error naming
//! the file (and, for a channel rule, the line of its `[[channels]]` header).

use super::auth::FileAuth;
use super::limits::FileLimits;
use super::pusher::FilePusher;
use super::redis::FileRedis;
use super::tls::FileTls;
use super::{hooks, presence, ConfigError};
use plexus_core::policy::ChannelRule;
use serde::Deserialize;
use std::path::Path;

/// The file's shape. Every field is optional; unknown fields are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) profile: Option<String>,
    pub(super) listen: Option<String>,
    pub(super) jwt_secret: Option<String>,
    pub(super) api_key: Option<String>,
    // (admin console)
    pub(super) admin_secret: Option<String>,
    // (demo)
    pub(super) demo: Option<bool>,
    pub(super) demo_feed: Option<bool>,
    pub(super) drain_timeout_secs: Option<u64>,
    pub(super) drain_notice_secs: Option<u64>,
    pub(super) metrics_require_api_key: Option<bool>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
    #[serde(default)]
    pub(super) trusted_proxies: Vec<String>,
    #[serde(default)]
    pub(super) limits: FileLimits,
    #[serde(default)]
    pub(super) auth: FileAuth,
    pub(super) tls: Option<FileTls>,
    pub(super) broker: Option<String>,
    pub(super) redis: Option<FileRedis>,
    #[serde(default)]
    pub(super) supabase: FileSupabase,
    #[serde(default)]
    pub(super) websocket: FileWebsocket,
    #[serde(default)]
    pub(super) pusher: FilePusher,
    #[serde(default)]
    pub(super) presence: presence::FilePresence,
    #[serde(default)]
    pub(super) channels: Vec<ChannelRule>,
    #[serde(default)]
    pub(super) hooks: hooks::FileHooks,
    #[serde(default)]
    pub(super) webhooks: hooks::FileWebhooks,
}

/// `[supabase]`: serve Supabase's realtime clients (see docs/supabase.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSupabase {
    pub(super) enabled: Option<bool>,
    pub(super) anon_role: Option<String>,
}

/// `[websocket]`: how WebSocket connections are written to (see docs/configuration.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileWebsocket {
    pub(super) write_through: Option<bool>,
}

/// Reads the file, naming it in the error.
pub(super) fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and parses the file, naming it in every error.
pub(super) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    parse_toml(&read_text(path)?, Some(path))
}

/// Parses the TOML text of the file `path` (`None`: text given to [`parse_str`]).
pub(super) fn parse_toml(text: &str, path: Option<&Path>) -> Result<FileConfig, ConfigError> {
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
pub(super) type ReadFn<'a> = &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>;

/// For an error about `channels[i]`, the line of that rule's `[[channels]]` header, so that
/// the message points into the file.
pub(super) fn rule_line(text: &str, index: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[channels]]"))
        .nth(index)
        .map(|(n, _)| n + 1)
}

/// Reads a file the configuration points to (`field` names the setting).
pub(super) fn read_referenced(
    field: &str,
    path: &Path,
    read: ReadFn,
) -> Result<Vec<u8>, ConfigError> {
    read(path).map_err(|source| ConfigError::ReadFile {
        field: field.to_owned(),
        path: path.to_path_buf(),
        source,
    })
}
