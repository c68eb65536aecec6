//! `/v1/webhook-endpoints…` and `/v1/webhook-deliveries…`: an org's
//! webhook endpoints (the secret shown once, at creation and rotation),
//! their deliveries with every attempt, test events and redelivery.

use actix_web::{HttpRequest, HttpResponse, web};
use modelroute_identity::Scope;
use modelroute_types::{WebhookDeliveryId, WebhookEndpointId, time};
use modelroute_webhooks::{Attempt, Delivery, Endpoint, EndpointUpdate, NewEndpoint, WebhookError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::Caller;
use crate::body::Body;
use crate::query;
use crate::state::State;

/// The longest grace period of a rotated secret.
const MAX_GRACE_SECS: u64 = 7 * 86_400;

fn endpoint_json(e: &Endpoint) -> Value {
    json!({
        "id": e.id,
        "object": "webhook_endpoint",
        "url": e.url,
        "description": e.description,
        "event_types": e.event_types,
        "enabled": e.enabled,
        "disabled_reason": e.disabled_reason,
        "failing_since": e.failing_since.map(time::rfc3339),
        "previous_secret_expires_at": e.previous_secret_expires_at.map(time::rfc3339),
        "created_at": time::rfc3339(e.created_at),
        "updated_at": time::rfc3339(e.updated_at),
    })
}

fn delivery_json(d: &Delivery) -> Value {
    json!({
        "id": d.id,
        "object": "webhook_delivery",
        "endpoint_id": d.endpoint_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at.map(time::rfc3339),
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": time::rfc3339(d.created_at),
        "delivered_at": d.delivered_at.map(time::rfc3339),
    })
}

fn attempt_json(a: &Attempt) -> Value {
    json!({
        "id": a.id,
        "attempted_at": time::rfc3339(a.attempted_at),
        "status_code": a.status_code,
        "latency_ms": a.latency_ms,
        "response": a.response_excerpt,
        "error": a.error,
    })
}

/// `object` with one more field.
fn with(mut object: Value, key: &str, value: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
    object
}

fn endpoint_id(raw: &str) -> Result<WebhookEndpointId, ApiError> {
    raw.parse().map_err(|_| ApiError::from(WebhookError::NotFound("such webhook endpoint".into())))
}

fn delivery_id(raw: &str) -> Result<WebhookDeliveryId, ApiError> {
    raw.parse().map_err(|_| ApiError::from(WebhookError::NotFound("such webhook delivery".into())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    url: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    event_types: Vec<String>,
}

/// `POST /v1/webhook-endpoints` `{"url", "description"?, "event_types"?}`
/// (manage): the answer carries the signing `secret`, once.
pub(crate) async fn create(
    state: State,
    caller: Caller,
    req: HttpRequest,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let b: CreateBody = payload.json().await?;
    let new = NewEndpoint { url: b.url, description: b.description, event_types: b.event_types };
    let (endpoint, secret) = state.services.webhooks.create_endpoint(org, new).await?;
    let details = json!({ "url": endpoint.url, "event_types": endpoint.event_types });
    super::audit::record(&state, &caller, &req, "webhook_endpoint.created", Some(endpoint.id.as_str()), Some(details))
        .await?;
    Ok(HttpResponse::Created().json(with(endpoint_json(&endpoint), "secret", json!(secret))))
}

/// `GET /v1/webhook-endpoints` (read).
pub(crate) async fn list(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let all = state.services.webhooks.endpoints(org).await?;
    Ok(HttpResponse::Ok().json(json!({ "object": "list", "data": all.iter().map(endpoint_json).collect::<Vec<_>>() })))
}

/// `GET /v1/webhook-endpoints/{id}` (read).
pub(crate) async fn get(state: State, caller: Caller, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    Ok(HttpResponse::Ok().json(endpoint_json(&state.services.webhooks.endpoint(org, &endpoint_id(&id)?).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateBody {
    url: Option<String>,
    description: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
}

/// `PATCH /v1/webhook-endpoints/{id}` `{"url"?, "description"?,
/// "event_types"?, "enabled"?}` (manage). Enabling clears the platform's
/// reason for disabling and the failure streak.
pub(crate) async fn update(
    state: State,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let id = endpoint_id(&id)?;
    let b: UpdateBody = payload.json().await?;
    let update =
        EndpointUpdate { url: b.url, description: b.description, event_types: b.event_types, enabled: b.enabled };
    let endpoint = state.services.webhooks.update_endpoint(org, &id, update).await?;
    let answer = endpoint_json(&endpoint);
    super::audit::record(&state, &caller, &req, "webhook_endpoint.updated", Some(id.as_str()), Some(answer.clone()))
        .await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// `DELETE /v1/webhook-endpoints/{id}` (manage): with its deliveries.
pub(crate) async fn delete(
    state: State,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let id = endpoint_id(&id)?;
    state.services.webhooks.delete_endpoint(org, &id).await?;
    super::audit::record(&state, &caller, &req, "webhook_endpoint.deleted", Some(id.as_str()), None).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "object": "webhook_endpoint", "deleted": true })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RotateBody {
    grace_period_secs: Option<u64>,
}

/// `POST /v1/webhook-endpoints/{id}/rotate-secret` `{"grace_period_secs"?}`
/// (manage): a new secret, shown once; the old one signs too until the
/// grace period (default a day, at most 7 days) ends.
pub(crate) async fn rotate(
    state: State,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let id = endpoint_id(&id)?;
    let b: RotateBody = payload.json_or_default().await?;
    let grace = b.grace_period_secs.unwrap_or(86_400);
    if grace > MAX_GRACE_SECS {
        return Err(ApiError::invalid_param("grace_period_secs", format!("at most {MAX_GRACE_SECS} seconds")));
    }
    let (endpoint, secret) =
        state.services.webhooks.rotate_secret(org, &id, std::time::Duration::from_secs(grace)).await?;
    let details = json!({ "grace_period_secs": grace });
    super::audit::record(&state, &caller, &req, "webhook_endpoint.secret_rotated", Some(id.as_str()), Some(details))
        .await?;
    Ok(HttpResponse::Ok().json(with(endpoint_json(&endpoint), "secret", json!(secret))))
}

/// `POST /v1/webhook-endpoints/{id}/test` (manage): a `webhook.test`
/// event to this endpoint, whatever its filter; 202 with the delivery.
pub(crate) async fn test(state: State, caller: Caller, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let delivery = state.services.webhooks.send_test(org, &endpoint_id(&id)?).await?;
    state.services.queue_delivery(&delivery).await;
    Ok(HttpResponse::Accepted().json(json!({ "object": "webhook_delivery", "id": delivery, "status": "pending" })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/webhook-endpoints/{id}/deliveries` (read): newest first;
/// `after` (a delivery id) and `limit` (1–100) page.
pub(crate) async fn deliveries(
    state: State,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let q: DeliveriesQuery = query::parse(&req)?;
    let after = q
        .after
        .map(|a| {
            a.parse::<WebhookDeliveryId>().map_err(|_| ApiError::invalid_param("after", "not a delivery id (wdl_…)"))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(20);
    let page = state.services.webhooks.deliveries(org, &endpoint_id(&id)?, after.as_ref(), limit).await?;
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": page.iter().map(delivery_json).collect::<Vec<_>>(),
        "has_more": i64::try_from(page.len()).unwrap_or(i64::MAX) == limit,
    })))
}

/// `GET /v1/webhook-deliveries/{id}` (read): the delivery and every attempt.
pub(crate) async fn delivery(state: State, caller: Caller, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let (d, attempts) = state.services.webhooks.delivery(org, &delivery_id(&id)?).await?;
    let answer = with(delivery_json(&d), "payload", serde_json::from_str(&d.payload).unwrap_or(Value::Null));
    let log = json!(attempts.iter().map(attempt_json).collect::<Vec<_>>());
    Ok(HttpResponse::Ok().json(with(answer, "attempt_log", log)))
}

/// `POST /v1/webhook-deliveries/{id}/redeliver` (manage): sent again now,
/// with the same `webhook-id`; its schedule starts over.
pub(crate) async fn redeliver(state: State, caller: Caller, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let id = delivery_id(&id)?;
    state.services.webhooks.redeliver(org, &id).await?;
    state.services.queue_delivery(&id).await;
    Ok(HttpResponse::Accepted().json(json!({ "object": "webhook_delivery", "id": id, "status": "pending" })))
}
