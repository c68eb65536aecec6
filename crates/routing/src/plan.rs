use std::sync::Arc;
use std::time::Instant;

use modelroute_types::{Money, PricePerMTok};
use serde::{Deserialize, Serialize};

use crate::{Catalogue, Health, Route, RoutingError};

/// How candidates are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Lowest worst-case cost first.
    #[default]
    Cheapest,
    /// Lowest observed latency first; a route not yet observed counts as
    /// fastest, so that every route gets measured.
    Fastest,
    /// Lowest sum of cost and latency, each relative to the best candidate's.
    Balanced,
}

impl Policy {
    /// The wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cheapest => "cheapest",
            Self::Fastest => "fastest",
            Self::Balanced => "balanced",
        }
    }

    const fn rule(self) -> &'static str {
        match self {
            Self::Cheapest => "lowest worst-case cost; ties broken by higher weight, then route id",
            Self::Fastest => "lowest observed latency (unobserved first); ties broken by lower cost, then route id",
            Self::Balanced => {
                "lowest cost/cheapest + latency/fastest (unobserved count as fastest); ties broken by lower cost"
            }
        }
    }
}

/// What the paying org (or the request) asks of routing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// The ordering.
    #[serde(default)]
    pub policy: Policy,
    /// Routes dearer than this per million prompt tokens are excluded.
    #[serde(default)]
    pub max_input_price: Option<PricePerMTok>,
    /// Routes dearer than this per million generated tokens are excluded.
    #[serde(default)]
    pub max_output_price: Option<PricePerMTok>,
}

const CIRCUIT_OPEN: &str = "circuit open (recent failures)";

/// What the engine needs to know about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestProfile {
    /// An upper estimate of the prompt's tokens ([`estimate_input_tokens`]).
    pub input_tokens: u64,
    /// The request's output cap, if it set one.
    pub max_output_tokens: Option<u32>,
    /// Whether the answer is streamed.
    pub stream: bool,
    /// Whether the request offers tools.
    pub tools: bool,
    /// Whether it asks for JSON mode or structured output.
    pub json_mode: bool,
    /// Whether it carries images.
    pub images: bool,
    /// Policy and price ceilings.
    pub preferences: Preferences,
}

impl RequestProfile {
    /// A text request with no tools, JSON mode or images.
    #[must_use]
    pub const fn text(input_tokens: u64, max_output_tokens: Option<u32>, stream: bool) -> Self {
        Self {
            input_tokens,
            max_output_tokens,
            stream,
            tools: false,
            json_mode: false,
            images: false,
            preferences: Preferences { policy: Policy::Cheapest, max_input_price: None, max_output_price: None },
        }
    }
}

/// An upper estimate of prompt tokens for holds: `ceil(bytes / 3)` per
/// message plus 4 of framing. Tokenizers produce at most one token per ~4
/// characters of ordinary text, so this errs high; an actual count above it
/// is settled as a flagged overage (never charged beyond the hold).
#[must_use]
pub fn estimate_input_tokens<'a>(contents: impl IntoIterator<Item = &'a str>) -> u64 {
    contents.into_iter().map(|c| u64::try_from(c.len()).unwrap_or(u64::MAX).div_ceil(3) + 4).sum()
}

/// A route that can serve the request, with its worst-case cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The route.
    pub route: Arc<Route>,
    /// The output cap the call will use.
    pub max_output_tokens: u32,
    /// Prompt estimate × input price + output cap × output price.
    pub worst_case: Money,
    /// The route's observed latency, if it has served calls.
    pub latency: Option<std::time::Duration>,
}

/// The ranked candidates for one request, and the evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePlan {
    /// Candidates, best first; the rest are fallbacks in order.
    pub candidates: Vec<Candidate>,
    /// The customer-safe record of the decision.
    pub decision: Decision,
}

/// Why a route was chosen, as the customer may see it: routes appear by
/// opaque id only, never by provider or URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The model slug.
    pub model: String,
    /// The policy applied.
    pub policy: Policy,
    /// The rule that ordered the candidates.
    pub rule: &'static str,
    /// Every route considered.
    pub candidates: Vec<DecisionCandidate>,
}

