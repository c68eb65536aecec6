//! Error mapping as configuration: rules match a provider's failure (its
//! provider name, HTTP status, error code or type, and a message pattern)
//! to a canonical error, whether to try another route, and whether it
//! counts against the route's breaker. Operators add rules in
//! `[[routing.error_rules]]`; they are tried first, then the built-in rules
//! below (which are data too), then a safe default.

use serde::{Deserialize, Serialize};

/// The platform's names for upstream failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CanonicalError {
    /// The provider is rate limiting us.
    RateLimited,
    /// The provider is overloaded or down.
    Overloaded,
    /// The provider did not answer in time.
    Timeout,
    /// The prompt plus output does not fit the model.
    ContextLengthExceeded,
    /// A content filter refused the request or the answer.
    ContentFiltered,
    /// The provider refused the request as malformed.
    InvalidRequest,
    /// Our credentials for the provider were refused.
    AuthFailed,
    /// Anything else that went wrong upstream.
    UpstreamError,
}

impl CanonicalError {
    /// The wire name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::ContextLengthExceeded => "context_length_exceeded",
            Self::ContentFiltered => "content_filtered",
            Self::InvalidRequest => "invalid_request",
            Self::AuthFailed => "auth_failed",
            Self::UpstreamError => "upstream_error",
        }
    }

    /// Whether another route may succeed, unless a rule says otherwise.
    /// A request the model refused would be refused again.
    #[must_use]
    pub const fn retryable_by_default(self) -> bool {
        !matches!(self, Self::ContextLengthExceeded | Self::ContentFiltered | Self::InvalidRequest)
    }

    /// Whether the failure says the route is unhealthy, unless a rule says otherwise.
    #[must_use]
    pub const fn counts_against_breaker_by_default(self) -> bool {
        self.retryable_by_default()
    }

    /// Whether the provider's own message may reach the client: only when
    /// the client must change its request, and the message is about that.
    #[must_use]
    pub const fn client_needs_upstream_message(self) -> bool {
        !self.retryable_by_default()
    }
}

/// One mapping rule. Every field given must match; omitted fields match anything.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRule {
    /// The provider's name under `[providers]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Any of these HTTP statuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<u16>,
    /// The provider's error code or type, exactly (`context_length_exceeded`, `overloaded_error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// A substring of the provider's message, compared case-insensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_contains: Option<String>,
    /// What it means.
    pub canonical: CanonicalError,
    /// Override: try another route?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// Override: count against the route's breaker?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts_against_breaker: Option<bool>,
    /// Override: the HTTP status the client gets (400–599) when this is
    /// the failure that ends the execution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_status: Option<u16>,
}

/// A provider's failure, as the adapter saw it.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamFailure<'a> {
    /// The provider's name.
    pub provider: &'a str,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The provider's error code or type, when its body had one.
    pub code: Option<&'a str>,
    /// The provider's message (or the adapter's description).
    pub message: &'a str,
    /// What the adapter concluded without rules (used when none match).
    pub fallback: CanonicalError,
}

/// What a failure means for the execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classification {
    /// The canonical error.
    pub canonical: CanonicalError,
    /// Try the next route?
    pub retryable: bool,
    /// Count it against this route's breaker?
    pub counts_against_breaker: bool,
    /// The status the client gets, when a rule sets one.
    pub client_status: Option<u16>,
}

/// Operator rules, then the built-in ones.
#[derive(Clone, Debug)]
pub struct ErrorRules {
    rules: Vec<ErrorRule>,
}

impl Default for ErrorRules {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

fn rule(status: &[u16], code: Option<&str>, message: Option<&str>, canonical: CanonicalError) -> ErrorRule {
    ErrorRule {
        provider: None,
        status: status.to_vec(),
        code: code.map(str::to_owned),
        message_contains: message.map(str::to_owned),
        canonical,
        retryable: None,
        counts_against_breaker: None,
        client_status: None,
    }
}

/// The built-in rules: what OpenAI-compatible APIs, Anthropic and Gemini
/// send. Specific codes and messages before bare statuses.
fn built_in() -> Vec<ErrorRule> {
    use CanonicalError as C;
    vec![
        rule(&[], Some("context_length_exceeded"), None, C::ContextLengthExceeded),
        rule(&[], None, Some("maximum context length"), C::ContextLengthExceeded),
        rule(&[], None, Some("prompt is too long"), C::ContextLengthExceeded),
        rule(&[], None, Some("exceeds the maximum number of tokens"), C::ContextLengthExceeded),
        rule(&[], None, Some("API key not valid"), C::AuthFailed),
        rule(&[], Some("content_filter"), None, C::ContentFiltered),
        rule(&[], Some("content_policy_violation"), None, C::ContentFiltered),
        rule(&[], Some("overloaded_error"), None, C::Overloaded),
        rule(&[], Some("rate_limit_error"), None, C::RateLimited),
        rule(&[], Some("RESOURCE_EXHAUSTED"), None, C::RateLimited),
        rule(&[], Some("UNAVAILABLE"), None, C::Overloaded),
        rule(&[], Some("DEADLINE_EXCEEDED"), None, C::Timeout),
        rule(&[429], None, None, C::RateLimited),
        rule(&[408, 504], None, None, C::Timeout),
        rule(&[401, 403], None, None, C::AuthFailed),
        rule(&[503, 529], None, None, C::Overloaded),
        rule(&[400, 404, 413, 422], None, None, C::InvalidRequest),
        rule(&[500, 502], None, None, C::UpstreamError),
    ]
}

impl ErrorRules {
    /// The operator's rules (tried first), then the built-in ones.
    #[must_use]
    pub fn new(mut operator_rules: Vec<ErrorRule>) -> Self {
        operator_rules.extend(built_in());
        Self { rules: operator_rules }
    }

