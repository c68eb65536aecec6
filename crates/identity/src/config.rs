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
    /// The address browsers reach the server at (`https://api.example.com`):
    /// links in emails point here and cookie-authenticated requests must
    /// come from this origin.
    pub public_url: String,
    /// A browser session ends after this many minutes without a request.
    pub session_idle_minutes: u32,
    /// A browser session ends this many hours after login, however busy.
    pub session_absolute_hours: u32,
    /// Failed logins per account per hour before the account refuses
    /// password logins from browsers it does not know (see docs/AUTH.md).
    pub max_failed_logins_per_hour: u32,
    /// `[identity.email]`.
    pub email: EmailConfig,
    /// `[identity.oauth]`.
    pub oauth: OAuthConfig,
}

/// The `[identity.oauth]` section: sign-in with Google and GitHub. A
/// provider is enabled when its `client_id` is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// `[identity.oauth.google]`.
    pub google: GoogleConfig,
    /// `[identity.oauth.github]`.
    pub github: GithubConfig,
}

/// Google (OpenID Connect, endpoints found by discovery).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GoogleConfig {
    /// The OAuth client id (empty: disabled).
    pub client_id: String,
    /// The OAuth client secret.
    pub client_secret: Secret,
    /// The issuer; `/.well-known/openid-configuration` under it is read.
    pub issuer: String,
}

impl Default for GoogleConfig {
    fn default() -> Self {
        Self {
            client_id: String::new(),
            client_secret: Secret::default(),
            issuer: "https://accounts.google.com".into(),
        }
    }
}

/// GitHub (OAuth 2 plus the user and emails API).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    /// The OAuth app's client id (empty: disabled).
    pub client_id: String,
    /// The OAuth app's client secret.
    pub client_secret: Secret,
    /// Where browsers authorize.
    pub authorize_url: String,
    /// Where codes become tokens.
    pub token_url: String,
    /// The REST API root (`/user`, `/user/emails`).
    pub api_url: String,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            client_id: String::new(),
            client_secret: Secret::default(),
            authorize_url: "https://github.com/login/oauth/authorize".into(),
            token_url: "https://github.com/login/oauth/access_token".into(),
            api_url: "https://api.github.com".into(),
        }
    }
}

/// The `[identity.email]` section: transactional email.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// The `From:` address.
    pub from: String,
    /// The SMTP server, e.g. `smtps://user:pass@smtp.example.com:465` or
    /// `smtp://mail:25?tls=required`. Empty (the embedded default): emails
    /// stay in the outbox table and a log line says so.
    pub smtp_url: Secret,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self { from: "ModelRoute <no-reply@localhost>".into(), smtp_url: Secret::default() }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            server_secret: Secret::default(),
            server_secret_file: PathBuf::from("data/server_secret"),
            key_cache_ttl_secs: 10,
            rate_limits: crate::RateLimitConfig::default(),
            public_url: "http://localhost:8080".into(),
            session_idle_minutes: 12 * 60,
            session_absolute_hours: 7 * 24,
            max_failed_logins_per_hour: 100,
            email: EmailConfig::default(),
            oauth: OAuthConfig::default(),
        }
    }
}
