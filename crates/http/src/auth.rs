//! The authenticated caller as an extractor: a handler that names
//! [`Caller`] in its arguments only runs for a valid API key, or a
//! signed-in member of the org (CSRF-checked for writes).

use std::future::Future;
use std::pin::Pin;

use actix_web::HttpMessage as _;
use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use modelroute_identity::{Decision, Principal, Role, Scope, Scopes, Session};
use modelroute_types::{Code, OrgId};

use crate::state::State;
use crate::{ApiError, session};

/// The caller of an org-scoped request: an API key, or a signed-in member
/// of the org (session cookie; the org from the `ModelRoute-Organization`
/// header, or the user's only org).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The tenant every query of the request is scoped to.
    pub(crate) org_id: OrgId,
    scopes: Scopes,
    /// Whether the org's processing is restricted: nothing that needs the
    /// execute scope runs.
    restricted: bool,
    pub(crate) who: Who,
}

/// The credential behind a [`Caller`].
#[derive(Debug, Clone)]
pub(crate) enum Who {
    /// An API key.
    Key(Principal),
    /// A member of the org, signed in with a session.
    User { session: Session, role: Role },
}

impl Caller {
    /// The org, when the caller may do what `scope` covers.
    pub(crate) fn require(&self, scope: Scope) -> Result<&OrgId, ApiError> {
        if scope == Scope::Execute && self.restricted {
            return Err(modelroute_identity::IdentityError::Restricted.into());
        }
        if self.scopes.contains(scope) {
            return Ok(&self.org_id);
        }
        match &self.who {
            Who::Key(p) => {
                Err(p.require(scope).err().map_or_else(|| ApiError::new(Code::Internal, "scope"), ApiError::from))
            }
            Who::User { role, .. } => Err(ApiError::new(
                Code::PermissionDenied,
                format!("your role in this organization ({}) does not allow this", role.as_str()),
            )),
        }
    }

    /// The role the caller acts with: a member's own, or for a key
    /// `admin` with the manage scope and `member` without.
    pub(crate) fn role(&self) -> Role {
        match &self.who {
            Who::Key(p) if p.scopes.contains(Scope::Manage) => Role::Admin,
            Who::Key(_) => Role::Member,
            Who::User { role, .. } => *role,
        }
    }

    /// Who, for the audit log: the key id or the user id.
    pub(crate) fn who(&self) -> String {
        match &self.who {
            Who::Key(p) => p.api_key_id.to_string(),
            Who::User { session, .. } => session.user_id.to_string(),
        }
    }

    /// Who pays for an execution this caller starts (an API key with the
    /// execute scope), with what the request asks of routing.
    pub(crate) fn payer(
        &self,
        preferences: Option<modelroute_executions::RequestPreferences>,
        fallback_models: Vec<String>,
    ) -> Result<modelroute_executions::Caller, ApiError> {
        self.require(Scope::Execute)?;
        let Who::Key(p) = &self.who else {
            return Err(ApiError::new(Code::PermissionDenied, "executions need an API key"));
        };
        Ok(modelroute_executions::Caller {
            org_id: p.org_id.clone(),
            project_id: p.project_id.clone(),
            api_key_id: p.api_key_id.clone(),
            preferences: preferences.unwrap_or_default(),
            fallback_models,
        })
    }
}

/// The org a signed-in browser names: `ModelRoute-Organization` (or
/// OpenAI's `OpenAI-Organization`).
fn named_org(req: &HttpRequest) -> Option<String> {
    ["modelroute-organization", "openai-organization"]
        .iter()
        .find_map(|h| req.headers().get(*h).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned()))
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

/// Authenticates a request by its API key or session. Routes that answer
/// errors in another shape (Anthropic's) call it directly instead of
/// extracting [`Caller`].
pub(crate) fn authenticate(req: &HttpRequest) -> impl Future<Output = Result<Caller, ApiError>> + 'static {
    authenticate_for(req, None)
}

