//! The circuit breaker of one hook URL: after failures of calls made for `threshold` distinct
//! users in a row (no success in between) the circuit opens and calls fail at once
//! (`hook unavailable`) for `cooldown`; then it is half-open: one trial call at a time is let
//! through. A trial's success closes the circuit. Its failure counts its user, and the circuit
//! opens again (for `cooldown`) once trials of `threshold` distinct users failed in a row, as
//! for opening it; until then the next call may be the trial, except one of a user whose trial
//! already failed, which fails at once until `cooldown` has passed since the last failed
//! trial. So one user whose requests make the application fail cannot keep the circuit open
//! by taking every trial, while a reconnect storm against a really failing application costs
//! it at most one call at a time.
//!
//! Each user (a share key: [`Identity::share_key`](crate::auth::Identity::share_key), one per
//! client address for anonymous connections) counts once in a run of failures, however many of
//! its calls fail: one user whose requests make the application fail (a body it refuses to
//! parse, params it chokes on) cannot open the circuit for everyone. What counts as a failure
//! is the caller's call (the hooks count transport errors, timeouts, 5xx, 408 and 429, not the
//! application's other 4xx answers about one request).
//!
//! Every call holds a [`Ticket`]. A trial's ticket that is dropped without an outcome (the
//! HTTP handler awaiting the call was cancelled because its client hung up) gives the trial
//! back, so the next call can be the trial: the circuit never stays stuck open. Each ticket
//! carries the circuit's generation; outcomes of calls that started before the circuit last
//! opened are ignored (a late success must not close a circuit opened since, a late failure
//! must not reopen or extend it).

use parking_lot::Mutex;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Breaker settings (`threshold` 0: never opens): the distinct users whose calls must fail in
/// a row to open the circuit, and how long it then stays open.
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    pub threshold: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Default)]
struct State {
    /// The users (hashes of their `sub`) whose calls failed since the last success; at most
    /// `threshold` are kept (the circuit opens at that many).
    failed_users: HashSet<u64>,
    open_until: Option<Instant>,
    /// A trial call is in flight while half-open.
    trial: bool,
    /// The users whose trials failed since the circuit last opened (at most `threshold`).
    trial_failed: HashSet<u64>,
    /// Until when the users of `trial_failed` may not be the trial (`cooldown` after the last
    /// failed trial).
    trial_failed_until: Option<Instant>,
    /// Bumped each time the circuit opens.
    generation: u64,
}

/// One URL's breaker.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
}

/// The permission of one call to go out. Report its outcome with [`Ticket::success`] or
/// [`Ticket::failure`]; dropped without one (cancelled, or never sent), a trial is given back.
#[derive(Debug)]
pub struct Ticket {
    breaker: Arc<Breaker>,
    generation: u64,
    trial: bool,
    /// The user of this call (its hash).
    user: u64,
    settled: bool,
}

impl Breaker {
    /// A ticket if a call for user `user` (its share key) may go out now.
    pub fn allow(self: &Arc<Self>, user: &str, now: Instant) -> Option<Ticket> {
        let user = user_hash(user);
        let mut st = self.state.lock();
        let trial = match st.open_until {
            None => false,
            Some(until) if now < until => return None,
            Some(_) if st.trial => return None,
            Some(_) => {
                if st.trial_failed_until.is_some_and(|u| now >= u) {
                    st.trial_failed.clear();
                    st.trial_failed_until = None;
                }
                if st.trial_failed.contains(&user) {
                    return None;
                }
                st.trial = true;
                true
            }
        };
        Some(Ticket {
            breaker: self.clone(),
            generation: st.generation,
            trial,
            user,
            settled: false,
        })
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.state.lock().open_until.is_some_and(|u| now < u)
    }
}

impl Ticket {
    /// The call succeeded: the circuit closes (unless it opened after this call started).
    pub fn success(mut self) {
        self.settled = true;
        let mut st = self.breaker.state.lock();
        if st.generation == self.generation {
            let generation = st.generation;
            *st = State {
                generation,
                ..State::default()
            };
        }
    }

    /// The call failed; returns `true` when this failure opened the circuit (it was closed).
    /// A user counts once in a run of failures. A failure of a call that started before the
    /// circuit last opened counts for nothing. A failed trial opens the circuit again only
    /// when trials of `threshold` distinct users failed in a row.
    pub fn failure(mut self, cfg: &BreakerConfig, now: Instant) -> bool {
        self.settled = true;
        let mut st = self.breaker.state.lock();
        if st.generation != self.generation {
            return false;
        }
        let limit = u64::from(cfg.threshold);
        let reopen = if self.trial {
            st.trial = false;
            if (st.trial_failed.len() as u64) < limit {
                st.trial_failed.insert(self.user);
            }
            st.trial_failed_until = Some(now + cfg.cooldown);
            st.trial_failed.len() as u64 >= limit
        } else {
            if (st.failed_users.len() as u64) < limit {
                st.failed_users.insert(self.user);
            }
            cfg.threshold > 0 && st.failed_users.len() as u64 >= limit
        };
        if reopen {
            let was_closed = st.open_until.is_none();
            st.open_until = Some(now + cfg.cooldown);
            st.generation += 1;
            st.trial_failed.clear();
            st.trial_failed_until = None;
            return was_closed;
        }
        false
    }
}

