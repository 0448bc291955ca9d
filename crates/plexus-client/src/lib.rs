//! An async Rust client for Plexus (and any Phoenix Channels V2 server).
//!
//! One [`Client`] owns one WebSocket. It has no background task: calls that expect a reply
//! ([`Client::join`], [`Client::push`], …) read the socket until their reply arrives and keep
//! every other message for [`Client::recv`], in arrival order. That keeps it small enough to
//! hold thousands of connections in a benchmark, and deterministic in tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), plexus_client::ClientError> {
//! use plexus_client::{Client, ConnectOptions};
//! let mut c = Client::connect(ConnectOptions::new("ws://127.0.0.1:4000/socket").token("…")).await?;
//! let reply = c.join("room:lobby", serde_json::json!({})).await?;
//! assert_eq!(reply.status, "ok");
//! c.push_json("room:lobby", "new_msg", &serde_json::json!({"body": "hi"})).await?;
//! let msg = c.recv().await?; // broadcasts from others
//! # Ok(()) }
//! ```

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use plexus_core::protocol::{
    decode_client_text_v1, decode_server_binary, decode_server_text, encode_client_push,
    encode_client_v1, events, Frame, Message, Payload, ServerBinary, Vsn, PHOENIX_TOPIC,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_websockets::{ClientBuilder, WebSocketStream};

pub use tokio_rustls::rustls;

/// The byte stream under the WebSocket: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub use plexus_core::protocol;

/// Errors a client call can end with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("connection closed by the server (code {code:?}, reason {reason:?})")]
    Closed { code: Option<u16>, reason: String },
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A reply to a client message.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: String,
    pub response: Payload,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }

    /// The response as a JSON value (`Null` for binary responses).
    pub fn json(&self) -> serde_json::Value {
        self.response
            .as_json()
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// `response.reason` of an error reply.
    pub fn reason(&self) -> Option<String> {
        self.json()
            .get("reason")
            .and_then(|r| r.as_str())
            .map(str::to_owned)
    }
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// The socket URL as phoenix.js takes it, e.g. `ws://127.0.0.1:4000/socket`.
    pub url: String,
    pub token: Option<String>,
    /// Send the token as the phoenix.js 1.8 `authToken` subprotocol instead of `?token=`.
    pub token_as_subprotocol: bool,
    /// Extra query parameters.
    pub params: Vec<(String, String)>,
    /// Extra handshake headers (`Origin`, `X-Forwarded-For`, `Authorization`, …).
    pub headers: Vec<(String, String)>,
    /// Local address to connect from (spreads load tests over 127.0.0.x).
    pub source: Option<SocketAddr>,
    /// How long calls wait for a reply.
    pub timeout: Duration,
    /// TLS settings for `wss://` URLs (trusted roots); required for `wss://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The protocol version to speak (V2 unless set).
    pub vsn: Vsn,
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            token: None,
            token_as_subprotocol: false,
            params: Vec::new(),
            headers: Vec::new(),
            source: None,
            timeout: Duration::from_secs(5),
            tls: None,
            vsn: Vsn::V2,
        }
    }

    /// Speak Phoenix protocol version `vsn` (`?vsn=1.0.0` sends and receives V1 objects).
    pub fn vsn(mut self, vsn: Vsn) -> Self {
        self.vsn = vsn;
        self
    }

    /// Trust exactly these PEM certificates for `wss://` (e.g. a test's self-signed one).
    pub fn tls_roots_pem(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ClientError::Handshake(format!("bad PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Handshake(format!("bad certificate: {e}")))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Handshake(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        self.tls = Some(Arc::new(config));
        Ok(self)
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn token_as_subprotocol(mut self) -> Self {
        self.token_as_subprotocol = true;
        self
    }

    pub fn param(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.params.push((k.into(), v.into()));
        self
    }

    pub fn header(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn source(mut self, addr: SocketAddr) -> Self {
        self.source = Some(addr);
        self
    }

    /// The full endpoint URL: `<url>/websocket?vsn=2.0.0&…`.
    pub fn endpoint(&self) -> String {
        let mut url = format!(
            "{}/websocket?vsn={}",
            self.url.trim_end_matches('/'),
            self.vsn.as_str()
        );
        if let (Some(t), false) = (&self.token, self.token_as_subprotocol) {
            url.push_str("&token=");
            url.push_str(&percent_encode(t));
        }
        for (k, v) in &self.params {
            url.push('&');
            url.push_str(&percent_encode(k));
            url.push('=');
            url.push_str(&percent_encode(v));
        }
        url
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64_no_pad(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// One Phoenix socket.
pub struct Client {
    ws: WebSocketStream<Box<dyn Io>>,
    next_ref: u64,
    join_refs: HashMap<String, String>,
    pending: VecDeque<Message>,
    timeout: Duration,
    vsn: Vsn,
}

impl Client {
    /// Opens the socket (`<url>/websocket?vsn=2.0.0`) and completes the WebSocket handshake.
    pub async fn connect(opts: ConnectOptions) -> Result<Self, ClientError> {
        let endpoint = opts.endpoint();
        let mut builder = ClientBuilder::new()
            .uri(&endpoint)
            .map_err(|e| ClientError::Handshake(format!("invalid url {endpoint}: {e}")))?;
        if let (Some(t), true) = (&opts.token, opts.token_as_subprotocol) {
            let value = format!(
                "phoenix, base64url.bearer.phx.{}",
                base64_no_pad(t.as_bytes())
            );
            let value = http::HeaderValue::from_str(&value)
                .map_err(|e| ClientError::Handshake(e.to_string()))?;
            builder = builder
                .add_header(http::header::SEC_WEBSOCKET_PROTOCOL, value)
                .map_err(|e| ClientError::Handshake(e.to_string()))?;
        }
        for (k, v) in &opts.headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ClientError::Handshake(e.to_string()))?;
            let value = http::HeaderValue::from_str(v)
                .map_err(|e| ClientError::Handshake(e.to_string()))?;
            builder = builder
                .add_header(name, value)
                .map_err(|e| ClientError::Handshake(e.to_string()))?;
        }
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| ClientError::Handshake(format!("invalid url: {e}")))?;
        let host = uri
            .host()
            .unwrap_or("127.0.0.1")
            .trim_matches(['[', ']'])
            .to_owned();
        let secure = uri.scheme_str() == Some("wss");
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| ClientError::Handshake(format!("cannot resolve {host}")))?;
        let stream = match opts.source {
            Some(src) => {
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.bind(src)?;
                socket.connect(addr).await?
            }
            None => TcpStream::connect(addr).await?,
        };
        stream.set_nodelay(true)?;
        let io: Box<dyn Io> = if secure {
            let config = opts.tls.clone().ok_or_else(|| {
                ClientError::Handshake(
                    "wss:// needs TLS settings (ConnectOptions::tls_roots_pem)".into(),
                )
            })?;
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .map_err(|e| ClientError::Handshake(format!("bad server name {host}: {e}")))?;
            let tls = tokio::time::timeout(
                opts.timeout,
                tokio_rustls::TlsConnector::from(config).connect(name, stream),
            )
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Handshake(format!("TLS: {e}")))?;
            Box::new(tls)
        } else {
            Box::new(stream)
        };
        let connect = builder.connect_on(io);
        let (ws, _resp) = tokio::time::timeout(opts.timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Handshake(e.to_string()))?;
        Ok(Client {
            ws,
            next_ref: 0,
            join_refs: HashMap::new(),
            pending: VecDeque::new(),
            timeout: opts.timeout,
            vsn: opts.vsn,
        })
    }

    /// Encodes a client message in the connection's protocol version (V1 carries JSON only).
    fn encode(
        &self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Result<Frame, ClientError> {
        match (self.vsn, payload) {
            (Vsn::V2, _) => encode_client_push(join_ref, msg_ref, topic, event, payload)
                .map_err(|e| ClientError::Protocol(e.to_string())),
            (Vsn::V1, Payload::Json(raw)) => {
                Ok(encode_client_v1(join_ref, msg_ref, topic, event, raw))
            }
            (Vsn::V1, Payload::Binary(_)) => Err(ClientError::Protocol(
                "V1 has no binary frames: connect with Vsn::V2".into(),
            )),
        }
    }

    fn make_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    /// Sends an already encoded frame.
    pub async fn send_frame(&mut self, frame: Frame) -> Result<(), ClientError> {
        let msg = match frame {
            Frame::Text(b) => tokio_websockets::Message::text(b),
            Frame::Binary(b) => tokio_websockets::Message::binary(b),
        };
        self.ws.send(msg).await.map_err(ws_err)
    }

    /// Sends arbitrary text (for protocol tests).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.send_frame(Frame::Text(Bytes::copy_from_slice(text.as_bytes())))
            .await
    }

    /// Sends arbitrary bytes as a binary frame (for protocol tests).
    pub async fn send_binary(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.send_frame(Frame::Binary(Bytes::copy_from_slice(data)))
            .await
    }

    /// Sends a message and waits for the reply with the same ref.
    pub async fn request(
        &mut self,
        join_ref: Option<String>,
        topic: &str,
        event: &str,
        payload: Payload,
    ) -> Result<Reply, ClientError> {
        let msg_ref = self.make_ref();
        let frame = self.encode(join_ref.as_deref(), Some(&msg_ref), topic, event, &payload)?;
        self.send_frame(frame).await?;
        self.wait_reply(&msg_ref).await
    }

    /// Waits for the reply to `msg_ref`, keeping other messages for [`Client::recv`].
    pub async fn wait_reply(&mut self, msg_ref: &str) -> Result<Reply, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.read())
                .await
                .map_err(|_| ClientError::Timeout)??;
            if msg.event == events::REPLY && msg.msg_ref.as_deref() == Some(msg_ref) {
                return reply_of(msg);
            }
            self.pending.push_back(msg);
        }
    }

    /// Joins `topic` with join params.
    pub async fn join(
        &mut self,
        topic: &str,
        params: serde_json::Value,
    ) -> Result<Reply, ClientError> {
        let join_ref = self.make_ref();
        let payload = Payload::json(&params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let frame = self.encode(
            Some(&join_ref),
            Some(&join_ref),
            topic,
            events::JOIN,
            &payload,
        )?;
        self.send_frame(frame).await?;
        let reply = self.wait_reply(&join_ref).await?;
        if reply.is_ok() {
            self.join_refs.insert(topic.to_owned(), join_ref);
        }
        Ok(reply)
    }

    /// Leaves `topic`; the server replies, then sends `phx_close`.
    pub async fn leave(&mut self, topic: &str) -> Result<Reply, ClientError> {
        let join_ref = self.join_refs.remove(topic);
        self.request(join_ref, topic, events::LEAVE, Payload::empty_object())
            .await
    }

    /// Pushes an event on a joined topic and waits for the reply.
    pub async fn push(
        &mut self,
        topic: &str,
        event: &str,
        payload: Payload,
    ) -> Result<Reply, ClientError> {
        let join_ref = self.join_refs.get(topic).cloned();
        self.request(join_ref, topic, event, payload).await
    }

    /// [`Client::push`] with a JSON payload.
    pub async fn push_json(
        &mut self,
        topic: &str,
        event: &str,
        payload: &serde_json::Value,
    ) -> Result<Reply, ClientError> {
        let payload = Payload::json(payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.push(topic, event, payload).await
    }

    /// Sends a heartbeat and waits for its reply.
    pub async fn heartbeat(&mut self) -> Result<Reply, ClientError> {
        self.request(
            None,
            PHOENIX_TOPIC,
            events::HEARTBEAT,
            Payload::empty_object(),
        )
        .await
    }

    /// The join_ref of a joined topic.
    pub fn join_ref(&self, topic: &str) -> Option<&str> {
        self.join_refs.get(topic).map(String::as_str)
    }

    /// The next message that was not a reply someone waited for.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(m);
        }
        self.read().await
    }

    /// [`Client::recv`] with a timeout; `Ok(None)` when nothing arrived in time.
    pub async fn recv_timeout(&mut self, d: Duration) -> Result<Option<Message>, ClientError> {
        match tokio::time::timeout(d, self.recv()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Receives until a message on `topic` with `event` arrives (others are dropped).
    pub async fn recv_event(&mut self, topic: &str, event: &str) -> Result<Message, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let m = tokio::time::timeout_at(deadline, self.recv())
                .await
                .map_err(|_| ClientError::Timeout)??;
            if m.topic == topic && m.event == event {
                return Ok(m);
            }
        }
    }

    /// Like [`Client::recv_event`] but gives up after `d`: `Ok(None)` if no such message came.
    pub async fn recv_event_timeout(
        &mut self,
        topic: &str,
        event: &str,
        d: Duration,
    ) -> Result<Option<Message>, ClientError> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.recv()).await {
                Err(_) => return Ok(None),
                Ok(m) => {
                    let m = m?;
                    if m.topic == topic && m.event == event {
                        return Ok(Some(m));
                    }
                }
            }
        }
    }

    /// Reads the next Phoenix message from the socket.
    async fn read(&mut self) -> Result<Message, ClientError> {
        loop {
            let Some(item) = self.ws.next().await else {
                return Err(ClientError::Closed {
                    code: None,
                    reason: String::new(),
                });
            };
            let msg = item.map_err(ws_err)?;
            if let Some((code, reason)) = msg.as_close() {
                return Err(ClientError::Closed {
                    code: Some(code.into()),
                    reason: reason.to_owned(),
                });
            }
            if msg.is_text() {
                let data = Bytes::from(msg.into_payload());
                let decoded = match self.vsn {
                    Vsn::V2 => decode_server_text(&data),
                    Vsn::V1 => decode_client_text_v1(&data),
                };
                return decoded.map_err(|e| ClientError::Protocol(e.to_string()));
            }
            if msg.is_binary() {
                let data = Bytes::from(msg.into_payload());
                let decoded = decode_server_binary(&data)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                return Ok(binary_to_message(decoded));
            }
            // ping/pong: handled by the library.
        }
    }

    /// Waits until the server closes the socket; returns its close code and reason.
    pub async fn wait_close(&mut self) -> Result<(Option<u16>, String), ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.read()).await {
                Err(_) => return Err(ClientError::Timeout),
                Ok(Err(ClientError::Closed { code, reason })) => return Ok((code, reason)),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(m)) => self.pending.push_back(m),
            }
        }
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .send(tokio_websockets::Message::close(
                Some(tokio_websockets::CloseCode::NORMAL_CLOSURE),
                "",
            ))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

