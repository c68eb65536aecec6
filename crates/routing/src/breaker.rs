//! Circuit breakers, one per route: a count-based sliding window of call
//! outcomes; the breaker opens when the failure rate over at least
//! `minimum_calls` reaches the threshold, lets a few probes through after
//! `open_ms`, and closes when they succeed (resilience4j's model and
//! defaults, scaled down). With `active_probes` (the default) the probes
//! are the platform's own calls on a schedule ([`Health::due_probes`], one
//! in flight per route), not customers' requests: recovery does not wait
//! for traffic, and no customer's request is the guinea pig. Pure: the
//! caller passes the time.

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
    /// Probe open routes with calls of the platform's own, on a schedule
    /// (one in flight per route, the next as soon as one succeeds), instead
    /// of letting customers' requests through as probes.
    pub active_probes: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 20,
            minimum_calls: 10,
            failure_rate_percent: 50,
            open_ms: 30_000,
            half_open_probes: 3,
            active_probes: true,
        }
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
    /// An active probe is in flight.
    probing: bool,
    /// Exponentially weighted moving average of successful calls' latency
    /// (time to first token when streamed, else to the whole answer), µs.
    latency_us: Option<u64>,
    /// Streamed calls' time to first progress: smoothed, its mean
    /// deviation (µs), and how many were observed.
    first_token: FirstToken,
}

/// RFC 6298's estimator, over times to first token.
#[derive(Clone, Copy, Debug, Default)]
struct FirstToken {
    srtt_us: u64,
    rttvar_us: u64,
    samples: u32,
}

/// Observations before a route's first-token limit is derived from them.
pub const FIRST_TOKEN_SAMPLES: u32 = 5;

impl FirstToken {
    fn observe(&mut self, sample_us: u64) {
        if self.samples == 0 {
            self.srtt_us = sample_us;
            self.rttvar_us = sample_us / 2;
        } else {
            // rttvar = 3/4 rttvar + 1/4 |srtt - r|; srtt = 7/8 srtt + 1/8 r.
            let deviation = self.srtt_us.abs_diff(sample_us);
            self.rttvar_us = (self.rttvar_us.saturating_mul(3) / 4).saturating_add(deviation / 4);
            self.srtt_us = (self.srtt_us.saturating_mul(7) / 8).saturating_add(sample_us / 8);
        }
        self.samples = self.samples.saturating_add(1);
    }

