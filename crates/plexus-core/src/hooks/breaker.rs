//! The circuit breaker of one hook URL: after `threshold` failures in a row the circuit opens
//! and calls fail at once (`hook unavailable`) for `cooldown`; then one trial call is let
//! through (half-open): its success closes the circuit, its failure opens it again. A
//! reconnect storm against a failing application thus costs the application nothing.

use parking_lot::Mutex;
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
}

/// One URL's breaker.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
}

impl Breaker {
    /// Whether a call may go out now.
    pub fn allow(&self, now: Instant) -> bool {
        let mut st = self.state.lock();
        match st.open_until {
            None => true,
            Some(until) if now < until => false,
            Some(_) if st.trial => false,
            Some(_) => {
                st.trial = true;
                true
            }
        }
    }

    /// A call [`Breaker::allow`] let through was not made after all (the cap on calls in
    /// flight refused it): the next one may be the trial.
    pub fn cancel(&self) {
        self.state.lock().trial = false;
    }

    pub fn success(&self) {
        let mut st = self.state.lock();
        *st = State::default();
    }

    /// Counts a failure; returns `true` when this failure opened the circuit.
    pub fn failure(&self, cfg: &BreakerConfig, now: Instant) -> bool {
        let mut st = self.state.lock();
        st.failures = st.failures.saturating_add(1);
        let reopen = st.trial;
        st.trial = false;
        if reopen || (cfg.threshold > 0 && st.failures >= cfg.threshold) {
            let was_closed = st.open_until.is_none();
            st.open_until = Some(now + cfg.cooldown);
            return was_closed;
        }
        false
    }

    pub fn is_open(&self, now: Instant) -> bool {
        self.state.lock().open_until.is_some_and(|u| now < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_half_opens_once() {
        let cfg = BreakerConfig {
            threshold: 3,
            cooldown: Duration::from_secs(5),
        };
        let b = Breaker::default();
        let t = Instant::now();
        assert!(!b.failure(&cfg, t));
        assert!(!b.failure(&cfg, t));
        assert!(b.allow(t));
        assert!(b.failure(&cfg, t), "the third failure opens it");
        assert!(!b.allow(t + Duration::from_secs(1)));
        let later = t + Duration::from_secs(6);
        assert!(b.allow(later), "one trial after the cooldown");
        assert!(!b.allow(later), "only one");
        b.failure(&cfg, later);
        assert!(!b.allow(later + Duration::from_secs(1)));
        let much_later = later + Duration::from_secs(6);
        assert!(b.allow(much_later));
        b.success();
        assert!(b.allow(much_later) && b.allow(much_later));
    }
}
