//! The `[presence]` section: how long presence diffs wait to leave merged
//! (`presence.diff_interval_ms`, env `PLEXUS_PRESENCE_DIFF_INTERVAL_MS`; see
//! `plexus_core::presence_diffs`).

use super::ConfigError;
use plexus_core::presence_diffs::{DEFAULT_DIFF_INTERVAL_MS, MAX_DIFF_INTERVAL_MS};
use serde::Deserialize;
use std::time::Duration;

/// `[presence]` as the file has it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePresence {
    diff_interval_ms: Option<u64>,
}

/// The interval presence diffs are merged over (zero: each is sent at once): the
/// environment's, else the file's, else [`DEFAULT_DIFF_INTERVAL_MS`]; at most
/// [`MAX_DIFF_INTERVAL_MS`].
pub(super) fn resolve_diff_interval(
    env: Option<&str>,
    file: &FilePresence,
) -> Result<Duration, ConfigError> {
    let (field, ms) = match env {
        Some(v) => (
            "PLEXUS_PRESENCE_DIFF_INTERVAL_MS",
            v.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
                field: "PLEXUS_PRESENCE_DIFF_INTERVAL_MS",
                message: format!("{v:?} is not a whole number of milliseconds"),
            })?,
        ),
        None => (
            "presence.diff_interval_ms",
            file.diff_interval_ms.unwrap_or(DEFAULT_DIFF_INTERVAL_MS),
        ),
    };
    if ms > MAX_DIFF_INTERVAL_MS {
        return Err(ConfigError::Invalid {
            field,
            message: format!("{ms} is more than {MAX_DIFF_INTERVAL_MS} ms (0 turns merging off)"),
        });
    }
    Ok(Duration::from_millis(ms))
}
