//! The application's hooks on a channel (docs/hooks.md): the join hook, asked once every
//! local check allowed a join (and again for the joined channels when an anonymous
//! connection signs in), and the push hook, asked once the rule allowed a push. Their
//! refusals and failures become the client's error replies.

use super::{AppMeta, Channels, Conn, JoinOutcome, JoinRequest};
use crate::hooks::answer::Broadcast;
use crate::policy::ChannelRule;
use crate::protocol::{Message, Payload};
use crate::supabase::JoinConfig;

impl Channels {
    /// The application's join hook, if the rule has one (after every local check passed):
    /// its `reply` (minus the fields Plexus sets) and `meta`, or the refusal to answer.
    pub(super) async fn ask_join_hook(
        &self,
        conn: &Conn<'_>,
        req: &JoinRequest<'_>,
        rule: &ChannelRule,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, Option<AppMeta>), JoinOutcome> {
        let Some(hooks) = conn.node.hooks() else {
            return Ok(Default::default());
        };
        let Some(url) = hooks.join_url(rule.join_hook.as_deref()) else {
            return Ok(Default::default());
        };
        let params = hook_params(req.params);
        match hooks.join(url, &conn.caller(), req.topic, params).await {
            Ok(d) if d.allow => {
                let mut reply = d.reply.unwrap_or_default();
                for reserved in ["postgres_changes", "epoch", "offset", "recovered"] {
                    reply.remove(reserved);
                }
                Ok((reply, d.meta))
            }
            Ok(d) => Err(JoinOutcome::refused(d.reason, false)),
            Err(e) => Err(JoinOutcome::refused(e.reason, true)),
        }
    }
}

impl Channels {
    /// After an anonymous connection's sign-in (`conn` carries the user's identity): the
    /// joined topics the user may not stay in, with the reason — those the rules now refuse,
    /// and those whose rule has a join hook that, asked again with the user and the join's
    /// params (all at once), refuses (`the join hook refused the signed-in user: <reason>`) or
    /// does not answer (`hook unavailable`).
    pub(crate) async fn signin_refusals(&self, conn: &Conn<'_>) -> Vec<(Box<str>, String)> {
        let mut refused = self.rule_refusals(conn);
        let Some(hooks) = conn.node.hooks() else {
            return refused;
        };
        let caller = conn.caller();
        let asks = self.joined.iter().filter_map(|(topic, channel)| {
            let rule = conn
                .node
                .policy()
                .authorize_join(conn.identity, topic)
                .ok()?;
            let url = hooks.join_url(rule.join_hook.as_deref())?.to_owned();
            let params = channel
                .signin_params
                .as_deref()
                .cloned()
                .unwrap_or_else(|| serde_json::json!({}));
            let caller = &caller;
            Some(async move {
                let reason = match hooks.join(&url, caller, topic, params).await {
                    Ok(d) if d.allow => return None,
                    Ok(d) => format!("the join hook refused the signed-in user: {}", d.reason),
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
