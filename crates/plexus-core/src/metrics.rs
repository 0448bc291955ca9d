//! What the core measures, through the [`metrics`] facade (the server installs a Prometheus
//! recorder; without one every call here is a no-op). Observations are per broadcast, per
//! join, per refusal or per Redis round trip — never a lock per delivery: the only per-delivery
//! cost is one atomic load to see whether a publication's first write was already timed.
//!
//! Handles are resolved once ([`LazyLock`]), after the recorder is installed (the server
//! installs it before it builds the node).

use metrics::{Counter, Histogram};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Publish (or arrival from the broker) → first write of it to a client socket, per
/// publication.
pub const PUBLISH_TO_WRITE: &str = "plexus_publish_to_write_seconds";
/// One broadcast's fan-out into the local subscribers' outboxes.
pub const FANOUT: &str = "plexus_fanout_seconds";
/// Subscribers one broadcast was queued for on this node.
pub const FANOUT_RECEIVERS: &str = "plexus_fanout_receivers";
/// Broadcast frames the fan-out wrote straight to a subscriber's socket (write-through), by
/// `outcome`: `whole`, or `partial` (the socket took only part; the connection's task wrote
/// the rest).
pub const WRITE_THROUGH: &str = "plexus_write_through_frames_total";
/// A join, from the request to the decision (rules, quotas, history recovery, presence).
pub const JOIN: &str = "plexus_join_seconds";
/// Connections closed because their outbox was full (close 1013).
pub const SLOW_CONSUMER_CLOSES: &str = "plexus_slow_consumer_closes_total";
/// Connections dropped because a write to them did not complete within
/// `limits.write_timeout` (the client stopped reading).
pub const WRITE_TIMEOUT_CLOSES: &str = "plexus_write_timeout_closes_total";
/// Refusals by stage (`connect`, `join`, `vsn`) and reason class.
pub const REFUSALS: &str = "plexus_refusals_total";
/// One Redis command's round trip, by operation.
pub const REDIS_ROUND_TRIP: &str = "plexus_redis_round_trip_seconds";
/// One application hook call (HTTP round trip, or until its timeout), by hook.
pub const HOOK: &str = "plexus_hook_call_seconds";
/// Times the Redis subscription connection was lost and reconnected.
pub const REDIS_RECONNECTS: &str = "plexus_redis_reconnects_total";
/// Plain broadcasts acknowledged although a subscribed node did not confirm it got them.
pub const REDIS_UNCONFIRMED: &str = "plexus_redis_unconfirmed_total";

/// Times this node closed its clients because it was cut off from Redis long enough to be
/// reaped by the others (`node/partition.rs`).
pub const CUT_OFF_CLOSES: &str = "plexus_cut_off_closes_total";

/// JWKS URL fetches that failed (the last good keys stay in use; `auth/remote_keys.rs`).
pub const JWKS_REFRESH_FAILURES: &str = "plexus_jwks_refresh_failures_total";

static PUBLISH_TO_WRITE_H: LazyLock<Histogram> =
    LazyLock::new(|| metrics::histogram!(PUBLISH_TO_WRITE));
static FANOUT_H: LazyLock<Histogram> = LazyLock::new(|| metrics::histogram!(FANOUT));
static FANOUT_RECEIVERS_H: LazyLock<Histogram> =
    LazyLock::new(|| metrics::histogram!(FANOUT_RECEIVERS));
static WRITE_THROUGH_WHOLE_C: LazyLock<Counter> =
    LazyLock::new(|| metrics::counter!(WRITE_THROUGH, "outcome" => "whole"));
static WRITE_THROUGH_PARTIAL_C: LazyLock<Counter> =
    LazyLock::new(|| metrics::counter!(WRITE_THROUGH, "outcome" => "partial"));