/// One route in a [`Decision`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DecisionCandidate {
    /// The opaque route id.
    pub route: String,
    /// Its rank among eligible routes (1 = chosen), if eligible.
    pub rank: Option<usize>,
    /// Worst-case cost in nano-dollars, if eligible.
    pub worst_case: Option<Money>,
    /// Observed latency in milliseconds (moving average), if eligible and observed.
    pub latency_ms: Option<u64>,
    /// Why it was excluded, if it was.
    pub excluded: Option<String>,
}

impl Catalogue {
    /// Ranks the routes of `slug` for a request.
    ///
    /// # Errors
    /// [`RoutingError::ModelNotFound`], or [`RoutingError::NoRoute`] when
    /// every route is excluded.
    /// Routes whose circuit breaker is open at `now` are excluded.
    pub fn plan(
        &self,
        slug: &str,
        profile: &RequestProfile,
        health: &Health,
        now: Instant,
    ) -> Result<RoutePlan, RoutingError> {
        let model = self.model(slug).ok_or_else(|| RoutingError::ModelNotFound(slug.chars().take(100).collect()))?;
        let mut eligible = Vec::new();
        let mut excluded = Vec::new();
        for route in &model.routes {
            let max_out = profile.max_output_tokens.unwrap_or(route.max_output_tokens);
            let (open, latency) = health.view(&route.id, now);
            let reason = if open {
                Some(CIRCUIT_OPEN.to_owned())
            } else if profile.stream && !route.streaming {
                Some("does not support streaming".to_owned())
            } else if profile.tools && !route.tools {
                Some("does not support tools".to_owned())
            } else if profile.json_mode && !route.json_mode {
                Some("does not support JSON mode".to_owned())
            } else if profile.images && !route.vision {
                Some("does not support images".to_owned())
            } else if profile.preferences.max_input_price.is_some_and(|max| route.input_price > max) {
                Some("input price above the ceiling".to_owned())
            } else if profile.preferences.max_output_price.is_some_and(|max| route.output_price > max) {
                Some("output price above the ceiling".to_owned())
            } else if profile.input_tokens.saturating_add(u64::from(max_out)) > u64::from(route.context_window) {
                Some(format!(
                    "prompt (~{} tokens) plus max_tokens ({max_out}) exceeds the context window ({})",
                    profile.input_tokens, route.context_window
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                excluded.push((route, reason));
                continue;
            }
            let worst_case = route.price_of(profile.input_tokens, u64::from(max_out));
            match worst_case {
                Some(worst_case) => eligible.push(Candidate {
                    route: Arc::clone(route),
                    max_output_tokens: max_out,
                    worst_case,
                    latency,
                }),
                None => excluded.push((route, "price overflow".to_owned())),
            }
        }
        rank(&mut eligible, profile.preferences.policy);
        let mut candidates: Vec<DecisionCandidate> = eligible
            .iter()
            .enumerate()
            .map(|(i, c)| DecisionCandidate {
                route: c.route.public_id.clone(),
                rank: Some(i + 1),
                worst_case: Some(c.worst_case),
                latency_ms: c.latency.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
                excluded: None,
            })
            .collect();
        candidates.extend(excluded.iter().map(|(r, why)| DecisionCandidate {
            route: r.public_id.clone(),
            rank: None,
            worst_case: None,
            latency_ms: None,
            excluded: Some(why.clone()),
        }));
        if eligible.is_empty() && !excluded.is_empty() && excluded.iter().all(|(_, why)| why == CIRCUIT_OPEN) {
            return Err(RoutingError::Unavailable(slug.to_owned()));
        }
        if eligible.is_empty() {
            let reason = excluded.first().map_or_else(|| "no routes".to_owned(), |(_, why)| why.clone());
            return Err(RoutingError::NoRoute { model: slug.to_owned(), reason });
        }
        let policy = profile.preferences.policy;
        let decision = Decision { model: slug.to_owned(), policy, rule: policy.rule(), candidates };
        Ok(RoutePlan { candidates: eligible, decision })
    }
}

/// Orders eligible candidates by `policy`, best first. Deterministic: ties
/// end on the route id.
fn rank(eligible: &mut [Candidate], policy: Policy) {
    let latency_us = |c: &Candidate| c.latency.map_or(0, |l| u64::try_from(l.as_micros()).unwrap_or(u64::MAX));
    match policy {
        Policy::Cheapest => eligible.sort_by(|a, b| {
            a.worst_case.cmp(&b.worst_case).then(b.route.weight.cmp(&a.route.weight)).then(a.route.id.cmp(&b.route.id))
        }),
        Policy::Fastest => eligible.sort_by(|a, b| {
            latency_us(a).cmp(&latency_us(b)).then(a.worst_case.cmp(&b.worst_case)).then(a.route.id.cmp(&b.route.id))
        }),
        Policy::Balanced => {
            // Each candidate's cost and latency relative to the best of
            // each (×1000, integers); unobserved latency counts as the best.
            let min_cost = eligible.iter().map(|c| c.worst_case.units()).min().unwrap_or(0).max(1);
            let min_latency = eligible.iter().filter_map(|c| c.latency).map(|l| l.as_micros()).min();
            let score = |c: &Candidate| {
                let cost = i128::from(c.worst_case.units().max(1)) * 1000 / i128::from(min_cost);
                let latency = match (c.latency, min_latency) {
                    (Some(l), Some(min)) if min > 0 => i128::try_from(l.as_micros() * 1000 / min).unwrap_or(i128::MAX),
                    _ => 1000,
                };
                cost.saturating_add(latency)
            };
            eligible.sort_by(|a, b| {
                score(a).cmp(&score(b)).then(a.worst_case.cmp(&b.worst_case)).then(a.route.id.cmp(&b.route.id))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CatalogueConfig, ModelConfig, RouteConfig};

    fn catalogue() -> Catalogue {
        let route = |id: &str, input: &str, output: &str, streaming: bool| RouteConfig {
            max_output_tokens: 100,
            streaming,
            tools: id != "r-high",
            ..RouteConfig::new(
                id,
                "p",
                "m",
                serde_json::from_str(&format!("\"{input}\"")).unwrap(),
                serde_json::from_str(&format!("\"{output}\"")).unwrap(),
            )
        };
        let config = CatalogueConfig {
            margin_bps: 0,
            models: vec![ModelConfig {
                slug: "m".into(),
                description: String::new(),
                context_window: 1000,
                routes: vec![
                    route("r-high", "2", "2", true),
                    route("r-low", "1", "1", false),
                    route("r-mid", "1.5", "1.5", true),
                ],
            }],
        };
        Catalogue::from_config(&config, |_| true).unwrap()
    }

    #[test]
    fn cheapest_first_with_evidence() {
        let profile = RequestProfile::text(100, None, false);
        let plan = catalogue().plan("m", &profile, &Health::default(), Instant::now()).unwrap();
        let ids: Vec<&str> = plan.candidates.iter().map(|c| c.route.id.as_str()).collect();
        assert_eq!(ids, ["r-low", "r-mid", "r-high"]);
        // 100 in + 100 out at $1/M each = 200 tokens * 1000 nano-$.
        assert_eq!(plan.candidates[0].worst_case, Money::from_units(200_000));
        assert_eq!(plan.decision.candidates[0].rank, Some(1));
        let json = serde_json::to_string(&plan.decision).unwrap();
        assert!(!json.contains("r-low") && !json.contains("\"p\""), "decision leaks route names: {json}");
    }

    #[test]
    fn a_flat_request_price_is_part_of_the_worst_case_and_the_ranking() {
        let mut config = CatalogueConfig::default();
        config.models[0].routes[0].request_price = Money::from_units(5_000);
        let c = Catalogue::from_config(&config, |_| true).unwrap();
        let profile = RequestProfile::text(100, Some(10), false);
        let plan = c.plan("builtin/echo", &profile, &Health::default(), Instant::now()).unwrap();
        // 100 in at $0.10/M + 10 out at $0.40/M + $0.000005 per request.
        assert_eq!(plan.candidates[0].worst_case, Money::from_units(10_000 + 4_000 + 5_000));
    }

    #[test]
    fn exclusions_are_recorded() {
        let profile = RequestProfile::text(100, Some(50), true);
        let plan = catalogue().plan("m", &profile, &Health::default(), Instant::now()).unwrap();
        assert_eq!(plan.candidates.len(), 2);
        let excluded: Vec<_> = plan.decision.candidates.iter().filter_map(|c| c.excluded.as_deref()).collect();
        assert_eq!(excluded, ["does not support streaming"]);
        let tools = RequestProfile { tools: true, ..RequestProfile::text(100, Some(50), true) };
        let plan = catalogue().plan("m", &tools, &Health::default(), Instant::now()).unwrap();
        let ids: Vec<&str> = plan.candidates.iter().map(|c| c.route.id.as_str()).collect();
        assert_eq!(ids, ["r-mid"], "r-low cannot stream, r-high has no tools");
        let too_long = RequestProfile::text(990, Some(50), false);
        assert!(matches!(
            catalogue().plan("m", &too_long, &Health::default(), Instant::now()),
            Err(RoutingError::NoRoute { .. })
        ));
        assert!(matches!(
            catalogue().plan("nope", &too_long, &Health::default(), Instant::now()),
            Err(RoutingError::ModelNotFound(_))
        ));
    }

    #[test]
    fn policies_order_by_cost_latency_or_both_and_ceilings_exclude() {
        let health = Health::default();
        let ms = std::time::Duration::from_millis;
        health.record_latency("r-low", ms(900));
        health.record_latency("r-mid", ms(100));
        health.record_latency("r-high", ms(200));
        let order = |policy: Policy| {
            let profile = RequestProfile {
                preferences: Preferences { policy, ..Preferences::default() },
                ..RequestProfile::text(100, None, false)
            };
            let plan = catalogue().plan("m", &profile, &health, Instant::now()).unwrap();
            assert_eq!(plan.decision.policy, policy);
            plan.candidates.iter().map(|c| c.route.id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(order(Policy::Cheapest), ["r-low", "r-mid", "r-high"]);
        assert_eq!(order(Policy::Fastest), ["r-mid", "r-high", "r-low"]);
        // Cost ×1000 relative to r-low (1000, 1500, 2000) plus latency
        // relative to r-mid (9000, 1000, 2000): r-mid 2500, r-high 4000, r-low 10000.
        assert_eq!(order(Policy::Balanced), ["r-mid", "r-high", "r-low"]);
        // A route never observed is tried first under `fastest`.
        let fresh = Health::default();
        fresh.record_latency("r-low", ms(5));
        let profile = RequestProfile {
            preferences: Preferences { policy: Policy::Fastest, ..Preferences::default() },
            ..RequestProfile::text(100, None, false)
        };
        let plan = catalogue().plan("m", &profile, &fresh, Instant::now()).unwrap();
        assert_eq!(plan.candidates[0].route.id, "r-mid", "unobserved, then cheaper");
        // A price ceiling excludes, with the reason.
        let capped = RequestProfile {
            preferences: Preferences {
                max_output_price: Some(serde_json::from_str("\"1.5\"").unwrap()),
                ..Preferences::default()
            },
            ..RequestProfile::text(100, None, false)
        };
        let plan = catalogue().plan("m", &capped, &Health::default(), Instant::now()).unwrap();
        assert_eq!(plan.candidates.len(), 2);
        assert!(
            plan.decision.candidates.iter().any(|c| c.excluded.as_deref() == Some("output price above the ceiling"))
        );
    }

    #[test]
    fn latency_is_a_moving_average() {
        let health = Health::default();
        let ms = std::time::Duration::from_millis;
        assert_eq!(health.latency("r"), None);
        health.record_latency("r", ms(100));
        health.record_latency("r", ms(200));
        assert_eq!(health.latency("r"), Some(ms(130)), "100 + (200 - 100) × 30%");
    }

    #[test]
    fn estimate_errs_high() {
        assert_eq!(estimate_input_tokens(["abcdef", ""]), 2 + 4 + 4);
    }
}
