//! A retry budget shared by every execution of a process (Finagle's model):
//! each execution deposits a fraction of a retry, each same-route retry
//! withdraws a whole one, and a small number of retries per second is
//! always allowed. When a provider is failing for everyone, retries stop
//! multiplying its load: at most `percent`% extra calls, plus the floor.
//! Pure: the caller passes the time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Milli-retries: the budget counts in thousandths so that no float is needed.
const RETRY: u64 = 1_000;
/// Retries that can be banked in quiet times.
const MAX_BANKED: u64 = 100 * RETRY;

#[derive(Debug)]
struct State {
    balance: u64,
    window_start: Option<Instant>,
    floor_used: u32,
}

/// The budget.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: u32,
    state: Mutex<State>,
}

impl RetryBudget {
    /// Retries may add `percent`% to the calls made, and `min_per_second`
    /// are always allowed.
    #[must_use]
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent: u64::from(percent),
            min_per_second,
            state: Mutex::new(State { balance: 0, window_start: None, floor_used: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An execution started: it earns `percent`% of a retry.
    pub fn deposit(&self) {
        let mut s = self.state();
        s.balance = (s.balance + self.percent * RETRY / 100).min(MAX_BANKED);
    }

    /// Asks for one retry now.
    #[must_use]
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut s = self.state();
        if s.window_start.is_none_or(|start| now.saturating_duration_since(start) >= Duration::from_secs(1)) {
            s.window_start = Some(now);
            s.floor_used = 0;
        }
        if s.floor_used < self.min_per_second {
            s.floor_used += 1;
            return true;
        }
        if s.balance >= RETRY {
            s.balance -= RETRY;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_fraction_of_calls_plus_a_floor() {
        let budget = RetryBudget::new(20, 2);
        let now = Instant::now();
        for _ in 0..10 {
            budget.deposit();
        }
        // The floor (2), then 10 × 20% = 2 earned retries, then no more.
        let granted = (0..10).filter(|_| budget.try_withdraw(now)).count();
        assert_eq!(granted, 4);
        // A second later the floor is there again.
        assert!(budget.try_withdraw(now + Duration::from_secs(1)));
        assert!(budget.try_withdraw(now + Duration::from_secs(1)));
        assert!(!budget.try_withdraw(now + Duration::from_secs(1)));
    }

    #[test]
    fn banked_retries_are_capped() {
        let budget = RetryBudget::new(100, 0);
        for _ in 0..1_000 {
            budget.deposit();
        }
        let now = Instant::now();
        assert_eq!((0..1_000).filter(|_| budget.try_withdraw(now)).count(), 100);
    }
}
