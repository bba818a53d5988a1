//! Per-source bookkeeping for TCP services: open connections, connections
//! still in their handshake (OpenSSH's MaxStartups), and a back-off after
//! failed authentications. A "source" is a network block, not one address
//! (OpenSSH's PerSourceNetBlockSize): by default an IPv4 /32 and an IPv6
//! /64, since one IPv6 host usually has a whole /64 to pick addresses from.
//!
//! ```text
//! accept ─> penalty? ─close      (source failed auth repeatedly)
//!        └> conns >= per-source limit? ─close
//!        └> [exec] handshake slot (before TLS, so TLS handshakes count):
//!             source at its per-source limit            ─close
//!             total <  start                             admit
//!             start <= total < full: drop with rate% rising to 100% at full
//!             dropped or full: a source holding at least two more slots
//!               than this one loses its oldest handshake, and this one is
//!               admitted; else ─close
//!        └> serve; the guards give the slots back when dropped
//! ```
//!
//! The eviction is what keeps a flood from locking everyone out: silent
//! connections from a few sources fill the slots, but each newcomer from
//! another source takes one of theirs instead of being turned away. A flood
//! spread over many sources that each hold one slot is met by the random
//! early drop alone.
//!
//! One mutex-protected map: these checks run once per connection, not per
//! byte, and an entry disappears when its source has nothing left in it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use crate::config::{NetBlocks, Startups};

/// Failed authentications from one source before a penalty applies.
pub const FAILURES_BEFORE_PENALTY: u32 = 3;

#[derive(Debug, Default)]
struct Source {
    conns: usize,
    /// Handshakes in progress, oldest first: (id, eviction signal).
    unauth: VecDeque<(u64, CancellationToken)>,
    failures: u32,
    penalty_until: Option<Instant>,
}

impl Source {
    fn is_idle(&self, now: Instant) -> bool {
        self.conns == 0
            && self.unauth.is_empty()
            && self.failures == 0
            && self.penalty_until.is_none_or(|t| t <= now)
    }
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<IpAddr, Source>,
    unauth_total: usize,
    next_id: u64,
}

