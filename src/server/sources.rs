//! Per-source bookkeeping for TCP services: open connections, connections
//! still in their handshake (OpenSSH's MaxStartups), and a back-off after
//! failed authentications. A "source" is a network block, not one address
//! (OpenSSH's PerSourceNetBlockSize): by default an IPv4 /32 and an IPv6
//! /64, since one IPv6 host usually has a whole /64 to pick addresses from.
//!
//! ```text
//! accept ─> penalty? ─close      (failed auths; or, under pressure, a slot
//!        │                        left unauthenticated: see below)
//!        └> conns >= per-source limit? ─close
//!        └> [exec] handshake slot (before TLS, so TLS handshakes count):
//!             source at its per-source limit            ─close
//!             total <  start                             admit
//!             start <= total < full: drop with rate% rising to 100% at full
//!             dropped or full: the source holding the most slots, if it
//!               holds at least as many as this one would, loses its
//!               oldest handshake and this one is admitted; else ─close
//!        └> serve; the guards give the slots back when dropped
//! ```
//!
//! Under pressure (at least `start` handshakes in progress) a source whose
//! connection is dropped, refused, evicted, or leaves its handshake without
//! authenticating is refused for `penalty` (OpenSSH's PerSourcePenalties
//! `noauth`). That bounds how fast any source can churn slots, so a
//! newcomer's handshake, which takes a round trip, is not evicted before it
//! completes; and eviction (oldest first among the biggest holders) lets the
//! newcomer in even when every slot is held, by few sources or by many. A
//! flood from more sources than `full` × penalty-seconds per handshake
//! time can still crowd clients out: that is a job for a firewall.
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
    /// Handshakes in progress, oldest first: (id, eviction signal, start).
    unauth: VecDeque<(u64, CancellationToken, Instant)>,
    failures: u32,
    penalty_until: Option<Instant>,
}

impl Source {
    /// Refuses the source for `penalty` from `now` (never shortens one).
    fn penalize(&mut self, now: Instant, penalty: Duration) {
        if !penalty.is_zero() {
            let until = now + penalty;
            self.penalty_until = Some(self.penalty_until.map_or(until, |t| t.max(until)));
        }
    }

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

impl Table {
    /// Frees a slot for a newcomer from `block`, which holds `mine`: the
    /// oldest handshake of the source holding the most slots, if that
    /// source holds more than `mine` (so the newcomer never ends up holding
    /// more than it). The loser's source serves `penalty`.
    fn evict_for(&mut self, block: IpAddr, mine: usize, now: Instant, penalty: Duration) -> bool {
        let victim = self
            .map
            .iter()
            .filter(|(b, s)| **b != block && s.unauth.len() > mine)
            .max_by(|(_, a), (_, b)| {
                // Most slots first; among equals, the oldest handshake.
                let oldest = |s: &Source| s.unauth.front().map(|u| u.2);
                a.unauth
                    .len()
                    .cmp(&b.unauth.len())
                    .then_with(|| oldest(b).cmp(&oldest(a)))
            })
            .map(|(b, _)| *b);
        let Some(s) = victim.and_then(|v| self.map.get_mut(&v)) else {
            return false;
        };
        let Some((_, evict, _)) = s.unauth.pop_front() else {
            return false;
        };
        evict.cancel();
        s.penalize(now, penalty);
        self.unauth_total = self.unauth_total.saturating_sub(1);
        true
    }
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
    /// newcomer takes the slot over; unless the guard is marked
    /// [`authenticated`](HandshakeGuard::authenticated) before it is
    /// dropped, the source serves `penalty` if the slots were under
    /// pressure.
    pub fn start_handshake(
        self: &Arc<Self>,
        ip: IpAddr,
        startups: Startups,
        per_source: usize,
        penalty: Duration,
    ) -> Result<HandshakeGuard, Refusal> {
        let block = self.blocks.block(ip);
        let now = Instant::now();
        let mut t = self.lock();
        let pressure = t.unauth_total >= startups.start;
        let mine = t.map.get(&block).map_or(0, |s| s.unauth.len());
        let admitted = mine < per_source
            && (admit_early(t.unauth_total, startups) || t.evict_for(block, mine, now, penalty));
        if !admitted {
            if pressure {
                t.map.entry(block).or_default().penalize(now, penalty);
            }
            return Err(Refusal::Unauthenticated);
        }
        t.next_id += 1;
        let id = t.next_id;
        let evicted = CancellationToken::new();
        t.map
            .entry(block)
            .or_default()
            .unauth
            .push_back((id, evicted.clone(), now));
        t.unauth_total += 1;
        Ok(HandshakeGuard {
            sources: self.clone(),
            block,
            id,
            evicted,
            authenticated: false,
            pressure_at: startups.start,
            penalty,
        })
    }

    /// Records a failed authentication; from the
    /// [`FAILURES_BEFORE_PENALTY`]th on, the source is refused for `base`
    /// doubling with each further failure, at most `max`. Returns the
    /// penalty imposed, if any, and the failures so far.
    pub fn auth_failed(
        &self,
        ip: IpAddr,
        base: Duration,
        max: Duration,
    ) -> (Option<Duration>, u32) {
        let block = self.blocks.block(ip);
        let mut t = self.lock();
        let s = t.map.entry(block).or_default();
        s.failures = s.failures.saturating_add(1);
        if s.failures >= FAILURES_BEFORE_PENALTY && !base.is_zero() {
            let doublings = (s.failures - FAILURES_BEFORE_PENALTY).min(16);
            let penalty = base.saturating_mul(1 << doublings).min(max);
            s.penalty_until = Some(Instant::now() + penalty);
            return (Some(penalty), s.failures);
        }
        (None, s.failures)
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
        self.release_and(block, handshake, None);
    }

