use modelroute_types::{Code, ErrorCode};

/// What kind of failure a provider had, in the platform's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// The provider answered with a server error or could not be reached.
    Unavailable,
    /// The provider did not answer in time.
    Timeout,
    /// A stream's first token came later than the route's limit. The route
    /// is left for the next one at once, without a same-route retry.
    FirstTokenTimeout,
    /// The provider is rate limiting us.
    RateLimited,
    /// The provider refused the request as invalid.
    InvalidRequest,
    /// The stream ended before its end marker.
    StreamCut,
    /// The provider sent a body or chunk that could not be read.
    Malformed,
}

/// A failed provider call. The message is safe to show: it never names the
/// provider or its URL (routing is provider-opaque).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct ProviderError {
    /// The adapter's own conclusion (used when no mapping rule matches).
    pub kind: ProviderErrorKind,
    /// A client-safe description.
    pub message: String,
    /// The HTTP status of the provider's answer, when there was one.
    pub status: Option<u16>,
    /// The provider's error code or type, when its body had one.
    pub upstream_code: Option<String>,
    /// The provider's own message: for error-mapping rules and the server
    /// log; shown to clients only when they must change their request.
    pub upstream_message: Option<String>,
    /// How long the provider asked us to wait (`Retry-After`).
    pub retry_after: Option<std::time::Duration>,
}

impl ProviderError {
    /// A new error.
    #[must_use]
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            upstream_code: None,
            upstream_message: None,
            retry_after: None,
        }
    }

    /// Whether trying again (here or on another route) may succeed.
    #[must_use]
    pub const fn is_retryable(&self) -> bool {
        !matches!(self.kind, ProviderErrorKind::InvalidRequest)
    }
}

impl ErrorCode for ProviderError {
    fn code(&self) -> Code {
        match self.kind {
            ProviderErrorKind::Unavailable | ProviderErrorKind::StreamCut | ProviderErrorKind::Malformed => {
                Code::UpstreamError
            }
            ProviderErrorKind::Timeout | ProviderErrorKind::FirstTokenTimeout => Code::UpstreamTimeout,
            ProviderErrorKind::RateLimited => Code::Overloaded,
            ProviderErrorKind::InvalidRequest => Code::InvalidRequest,
        }
    }
}
