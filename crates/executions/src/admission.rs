//! Admission: the request's profile, the route plan, the hold of the worst
//! case, and the execution record (written while the provider is called).

use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDateTime;
use diesel_async::RunQueryDsl;
use modelroute_db::db_run;
use modelroute_db::schema::executions;
use modelroute_ledger::{Hold, HoldRequest, Ledger, LedgerError};
use modelroute_providers::{ChatRequest, ProviderRegistry};
use modelroute_routing::{Candidate, Preferences, RequestProfile, estimate_input_tokens};
use modelroute_types::{ExecutionId, failpoint, time};

use crate::attempts::DecisionRecord;
use crate::executor::{Caller, Executor};
use crate::leases::Lease;
use crate::record::ExecutionRow;
use crate::{ExecutionError, ExecutionStatus};

/// How many ranked routes the hold tries to cover, so that fallbacks can run
/// within it. When the balance cannot cover them, the hold covers the first
/// route only and fallbacks are limited to routes as cheap as it.
const HOLD_COVERS_ROUTES: usize = 3;

/// Prompt tokens the hold reserves per image: above what any provider bills
/// for one (OpenAI ≤ 1,105 at high detail, Anthropic ≤ ~1,600).
const HOLD_TOKENS_PER_IMAGE: u64 = 1_600;

/// What routing needs to know about `request`.
pub(crate) fn profile(request: &ChatRequest, stream: bool, preferences: Preferences) -> RequestProfile {
    let texts = request.prompt_texts();
    let images = u64::try_from(request.image_count()).unwrap_or(u64::MAX);
    RequestProfile {
        input_tokens: estimate_input_tokens(texts.iter().map(String::as_str))
            .saturating_add(images.saturating_mul(HOLD_TOKENS_PER_IMAGE)),
        max_output_tokens: request.max_tokens,
        stream,
        tools: !request.tools.is_empty(),
        json_mode: request.response_format.is_some(),
        images: images > 0,
        preferences,
    }
}

/// An admitted execution: hold placed, record written.
pub(crate) struct Admitted {
    /// The providers as they were at admission (a reload does not pull them away).
    pub(crate) providers: Arc<ProviderRegistry>,
    /// The price table's version the routes were priced from.
    pub(crate) price_version: String,
    pub(crate) id: ExecutionId,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) hold: Hold,
    /// The routes to try, in order; every one's worst case fits the hold.
    pub(crate) candidates: Vec<Candidate>,
    /// The decision record; attempts are appended as they happen.
    pub(crate) decision: DecisionRecord,
    /// The execution record's insert, until it has been awaited.
    pub(crate) recording: Option<tokio::task::JoinHandle<Result<(), ExecutionError>>>,
    /// Keeps the hold from expiring while the execution runs.
    pub(crate) _lease: Lease,
}

impl<L: Ledger + 'static> Executor<L> {
    /// Plans, holds and records. Writes nothing unless the hold succeeds.
    pub(crate) async fn admit(
        &self,
        caller: &Caller,
        request: &ChatRequest,
        stream: bool,
    ) -> Result<Admitted, ExecutionError> {
        if request.messages.is_empty() {
            return Err(ExecutionError::InvalidRequest {
                param: "messages",
                message: "messages must not be empty".into(),
            });
        }
        let inner = &self.inner;
        let preferences = caller.preferences.apply_to(inner.preferences.get(&inner.pool, &caller.org_id).await?);
        let profile = profile(request, stream, preferences);
        let table = self.table();
        let plan = table.catalogue.plan(&request.model, &profile, &inner.health, Instant::now())?;
        inner.budget.deposit();
        let first = plan.candidates.as_slice().first().ok_or(ExecutionError::ProviderMissing)?.clone();
        let id = ExecutionId::new();
        // Hold enough for the first few routes when the balance allows, so a
        // fallback never needs more than the hold; else just the first.
        let cover =
            plan.candidates.iter().take(HOLD_COVERS_ROUTES).map(|c| c.worst_case).max().unwrap_or(first.worst_case);
        let hold_for = |amount| HoldRequest {
            org_id: caller.org_id.clone(),
            amount,
            reference: id.to_string(),
            idempotency_key: Some(format!("execution:{id}")),
            expires_in: Some(inner.leases.lease()),
        };
        let hold = match inner.ledger.hold(hold_for(cover)).await {
            Err(LedgerError::InsufficientBalance { .. }) if cover > first.worst_case => {
                inner.ledger.hold(hold_for(first.worst_case)).await?
            }
            other => other?,
        };
        let lease = inner.leases.take(hold.id.clone());
        self.keep_leases();
        failpoint("executions.after_hold");
        let candidates: Vec<Candidate> = plan.candidates.into_iter().filter(|c| c.worst_case <= hold.amount).collect();
        let now = time::now();
        let row = ExecutionRow {
            id: id.to_string(),
            org_id: caller.org_id.to_string(),
            project_id: caller.project_id.to_string(),
            api_key_id: caller.api_key_id.to_string(),
            model: request.model.clone(),
            route_id: Some(first.route.public_id.clone()),
            status: ExecutionStatus::Running.as_str().to_owned(),
            stream,
            hold_id: Some(hold.id.to_string()),
            hold_amount: hold.amount.units(),
            cost: None,
            input_tokens: None,
            output_tokens: None,
            finish_reason: None,
            error_code: None,
            error_message: None,
            decision: serde_json::to_string(&plan.decision).ok(),
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            input_price: None,
            output_price: None,
            price_version: None,
            request_price: None,
            settlement_entry_id: None,
        };
        // The record is written while the provider is called: the hold is
        // already placed (the admission decision), and nothing reaches the
        // client, and nothing is settled, before the record exists.
        let pool = inner.pool.clone();
        let recording = tokio::spawn(async move {
            let inserted: Result<usize, ExecutionError> = async {
                Ok(db_run!(pool, |conn| diesel::insert_into(executions::table).values(&row).execute(conn).await)?)
            }
            .await;
            inserted.map(drop)
        });
        let decision = DecisionRecord { plan: plan.decision, attempts: Vec::new() };
        Ok(Admitted {
            price_version: table.catalogue.price_version().to_owned(),
            providers: Arc::clone(&table.providers),
            id,
            created_at: now,
            hold,
            candidates,
            decision,
            recording: Some(recording),
            _lease: lease,
        })
    }

    /// Waits for the execution record. When it could not be written, the
    /// hold is released and the execution ends with that error: nothing is
    /// charged for an execution without a record.
    pub(crate) async fn recorded(&self, admitted: &mut Admitted) -> Result<(), ExecutionError> {
        let Some(recording) = admitted.recording.take() else { return Ok(()) };
        let result = recording.await.map_err(|_| ExecutionError::TaskFailed).and_then(|r| r);
        if result.is_err()
            && let Err(release) = self.inner.ledger.release(&admitted.hold.id).await
        {
            tracing::error!(hold_id = %admitted.hold.id, error = %release, "releasing the hold of an unrecorded execution failed; the sweeper will");
        }
        result
    }
}
