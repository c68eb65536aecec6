//! Identity and access: organizations (tenants), projects, API keys, and the
//! server secret that keys are MACed under. A library: no HTTP in here; the
//! server's auth extractor calls [`Identity::authenticate`].

mod accounts;
mod audit;
mod cache;
mod config;
mod erasure;
mod error;
mod keys;
mod limits;
mod mail;
mod members;
mod oauth;
mod password;
mod restriction;
mod retention;
mod secret;
mod service;
mod sessions;

pub use accounts::{Login, User, normalize_email};
pub use audit::{Actor, AuditEvent, AuditFilter};
pub use config::{EmailConfig, GithubConfig, GoogleConfig, IdentityConfig, OAuthConfig};
pub use error::IdentityError;
pub use keys::{ApiKeyToken, Scope, Scopes};
pub use limits::{
    Decision, LimitBackend, LimiterUnavailable, MemoryLimiter, RateLimitConfig, RateLimiter, RedisLimiter,
};
pub use mail::OutboxEmail;
pub use members::{Invitation, Member, Membership, Role};
pub use oauth::{OAuthLogin, OAuthProvider, OAuthStart, ProviderUser, verify_id_token};
pub use password::{
    MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, breached_password_count, check_password_policy, hash_password,
    verify_password,
};
pub use restriction::{RestrictedBy, Restriction};
pub use secret::ServerSecret;
pub use service::{ApiKey, Identity, MAX_SECRETS_IN_GRACE, Org, Principal, Project};
pub use sessions::{NewSession, Session};
