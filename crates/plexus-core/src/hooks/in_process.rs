//! The in-process twin of the join hook: an application that embeds Plexus decides joins in
//! its own Rust code ([`JoinAuthority`]) instead of (or before) an HTTP join hook.
//!
//! It is asked where the HTTP join hook is asked — once every channel rule and cap allowed a
//! join, for HTTP history reads (no connection), and again for the joined channels when an
//! anonymous connection signs in — and before that hook: both must allow. Its answer is read
//! as strictly as the HTTP hook's ([`super::answer`]): a refusal without a reason is
//! `unauthorized`, a reason is cut to [`MAX_REASON_CHARS`] characters, a presence meta larger
//! than [`MAX_META_BYTES`] is a broken answer. A broken answer, a panic, or no answer within
//! the timeout refuses the join with [`UNAVAILABLE`], as the HTTP hook's failures do, and
//! never takes the connection (or anything else) down.

use super::answer::{Decision, MAX_REASON_CHARS};
use super::{Caller, HookFailure, UNAVAILABLE};
use crate::presence::MAX_META_BYTES;
use async_trait::async_trait;
use futures_util::FutureExt;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The default time an in-process join decision may take (the HTTP hook's default timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// One join to decide.
pub struct JoinAsk<'a> {
    /// Who asks, from which connection (`None` for an HTTP history read) and address.
    pub caller: &'a Caller<'a>,
    /// The connection's public id (`<node>-<n>`), as the HTTP hook is given it.
    pub conn_id: Option<String>,
    pub topic: &'a str,
    /// The join's params as JSON, without `access_token` (`{"history": true}` for a read).
    pub params: &'a Value,
}

/// Decides joins in the application's process.
#[async_trait]
pub trait JoinAuthority: Send + Sync + 'static {
    /// The decision on `ask` (only `allow`, `reason`, `reply` and `meta` are read).
    async fn decide(&self, ask: JoinAsk<'_>) -> Decision;
}

/// A node's in-process join authority and its timeout.
#[derive(Clone)]
pub struct InProcessJoin {
    authority: Arc<dyn JoinAuthority>,
    timeout: Duration,
}

impl InProcessJoin {
    /// `authority`, given `timeout` per decision.
    pub fn new(authority: Arc<dyn JoinAuthority>, timeout: Duration) -> Self {
        InProcessJoin { authority, timeout }
    }

    /// Asks the authority: its decision (checked), or the failure to refuse the join with.
    pub async fn ask(
        &self,
        caller: &Caller<'_>,
        conn_id: Option<String>,
        topic: &str,
        params: &Value,
    ) -> Result<Decision, HookFailure> {
        let sub = &*caller.identity.sub;
        let decided = std::panic::AssertUnwindSafe(self.authority.decide(JoinAsk {
            caller,
            conn_id,
            topic,
            params,
        }))
        .catch_unwind();
        let failure = |why: &str| {
            tracing::warn!(sub, topic, reason = why, "in-process join authority failed");
            HookFailure {
                reason: UNAVAILABLE,
            }
        };
        let mut d = match tokio::time::timeout(self.timeout, decided).await {
            Err(_) => return Err(failure(&format!("no decision within {:?}", self.timeout))),
            Ok(Err(_)) => return Err(failure("it panicked")),
            Ok(Ok(d)) => d,
        };
        if d.meta
            .as_ref()
            .is_some_and(|m| serde_json::to_vec(m).map_or(true, |v| v.len() > MAX_META_BYTES))
        {
            return Err(failure(&format!(
                "meta is larger than {MAX_META_BYTES} bytes"
            )));
        }
        if !d.allow {
            d.reason = match d.reason.trim() {
                "" => crate::policy::UNAUTHORIZED.to_owned(),
                r => r.chars().take(MAX_REASON_CHARS).collect(),
            };
            tracing::info!(sub, topic, reason = %d.reason, "in-process join authority denied");
        }
        Ok(d)
    }
}
