//! The routing engine: which route serves a request for a model slug, and
//! why. Pure decision logic: no HTTP client, no database, no clock, no
//! randomness — so every decision is reproducible from its inputs and is
//! testable without I/O.

mod breaker;
mod budget;
mod catalogue;
mod error;
mod errors;
mod plan;

pub use breaker::{BreakerConfig, BreakerState, FIRST_TOKEN_SAMPLES, Health};
pub use budget::RetryBudget;
pub use catalogue::{Catalogue, CatalogueConfig, Model, ModelConfig, Route, RouteConfig, with_margin};
pub use error::RoutingError;
pub use errors::{CanonicalError, Classification, ErrorRule, ErrorRules, UpstreamFailure};
pub use plan::{
    Candidate, Decision, DecisionCandidate, Policy, Preferences, RequestProfile, RoutePlan, estimate_input_tokens,
};

/// The `[routing]` section.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Per-route circuit breakers.
    pub breaker: BreakerConfig,
    /// `[[routing.error_rules]]`: how provider failures are classified;
    /// tried before the built-in rules.
    pub error_rules: Vec<ErrorRule>,
    /// `[routing.retry]`: retries of one route before falling back.
    pub retry: RetryConfig,
}

/// The `[routing.retry]` section: retrying a route that failed with a
/// retryable error, before moving to the next route.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Calls of one route per execution (1 = no retry).
    pub attempts_per_route: u32,
    /// Backoff before retry n is a random time in [0, min(max, base × 2ⁿ)] (full jitter).
    pub base_backoff_ms: u64,
    /// Upper bound of one backoff.
    pub max_backoff_ms: u64,
    /// A provider's `Retry-After` is honoured up to this long; longer, the route is left.
    pub max_retry_after_ms: u64,
    /// Every attempt and wait of one execution happens within this time.
    pub deadline_ms: u64,
    /// How long a streamed call may go without a first sign of progress
    /// (text, reasoning or a tool call) before it fails over to the next
    /// route: the ceiling, and the limit of a route not yet observed. Once
    /// a route has streamed `FIRST_TOKEN_SAMPLES` times its limit is derived
    /// from what was observed — the smoothed time to first token plus four
    /// deviations, at least three times the smoothed time (TCP's
    /// retransmission timer, RFC 6298) —, kept within
    /// [`first_token_floor_ms`, this]. A route may set a fixed limit of its own.
    pub first_token_timeout_ms: u64,
    /// The least a derived first-token limit may be.
    pub first_token_floor_ms: u64,
    /// Retry budget: same-route retries may add this percentage to the
    /// calls the process makes…
    pub budget_percent: u32,
    /// …plus this many retries per second, always.
    pub budget_min_per_second: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts_per_route: 2,
            base_backoff_ms: 100,
            max_backoff_ms: 2_000,
            max_retry_after_ms: 5_000,
            deadline_ms: 120_000,
            first_token_timeout_ms: 15_000,
            first_token_floor_ms: 2_000,
            budget_percent: 20,
            budget_min_per_second: 10,
        }
    }
}

impl RetryConfig {
    /// The wait before retry `n` (0-based) with full jitter drawn from
    /// `random` (any uniformly random `u64`), or the provider's `Retry-After`
    /// when it gave one.
    /// `None` when the route should not be retried: no attempts left, or the
    /// provider asks for longer than `max_retry_after_ms`.
    #[must_use]
    pub fn backoff(
        &self,
        n: u32,
        random: u64,
        retry_after: Option<std::time::Duration>,
    ) -> Option<std::time::Duration> {
        if n + 1 >= self.attempts_per_route {
            return None;
        }
        if let Some(wait) = retry_after {
            return (wait <= std::time::Duration::from_millis(self.max_retry_after_ms)).then_some(wait);
        }
        let cap = self.base_backoff_ms.saturating_mul(1_u64 << n.min(20)).min(self.max_backoff_ms);
        Some(std::time::Duration::from_millis(random % cap.saturating_add(1)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RetryConfig;

    #[test]
    fn backoff_is_jittered_capped_and_honours_retry_after() {
        let r = RetryConfig {
            attempts_per_route: 4,
            base_backoff_ms: 100,
            max_backoff_ms: 300,
            max_retry_after_ms: 1_000,
            deadline_ms: 10_000,
            ..RetryConfig::default()
        };
        assert_eq!(r.backoff(0, 99, None), Some(Duration::from_millis(99)));
        assert_eq!(r.backoff(0, 101, None), Some(Duration::ZERO), "within [0, 100]");
        assert_eq!(r.backoff(2, u64::MAX, None).map(|d| d <= Duration::from_millis(300)), Some(true), "capped");
        assert_eq!(r.backoff(3, 5, None), None, "no attempts left");
        assert_eq!(r.backoff(0, 5, Some(Duration::from_millis(800))), Some(Duration::from_millis(800)));
        assert_eq!(r.backoff(0, 5, Some(Duration::from_secs(30))), None, "too long a Retry-After: leave the route");
    }
}
