//! The `[hooks]` and `[webhooks]` sections (docs/hooks.md, docs/configuration.md), each key
//! overridden by its `PLEXUS_HOOK_*` / `PLEXUS_WEBHOOK_*` environment variable (and
//! `PLEXUS_CONNECT_HOOK_URL`, `PLEXUS_JOIN_HOOK_URL`).

use super::ConfigError;
use plexus_core::hooks::breaker::BreakerConfig;
use plexus_core::hooks::HooksConfig;
use plexus_core::policy::is_http_url;
use plexus_core::webhooks::{EventKind, EventSet, WebhooksConfig};
use serde::Deserialize;
use std::time::Duration;

/// `[hooks]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHooks {
    secret: Option<String>,
    connect_url: Option<String>,
    join_url: Option<String>,
    timeout_ms: Option<u64>,
    max_concurrent: Option<u64>,
    breaker_threshold: Option<u64>,
    breaker_cooldown_secs: Option<u64>,
    join_cache_secs: Option<u64>,
    join_cache_max: Option<u64>,
    join_cache_max_bytes: Option<u64>,
    max_request_bytes: Option<u64>,
}

/// `[webhooks]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWebhooks {
    url: Option<String>,
    events: Option<Vec<String>>,
    queue_max: Option<u64>,
    queue_max_bytes: Option<u64>,
    batch_max: Option<u64>,
    batch_wait_ms: Option<u64>,
    timeout_ms: Option<u64>,
    retry_secs: Option<u64>,
    backoff_max_ms: Option<u64>,
    max_event_bytes: Option<u64>,
    max_batch_bytes: Option<u64>,
    disconnect_grace_ms: Option<u64>,
    disconnect_grace_max: Option<u64>,
}

/// The resolved hook settings (`None` in [`crate::config::Config`]: no hooks, no webhooks).
#[derive(Debug, Clone)]
pub struct HookSettings {
    pub hooks: HooksConfig,
    pub webhooks: Option<WebhooksConfig>,
}

/// Shortest hook secret.
pub const MIN_SECRET_CHARS: usize = 16;

/// The environment variables read here, by name.
pub const ENV_VARS: [&str; 24] = [
    "PLEXUS_HOOK_SECRET",
    "PLEXUS_CONNECT_HOOK_URL",
    "PLEXUS_JOIN_HOOK_URL",
    "PLEXUS_HOOK_TIMEOUT_MS",
    "PLEXUS_HOOK_MAX_CONCURRENT",
    "PLEXUS_HOOK_BREAKER_THRESHOLD",
    "PLEXUS_HOOK_BREAKER_COOLDOWN_SECS",
    "PLEXUS_HOOK_JOIN_CACHE_SECS",
    "PLEXUS_HOOK_JOIN_CACHE_MAX",
    "PLEXUS_HOOK_JOIN_CACHE_MAX_BYTES",
    "PLEXUS_HOOK_MAX_REQUEST_BYTES",
    "PLEXUS_WEBHOOK_URL",
    "PLEXUS_WEBHOOK_EVENTS",
    "PLEXUS_WEBHOOK_QUEUE_MAX",
    "PLEXUS_WEBHOOK_QUEUE_MAX_BYTES",
    "PLEXUS_WEBHOOK_BATCH_MAX",
    "PLEXUS_WEBHOOK_BATCH_WAIT_MS",
    "PLEXUS_WEBHOOK_TIMEOUT_MS",
    "PLEXUS_WEBHOOK_RETRY_SECS",
    "PLEXUS_WEBHOOK_BACKOFF_MAX_MS",
    "PLEXUS_WEBHOOK_MAX_EVENT_BYTES",
    "PLEXUS_WEBHOOK_MAX_BATCH_BYTES",
    "PLEXUS_WEBHOOK_DISCONNECT_GRACE_MS",
    "PLEXUS_WEBHOOK_DISCONNECT_GRACE_MAX",
];

struct Source<'a> {
    env: &'a [(String, String)],
}

