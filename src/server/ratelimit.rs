//! Per-source-address token buckets for the UDP services.
//!
//! UDP sources can be spoofed, so a reply is a packet sent to whoever the
//! datagram claims to be. The limiter bounds what any one address can make
//! the server send. Its table is bounded too: when it is full, buckets that
//! have refilled completely (sources gone quiet) are swept out; if none have,
//! datagrams from new sources are dropped until the next sweep, which keeps a
//! flood of spoofed sources from costing more than one sweep per interval.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How often a full table may be swept.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per source IP address.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
    next_sweep: Instant,
}

impl RateLimiter {
    /// `rate` datagrams per second with bursts of `burst`, for at most
    /// `max_sources` addresses at once.
    pub fn new(rate: u32, burst: u32, max_sources: usize) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
            next_sweep: Instant::now(),
        }
    }

    /// Takes a token for `ip` at time `now`; false means drop the datagram.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        // IPv4-mapped IPv6 addresses are the same source as plain IPv4.
        let ip = ip.to_canonical();
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_sources {
            if now < self.next_sweep {
                return false;
            }
            self.sweep(now);
            self.next_sweep = now + SWEEP_INTERVAL;
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose buckets would be full again by now.
    fn sweep(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * rate < burst
        });
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let mut rl = RateLimiter::new(10, 5, 100);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        assert_eq!((0..20).filter(|_| rl.allow(a, t0)).count(), 5);
        // 0.5 s at 10/s refills 5 tokens.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!((0..20).filter(|_| rl.allow(a, t1)).count(), 5);
        // Another source has its own bucket.
        assert!(rl.allow(ip("10.0.0.2"), t1));
        // An IPv4-mapped address is the same source.
        assert!(!rl.allow(ip("::ffff:10.0.0.1"), t1));
    }

    #[test]
    fn full_table_sweeps_quiet_sources_and_drops_new_ones_otherwise() {
        let mut rl = RateLimiter::new(1, 2, 2);
        let t0 = Instant::now();
        assert!(rl.allow(ip("10.0.0.1"), t0));
        assert!(rl.allow(ip("10.0.0.2"), t0));
        // Both buckets are still refilling: a third source is refused.
        assert!(!rl.allow(ip("10.0.0.3"), t0));
        assert_eq!(rl.len(), 2);
        // After both have refilled, the sweep makes room.
        let t1 = t0 + Duration::from_secs(2);
        assert!(rl.allow(ip("10.0.0.3"), t1));
        assert_eq!(rl.len(), 1);
    }
}
