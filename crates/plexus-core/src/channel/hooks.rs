//! The application's hooks on a channel (docs/hooks.md): the join hook (and before it the
//! in-process join authority of an embedding application), asked once every
//! local check allowed a join (and again for the joined channels when an anonymous
//! connection signs in), and the push hook, asked once the rule allowed a push. Their
//! refusals and failures become the client's error replies.

use super::{AppMeta, Channels, Conn, JoinOutcome, JoinRequest};
use crate::hooks::answer::Broadcast;
use crate::policy::ChannelRule;
use crate::protocol::{Message, Payload};
use crate::supabase::JoinConfig;

impl Channels {
    /// The application's in-process join authority (if set), then its join hook (if the rule
    /// has one), after every local check passed: their `reply` (merged, minus the fields
    /// Plexus sets) and `meta` (merged), or the refusal to answer.
    pub(super) async fn ask_join_hook(
        &self,
        conn: &Conn<'_>,
        req: &JoinRequest<'_>,
        rule: &ChannelRule,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, Option<AppMeta>), JoinOutcome> {
        let local = conn.node.join_authority();
        let hook = conn
            .node
            .hooks()
            .and_then(|h| Some((h, h.join_url(rule.join_hook.as_deref())?)));
        if local.is_none() && hook.is_none() {
            return Ok(Default::default());
        }
        let params = hook_params(req.params);
        let caller = conn.caller();
        let mut reply = serde_json::Map::new();
        let mut meta: Option<AppMeta> = None;
        let mut take = |d: crate::hooks::answer::Decision| {
            reply.extend(d.reply.into_iter().flatten());
            if let Some(m) = d.meta {
                meta.get_or_insert_with(Default::default).extend(m);
            }
        };
        if let Some(local) = local {
            let conn_id = Some(conn.node.public_conn_id(conn.id));
            match local.ask(&caller, conn_id, req.topic, &params).await {
                Ok(d) if d.allow => take(d),
                Ok(d) => return Err(JoinOutcome::refused(d.reason, false)),
                Err(e) => return Err(JoinOutcome::refused(e.reason, true)),
            }
        }
        if let Some((hooks, url)) = hook {
            match hooks.join(url, &caller, req.topic, params).await {
                Ok(d) if d.allow => take(d),
                Ok(d) => return Err(JoinOutcome::refused(d.reason, false)),
                Err(e) => return Err(JoinOutcome::refused(e.reason, true)),
            }
        }
        for reserved in ["postgres_changes", "epoch", "offset", "recovered"] {
            reply.remove(reserved);
        }
        Ok((reply, meta))
    }

    /// Whether a join under `rule` is decided by the application (its in-process authority
    /// or a join hook): then an anonymous connection keeps the join's params, to ask again if
    /// it signs in.
    pub(super) fn asks_application(conn: &Conn<'_>, rule: &ChannelRule) -> bool {
        conn.node.join_authority().is_some()
            || conn
                .node
                .hooks()
                .is_some_and(|h| h.join_url(rule.join_hook.as_deref()).is_some())
    }
}

