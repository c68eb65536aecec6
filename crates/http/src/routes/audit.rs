//! `GET /v1/audit-events` (manage scope): the caller's org audit log, newest
//! first; `GET /v1/auth/events`: a signed-in user's own history. Filters: `action`, `from`, `to` (RFC 3339); `limit` (1–500,
//! default 100) and `cursor` (the `next_cursor` of the previous page).

use actix_web::{HttpRequest, HttpResponse};
use modelroute_identity::{Actor, AuditEvent, AuditFilter, Scope};
use modelroute_types::AuditEventId;
use serde::Deserialize;
use serde_json::json;

use crate::ApiError;
use crate::auth::Caller;
use crate::query;
use crate::session::SignedIn;
use crate::state::State;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    action: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// Who is acting, for the audit log.
pub(crate) fn actor(caller: &Caller, req: &HttpRequest) -> Actor {
    crate::session::actor(&caller.who(), req)
}

/// Records that the caller did `action` (on `target`) in its org, after the
/// write it describes committed.
pub(crate) async fn record(
    state: &State,
    caller: &Caller,
    req: &HttpRequest,
    action: &str,
    target: Option<&str>,
    details: Option<serde_json::Value>,
) -> Result<(), ApiError> {
    let actor = actor(caller, req);
    state.services.identity.record(Some(&caller.org_id), &actor, action, target, details).await?;
    Ok(())
}

fn filter(req: &HttpRequest) -> Result<AuditFilter, ApiError> {
    let q: AuditQuery = query::parse(req)?;
    if q.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(ApiError::invalid_param("limit", "limit must be between 1 and 500"));
    }
    Ok(AuditFilter {
        action: q.action,
        from: query::time("from", q.from)?,
        to: query::time("to", q.to)?,
        limit: q.limit.unwrap_or(100),
        cursor: q
            .cursor
            .map(|c| {
                c.parse::<AuditEventId>().map_err(|_| ApiError::invalid_param("cursor", "not a cursor from this API"))
            })
            .transpose()?,
    })
}

fn page(events: &[AuditEvent], limit: usize) -> HttpResponse {
    let next_cursor = (events.len() == limit).then(|| events.last().map(|e| e.id.to_string())).flatten();
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": events.iter().map(|e| json!({
            "id": e.id,
            "action": e.action,
            "actor": e.actor,
            "target": e.target,
            "ip": e.ip,
            "user_agent": e.user_agent,
            "request_id": e.request_id,
            "details": e.details,
            "created_at": e.created_at.and_utc().to_rfc3339(),
        })).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    }))
}

/// `GET /v1/audit-events`.
pub(crate) async fn list(state: State, caller: Caller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let filter = filter(&req)?;
    let events = state.services.identity.audit_events(org, &filter).await?;
    Ok(page(&events, filter.limit))
}

/// `GET /v1/auth/events`: the signed-in user's own security history (their
/// logins, failed logins on their account, password changes, what they
/// did), with the same filters.
pub(crate) async fn mine(state: State, signed_in: SignedIn, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let filter = filter(&req)?;
    let events = state.services.identity.user_audit_events(&signed_in.0.user_id, &filter).await?;
    Ok(page(&events, filter.limit))
}