    /// Gives a slot back; with `penalty`, the source serves it if the
    /// handshake slots are under pressure (at least `pressure_at` in use,
    /// this one included).
    fn release_and(
        &self,
        block: IpAddr,
        handshake: Option<u64>,
        penalty: Option<(usize, Duration)>,
    ) {
        let mut t = self.lock();
        let total = t.unauth_total;
        let Some(s) = t.map.get_mut(&block) else {
            return;
        };
        if let Some((pressure_at, p)) = penalty
            && total >= pressure_at
        {
            s.penalize(Instant::now(), p);
        }
        match handshake {
            None => s.conns = s.conns.saturating_sub(1),
            Some(id) => {
                // Absent when it was evicted: the slot was given back then.
                let before = s.unauth.len();
                s.unauth.retain(|(i, _, _)| *i != id);
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
    authenticated: bool,
    pressure_at: usize,
    penalty: Duration,
}

impl HandshakeGuard {
    /// The handshake succeeded: giving the slot back costs the source
    /// nothing.
    pub fn authenticated(mut self) {
        self.authenticated = true;
    }

    /// Fires when a newcomer from another source took this slot over: the
    /// connection should give up its handshake.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        let penalty = (!self.authenticated).then_some((self.pressure_at, self.penalty));
        self.sources.release_and(self.block, Some(self.id), penalty);
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

    const NONE: Duration = Duration::ZERO;

    #[test]
    fn handshakes_are_bounded_and_the_oldest_of_the_biggest_holder_gives_way() {
        let t = table();
        let a = ip("10.0.0.1");
        let h1 = t.start_handshake(a, HARD, 1, NONE).unwrap();
        assert_eq!(
            t.start_handshake(a, HARD, 1, NONE).err(),
            Some(Refusal::Unauthenticated),
            "per source"
        );
        let h2 = t.start_handshake(ip("10.0.0.2"), HARD, 1, NONE).unwrap();
        let _h3 = t.start_handshake(ip("10.0.0.3"), HARD, 1, NONE).unwrap();
        // Full, every source holding one: a newcomer takes the oldest.
        let h4 = t.start_handshake(ip("10.0.0.4"), HARD, 1, NONE).unwrap();
        assert!(h1.evicted().is_cancelled());
        assert!(!h2.evicted().is_cancelled());
        assert_eq!(t.unauthenticated(), 3);
        drop(h1);
        assert_eq!(t.unauthenticated(), 3, "an evicted slot is given back once");
        // A source may not take a slot from one holding no more than it.
        assert_eq!(
            t.start_handshake(ip("10.0.0.4"), HARD, 2, NONE).err(),
            Some(Refusal::Unauthenticated)
        );
        drop(h4);

        // One source holds every slot: a newcomer takes its oldest.
        let t = table();
        let hog: Vec<_> = (0..3)
            .map(|_| t.start_handshake(a, HARD, 8, NONE).unwrap())
            .collect();
        let newcomer = t.start_handshake(ip("10.0.0.9"), HARD, 8, NONE).unwrap();
        assert!(hog[0].evicted().is_cancelled());
        assert!(!hog[1].evicted().is_cancelled());
        assert_eq!(t.unauthenticated(), 3);
        drop(hog);
        assert_eq!(t.unauthenticated(), 1);
        assert!(!newcomer.evicted().is_cancelled());
    }

    #[test]
    fn under_pressure_a_slot_left_unauthenticated_costs_its_source_a_penalty() {
        let t = table();
        let p = Duration::from_secs(60);
        // From one slot on, pressure; no random drop before two.
        let st = Startups {
            start: 1,
            rate: 0,
            full: 2,
        };
        let (a, b, c) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        // No pressure yet when a starts: still, a leaves unauthenticated
        // while b's handshake keeps the slots at `start`.
        let ha = t.start_handshake(a, st, 8, p).unwrap();
        let hb = t.start_handshake(b, st, 8, p).unwrap();
        hb.authenticated();
        assert!(t.connect(b, 0).is_ok(), "authenticated: no penalty");
        let hb2 = t.start_handshake(b, st, 8, p).unwrap();
        drop(ha);
        assert_eq!(t.connect(a, 0).err(), Some(Refusal::Penalty));
        // Evicted under pressure: penalized too.
        let _hc = t.start_handshake(c, st, 8, p).unwrap();
        let _hd = t.start_handshake(ip("10.0.0.4"), st, 8, p).unwrap();
        assert!(hb2.evicted().is_cancelled());
        assert_eq!(t.connect(b, 0).err(), Some(Refusal::Penalty));
        // Without pressure, leaving costs nothing.
        let t = table();
        let calm = Startups { start: 2, ..st };
        drop(t.start_handshake(a, calm, 8, p).unwrap());
        assert!(t.connect(a, 0).is_ok());
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
