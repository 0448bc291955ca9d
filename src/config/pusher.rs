//! The `[pusher]` section (`PLEXUS_PUSHER_APP_ID`, `PLEXUS_PUSHER_KEY`, `PLEXUS_PUSHER_SECRET`):
//! serve Pusher's clients and HTTP API for one app (docs/pusher.md). All three or none.
//! `max_presence_members` (`PLEXUS_PUSHER_MAX_PRESENCE_MEMBERS`, default 100 as Pusher's, 0:
//! no limit) bounds the members of each presence channel.
//! `webhook_url` (`PLEXUS_PUSHER_WEBHOOK_URL`) and `webhook_events`
//! (`PLEXUS_PUSHER_WEBHOOK_EVENTS`, comma-separated) turn on Pusher-format webhooks.

use super::{ConfigError, Env, Profile};
use plexus_core::pusher::PusherApp;
use serde::Deserialize;

/// `[pusher]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FilePusher {
    pub(super) app_id: Option<String>,
    pub(super) key: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) max_presence_members: Option<usize>,
    pub(super) webhook_url: Option<String>,
    pub(super) webhook_events: Option<Vec<String>>,
}

/// Pusher mode: on when the app id, key and secret are given (environment over file), off
/// when none is; refused when only some are, or when a prod secret is under 16 characters.
pub(super) fn resolve_pusher(
    profile: Profile,
    env: &Env,
    file: &FilePusher,
) -> Result<Option<PusherApp>, ConfigError> {
    let pick = |e: &Option<String>, f: &Option<String>| e.clone().or_else(|| f.clone());
    let app_id = pick(&env.pusher_app_id, &file.app_id);
    let key = pick(&env.pusher_key, &file.key);
    let secret = pick(&env.pusher_secret, &file.secret);
    match (app_id, key, secret) {
        (None, None, None) => Ok(None),
        (Some(app_id), Some(key), Some(secret)) => {
            for (field, value) in [
                ("pusher.app_id", &app_id),
                ("pusher.key", &key),
                ("pusher.secret", &secret),
            ] {
                if value.is_empty() {
                    return Err(ConfigError::Invalid {
                        field,
                        message: "must not be empty".into(),
                    });
                }
            }
            if profile == Profile::Prod && secret.len() < 16 {
                return Err(ConfigError::Invalid {
                    field: "pusher.secret",
                    message: "must be at least 16 characters in the prod profile".into(),
                });
            }
            let max_presence_members = match &env.pusher_max_presence_members {
                Some(v) => v.trim().parse::<usize>().map_err(|_| ConfigError::Invalid {
                    field: "pusher.max_presence_members",
                    message: format!(
                        "PLEXUS_PUSHER_MAX_PRESENCE_MEMBERS must be a number (0: no limit), not {v:?}"
                    ),
                })?,
                None => file
                    .max_presence_members
                    .unwrap_or(plexus_core::pusher::DEFAULT_MAX_PRESENCE_MEMBERS),
            };
            Ok(Some(PusherApp {
                app_id,
                key,
                secret,
                max_presence_members,
            }))
        }
        _ => Err(ConfigError::Invalid {
            field: "pusher",
            message: "give app_id, key and secret together (PLEXUS_PUSHER_APP_ID, \
                      PLEXUS_PUSHER_KEY, PLEXUS_PUSHER_SECRET)"
                .into(),
        }),
    }
}

/// Pusher-format webhooks: on when `webhook_url` is given (environment over file), which
/// needs Pusher mode (`app`); see [`super::hooks::resolve_pusher_webhooks`].
pub(super) fn resolve_pusher_webhooks(
    env: &Env,
    file: &FilePusher,
    webhooks: &super::hooks::FileWebhooks,
    app: Option<&PusherApp>,
) -> Result<Option<plexus_core::webhooks::WebhooksConfig>, ConfigError> {
    let url = env
        .pusher_webhook_url
        .clone()
        .or_else(|| file.webhook_url.clone());
    if url.is_some() && app.is_none() {
        return Err(ConfigError::Invalid {
            field: "pusher.webhook_url",
            message: "Pusher-format webhooks need Pusher mode: set pusher.app_id, key and \
                      secret too (PLEXUS_PUSHER_APP_ID, PLEXUS_PUSHER_KEY, PLEXUS_PUSHER_SECRET)"
                .into(),
        });
    }
    let events = match &env.pusher_webhook_events {
        Some(list) => Some(
            list.split(',')
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty())
                .collect(),
        ),
        None => file.webhook_events.clone(),
    };
    super::hooks::resolve_pusher_webhooks(&env.hooks, url, events, webhooks)
}
