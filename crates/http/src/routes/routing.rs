//! `GET`/`PUT /v1/routing/preferences`: the caller's org routing policy
//! (`cheapest`, `fastest`, `balanced`) and price ceilings. A request may
//! choose another policy or lower ceilings in its own `routing` field.

use actix_web::{HttpRequest, HttpResponse};
use modelroute_identity::Scope;
use modelroute_routing::Preferences;
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::Caller;
use crate::body::Body;
use crate::state::State;

fn body(p: &Preferences) -> Value {
    json!({
        "object": "routing_preferences",
        "policy": p.policy,
        "max_input_price": p.max_input_price,
        "max_output_price": p.max_output_price,
    })
}

/// `GET /v1/routing/preferences`.
pub(crate) async fn get(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let p = state.services.executor.preferences(org).await?;
    Ok(HttpResponse::Ok().json(body(&p)))
}

/// `PUT /v1/routing/preferences` (manage scope): replaces them.
pub(crate) async fn put(
    state: State,
    caller: Caller,
    req: HttpRequest,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let p: Preferences = payload.json().await?;
    state.services.executor.set_preferences(org, p).await?;
    let actor = super::audit::actor(&caller, &req);
    state.services.identity.record(Some(org), &actor, "routing.preferences_updated", None, Some(body(&p))).await?;
    Ok(HttpResponse::Ok().json(body(&p)))
}
