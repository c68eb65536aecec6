//! The authenticated caller as an extractor: a handler that names
//! [`Caller`] in its arguments only runs for a valid API key.

use std::future::Future;
use std::pin::Pin;

use actix_web::HttpMessage as _;
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use modelroute_identity::{Decision, Principal, Scope};
use modelroute_types::Code;

use crate::ApiError;
use crate::state::State;

/// The caller of an API-key-authenticated request.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) Principal);

impl Caller {
    pub(crate) fn require(&self, scope: Scope) -> Result<&Principal, ApiError> {
        self.0.require(scope)?;
        Ok(&self.0)
    }

    /// Who pays for an execution this caller starts (needs the execute
    /// scope), with what the request asks of routing.
    pub(crate) fn payer(
        &self,
        preferences: Option<modelroute_executions::RequestPreferences>,
    ) -> Result<modelroute_executions::Caller, ApiError> {
        let p = self.require(Scope::Execute)?;
        Ok(modelroute_executions::Caller {
            org_id: p.org_id.clone(),
            project_id: p.project_id.clone(),
            api_key_id: p.api_key_id.clone(),
            preferences: preferences.unwrap_or_default(),
        })
    }
}

/// `Authorization: Bearer <key>`, or `x-api-key: <key>` (Anthropic's header).
fn presented_key(req: &HttpRequest) -> Option<String> {
    let headers = req.headers();
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned())
}

/// Authenticates a request by its API key. Routes that answer errors in
/// another shape (Anthropic's) call it directly instead of extracting [`Caller`].
pub(crate) fn authenticate(req: &HttpRequest) -> impl Future<Output = Result<Caller, ApiError>> + 'static {
    let state = req.app_data::<State>().cloned();
    let key = presented_key(req);
    let req_for_headers = req.clone();
    async move {
        let state = state.ok_or_else(|| ApiError::new(Code::Internal, "application state missing"))?;
        let key = key.ok_or_else(|| {
            ApiError::new(Code::InvalidApiKey, "missing API key: send `Authorization: Bearer mr_…` or `x-api-key`")
        })?;
        let principal = state.identity.authenticate(&key).await?;
        let limits = [
            (format!("key:{}", principal.api_key_id), state.per_key_per_minute, "this API key"),
            (format!("org:{}", principal.org_id), state.per_org_per_minute, "this organization"),
        ];
        let mut tightest: Option<Decision> = None;
        for (name, limit, whose) in limits {
            let d = state
                .limiter
                .check(&name, limit, MINUTE)
                .await
                .map_err(|_| ApiError::new(Code::Overloaded, "the rate limiter is unavailable; retry shortly"))?;
            if !d.allowed {
                let secs = d.retry_after.as_secs() + u64::from(d.retry_after.subsec_nanos() > 0);
                return Err(ApiError::new(
                    Code::RateLimited,
                    format!("rate limit of {limit} requests per minute for {whose} reached; retry in {secs} s"),
                )
                .with_header("retry-after", secs.max(1).to_string())
                .with_header("x-ratelimit-limit", limit.to_string())
                .with_header("x-ratelimit-remaining", "0")
                .with_header("x-ratelimit-reset", secs.max(1).to_string()));
            }
            if tightest.is_none_or(|t| d.remaining < t.remaining) {
                tightest = Some(d);
            }
        }
        if let Some(d) = tightest.filter(|d| d.remaining != u32::MAX) {
            req_for_headers.extensions_mut().insert(RateHeaders { limit: d.limit, remaining: d.remaining });
        }
        Ok(Caller(principal))
    }
}

/// The window of the per-minute limits.
const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);

/// What the tightest limit said of an admitted request; the request-id
/// middleware writes it as `X-RateLimit-Limit`/`-Remaining`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RateHeaders {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(authenticate(req))
    }
}
