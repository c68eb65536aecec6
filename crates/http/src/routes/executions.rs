use actix_web::{HttpRequest, HttpResponse, web};
use modelroute_executions::{Execution, ExecutionError, ExecutionFilter, ExecutionStatus};
use modelroute_identity::Scope;
use modelroute_types::{ExecutionId, Money, ProjectId, time};
use serde::Deserialize;
use serde_json::json;

use crate::ApiError;
use crate::auth::Caller;
use crate::query;
use crate::state::State;
use crate::wire::money;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Comma-separated statuses.
    status: Option<String>,
    model: Option<String>,
    project_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /v1/executions` (read): the org's executions, newest first, in
/// every status; filters `status` (comma-separated), `model`,
/// `project_id`, `from`/`to` (RFC 3339); `limit` (1–100, default 20) and
/// `cursor` (`next_cursor`) page.
pub(crate) async fn list(state: State, caller: Caller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let q: ListQuery = query::parse(&req)?;
    if q.limit.is_some_and(|l| !(1..=100).contains(&l)) {
        return Err(ApiError::invalid_param("limit", "limit must be between 1 and 100"));
    }
    let statuses = q
        .status
        .as_deref()
        .map(|s| {
            s.split(',')
                .map(|one| {
                    ExecutionStatus::try_from(one.trim()).map_err(|_| {
                        ApiError::invalid_param(
                            "status",
                            format!(
                                "unknown status `{}` (expected queued, running, succeeded, failed or canceled)",
                                one.trim().chars().take(32).collect::<String>()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let filter = ExecutionFilter {
        statuses,
        from: query::time("from", q.from)?,
        to: query::time("to", q.to)?,
        project_id: q
            .project_id
            .map(|p| {
                p.parse::<ProjectId>().map_err(|_| ApiError::invalid_param("project_id", "not a project id (proj_…)"))
            })
            .transpose()?,
        model: q.model,
        limit: q.limit.unwrap_or(20),
        cursor: q
            .cursor
            .map(|c| {
                c.parse::<ExecutionId>().map_err(|_| ApiError::invalid_param("cursor", "not a cursor from this API"))
            })
            .transpose()?,
    };
    let page = state.services.executor.list(org, &filter).await?;
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": page.executions.iter().map(view).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
        "has_more": page.next_cursor.is_some(),
    })))
}

/// `GET /v1/executions/{id}`: an execution of the caller's org. Another
/// org's execution, or a malformed id, is a 404 like an unknown one.
pub(crate) async fn get(state: State, caller: Caller, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let id: ExecutionId = id.parse().map_err(|_| ExecutionError::NotFound)?;
    let e = state.services.executor.get(org, &id).await?;
    Ok(HttpResponse::Ok().json(view(&e)))
}

fn view(e: &Execution) -> serde_json::Value {
    // A cancellation after output started is settled for what was produced,
    // and so is a failure after output reached the client; one before the
    // first byte released the hold.
    let hold_status = match e.status {
        ExecutionStatus::Queued | ExecutionStatus::Running => "held",
        ExecutionStatus::Succeeded => "settled",
        ExecutionStatus::Canceled if e.error_code.is_none() => "settled",
        ExecutionStatus::Failed if e.cost.is_some_and(Money::is_positive) => "settled",
        ExecutionStatus::Canceled | ExecutionStatus::Failed => "released",
    };
    let settlement = e
        .cost
        .filter(|_| hold_status == "settled")
        .map(|cost| json!({ "charged": money(cost), "released": money(e.hold_amount - cost) }));
    json!({
        "id": e.id,
        "object": "execution",
        "model": e.model,
        "route": e.route,
        "status": e.status,
        "stream": e.stream,
        "created_at": time::rfc3339(e.created_at),
        "started_at": e.started_at.map(time::rfc3339),
        "finished_at": e.finished_at.map(time::rfc3339),
        "usage": e.input_tokens.zip(e.output_tokens).map(|(i, o)| json!({ "input_tokens": i, "output_tokens": o })),
        "cost": e.cost.map(money),
        "hold": e.hold_id.as_ref().map(|h| json!({ "id": h, "amount": money(e.hold_amount), "status": hold_status })),
        "settlement": settlement,
        "finish_reason": e.finish_reason,
        "error": e.error_code.as_ref().map(|c| json!({ "code": c, "message": e.error_message })),
        "decision": e.decision,
    })
}
