//! Admission at the node: every connect-time check for any transport ([`Node::admit`],
//! [`Node::admit_as`]: client address through trusted proxies, connect rate, `Origin`, token,
//! draining, per-address and per-user caps, the connect hook), the checks of a read without a
//! connection (SSE, HTTP polling: [`Node::authorize_read`], [`Node::read_hook`]), and token
//! verification ([`Node::authenticate`]).

use super::Node;
use crate::admission::{Permit, Refusal};
use crate::auth::{AuthError, Identity};
use std::sync::atomic::Ordering;

impl Node {
    /// Every connect-time check, for any transport: client address (trusted proxies), attempt
    /// rate, `Origin`, token, draining, per-address and per-user caps (node-wide, then
    /// cluster-wide through the broker; if the broker is unreachable the node-wide caps hold).
    pub async fn admit(
        &self,
        peer: std::net::SocketAddr,
        headers: &http::HeaderMap,
        token: Option<&str>,
    ) -> Result<(Identity, Permit), Refusal> {
        self.admit_as(peer, headers, self.authenticate(token)).await
    }

    /// [`Node::admit`] for a connection whose identity does not come from a token: the same
    /// checks, in the same order, with `identify` (awaited after the address and `Origin`
    /// checks) in place of the token's verification (a Pusher connection is an anonymous
    /// `pusher:<socket_id>`).
    pub async fn admit_as(
        &self,
        peer: std::net::SocketAddr,
        headers: &http::HeaderMap,
        identify: impl std::future::Future<Output = Result<Identity, AuthError>>,
    ) -> Result<(Identity, Permit), Refusal> {
        let ip = self.admission.client_ip(peer, headers);
        let refuse = |r: Refusal| {
            tracing::warn!(client = %ip, status = r.status, reason = %r.reason, "connection refused");
            self.counters.count_refusal(r.status);
            crate::metrics::refused("connect", &r.reason);
            r
        };
        self.admission.check_rate(ip).map_err(refuse)?;
        self.admission.check_origin(headers).map_err(refuse)?;
        let identity = identify.await.map_err(|e| refuse(e.into()))?;
        if self.is_draining() {
            return Err(refuse(Refusal {
                status: 503,
                reason: "server draining, reconnect to another node".into(),
            }));
        }
        let mut permit = self.admission.acquire(ip, &identity).inspect_err(|r| {
            tracing::warn!(client = %ip, sub = %identity.sub, status = r.status, reason = %r.reason, "connection refused");
            self.counters.count_refusal(r.status);
            crate::metrics::refused("connect", &r.reason);
        })?;
        if let Err(e) = self
            .admission
            .claim_cluster(&self.broker, &mut permit, ip, &identity)
            .await
        {
            if let Some(r) = e {
                return Err(refuse(r));
            }
            self.counters.broker_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(hooks) = &self.hooks {
            // Last: only a connection every local check admits costs the application a call.
            match hooks.connect(&identity, ip).await {
                Ok(Some(d)) if !d.allow => {
                    return Err(refuse(Refusal {
                        status: 403,
                        reason: d.reason,
                    }))
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(refuse(Refusal {
                        status: 503,
                        reason: e.reason.into(),
                    }))
                }
            }
        }
        Ok((identity, permit))
    }

    /// Checks for a read without a connection (HTTP history polling, SSE topics): client
    /// address rate, `Origin`, token, and the join rule of `topic`.
    pub async fn authorize_read(
        &self,
        peer: std::net::SocketAddr,
        headers: &http::HeaderMap,
        token: Option<&str>,
        topic: &str,
    ) -> Result<Identity, Refusal> {
        let ip = self.admission.client_ip(peer, headers);
        let refuse = |r: Refusal| {
            tracing::warn!(client = %ip, topic, status = r.status, reason = %r.reason, "read refused");
            r
        };
        self.admission.check_rate(ip).map_err(refuse)?;
        self.admission.check_origin(headers).map_err(refuse)?;
        let identity = self
            .authenticate(token)
            .await
            .map_err(|e| refuse(e.into()))?;
        self.policy.authorize_join(&identity, topic).map_err(|d| {
            refuse(Refusal {
                status: 403,
                reason: format!("{}: {topic}", d.0),
            })
        })?;
        Ok(identity)
    }

    /// After [`Node::authorize_read`] allowed a read: the in-process join authority, if the
    /// embedding application set one, then the join hook of `topic`'s rule, if it has one
    /// (each asked like a join without a connection: no `conn`, params `{"history": true}`),
    /// so that HTTP history polling cannot read what a join would be refused.
    pub async fn read_hook(
        &self,
        identity: &Identity,
        peer: std::net::SocketAddr,
        headers: &http::HeaderMap,
        topic: &str,
    ) -> Result<(), Refusal> {
        let Ok(rule) = self.policy.authorize_join(identity, topic) else {
            return Ok(()); // authorize_read allowed it: cannot happen
        };
        let hook = self
            .hooks
            .as_ref()
            .and_then(|h| Some((h, h.join_url(rule.join_hook.as_deref())?)));
        if hook.is_none() && self.join_authority.is_none() {
            return Ok(());
        }
        let caller = crate::hooks::Caller {
            identity,
            conn: None,
            addr: Some(self.admission.client_ip(peer, headers)),
        };
        let params = serde_json::json!({ "history": true });
        let decided = |d: Result<crate::hooks::answer::Decision, crate::hooks::HookFailure>| match d
        {
            Ok(d) if d.allow => Ok(()),
            Ok(d) => Err(Refusal {
                status: 403,
                reason: d.reason,
            }),
            Err(e) => Err(Refusal {
                status: 503,
                reason: e.reason.into(),
            }),
        };
        if let Some(local) = &self.join_authority {
            decided(local.ask(&caller, None, topic, &params).await)?;
        }
        match hook {
            Some((hooks, url)) => decided(hooks.join(url, &caller, topic, params).await),
            None => Ok(()),
        }
    }

    /// Verifies a connect token (a `kid` no key has may first have the JWKS URLs fetched
    /// again: [`Verifier::verify_fetching`](crate::auth::Verifier::verify_fetching)).
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        match token {
            None => Err(AuthError::MissingToken),
            Some(t) => self.verifier.verify_fetching(t).await,
        }
    }
}