impl Source<'_> {
    fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn string(&self, var: &str, file: &Option<String>) -> Option<String> {
        self.env(var).map(str::to_owned).or_else(|| file.clone())
    }

    /// A number from `var`, else the file's, within `min..=max`.
    fn number(
        &self,
        var: &'static str,
        field: &'static str,
        file: Option<u64>,
        default: u64,
        (min, max): (u64, u64),
    ) -> Result<u64, ConfigError> {
        let (value, name) = match self.env(var) {
            Some(v) => (
                v.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
                    field: var,
                    message: format!("{v:?} is not a whole number"),
                })?,
                var,
            ),
            None => (file.unwrap_or(default), field),
        };
        if value < min {
            return Err(ConfigError::TooSmall { field: name, min });
        }
        if value > max {
            return Err(ConfigError::TooLarge { field: name, max });
        }
        Ok(value)
    }
}

fn check_url(field: &'static str, url: Option<String>) -> Result<Option<String>, ConfigError> {
    match url {
        Some(u) if !is_http_url(&u) => Err(ConfigError::Invalid {
            field,
            message: format!("{u:?} is not an http:// or https:// URL"),
        }),
        other => Ok(other),
    }
}

/// Resolves both sections; `rules_use_hooks`: a channel rule names a join or push hook.
pub fn resolve(
    env: &[(String, String)],
    hooks: &FileHooks,
    webhooks: &FileWebhooks,
    rules_use_hooks: bool,
) -> Result<Option<HookSettings>, ConfigError> {
    let src = Source { env };
    let connect_url = check_url(
        "hooks.connect_url",
        src.string("PLEXUS_CONNECT_HOOK_URL", &hooks.connect_url),
    )?;
    let join_url = check_url(
        "hooks.join_url",
        src.string("PLEXUS_JOIN_HOOK_URL", &hooks.join_url),
    )?;
    let webhook_url = check_url(
        "webhooks.url",
        src.string("PLEXUS_WEBHOOK_URL", &webhooks.url),
    )?;
    if connect_url.is_none() && join_url.is_none() && webhook_url.is_none() && !rules_use_hooks {
        return Ok(None);
    }
    let secret = src
        .string("PLEXUS_HOOK_SECRET", &hooks.secret)
        .unwrap_or_default();
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(ConfigError::Invalid {
            field: "hooks.secret",
            message: format!(
                "hooks and webhooks sign every request: set hooks.secret or PLEXUS_HOOK_SECRET \
                 ({MIN_SECRET_CHARS} characters at least)"
            ),
        });
    }
    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    let mut cfg = HooksConfig::new(secret);
    cfg.connect_url = connect_url;
    cfg.join_url = join_url;
    cfg.timeout = ms(src.number(
        "PLEXUS_HOOK_TIMEOUT_MS",
        "hooks.timeout_ms",
        hooks.timeout_ms,
        2000,
        (1, 60_000),
    )?);
    cfg.max_concurrent = src.number(
        "PLEXUS_HOOK_MAX_CONCURRENT",
        "hooks.max_concurrent",
        hooks.max_concurrent,
        256,
        (1, 100_000),
    )? as usize;
    cfg.breaker = BreakerConfig {
        threshold: src.number(
            "PLEXUS_HOOK_BREAKER_THRESHOLD",
            "hooks.breaker_threshold",
            hooks.breaker_threshold,
            5,
            (0, 1_000_000),
        )? as u32,
        cooldown: secs(src.number(
            "PLEXUS_HOOK_BREAKER_COOLDOWN_SECS",
            "hooks.breaker_cooldown_secs",
            hooks.breaker_cooldown_secs,
            5,
            (1, 3600),
        )?),
    };
    cfg.join_cache_ttl = secs(src.number(
        "PLEXUS_HOOK_JOIN_CACHE_SECS",
        "hooks.join_cache_secs",
        hooks.join_cache_secs,
        0,
        (0, 3600),
    )?);
    cfg.join_cache_max = src.number(
        "PLEXUS_HOOK_JOIN_CACHE_MAX",
        "hooks.join_cache_max",
        hooks.join_cache_max,
        10_000,
        (1, 1_000_000),
    )? as usize;
    cfg.join_cache_max_bytes = src.number(
        "PLEXUS_HOOK_JOIN_CACHE_MAX_BYTES",
        "hooks.join_cache_max_bytes",
        hooks.join_cache_max_bytes,
        4 << 20,
        (1024, 1 << 30),
    )? as usize;
    cfg.max_request_bytes = src.number(
        "PLEXUS_HOOK_MAX_REQUEST_BYTES",
        "hooks.max_request_bytes",
        hooks.max_request_bytes,
        plexus_core::hooks::DEFAULT_MAX_REQUEST_BYTES as u64,
        (1024, 16 << 20),
    )? as usize;
    let webhooks = match webhook_url {
        None => None,
        Some(url) => {
            let w = webhooks;
            let mut c = WebhooksConfig::new(url);
            let events: Option<Vec<String>> = match src.env("PLEXUS_WEBHOOK_EVENTS") {
                Some(list) => Some(
                    list.split(',')
                        .map(|e| e.trim().to_owned())
                        .filter(|e| !e.is_empty())
                        .collect(),
                ),
                None => w.events.clone(),
            };
            if let Some(names) = events {
                let mut kinds = Vec::new();
                for name in &names {
                    kinds.push(EventKind::parse(name).ok_or_else(|| ConfigError::Invalid {
                        field: "webhooks.events",
                        message: format!(
                            "unknown event {name:?}: expected connect, disconnect, join, leave, \
                             channel_occupied, channel_vacated, signin, presence_join, \
                             presence_leave, client_event, cache_miss or reconnect"
                        ),
                    })?);
                }
                c.events = EventSet::of(&kinds);
            }
            tune(&src, w, &mut c)?;
            // The reconnect grace (Plexus's sink only).
            c.disconnect_grace = Duration::from_millis(src.number(
                "PLEXUS_WEBHOOK_DISCONNECT_GRACE_MS",
                "webhooks.disconnect_grace_ms",
                w.disconnect_grace_ms,
                0,
                (0, 600_000),
            )?);
            c.disconnect_grace_max = src.number(
                "PLEXUS_WEBHOOK_DISCONNECT_GRACE_MAX",
                "webhooks.disconnect_grace_max",
                w.disconnect_grace_max,
                plexus_core::webhooks::grace::DEFAULT_MAX_HELD as u64,
                (1, 10_000_000),
            )? as usize;
            Some(c)
        }
    };
    Ok(Some(HookSettings {
        hooks: cfg,
        webhooks,
    }))
}

