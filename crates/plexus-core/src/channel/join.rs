//! Joining a channel: where a join is authorised and carried out — the topic's checks, the
//! node's channel rules (roles, capabilities, presence and per-user limits), the application's
//! join hooks, then the subscription, the reply, the history replay and presence tracking,
//! in that order ([`Channels::join`]).

use super::*;

/// The reply to a successful join: `{}`, or the history position
/// `{"epoch": …, "offset": N}` with `"recovered": bool` when the join asked to recover.
/// Supabase channels add `"postgres_changes": []` (none are supported).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JoinReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_changes: Option<[(); 0]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// What the application's join hook put in its `reply` (never the fields above).
    #[serde(flatten)]
    pub app: serde_json::Map<String, serde_json::Value>,
}

/// Presence meta the application's join hook adds.
pub(super) type AppMeta = serde_json::Map<String, serde_json::Value>;

/// How a join ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined(JoinReply),
    /// `retry: false` tells the application that rejoining cannot succeed.
    Refused {
        reason: String,
        retry: bool,
    },
}

impl JoinOutcome {
    pub(super) fn refused(reason: impl Into<String>, retry: bool) -> Self {
        JoinOutcome::Refused {
            reason: reason.into(),
            retry,
        }
    }

    /// The reply's status and response, as Phoenix clients read them.
    pub fn reply(&self) -> (&'static str, Payload) {
        match self {
            JoinOutcome::Joined(reply) => ("ok", json_payload(reply)),
            JoinOutcome::Refused { reason, retry } => (
                "error",
                json_payload(&serde_json::json!({ "reason": reason, "retry": retry })),
            ),
        }
    }
}

/// A join as a transport asks for it.
pub struct JoinRequest<'a> {
    pub topic: &'a str,
    pub join_ref: Option<&'a str>,
    /// The ref of the client's `phx_join` (may be null).
    pub msg_ref: Option<&'a str>,
    /// Queue the reply for the client (Phoenix transports); else it is only returned (a
    /// transport like SSE renders it itself).
    pub reply: bool,
    /// The join params (`{"recover": {"epoch", "offset"}}` asks for missed history).
    pub params: &'a Payload,
    /// The rule of a topic that no configured rule matches, for connections whose protocol
    /// has its own authority (Pusher: the app's signature); `None`: such topics are refused.
    pub unmatched: Option<&'a Arc<ChannelRule>>,
    /// Track the connection in presence as this member, whatever the rule says (Pusher's
    /// presence channels: the `user_id` and `user_info` the app signed); `None`: the rule
    /// decides, keyed by `sub`.
    pub member: Option<Member>,
}

/// A presence member chosen by the connection's protocol: its key and initial meta.
#[derive(Clone, Debug)]
pub struct Member {
    pub key: Arc<str>,
    pub meta: serde_json::Map<String, serde_json::Value>,
}

impl Channels {
    /// Authorises and performs a join (see the module doc for what the client receives).
    pub async fn join(&mut self, conn: &Conn<'_>, req: JoinRequest<'_>) -> JoinOutcome {
        let started = std::time::Instant::now();
        let outcome = self.join_inner(conn, &req).await;
        crate::metrics::join(started.elapsed());
        // Successful joins replied in order, before their replay and presence_state.
        if let JoinOutcome::Refused { reason, .. } = &outcome {
            conn.node
                .counters
                .joins_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::refused("join", reason);
            tracing::info!(conn = conn.id, sub = %conn.identity.sub, topic = req.topic, reason = %reason, "join refused");
            self.send_join_reply(conn, &req, &outcome);
        }
        outcome
    }

    pub(super) fn send_join_reply(
        &self,
        conn: &Conn<'_>,
        req: &JoinRequest<'_>,
        outcome: &JoinOutcome,
    ) {
        if req.reply {
            let (status, response) = outcome.reply();
            conn.reply(req.join_ref, req.msg_ref, req.topic, status, response);
        }
    }

