//! `GET /socket/websocket`: the Phoenix WebSocket endpoint.
//!
//! Checks the handshake (`vsn`, WebSocket headers), authenticates the token from `?token=` or
//! from the phoenix.js 1.8 `authToken` subprotocol (`base64url.bearer.phx.<base64 token>`),
//! then upgrades through hyper and hands the stream to the core's WebSocket transport.
//! Refusals are JSON: 400 for a bad handshake, 403 for a bad token, 503 while draining.

use super::{json_error, Refused};
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper_util::rt::TokioIo;
use plexus_core::protocol::Vsn;
use plexus_core::transport::websocket;
use std::borrow::Cow;
use std::net::SocketAddr;

const AUTH_PROTOCOL_PREFIX: &str = "base64url.bearer.phx.";

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Subprotocols offered by the client.
fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(',').map(|p| p.trim().to_owned()))
        .filter(|p| !p.is_empty())
        .collect()
}

/// Decodes the token carried in a `base64url.bearer.phx.` subprotocol. phoenix.js encodes it
/// with `btoa` (standard alphabet, padding stripped); other clients use base64url: accept both.
fn token_from_protocols(protocols: &[String]) -> Option<Result<String, &'static str>> {
    let encoded = protocols
        .iter()
        .find_map(|p| p.strip_prefix(AUTH_PROTOCOL_PREFIX))?;
    let trimmed = encoded.trim_end_matches('=');
    let normalized: String = trimmed
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    Some(
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(normalized)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("malformed authToken subprotocol"),
    )
}

/// The query parameters the handshake reads. Decoded as axum's `Query` extractor did into a
/// map of every parameter (the last of a name wins), but only these three are kept: decoding
/// the whole query into a `HashMap` was 5 % of a connect + join (BENCHMARKS.md, "Connect cost").
/// A parameter with nothing to decode (no `%`, no `+`: a JWT never has either) is borrowed
/// from the query as it is; decoding and copying the token was another 5 %.
#[derive(Default)]
struct HandshakeParams<'q> {
    vsn: Option<Cow<'q, str>>,
    token: Option<Cow<'q, str>>,
    apikey: Option<Cow<'q, str>>,
}

impl<'q> HandshakeParams<'q> {
    fn parse(query: Option<&'q str>) -> Self {
        let mut params = Self::default();
        for pair in query.unwrap_or_default().split('&') {
            let (name, value) = if pair.contains(['%', '+']) {
                // form_urlencoded's decoding of this one pair (percent, `+`, lossy UTF-8).
                match form_urlencoded::parse(pair.as_bytes()).next() {
                    Some(decoded) => decoded,
                    None => continue,
                }
            } else if pair.is_empty() {
                continue;
            } else {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (Cow::Borrowed(name), Cow::Borrowed(value))
            };
            let slot = match &*name {
                "vsn" => &mut params.vsn,
                "token" => &mut params.token,
                "apikey" => &mut params.apikey,
                _ => continue,
            };
            *slot = Some(value);
        }
        params
    }
}

