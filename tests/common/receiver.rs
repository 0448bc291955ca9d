//! A real HTTP server standing in for the application behind hooks and webhooks: it checks
//! every request's signature (HMAC-SHA256 of `timestamp + "." + body`, computed here with the
//! `hmac` crate, independently of Plexus's code), records the requests, and answers what the
//! test's handler says (JSON, a status, garbage, or nothing for a while).
#![allow(dead_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

pub const HOOK_SECRET: &str = "hook-secret-0123456789abcdef";

/// What the application answers.
pub enum Answer {
    Json(Value),
    Status(u16),
    /// Answers after a pause.
    Slow(Duration, Value),
    /// A 200 with a body that is not a valid answer.
    Raw(&'static str),
}

pub type Handler = Arc<dyn Fn(&str, &Value) -> Answer + Send + Sync>;

/// One request received: path, body, and whether its signature verified.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub body: Value,
    pub signed: bool,
    /// The status answered (0 while the answer is still pending: requests are recorded on
    /// arrival).
    pub status: u16,
}

struct Inner {
    handler: Mutex<Handler>,
    received: Mutex<Vec<Received>>,
}

pub struct Receiver {
    pub port: u16,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (get("x-plexus-timestamp"), get("x-plexus-signature")) else {
        return false;
    };
    let Ok(t) = ts.parse::<u64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(t) > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    expected == sig
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let signed = verify(&headers, &body);
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_owned();
    let index = {
        let mut received = inner.received.lock();
        received.push(Received {
            path: path.clone(),
            body: value.clone(),
            signed,
            status: 0,
        });
        received.len() - 1
    };
    let answer = {
        let h = inner.handler.lock().clone();
        h(&path, &value)
    };
    let (status, response) = match answer {
        Answer::Json(v) => (200, axum::Json(v).into_response()),
        Answer::Status(s) => (s, StatusCode::from_u16(s).unwrap().into_response()),
        Answer::Slow(d, v) => {
            tokio::time::sleep(d).await;
            (200, axum::Json(v).into_response())
        }
        Answer::Raw(text) => (200, text.into_response()),
    };
    inner.received.lock()[index].status = status;
    response
}

impl Receiver {
    pub async fn start(
        handler: impl Fn(&str, &Value) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(l, Arc::new(handler))
    }

    /// Listens on `port` (a receiver that comes up late).
    pub async fn start_on(
        port: u16,
        handler: impl Fn(&str, &Value) -> Answer + Send + Sync + 'static,
    ) -> Receiver {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Self::serve(l, Arc::new(handler))
    }

    fn serve(l: tokio::net::TcpListener, handler: Handler) -> Receiver {
        let port = l.local_addr().unwrap().port();
        let inner = Arc::new(Inner {
            handler: Mutex::new(handler),
            received: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Receiver { port, inner, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn set_handler(&self, handler: impl Fn(&str, &Value) -> Answer + Send + Sync + 'static) {
        *self.inner.handler.lock() = Arc::new(handler);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().clone()
    }

    /// Requests to `path`.
    pub fn at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Every event of the webhook batches answered 2xx, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|r| r.path == "/webhook" && (200..300).contains(&r.status))
            .flat_map(|r| r.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Every request was signed correctly.
    pub fn assert_all_signed(&self) {
        for r in self.received() {
            assert!(r.signed, "bad signature on {} {}", r.path, r.body);
        }
    }

    /// Waits until `cond` holds on the received events, at most `within`.
    pub async fn wait_events(
        &self,
        within: Duration,
        cond: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let events = self.events();
            if cond(&events) || std::time::Instant::now() > deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `type topic` (or `type`, for an event without a topic) of every event of user `sub`, in
/// the order received.
#[allow(dead_code)] // not every test binary that uses the receiver reads events per user
pub fn types_of(events: &[Value], sub: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["sub"] == sub)
        .map(|e| match e["topic"].as_str() {
            Some(t) => format!("{} {t}", e["type"].as_str().unwrap_or("?")),
            None => e["type"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}