impl Channels {
    /// After an anonymous connection's sign-in (`conn` carries the user's identity): the
    /// joined topics the user may not stay in, with the reason — those the rules now refuse,
    /// and those the application, asked again with the user and the join's params (all at
    /// once: the in-process join authority, then the rule's join hook), refuses (`the join
    /// hook refused the signed-in user: <reason>`) or does not answer (`hook unavailable`).
    pub(crate) async fn signin_refusals(&self, conn: &Conn<'_>) -> Vec<(Box<str>, String)> {
        let mut refused = self.rule_refusals(conn);
        let hooks = conn.node.hooks();
        let local = conn.node.join_authority();
        if hooks.is_none() && local.is_none() {
            return refused;
        }
        let caller = conn.caller();
        let conn_id = conn.node.public_conn_id(conn.id);
        let asks = self.joined.iter().filter_map(|(topic, channel)| {
            let rule = conn
                .node
                .policy()
                .authorize_join(conn.identity, topic)
                .ok()?;
            let hook =
                hooks.and_then(|h| Some((h, h.join_url(rule.join_hook.as_deref())?.to_owned())));
            if hook.is_none() && local.is_none() {
                return None;
            }
            let params = channel
                .signin_params
                .as_deref()
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            let (caller, conn_id) = (&caller, &conn_id);
            Some(async move {
                let refusal =
                    |reason: &str| format!("the join hook refused the signed-in user: {reason}");
                if let Some(local) = local {
                    match local
                        .ask(caller, Some(conn_id.clone()), topic, &params)
                        .await
                    {
                        Ok(d) if d.allow => {}
                        Ok(d) => return Some((topic.clone(), refusal(&d.reason))),
                        Err(_) => {
                            return Some((topic.clone(), crate::hooks::UNAVAILABLE.to_owned()))
                        }
                    }
                }
                let (hooks, url) = hook?;
                let reason = match hooks.join(&url, caller, topic, params).await {
                    Ok(d) if d.allow => return None,
                    Ok(d) => refusal(&d.reason),
                    Err(_) => crate::hooks::UNAVAILABLE.to_owned(),
                };
                Some((topic.clone(), reason))
            })
        });
        let asked = futures_util::future::join_all(asks).await;
        refused.extend(asked.into_iter().flatten());
        refused
    }
}

/// A join's params as the join hook is sent them: their JSON (`{}` if not JSON), without `access_token` (a Supabase join may carry the user's token: the application is
/// not sent it).
pub(super) fn hook_params(params: &Payload) -> serde_json::Value {
    let mut params = params
        .as_json()
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(m) = params.as_object_mut() {
        m.remove("access_token");
    }
    params
}

/// A payload as JSON for the application (a binary payload is `null`).
pub(super) fn payload_value(payload: &Payload) -> serde_json::Value {
    payload
        .as_json()
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The application's push hook, if the rule sends `event` to one: its `reply` and what to
/// broadcast, or the reason to refuse the push with. A Supabase broadcast's replacement is
/// wrapped in the broadcast envelope (`{"type": "broadcast", "event", "payload"}`).
pub(super) async fn push_hook(
    conn: &Conn<'_>,
    msg: &Message,
    event: &str,
    rule: &ChannelRule,
    supabase: Option<&JoinConfig>,
) -> Result<
    (
        Option<serde_json::Map<String, serde_json::Value>>,
        Broadcast,
    ),
    String,
> {
    let (Some(hooks), Some(url)) = (conn.node.hooks(), rule.push_hook_for(event)) else {
        return Ok((None, Broadcast::Original));
    };
    let payload = match supabase {
        Some(_) => payload_value(&msg.payload)
            .get("payload")
            .cloned()
            .unwrap_or(serde_json::Value::Null),
        None => payload_value(&msg.payload),
    };
    let d = match hooks
        .push(url, &conn.caller(), &msg.topic, event, payload)
        .await
    {
        Ok(d) if d.allow => d,
        Ok(d) => return Err(d.reason),
        Err(e) => return Err(e.reason.to_owned()),
    };
    let broadcast = match d.broadcast {
        Broadcast::Replace { event: e, payload } => {
            if let Err(invalid) = conn.node.limits().check_event(&e) {
                tracing::warn!(topic = %msg.topic, event = %e, reason = %invalid, "push hook asked to broadcast an invalid event");
                return Err(crate::hooks::UNAVAILABLE.to_owned());
            }
            match supabase {
                Some(_) => Broadcast::Replace {
                    event: msg.event.clone(),
                    payload: serde_json::json!({"type": "broadcast", "event": e, "payload": payload}),
                },
                None => Broadcast::Replace { event: e, payload },
            }
        }
        other => other,
    };
    Ok((d.reply, broadcast))
}
