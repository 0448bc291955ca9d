//! What the hooks count: the kinds of hook ([`HookKind`]), how a call ended ([`Outcome`]) and
//! the counters behind `plexus_hook_calls_total` and `plexus_hook_seconds_total`
//! ([`HookCounters`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    Connect = 0,
    Join = 1,
    Push = 2,
}

impl HookKind {
    pub const ALL: [HookKind; 3] = [HookKind::Connect, HookKind::Join, HookKind::Push];

    pub fn name(self) -> &'static str {
        match self {
            HookKind::Connect => "connect",
            HookKind::Join => "join",
            HookKind::Push => "push",
        }
    }
}

/// How a call ended, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow = 0,
    Deny = 1,
    Cached = 2,
    Timeout = 3,
    Error = 4,
    Invalid = 5,
    Busy = 6,
    Open = 7,
    /// The application answered 4xx (other than 408 and 429): that request is refused.
    Rejected = 8,
    /// The request was larger than `max_request_bytes`: refused, never sent.
    TooLarge = 9,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Allow,
        Outcome::Deny,
        Outcome::Cached,
        Outcome::Timeout,
        Outcome::Error,
        Outcome::Invalid,
        Outcome::Busy,
        Outcome::Open,
        Outcome::Rejected,
        Outcome::TooLarge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Cached => "cached",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::Invalid => "invalid",
            Outcome::Busy => "busy",
            Outcome::Open => "circuit_open",
            Outcome::Rejected => "rejected",
            Outcome::TooLarge => "too_large",
        }
    }
}

/// Hook calls by kind and outcome, and the time spent in them (the `/metrics` figures).
#[derive(Default)]
pub struct HookCounters {
    pub calls: [[AtomicU64; 10]; 3],
    /// Microseconds spent waiting for answers, by kind.
    pub micros: [AtomicU64; 3],
    /// Times a circuit opened.
    pub circuit_opened: AtomicU64,
}

impl HookCounters {
    pub fn get(&self, kind: HookKind, outcome: Outcome) -> u64 {
        self.calls[kind as usize][outcome as usize].load(Ordering::Relaxed)
    }
}
