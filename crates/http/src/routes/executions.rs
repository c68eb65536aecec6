use actix_web::{HttpRequest, HttpResponse, web};
use modelroute_app::{ExecutionView, NewExecution};
use modelroute_executions::{
    AsyncInput, CallbackError, CallbackOutcome, Execution, ExecutionError, ExecutionFilter, ExecutionStatus,
    IdempotencyKey, Submission,
};
use modelroute_identity::Scope;
use modelroute_providers::CallbackRefused;
use modelroute_types::{Code, ExecutionId, Money, ProjectId, time};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::Caller;
use crate::body::Body;
use crate::query;
use crate::state::State;
use crate::wire::{ChatCompletionRequest, money};

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

/// `GET /v1/executions/{id}`: an execution of the caller's org, with signed
/// links to its output files and its webhook delivery status. Another
/// org's execution, or a malformed id, is a 404 like an unknown one.
pub(crate) async fn get(state: State, caller: Caller, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let id: ExecutionId = id.parse().map_err(|_| ExecutionError::NotFound)?;
    let e = state.services.execution(org, &id).await?;
    Ok(HttpResponse::Ok().json(full_view(&e)))
}

/// What `POST /v1/executions` reads besides a chat request's fields.
#[derive(Debug, Deserialize)]
struct AsyncFields {
    model: String,
    /// A non-chat model's input object (instead of `messages`).
    #[serde(default)]
    input: Option<Value>,
    /// The execution's own webhook URL.
    #[serde(default)]
    webhook: Option<String>,
    /// The events it wants (default: all).
    #[serde(default)]
    webhook_events_filter: Vec<String>,
    /// Seconds it may take (default and maximum: `[executions]`).
    #[serde(default)]
    deadline: Option<u64>,
    #[serde(default)]
    routing: Option<modelroute_executions::RequestPreferences>,
    #[serde(default)]
    models: Vec<String>,
}

fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::new(Code::InvalidRequest, format!("invalid body: {inner}"))
        } else {
            ApiError::invalid_param(path.clone(), format!("{path}: {inner}"))
        }
    })
}

/// A JSON value with every object's keys in order, so that the same body
/// sent with its keys in another order hashes the same.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: std::collections::BTreeMap<&String, Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            json!(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

fn request_hash(value: &Value) -> String {
    let bytes = canonical(value).to_string();
    ring::digest::digest(&ring::digest::SHA256, bytes.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `Prefer: wait` (the longest wait) or `Prefer: wait=N` (seconds, capped).
fn prefer_wait(req: &HttpRequest, max: u64) -> Result<Option<u64>, ApiError> {
    let Some(prefer) = req.headers().get("prefer").and_then(|v| v.to_str().ok()) else { return Ok(None) };
    for pref in prefer.split(',').map(str::trim) {
        if pref == "wait" {
            return Ok(Some(max));
        }
        if let Some(n) = pref.strip_prefix("wait=") {
            let n: u64 = n.trim().parse().map_err(|_| {
                ApiError::invalid_param("Prefer", format!("wait must be a number of seconds up to {max}"))
            })?;
            if n == 0 || n > max {
                return Err(ApiError::invalid_param("Prefer", format!("wait must be between 1 and {max} seconds")));
            }
            return Ok(Some(n));
        }
    }
    Ok(None)
}

/// `POST /v1/executions` (execute): submits an asynchronous execution —
/// chat `messages` (the chat-completions fields) or an `input` object —
/// with an optional `webhook`, `webhook_events_filter` and `deadline`
/// (seconds). Answers 201 with the execution, `queued`, its worst case held;
/// with `Prefer: wait=N` when it ends or N seconds pass. `Idempotency-Key`:
/// the same key and body answer the same execution (200,
/// `Idempotent-Replayed: true`), another body 422, a duplicate while the
/// first is admitted 409.
pub(crate) async fn submit(
    state: State,
    caller: Caller,
    req: HttpRequest,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Execute)?;
    let wait = prefer_wait(&req, state.services.executions_config.max_wait_secs)?;
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .map(str::to_owned)
                .ok_or_else(|| ApiError::invalid_param("Idempotency-Key", "must be 1 to 255 visible characters"))
        })
        .transpose()?;
    let value: Value = payload.json().await?;
    let fields: AsyncFields = from_value(&value)?;
    let (input, payer) = match fields.input {
        Some(input) => {
            if value.get("messages").is_some() {
                return Err(ApiError::invalid_param("input", "give `messages` or `input`, not both"));
            }
            if !input.is_object() {
                return Err(ApiError::invalid_param("input", "input must be an object"));
            }
            let payer = caller.payer(fields.routing, fields.models)?;
            (AsyncInput::Input { model: fields.model, input }, payer)
        }
        None => {
            if value.get("messages").is_none() {
                return Err(ApiError::invalid_param("messages", "give `messages` (a chat) or `input` (an object)"));
            }
            let mut body: ChatCompletionRequest = from_value(&value)?;
            let payer = caller.payer(body.routing.take(), std::mem::take(&mut body.models))?;
            let mut request = body.into_canonical()?;
            state.services.inline_files(&payer.org_id, &mut request).await?;
            (AsyncInput::Chat { request }, payer)
        }
    };
    let org = payer.org_id.clone();
    let submission = Submission {
        caller: payer,
        input,
        deadline: std::time::Duration::ZERO,
        webhook_url: fields.webhook,
        webhook_events: fields.webhook_events_filter,
        idempotency: idempotency_key.map(|key| IdempotencyKey { key, request_hash: request_hash(&value) }),
    };
    let submitted =
        state.services.submit_execution(NewExecution { submission, deadline_secs: fields.deadline }).await?;
    let id = submitted.execution.id.clone();
    let view = match wait {
        Some(secs) => state.services.wait_execution(&org, &id, std::time::Duration::from_secs(secs)).await?,
        None => state.services.execution(&org, &id).await?,
    };
    let mut body = full_view(&view);
    if let (Some(secret), Some(obj)) = (submitted.webhook_secret, body.as_object_mut()) {
        obj.insert("webhook_secret".into(), json!(secret));
    }
    let mut response = if submitted.replayed { HttpResponse::Ok() } else { HttpResponse::Created() };
    response.insert_header(("location", format!("/v1/executions/{id}")));
    if submitted.replayed {
        response.insert_header(("idempotent-replayed", "true"));
    }
    Ok(response.json(body))
}

