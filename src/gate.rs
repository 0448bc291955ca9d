//! The gate in front of HTTP: how many connections that are not (yet) admitted clients —
//! TLS handshakes, HTTP requests, LongPoll polls, connections still sending their headers — the
//! server holds, per client address and in total. A WebSocket leaves the gate once it is
//! upgraded (the node's admission caps take over); a refused connection is closed at once.
//! Addresses count per [`address_key`] (an IPv6 address per /64), as the admission caps do.

use parking_lot::Mutex;
use plexus_core::admission::address_key;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Caps of the gate (0: no cap).
#[derive(Clone, Copy, Debug)]
pub struct GateLimits {
    pub per_ip: u32,
    pub total: usize,
}

/// Connections in the gate, and what it refused.
pub struct Gate {
    limits: GateLimits,
    /// Peers whose connections carry many clients (trusted proxies): only the total applies.
    exempt: Vec<ipnet::IpNet>,
    /// Per [`address_key`].
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    total: AtomicUsize,
    pub refused: AtomicU64,
    pub timeouts: AtomicU64,
}

/// A place in the gate, given back when dropped.
pub struct Pass {
    gate: Arc<Gate>,
    /// The [`address_key`] counted, if one was.
    ip: Option<IpAddr>,
}

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    PerAddress,
    Total,
}

impl Gate {
    pub fn new(limits: GateLimits, exempt: Vec<ipnet::IpNet>) -> Arc<Self> {
        Arc::new(Gate {
            limits,
            exempt,
            per_ip: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        })
    }

    /// Connections in the gate now.
    pub fn count(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a place for a connection from `ip` (counted per [`address_key`]).
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Pass, Full> {
        let refuse = |full| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Err(full)
        };
        if self.limits.total > 0 && self.total.load(Ordering::Relaxed) >= self.limits.total {
            return refuse(Full::Total);
        }
        let counted = self.limits.per_ip > 0 && !self.exempt.iter().any(|n| n.contains(&ip));
        let key = address_key(ip);
        if counted {
            let mut per_ip = self.per_ip.lock();
            let n = per_ip.entry(key).or_insert(0);
            if *n >= self.limits.per_ip {
                drop(per_ip);
                return refuse(Full::PerAddress);
            }
            *n += 1;
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Pass {
            gate: self.clone(),
            ip: counted.then_some(key),
        })
    }
}

/// The gate place of one HTTP connection, reachable from its requests (a request extension),
/// so that a route serving an admitted client's long-lived stream (SSE, a LongPoll poll) can
/// leave the gate: the node's admission caps count that client from then on.
#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<Option<Pass>>>);

impl Slot {
    pub fn new(pass: Pass) -> Self {
        Slot(Arc::new(Mutex::new(Some(pass))))
    }

    /// Gives the connection's place back now.
    pub fn release(&self) {
        self.0.lock().take();
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Slot {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Slot>().cloned().unwrap_or_default())
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.gate.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut per_ip = self.gate.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_total_and_places_come_back() {
        let proxy: ipnet::IpNet = "10.0.0.1/32".parse().unwrap();
        let gate = Gate::new(
            GateLimits {
                per_ip: 2,
                total: 3,
            },
            vec![proxy],
        );
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let p1 = gate.enter(a).unwrap();
        let _p2 = gate.enter(a).unwrap();
        assert_eq!(gate.enter(a).err(), Some(Full::PerAddress));
        // A trusted proxy is not capped per address, only in total.
        let _p3 = gate.enter("10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            gate.enter("10.0.0.1".parse().unwrap()).err(),
            Some(Full::Total)
        );
        drop(p1);
        assert!(gate.enter(a).is_ok());
        assert_eq!(gate.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ipv6_addresses_count_per_slash_64() {
        let gate = Gate::new(
            GateLimits {
                per_ip: 2,
                total: 0,
            },
            Vec::new(),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p1 = gate.enter(ip("2001:db8:1:2::1")).unwrap();
        let _p2 = gate.enter(ip("2001:db8:1:2::2")).unwrap();
        assert_eq!(
            gate.enter(ip("2001:db8:1:2:ffff::3")).err(),
            Some(Full::PerAddress)
        );
        assert!(gate.enter(ip("2001:db8:1:3::1")).is_ok());
        drop(p1);
        assert!(gate.enter(ip("2001:db8:1:2::3")).is_ok());
    }
}
