//! The HTTP client of JWKS URLs (`auth.jwks_urls`): the core's
//! [`JwksFetcher`](plexus_core::auth::remote_keys::JwksFetcher) on reqwest — GET with TLS by
//! rustls trusting the system's roots and the Mozilla roots bundled in webpki-roots (both
//! always: a container without CA certificates still reaches a public provider), no
//! redirects followed, no proxy from the environment (`hook_client::outbound_client`), at most
//! [`FETCH_TIMEOUT`] and [`MAX_JWKS_BYTES`] per answer. Plain `http://` reaches only loopback
//! hosts: the configuration refuses other `http://` URLs.

use plexus_core::auth::remote_keys::{JwksAnswer, JwksFetcher, FETCH_TIMEOUT, MAX_JWKS_BYTES};

pub struct JwksClient {
    http: reqwest::Client,
}

impl JwksClient {
    pub fn new() -> Result<Self, String> {
        let http = crate::hook_client::outbound_client()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?;
        Ok(JwksClient { http })
    }
}

#[async_trait::async_trait]
impl JwksFetcher for JwksClient {
    async fn get(&self, url: &str) -> Result<JwksAnswer, String> {
        let mut res = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(crate::hook_client::describe_error)?;
        let status = res.status();
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let cache_control = res
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(crate::hook_client::describe_error)?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("answer larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(JwksAnswer {
            body,
            cache_control,
        })
    }
}
