//! Circuit breakers, one per route: a count-based sliding window of call
//! outcomes; the breaker opens when the failure rate over at least
//! `minimum_calls` reaches the threshold, lets a few probes through after
//! `open_ms`, and closes when they succeed (resilience4j's model and
//! defaults, scaled down). Pure: the caller passes the time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The `[routing.breaker]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Outcomes remembered per route.
    pub window: usize,
    /// Calls in the window before the rate is judged.
    pub minimum_calls: usize,
    /// Failure rate (percent) at which the breaker opens.
    pub failure_rate_percent: u8,
    /// How long an open breaker refuses calls before probing.
    pub open_ms: u64,
    /// Probes allowed while half-open; all must succeed to close.
    pub half_open_probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { window: 20, minimum_calls: 10, failure_rate_percent: 50, open_ms: 30_000, half_open_probes: 3 }
    }
}

/// A breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// A few probes are let through.
    HalfOpen,
}

#[derive(Debug)]
struct Breaker {
    state: BreakerState,
    outcomes: VecDeque<bool>,
    opened_at: Option<Instant>,
    probes_started: usize,
    probes_succeeded: usize,
    /// Exponentially weighted moving average of successful calls' latency
    /// (time to first token when streamed, else to the whole answer), µs.
    latency_us: Option<u64>,
}

/// Weight of the newest observation in the latency average, in percent.
const LATENCY_EWMA_PERCENT: u64 = 30;

impl Breaker {
    const fn new() -> Self {
        Self {
            state: BreakerState::Closed,
            outcomes: VecDeque::new(),
            opened_at: None,
            probes_started: 0,
            probes_succeeded: 0,
            latency_us: None,
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.outcomes.clear();
    }

    fn open_period_over(&self, config: &BreakerConfig, now: Instant) -> bool {
        self.opened_at.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(config.open_ms))
    }
}

/// The breakers of every route, shared by all requests of a process.
#[derive(Debug, Default)]
pub struct Health {
    config: BreakerConfig,
    breakers: Mutex<HashMap<String, Breaker>>,
}

