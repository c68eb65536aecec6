//! One file per resource; handlers stay thin.

mod audit;
mod billing;
mod chat;
mod executions;
mod health;
mod keys;
mod messages;
mod models;
mod routing;
mod usage;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use modelroute_types::Code;
use modelroute_types::ExecutionId;

use crate::ApiError;

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .service(
            web::scope("/v1")
                .route("/models", web::get().to(models::list))
                .route("/models/{slug:.+}", web::get().to(models::get))
                .route("/chat/completions", web::post().to(chat::completions))
                .route("/messages", web::post().to(messages::create))
                .route("/executions/{id}", web::get().to(executions::get))
                .route("/billing/balance", web::get().to(billing::balance))
                .route("/routing/preferences", web::get().to(routing::get))
                .route("/routing/preferences", web::put().to(routing::put))
                .route("/audit-events", web::get().to(audit::list))
                .route("/keys", web::get().to(keys::list))
                .route("/keys", web::post().to(keys::create))
                .route("/keys/{id}", web::delete().to(keys::revoke))
                .route("/usage", web::get().to(usage::list))
                .route("/usage.csv", web::get().to(usage::csv)),
        )
        .default_service(web::to(not_found));
}

/// A successful answer of an execution: carries its id in a header.
fn answer(execution_id: &ExecutionId) -> HttpResponseBuilder {
    let mut builder = HttpResponse::Ok();
    builder.insert_header(("x-modelroute-execution-id", execution_id.as_str()));
    builder
}

/// A streamed answer of an execution as server-sent events.
fn event_stream<S>(execution_id: &ExecutionId, body: S) -> HttpResponse
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> + 'static,
{
    answer(execution_id)
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(body)
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(Code::NotFound, format!("no route for {} {}", req.method(), req.path())))
}