static JOIN_H: LazyLock<Histogram> = LazyLock::new(|| metrics::histogram!(JOIN));
static SLOW_CONSUMER_C: LazyLock<Counter> =
    LazyLock::new(|| metrics::counter!(SLOW_CONSUMER_CLOSES));
static WRITE_TIMEOUT_C: LazyLock<Counter> =
    LazyLock::new(|| metrics::counter!(WRITE_TIMEOUT_CLOSES));
static REDIS_RECONNECTS_C: LazyLock<Counter> =
    LazyLock::new(|| metrics::counter!(REDIS_RECONNECTS));
static REDIS_UNCONFIRMED_C: LazyLock<Counter> =
    LazyLock::new(|| metrics::counter!(REDIS_UNCONFIRMED));
static CUT_OFF_CLOSES_C: LazyLock<Counter> = LazyLock::new(|| metrics::counter!(CUT_OFF_CLOSES));
static JWKS_REFRESH_FAILURES_C: LazyLock<Counter> =
    LazyLock::new(|| metrics::counter!(JWKS_REFRESH_FAILURES));

/// Describes the core's metrics to the installed recorder (`# HELP` lines).
pub fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_histogram!(
        PUBLISH_TO_WRITE,
        Unit::Seconds,
        "Publish (or arrival from the broker) to the first write of it to a client (WebSocket, LongPoll or SSE), per broadcast."
    );
    describe_histogram!(
        FANOUT,
        Unit::Seconds,
        "Fan-out of one broadcast into this node's subscriber queues."
    );
    describe_histogram!(
        FANOUT_RECEIVERS,
        Unit::Count,
        "Local subscribers one broadcast was queued for."
    );
    describe_histogram!(
        JOIN,
        Unit::Seconds,
        "Joins, from request to decision (rules, quotas, recovery, presence)."
    );
    describe_counter!(
        WRITE_THROUGH,
        "Broadcast frames the fan-out wrote straight to a subscriber's socket, whole or in part."
    );
    describe_counter!(
        SLOW_CONSUMER_CLOSES,
        "Connections closed because their outbound queue was full (close 1013)."
    );
    describe_counter!(
        WRITE_TIMEOUT_CLOSES,
        "Connections dropped because a write to them did not complete within limits.write_timeout_secs (the client stopped reading)."
    );
    describe_counter!(
        REFUSALS,
        "Refusals by stage (connect, join, vsn) and reason class."
    );
    describe_histogram!(
        REDIS_ROUND_TRIP,
        Unit::Seconds,
        "Round trips of Redis commands, by operation."
    );
    describe_histogram!(
        HOOK,
        Unit::Seconds,
        "Application hook calls (HTTP round trip, or until the timeout), by hook."
    );
    describe_counter!(
        REDIS_RECONNECTS,
        "Times the Redis subscription connection was lost and re-established."
    );
    describe_counter!(
        REDIS_UNCONFIRMED,
        "Plain broadcasts acknowledged after a subscribed node did not confirm them within 5 s (a node gone or cut off)."
    );
    describe_counter!(
        CUT_OFF_CLOSES,
        "Times this node closed all its clients (1012 / Pusher 4200) because its Redis heartbeat failed for 3/4 of node_timeout, before the other nodes could reap it."
    );
    describe_counter!(
        JWKS_REFRESH_FAILURES,
        "Fetches of a JWKS URL (auth.jwks_urls) that failed; the URL's last good keys stay in use."
    );
    // Listed at 0 from the start (a counter appears once touched).
    SLOW_CONSUMER_C.increment(0);
    WRITE_TIMEOUT_C.increment(0);
    WRITE_THROUGH_WHOLE_C.increment(0);
    WRITE_THROUGH_PARTIAL_C.increment(0);
    REDIS_RECONNECTS_C.increment(0);
    REDIS_UNCONFIRMED_C.increment(0);
    CUT_OFF_CLOSES_C.increment(0);
    JWKS_REFRESH_FAILURES_C.increment(0);
}