impl Health {
    /// Breakers with these settings; routes get one on first use.
    #[must_use]
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, breakers: Mutex::default() }
    }

    fn with<T>(&self, route: &str, f: impl FnOnce(&mut Breaker, &BreakerConfig) -> T) -> T {
        let mut map = self.breakers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Look up before inserting: the key is allocated once per route, not per call.
        if let Some(breaker) = map.get_mut(route) {
            return f(breaker, &self.config);
        }
        let breaker = map.entry(route.to_owned()).or_insert_with(Breaker::new);
        f(breaker, &self.config)
    }

    /// Whether the route is refusing calls now (open and not yet due for a
    /// probe). Does not change any state: planning uses it.
    #[must_use]
    pub fn is_open(&self, route: &str, now: Instant) -> bool {
        self.view(route, now).0
    }

    /// Whether the route is refusing calls now, and its observed latency:
    /// both under one lock, for planning.
    #[must_use]
    pub fn view(&self, route: &str, now: Instant) -> (bool, Option<Duration>) {
        self.with(route, |b, c| {
            let open = match b.state {
                BreakerState::Open => !b.open_period_over(c, now),
                BreakerState::HalfOpen => b.probes_started >= c.half_open_probes,
                BreakerState::Closed => false,
            };
            (open, b.latency_us.map(Duration::from_micros))
        })
    }

    /// Asks to call the route now: always yes when closed; after the open
    /// period, yes for up to `half_open_probes` probes.
    #[must_use]
    pub fn try_acquire(&self, route: &str, now: Instant) -> bool {
        self.with(route, |b, c| {
            if b.state == BreakerState::Open && b.open_period_over(c, now) {
                b.state = BreakerState::HalfOpen;
                b.probes_started = 0;
                b.probes_succeeded = 0;
            }
            match b.state {
                BreakerState::Closed => true,
                BreakerState::HalfOpen if b.probes_started < c.half_open_probes => {
                    b.probes_started += 1;
                    true
                }
                BreakerState::Open | BreakerState::HalfOpen => false,
            }
        })
    }

    /// Records a successful call's latency into the route's moving average.
    pub fn record_latency(&self, route: &str, latency: Duration) {
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.with(route, |b, _| {
            b.latency_us = Some(b.latency_us.map_or(sample, |avg| {
                // avg + (sample - avg) × 30%, in integers.
                let weighted = u128::from(avg) * u128::from(100 - LATENCY_EWMA_PERCENT)
                    + u128::from(sample) * u128::from(LATENCY_EWMA_PERCENT);
                u64::try_from(weighted / 100).unwrap_or(u64::MAX)
            }));
        });
    }

    /// The route's observed latency (moving average), if it has served a call.
    #[must_use]
    pub fn latency(&self, route: &str) -> Option<Duration> {
        self.with(route, |b, _| b.latency_us.map(Duration::from_micros))
    }

    /// Records a call's outcome. Only failures that say something about the
    /// route's health should be recorded as failures (not invalid requests).
    pub fn record(&self, route: &str, success: bool, now: Instant) {
        self.with(route, |b, c| match b.state {
            BreakerState::HalfOpen if !success => b.open(now),
            BreakerState::HalfOpen => {
                b.probes_succeeded += 1;
                if b.probes_succeeded >= c.half_open_probes {
                    b.state = BreakerState::Closed;
                    b.outcomes.clear();
                }
            }
            BreakerState::Open => {}
            BreakerState::Closed => {
                b.outcomes.push_back(success);
                while b.outcomes.len() > c.window.max(1) {
                    b.outcomes.pop_front();
                }
                let calls = b.outcomes.len();
                let failures = b.outcomes.iter().filter(|ok| !**ok).count();
                if calls >= c.minimum_calls.max(1) && failures * 100 >= calls * usize::from(c.failure_rate_percent) {
                    b.open(now);
                }
            }
        });
    }

    /// The route's state now.
    #[must_use]
    pub fn state(&self, route: &str) -> BreakerState {
        self.with(route, |b, _| b.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(BreakerConfig {
            window: 4,
            minimum_calls: 4,
            failure_rate_percent: 50,
            open_ms: 100,
            half_open_probes: 2,
        })
    }

    #[test]
    fn opens_at_the_failure_rate_over_the_minimum_calls() {
        let (h, t0) = (health(), Instant::now());
        h.record("r", false, t0);
        h.record("r", false, t0);
        h.record("r", true, t0);
        assert_eq!(h.state("r"), BreakerState::Closed, "fewer than minimum_calls");
        h.record("r", true, t0);
        assert_eq!(h.state("r"), BreakerState::Open, "2 of 4 failed = 50%");
        assert!(h.is_open("r", t0) && !h.try_acquire("r", t0));
    }

    #[test]
    fn probes_after_the_open_period_and_closes_on_success() {
        let (h, t0) = (health(), Instant::now());
        (0..4).for_each(|_| h.record("r", false, t0));
        let later = t0 + Duration::from_millis(150);
        assert!(!h.is_open("r", later), "due for a probe");
        assert!(h.try_acquire("r", later) && h.try_acquire("r", later));
        assert!(!h.try_acquire("r", later), "only two probes");
        h.record("r", true, later);
        assert_eq!(h.state("r"), BreakerState::HalfOpen);
        h.record("r", true, later);
        assert_eq!(h.state("r"), BreakerState::Closed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let (h, t0) = (health(), Instant::now());
        (0..4).for_each(|_| h.record("r", false, t0));
        let later = t0 + Duration::from_millis(150);
        assert!(h.try_acquire("r", later));
        h.record("r", false, later);
        assert_eq!(h.state("r"), BreakerState::Open);
        assert!(h.is_open("r", later + Duration::from_millis(50)));
    }
}
