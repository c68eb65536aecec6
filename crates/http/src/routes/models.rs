use actix_web::{HttpResponse, web};
use modelroute_routing::{Model, RoutingError};
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::Caller;
use crate::state::State;

fn model_json(m: &Model) -> Value {
    json!({
        "id": m.slug,
        "object": "model",
        "created": 0,
        "owned_by": "modelroute",
        "description": m.description,
        "context_window": m.context_window,
    })
}

/// `GET /v1/models`: the catalogue, in OpenAI's list format.
pub(crate) async fn list(state: State, _caller: Caller) -> HttpResponse {
    let data: Vec<Value> = state.services.executor.catalogue().models().map(model_json).collect();
    HttpResponse::Ok().json(json!({ "object": "list", "data": data }))
}

/// `GET /v1/models/{slug}` (slugs may contain `/`).
pub(crate) async fn get(state: State, _caller: Caller, slug: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let catalogue = state.services.executor.catalogue();
    let model = catalogue.model(&slug).ok_or_else(|| RoutingError::ModelNotFound(slug.clone()))?;
    Ok(HttpResponse::Ok().json(model_json(model)))
}