/// A publication was written to a client for the first time, `since` its creation.
pub fn first_write(since: Instant) {
    PUBLISH_TO_WRITE_H.record(since.elapsed());
}

/// One broadcast was fanned out to `receivers` local subscribers in `took`; `through`: to how
/// many of them the fan-out wrote it itself, whole and in part.
pub fn fanout(took: Duration, receivers: usize, through: [usize; 2]) {
    FANOUT_H.record(took);
    FANOUT_RECEIVERS_H.record(receivers as f64);
    if through[0] > 0 {
        WRITE_THROUGH_WHOLE_C.increment(through[0] as u64);
    }
    if through[1] > 0 {
        WRITE_THROUGH_PARTIAL_C.increment(through[1] as u64);
    }
}

/// A join was decided in `took`.
pub fn join(took: Duration) {
    JOIN_H.record(took);
}

/// An outbox closed its connection as a slow consumer.
pub fn slow_consumer_closed() {
    SLOW_CONSUMER_C.increment(1);
}

/// A connection was dropped because a write to it timed out.
pub fn write_timed_out() {
    WRITE_TIMEOUT_C.increment(1);
}

/// A refusal at `stage` (`connect`, `join`, `vsn`), counted under its reason's class.
pub fn refused(stage: &'static str, reason: &str) {
    metrics::counter!(REFUSALS, "stage" => stage, "reason" => reason_class(reason)).increment(1);
}

/// A Redis command (`op`: `publish`, `heartbeat`, …) took `took`.
pub fn redis_round_trip(op: &'static str, took: Duration) {
    metrics::histogram!(REDIS_ROUND_TRIP, "op" => op).record(took);
}

/// A hook call (`hook`: `connect`, `join`, `push`) took `took`.
pub fn hook_call(hook: &'static str, took: Duration) {
    metrics::histogram!(HOOK, "hook" => hook).record(took);
}

pub fn jwks_refresh_failed() {
    JWKS_REFRESH_FAILURES_C.increment(1);
}

pub fn redis_reconnected() {
    REDIS_RECONNECTS_C.increment(1);
}

pub fn redis_unconfirmed() {
    REDIS_UNCONFIRMED_C.increment(1);
}

/// This node closed its clients, cut off from Redis.
pub fn cut_off_closed() {
    CUT_OFF_CLOSES_C.increment(1);
}

/// A refusal's reason as one of a fixed set of label values (reasons may carry names and
/// numbers; labels must stay few).
pub fn reason_class(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    let has = |s: &str| r.contains(s);
    if has("missing token") {
        "missing_token"
    } else if has("token expired") {
        "token_expired"
    } else if has("token") || has("signature") || has("key id") {
        "bad_token"
    } else if has("origin") {
        "origin"
    } else if has("draining") {
        "draining"
    } else if has("connection attempts") || has("rate") {
        "rate_limited"
    } else if has("from this address") {
        "per_address_cap"
    } else if has("for this user") {
        "per_user_cap"
    } else if has("unauthorized") {
        "unauthorized"
    } else if has("too many channels") {
        "too_many_channels"
    } else if has("max_per_user") {
        "max_per_user"
    } else if has("topic") {
        "invalid_topic"
    } else if has("vsn") || has("version") {
        "unsupported_vsn"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_fall_in_a_few_classes() {
        use super::reason_class as c;
        assert_eq!(c("missing token"), "missing_token");
        assert_eq!(c("token expired"), "token_expired");
        assert_eq!(c("bad token signature"), "bad_token");
        assert_eq!(c("unauthorized"), "unauthorized");
        assert_eq!(c("too many connections for this user"), "per_user_cap");
        assert_eq!(
            c("already joined the maximum number of times (max_per_user)"),
            "max_per_user"
        );
        assert_eq!(c("unsupported vsn \"9.9\""), "unsupported_vsn");
        assert_eq!(c("something new"), "other");
    }
}
