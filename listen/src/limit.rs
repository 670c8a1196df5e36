//! A cap on connections held open at once. Past it, a new connection is
//! closed as soon as it is accepted and counted: a storm of connections
//! costs a refusal each, not memory or file descriptors, and the
//! connections already carried are unharmed. The proxy's data listeners
//! share one (`listeners.maxConnections`, off unless configured, as ztunnel
//! has none); the CA port and each admin port have their own
//! ([`crate::Bounds`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many connections are open, and how many may be.
#[derive(Debug, Default)]
pub struct ConnectionLimit {
    max: AtomicUsize,
    open: AtomicUsize,
}

/// One connection's place under the limit, given back when dropped.
#[derive(Debug)]
pub struct Permit(Arc<ConnectionLimit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    /// A limit of `max` connections at once (0 for none), to share.
    pub fn with_max(max: usize) -> Arc<Self> {
        let limit = Arc::new(ConnectionLimit::default());
        limit.set_max(max);
        limit
    }

    /// At most `max` connections at once; 0 for no limit.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// The cap, or `None` when there is none.
    pub fn max(&self) -> Option<usize> {
        Some(self.max.load(Ordering::Relaxed)).filter(|m| *m > 0)
    }

    /// How many connections hold a permit now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A place for one more connection, unless the limit is reached.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let max = self.max().unwrap_or(usize::MAX);
        let mut open = self.open.load(Ordering::Acquire);
        loop {
            if open >= max {
                return None;
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Permit(self.clone())),
                Err(now) => open = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_given_up_to_the_limit_and_back_when_dropped() {
        let limit = Arc::new(ConnectionLimit::default());
        let unlimited: Vec<_> = (0..100).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(unlimited.len(), 100, "no limit unless one is set");
        drop(unlimited);
        limit.set_max(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.open(), 2);
        drop(a);
        assert!(limit.try_acquire().is_some());
    }
}
