//! One file per resource; handlers stay thin.

mod billing;
mod chat;
mod executions;
mod health;
mod messages;
mod models;

use actix_web::{HttpRequest, web};
use modelroute_types::Code;

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
                .route("/billing/balance", web::get().to(billing::balance)),
        )
        .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(Code::NotFound, format!("no route for {} {}", req.method(), req.path())))
}