    /// max(srtt + 4 rttvar, 3 srtt), once there are enough samples.
    fn limit(&self) -> Option<Duration> {
        (self.samples >= FIRST_TOKEN_SAMPLES).then(|| {
            let rto = self.srtt_us.saturating_add(self.rttvar_us.saturating_mul(4));
            Duration::from_micros(rto.max(self.srtt_us.saturating_mul(3)))
        })
    }
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
            probing: false,
            latency_us: None,
            first_token: FirstToken { srtt_us: 0, rttvar_us: 0, samples: 0 },
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.outcomes.clear();
        self.probing = false;
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
                BreakerState::Open | BreakerState::HalfOpen if c.active_probes => true,
                BreakerState::Open => !b.open_period_over(c, now),
                BreakerState::HalfOpen => b.probes_started >= c.half_open_probes,
                BreakerState::Closed => false,
            };
            (open, b.latency_us.map(Duration::from_micros))
        })
    }

    /// Whether open routes are probed actively (see [`BreakerConfig::active_probes`]).
    #[must_use]
    pub const fn active_probes(&self) -> bool {
        self.config.active_probes
    }

    /// Asks to call the route now: always yes when closed; after the open
    /// period, yes for up to `half_open_probes` probes.
    #[must_use]
    pub fn try_acquire(&self, route: &str, now: Instant) -> bool {
        self.with(route, |b, c| {
            if c.active_probes {
                return b.state == BreakerState::Closed;
            }
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

    /// With `active_probes`: the routes due for a probe now — open for
    /// `open_ms`, or half-open with no probe in flight — each marked as
    /// probing until [`Health::record_probe`] reports its outcome.
    #[must_use]
    pub fn due_probes(&self, now: Instant) -> Vec<String> {
        if !self.config.active_probes {
            return Vec::new();
        }
        let mut map = self.breakers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let config = &self.config;
        map.iter_mut()
            .filter_map(|(route, b)| {
                let due = match b.state {
                    BreakerState::Closed => false,
                    BreakerState::Open => b.open_period_over(config, now),
                    BreakerState::HalfOpen => !b.probing,
                };
                if !due {
                    return None;
                }
                if b.state == BreakerState::Open {
                    b.state = BreakerState::HalfOpen;
                    b.probes_succeeded = 0;
                }
                b.probing = true;
                Some(route.clone())
            })
            .collect()
    }

    /// An active probe's outcome: a failure opens the breaker again for
    /// `open_ms`; `half_open_probes` successes in a row close it.
    pub fn record_probe(&self, route: &str, healthy: bool, now: Instant) {
        self.with(route, |b, c| {
            b.probing = false;
            if b.state != BreakerState::HalfOpen {
                return;
            }
            if !healthy {
                b.open(now);
                return;
            }
            b.probes_succeeded += 1;
            if b.probes_succeeded >= c.half_open_probes.max(1) {
                b.state = BreakerState::Closed;
                b.outcomes.clear();
            }
        });
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

    /// Records a streamed call's time to its first sign of progress.
    pub fn record_first_token(&self, route: &str, latency: Duration) {
        let sample = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.with(route, |b, _| b.first_token.observe(sample));
    }

    /// How long a streamed call of the route may wait for its first sign of
    /// progress: derived from the route's observations (see
    /// [`crate::RetryConfig::first_token_timeout_ms`]) within `[floor,
    /// ceiling]`, or `ceiling` until it has enough of them.
    #[must_use]
    pub fn first_token_limit(&self, route: &str, floor: Duration, ceiling: Duration) -> Duration {
        self.with(route, |b, _| b.first_token.limit()).map_or(ceiling, |d| d.clamp(floor.min(ceiling), ceiling))
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
            active_probes: false,
        })
    }

    fn actively_probed() -> Health {
        Health::new(BreakerConfig { active_probes: true, ..health().config })
    }

    #[test]
    fn active_probes_keep_customers_off_an_open_route_and_close_it_on_schedule() {
        let (h, t0) = (actively_probed(), Instant::now());
        (0..4).for_each(|_| h.record("r", false, t0));
        assert!(h.due_probes(t0).is_empty(), "not before open_ms");
        let later = t0 + Duration::from_millis(150);
        assert!(h.is_open("r", later) && !h.try_acquire("r", later), "customers never probe");
        assert_eq!(h.due_probes(later), vec!["r".to_owned()]);
        assert!(h.due_probes(later).is_empty(), "one probe in flight");
        h.record_probe("r", true, later);
        assert_eq!(h.state("r"), BreakerState::HalfOpen);
        assert!(h.is_open("r", later), "still closed to customers until the probes are done");
        assert_eq!(h.due_probes(later), vec!["r".to_owned()], "the next probe at once");
        h.record_probe("r", true, later);
        assert_eq!(h.state("r"), BreakerState::Closed);
        assert!(!h.is_open("r", later) && h.try_acquire("r", later));
        // A failed probe opens it again for a whole period.
        (0..4).for_each(|_| h.record("r", false, later));
        let again = later + Duration::from_millis(150);
        assert_eq!(h.due_probes(again).len(), 1);
        h.record_probe("r", false, again);
        assert_eq!(h.state("r"), BreakerState::Open);
        assert!(h.due_probes(again + Duration::from_millis(50)).is_empty());
        assert_eq!(h.due_probes(again + Duration::from_millis(150)).len(), 1);
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
    fn the_first_token_limit_follows_what_the_route_showed_within_its_bounds() {
        let h = health();
        let (floor, ceiling) = (Duration::from_secs(2), Duration::from_secs(15));
        assert_eq!(h.first_token_limit("r", floor, ceiling), ceiling, "not observed: the ceiling");
        for _ in 0..FIRST_TOKEN_SAMPLES {
            h.record_first_token("r", Duration::from_millis(1_000));
        }
        // Steady 1 s: srtt 1 s, the deviation decays, 3 × srtt wins.
        let limit = h.first_token_limit("r", floor, ceiling);
        assert!(limit >= Duration::from_millis(3_000) && limit < Duration::from_millis(4_000), "{limit:?}");
        let fast = health();
        (0..FIRST_TOKEN_SAMPLES).for_each(|_| fast.record_first_token("r", Duration::from_millis(50)));
        assert_eq!(fast.first_token_limit("r", floor, ceiling), floor, "never below the floor");
        let slow = health();
        (0..FIRST_TOKEN_SAMPLES).for_each(|_| slow.record_first_token("r", Duration::from_secs(20)));
        assert_eq!(slow.first_token_limit("r", floor, ceiling), ceiling, "never above the ceiling");
        // Jittery: the deviation widens the limit beyond three times the mean.
        let jittery = health();
        for ms in [200, 2_000, 200, 2_000, 200, 2_000] {
            jittery.record_first_token("r", Duration::from_millis(ms));
        }
        assert!(jittery.first_token_limit("r", floor, ceiling) > Duration::from_millis(3_500));
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
