use serde::Serialize;

/// A stable, machine-readable error code. Clients match on [`Code::as_str`];
/// the HTTP layer maps each code to one status in one table.
///
/// Adding a variant is fine for clients; renaming one is a breaking API
/// change. Not `non_exhaustive`: the HTTP layer's table must name every code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The request body or a parameter is malformed or out of range.
    InvalidRequest,
    /// No credentials, or credentials that do not verify.
    InvalidApiKey,
    /// Not signed in, or the email and password do not match.
    Unauthenticated,
    /// A cookie-authenticated request without a valid CSRF token or from
    /// another origin.
    CsrfFailed,
    /// Valid credentials without the scope the operation needs.
    PermissionDenied,
    /// The org's processing is restricted (a privacy right): data is kept
    /// and readable, nothing runs.
    Restricted,
    /// The named resource does not exist (or belongs to another tenant).
    NotFound,
    /// The requested model slug is not in the catalogue.
    ModelNotFound,
    /// The org's available balance does not cover the worst-case cost.
    InsufficientBalance,
    /// An idempotency key was reused with a different request.
    IdempotencyConflict,
    /// The same operation is already in progress.
    Conflict,
    /// The client canceled or went away before an answer.
    Canceled,
    /// The request was too large.
    PayloadTooLarge,
    /// The org's storage quota would be exceeded.
    QuotaExceeded,
    /// A `Range` the resource cannot satisfy.
    RangeNotSatisfiable,
    /// The request's body is not in a format the endpoint takes (JSON
    /// endpoints take `application/json`).
    UnsupportedMediaType,
    /// The request's body arrived too slowly.
    RequestTimeout,
    /// No route of the model can serve the request's features.
    NoRouteAvailable,
    /// The prompt plus output does not fit the model's context window.
    ContextLengthExceeded,
    /// A content filter refused the request or the answer.
    ContentFiltered,
    /// The upstream provider failed.
    UpstreamError,
    /// The upstream provider did not answer in time.
    UpstreamTimeout,
    /// An asynchronous execution's deadline passed before it finished.
    DeadlineExceeded,
    /// The upstream provider or the platform is overloaded; retry later.
    Overloaded,
    /// The caller exceeded a rate limit; retry after the `Retry-After` header.
    RateLimited,
    /// The database could not be reached.
    DatabaseUnavailable,
    /// The file store could not be reached.
    StorageUnavailable,
    /// Configuration is invalid.
    InvalidConfig,
    /// A bug or an unexpected condition; details are only in the server log.
    Internal,
}

impl Code {
    /// The wire name of the code, e.g. `insufficient_balance`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidApiKey => "invalid_api_key",
            Self::Unauthenticated => "unauthenticated",
            Self::CsrfFailed => "csrf_failed",
            Self::PermissionDenied => "permission_denied",
            Self::Restricted => "restricted",
            Self::NotFound => "not_found",
            Self::ModelNotFound => "model_not_found",
            Self::InsufficientBalance => "insufficient_balance",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::Conflict => "conflict",
            Self::Canceled => "canceled",
            Self::PayloadTooLarge => "payload_too_large",
            Self::QuotaExceeded => "quota_exceeded",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RequestTimeout => "request_timeout",
            Self::NoRouteAvailable => "no_route_available",
            Self::ContextLengthExceeded => "context_length_exceeded",
            Self::ContentFiltered => "content_filtered",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Overloaded => "overloaded",
            Self::RateLimited => "rate_limited",
            Self::DatabaseUnavailable => "database_unavailable",
            Self::StorageUnavailable => "storage_unavailable",
            Self::InvalidConfig => "invalid_config",
            Self::Internal => "internal_error",
        }
    }

    /// Whether the message of an error with this code may be shown to the
    /// client. Internal errors are logged and replaced by a generic message.
    #[must_use]
    pub const fn is_public(self) -> bool {
        !matches!(self, Self::Internal | Self::DatabaseUnavailable | Self::StorageUnavailable)
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every crate's error enum, so that one place (the HTTP
/// layer) can turn any of them into a status and a JSON body.
pub trait ErrorCode: std::error::Error {
    /// The stable code of this error.
    fn code(&self) -> Code;

    /// The request parameter the error is about, when there is one
    /// (`messages[0].role`, `model`, ...).
    fn param(&self) -> Option<&str> {
        None
    }

    /// An HTTP status that replaces the code's usual one: configuration
    /// (an error-mapping rule's `client_status`) may say so.
    fn status_override(&self) -> Option<u16> {
        None
    }
}