/// The `[webhooks]` numbers (queue, batches, timeouts, retries, sizes) applied to `c`: they
/// tune Plexus's webhook sink and Pusher's alike (each has its own queue of those bounds).
fn tune(src: &Source<'_>, w: &FileWebhooks, c: &mut WebhooksConfig) -> Result<(), ConfigError> {
    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    c.queue_max = src.number(
        "PLEXUS_WEBHOOK_QUEUE_MAX",
        "webhooks.queue_max",
        w.queue_max,
        10_000,
        (1, 10_000_000),
    )? as usize;
    c.queue_max_bytes = src.number(
        "PLEXUS_WEBHOOK_QUEUE_MAX_BYTES",
        "webhooks.queue_max_bytes",
        w.queue_max_bytes,
        16 << 20,
        (1024, 1 << 34),
    )? as usize;
    c.batch_max = src.number(
        "PLEXUS_WEBHOOK_BATCH_MAX",
        "webhooks.batch_max",
        w.batch_max,
        100,
        (1, 10_000),
    )? as usize;
    c.batch_wait = ms(src.number(
        "PLEXUS_WEBHOOK_BATCH_WAIT_MS",
        "webhooks.batch_wait_ms",
        w.batch_wait_ms,
        50,
        (0, 60_000),
    )?);
    c.timeout = ms(src.number(
        "PLEXUS_WEBHOOK_TIMEOUT_MS",
        "webhooks.timeout_ms",
        w.timeout_ms,
        5000,
        (1, 300_000),
    )?);
    c.retry_for = secs(src.number(
        "PLEXUS_WEBHOOK_RETRY_SECS",
        "webhooks.retry_secs",
        w.retry_secs,
        120,
        (0, 86_400),
    )?);
    c.backoff_max = ms(src.number(
        "PLEXUS_WEBHOOK_BACKOFF_MAX_MS",
        "webhooks.backoff_max_ms",
        w.backoff_max_ms,
        5000,
        (100, 600_000),
    )?);
    c.max_event_bytes = src.number(
        "PLEXUS_WEBHOOK_MAX_EVENT_BYTES",
        "webhooks.max_event_bytes",
        w.max_event_bytes,
        64 << 10,
        (1024, 64 << 20),
    )? as usize;
    c.max_batch_bytes = src.number(
        "PLEXUS_WEBHOOK_MAX_BATCH_BYTES",
        "webhooks.max_batch_bytes",
        w.max_batch_bytes,
        1 << 20,
        (1024, 1 << 30),
    )? as usize;
    Ok(())
}

