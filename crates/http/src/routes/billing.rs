use actix_web::HttpResponse;
use modelroute_identity::Scope;
use modelroute_ledger::Ledger as _;
use serde_json::json;

use crate::ApiError;
use crate::auth::Caller;
use crate::state::State;
use crate::wire::money;

/// `GET /v1/billing/balance`: the caller's org balance.
pub(crate) async fn balance(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let principal = caller.require(Scope::Read)?;
    let b = state.ledger.balance(&principal.org_id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "object": "balance",
        "currency": "USD",
        "available": money(b.available),
        "held": money(b.held),
    })))
}
