use serde::{Deserialize, Serialize};

/// The `[webhooks]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// One attempt's time limit (connect, send, answer).
    pub timeout_secs: u64,
    /// Seconds to wait before each retry after the first attempt failed
    /// (each ±`jitter_percent`); when they run out the delivery has failed.
    /// The default is Standard Webhooks' schedule: 5 s, 5 min, 30 min, 2 h,
    /// 5 h, 10 h, 10 h — eight attempts over about 28 hours.
    pub retry_schedule_secs: Vec<u64>,
    /// How much each wait varies, so that retries of many deliveries spread.
    pub jitter_percent: u64,
    /// An endpoint whose deliveries have all failed for this long is
    /// disabled.
    pub disable_after_secs: u64,
    /// Endpoints per org.
    pub max_endpoints_per_org: usize,
    /// Allow endpoints on private networks (a deployment whose receivers
    /// live on its own network). Never the default.
    pub allow_private_addresses: bool,
    /// Allow loopback receivers, over `http` too. Unset: allowed on the
    /// embedded default (no configuration file), refused otherwise.
    pub allow_loopback: Option<bool>,
    /// How often deliveries due for a retry are looked for.
    pub retry_poll_secs: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 15,
            retry_schedule_secs: vec![5, 300, 1_800, 7_200, 18_000, 36_000, 36_000],
            jitter_percent: 20,
            disable_after_secs: 5 * 86_400,
            max_endpoints_per_org: 20,
            allow_private_addresses: false,
            allow_loopback: None,
            retry_poll_secs: 5,
        }
    }
}
