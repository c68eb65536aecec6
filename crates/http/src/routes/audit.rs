//! `GET /v1/audit-events` (manage scope): the caller's org audit log, newest
//! first. Filters: `action`, `from`, `to` (RFC 3339); `limit` (1–500,
//! default 100) and `cursor` (the `next_cursor` of the previous page).

use actix_web::{HttpMessage as _, HttpRequest, HttpResponse};
use modelroute_identity::{Actor, AuditFilter, Scope};
use modelroute_types::AuditEventId;
use serde::Deserialize;
use serde_json::json;

use crate::ApiError;
use crate::auth::Caller;
use crate::query;
use crate::request_id::RequestId;
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

/// Who is acting, for the audit log: the key, the client's address (the
/// TCP peer; a proxy's forwarding headers are not trusted), its user agent
/// and the request id.
pub(crate) fn actor(caller: &Caller, req: &HttpRequest) -> Actor {
    Actor {
        who: caller.0.api_key_id.to_string(),
        ip: req.peer_addr().map(|a| a.ip().to_string()),
        user_agent: req.headers().get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_owned),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
    }
}

/// `GET /v1/audit-events`.
pub(crate) async fn list(state: State, caller: Caller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let principal = caller.require(Scope::Manage)?;
    let q: AuditQuery = query::parse(&req)?;
    if q.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(ApiError::invalid_param("limit", "limit must be between 1 and 500"));
    }
    let limit = q.limit.unwrap_or(100);
    let filter = AuditFilter {
        action: q.action,
        from: query::time("from", q.from)?,
        to: query::time("to", q.to)?,
        limit,
        cursor: q
            .cursor
            .map(|c| {
                c.parse::<AuditEventId>().map_err(|_| ApiError::invalid_param("cursor", "not a cursor from this API"))
            })
            .transpose()?,
    };
    let events = state.identity.audit_events(&principal.org_id, &filter).await?;
    let next_cursor = (events.len() == limit).then(|| events.last().map(|e| e.id.to_string())).flatten();
    Ok(HttpResponse::Ok().json(json!({
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
    })))
}
