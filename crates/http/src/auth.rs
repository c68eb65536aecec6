//! The authenticated caller as an extractor: a handler that names
//! [`Caller`] in its arguments only runs for a valid API key.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use modelroute_identity::{Principal, Scope};
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
    async move {
        let state = state.ok_or_else(|| ApiError::new(Code::Internal, "application state missing"))?;
        let key = key.ok_or_else(|| {
            ApiError::new(Code::InvalidApiKey, "missing API key: send `Authorization: Bearer mr_…` or `x-api-key`")
        })?;
        Ok(Caller(state.identity.authenticate(&key).await?))
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(authenticate(req))
    }
}
