//! `/v1/keys` (manage scope): the caller's org API keys — list, create
//! (the token is in the answer once and nowhere else), rotate, revoke. Another
//! org's key or project answers 404, never 403, so ids do not leak.

use actix_web::{HttpRequest, HttpResponse, web};
use modelroute_app::NewKey;
use modelroute_identity::{ApiKey, Scope, Scopes};
use modelroute_types::{ApiKeyId, Code, ProjectId, time};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::Caller;
use crate::body::Body;
use crate::query;
use crate::state::State;

fn key_json(k: &ApiKey) -> Value {
    json!({
        "object": "api_key",
        "id": k.id,
        "project_id": k.project_id,
        "name": k.name,
        "prefix": k.prefix,
        "scopes": k.scopes.iter().map(Scope::as_str).collect::<Vec<_>>(),
        "created_at": k.created_at.and_utc().to_rfc3339(),
        "expires_at": k.expires_at.map(|t| t.and_utc().to_rfc3339()),
        "revoked_at": k.revoked_at.map(|t| t.and_utc().to_rfc3339()),
        "last_used_at": k.last_used_at.map(|t| t.and_utc().to_rfc3339()),
    })
}

/// `GET /v1/keys`.
pub(crate) async fn list(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let keys = state.services.identity.list_api_keys(org).await?;
    Ok(super::list(&keys, key_json))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    project_id: ProjectId,
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

/// `POST /v1/keys`: `{"project_id", "name", "scopes": ["execute", "read"], "expires_at"?}`.
pub(crate) async fn create(
    state: State,
    caller: Caller,
    req: HttpRequest,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let body: CreateKey = payload.json().await?;
    let scopes: Scopes = body
        .scopes
        .join(" ")
        .parse()
        .map_err(|_| ApiError::invalid_param("scopes", "scopes are execute, read and manage"))?;
    let expires_at = query::time("expires_at", body.expires_at)?;
    if expires_at.is_some_and(|t| t <= time::now()) {
        return Err(ApiError::invalid_param("expires_at", "expires_at must be in the future"));
    }
    let actor = super::audit::actor(&caller, &req);
    let new = NewKey { org, project: &body.project_id, name: &body.name, scopes: &scopes, expires_at };
    let (key, token) = state.services.create_key(&new, &actor).await?;
    let mut answer = key_json(&key);
    if let Some(obj) = answer.as_object_mut() {
        obj.insert("token".into(), json!(token));
    }
    Ok(HttpResponse::Created().json(answer))
}

/// `DELETE /v1/keys/{id}`: revokes the key (at once on this replica, within
/// `key_cache_ttl_secs` on others). Revoking twice is fine.
pub(crate) async fn revoke(
    state: State,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let id: ApiKeyId = id.parse().map_err(|_| ApiError::new(Code::NotFound, "api key not found"))?;
    state.services.identity.revoke_api_key(org, &id).await?;
    super::audit::record(&state, &caller, &req, "api_key.revoked", Some(id.as_str()), None).await?;
    Ok(HttpResponse::Ok().json(json!({ "object": "api_key", "id": id, "revoked": true })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// How long the old secret keeps working (default a day, at most 7 days).
    #[serde(default)]
    grace_period_secs: Option<u64>,
}

/// The old secret's grace period unless the request names one.
const DEFAULT_GRACE_SECS: u64 = 24 * 3600;

/// `POST /v1/keys/{id}/rotate`: `{"grace_period_secs"?}` — a new secret for
/// the same key (the token is in the answer once); the old one keeps working
/// for the grace period.
pub(crate) async fn rotate(
    state: State,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let id: ApiKeyId = id.parse().map_err(|_| ApiError::new(Code::NotFound, "api key not found"))?;
    let body: Rotate = payload.json_or_default().await?;
    let grace = std::time::Duration::from_secs(body.grace_period_secs.unwrap_or(DEFAULT_GRACE_SECS));
    let (key, token, until) = state.services.identity.rotate_api_key(org, &id, grace).await?;
    let details = json!({ "grace_period_secs": grace.as_secs() });
    super::audit::record(&state, &caller, &req, "api_key.rotated", Some(id.as_str()), Some(details)).await?;
    let mut answer = key_json(&key);
    if let Some(obj) = answer.as_object_mut() {
        obj.insert("token".into(), json!(token));
        obj.insert("previous_secret_valid_until".into(), json!(time::rfc3339(until)));
    }
    Ok(HttpResponse::Ok().json(answer))
}
