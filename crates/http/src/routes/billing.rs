//! `/v1/billing/…`: the balance and journal; with Stripe configured, top-ups
//! through Checkout, a saved card, auto top-up, and the webhook endpoint.

use actix_web::{HttpRequest, HttpResponse};
use modelroute_billing::AutoTopUp;
use modelroute_identity::Scope;
use modelroute_ledger::Ledger as _;
use modelroute_types::Money;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::Caller;
use crate::body::Body;
use crate::state::State;
use crate::wire::money;

/// Journal entries shown with the balance.
const RECENT_ENTRIES: usize = 20;

/// `GET /v1/billing/balance`: the caller's org balance and its recent journal.
pub(crate) async fn balance(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let b = state.services.ledger.balance(org).await?;
    let journal: Vec<_> = state
        .services
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckoutBody {
    /// USD, as a decimal string: `"25.00"`.
    #[serde(deserialize_with = "modelroute_types::deserialize_usd")]
    amount: Money,
}

/// `POST /v1/billing/checkout` `{"amount": "25.00"}` (manage): a Stripe
/// Checkout Session; the balance is credited when Stripe's signed webhook
/// says it was paid. An `Idempotency-Key` header makes retries return the
/// same session.
pub(crate) async fn checkout(
    state: State,
    caller: Caller,
    req: HttpRequest,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let body: CheckoutBody = payload.json().await?;
    let key = req.headers().get("idempotency-key").and_then(|v| v.to_str().ok());
    let session = state.services.billing.checkout(org, body.amount, key).await?;
    Ok(HttpResponse::Created().json(json!({ "object": "checkout_session", "id": session.id, "url": session.url })))
}

/// `POST /v1/billing/payment-method` (manage): a SetupIntent's
/// `client_secret` for Stripe.js; the card is saved when Stripe confirms it.
pub(crate) async fn payment_method(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let secret = state.services.billing.setup_payment_method(org).await?;
    Ok(HttpResponse::Created().json(json!({ "object": "setup_intent", "client_secret": secret })))
}

fn auto_top_up_json(a: &AutoTopUp) -> Value {
    json!({
        "object": "auto_top_up",
        "enabled": a.enabled,
        "threshold": money(a.threshold),
        "amount": money(a.amount),
        "has_payment_method": a.has_payment_method,
        "last_failure": a.last_failure,
        "low_balance_alert": a.low_balance_alert.map(money),
    })
}

/// `GET /v1/billing/auto-top-up` (read).
pub(crate) async fn get_auto_top_up(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    Ok(HttpResponse::Ok().json(auto_top_up_json(&state.services.billing.auto_top_up(org).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AutoTopUpBody {
    enabled: bool,
    #[serde(default, deserialize_with = "modelroute_types::deserialize_usd")]
    threshold: Money,
    #[serde(default, deserialize_with = "modelroute_types::deserialize_usd")]
    amount: Money,
    #[serde(default, deserialize_with = "optional_usd")]
    low_balance_alert: Option<Money>,
}

/// An optional USD amount (`null` or absent: none).
fn optional_usd<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Money>, D::Error> {
    #[derive(Deserialize)]
    struct Usd(#[serde(deserialize_with = "modelroute_types::deserialize_usd")] Money);
    Ok(Option::<Usd>::deserialize(d)?.map(|u| u.0))
}

/// `PUT /v1/billing/auto-top-up` `{"enabled", "threshold", "amount", "low_balance_alert"?}` (manage).
pub(crate) async fn put_auto_top_up(
    state: State,
    caller: Caller,
    req: HttpRequest,
    payload: Body,
) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Manage)?;
    let b: AutoTopUpBody = payload.json().await?;
    let settings =
        state.services.billing.set_auto_top_up(org, b.enabled, b.threshold, b.amount, b.low_balance_alert).await?;
    let answer = auto_top_up_json(&settings);
    super::audit::record(&state, &caller, &req, "billing.auto_top_up_updated", None, Some(answer.clone())).await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// `POST /v1/billing/stripe/webhook`: Stripe's events, authenticated by
/// their `Stripe-Signature` (a bad one is a 400 and changes nothing).
pub(crate) async fn stripe_webhook(state: State, req: HttpRequest, body: Body) -> Result<HttpResponse, ApiError> {
    let signature = req.headers().get("stripe-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let body = body.bytes(state.body.max_bytes).await?;
    let outcome = state.services.billing.handle_webhook(&body, signature).await?;
    Ok(HttpResponse::Ok().json(json!({ "received": true, "outcome": format!("{outcome:?}") })))
}
