//! Per-source-address bookkeeping for TCP services: open connections,
//! connections still in their handshake (OpenSSH's MaxStartups idea), and
//! a back-off after failed authentications.
//!
//! ```text
//! accept ─> penalty? ─close      (source failed auth repeatedly)
//!        └> conns >= per-source limit? ─close
//!        └> [exec] unauthenticated >= limit (global or per source)? ─close
//!        └> serve; the guards give the slots back when dropped
//! ```
//!
//! One mutex-protected map: these checks run once per connection, not per
//! byte, and an entry disappears when its source has nothing left in it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Failed authentications from one source before a penalty applies.
pub const FAILURES_BEFORE_PENALTY: u32 = 3;

#[derive(Debug, Default)]
struct Source {
    conns: usize,
    unauth: usize,
    failures: u32,
    penalty_until: Option<Instant>,
}

impl Source {
    fn is_idle(&self, now: Instant) -> bool {
        self.conns == 0 && self.unauth == 0 && self.penalty_until.is_none_or(|t| t <= now)
    }
}

/// The table, shared by a service's listeners.
#[derive(Debug, Default)]
pub struct Sources {
    map: Mutex<HashMap<IpAddr, Source>>,
    unauth_total: Mutex<usize>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source has too many connections open.
    PerSource,
    /// The source is serving a penalty for failed authentications.
    Penalty,
    /// Too many connections are in their handshake (globally or from this source).
    Unauthenticated,
}

impl Sources {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Source>> {
        // A panic while holding this lock cannot leave the map
        // inconsistent in a way that matters (counters only), so a poisoned
        // lock is used as is.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection slot for `ip` (0 = no per-source limit).
    pub fn connect(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Result<ConnGuard, Refusal> {
        let ip = ip.to_canonical();
        let now = Instant::now();
        let mut map = self.lock();
        let s = map.entry(ip).or_default();
        if s.penalty_until.is_some_and(|t| t > now) {
            return Err(Refusal::Penalty);
        }
        if limit > 0 && s.conns >= limit {
            return Err(Refusal::PerSource);
        }
        s.conns += 1;
        Ok(ConnGuard {
            sources: self.clone(),
            ip,
        })
    }

    /// Takes a handshake slot: at most `global` in all and `per_source` from `ip`.
    pub fn start_handshake(
        self: &Arc<Self>,
        ip: IpAddr,
        global: usize,
        per_source: usize,
    ) -> Result<HandshakeGuard, Refusal> {
        let ip = ip.to_canonical();
        let mut map = self.lock();
        let mut total = self.unauth_total.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.entry(ip).or_default();
        if *total >= global || s.unauth >= per_source {
            return Err(Refusal::Unauthenticated);
        }
        s.unauth += 1;
        *total += 1;
        Ok(HandshakeGuard {
            sources: self.clone(),
            ip,
        })
    }

    /// Records a failed authentication; from the
    /// [`FAILURES_BEFORE_PENALTY`]th on, the source is refused for `base`
    /// doubling with each further failure, at most `max`.
    pub fn auth_failed(&self, ip: IpAddr, base: Duration, max: Duration) {
        let ip = ip.to_canonical();
        let mut map = self.lock();
        let s = map.entry(ip).or_default();
        s.failures = s.failures.saturating_add(1);
        if s.failures >= FAILURES_BEFORE_PENALTY && !base.is_zero() {
            let doublings = (s.failures - FAILURES_BEFORE_PENALTY).min(16);
            let penalty = base.saturating_mul(1 << doublings).min(max);
            s.penalty_until = Some(Instant::now() + penalty);
        }
    }

    /// A successful authentication clears the source's failures.
    pub fn auth_ok(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if let Some(s) = self.lock().get_mut(&ip) {
            s.failures = 0;
            s.penalty_until = None;
        }
    }

    /// Sources with state now (for tests and metrics).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|s| !s.is_idle(now) || s.failures > 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, ip: IpAddr, conn: bool) {
        let mut map = self.lock();
        if let Some(s) = map.get_mut(&ip) {
            if conn {
                s.conns = s.conns.saturating_sub(1);
            } else {
                s.unauth = s.unauth.saturating_sub(1);
                let mut total = self.unauth_total.lock().unwrap_or_else(|e| e.into_inner());
                *total = total.saturating_sub(1);
            }
            // Forget sources with nothing open, no penalty and no failures.
            if s.is_idle(Instant::now()) && s.failures == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// A connection slot; given back on drop.
#[derive(Debug)]
pub struct ConnGuard {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.sources.release(self.ip, true);
    }
}

/// A handshake slot; given back on drop (handshake done or failed).
#[derive(Debug)]
pub struct HandshakeGuard {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.sources.release(self.ip, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_connections_and_handshakes_are_bounded() {
        let t = Arc::new(Sources::default());
        let a = ip("10.0.0.1");
        let g1 = t.connect(a, 2).unwrap();
        let _g2 = t.connect(a, 2).unwrap();
        assert_eq!(t.connect(a, 2).err(), Some(Refusal::PerSource));
        assert!(t.connect(ip("10.0.0.2"), 2).is_ok());
        drop(g1);
        assert!(t.connect(a, 2).is_ok());

        let h1 = t.start_handshake(a, 3, 1).unwrap();
        assert_eq!(
            t.start_handshake(a, 3, 1).err(),
            Some(Refusal::Unauthenticated)
        );
        let _h2 = t.start_handshake(ip("10.0.0.2"), 3, 1).unwrap();
        let _h3 = t.start_handshake(ip("10.0.0.3"), 3, 1).unwrap();
        assert_eq!(
            t.start_handshake(ip("10.0.0.4"), 3, 1).err(),
            Some(Refusal::Unauthenticated)
        );
        drop(h1);
        assert!(t.start_handshake(ip("10.0.0.4"), 3, 1).is_ok());
    }

    #[test]
    fn repeated_auth_failures_earn_a_growing_penalty_that_success_clears() {
        let t = Arc::new(Sources::default());
        let a = ip("10.0.0.9");
        let (base, max) = (Duration::from_secs(60), Duration::from_secs(600));
        t.auth_failed(a, base, max);
        t.auth_failed(a, base, max);
        assert!(t.connect(a, 0).is_ok(), "two failures: no penalty yet");
        t.auth_failed(a, base, max);
        assert_eq!(t.connect(a, 0).err(), Some(Refusal::Penalty));
        assert!(t.connect(ip("10.0.0.10"), 0).is_ok(), "others unaffected");
        t.auth_ok(a);
        assert!(t.connect(a, 0).is_ok());
    }
}
