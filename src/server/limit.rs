//! A resizable count limit: connections of a service, jobs of a server.
//!
//! A semaphore cannot shrink below the permits it has handed out: taking
//! back only the free ones leaves the limit too high for good once the
//! busy ones come back. Here the ceiling is a number that SIGHUP sets and
//! every acquisition compares against, so a smaller limit holds from the
//! next acquisition on: nothing running is cut off, nothing new starts
//! until the count is under the new ceiling.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A ceiling and the number in use under it.
#[derive(Debug)]
pub struct Limit {
    max: AtomicUsize,
    used: AtomicUsize,
}

/// The limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Limit {
    pub fn new(max: usize) -> Arc<Limit> {
        Arc::new(Limit {
            max: AtomicUsize::new(max),
            used: AtomicUsize::new(0),
        })
    }

    /// Takes one unit if fewer than the ceiling are in use; the guard
    /// gives it back when dropped.
    pub fn try_acquire_owned(self: Arc<Self>) -> Result<LimitGuard, Full> {
        let max = self.max.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < max).then_some(u + 1)
            })
            .map_err(|_| Full)?;
        Ok(LimitGuard { limit: self })
    }

    /// Sets a new ceiling; units in use above it stay until released.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// One unit of a [`Limit`], given back on drop.
#[derive(Debug)]
pub struct LimitGuard {
    limit: Arc<Limit>,
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        self.limit.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinking_below_the_units_in_use_holds_once_they_are_released() {
        let l = Limit::new(3);
        let held: Vec<_> = (0..3)
            .map(|_| l.clone().try_acquire_owned().unwrap())
            .collect();
        assert_eq!(l.clone().try_acquire_owned().err(), Some(Full));
        l.set_max(1);
        drop(held);
        let one = l.clone().try_acquire_owned().unwrap();
        assert_eq!(l.clone().try_acquire_owned().err(), Some(Full));
        l.set_max(2);
        let _two = l.clone().try_acquire_owned().unwrap();
        assert_eq!(l.in_use(), 2);
        drop(one);
        assert_eq!(l.in_use(), 1);
    }
}