    async fn join_inner(&mut self, conn: &Conn<'_>, req: &JoinRequest<'_>) -> JoinOutcome {
        let node = conn.node;
        let sub = &conn.identity.sub;
        let topic = req.topic;
        if let Err(invalid) = node.limits().check_topic(topic) {
            return JoinOutcome::refused(invalid.to_string(), false);
        }
        // A user's server-to-user topic (Pusher's `sendToUser`) is that signed-in user's alone,
        // whatever the protocol and the rules.
        if let Some(owner) = topic.strip_prefix(crate::protocol::pusher::SERVER_TO_USER_PREFIX) {
            if conn.identity.user() != Some(owner) {
                return JoinOutcome::refused(
                    "a #server-to-user- topic is only for that user, signed in".to_owned(),
                    false,
                );
            }
        }
        let mut unmatched = false;
        let rule = match (
            node.policy().authorize_join(conn.identity, topic),
            req.unmatched,
        ) {
            (Ok(rule), _) => rule,
            (Err(_), Some(open)) if !node.policy().governs(conn.identity, topic) => {
                unmatched = true;
                open.clone()
            }
            (Err(denied), _) => {
                return JoinOutcome::refused(denied.0, false);
            }
        };
        let supabase = match node.policy().supabase_name(topic) {
            Some(_) => {
                let config = JoinConfig::parse(req.params);
                if config
                    .presence_key
                    .as_ref()
                    .is_some_and(|k| k.len() > supabase::MAX_PRESENCE_KEY_BYTES)
                {
                    return JoinOutcome::refused(
                        format!(
                            "presence.key is too long ({} bytes at most)",
                            supabase::MAX_PRESENCE_KEY_BYTES
                        ),
                        false,
                    );
                }
                if config.postgres_changes > 0 {
                    return JoinOutcome::refused(
                        "postgres_changes are not supported by Plexus (broadcast and presence are)",
                        false,
                    );
                }
                Some(Box::new(config))
            }
            None => None,
        };
        // The caps before the application is asked: a join refused here costs it nothing. The
        // quota claimed is given back if the hook refuses or this future is dropped.
        let duplicate = self.joined.contains_key(topic);
        let quota = match rule.max_per_user {
            _ if duplicate => None,
            _ if self.joined.len() >= node.limits().max_channels_per_connection => {
                return JoinOutcome::refused("too many channels", false);
            }
            Some(max) => match node.joins().claim(topic, sub, max).await {
                Some(q) => Some(q),
                None => {
                    return JoinOutcome::refused(
                        "already joined the maximum number of times (max_per_user)",
                        true,
                    );
                }
            },
            None => None,
        };
        let (app_reply, app_meta) = match self.ask_join_hook(conn, req, &rule).await {
            Ok(answer) => answer,
            Err(refused) => return refused,
        };
        let signin_params = (conn.identity.anonymous && Self::asks_application(conn, &rule))
            .then(|| Box::new(hook_params(req.params)));
        if let Some(old) = self.joined.get_mut(topic) {
            // Duplicate join: close the old channel, keep the subscription, its quota and its
            // presence entry; the new join may ask to recover like any join.
            let old_ref = std::mem::replace(&mut old.join_ref, req.join_ref.map(Into::into));
            old.rule = rule.clone();
            old.signin_params = signin_params;
            if supabase.is_some() {
                old.supabase = supabase;
            }
            let send_state =
                old.presence_key.is_some() || (old.supabase.is_some() && rule.presence);
            let is_supabase = old.supabase.is_some();
            conn.send_close(topic, old_ref.as_deref());
            let outcome = self
                .reply_with_history(conn, req, &rule, false, is_supabase, &app_reply)
                .await;
            if send_state {
                push_presence_state(conn, topic, req.join_ref).await;
            }
            return outcome;
        }
        // Recorded before any further await: if this future is dropped from here on, the
        // socket's teardown departs the channel and gives everything back.
        self.joined.insert(
            topic.into(),
            Channel {
                join_ref: req.join_ref.map(Into::into),
                rule: rule.clone(),
                _quota: quota.map(Box::new),
                // Supabase clients track themselves (`presence` track).
                presence_key: match &req.member {
                    Some(m) => Some(m.key.clone()),
                    None => (rule.presence && supabase.is_none()).then(|| sub.clone()),
                },
                supabase,
                signin_params,
                unmatched,
            },
        );
        let is_supabase = self.joined.get(topic).is_some_and(|c| c.supabase.is_some());
        let outcome = self
            .reply_with_history(conn, req, &rule, true, is_supabase, &app_reply)
            .await;
        conn.node
            .webhook_by(EventKind::Join, conn.by(), || conn.event(topic));
        if let Some(member) = &req.member {
            let mut meta = member.meta.clone();
            meta.extend(app_meta.into_iter().flatten());
            track_presence(conn, topic, req.join_ref, &member.key, meta).await;
        } else if rule.presence && is_supabase {
            push_presence_state(conn, topic, req.join_ref).await;
        } else if rule.presence {
            let mut meta = presence::presence_meta(conn.identity);
            meta.extend(app_meta.into_iter().flatten());
            track_presence(conn, topic, req.join_ref, &conn.identity.sub, meta).await;
        }
        outcome
    }
}
