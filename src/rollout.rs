//! Canary and rolling fan-out (`--canary`, `--canary-hosts`, `--batch`,
//! `--max-fail`, `--stop-on-fail`), as Ansible's `serial` and
//! `max_fail_percentage` do it: which hosts run in which wave, and when to
//! stop starting new ones. Pure; the fan-out runs the waves.
//!
//! ```text
//! hosts:   a b c d e f g h i j          --canary 1 --batch 3 --max-fail 1
//! waves:   [a] [b c d] [e f g] [h i j]
//!           |    each wave starts when the one before has ended
//!           '--- canary: any failure skips every later wave
//! max-fail: once more than 1 host failed, no host starts: those still
//!           running finish; those not started are `skipped`
//! ```

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A number of hosts, or a percentage of all of them (`3`, `25%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Hosts(usize),
    Percent(u8),
}

impl FromStr for Count {
    type Err = String;

    fn from_str(s: &str) -> Result<Count, String> {
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Count::Percent(p)),
                _ => Err(format!("{s:?}: a percentage is 0% to 100%")),
            },
            None => s
                .parse::<usize>()
                .map(Count::Hosts)
                .map_err(|_| format!("{s:?}: a number of hosts (3) or a percentage (25%)")),
        }
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Count::Hosts(n) => write!(f, "{n}"),
            Count::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Count {
    /// How many hosts out of `total`; a percentage rounds down.
    pub fn of(self, total: usize) -> usize {
        match self {
            Count::Hosts(n) => n,
            Count::Percent(p) => total.saturating_mul(usize::from(p)) / 100,
        }
    }
}

/// Which hosts go first, alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Canary {
    #[default]
    None,
    /// The first N hosts of the list.
    First(usize),
    /// These hosts, each of which must be in the list.
    Hosts(Vec<String>),
}

/// How a fan-out rolls over its hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    pub canary: Canary,
    /// Hosts per wave after the canary (at least 1); `None`: one wave.
    pub batch: Option<Count>,
    /// Failures allowed before no new host starts; `None`: no limit.
    pub max_fail: Option<Count>,
}

/// One wave: `hosts` are indices into the host list, in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// From 1.
    pub number: usize,
    pub canary: bool,
    pub hosts: Vec<usize>,
}

impl Rollout {
    /// Whether this is a plain fan-out: one wave, no limit.
    pub fn is_plain(&self) -> bool {
        *self == Rollout::default()
    }

    /// The waves over `hosts`: the canary's (if any), then the rest in
    /// batches, each host in exactly one wave.
    pub fn waves(&self, hosts: &[String]) -> Result<Vec<Wave>, String> {
        let mut canary = match &self.canary {
            Canary::None => Vec::new(),
            Canary::First(0) => return Err("--canary needs at least 1 host".into()),
            Canary::First(n) => (0..(*n).min(hosts.len())).collect(),
            Canary::Hosts(named) => {
                let mut v = Vec::new();
                for h in named {
                    let i = hosts.iter().position(|x| x == h).ok_or_else(|| {
                        format!("canary host {h} is not one of the hosts (--hosts, less --exclude)")
                    })?;
                    if !v.contains(&i) {
                        v.push(i);
                    }
                }
                v
            }
        };
        if matches!(self.batch, Some(Count::Hosts(0) | Count::Percent(0))) {
            return Err("--batch needs at least 1 host (or 1%)".into());
        }
        canary.sort_unstable();
        let rest: Vec<usize> = (0..hosts.len()).filter(|i| !canary.contains(i)).collect();
        let size = match self.batch {
            None => rest.len(),
            Some(c) => c.of(hosts.len()),
        }
        .max(1);
        let mut waves = Vec::new();
        if !canary.is_empty() {
            waves.push(Wave {
                number: 1,
                canary: true,
                hosts: canary,
            });
        }
        for chunk in rest.chunks(size) {
            waves.push(Wave {
                number: waves.len() + 1,
                canary: false,
                hosts: chunk.to_vec(),
            });
        }
        Ok(waves)
    }

    /// The gate that `--max-fail` closes, for `total` hosts.
    pub fn gate(&self, total: usize) -> Gate {
        Gate {
            limit: self.max_fail.map(|c| c.of(total)),
            given: self.max_fail,
            failed: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }
}

/// Counts failures as hosts end; closed once more than the limit failed.
/// Shared by a wave's tasks: a host asks it before it starts.
#[derive(Debug)]
pub struct Gate {
    limit: Option<usize>,
    given: Option<Count>,
    failed: AtomicUsize,
    closed: AtomicBool,
}

impl Gate {
    /// Whether a host may still start.
    pub fn open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// A host ended, and whether it failed.
    pub fn record(&self, failed: bool) {
        if !failed {
            return;
        }
        let n = self.failed.fetch_add(1, Ordering::AcqRel) + 1;
        if self.limit.is_some_and(|l| n > l) {
            self.closed.store(true, Ordering::Release);
        }
    }

    /// Why a host was not started, once the gate is closed.
    pub fn reason(&self) -> String {
        match self.given {
            Some(c) => format!("--max-fail {c} reached"),
            None => "stopped".into(),
        }
    }
}

/// Why the hosts of the waves after a failed canary are not started.
pub const CANARY_FAILED: &str = "the canary failed";

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("h{i}:1")).collect()
    }

    fn shape(w: &[Wave]) -> Vec<(bool, Vec<usize>)> {
        w.iter().map(|w| (w.canary, w.hosts.clone())).collect()
    }

    #[test]
    fn counts_parse_and_round_down() {
        assert_eq!("3".parse(), Ok(Count::Hosts(3)));
        assert_eq!("25%".parse(), Ok(Count::Percent(25)));
        assert!("101%".parse::<Count>().is_err());
        assert!("-1".parse::<Count>().is_err());
        assert!("x%".parse::<Count>().is_err());
        assert_eq!(Count::Percent(25).of(10), 2);
        assert_eq!(Count::Percent(100).of(7), 7);
        assert_eq!(Count::Percent(0).of(7), 0);
        assert_eq!(Count::Percent(50).of(usize::MAX), usize::MAX / 100);
    }

    #[test]
    fn plain_is_one_wave() {
        let r = Rollout::default();
        assert!(r.is_plain());
        assert_eq!(
            shape(&r.waves(&hosts(4)).unwrap()),
            [(false, vec![0, 1, 2, 3])]
        );
        assert!(r.waves(&[]).unwrap().is_empty());
    }

    #[test]
    fn canary_then_batches_cover_every_host_once() {
        let r = Rollout {
            canary: Canary::First(1),
            batch: Some(Count::Hosts(3)),
            max_fail: None,
        };
        let w = r.waves(&hosts(10)).unwrap();
        assert_eq!(
            shape(&w),
            [
                (true, vec![0]),
                (false, vec![1, 2, 3]),
                (false, vec![4, 5, 6]),
                (false, vec![7, 8, 9])
            ]
        );
        assert_eq!(w.iter().map(|w| w.number).collect::<Vec<_>>(), [1, 2, 3, 4]);
        // A percentage of all hosts, at least one per wave.
        let r = Rollout {
            batch: Some(Count::Percent(5)),
            ..Rollout::default()
        };
        assert_eq!(r.waves(&hosts(3)).unwrap().len(), 3);
        // More canaries than hosts: all of them are the canary.
        let r = Rollout {
            canary: Canary::First(5),
            ..Rollout::default()
        };
        assert_eq!(shape(&r.waves(&hosts(2)).unwrap()), [(true, vec![0, 1])]);
    }

    #[test]
    fn named_canaries_must_be_in_the_list() {
        let h = hosts(5);
        let r = Rollout {
            canary: Canary::Hosts(vec!["h3:1".into(), "h1:1".into(), "h3:1".into()]),
            ..Rollout::default()
        };
        assert_eq!(
            shape(&r.waves(&h).unwrap()),
            [(true, vec![1, 3]), (false, vec![0, 2, 4])]
        );
        let r = Rollout {
            canary: Canary::Hosts(vec!["h9:1".into()]),
            ..Rollout::default()
        };
        assert!(r.waves(&h).unwrap_err().contains("h9:1"));
        let r = Rollout {
            canary: Canary::First(0),
            ..Rollout::default()
        };
        assert!(r.waves(&h).is_err());
        for zero in [Count::Hosts(0), Count::Percent(0)] {
            let r = Rollout {
                batch: Some(zero),
                ..Rollout::default()
            };
            assert!(r.waves(&h).is_err(), "{zero}");
        }
    }

    #[test]
    fn the_gate_closes_past_the_limit() {
        let r = Rollout {
            max_fail: Some(Count::Hosts(1)),
            ..Rollout::default()
        };
        let g = r.gate(10);
        g.record(true);
        g.record(false);
        assert!(g.open(), "one failure is allowed");
        g.record(true);
        assert!(!g.open());
        assert_eq!(g.reason(), "--max-fail 1 reached");
        // --stop-on-fail is --max-fail 0: the first failure closes it.
        let g = Rollout {
            max_fail: Some(Count::Hosts(0)),
            ..Rollout::default()
        }
        .gate(3);
        g.record(true);
        assert!(!g.open());
        // No limit: never closes.
        let g = Rollout::default().gate(3);
        (0..3).for_each(|_| g.record(true));
        assert!(g.open());
        // 20% of 10: two failures allowed.
        let g = Rollout {
            max_fail: Some(Count::Percent(20)),
            ..Rollout::default()
        }
        .gate(10);
        (0..2).for_each(|_| g.record(true));
        assert!(g.open());
        g.record(true);
        assert!(!g.open());
    }
}