fn ws_err(e: tokio_websockets::Error) -> ClientError {
    match e {
        tokio_websockets::Error::Io(io) => ClientError::Io(io),
        tokio_websockets::Error::AlreadyClosed => ClientError::Closed {
            code: None,
            reason: "already closed".into(),
        },
        other => ClientError::Protocol(other.to_string()),
    }
}

fn reply_of(msg: Message) -> Result<Reply, ClientError> {
    match msg.payload {
        Payload::Json(raw) => {
            #[derive(serde::Deserialize)]
            struct R {
                status: String,
                #[serde(default)]
                response: Option<Box<serde_json::value::RawValue>>,
            }
            let r: R = serde_json::from_str(raw.get())
                .map_err(|e| ClientError::Protocol(format!("bad reply payload: {e}")))?;
            Ok(Reply {
                status: r.status,
                response: r
                    .response
                    .map(Payload::Json)
                    .unwrap_or_else(Payload::empty_object),
            })
        }
        Payload::Binary(b) => Err(ClientError::Protocol(format!(
            "binary reply without status ({} bytes)",
            b.len()
        ))),
    }
}

fn binary_to_message(b: ServerBinary) -> Message {
    match b {
        ServerBinary::Push {
            join_ref,
            topic,
            event,
            payload,
        } => Message {
            join_ref,
            msg_ref: None,
            topic,
            event,
            payload: Payload::Binary(payload),
        },
        // A binary reply is turned into a JSON-shaped reply whose status is kept and whose
        // response is the binary data, as phoenix.js does.
        ServerBinary::Reply {
            join_ref,
            msg_ref,
            topic,
            status,
            payload,
        } => Message {
            join_ref,
            msg_ref,
            topic,
            event: format!("{}:{status}", events::REPLY),
            payload: Payload::Binary(payload),
        },
        ServerBinary::Broadcast {
            topic,
            event,
            payload,
        } => Message {
            join_ref: None,
            msg_ref: None,
            topic,
            event,
            payload: Payload::Binary(payload),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_btoa_without_padding() {
        assert_eq!(base64_no_pad(b"f"), "Zg");
        assert_eq!(base64_no_pad(b"fo"), "Zm8");
        assert_eq!(base64_no_pad(b"foo"), "Zm9v");
        assert_eq!(base64_no_pad(&[0xfb, 0xff]), "+/8");
    }

    #[test]
    fn endpoint_has_vsn_and_token() {
        let o = ConnectOptions::new("ws://h:1/socket/").token("a.b+c");
        assert_eq!(
            o.endpoint(),
            "ws://h:1/socket/websocket?vsn=2.0.0&token=a.b%2Bc"
        );
    }
}
