//! One file per resource; handlers stay thin.

mod accounts;
mod audit;
mod billing;
mod chat;
mod executions;
mod files;
mod health;
mod keys;
mod messages;
mod models;
mod orgs;
mod routing;
mod usage;
mod webhooks;

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
                .route("/executions", web::get().to(executions::list))
                .route("/executions", web::post().to(executions::submit))
                .route("/executions/{id}", web::get().to(executions::get))
                .route("/executions/{id}/cancel", web::post().to(executions::cancel))
                .route("/callbacks/{provider}/{token}", web::post().to(executions::callback))
                .route("/files", web::post().to(files::upload))
                .route("/files", web::get().to(files::list))
                .route("/files/settings", web::get().to(files::get_settings))
                .route("/files/settings", web::put().to(files::put_settings))
                .route("/files/usage", web::get().to(files::usage))
                .route("/files/{id}", web::get().to(files::get))
                .route("/files/{id}", web::delete().to(files::delete))
                .route("/files/{id}/content", web::get().to(files::content))
                .route("/files/{id}/links", web::post().to(files::link))
                .route("/webhook-endpoints", web::post().to(webhooks::create))
                .route("/webhook-endpoints", web::get().to(webhooks::list))
                .route("/webhook-endpoints/{id}", web::get().to(webhooks::get))
                .route("/webhook-endpoints/{id}", web::patch().to(webhooks::update))
                .route("/webhook-endpoints/{id}", web::delete().to(webhooks::delete))
                .route("/webhook-endpoints/{id}/rotate-secret", web::post().to(webhooks::rotate))
                .route("/webhook-endpoints/{id}/test", web::post().to(webhooks::test))
                .route("/webhook-endpoints/{id}/deliveries", web::get().to(webhooks::deliveries))
                .route("/webhook-deliveries/{id}", web::get().to(webhooks::delivery))
                .route("/webhook-deliveries/{id}/redeliver", web::post().to(webhooks::redeliver))
                .route("/billing/balance", web::get().to(billing::balance))
                .route("/billing/checkout", web::post().to(billing::checkout))
                .route("/billing/payment-method", web::post().to(billing::payment_method))
                .route("/billing/auto-top-up", web::get().to(billing::get_auto_top_up))
                .route("/billing/auto-top-up", web::put().to(billing::put_auto_top_up))
                .route("/billing/stripe/webhook", web::post().to(billing::stripe_webhook))
                .route("/routing/preferences", web::get().to(routing::get))
                .route("/routing/preferences", web::put().to(routing::put))
                .route("/audit-events", web::get().to(audit::list))
                .route("/keys", web::get().to(keys::list))
                .route("/keys", web::post().to(keys::create))
                .route("/keys/{id}", web::delete().to(keys::revoke))
                .route("/keys/{id}/rotate", web::post().to(keys::rotate))
                .route("/usage", web::get().to(usage::list))
                .route("/usage.csv", web::get().to(usage::csv))
                .route("/auth/signup", web::post().to(accounts::sign_up))
                .route("/auth/verify-email", web::post().to(accounts::verify_email))
                .route("/auth/login", web::post().to(accounts::login))
                .route("/auth/logout", web::post().to(accounts::logout))
                .route("/auth/logout-all", web::post().to(accounts::logout_all))
                .route("/auth/session", web::get().to(accounts::session))
                .route("/auth/events", web::get().to(audit::mine))
                .route("/auth/password-reset", web::post().to(accounts::request_reset))
                .route("/auth/password-reset/confirm", web::post().to(accounts::confirm_reset))
                .route("/auth/password", web::post().to(accounts::change_password))
                .route("/auth/account/deletion", web::post().to(accounts::request_deletion))
                .route("/auth/account/deletion", web::delete().to(accounts::cancel_deletion))
                .route("/auth/oauth/{provider}/start", web::get().to(accounts::oauth_start))
                .route("/auth/oauth/{provider}/callback", web::get().to(accounts::oauth_callback))
                .route("/orgs", web::get().to(orgs::list))
                .route("/orgs", web::post().to(orgs::create))
                .route("/orgs/{org}", web::get().to(orgs::get))
                .route("/orgs/{org}/members", web::get().to(orgs::members))
                .route("/orgs/{org}/members/{user}", web::patch().to(orgs::set_role))
                .route("/orgs/{org}/members/{user}", web::delete().to(orgs::remove_member))
                .route("/orgs/{org}/invitations", web::get().to(orgs::invitations))
                .route("/orgs/{org}/invitations", web::post().to(orgs::invite))
                .route("/orgs/{org}/exports", web::post().to(orgs::export))
                .route("/orgs/{org}/restriction", web::get().to(orgs::restriction))
                .route("/orgs/{org}/restriction", web::put().to(orgs::restrict))
                .route("/orgs/{org}/restriction", web::delete().to(orgs::lift))
                .route("/orgs/{org}/projects", web::get().to(orgs::projects))
                .route("/orgs/{org}/projects", web::post().to(orgs::create_project))
                .route("/projects/{id}", web::get().to(orgs::project))
                .route("/invitations/accept", web::post().to(orgs::accept)),
        )
        .default_service(web::to(not_found));
}

/// `200 {"object": "list", "data": [...]}` of `items`, each rendered by `render`.
fn list<T>(items: &[T], render: impl Fn(&T) -> serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .json(serde_json::json!({ "object": "list", "data": items.iter().map(render).collect::<Vec<_>>() }))
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
