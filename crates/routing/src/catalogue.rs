use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use modelroute_types::{Money, PricePerMTok};
use serde::{Deserialize, Serialize};

use crate::RoutingError;

/// The `[catalogue]` section: the public models and their routes.
///
/// ```toml
/// [[catalogue.models]]
/// slug = "llama-3.1-8b-instruct"
/// context_window = 131072
///
/// [[catalogue.models.routes]]
/// id = "together-llama-8b"
/// provider = "together"          # a name under [providers]
/// upstream_model = "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"
/// input_price = "0.18"           # the provider's cost, USD per million tokens
/// output_price = "0.18"
/// ```
///
/// Customers pay the provider's cost times the margin:
/// `margin_bps` (basis points, 2000 = 20%) for the whole catalogue, or a
/// route's own `margin_bps`. Customer prices round up to the nano-dollar.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogueConfig {
    /// The platform's margin on provider cost, in basis points (0: resell at cost).
    pub margin_bps: u32,
    /// The models.
    pub models: Vec<ModelConfig>,
}

/// One public model.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The public slug clients name (`[a-z0-9._/-]`, 1–100 characters).
    pub slug: String,
    /// A one-line description for `/v1/models`.
    #[serde(default)]
    pub description: String,
    /// Prompt plus output tokens the model accepts.
    pub context_window: u32,
    /// Deployments serving it; at least one.
    pub routes: Vec<RouteConfig>,
}

/// One deployment of a model at a provider.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Operator-facing id, unique across the catalogue.
    pub id: String,
    /// The provider's name under `[providers]`.
    pub provider: String,
    /// The model name the provider knows.
    pub upstream_model: String,
    /// The provider's cost in USD per million prompt tokens, as a decimal string.
    pub input_price: PricePerMTok,
    /// The provider's cost in USD per million generated tokens.
    pub output_price: PricePerMTok,
    /// The provider's flat cost per request (USD, a decimal string; default 0).
    #[serde(default, with = "modelroute_types::usd_string", skip_serializing_if = "is_zero")]
    pub request_price: Money,
    /// This route's margin in basis points, instead of the catalogue's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_bps: Option<u32>,
    /// Output cap when the request names none; also the hold's worst case.
    #[serde(default = "default_max_output")]
    pub max_output_tokens: u32,
    /// Whether the route can stream.
    #[serde(default = "yes")]
    pub streaming: bool,
    /// Relative preference among equally priced routes.
    #[serde(default = "one")]
    pub weight: u32,
    /// This deployment's context window, when it differs from the model's
    /// (a longer-context deployment is where a too-long prompt goes next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u32>,
    /// Whether it accepts tools (function calling).
    #[serde(default = "yes")]
    pub tools: bool,
    /// Whether it accepts JSON mode / structured output.
    #[serde(default = "yes")]
    pub json_mode: bool,
    /// Whether it accepts images.
    #[serde(default = "yes")]
    pub vision: bool,
    /// A streamed call whose first token takes longer than this fails over
    /// to the next route (default: `[routing.retry] first_token_timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_timeout_ms: Option<u64>,
    /// Whether this deployment continues a final assistant turn (a prefix)
    /// instead of starting a fresh answer: Anthropic's Messages API does,
    /// an OpenAI-compatible host may not. A stream of the same model cut
    /// off after some output continues on a route that says so (default off:
    /// a fresh answer would repeat text inside a success).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continues_prefix: bool,
}

