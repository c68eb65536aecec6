use actix_web::HttpResponse;
use modelroute_identity::Scope;
use modelroute_ledger::Ledger as _;
use serde_json::json;

use crate::ApiError;
use crate::auth::Caller;
use crate::state::State;
use crate::wire::money;

/// Journal entries shown with the balance.
const RECENT_ENTRIES: usize = 20;

/// `GET /v1/billing/balance`: the caller's org balance and its recent journal.
pub(crate) async fn balance(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let b = state.ledger.balance(org).await?;
    let journal: Vec<_> = state
        .ledger
        .recent_entries(org, RECENT_ENTRIES)
        .await?
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id,
                "kind": e.kind,
                "hold_id": e.hold_id,
                "memo": e.memo,
                "created_at": e.created_at.and_utc().to_rfc3339(),
                "available": money(e.available),
                "held": money(e.held),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "object": "balance",
        "currency": "USD",
        "available": money(b.available),
        "held": money(b.held),
        "recent_journal": journal,
    })))
}
