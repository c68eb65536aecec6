//! Identity and access: organizations (tenants), projects, API keys, and the
//! server secret that keys are MACed under. A library: no HTTP in here; the
//! server's auth extractor calls [`Identity::authenticate`].

mod audit;
mod cache;
mod config;
mod error;
mod keys;
mod limits;
mod secret;
mod service;

pub use audit::{Actor, AuditEvent, AuditFilter};
pub use config::IdentityConfig;
pub use error::IdentityError;
pub use keys::{ApiKeyToken, Scope, Scopes};
pub use limits::{
    Decision, LimitBackend, LimiterUnavailable, MemoryLimiter, RateLimitConfig, RateLimiter, RedisLimiter,
};
pub use secret::ServerSecret;
pub use service::{ApiKey, Identity, Org, Principal, Project};
