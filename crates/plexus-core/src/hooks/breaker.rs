//! The circuit breaker of one hook URL: after `threshold` failures in a row the circuit opens
//! and calls fail at once (`hook unavailable`) for `cooldown`; then one trial call is let
//! through (half-open): its success closes the circuit, its failure opens it again. A
//! reconnect storm against a failing application thus costs the application nothing.
//!
//! Every call holds a [`Ticket`]. A trial's ticket that is dropped without an outcome (the
//! HTTP handler awaiting the call was cancelled because its client hung up) gives the trial
//! back, so the next call can be the trial: the circuit never stays stuck open. Each ticket
//! carries the circuit's generation; outcomes of calls that started before the circuit last
//! opened are ignored (a late success must not close a circuit opened since, a late failure
//! must not reopen or extend it).

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Breaker settings (`threshold` 0: never opens).
#[derive(Clone, Copy, Debug)]
pub struct BreakerConfig {
    pub threshold: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
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

    /// The call failed; returns `true` when this failure opened the circuit. A failure of a
    /// call that started before the circuit last opened counts for nothing.
    pub fn failure(mut self, cfg: &BreakerConfig, now: Instant) -> bool {
        self.settled = true;
        let mut st = self.breaker.state.lock();
        if st.generation != self.generation {
            return false;
        }
        st.failures = st.failures.saturating_add(1);
        let reopen = self.trial && st.trial;
        if self.trial {
            st.trial = false;
        }
        if reopen || (cfg.threshold > 0 && st.failures >= cfg.threshold) {
            let was_closed = st.open_until.is_none();
            st.open_until = Some(now + cfg.cooldown);
            st.generation += 1;
            return was_closed;
        }
        false
    }
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

    fn fail(b: &Arc<Breaker>, t: Instant) -> bool {
        b.allow(t).expect("allowed").failure(&CFG, t)
    }

    #[test]
    fn opens_after_threshold_then_half_opens_once() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        assert!(!fail(&b, t));
        assert!(!fail(&b, t));
        assert!(fail(&b, t), "the third failure opens it");
        assert!(b.allow(t + Duration::from_secs(1)).is_none());
        let later = t + Duration::from_secs(6);
        let trial = b.allow(later).expect("one trial after the cooldown");
        assert!(b.allow(later).is_none(), "only one");
        assert!(!trial.failure(&CFG, later));
        assert!(b.allow(later + Duration::from_secs(1)).is_none());
        let much_later = later + Duration::from_secs(6);
        b.allow(much_later).unwrap().success();
        assert!(b.allow(much_later).is_some() && b.allow(much_later).is_some());
    }

    #[test]
    fn a_dropped_trial_lets_the_next_call_be_the_trial() {
        let b = Arc::new(Breaker::default());
        let t = Instant::now();
        for _ in 0..3 {
            fail(&b, t);
        }
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
        for _ in 0..3 {
            fail(&b, t);
        }
        early_ok.success();
        assert!(b.is_open(t), "a late success does not close it");
        let later = t + Duration::from_secs(6);
        let trial = b.allow(later).unwrap();
        assert!(!early_fail.failure(&CFG, later));
        assert!(b.allow(later).is_none(), "the trial is still out");
        trial.success();
        assert!(!b.is_open(later));
    }
}
