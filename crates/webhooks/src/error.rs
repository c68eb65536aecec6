use modelroute_db::DbError;
use modelroute_types::{Code, ErrorCode};

/// Errors of webhooks.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No such endpoint or delivery in this org.
    #[error("no {0}")]
    NotFound(String),
    /// A field of the input is invalid.
    #[error("{field}: {message}")]
    InvalidInput {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The org has as many endpoints as it may.
    #[error("an organization may have at most {0} webhook endpoints")]
    TooMany(usize),
    /// A sealed secret that does not open (another server secret?).
    #[error("a webhook secret cannot be read: {0}")]
    Sealed(&'static str),
    /// The configuration is invalid.
    #[error("[webhooks] {0}")]
    Config(String),
    /// The data layer failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for WebhookError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

impl ErrorCode for WebhookError {
    fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NotFound,
            Self::InvalidInput { .. } => Code::InvalidRequest,
            Self::TooMany(_) => Code::Conflict,
            Self::Sealed(_) | Self::Config(_) => Code::Internal,
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