/// `POST /v1/executions/{id}/cancel` (execute): cancels an execution of the
/// caller's org; answers it (an ended one as it is).
pub(crate) async fn cancel(state: State, caller: Caller, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Execute)?;
    let id: ExecutionId = id.parse().map_err(|_| ExecutionError::NotFound)?;
    let e = state.services.cancel_execution(org, &id).await?;
    Ok(HttpResponse::Ok().json(full_view(&e)))
}

/// `POST /v1/callbacks/{provider}/{token}`: an asynchronous provider's
/// callback for one attempt. Unauthenticated but for the token (stored
/// hashed) and the provider's signature; a forged or stale one is a 401, a
/// replayed one a 409, an unknown token a 404 — each changing nothing.
pub(crate) async fn callback(
    state: State,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let (provider, token) = path.into_inner();
    let body = payload.bytes(1024 * 1024).await?;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let headers = [header("webhook-id"), header("webhook-timestamp"), header("webhook-signature")];
    let outcome = state.services.provider_callback(&provider, &token, headers, &body).await?;
    match outcome {
        Ok(applied) => {
            Ok(HttpResponse::Ok().json(json!({ "received": true, "applied": applied == CallbackOutcome::Applied })))
        }
        Err(CallbackError::UnknownToken) => Err(ApiError::new(Code::NotFound, "no such callback")),
        Err(e @ CallbackError::Refused(CallbackRefused::Headers | CallbackRefused::Body)) => {
            Err(ApiError::new(Code::InvalidRequest, e.to_string()))
        }
        Err(e @ CallbackError::Refused(_)) => Err(ApiError::new(Code::Unauthenticated, e.to_string())),
        Err(e @ CallbackError::Replayed) => Err(ApiError::new(Code::Conflict, e.to_string())),
        Err(e @ CallbackError::Mismatch) => Err(ApiError::new(Code::InvalidRequest, e.to_string())),
    }
}

/// An execution with what only the platform adds: output links, webhook status.
fn full_view(v: &ExecutionView) -> Value {
    let mut out = view(&v.execution);
    if let Some(obj) = out.as_object_mut() {
        let e = &v.execution;
        obj.insert("mode".into(), json!(e.mode));
        if e.mode == "async" {
            obj.insert("deadline_at".into(), json!(e.deadline_at.map(time::rfc3339)));
            obj.insert("cancel_requested_at".into(), json!(e.cancel_requested_at.map(time::rfc3339)));
            let text = e.output.as_ref().and_then(|o| o.get("text")).cloned();
            obj.insert(
                "output".into(),
                match (text, v.output_links.is_empty()) {
                    (Some(text), _) => json!({ "text": text }),
                    (None, false) => json!({ "files": v.output_links }),
                    (None, true) => Value::Null,
                },
            );
            obj.insert(
                "webhook".into(),
                json!({
                    "url": e.webhook_url,
                    "events_filter": e.webhook_events,
                    "deliveries": v.webhook_deliveries,
                }),
            );
        }
    }
    out
}

fn view(e: &Execution) -> Value {
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
