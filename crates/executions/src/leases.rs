//! Leases on the holds of running executions.
//!
//! A hold expires at the time its owner sets; the sweeper releases it after
//! that. An execution places its hold with an expiry one lease away and,
//! while it runs, one keeper task per executor moves the expiry of every
//! live execution's hold one lease on, every third of a lease, in one
//! statement ([`modelroute_ledger::Ledger::renew`]). So a stream may run
//! for hours, or a client read it slowly, without its money becoming
//! spendable under it; and if the server dies, the renewals stop and the
//! hold is released within a lease and one sweep interval.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use modelroute_types::HoldId;

/// The holds of the executions running now.
#[derive(Debug)]
pub(crate) struct Leases {
    /// How far ahead each renewal moves a hold's expiry, in milliseconds.
    lease_ms: AtomicU64,
    live: Mutex<HashSet<HoldId>>,
    /// Whether the keeper task is running.
    keeper: AtomicBool,
}

/// A live execution's claim on its hold's lease; dropping it (the
/// execution ended, however) stops the renewals.
#[derive(Debug)]
pub(crate) struct Lease {
    leases: Arc<Leases>,
    hold: HoldId,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.leases.live().remove(&self.hold);
    }
}

/// Marks the keeper as stopped when its task ends, also when its runtime
/// drops it: the next execution starts another.
pub(crate) struct KeeperRunning(pub(crate) Arc<Leases>);

impl Drop for KeeperRunning {
    fn drop(&mut self) {
        self.0.keeper.store(false, Ordering::Release);
    }
}

impl Leases {
    pub(crate) fn new(lease: Duration) -> Self {
        let leases = Self { lease_ms: AtomicU64::new(0), live: Mutex::default(), keeper: AtomicBool::new(false) };
        leases.set_lease(lease);
        leases
    }

    /// How far ahead each renewal moves a hold's expiry.
    pub(crate) fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn set_lease(&self, lease: Duration) {
        self.lease_ms.store(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1), Ordering::Relaxed);
    }

    fn live(&self) -> MutexGuard<'_, HashSet<HoldId>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How often the keeper renews: a third of the lease, so two renewals
    /// may fail before a hold lapses.
    pub(crate) fn renew_every(&self) -> Duration {
        (self.lease() / 3).max(Duration::from_millis(10))
    }

    /// Starts renewing `hold` until the returned lease is dropped.
    pub(crate) fn take(self: &Arc<Self>, hold: HoldId) -> Lease {
        self.live().insert(hold.clone());
        Lease { leases: Arc::clone(self), hold }
    }

    /// The holds to renew now.
    pub(crate) fn holds(&self) -> Vec<HoldId> {
        self.live().iter().cloned().collect()
    }

    /// True for the one caller that should start the keeper.
    pub(crate) fn claim_keeper(&self) -> bool {
        !self.keeper.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_lasts_as_long_as_its_execution() {
        let leases = Arc::new(Leases::new(Duration::from_secs(30)));
        assert_eq!(leases.renew_every(), Duration::from_secs(10));
        let (a, b) = (HoldId::new(), HoldId::new());
        let first = leases.take(a);
        let second = leases.take(b.clone());
        assert_eq!(leases.holds().len(), 2);
        drop(first);
        assert_eq!(leases.holds(), vec![b]);
        drop(second);
        assert!(leases.holds().is_empty());
        assert!(leases.claim_keeper());
        assert!(!leases.claim_keeper(), "one keeper");
        drop(KeeperRunning(Arc::clone(&leases)));
        assert!(leases.claim_keeper(), "a stopped keeper can be started again");
    }
}
