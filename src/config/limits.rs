//! The `[limits]` section (per-connection limits, history budget, caps on pending
//! connections) and who may connect: per-address and per-user caps, origins, trusted proxies.

use super::{ConfigError, FileConfig, Profile, DEFAULT_HTTP_HEADER_TIMEOUT_SECS};
use plexus_core::admission::AdmissionConfig;
use plexus_core::limits::Limits;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    pub(super) max_message_bytes: Option<usize>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) write_timeout_secs: Option<u64>,
    pub(super) outbox_max_frames: Option<usize>,
    pub(super) outbox_max_bytes: Option<usize>,
    pub(super) max_topic_bytes: Option<usize>,
    pub(super) max_event_bytes: Option<usize>,
    pub(super) max_channels_per_connection: Option<usize>,
    pub(super) messages_per_second: Option<f64>,
    pub(super) message_burst: Option<u32>,
    pub(super) longpoll_window_secs: Option<u64>,
    pub(super) http_header_timeout_secs: Option<u64>,
    pub(super) history_max_bytes: Option<usize>,
    pub(super) history_topic_max_bytes: Option<usize>,
    pub(super) history_idle_secs: Option<u64>,
    pub(super) max_pending_connections_per_ip: Option<u32>,
    pub(super) max_pending_connections: Option<usize>,
    pub(super) max_connections_per_ip: Option<u32>,
    pub(super) max_connections_per_user: Option<u32>,
    pub(super) connect_rate_per_ip: Option<f64>,
    pub(super) connect_burst_per_ip: Option<u32>,
}

/// Per-connection limits from `[limits]` (and `auth.expiry_grace_secs`), checked for sense.
pub(super) fn resolve_limits(
    l: &FileLimits,
    expiry_grace_secs: Option<u64>,
) -> Result<Limits, ConfigError> {
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
pub(super) fn resolve_admission(
    file: &FileConfig,
    profile: Profile,
) -> Result<AdmissionConfig, ConfigError> {
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
