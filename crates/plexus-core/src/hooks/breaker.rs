//! The circuit breaker of one hook URL: after failures of calls made for `threshold` distinct
//! users in a row (no success in between) the circuit opens and calls fail at once
//! (`hook unavailable`) for `cooldown`; then one trial call is let through (half-open): its
//! success closes the circuit, its failure opens it again. A reconnect storm against a failing
//! application thus costs the application nothing.
//!
//! Each user (`sub`) counts once in a run of failures, however many of its calls fail: one
//! user whose requests make the application fail (a body it refuses to parse, params it
//! chokes on) cannot open the circuit for everyone. What counts as a failure is the caller's
//! call (the hooks count transport errors, timeouts, 5xx, 408 and 429, not the application's
//! other 4xx answers about one request).
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
    settled: bool,
}

impl Breaker {
    /// A ticket if a call may go out now.
    pub fn allow(self: &Arc<Self>, now: Instant) -> Option<Ticket> {
        let mut st = self.state.lock();
        let trial = match st.open_until {
            None => false,
            Some(until) if now < until => return None,
            Some(_) if st.trial => return None,
            Some(_) => {
                st.trial = true;
                true
            }
        };
        Some(Ticket {
            breaker: self.clone(),
            generation: st.generation,
            trial,
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

    /// The call made for user `sub` failed; returns `true` when this failure opened the
    /// circuit. A user counts once in a run of failures. A failure of a call that started
    /// before the circuit last opened counts for nothing.
    pub fn failure(mut self, cfg: &BreakerConfig, sub: &str, now: Instant) -> bool {
        self.settled = true;
        let mut st = self.breaker.state.lock();
        if st.generation != self.generation {
            return false;
        }
        if (st.failed_users.len() as u64) < u64::from(cfg.threshold) {
            st.failed_users.insert(user_hash(sub));
        }
        let reopen = self.trial && st.trial;
        if self.trial {
            st.trial = false;
        }
        if reopen || (cfg.threshold > 0 && st.failed_users.len() as u64 >= u64::from(cfg.threshold))
        {
            let was_closed = st.open_until.is_none();
            st.open_until = Some(now + cfg.cooldown);
            st.generation += 1;
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
        b.allow(t).expect("allowed").failure(&CFG, sub, t)
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
    fn opens_after_threshold_then_half_opens_once() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        assert!(!fail_as(&b, "u1", t));
        assert!(!fail_as(&b, "u2", t));
        assert!(fail_as(&b, "u3", t), "the third user's failure opens it");
        assert!(b.allow(t + Duration::from_secs(1)).is_none());
        let later = t + Duration::from_secs(6);
        let trial = b.allow(later).expect("one trial after the cooldown");
        assert!(b.allow(later).is_none(), "only one");
        assert!(!trial.failure(&CFG, "u1", later));
        assert!(b.allow(later + Duration::from_secs(1)).is_none());
        let much_later = later + Duration::from_secs(6);
        b.allow(much_later).unwrap().success();
        assert!(b.allow(much_later).is_some() && b.allow(much_later).is_some());
    }

    #[test]
    fn a_dropped_trial_lets_the_next_call_be_the_trial() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        fail(&b, t);
        let later = t + Duration::from_secs(6);
        drop(b.allow(later).expect("trial"));
        let trial = b.allow(later).expect("the trial was given back");
        trial.success();
        assert!(!b.is_open(later));
    }

    #[test]
    fn outcomes_of_calls_started_before_the_circuit_opened_are_ignored() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        let early_ok = b.allow(t).unwrap();
        let early_fail = b.allow(t).unwrap();
        fail(&b, t);
        early_ok.success();
        assert!(b.is_open(t), "a late success does not close it");
        let later = t + Duration::from_secs(6);
        let trial = b.allow(later).unwrap();
        assert!(!early_fail.failure(&CFG, "u9", later));
        assert!(b.allow(later).is_none(), "the trial is still out");
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
        b.allow(t).unwrap().success();
        assert!(!fail_as(&b, "u3", t), "the success started a new run");
        assert!(!fail_as(&b, "mallory", t));
        assert!(
            fail_as(&b, "u4", t),
            "three distinct users in a row open it"
        );
    }
}
