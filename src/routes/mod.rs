//! HTTP endpoints, one module per group (the path table is in [`crate::app`]), and what
//! their handlers share: JSON errors, JSON bodies and their size limit.

pub mod api;
pub mod dev;
pub mod health;
pub mod longpoll;
pub mod pusher_api;
pub mod pusher_ws;
pub mod sse;
pub mod websocket;

use crate::state::AppState;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use plexus_core::admission::Refusal;
use serde::de::DeserializeOwned;

/// A JSON error response `{"error": reason}` with the given status.
pub fn json_error(status: StatusCode, reason: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": reason.into() }))).into_response()
}

/// A refusal of the core (admission, a read's authorisation) as an HTTP answer: its status,
/// with `{"error": reason}`.
pub struct Refused(pub Refusal);

impl Refused {
    pub fn status(refusal: &Refusal) -> StatusCode {
        StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        json_error(Refused::status(&self.0), self.0.reason)
    }
}

/// A request body's expected JSON shape, named in the 400 answer to a body that does not parse.
pub trait BodyShape {
    const SHAPE: &'static str;
}

/// Extractor of a JSON body of type `T`; anything else is answered 400 with `T`'s shape and the
/// parse error.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + BodyShape> FromRequest<AppState> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let body = read_body(state, req.into_body()).await?;
        serde_json::from_slice(&body).map(ApiJson).map_err(|e| {
            json_error(
                StatusCode::BAD_REQUEST,
                format!("invalid body: expected {} ({e})", T::SHAPE),
            )
        })
    }
}

/// Reads a request body: at most [`body_limit`] bytes (else 413), all of it within the
/// header timeout (else 408: a body trickled in slowly must not hold the connection).
pub async fn read_body(
    state: &AppState,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, Response> {
    let read = axum::body::to_bytes(body, body_limit(state));
    match tokio::time::timeout(state.config.http_header_timeout, read).await {
        Err(_) => Err(json_error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time (limits.http_header_timeout_secs)",
        )),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            let status = if too_large {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            Err(json_error(status, format!("request body not read: {e}")))
        }
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// The largest request body any route reads: one message of `max_message_bytes` and 64 KiB
/// of envelope. Larger bodies are answered 413 before they are read.
pub fn body_limit(state: &AppState) -> usize {
    state.node.limits().max_message_bytes + 64 * 1024
}