fn accept_key(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let params = HandshakeParams::parse(req.uri().query());
    let headers = req.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return json_error(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request (Connection: Upgrade, Upgrade: websocket)",
        );
    }
    let vsn = match Vsn::negotiate(params.vsn.as_deref()) {
        Ok(vsn) => vsn,
        Err(reason) => {
            tracing::info!(peer = %peer, transport = "websocket", reason, "connection refused");
            plexus_core::metrics::refused("vsn", &reason);
            return json_error(StatusCode::BAD_REQUEST, reason);
        }
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = json_error(
            StatusCode::BAD_REQUEST,
            "unsupported Sec-WebSocket-Version: expected 13",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
    else {
        return json_error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key header");
    };
    let protocols = offered_protocols(headers);

    // Supabase's clients send their token as `apikey` (when Supabase clients are served).
    let query_token = params
        .token
        .or_else(|| params.apikey.filter(|_| state.config.supabase));
    let token = match query_token {
        Some(t) => Some(t),
        None => match token_from_protocols(&protocols) {
            Some(Ok(t)) => Some(Cow::Owned(t)),
            Some(Err(reason)) => {
                tracing::warn!(peer = %peer, reason, "connection refused");
                return json_error(StatusCode::FORBIDDEN, reason);
            }
            None => crate::api_key::bearer(headers).map(Cow::Borrowed),
        },
    };
    let node = state.node.clone();
    let (identity, permit) = match node.admit(peer, headers, token.as_deref()).await {
        Ok(admitted) => admitted,
        Err(refusal) => return Refused(refusal).into_response(),
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    // The plain TCP socket under the upgraded connection (not with TLS), for write-through.
    let raw = req
        .extensions()
        .get::<plexus_core::write_through::RawSocket>()
        .copied();
    // Everything the task needs in one box, taken apart when it starts: what an async block
    // captures stays in its future for the connection's whole life, a box is freed at once
    // (BENCHMARKS.md, "Memory per idle connection").
    let start = Box::new(Start {
        node,
        identity,
        permit,
        on_upgrade,
        raw,
        peer,
        vsn,
    });
    tokio::spawn(async move {
        let Start {
            node,
            identity,
            permit,
            on_upgrade,
            raw,
            peer,
            vsn,
        } = unbox(start);
        match on_upgrade.await {
            Ok(upgraded) => {
                let _counted = crate::transport_counts::TransportCounts::open(
                    crate::transport_counts::Counted::WebSocket,
                );
                // Who, for the closing line: kept (one box) only when it will be logged.
                let who = tracing::enabled!(tracing::Level::DEBUG)
                    .then(|| Box::new((peer, identity.sub.clone())));
                tracing::debug!(peer = %peer, sub = %identity.sub, vsn = vsn.as_str(), "websocket connected");
                websocket::serve(
                    node,
                    identity,
                    permit,
                    websocket::Wire::Phoenix(vsn),
                    TokioIo::new(upgraded),
                    &[],
                    raw,
                )
                .await;
                if let Some(who) = who {
                    tracing::debug!(peer = %who.0, sub = %who.1, "websocket closed");
                }
            }
            Err(e) => tracing::debug!(peer = %peer, error = %e, "upgrade failed"),
        }
    });

    switching_protocols(&key, protocols.iter().any(|p| p == "phoenix"))
}

/// What a connection's task starts from (boxed until it starts).
struct Start {
    node: std::sync::Arc<plexus_core::node::Node>,
    identity: plexus_core::auth::Identity,
    permit: plexus_core::admission::Permit,
    on_upgrade: hyper::upgrade::OnUpgrade,
    raw: Option<plexus_core::write_through::RawSocket>,
    peer: SocketAddr,
    vsn: Vsn,
}

/// The contents of a box, the box freed now. (`let x = *boxed;` in an async block frees the
/// box only at the end of the block's scope: for a connection's task, when it ends.)
#[allow(clippy::boxed_local)] // taking the box is the point: it is freed here
pub(super) fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// The `Sec-WebSocket-Key` of a valid WebSocket upgrade request (headers only).
pub fn handshake_key(headers: &HeaderMap) -> Option<Vec<u8>> {
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
        || headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
    {
        return None;
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
}

/// The 101 response completing a handshake.
pub fn switching_protocols(key: &[u8], phoenix_protocol: bool) -> Response {
    let mut res = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept_key(key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if phoenix_protocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("phoenix"),
        );
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn auth_token_in_either_alphabet() {
        // "??>" and "???" encode with '+' and '/' in the standard alphabet, '-' and '_' in url.
        let token = "??>???.x";
        let std = base64::engine::general_purpose::STANDARD_NO_PAD.encode(token);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        assert_ne!(std, url);
        for enc in [std, url] {
            let protos = vec!["phoenix".to_owned(), format!("{AUTH_PROTOCOL_PREFIX}{enc}")];
            assert_eq!(token_from_protocols(&protos), Some(Ok(token.to_owned())));
        }
        let protos = vec![format!("{AUTH_PROTOCOL_PREFIX}!!!")];
        assert!(matches!(token_from_protocols(&protos), Some(Err(_))));
    }

    #[test]
    fn handshake_params_decode_like_a_query_map() {
        // Percent and `+` decoding, other names ignored, the last of a name wins.
        let p = HandshakeParams::parse(Some("vsn=1.0.0&token=a%2Bb+c&x=1&apikey=k&vsn=2.0.0"));
        assert_eq!(p.vsn.as_deref(), Some("2.0.0"));
        assert_eq!(p.token.as_deref(), Some("a+b c"));
        assert_eq!(p.apikey.as_deref(), Some("k"));
        let none = HandshakeParams::parse(None);
        assert!(none.vsn.is_none() && none.token.is_none() && none.apikey.is_none());
        // Each pair decodes as form_urlencoded decodes the whole query, borrowed or not.
        let queries = [
            "token=eyJ.eyJ.sig-_&vsn=2.0.0",
            "&&token&vsn=&=x&token=a=b",
            "t%6Fken=x&token=%E2%82%AC+%ZZ%&apikey=%FF",
            "vsn=2.0.0&token=last&token=",
        ];
        for q in queries {
            let p = HandshakeParams::parse(Some(q));
            let mut want: [Option<String>; 3] = Default::default();
            for (name, value) in form_urlencoded::parse(q.as_bytes()) {
                match &*name {
                    "vsn" => want[0] = Some(value.into_owned()),
                    "token" => want[1] = Some(value.into_owned()),
                    "apikey" => want[2] = Some(value.into_owned()),
                    _ => {}
                }
            }
            let got = [p.vsn, p.token, p.apikey].map(|v| v.map(Cow::into_owned));
            assert_eq!(got, want, "{q}");
        }
        let p = HandshakeParams::parse(Some("vsn=2.0.0&token=eyJ.x.y"));
        assert!(matches!(p.token, Some(Cow::Borrowed("eyJ.x.y"))));
    }
}
