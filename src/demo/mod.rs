//! The demo on `/`: its pages ([`pages`]), the dev profile's channel rules that the pages show
//! working ([`rules`]) and the live-data generator that feeds one of them through the HTTP API
//! ([`feed`], also `plexus demo-feed`).

pub mod feed;
pub mod pages;
pub mod rules;