/// A user's key in a run of failures (a collision can only make the circuit harder to open).
fn user_hash(sub: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sub.hash(&mut h);
    h.finish()
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled && self.trial {
            let mut st = self.breaker.state.lock();
            if st.generation == self.generation {
                st.trial = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        threshold: 3,
        cooldown: Duration::from_secs(5),
    };

    fn fail_as(b: &Arc<Breaker>, sub: &str, t: Instant) -> bool {
        b.allow(sub, t).expect("allowed").failure(&CFG, t)
    }

    /// Failures of three distinct users' calls (the threshold): the third opens the circuit.
    fn fail(b: &Arc<Breaker>, t: Instant) -> bool {
        let mut opened = false;
        for sub in ["u1", "u2", "u3"] {
            opened = fail_as(b, sub, t);
        }
        opened
    }

    #[test]
    fn opens_after_threshold_then_half_opens_one_trial_at_a_time() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        assert!(!fail_as(&b, "u1", t));
        assert!(!fail_as(&b, "u2", t));
        assert!(fail_as(&b, "u3", t), "the third user's failure opens it");
        assert!(b.allow("u4", t + Duration::from_secs(1)).is_none());
        let later = t + Duration::from_secs(6);
        let trial = b.allow("u1", later).expect("one trial after the cooldown");
        assert!(b.allow("u2", later).is_none(), "only one at a time");
        trial.success();
        assert!(b.allow("u1", later).is_some() && b.allow("u2", later).is_some());
    }

    #[test]
    fn failed_trials_of_distinct_users_open_it_again() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        fail(&b, t);
        let later = t + Duration::from_secs(6);
        assert!(!fail_as(&b, "u1", later));
        assert!(!fail_as(&b, "u2", later));
        assert!(!fail_as(&b, "u3", later), "it was not closed");
        assert!(b.is_open(later), "three users' trials failed: open again");
        assert!(b.allow("u4", later + Duration::from_secs(1)).is_none());
        let much_later = later + Duration::from_secs(6);
        b.allow("u4", much_later).expect("trial").success();
        assert!(!b.is_open(much_later));
    }

    #[test]
    fn one_user_failing_every_trial_does_not_keep_it_open() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        fail(&b, t);
        let mut now = t + Duration::from_secs(6);
        assert!(!fail_as(&b, "mallory", now));
        for _ in 0..100 {
            now += Duration::from_millis(10);
            assert!(b.allow("mallory", now).is_none(), "her trial failed");
        }
        assert!(!b.is_open(now));
        b.allow("alice", now).expect("alice is the trial").success();
        assert!(b.allow("alice", now).is_some() && b.allow("mallory", now).is_some());
        // After a cooldown without another user, mallory may be the trial again.
        let b2 = Arc::new(Breaker::default());
        fail(&b2, t);
        let now = t + Duration::from_secs(6);
        assert!(!fail_as(&b2, "mallory", now));
        assert!(b2.allow("mallory", now + Duration::from_secs(4)).is_none());
        assert!(b2.allow("mallory", now + Duration::from_secs(5)).is_some());
    }

    #[test]
    fn a_dropped_trial_lets_the_next_call_be_the_trial() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        fail(&b, t);
        let later = t + Duration::from_secs(6);
        drop(b.allow("u1", later).expect("trial"));
        let trial = b.allow("u1", later).expect("the trial was given back");
        trial.success();
        assert!(!b.is_open(later));
    }

    #[test]
    fn outcomes_of_calls_started_before_the_circuit_opened_are_ignored() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        let early_ok = b.allow("u8", t).unwrap();
        let early_fail = b.allow("u9", t).unwrap();
        fail(&b, t);
        early_ok.success();
        assert!(b.is_open(t), "a late success does not close it");
        let later = t + Duration::from_secs(6);
        let trial = b.allow("u1", later).unwrap();
        assert!(!early_fail.failure(&CFG, later));
        assert!(b.allow("u2", later).is_none(), "the trial is still out");
        trial.success();
        assert!(!b.is_open(later));
    }

    #[test]
    fn one_user_counts_once_and_a_success_resets_the_run() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        for _ in 0..100 {
            assert!(!fail_as(&b, "mallory", t), "one user alone never opens it");
        }
        assert!(!fail_as(&b, "u2", t));
        b.allow("u5", t).unwrap().success();
        assert!(!fail_as(&b, "u3", t), "the success started a new run");
        assert!(!fail_as(&b, "mallory", t));
        assert!(
            fail_as(&b, "u4", t),
            "three distinct users in a row open it"
        );
    }
}
