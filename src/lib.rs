//! The `plexus` server as a library: command line, configuration, HTTP routes and wiring
//! around `plexus-core`. The binary (`src/main.rs`) is a thin `main` over these modules; they
//! are a library so that the fuzz targets (`fuzz/`) can reach the configuration loader.
//!
//! Start here: [`cli`] (flags) → [`config`] (file + env) → [`server`] (wiring, TLS, drain) →
//! [`app`] (which path does what) → [`routes`] (one module per endpoint group). Handlers share
//! [`state::AppState`]; the API key is checked in [`api_key`].
//!
//! To run Plexus inside an existing axum application, use [`embed`]: the one part of this
//! library (and of `plexus-core`) whose API is kept stable (docs/embedding.md).

pub mod admin;
pub mod allocator;
pub mod api_key;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod embed;
pub mod gate;
pub mod hook_client;
pub mod jwks_client;
mod listener;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod state;
pub mod tls;
pub mod transport_counts;
