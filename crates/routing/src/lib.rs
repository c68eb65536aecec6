//! The routing engine: which route serves a request for a model slug, and
//! why. Pure decision logic: no HTTP client, no database, no clock, no
//! randomness — so every decision is reproducible from its inputs and is
//! testable without I/O.

mod breaker;
mod catalogue;
mod error;
mod errors;
mod plan;

pub use breaker::{BreakerConfig, BreakerState, Health};
pub use catalogue::{Catalogue, CatalogueConfig, Model, ModelConfig, Route, RouteConfig};
pub use error::RoutingError;
pub use errors::{CanonicalError, Classification, ErrorRule, ErrorRules, UpstreamFailure};
pub use plan::{Candidate, Decision, DecisionCandidate, RequestProfile, RoutePlan, estimate_input_tokens};

/// The `[routing]` section.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Per-route circuit breakers.
    pub breaker: BreakerConfig,
    /// `[[routing.error_rules]]`: how provider failures are classified;
    /// tried before the built-in rules.
    pub error_rules: Vec<ErrorRule>,
}
