//! Every response carries `x-request-id`: the client's (when it is sane) or
//! a new one. The id is on the request's tracing span, so every log line of
//! the request names it.

use std::time::Instant;

use actix_web::HttpMessage as _;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument as _;

const HEADER: HeaderName = HeaderName::from_static("x-request-id");

fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The request's id, for handlers (the audit log).
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub(crate) String);

pub(crate) async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map_or_else(|| format!("req_{}", uuid::Uuid::now_v7().simple()), str::to_owned);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("http", request_id = %id, method = %req.method(), path = %req.path());
    let started = Instant::now();
    let mut res = next.call(req).instrument(span.clone()).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER, value);
    }
    let rate = res.request().extensions().get::<crate::auth::RateHeaders>().copied();
    if let Some(rate) = rate {
        let headers = res.headers_mut();
        headers.insert(HeaderName::from_static("x-ratelimit-limit"), HeaderValue::from(rate.limit));
        headers.insert(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(rate.remaining));
    }
    let status = res.status();
    let elapsed = started.elapsed();
    metrics::counter!("modelroute_http_requests_total", "status" => status.as_str().to_owned()).increment(1);
    metrics::histogram!("modelroute_http_request_duration_seconds").record(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    });
    Ok(res)
}
