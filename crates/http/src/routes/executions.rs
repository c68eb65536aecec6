use actix_web::{HttpResponse, web};
use modelroute_executions::{Execution, ExecutionError, ExecutionStatus};
use modelroute_identity::Scope;
use modelroute_types::{ExecutionId, Money, time};
use serde_json::json;

use crate::ApiError;
use crate::auth::Caller;
use crate::state::State;
use crate::wire::money;

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
