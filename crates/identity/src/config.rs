use std::path::PathBuf;

use modelroute_types::Secret;
use serde::{Deserialize, Serialize};

/// The `[identity]` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The server secret (at least 32 characters) that API keys are MACed
    /// under and signatures are made with. Production sets it through
    /// `MODELROUTE_IDENTITY__SERVER_SECRET`. When empty, it is read from
    /// `server_secret_file`, which is generated on first start.
    pub server_secret: Secret,
    /// Where the generated server secret lives when none is configured.
    pub server_secret_file: PathBuf,
    /// How long a verified API key is trusted without a database read
    /// (0 turns the cache off). A key revoked through another replica
    /// stops working here within this time.
    pub key_cache_ttl_secs: u64,
    /// `[identity.rate_limits]`.
    pub rate_limits: crate::RateLimitConfig,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            server_secret: Secret::default(),
            server_secret_file: PathBuf::from("data/server_secret"),
            key_cache_ttl_secs: 10,
            rate_limits: crate::RateLimitConfig::default(),
        }
    }
}
