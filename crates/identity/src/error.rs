use modelroute_db::DbError;
use modelroute_types::{Code, ErrorCode};

/// Errors of the identity crate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The presented API key is malformed, unknown, revoked, expired, or its
    /// secret does not match. One variant for all, so the answer does not
    /// tell an attacker which.
    #[error("invalid API key")]
    InvalidApiKey,
    /// The key is valid but lacks the scope the operation needs.
    #[error("this API key lacks the `{0}` scope")]
    MissingScope(&'static str),
    /// A field of the input is invalid.
    #[error("{field}: {message}")]
    InvalidInput {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The named record does not exist (or belongs to another tenant).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The email and password do not match an account (one answer for an
    /// unknown email and a wrong password), or no valid session.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The password was right but the email address is not verified yet.
    #[error("verify your email address first: a new link has been sent")]
    EmailNotVerified,
    /// Too many failed logins for this email in the last hour.
    #[error("too many failed logins for this account; retry in {retry_after_secs} s or reset the password")]
    LoginLocked {
        /// When the oldest failure of the window expires.
        retry_after_secs: u64,
    },
    /// A single-use link's token is unknown, used or expired.
    #[error("this link is invalid, already used or expired")]
    InvalidToken,
    /// The caller's role in the org does not allow the operation.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The org's processing is restricted: its data is kept and can be
    /// exported, but nothing runs for it.
    #[error(
        "this organization's processing is restricted: its data is kept and can be read and exported, but no execution runs until the restriction is lifted"
    )]
    Restricted,
    /// The operation would break a rule about the current state (the last
    /// owner leaving, a duplicate, …).
    #[error("{0}")]
    Conflict(String),
    /// An OAuth sign-in was refused: a state, code, token or claim that does
    /// not check out, or no verified email from the provider.
    #[error("sign-in refused: {0}")]
    OAuth(String),
    /// The OAuth provider could not be reached or answered nonsense.
    #[error("the sign-in provider failed: {0}")]
    OAuthProvider(String),
    /// An unexpected failure (random source, hashing task, mail transport).
    #[error("internal error: {0}")]
    Internal(String),
    /// The server secret is missing, too short, or its file is unreadable.
    #[error("server secret: {0}")]
    ServerSecret(String),
    /// The data layer failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for IdentityError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

impl ErrorCode for IdentityError {
    fn code(&self) -> Code {
        match self {
            Self::InvalidApiKey => Code::InvalidApiKey,
            Self::Restricted => Code::Restricted,
            Self::MissingScope(_) | Self::EmailNotVerified | Self::Forbidden(_) => Code::PermissionDenied,
            Self::InvalidInput { .. } | Self::InvalidToken => Code::InvalidRequest,
            Self::NotFound(_) => Code::NotFound,
            Self::Unauthenticated(_) | Self::OAuth(_) => Code::Unauthenticated,
            Self::LoginLocked { .. } => Code::RateLimited,
            Self::Conflict(_) => Code::Conflict,
            Self::OAuthProvider(_) => Code::UpstreamError,
            Self::Internal(_) => Code::Internal,
            Self::ServerSecret(_) => Code::InvalidConfig,
            Self::Db(e) => e.code(),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidInput { field, .. } => Some(field),
            Self::InvalidToken => Some("token"),
            _ => None,
        }
    }
}
