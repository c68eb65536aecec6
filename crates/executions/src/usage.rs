//! Usage records: one per billed execution (succeeded, or canceled after
//! output was produced), with the units, the unit prices and the price-table
//! version it was billed at, the cost, and the hold that paid for it.
//! Listed newest first with an opaque cursor (execution ids sort by time).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::db_run;
use modelroute_db::schema::executions;
use modelroute_types::{ExecutionId, Money, OrgId, PricePerMTok, ProjectId};
use serde::Serialize;

use crate::record::ExecutionRow;
use crate::{ExecutionError, ExecutionStatus, Executor};

/// Which usage records to list: an [`ExecutionFilter`] whose `statuses`
/// are ignored (usage records are the billed executions) and whose `limit`
/// goes to 1000.
pub type UsageFilter = ExecutionFilter;

/// One billed execution.
#[derive(Clone, Debug, Serialize)]
pub struct UsageRecord {
    /// The execution.
    pub execution_id: ExecutionId,
    /// When it was accepted.
    pub created_at: NaiveDateTime,
    /// The project of the key.
    pub project_id: String,
    /// The key.
    pub api_key_id: String,
    /// The model slug.
    pub model: String,
    /// The opaque route that served it.
    pub route: Option<String>,
    /// `succeeded` or `canceled`.
    pub status: ExecutionStatus,
    /// Prompt tokens billed.
    pub input_tokens: u64,
    /// Output tokens billed.
    pub output_tokens: u64,
    /// USD per million prompt tokens.
    pub input_price: Option<PricePerMTok>,
    /// USD per million output tokens.
    pub output_price: Option<PricePerMTok>,
    /// The price table's version.
    pub price_version: Option<String>,
    /// The flat price per request (USD).
    pub request_price: Option<Money>,
    /// What was charged.
    pub cost: Money,
    /// The hold that paid for it.
    pub hold_id: Option<String>,
    /// The journal entry that settled the hold.
    pub settlement_id: Option<String>,
}

/// One page of records.
#[derive(Clone, Debug, Serialize)]
pub struct UsagePage {
    /// Newest first.
    pub records: Vec<UsageRecord>,
    /// Pass as `cursor` for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

impl TryFrom<ExecutionRow> for UsageRecord {
    type Error = modelroute_db::DbError;

    fn try_from(r: ExecutionRow) -> Result<Self, Self::Error> {
        let n = |t: Option<i64>| t.and_then(|t| u64::try_from(t).ok()).unwrap_or(0);
        let price = |p: Option<i64>| p.map(|u| PricePerMTok::new(Money::from_units(u)));
        Ok(Self {
            execution_id: ExecutionId::from_trusted(r.id),
            created_at: r.created_at,
            project_id: r.project_id,
            api_key_id: r.api_key_id,
            model: r.model,
            route: r.route_id,
            status: ExecutionStatus::try_from(r.status.as_str())?,
            input_tokens: n(r.input_tokens),
            output_tokens: n(r.output_tokens),
            input_price: price(r.input_price),
            output_price: price(r.output_price),
            price_version: r.price_version,
            request_price: r.request_price.map(Money::from_units),
            cost: Money::from_units(r.cost.unwrap_or(0)),
            hold_id: r.hold_id,
            settlement_id: r.settlement_entry_id,
        })
    }
}

/// Which executions to list (`GET /v1/executions`).
#[derive(Clone, Debug, Default)]
pub struct ExecutionFilter {
    /// Only these statuses (empty: all).
    pub statuses: Vec<ExecutionStatus>,
    /// Created at or after this.
    pub from: Option<NaiveDateTime>,
    /// Created before this.
    pub to: Option<NaiveDateTime>,
    /// One project only.
    pub project_id: Option<ProjectId>,
    /// One model slug only.
    pub model: Option<String>,
    /// Executions per page (1–100).
    pub limit: usize,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<ExecutionId>,
}

/// A page of executions, newest first.
#[derive(Clone, Debug)]
pub struct ExecutionPage {
    /// The executions.
    pub executions: Vec<crate::Execution>,
    /// Pass as `cursor` for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

impl<L: modelroute_ledger::Ledger + 'static> Executor<L> {
    /// Up to `fetch` of `org`'s execution rows, newest first, in `statuses`
    /// (all when empty), created in `[from, to)`, of one project or model,
    /// older than `cursor`.
    async fn page_rows(
        &self,
        org: &OrgId,
        statuses: &[&str],
        f: &ExecutionFilter,
        fetch: usize,
    ) -> Result<Vec<ExecutionRow>, ExecutionError> {
        let fetch = i64::try_from(fetch).unwrap_or(i64::MAX);
        Ok(db_run!(self.pool(), |conn| {
            let mut q = executions::table
                .filter(executions::org_id.eq(org.as_str()))
                .select(ExecutionRow::as_select())
                .order(executions::id.desc())
                .limit(fetch)
                .into_boxed();
            if !statuses.is_empty() {
                q = q.filter(executions::status.eq_any(statuses));
            }
            if let Some(from) = f.from {
                q = q.filter(executions::created_at.ge(from));
            }
            if let Some(to) = f.to {
                q = q.filter(executions::created_at.lt(to));
            }
            if let Some(p) = &f.project_id {
                q = q.filter(executions::project_id.eq(p.as_str()));
            }
            if let Some(m) = &f.model {
                q = q.filter(executions::model.eq(m.as_str()));
            }
            if let Some(c) = &f.cursor {
                q = q.filter(executions::id.lt(c.as_str()));
            }
            q.load(conn).await
        })?)
    }

    /// A page of `org`'s usage records, newest first.
    ///
    /// # Errors
    /// The data layer failed.
    pub async fn usage(&self, org: &OrgId, filter: &UsageFilter) -> Result<UsagePage, ExecutionError> {
        let limit = filter.limit.clamp(1, 1000);
        let billed = [ExecutionStatus::Succeeded.as_str(), ExecutionStatus::Canceled.as_str()];
        let rows = self.page_rows(org, &billed, filter, limit + 1).await?;
        let more = rows.len() > limit;
        let records: Vec<UsageRecord> =
            rows.into_iter().take(limit).map(UsageRecord::try_from).collect::<Result<_, _>>()?;
        let next_cursor = if more { records.last().map(|r| r.execution_id.to_string()) } else { None };
        Ok(UsagePage { records, next_cursor })
    }

    /// A page of `org`'s executions, newest first, whatever their status
    /// (or of the statuses asked for).
    ///
    /// # Errors
    /// The data layer failed.
    pub async fn list(&self, org: &OrgId, filter: &ExecutionFilter) -> Result<ExecutionPage, ExecutionError> {
        let limit = filter.limit.clamp(1, 100);
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        let rows = self.page_rows(org, &statuses, filter, limit + 1).await?;
        let more = rows.len() > limit;
        let executions: Vec<crate::Execution> =
            rows.into_iter().take(limit).map(crate::Execution::try_from).collect::<Result<_, _>>()?;
        let next_cursor = if more { executions.last().map(|e| e.id.to_string()) } else { None };
        Ok(ExecutionPage { executions, next_cursor })
    }
}
