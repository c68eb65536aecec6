//! The one place that maps error codes to HTTP statuses and JSON bodies.
//!
//! Every crate's error implements [`ErrorCode`]; `?` in a handler turns it
//! into an [`ApiError`] through the blanket `From`. The body is OpenAI's
//! error shape, which every route uses:
//! `{"error": {"message": "...", "type": "...", "param": null, "code": "..."}}`.
//! Internal errors are logged in full and answered with a generic message;
//! the `x-request-id` header ties the two together.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use modelroute_types::{Code, ErrorCode};
use serde_json::json;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    code: Code,
    message: String,
    param: Option<String>,
    /// A configured status that replaces the table's (error-mapping rules).
    status: Option<StatusCode>,
    /// Headers the answer carries (`Retry-After`, `X-RateLimit-*`).
    headers: Vec<(&'static str, String)>,
    /// Close the connection after the answer (a body left unread).
    close: bool,
}

impl ApiError {
    /// An error with an explicit code and message.
    #[must_use]
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), param: None, status: None, headers: Vec::new(), close: false }
    }

    /// The same error, answered with `name: value` as well.
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The same error, and the connection closed after it: the rest of a
    /// body that was refused is not read.
    #[must_use]
    pub const fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// A 400 about one parameter.
    #[must_use]
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: Code::InvalidRequest,
            message: message.into(),
            param: Some(param.into()),
            status: None,
            headers: Vec::new(),
            close: false,
        }
    }

    /// The code.
    #[must_use]
    pub const fn code(&self) -> Code {
        self.code
    }

    /// The client-facing message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON error body, in OpenAI's shape: what every error answer and
    /// every error frame of a stream carries.
    #[must_use]
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": openai_type(self.code),
                "param": self.param,
                "code": self.code.as_str(),
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl<E: ErrorCode> From<E> for ApiError {
    fn from(e: E) -> Self {
        let code = e.code();
        if code.is_public() {
            let status = e.status_override().and_then(|s| StatusCode::from_u16(s).ok()).filter(|s| s.as_u16() >= 400);
            return Self {
                code,
                message: e.to_string(),
                param: e.param().map(str::to_owned),
                status,
                headers: Vec::new(),
                close: false,
            };
        }
        tracing::error!(code = code.as_str(), error = %e, "request failed");
        let message = match code {
            Code::DatabaseUnavailable | Code::StorageUnavailable => {
                "the service is temporarily unavailable; retry shortly"
            }
            _ => "internal error; quote the x-request-id header when reporting it",
        };
        Self { code, message: message.to_owned(), param: None, status: None, headers: Vec::new(), close: false }
    }
}

/// The status of each code. The one table.
#[must_use]
pub const fn status_of(code: Code) -> StatusCode {
    match code {
        Code::InvalidRequest
        | Code::NoRouteAvailable
        | Code::Canceled
        | Code::ContextLengthExceeded
        | Code::ContentFiltered => StatusCode::BAD_REQUEST,
        Code::InvalidApiKey | Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::InsufficientBalance => StatusCode::PAYMENT_REQUIRED,
        Code::PermissionDenied | Code::CsrfFailed | Code::Restricted => StatusCode::FORBIDDEN,
        Code::NotFound | Code::ModelNotFound => StatusCode::NOT_FOUND,
        Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        Code::Conflict => StatusCode::CONFLICT,
        Code::PayloadTooLarge | Code::QuotaExceeded => StatusCode::PAYLOAD_TOO_LARGE,
        Code::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Code::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
        Code::UpstreamError => StatusCode::BAD_GATEWAY,
        Code::UpstreamTimeout | Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Overloaded | Code::DatabaseUnavailable | Code::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::InvalidConfig | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// OpenAI's `type` for each code, so OpenAI SDKs raise the right exception.
const fn openai_type(code: Code) -> &'static str {
    match code {
        Code::InvalidRequest
        | Code::NoRouteAvailable
        | Code::PayloadTooLarge
        | Code::QuotaExceeded
        | Code::RangeNotSatisfiable
        | Code::UnsupportedMediaType
        | Code::RequestTimeout
        | Code::IdempotencyConflict
        | Code::Conflict
        | Code::Canceled
        | Code::ContextLengthExceeded
        | Code::ContentFiltered => "invalid_request_error",
        Code::InvalidApiKey | Code::Unauthenticated => "authentication_error",
        Code::PermissionDenied | Code::CsrfFailed | Code::Restricted => "permission_error",
        Code::NotFound | Code::ModelNotFound => "not_found_error",
        Code::InsufficientBalance => "insufficient_quota",
        Code::Overloaded | Code::RateLimited => "rate_limit_error",
        Code::UpstreamError
        | Code::UpstreamTimeout
        | Code::DeadlineExceeded
        | Code::DatabaseUnavailable
        | Code::StorageUnavailable
        | Code::InvalidConfig
        | Code::Internal => "api_error",
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status.unwrap_or_else(|| status_of(self.code))
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self.code, Code::Overloaded | Code::DatabaseUnavailable | Code::StorageUnavailable) {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
        }
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                response.insert_header((*name, v));
            }
        }
        if self.close {
            response.force_close();
        }
        if self.code == Code::InvalidApiKey {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        response.json(self.body())
    }
}