impl RouteConfig {
    /// A route with the defaults of an omitted field for everything but
    /// what identifies and prices it.
    #[must_use]
    pub fn new(
        id: impl Into<String>,
        provider: impl Into<String>,
        upstream_model: impl Into<String>,
        input_price: PricePerMTok,
        output_price: PricePerMTok,
    ) -> Self {
        Self {
            id: id.into(),
            provider: provider.into(),
            upstream_model: upstream_model.into(),
            input_price,
            output_price,
            request_price: Money::ZERO,
            margin_bps: None,
            max_output_tokens: default_max_output(),
            streaming: true,
            weight: 1,
            context_window: None,
            tools: true,
            json_mode: true,
            vision: true,
            first_token_timeout_ms: None,
            continues_prefix: false,
        }
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
const fn is_zero(m: &Money) -> bool {
    m.units() == 0
}

const fn default_max_output() -> u32 {
    4096
}
const fn yes() -> bool {
    true
}
const fn one() -> u32 {
    1
}

impl Default for CatalogueConfig {
    /// The embedded default: two models served by the built-in provider.
    fn default() -> Self {
        let route = |id: &str, upstream: &str, input: &str, output: &str| RouteConfig {
            max_output_tokens: 1024,
            ..RouteConfig::new(id, "builtin", upstream, price(input), price(output))
        };
        Self {
            margin_bps: 0,
            models: vec![
                ModelConfig {
                    slug: "builtin/echo".to_owned(),
                    description: "Deterministic echo model served in-process; for trying the API and for tests."
                        .to_owned(),
                    context_window: 32_768,
                    routes: vec![route("builtin-echo", "echo", "0.10", "0.40")],
                },
                ModelConfig {
                    slug: "builtin/echo-large".to_owned(),
                    description: "The echo model at a higher price, to see pricing differ.".to_owned(),
                    context_window: 131_072,
                    routes: vec![route("builtin-echo-large", "echo-large", "1.00", "4.00")],
                },
            ],
        }
    }
}

fn price(s: &str) -> PricePerMTok {
    PricePerMTok::new(s.parse().unwrap_or_default())
}

/// A validated route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Route {
    /// Operator-facing id (never shown to customers).
    pub id: String,
    /// The opaque id customers see: stable, but reveals nothing.
    pub public_id: String,
    /// The public slug of the model it serves.
    pub model: String,
    /// The provider's name (never shown to customers).
    pub provider: String,
    /// The provider's model name.
    pub upstream_model: String,
    /// The customer's prompt price (the provider's cost times the margin).
    pub input_price: PricePerMTok,
    /// The customer's output price.
    pub output_price: PricePerMTok,
    /// The customer's flat price per request (the provider's times the margin).
    pub request_price: Money,
    /// The provider's flat cost per request.
    pub cost_request_price: Money,
    /// The provider's prompt price (what the platform pays).
    pub cost_input_price: PricePerMTok,
    /// The provider's output price.
    pub cost_output_price: PricePerMTok,
    /// Output cap.
    pub max_output_tokens: u32,
    /// Streaming support.
    pub streaming: bool,
    /// Preference weight.
    pub weight: u32,
    /// Context window in tokens (the route's own, else the model's).
    pub context_window: u32,
    /// Tools support.
    pub tools: bool,
    /// JSON-mode support.
    pub json_mode: bool,
    /// Image support.
    pub vision: bool,
    /// Time-to-first-token limit override.
    pub first_token_timeout_ms: Option<u64>,
    /// Continues a final assistant turn (see [`RouteConfig::continues_prefix`]).
    pub continues_prefix: bool,
}

impl Route {
    /// What the customer pays for `input_tokens` in and `output_tokens` out
    /// on this route: tokens at its prices plus its flat request price. The
    /// one formula of both the hold's worst case (the prompt's estimate and
    /// the output cap) and the settlement (the provider's counts). `None` on
    /// overflow.
    #[must_use]
    pub fn price_of(&self, input_tokens: u64, output_tokens: u64) -> Option<Money> {
        self.input_price
            .cost(input_tokens)
            .zip(self.output_price.cost(output_tokens))
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|c| c.checked_add(self.request_price))
    }
}

/// A validated model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// Public slug.
    pub slug: String,
    /// Description.
    pub description: String,
    /// Context window in tokens.
    pub context_window: u32,
    /// Its routes.
    pub routes: Vec<Arc<Route>>,
}

