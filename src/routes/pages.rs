//! The demo chat page and its vendored `phoenix` client (phoenix.min.js from the npm package
//! phoenix 1.8.16, MIT licensed; see assets/vendor/README.md).

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

const INDEX: &str = include_str!("../../assets/demo.html");
const PHOENIX_JS: &str = include_str!("../../assets/vendor/phoenix.min.js");

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}

pub async fn phoenix_js() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        PHOENIX_JS,
    )
        .into_response()
}