/// Pusher-format webhooks (`[pusher] webhook_url`, `webhook_events`; docs/pusher.md):
/// `url` and `events` already picked (environment over file); every Pusher event unless
/// `events` names some. Tuned by `[webhooks]`' numbers.
pub fn resolve_pusher_webhooks(
    env: &[(String, String)],
    url: Option<String>,
    events: Option<Vec<String>>,
    webhooks: &FileWebhooks,
) -> Result<Option<WebhooksConfig>, ConfigError> {
    let Some(url) = check_url("pusher.webhook_url", url)? else {
        return Ok(None);
    };
    let src = Source { env };
    let mut c = WebhooksConfig::new(url);
    c.events = plexus_core::pusher::webhooks::all_events();
    if let Some(names) = events {
        let mut kinds = Vec::new();
        for name in &names {
            kinds.push(
                plexus_core::pusher::webhooks::parse_event(name).ok_or_else(|| {
                    ConfigError::Invalid {
                        field: "pusher.webhook_events",
                        message: format!(
                            "unknown event {name:?}: expected channel_occupied, channel_vacated, \
                             member_added, member_removed, client_event or cache_miss"
                        ),
                    }
                })?,
            );
        }
        c.events = EventSet::of(&kinds);
    }
    tune(&src, webhooks, &mut c)?;
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn off_without_urls_and_env_over_file() {
        let none = resolve(&[], &FileHooks::default(), &FileWebhooks::default(), false).unwrap();
        assert!(none.is_none());
        let e = env(&[
            ("PLEXUS_WEBHOOK_URL", "http://127.0.0.1:9/w"),
            ("PLEXUS_HOOK_SECRET", "0123456789abcdef"),
            ("PLEXUS_WEBHOOK_EVENTS", "connect, client_event"),
            ("PLEXUS_HOOK_TIMEOUT_MS", "300"),
        ]);
        let file = FileHooks {
            timeout_ms: Some(900),
            ..Default::default()
        };
        let s = resolve(&e, &file, &FileWebhooks::default(), false)
            .unwrap()
            .unwrap();
        assert_eq!(s.hooks.timeout, Duration::from_millis(300));
        let w = s.webhooks.unwrap();
        assert!(w.events.contains(EventKind::ClientEvent));
        assert!(!w.events.contains(EventKind::Join));
    }

    #[test]
    fn the_reconnect_grace_is_off_by_default_and_bounded() {
        let base = [
            ("PLEXUS_WEBHOOK_URL", "http://127.0.0.1:9/w"),
            ("PLEXUS_HOOK_SECRET", "0123456789abcdef"),
        ];
        let w = |extra: &[(&str, &str)], file: FileWebhooks| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            resolve(&env(&pairs), &FileHooks::default(), &file, false)
                .map(|s| s.and_then(|s| s.webhooks))
        };
        let d = w(&[], FileWebhooks::default()).unwrap().unwrap();
        assert_eq!(d.disconnect_grace, Duration::ZERO);
        assert_eq!(
            d.disconnect_grace_max,
            plexus_core::webhooks::grace::DEFAULT_MAX_HELD
        );
        assert!(!d.events.contains(EventKind::Reconnect));
        let file = FileWebhooks {
            disconnect_grace_ms: Some(2000),
            events: Some(vec!["disconnect".into(), "reconnect".into()]),
            ..Default::default()
        };
        let f = w(&[("PLEXUS_WEBHOOK_DISCONNECT_GRACE_MAX", "5")], file)
            .unwrap()
            .unwrap();
        assert_eq!(f.disconnect_grace, Duration::from_millis(2000));
        assert_eq!(f.disconnect_grace_max, 5);
        assert!(f.events.contains(EventKind::Reconnect));
        let e = w(
            &[("PLEXUS_WEBHOOK_DISCONNECT_GRACE_MS", "600001")],
            FileWebhooks::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("PLEXUS_WEBHOOK_DISCONNECT_GRACE_MS"));
        let e = w(
            &[("PLEXUS_WEBHOOK_DISCONNECT_GRACE_MAX", "0")],
            FileWebhooks::default(),
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .contains("PLEXUS_WEBHOOK_DISCONNECT_GRACE_MAX"));
    }

    #[test]
    fn errors_name_the_setting() {
        let no_secret = env(&[("PLEXUS_JOIN_HOOK_URL", "http://a/join")]);
        let e = resolve(
            &no_secret,
            &FileHooks::default(),
            &FileWebhooks::default(),
            false,
        );
        assert!(e.unwrap_err().to_string().contains("PLEXUS_HOOK_SECRET"));
        let bad_url = env(&[("PLEXUS_CONNECT_HOOK_URL", "ftp://x")]);
        let e = resolve(
            &bad_url,
            &FileHooks::default(),
            &FileWebhooks::default(),
            false,
        );
        assert!(e.unwrap_err().to_string().contains("hooks.connect_url"));
        let bad_event = env(&[
            ("PLEXUS_WEBHOOK_URL", "http://a/w"),
            ("PLEXUS_HOOK_SECRET", "0123456789abcdef"),
            ("PLEXUS_WEBHOOK_EVENTS", "connect,nope"),
        ]);
        let e = resolve(
            &bad_event,
            &FileHooks::default(),
            &FileWebhooks::default(),
            false,
        );
        assert!(e.unwrap_err().to_string().contains("\"nope\""));
        let zero = env(&[
            ("PLEXUS_WEBHOOK_URL", "http://a/w"),
            ("PLEXUS_HOOK_SECRET", "0123456789abcdef"),
            ("PLEXUS_WEBHOOK_QUEUE_MAX", "0"),
        ]);
        let e = resolve(
            &zero,
            &FileHooks::default(),
            &FileWebhooks::default(),
            false,
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("PLEXUS_WEBHOOK_QUEUE_MAX"));
        let tiny = env(&[
            ("PLEXUS_JOIN_HOOK_URL", "http://a/join"),
            ("PLEXUS_HOOK_SECRET", "0123456789abcdef"),
            ("PLEXUS_HOOK_MAX_REQUEST_BYTES", "12"),
        ]);
        let e = resolve(
            &tiny,
            &FileHooks::default(),
            &FileWebhooks::default(),
            false,
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("PLEXUS_HOOK_MAX_REQUEST_BYTES"));
        let file = FileHooks {
            max_request_bytes: Some(2048),
            ..Default::default()
        };
        let ok = resolve(&tiny[..2], &file, &FileWebhooks::default(), false)
            .unwrap()
            .unwrap();
        assert_eq!(ok.hooks.max_request_bytes, 2048);
    }

    #[test]
    fn toml_sections_and_rule_hooks() {
        let text = r#"
jwt_secret = "0123456789abcdef0123"
api_key = "0123456789abcdef0123"
[hooks]
secret = "0123456789abcdef"
join_url = "https://app.example/join"
timeout_ms = 700
[webhooks]
url = "https://app.example/events"
events = ["disconnect"]
max_event_bytes = 2048
[[channels]]
topic = "room:*"
push_hook = "http://127.0.0.1:9/push"
"#;
        let env = crate::config::Env::default();
        let c = crate::config::parse_str(text, &env, None, None).unwrap();
        let h = c.hooks.unwrap();
        assert_eq!(
            h.hooks.join_url.as_deref(),
            Some("https://app.example/join")
        );
        assert_eq!(h.hooks.timeout, Duration::from_millis(700));
        let w = h.webhooks.unwrap();
        assert!(w.events.contains(EventKind::Disconnect) && !w.events.contains(EventKind::Connect));
        assert_eq!((w.max_event_bytes, w.max_batch_bytes), (2048, 1 << 20));
        // A rule's hook alone needs the secret; a bad URL names the rule.
        let bad = text.replace("http://127.0.0.1:9/push", "ftp://x");
        let e = crate::config::parse_str(&bad, &env, None, None).unwrap_err();
        assert!(e.to_string().contains("push_hook"), "{e}");
        let unsigned = "jwt_secret = \"0123456789abcdef0123\"\napi_key = \"0123456789abcdef0123\"\n[[channels]]\ntopic = \"a\"\njoin_hook = \"http://h/j\"\n";
        let e = crate::config::parse_str(unsigned, &env, None, None).unwrap_err();
        assert!(e.to_string().contains("hooks.secret"), "{e}");
        let unknown = text.replace("timeout_ms = 700", "timeout = 700");
        assert!(crate::config::parse_str(&unknown, &env, None, None).is_err());
    }
}
