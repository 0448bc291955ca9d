//! The HTTP client of application hooks and webhooks: the core's
//! [`HookTransport`] on reqwest — one pool of keep-alive
//! connections per node, HTTP/1.1, TLS by rustls trusting the system's roots (and the
//! Mozilla roots bundled in webpki-roots where the system has none). No redirects are
//! followed, no proxy from the environment is used; an answer larger than
//! [`MAX_ANSWER_BYTES`] is a failure.

use bytes::Bytes;
use plexus_core::hooks::{HookAnswer, HookTransport, MAX_ANSWER_BYTES};
use std::time::Duration;

/// What every outbound HTTP client of Plexus has in common (hooks, webhooks, JWKS URLs): no
/// redirects followed, no proxy from the environment, a 5 s connect timeout, Plexus's
/// user agent.
pub fn outbound_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("plexus/", env!("CARGO_PKG_VERSION")))
}

pub struct HookClient {
    http: reqwest::Client,
}

impl HookClient {
    pub fn new() -> Result<Self, String> {
        let http = outbound_client()
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the hook HTTP client: {e}"))?;
        Ok(HookClient { http })
    }
}

#[async_trait::async_trait]
impl HookTransport for HookClient {
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<HookAnswer, String> {
        let mut req = self
            .http
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            req = req.header(*name, value);
        }
        let mut res = req.send().await.map_err(describe_error)?;
        let status = res.status().as_u16();
        let mut out = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(describe_error)? {
            if out.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(HookAnswer {
            status,
            body: out.into(),
        })
    }
}

/// A reqwest error with its causes, without the URL (it may carry credentials; the caller's
/// log names the hook or JWKS URL). Shared by the hook client and the JWKS fetcher.
pub(crate) fn describe_error(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
