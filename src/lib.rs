//! The `plexus` server as a library: command line, configuration, HTTP routes and wiring
//! around `plexus-core`. The binary (`src/main.rs`) is a thin `main` over these modules; they
//! are a library so that the fuzz targets (`fuzz/`) can reach the configuration loader.
//!
//! Start here: [`cli`] (flags) → [`config`] (file + env) → [`server`] (wiring, TLS, drain) →
//! [`routes`] (one module per endpoint group).

pub mod admin;
pub mod allocator;
pub mod cli;
pub mod config;
pub mod demo;
pub mod gate;
pub mod hook_client;
pub mod hook_config;
pub mod metrics;
pub mod routes;
pub mod server;
pub mod tls;
pub mod transport_counts;
