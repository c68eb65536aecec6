use actix_web::HttpResponse;
use modelroute_types::Code;
use serde_json::json;

use crate::ApiError;
use crate::state::State;

/// The process is up.
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The database answers and every embedded migration is applied.
pub(crate) async fn readyz(state: State) -> Result<HttpResponse, ApiError> {
    let status = state.pool.migration_status().await?;
    if !status.pending.is_empty() {
        return Err(ApiError::new(
            Code::DatabaseUnavailable,
            format!("{} migration(s) pending: {}", status.pending.len(), status.pending.join(", ")),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "database": format!("{:?}", state.pool.backend()).to_lowercase(),
        "migrations": status.applied.len(),
    })))
}

/// Prometheus metrics.
pub(crate) async fn metrics(state: State) -> HttpResponse {
    match &state.metrics {
        Some(h) => HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(h.render()),
        None => HttpResponse::NotFound().finish(),
    }
}
