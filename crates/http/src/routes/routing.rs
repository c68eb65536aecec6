//! `GET`/`PUT /v1/routing/preferences`: the caller's org routing policy
//! (`cheapest`, `fastest`, `balanced`), price ceilings and fallback models
//! per model. A request may choose another policy or lower ceilings in its
//! own `routing` field, and name its own fallbacks in `models`.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse};
use modelroute_executions::{Fallbacks, OrgRouting};
use modelroute_identity::Scope;
use modelroute_routing::{Policy, Preferences};
use modelroute_types::PricePerMTok;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::Caller;
use crate::body::Body;
use crate::state::State;

fn body(r: &OrgRouting) -> Value {
    let p = &r.preferences;
    json!({
        "object": "routing_preferences",
        "policy": p.policy,
        "max_input_price": p.max_input_price,
        "max_output_price": p.max_output_price,
        "fallbacks": &*r.fallbacks,
    })
}

/// The body of a `PUT`: everything it names replaces what was set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Put {
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    max_input_price: Option<PricePerMTok>,
    #[serde(default)]
    max_output_price: Option<PricePerMTok>,
    /// Per model, the models to try in order when it cannot serve.
    #[serde(default)]
    fallbacks: Fallbacks,
}

/// `GET /v1/routing/preferences`.
pub(crate) async fn get(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let r = state.services.executor.routing(org).await?;
    Ok(HttpResponse::Ok().json(body(&r)))
}

/// `PUT /v1/routing/preferences` (manage scope): replaces them.
pub(crate) async fn put(
    state: State,
    caller: Caller,
    req: HttpRequest,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let put: Put = payload.json().await?;
    let r = OrgRouting {
        preferences: Preferences {
            policy: put.policy,
            max_input_price: put.max_input_price,
            max_output_price: put.max_output_price,
        },
        fallbacks: Arc::new(put.fallbacks),
    };
    state.services.executor.set_routing(org, r.clone()).await?;
    super::audit::record(&state, &caller, &req, "routing.preferences_updated", None, Some(body(&r))).await?;
    Ok(HttpResponse::Ok().json(body(&r)))
}