/// The same, for the org a path names (`/v1/orgs/{org}/…`): a key of
/// another org, or a user who is not a member, gets a 404.
pub(crate) fn authenticate_for(
    req: &HttpRequest,
    path_org: Option<String>,
) -> impl Future<Output = Result<Caller, ApiError>> + 'static {
    let state = req.app_data::<State>().cloned();
    let key = presented_key(req);
    let session_token = session::cookie(req, session::SESSION_COOKIE);
    let named = path_org.or_else(|| named_org(req));
    let req = req.clone();
    async move {
        let state = state.ok_or_else(|| ApiError::new(Code::Internal, "application state missing"))?;
        let not_found = || ApiError::new(Code::NotFound, "organization not found");
        let caller = if let Some(key) = key {
            let principal = state.services.identity.authenticate(&key).await?;
            if named.as_deref().is_some_and(|o| o != principal.org_id.as_str()) {
                return Err(not_found());
            }
            Caller {
                org_id: principal.org_id.clone(),
                scopes: principal.scopes.clone(),
                restricted: principal.restricted,
                who: Who::Key(principal),
            }
        } else if let Some(token) = session_token {
            let session = state.services.identity.session(&token).await?;
            session::check_csrf(&state, &req, &session)?;
            let (org_id, role) = match named {
                Some(org) => {
                    let org: OrgId = org.parse().map_err(|_| not_found())?;
                    let role = state.services.identity.role_in(&session.user_id, &org).await?;
                    (org, role)
                }
                None => {
                    let mut orgs = state.services.identity.memberships(&session.user_id).await?;
                    if orgs.len() > 1 {
                        return Err(ApiError::new(
                            Code::InvalidRequest,
                            "you belong to several organizations: name one in the ModelRoute-Organization header",
                        ));
                    }
                    let m = orgs.pop().ok_or_else(|| {
                        ApiError::new(
                            Code::NotFound,
                            "you belong to no organization yet: create one with POST /v1/orgs",
                        )
                    })?;
                    (m.org.id, m.role)
                }
            };
            let restricted = state.services.identity.is_restricted(&org_id).await?;
            Caller { org_id, scopes: role.scopes(), restricted, who: Who::User { session, role } }
        } else {
            return Err(ApiError::new(
                Code::InvalidApiKey,
                "missing API key: send `Authorization: Bearer mr_…` or `x-api-key` (or sign in)",
            ));
        };
        let limited = match &caller.who {
            Who::Key(p) => (format!("key:{}", p.api_key_id), "this API key"),
            Who::User { session, .. } => (format!("user:{}", session.user_id), "this user"),
        };
        let limits = [
            (limited.0, state.per_key_per_minute, limited.1),
            (format!("org:{}", caller.org_id), state.per_org_per_minute, "this organization"),
        ];
        let mut tightest: Option<Decision> = None;
        for (name, limit, whose) in limits {
            let d = check_limit(&state, &name, limit, whose).await?;
            if tightest.is_none_or(|t| d.remaining < t.remaining) {
                tightest = Some(d);
            }
        }
        if let Some(d) = tightest.filter(|d| d.remaining != u32::MAX) {
            req.extensions_mut().insert(RateHeaders { limit: d.limit, remaining: d.remaining });
        }
        Ok(caller)
    }
}

/// One rate-limit check; a refusal is a 429 with `Retry-After` and
/// `X-RateLimit-*`.
pub(crate) async fn check_limit(state: &State, name: &str, limit: u32, whose: &str) -> Result<Decision, ApiError> {
    let d = state
        .limiter
        .check(name, limit, MINUTE)
        .await
        .map_err(|_| ApiError::new(Code::Overloaded, "the rate limiter is unavailable; retry shortly"))?;
    if !d.allowed {
        let secs = (d.retry_after.as_secs() + u64::from(d.retry_after.subsec_nanos() > 0)).max(1);
        return Err(ApiError::new(
            Code::RateLimited,
            format!("rate limit of {limit} requests per minute for {whose} reached; retry in {secs} s"),
        )
        .with_header("retry-after", secs.to_string())
        .with_header("x-ratelimit-limit", limit.to_string())
        .with_header("x-ratelimit-remaining", "0")
        .with_header("x-ratelimit-reset", secs.to_string()));
    }
    Ok(d)
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
