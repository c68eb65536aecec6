use modelroute_db::DbError;
use modelroute_ledger::LedgerError;
use modelroute_providers::ProviderError;
use modelroute_routing::{CanonicalError, RoutingError};
use modelroute_types::{Code, ErrorCode};

/// Errors of an execution.
#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    /// The request itself is invalid.
    #[error("{message}")]
    InvalidRequest {
        /// The parameter at fault.
        param: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No such execution for this org.
    #[error("execution not found")]
    NotFound,
    /// Routing refused the request.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The provider failed (before classification).
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Every route that was tried failed; classified by the error-mapping rules.
    #[error("{message}")]
    Upstream {
        /// What the last failure means.
        canonical: CanonicalError,
        /// A client-safe message.
        message: String,
        /// The status an error-mapping rule gives the client, if one does.
        client_status: Option<u16>,
    },
    /// The route names a provider that is not configured (a config bug).
    #[error("route provider is not configured")]
    ProviderMissing,
    /// The client closed the connection before the answer started.
    #[error("the client closed the connection before the answer started")]
    ClientClosed,
    /// The execution task died (a bug).
    #[error("the execution task failed")]
    TaskFailed,
    /// The `Idempotency-Key` was used before with another request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    /// The first request with this `Idempotency-Key` is still being admitted.
    #[error("a request with this Idempotency-Key is still being admitted; retry shortly")]
    IdempotencyInProgress,
    /// The execution's deadline passed.
    #[error("the execution's deadline passed before it finished")]
    DeadlineExceeded,
    /// The customer canceled it.
    #[error("the execution was canceled")]
    Canceled,
    /// The data layer failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for ExecutionError {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

impl ErrorCode for ExecutionError {
    fn code(&self) -> Code {
        match self {
            Self::InvalidRequest { .. } => Code::InvalidRequest,
            Self::NotFound => Code::NotFound,
            Self::Routing(e) => e.code(),
            Self::Ledger(e) => e.code(),
            Self::Provider(e) => e.code(),
            Self::Upstream { canonical, .. } => match canonical {
                CanonicalError::RateLimited | CanonicalError::Overloaded => Code::Overloaded,
                CanonicalError::Timeout => Code::UpstreamTimeout,
                CanonicalError::ContextLengthExceeded => Code::ContextLengthExceeded,
                CanonicalError::ContentFiltered => Code::ContentFiltered,
                CanonicalError::InvalidRequest => Code::InvalidRequest,
                CanonicalError::AuthFailed | CanonicalError::UpstreamError => Code::UpstreamError,
            },
            Self::ClientClosed | Self::Canceled => Code::Canceled,
            Self::IdempotencyMismatch => Code::IdempotencyConflict,
            Self::IdempotencyInProgress => Code::Conflict,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::ProviderMissing | Self::TaskFailed => Code::Internal,
            Self::Db(e) => e.code(),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => Some(param),
            Self::Routing(e) => e.param(),
            _ => None,
        }
    }

    fn status_override(&self) -> Option<u16> {
        match self {
            Self::Upstream { client_status, .. } => *client_status,
            _ => None,
        }
    }
}
