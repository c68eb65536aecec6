//! The stored execution record.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use modelroute_db::schema::{async_executions, executions};
use modelroute_types::{ExecutionId, HoldId, Money};
use serde::Serialize;

/// Where an execution is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// Accepted, not started.
    Queued,
    /// The provider is working.
    Running,
    /// Finished with an answer; settled.
    Succeeded,
    /// Finished without an answer; hold released.
    Failed,
    /// The client went away or canceled.
    Canceled,
}

impl ExecutionStatus {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }
}

impl TryFrom<&str> for ExecutionStatus {
    type Error = modelroute_db::DbError;

    /// The stored name back; an unknown one is an error, never `Running`.
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            other => return Err(modelroute_db::DbError::unknown("execution status", other)),
        })
    }
}

#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = executions)]
pub(crate) struct ExecutionRow {
    pub(crate) id: String,
    pub(crate) org_id: String,
    pub(crate) project_id: String,
    pub(crate) api_key_id: String,
    pub(crate) model: String,
    pub(crate) route_id: Option<String>,
    pub(crate) status: String,
    pub(crate) stream: bool,
    pub(crate) hold_id: Option<String>,
    pub(crate) hold_amount: i64,
    pub(crate) cost: Option<i64>,
    pub(crate) input_tokens: Option<i64>,
    pub(crate) output_tokens: Option<i64>,
    pub(crate) finish_reason: Option<String>,
    pub(crate) error_code: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) decision: Option<String>,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) started_at: Option<NaiveDateTime>,
    pub(crate) finished_at: Option<NaiveDateTime>,
    pub(crate) input_price: Option<i64>,
    pub(crate) output_price: Option<i64>,
    pub(crate) price_version: Option<String>,
    pub(crate) request_price: Option<i64>,
    pub(crate) settlement_entry_id: Option<String>,
    pub(crate) mode: String,
}

/// What an asynchronous execution has besides its record.
#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = async_executions)]
pub(crate) struct AsyncRow {
    pub(crate) execution_id: String,
    pub(crate) request: Option<String>,
    pub(crate) deadline_at: NaiveDateTime,
    pub(crate) output: Option<String>,
    pub(crate) webhook_url: Option<String>,
    pub(crate) webhook_events: Option<String>,
    pub(crate) cancel_requested_at: Option<NaiveDateTime>,
    pub(crate) notified_status: Option<String>,
}

/// An execution as its org sees it. Routes appear by opaque id only.
#[derive(Clone, Debug, Serialize)]
pub struct Execution {
    /// Its id.
    pub id: ExecutionId,
    /// The model slug.
    pub model: String,
    /// The opaque id of the route that served it.
    pub route: Option<String>,
    /// Where it is.
    pub status: ExecutionStatus,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// The hold placed for its worst case.
    pub hold_id: Option<HoldId>,
    /// The hold's amount.
    pub hold_amount: Money,
    /// What was charged, once settled.
    pub cost: Option<Money>,
    /// Prompt tokens.
    pub input_tokens: Option<u64>,
    /// Generated tokens.
    pub output_tokens: Option<u64>,
    /// Why generation ended.
    pub finish_reason: Option<String>,
    /// The error code, when it failed.
    pub error_code: Option<String>,
    /// The error message, when it failed.
    pub error_message: Option<String>,
    /// The routing decision's evidence (customer-safe JSON).
    pub decision: Option<serde_json::Value>,
    /// When it was accepted.
    pub created_at: NaiveDateTime,
    /// When the provider was called.
    pub started_at: Option<NaiveDateTime>,
    /// When it finished.
    pub finished_at: Option<NaiveDateTime>,
    /// `sync` (answered in its request) or `async` (`POST /v1/executions`).
    pub mode: String,
    /// When an asynchronous execution must have ended by.
    pub deadline_at: Option<NaiveDateTime>,
    /// What it produced (asynchronous): `{"text": …}` or `{"files": [ids]}`.
    pub output: Option<serde_json::Value>,
    /// Its own webhook URL.
    pub webhook_url: Option<String>,
    /// The events its webhook wants (empty: all).
    pub webhook_events: Vec<String>,
    /// When a cancel was asked for.
    pub cancel_requested_at: Option<NaiveDateTime>,
    /// The org and project (for the platform's use; not rendered).
    #[serde(skip)]
    pub org_id: modelroute_types::OrgId,
    /// Its project.
    #[serde(skip)]
    pub project_id: modelroute_types::ProjectId,
}

impl TryFrom<ExecutionRow> for Execution {
    type Error = modelroute_db::DbError;

    fn try_from(r: ExecutionRow) -> Result<Self, Self::Error> {
        Self::try_from((r, None))
    }
}

impl TryFrom<(ExecutionRow, Option<AsyncRow>)> for Execution {
    type Error = modelroute_db::DbError;

    fn try_from((r, a): (ExecutionRow, Option<AsyncRow>)) -> Result<Self, Self::Error> {
        let tokens = |t: Option<i64>| t.and_then(|t| u64::try_from(t).ok());
        Ok(Self {
            id: ExecutionId::from_trusted(r.id),
            model: r.model,
            route: r.route_id,
            status: ExecutionStatus::try_from(r.status.as_str())?,
            stream: r.stream,
            hold_id: r.hold_id.map(HoldId::from_trusted),
            hold_amount: Money::from_units(r.hold_amount),
            cost: r.cost.map(Money::from_units),
            input_tokens: tokens(r.input_tokens),
            output_tokens: tokens(r.output_tokens),
            finish_reason: r.finish_reason,
            error_code: r.error_code,
            error_message: r.error_message,
            decision: r.decision.and_then(|d| serde_json::from_str(&d).ok()),
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            mode: r.mode,
            deadline_at: a.as_ref().map(|a| a.deadline_at),
            output: a.as_ref().and_then(|a| a.output.as_deref()).and_then(|o| serde_json::from_str(o).ok()),
            webhook_url: a.as_ref().and_then(|a| a.webhook_url.clone()),
            webhook_events: a
                .as_ref()
                .and_then(|a| a.webhook_events.as_deref())
                .map(|e| e.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            cancel_requested_at: a.as_ref().and_then(|a| a.cancel_requested_at),
            org_id: modelroute_types::OrgId::from_trusted(r.org_id),
            project_id: modelroute_types::ProjectId::from_trusted(r.project_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ExecutionStatus;

    #[test]
    fn a_stored_status_reads_back_and_an_unknown_one_is_an_error() {
        use ExecutionStatus::{Canceled, Failed, Queued, Running, Succeeded};
        for s in [Queued, Running, Succeeded, Failed, Canceled] {
            assert_eq!(ExecutionStatus::try_from(s.as_str()).ok(), Some(s));
        }
        // Never quietly `running` (which recovery would then end as failed).
        let err = ExecutionStatus::try_from("paused").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("unknown stored execution status `paused`"));
    }
}
