use actix_web::{HttpRequest, HttpResponse};
use modelroute_types::Code;
use serde_json::json;

use crate::ApiError;
use crate::state::State;

/// The process is up.
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// With `[server] operator_token` set, `/readyz` and `/metrics` need it as
/// a bearer token (they tell the database, migrations and traffic of the
/// deployment); without it they are open, as on the embedded default,
/// which listens on 127.0.0.1 only. Compared in constant time.
fn operator_only(state: &State, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(token) = &state.operator_token else { return Ok(()) };
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared as MACs under a fixed key: ring's verify compares in constant time.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"modelroute operator token");
    let expected = ring::hmac::sign(&key, token.expose().as_bytes());
    if ring::hmac::verify(&key, presented.as_bytes(), expected.as_ref()).is_ok() {
        Ok(())
    } else {
        Err(ApiError::new(Code::Unauthenticated, "this endpoint needs the operator token ([server] operator_token)"))
    }
}

/// The database answers and every embedded migration is applied.
pub(crate) async fn readyz(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    operator_only(&state, &req)?;
    let status = state.services.pool.migration_status().await?;
    if !status.pending.is_empty() {
        return Err(ApiError::new(
            Code::DatabaseUnavailable,
            format!("{} migration(s) pending: {}", status.pending.len(), status.pending.join(", ")),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "database": format!("{:?}", state.services.pool.backend()).to_lowercase(),
        "migrations": status.applied.len(),
    })))
}

/// Prometheus metrics.
pub(crate) async fn metrics(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    operator_only(&state, &req)?;
    Ok(match &state.metrics {
        Some(h) => HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(h.render()),
        None => HttpResponse::NotFound().finish(),
    })
}
