use modelroute_types::{Money, Secret};
use serde::{Deserialize, Serialize};

/// The `[billing]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// `[billing.stripe]`. Without a `secret_key` billing runs in
    /// manual-credits mode: operators grant credits from the CLI.
    pub stripe: StripeConfig,
    /// An org whose available balance falls below this gets one email
    /// (owners and admins) until it is topped up again; an org may set its
    /// own. Zero turns the alert off.
    #[serde(with = "modelroute_types::usd_string")]
    pub low_balance_alert: Money,
}

/// `[billing.stripe]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeConfig {
    /// The secret API key (`sk_live_…`); set it as
    /// `MODELROUTE_BILLING__STRIPE__SECRET_KEY`. Empty: Stripe is off.
    pub secret_key: Secret,
    /// The webhook endpoint's signing secret (`whsec_…`).
    pub webhook_secret: Secret,
    /// The API root (tests point it at a local stand-in).
    pub api_base: String,
    /// ISO currency of top-ups (the ledger's currency).
    pub currency: String,
    /// Where Checkout sends the browser after paying, and after giving up.
    pub success_url: String,
    /// See `success_url`.
    pub cancel_url: String,
    /// The smallest top-up.
    #[serde(with = "modelroute_types::usd_string")]
    pub min_top_up: Money,
    /// The largest top-up.
    #[serde(with = "modelroute_types::usd_string")]
    pub max_top_up: Money,
    /// How often balances are checked against auto top-up thresholds and
    /// low-balance alerts.
    pub check_interval_secs: u64,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            secret_key: Secret::default(),
            webhook_secret: Secret::default(),
            api_base: "https://api.stripe.com/".into(),
            currency: "usd".into(),
            success_url: "http://localhost:8080/billing?paid=1".into(),
            cancel_url: "http://localhost:8080/billing".into(),
            min_top_up: Money::from_usd(5),
            max_top_up: Money::from_usd(10_000),
            check_interval_secs: 15,
        }
    }
}