/// The table, shared by a service's listeners.
#[derive(Debug, Default)]
pub struct Sources {
    table: Mutex<Table>,
    blocks: NetBlocks,
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
    pub fn new(blocks: NetBlocks) -> Sources {
        Sources {
            table: Mutex::default(),
            blocks,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding this lock cannot leave the table
        // inconsistent in a way that matters (counters only), so a poisoned
        // lock is used as is.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection slot for `ip`'s source (0 = no per-source limit).
    pub fn connect(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Result<ConnGuard, Refusal> {
        let block = self.blocks.block(ip);
        let now = Instant::now();
        let mut t = self.lock();
        let s = t.map.entry(block).or_default();
        if s.penalty_until.is_some_and(|t| t > now) {
            return Err(Refusal::Penalty);
        }
        if limit > 0 && s.conns >= limit {
            return Err(Refusal::PerSource);
        }
        s.conns += 1;
        Ok(ConnGuard {
            sources: self.clone(),
            block,
        })
    }

    /// Takes a handshake slot for `ip`'s source under `startups` and at
    /// most `per_source` per source (see the module's diagram). The
    /// guard's [`evicted`](HandshakeGuard::evicted) token fires if a
    /// newcomer from another source takes the slot over.
    pub fn start_handshake(
        self: &Arc<Self>,
        ip: IpAddr,
        startups: Startups,
        per_source: usize,
    ) -> Result<HandshakeGuard, Refusal> {
        let block = self.blocks.block(ip);
        let mut t = self.lock();
        let mine = t.map.get(&block).map_or(0, |s| s.unauth.len());
        if mine >= per_source {
            return Err(Refusal::Unauthenticated);
        }
        let total = t.unauth_total;
        if !admit_early(total, startups) {
            // Take a slot from the source holding the most, if that is
            // at least two more than this one holds.
            let hog = t
                .map
                .iter()
                .filter(|(b, _)| **b != block)
                .max_by_key(|(_, s)| s.unauth.len())
                .filter(|(_, s)| s.unauth.len() > mine + 1)
                .map(|(b, _)| *b);
            let Some(hog) = hog else {
                return Err(Refusal::Unauthenticated);
            };
            if let Some(s) = t.map.get_mut(&hog)
                && let Some((_, evict)) = s.unauth.pop_front()
            {
                evict.cancel();
                t.unauth_total = t.unauth_total.saturating_sub(1);
            }
        }
        t.next_id += 1;
        let id = t.next_id;
        let evicted = CancellationToken::new();
        t.map
            .entry(block)
            .or_default()
            .unauth
            .push_back((id, evicted.clone()));
        t.unauth_total += 1;
        Ok(HandshakeGuard {
            sources: self.clone(),
            block,
            id,
            evicted,
        })
    }

    /// Records a failed authentication; from the
    /// [`FAILURES_BEFORE_PENALTY`]th on, the source is refused for `base`
    /// doubling with each further failure, at most `max`.
    pub fn auth_failed(&self, ip: IpAddr, base: Duration, max: Duration) {
        let block = self.blocks.block(ip);
        let mut t = self.lock();
        let s = t.map.entry(block).or_default();
        s.failures = s.failures.saturating_add(1);
        if s.failures >= FAILURES_BEFORE_PENALTY && !base.is_zero() {
            let doublings = (s.failures - FAILURES_BEFORE_PENALTY).min(16);
            let penalty = base.saturating_mul(1 << doublings).min(max);
            s.penalty_until = Some(Instant::now() + penalty);
        }
    }

    /// A successful authentication clears the source's failures.
    pub fn auth_ok(&self, ip: IpAddr) {
        let block = self.blocks.block(ip);
        if let Some(s) = self.lock().map.get_mut(&block) {
            s.failures = 0;
            s.penalty_until = None;
        }
    }

    /// Sources with state now (for tests and metrics).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.lock().map.values().filter(|s| !s.is_idle(now)).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections in their handshake now, all sources.
    pub fn unauthenticated(&self) -> usize {
        self.lock().unauth_total
    }

    fn release(&self, block: IpAddr, handshake: Option<u64>) {
        let mut t = self.lock();
        let Some(s) = t.map.get_mut(&block) else {
            return;
        };
        match handshake {
            None => s.conns = s.conns.saturating_sub(1),
            Some(id) => {
                // Absent when it was evicted: the slot was given back then.
                let before = s.unauth.len();
                s.unauth.retain(|(i, _)| *i != id);
                if s.unauth.len() < before {
                    t.unauth_total = t.unauth_total.saturating_sub(1);
                }
            }
        }
        // Forget sources with nothing open, no penalty and no failures.
        if t.map.get(&block).is_some_and(|s| s.is_idle(Instant::now())) {
            t.map.remove(&block);
        }
    }
}

/// Random early drop: always below `start`, never at `full`, in between
/// with a drop chance rising from `rate`% to 100%.
fn admit_early(total: usize, st: Startups) -> bool {
    if total < st.start {
        return true;
    }
    if total >= st.full {
        return false;
    }
    let span = (st.full - st.start).max(1) as u64;
    let into = (total - st.start) as u64;
    let rate = u64::from(st.rate);
    let drop_pct = rate + (100 - rate) * into / span;
    // A uniform draw in 0..100; without randomness, refuse (the eviction
    // still lets newcomers in).
    getrandom::u32().is_ok_and(|r| u64::from(r % 100) >= drop_pct)
}

/// A connection slot; given back on drop.
#[derive(Debug)]
pub struct ConnGuard {
    sources: Arc<Sources>,
    block: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.sources.release(self.block, None);
    }
}

/// A handshake slot; given back on drop (handshake done or failed).
#[derive(Debug)]
pub struct HandshakeGuard {
    sources: Arc<Sources>,
    block: IpAddr,
    id: u64,
    evicted: CancellationToken,
}

impl HandshakeGuard {
    /// Fires when a newcomer from another source took this slot over: the
    /// connection should give up its handshake.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.sources.release(self.block, Some(self.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table() -> Arc<Sources> {
        Arc::new(Sources::default())
    }

    /// No random early drop: admit until full.
    const HARD: Startups = Startups {
        start: 3,
        rate: 100,
        full: 3,
    };

    #[test]
    fn per_source_connections_are_bounded() {
        let t = table();
        let a = ip("10.0.0.1");
        let g1 = t.connect(a, 2).unwrap();
        let _g2 = t.connect(a, 2).unwrap();
        assert_eq!(t.connect(a, 2).err(), Some(Refusal::PerSource));
        assert!(t.connect(ip("10.0.0.2"), 2).is_ok());
        drop(g1);
        assert!(t.connect(a, 2).is_ok());
    }

    #[test]
    fn handshakes_are_bounded_and_a_hog_gives_way_to_a_newcomer() {
        let t = table();
        let a = ip("10.0.0.1");
        let h1 = t.start_handshake(a, HARD, 1).unwrap();
        assert_eq!(
            t.start_handshake(a, HARD, 1).err(),
            Some(Refusal::Unauthenticated),
            "per source"
        );
        let _h2 = t.start_handshake(ip("10.0.0.2"), HARD, 1).unwrap();
        let _h3 = t.start_handshake(ip("10.0.0.3"), HARD, 1).unwrap();
        assert_eq!(
            t.start_handshake(ip("10.0.0.4"), HARD, 1).err(),
            Some(Refusal::Unauthenticated),
            "full, and nobody holds more than the newcomer + 1"
        );
        drop(h1);
        assert!(t.start_handshake(ip("10.0.0.4"), HARD, 1).is_ok());

        // One source holds every slot: a newcomer takes its oldest.
        let t = table();
        let hog: Vec<_> = (0..3)
            .map(|_| t.start_handshake(a, HARD, 8).unwrap())
            .collect();
        let newcomer = t.start_handshake(ip("10.0.0.9"), HARD, 8).unwrap();
        assert!(hog[0].evicted().is_cancelled());
        assert!(!hog[1].evicted().is_cancelled());
        assert_eq!(t.unauthenticated(), 3);
        drop(hog);
        assert_eq!(t.unauthenticated(), 1);
        assert!(!newcomer.evicted().is_cancelled());
    }

    #[test]
    fn random_early_drop_between_start_and_full() {
        let st = Startups {
            start: 10,
            rate: 50,
            full: 20,
        };
        assert!((0..100).all(|_| admit_early(9, st)));
        assert!((0..100).all(|_| !admit_early(20, st)));
        let admitted = (0..2000).filter(|_| admit_early(10, st)).count();
        assert!((700..1300).contains(&admitted), "about half: {admitted}");
        let admitted = (0..2000).filter(|_| admit_early(18, st)).count();
        assert!(admitted < 400, "about a tenth: {admitted}");
    }

    #[test]
    fn sources_are_network_blocks() {
        let b = NetBlocks::default();
        assert_eq!(b.block(ip("2001:db8::1")), b.block(ip("2001:db8::ffff:1")));
        assert_ne!(b.block(ip("2001:db8::1")), b.block(ip("2001:db8:0:1::1")));
        assert_ne!(b.block(ip("10.0.0.1")), b.block(ip("10.0.0.2")));
        assert_eq!(b.block(ip("::ffff:10.0.0.1")), b.block(ip("10.0.0.1")));
        let wide = NetBlocks { v4: 24, v6: 48 };
        assert_eq!(wide.block(ip("10.0.0.1")), wide.block(ip("10.0.0.200")));
        let none = NetBlocks { v4: 0, v6: 0 };
        assert_eq!(none.block(ip("10.0.0.1")), none.block(ip("192.0.2.1")));

        // One IPv6 host picking addresses in its /64 is one source.
        let t = table();
        let _g = t.connect(ip("2001:db8::1"), 1).unwrap();
        assert_eq!(
            t.connect(ip("2001:db8::2"), 1).err(),
            Some(Refusal::PerSource)
        );
    }

    #[test]
    fn repeated_auth_failures_earn_a_growing_penalty_that_success_clears() {
        let t = table();
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
