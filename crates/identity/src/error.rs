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
            Self::MissingScope(_) => Code::PermissionDenied,
            Self::InvalidInput { .. } => Code::InvalidRequest,
            Self::NotFound(_) => Code::NotFound,
            Self::ServerSecret(_) => Code::InvalidConfig,
            Self::Db(e) => e.code(),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidInput { field, .. } => Some(field),
            _ => None,
        }
    }
}