/// The validated catalogue.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    models: BTreeMap<String, Model>,
    price_version: String,
}

fn valid_slug(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'/' | b'-' | b':'))
}

/// The customer's price: `cost × (10 000 + bps) / 10 000`, rounded up to
/// the nano-dollar (integer arithmetic; `None` on overflow).
#[must_use]
pub fn with_margin(cost: PricePerMTok, bps: u32) -> Option<PricePerMTok> {
    let scaled = i128::from(cost.per_million().units()) * (10_000 + i128::from(bps));
    let price = i64::try_from((scaled + 9_999).div_euclid(10_000)).ok()?;
    Some(PricePerMTok::new(Money::from_units(price)))
}

/// An opaque, stable id for a route: FNV-1a of its operator id.
fn public_route_id(id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("rt_{h:016x}")
}

impl Catalogue {
    /// Validates the configuration. `provider_exists` says whether a route's
    /// provider name is configured.
    ///
    /// # Errors
    /// [`RoutingError::InvalidConfig`] naming the first bad entry.
    pub fn from_config(config: &CatalogueConfig, provider_exists: impl Fn(&str) -> bool) -> Result<Self, RoutingError> {
        let bad = |m: String| Err(RoutingError::InvalidConfig(m));
        let mut models = BTreeMap::new();
        let mut route_ids = BTreeSet::new();
        for (i, m) in config.models.iter().enumerate() {
            if !valid_slug(&m.slug) {
                return bad(format!("models[{i}].slug `{}` must be 1-100 characters of a-z 0-9 . _ / - :", m.slug));
            }
            if m.routes.is_empty() {
                return bad(format!("models[{i}] (`{}`) has no routes", m.slug));
            }
            if m.context_window == 0 {
                return bad(format!("models[{i}].context_window must be positive"));
            }
            let mut routes = Vec::new();
            for (j, r) in m.routes.iter().enumerate() {
                let at = format!("models[{i}].routes[{j}]");
                if r.id.is_empty() || !route_ids.insert(r.id.clone()) {
                    return bad(format!("{at}.id `{}` is empty or not unique", r.id));
                }
                if !provider_exists(&r.provider) {
                    return bad(format!("{at}.provider `{}` is not configured under [providers]", r.provider));
                }
                if r.max_output_tokens == 0 {
                    return bad(format!("{at}.max_output_tokens must be positive"));
                }
                if r.context_window == Some(0) {
                    return bad(format!("{at}.context_window must be positive"));
                }
                if r.first_token_timeout_ms == Some(0) {
                    return bad(format!("{at}.first_token_timeout_ms must be positive"));
                }
                let margin = r.margin_bps.unwrap_or(config.margin_bps);
                let overflow = || RoutingError::InvalidConfig(format!("{at}: the price with its margin is too large"));
                routes.push(Arc::new(Route {
                    id: r.id.clone(),
                    public_id: public_route_id(&r.id),
                    model: m.slug.clone(),
                    provider: r.provider.clone(),
                    upstream_model: r.upstream_model.clone(),
                    input_price: with_margin(r.input_price, margin).ok_or_else(overflow)?,
                    output_price: with_margin(r.output_price, margin).ok_or_else(overflow)?,
                    request_price: with_margin(PricePerMTok::new(r.request_price), margin)
                        .ok_or_else(overflow)?
                        .per_million(),
                    cost_request_price: r.request_price,
                    cost_input_price: r.input_price,
                    cost_output_price: r.output_price,
                    max_output_tokens: r.max_output_tokens,
                    streaming: r.streaming,
                    weight: r.weight,
                    context_window: r.context_window.unwrap_or(m.context_window),
                    tools: r.tools,
                    json_mode: r.json_mode,
                    vision: r.vision,
                    first_token_timeout_ms: r.first_token_timeout_ms,
                    continues_prefix: r.continues_prefix,
                }));
            }
            let model = Model {
                slug: m.slug.clone(),
                description: m.description.clone(),
                context_window: m.context_window,
                routes,
            };
            if models.insert(m.slug.clone(), model).is_some() {
                return bad(format!("models[{i}].slug `{}` appears twice", m.slug));
            }
        }
        // The price table's version: FNV-1a over every route's identity and
        // prices, so a usage record says which prices it was billed at.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for m in models.values() {
            for r in &m.routes {
                let line = format!(
                    "{}|{}|{}|{}|{}\n",
                    m.slug,
                    r.id,
                    r.input_price.per_million().units(),
                    r.output_price.per_million().units(),
                    r.request_price.units()
                );
                for b in line.bytes() {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        Ok(Self { models, price_version: format!("pv_{h:016x}") })
    }

    /// A model by slug.
    #[must_use]
    pub fn model(&self, slug: &str) -> Option<&Model> {
        self.models.get(slug)
    }

    /// The version of the price table: changes whenever any route's price does.
    #[must_use]
    pub fn price_version(&self) -> &str {
        &self.price_version
    }

    /// All models, by slug.
    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.models.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalogue_is_valid() {
        let c = Catalogue::from_config(&CatalogueConfig::default(), |p| p == "builtin").unwrap();
        assert_eq!(c.models().count(), 2);
        let r = &c.model("builtin/echo").unwrap().routes[0];
        assert!(r.public_id.starts_with("rt_") && !r.public_id.contains("builtin"));
    }

    #[test]
    fn errors_name_the_bad_entry() {
        let mut config = CatalogueConfig::default();
        config.models[1].routes[0].provider = "nope".into();
        let e = Catalogue::from_config(&config, |p| p == "builtin").unwrap_err();
        assert_eq!(e.to_string(), "catalogue: models[1].routes[0].provider `nope` is not configured under [providers]");
        let mut config = CatalogueConfig::default();
        config.models[1].routes[0].id = "builtin-echo".into();
        assert!(Catalogue::from_config(&config, |_| true).unwrap_err().to_string().contains("not unique"));
    }

    #[test]
    fn customers_pay_cost_times_the_margin_rounded_up() {
        let p = |s: &str| price(s);
        assert_eq!(with_margin(p("0.10"), 0), Some(p("0.10")));
        assert_eq!(with_margin(p("0.10"), 2000), Some(p("0.12")));
        // 0.000000001 × 1.0001 rounds up to 0.000000002: never below cost.
        assert_eq!(with_margin(p("0.000000001"), 1), Some(p("0.000000002")));
        let mut config = CatalogueConfig { margin_bps: 2500, ..CatalogueConfig::default() };
        config.models[1].routes[0].margin_bps = Some(0);
        let c = Catalogue::from_config(&config, |_| true).unwrap();
        let echo = &c.model("builtin/echo").unwrap().routes[0];
        assert_eq!((echo.input_price, echo.output_price), (p("0.125"), p("0.50")));
        assert_eq!((echo.cost_input_price, echo.cost_output_price), (p("0.10"), p("0.40")));
        let large = &c.model("builtin/echo-large").unwrap().routes[0];
        assert_eq!(large.input_price, p("1.00"), "the route's own margin wins");
        let mut flat = CatalogueConfig { margin_bps: 1000, ..CatalogueConfig::default() };
        flat.models[0].routes[0].request_price = "0.002".parse().unwrap();
        let c = Catalogue::from_config(&flat, |_| true).unwrap();
        let echo = &c.model("builtin/echo").unwrap().routes[0];
        assert_eq!(echo.request_price, "0.0022".parse().unwrap(), "the margin applies to the request price too");
        assert_eq!(echo.cost_request_price, "0.002".parse().unwrap());
        let at_cost = Catalogue::from_config(&CatalogueConfig::default(), |_| true).unwrap();
        assert_ne!(c.price_version(), at_cost.price_version(), "a margin change is a new price table");
    }
}