    /// Classifies a failure: the first matching rule, else the adapter's own
    /// conclusion with the defaults.
    #[must_use]
    pub fn classify(&self, f: &UpstreamFailure<'_>) -> Classification {
        let message = f.message.to_lowercase();
        let matched = self.rules.iter().find(|r| {
            r.provider.as_deref().is_none_or(|p| p == f.provider)
                && (r.status.is_empty() || f.status.is_some_and(|s| r.status.contains(&s)))
                && r.code.as_deref().is_none_or(|c| f.code == Some(c))
                && r.message_contains.as_deref().is_none_or(|m| message.contains(&m.to_lowercase()))
        });
        let canonical = matched.map_or(f.fallback, |r| r.canonical);
        Classification {
            canonical,
            retryable: matched.and_then(|r| r.retryable).unwrap_or_else(|| canonical.retryable_by_default()),
            counts_against_breaker: matched
                .and_then(|r| r.counts_against_breaker)
                .unwrap_or_else(|| canonical.counts_against_breaker_by_default()),
            client_status: matched.and_then(|r| r.client_status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real error answers of real providers: (provider, status, body).
    const REAL: &[(&str, u16, &str, CanonicalError, bool)] = &[
        (
            "openai",
            429,
            r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29800, Requested 900.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
            CanonicalError::RateLimited,
            true,
        ),
        (
            "openai",
            400,
            r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130542 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            CanonicalError::ContextLengthExceeded,
            false,
        ),
        (
            "openai",
            400,
            r#"{"error":{"message":"Your request was rejected as a result of our safety system.","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}"#,
            CanonicalError::ContentFiltered,
            false,
        ),
        (
            "openai",
            401,
            r#"{"error":{"message":"Incorrect API key provided: sk-proj-****abcd.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            CanonicalError::AuthFailed,
            true,
        ),
        (
            "openai",
            503,
            r#"{"error":{"message":"The engine is currently overloaded, please try again later","type":"server_error","param":null,"code":null}}"#,
            CanonicalError::Overloaded,
            true,
        ),
        (
            "anthropic",
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            CanonicalError::Overloaded,
            true,
        ),
        (
            "anthropic",
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 215000 tokens > 200000 maximum"}}"#,
            CanonicalError::ContextLengthExceeded,
            false,
        ),
        (
            "anthropic",
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
            CanonicalError::RateLimited,
            true,
        ),
        (
            "gemini",
            429,
            r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
            CanonicalError::RateLimited,
            true,
        ),
        (
            "gemini",
            503,
            r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
            CanonicalError::Overloaded,
            true,
        ),
        (
            "gemini",
            400,
            r#"{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"foo\".","status":"INVALID_ARGUMENT"}}"#,
            CanonicalError::InvalidRequest,
            false,
        ),
        (
            "gemini",
            400,
            r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
            CanonicalError::ContextLengthExceeded,
            false,
        ),
        (
            "gemini",
            400,
            r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#,
            CanonicalError::AuthFailed,
            true,
        ),
        (
            "together",
            500,
            r#"{"error":{"message":"Internal server error","type":"server_error"}}"#,
            CanonicalError::UpstreamError,
            true,
        ),
    ];

    /// How adapters pull the code out of a body: `error.code` when it is a
    /// string, else `error.status` (Gemini), else `error.type`.
    fn code_of(body: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let e = v.get("error")?;
        ["code", "status", "type"].iter().find_map(|k| e.get(*k).and_then(serde_json::Value::as_str).map(str::to_owned))
    }

    #[test]
    fn real_provider_errors_map_as_expected() {
        let rules = ErrorRules::default();
        for (provider, status, body, expected, retryable) in REAL {
            let code = code_of(body);
            let message = serde_json::from_str::<serde_json::Value>(body).unwrap()["error"]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            let f = UpstreamFailure {
                provider,
                status: Some(*status),
                code: code.as_deref(),
                message: &message,
                fallback: CanonicalError::UpstreamError,
            };
            let c = rules.classify(&f);
            assert_eq!((c.canonical, c.retryable), (*expected, *retryable), "{provider} {status}: {body}");
        }
    }

    #[test]
    fn operator_rules_win_and_can_override_retry_and_breaker() {
        let rules = ErrorRules::new(vec![ErrorRule {
            provider: Some("flaky".into()),
            status: vec![503],
            code: None,
            message_contains: Some("maintenance".into()),
            canonical: CanonicalError::Overloaded,
            retryable: Some(true),
            counts_against_breaker: Some(false),
            client_status: Some(429),
        }]);
        let f = |provider, message| UpstreamFailure {
            provider,
            status: Some(503),
            code: None,
            message,
            fallback: CanonicalError::UpstreamError,
        };
        let c = rules.classify(&f("flaky", "Scheduled MAINTENANCE window"));
        assert!(c.retryable && !c.counts_against_breaker);
        assert_eq!(c.client_status, Some(429));
        let c = rules.classify(&f("other", "Scheduled maintenance window"));
        assert!(c.counts_against_breaker, "the rule is for one provider only");
    }

    #[test]
    fn no_match_keeps_the_adapters_conclusion() {
        let f = UpstreamFailure {
            provider: "p",
            status: None,
            code: None,
            message: "connection reset",
            fallback: CanonicalError::Timeout,
        };
        let c = ErrorRules::default().classify(&f);
        assert_eq!(
            c,
            Classification {
                canonical: CanonicalError::Timeout,
                retryable: true,
                counts_against_breaker: true,
                client_status: None
            }
        );
    }
}
