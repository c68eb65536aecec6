//! `GET /v1/usage` (JSON, cursor pagination) and `GET /v1/usage.csv` (all
//! matching records): the caller's org usage records. Filters: `from`, `to`
//! (RFC 3339), `project_id`, `model`; `limit` (1–1000, default 100) and
//! `cursor` for JSON pages.

use actix_web::{HttpRequest, HttpResponse};
use modelroute_executions::{UsageFilter, UsageRecord};
use modelroute_identity::Scope;
use modelroute_types::{ExecutionId, ProjectId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiError;
use crate::auth::Caller;
use crate::query;
use crate::state::State;
use crate::wire::money;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    project_id: Option<String>,
    model: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// CSV exports stop here; narrow the time range for more.
const CSV_MAX_ROWS: usize = 100_000;

fn filter(req: &HttpRequest) -> Result<UsageFilter, ApiError> {
    let q: UsageQuery = query::parse(req)?;
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::invalid_param("limit", "limit must be between 1 and 1000"));
    }
    let project_id = q
        .project_id
        .map(|p| p.parse::<ProjectId>().map_err(|_| ApiError::invalid_param("project_id", "not a project id (proj_…)")))
        .transpose()?;
    let cursor = q
        .cursor
        .map(|c| c.parse::<ExecutionId>().map_err(|_| ApiError::invalid_param("cursor", "not a cursor from this API")))
        .transpose()?;
    Ok(UsageFilter {
        statuses: Vec::new(),
        from: query::time("from", q.from)?,
        to: query::time("to", q.to)?,
        project_id,
        model: q.model,
        limit: q.limit.unwrap_or(100),
        cursor,
    })
}

fn record_json(r: &UsageRecord) -> Value {
    json!({
        "object": "usage_record",
        "execution_id": r.execution_id,
        "created_at": r.created_at.and_utc().to_rfc3339(),
        "project_id": r.project_id,
        "api_key_id": r.api_key_id,
        "model": r.model,
        "route": r.route,
        "status": r.status,
        "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens,
        "input_price_per_mtok": r.input_price,
        "output_price_per_mtok": r.output_price,
        "request_price": r.request_price.map(|p| p.to_usd_string()),
        "price_version": r.price_version,
        "cost": money(r.cost),
        "hold_id": r.hold_id,
        "settlement_id": r.settlement_id,
    })
}

/// `GET /v1/usage`.
pub(crate) async fn list(state: State, caller: Caller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let page = state.services.executor.usage(org, &filter(&req)?).await?;
    Ok(HttpResponse::Ok().json(json!({
        "object": "list",
        "data": page.records.iter().map(record_json).collect::<Vec<_>>(),
        "has_more": page.next_cursor.is_some(),
        "next_cursor": page.next_cursor,
    })))
}

/// A CSV field: quoted when it holds a comma, quote or line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// `GET /v1/usage.csv`.
pub(crate) async fn csv(state: State, caller: Caller, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let org = caller.require(Scope::Read)?;
    let mut filter = filter(&req)?;
    filter.limit = 1000;
    let mut out = String::from(
        "execution_id,created_at,project_id,api_key_id,model,route,status,input_tokens,output_tokens,\
         input_price_per_mtok_usd,output_price_per_mtok_usd,price_version,cost_usd,cost_nano_usd,hold_id,\
         request_price_usd,settlement_id\n",
    );
    let mut rows = 0;
    loop {
        let page = state.services.executor.usage(org, &filter).await?;
        for r in &page.records {
            let price = |p: Option<modelroute_types::PricePerMTok>| {
                p.map(|p| p.per_million().to_usd_string()).unwrap_or_default()
            };
            let line = [
                r.execution_id.to_string(),
                r.created_at.and_utc().to_rfc3339(),
                r.project_id.clone(),
                r.api_key_id.clone(),
                r.model.clone(),
                r.route.clone().unwrap_or_default(),
                r.status.as_str().to_owned(),
                r.input_tokens.to_string(),
                r.output_tokens.to_string(),
                price(r.input_price),
                price(r.output_price),
                r.price_version.clone().unwrap_or_default(),
                r.cost.to_usd_string(),
                r.cost.units().to_string(),
                r.hold_id.clone().unwrap_or_default(),
                r.request_price.map(|p| p.to_usd_string()).unwrap_or_default(),
                r.settlement_id.clone().unwrap_or_default(),
            ];
            out.push_str(&line.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
            out.push('\n');
        }
        rows += page.records.len();
        match page.next_cursor {
            Some(c) if rows < CSV_MAX_ROWS => filter.cursor = c.parse().ok(),
            _ => break,
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(("content-disposition", "attachment; filename=\"usage.csv\""))
        .body(out))
}
