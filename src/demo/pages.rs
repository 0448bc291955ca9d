//! The demo's pages: `/` (chat), `/demo/roles` (the classroom's rules), `/demo/live` (live
//! data), their shared script and style, and the vendored `phoenix` client they use
//! (phoenix.min.js from the npm package phoenix 1.8.16, MIT licensed; see
//! assets/vendor/README.md).

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

const CHAT: &str = include_str!("../../assets/demo/chat.html");
const ROLES: &str = include_str!("../../assets/demo/roles.html");
const LIVE: &str = include_str!("../../assets/demo/live.html");
const SCRIPT: &str = include_str!("../../assets/demo/demo.js");
const STYLE: &str = include_str!("../../assets/demo/demo.css");
const PHOENIX_JS: &str = include_str!("../../assets/vendor/phoenix.min.js");

pub async fn index() -> Html<&'static str> {
    Html(CHAT)
}

pub async fn roles() -> Html<&'static str> {
    Html(ROLES)
}

pub async fn live() -> Html<&'static str> {
    Html(LIVE)
}

fn asset(content_type: &'static str, body: &'static str, max_age: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, max_age),
        ],
        body,
    )
        .into_response()
}

pub async fn script() -> Response {
    asset("application/javascript; charset=utf-8", SCRIPT, "no-cache")
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE, "no-cache")
}

pub async fn phoenix_js() -> Response {
    asset(
        "application/javascript; charset=utf-8",
        PHOENIX_JS,
        "public, max-age=3600",
    )
}
