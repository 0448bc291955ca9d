//! When a connection's token runs out, for every transport: at `exp` the client is warned
//! (`token_expired` on topic `phoenix`) and may still refresh its token in-band; at
//! `exp + grace` the connection ends (WebSocket close 4001; a LongPoll session or an SSE
//! stream is closed).

use std::time::Duration;
use tokio::time::Instant;

/// The expiry of one connection's token, as instants of this process.
#[derive(Clone, Debug)]
pub struct Expiry {
    warn_at: Option<Instant>,
    close_at: Option<Instant>,
    warned: bool,
}

/// What [`Expiry::fire`] says to do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryStep {
    None,
    /// Tell the client its token expired.
    Warn,
    /// Close the connection.
    Close,
}

impl Expiry {
    /// The expiry of a token whose `exp` claim is `exp` (Unix seconds; `None`: never).
    pub fn new(exp: Option<u64>, grace: Duration) -> Self {
        let (warn_at, close_at) = match exp {
            Some(exp) => {
                // A far-future exp (beyond what an Instant holds) means no expiry in practice.
                let left = exp.saturating_sub(crate::auth::unix_now());
                let warn = Instant::now().checked_add(Duration::from_secs(left));
                (warn, warn.and_then(|w| w.checked_add(grace)))
            }
            None => (None, None),
        };
        Expiry {
            warn_at,
            close_at,
            warned: false,
        }
    }

    /// The earlier of the next expiry step and `other` (a transport's own deadline).
    pub fn next(&self, other: Instant) -> Instant {
        let step = if self.warned {
            self.close_at
        } else {
            self.warn_at
        };
        step.map_or(other, |t| t.min(other))
    }

    /// The step due at `now`, once each.
    pub fn fire(&mut self, now: Instant) -> ExpiryStep {
        match (self.warned, self.warn_at, self.close_at) {
            (false, Some(w), _) if now >= w => {
                self.warned = true;
                ExpiryStep::Warn
            }
            (true, _, Some(c)) if now >= c => ExpiryStep::Close,
            _ => ExpiryStep::None,
        }
    }

    /// Whether the token has expired (a stream that cannot refresh ends here).
    pub fn expired(&self, now: Instant) -> bool {
        self.warn_at.is_some_and(|w| now >= w)
    }

    /// Whether the grace period after expiry is over too.
    pub fn over(&self, now: Instant) -> bool {
        self.close_at.is_some_and(|c| now >= c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_then_closes_once_each() {
        let exp = crate::auth::unix_now() + 10;
        let mut e = Expiry::new(Some(exp), Duration::from_secs(5));
        let now = Instant::now();
        assert_eq!(e.fire(now), ExpiryStep::None);
        assert!(!e.expired(now));
        let later = now + Duration::from_secs(11);
        assert!(e.expired(later) && !e.over(later));
        assert_eq!(e.fire(later), ExpiryStep::Warn);
        assert_eq!(e.fire(later), ExpiryStep::None);
        let much_later = now + Duration::from_secs(17);
        assert!(e.over(much_later));
        assert_eq!(e.fire(much_later), ExpiryStep::Close);
    }

    #[test]
    fn no_exp_or_far_future_never_fires() {
        let deadline = Instant::now() + Duration::from_secs(1);
        for exp in [None, Some(u64::MAX)] {
            let mut e = Expiry::new(exp, Duration::from_secs(5));
            assert_eq!(e.next(deadline), deadline);
            assert_eq!(e.fire(deadline), ExpiryStep::None);
        }
    }
}
