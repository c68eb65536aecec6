//! Admission: the request's profile, the route plan, the hold of the worst
//! case, and the execution record (written while the provider is called).

use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDateTime;
use modelroute_ledger::{Hold, HoldRequest, Ledger, LedgerError};
use modelroute_providers::{ChatRequest, ProviderRegistry};
use modelroute_routing::{
    Candidate, Catalogue, Decision, Health, Preferences, RequestProfile, RoutingError, estimate_input_tokens,
};
use modelroute_types::{ExecutionId, failpoint, time};

use crate::attempts::{ChainLink, DecisionRecord};
use crate::executor::{Caller, Executor, RouteTable};
use crate::leases::Lease;
use crate::preferences::MAX_FALLBACKS;
use crate::record::{AsyncRow, ExecutionRow};
use crate::store::{self, Write};
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
    /// Keeps the hold from expiring while the execution runs (none for an
    /// asynchronous execution: its hold lasts until its deadline).
    pub(crate) _lease: Option<Lease>,
    /// Keep the answer's text for the record (asynchronous executions).
    pub(crate) keep_output: bool,
    /// The answer's text, when kept.
    pub(crate) output: Option<String>,
    /// Whether the answer streams.
    pub(crate) stream: bool,
    /// Every attempt and wait happens before this (`[routing.retry] deadline_ms`).
    pub(crate) deadline: tokio::time::Instant,
}

/// The plans of a model and its fallback models, joined.
struct Planned {
    /// The first model's plan that has candidates (the requested model's, unless it had none).
    plan: Decision,
    /// The fallback models' plans after it.
    fallback_plans: Vec<Decision>,
    /// Every model of the chain, in order, and why one could not serve.
    chain: Vec<ChainLink>,
    /// Every candidate, in order: the first model's, then each fallback's.
    candidates: Vec<Candidate>,
    /// The candidates the hold should cover when the balance allows.
    covered: Vec<Candidate>,
}

/// Plans `model`, then each of `fallbacks` (skipping a repeat of `model`).
/// The requested model must exist (404 otherwise); a fallback must too (a
/// 400 naming `models`). A model that cannot serve this request is passed
/// over when a later one can; when none can, the requested model's error.
fn plan_chain(
    catalogue: &Catalogue,
    model: &str,
    fallbacks: &[String],
    profile: &RequestProfile,
    health: &Health,
) -> Result<Planned, ExecutionError> {
    let fallbacks: Vec<&String> = fallbacks.iter().filter(|m| m.as_str() != model).collect();
    if fallbacks.len() > MAX_FALLBACKS {
        return Err(ExecutionError::InvalidRequest {
            param: "models",
            message: format!("at most {MAX_FALLBACKS} fallback models"),
        });
    }
    if let Some(unknown) = fallbacks.iter().find(|m| catalogue.model(m).is_none()) {
        return Err(ExecutionError::InvalidRequest {
            param: "models",
            message: format!("the fallback model `{unknown}` does not exist"),
        });
    }
    let now = Instant::now();
    let mut first_error = None;
    let mut plans = Vec::new();
    let mut chain = Vec::new();
    for slug in std::iter::once(model).chain(fallbacks.iter().map(|s| s.as_str())) {
        match catalogue.plan(slug, profile, health, now) {
            Ok(plan) => {
                chain.push(ChainLink { model: slug.to_owned(), unavailable: None });
                plans.push(plan);
            }
            // The requested model must exist; a fallback's absence was checked above.
            Err(e @ RoutingError::ModelNotFound(_)) => return Err(e.into()),
            Err(e) => {
                chain.push(ChainLink { model: slug.to_owned(), unavailable: Some(e.to_string()) });
                first_error.get_or_insert(e);
            }
        }
    }
    let mut plans = plans.into_iter();
    let Some(first) = plans.next() else {
        return Err(first_error.map_or(ExecutionError::ProviderMissing, ExecutionError::from));
    };
    let mut covered: Vec<Candidate> = first.candidates.iter().take(HOLD_COVERS_ROUTES).cloned().collect();
    let mut candidates = first.candidates;
    let mut fallback_plans = Vec::new();
    for plan in plans {
        covered.extend(plan.candidates.as_slice().first().cloned());
        candidates.extend(plan.candidates);
        fallback_plans.push(plan.decision);
    }
    if chain.len() == 1 {
        chain.clear(); // no fallbacks: nothing to say
    }
    Ok(Planned { plan: first.decision, fallback_plans, chain, candidates, covered })
}

/// How an execution is admitted.
pub(crate) enum AdmitAs<'a> {
    /// Answered in the request: `running` at once, its hold on a renewed lease.
    Now {
        /// Whether the answer streams.
        stream: bool,
    },
    /// Submitted to run later: `queued`, its hold lasting until `hold_until`.
    Queued(&'a crate::queued::QueuedFields),
}

impl<L: Ledger + 'static> Executor<L> {
    /// The plan of `request` for `caller`: the org's preferences narrowed
    /// by the request's, the model and its fallbacks. With `unstreamed`,
    /// routes that do not stream serve when no streaming one can (an
    /// asynchronous execution runs on them without).
    async fn plan_request(
        &self,
        caller: &Caller,
        request: &ChatRequest,
        stream: bool,
        unstreamed: bool,
    ) -> Result<(Planned, Arc<RouteTable>), ExecutionError> {
        if request.messages.is_empty() {
            return Err(ExecutionError::InvalidRequest {
                param: "messages",
                message: "messages must not be empty".into(),
            });
        }
        let inner = &self.inner;
        let org = inner.preferences.routing(&inner.pool, &caller.org_id).await?;
        let preferences = caller.preferences.apply_to(org.preferences);
        let profile = profile(request, stream, preferences);
        let table = self.table();
        let fallbacks = if caller.fallback_models.is_empty() {
            org.fallbacks.get(&request.model).map_or(&[][..], Vec::as_slice)
        } else {
            caller.fallback_models.as_slice()
        };
        let planned = match plan_chain(&table.catalogue, &request.model, fallbacks, &profile, &inner.health) {
            // An asynchronous provider's routes do not stream; a queued
            // execution runs on them without.
            Err(ExecutionError::Routing(RoutingError::NoRoute { .. })) if unstreamed => {
                let profile = RequestProfile { stream: false, ..profile };
                plan_chain(&table.catalogue, &request.model, fallbacks, &profile, &inner.health)?
            }
            other => other?,
        };
        Ok((planned, table))
    }

    /// An admitted state for a recorded asynchronous execution about to
    /// run: a fresh plan (the route table may have changed since it was
    /// submitted) of the routes its `hold` covers.
    pub(crate) async fn plan_for(
        &self,
        caller: &Caller,
        request: &ChatRequest,
        hold: Hold,
        id: ExecutionId,
        created_at: NaiveDateTime,
    ) -> Result<Admitted, ExecutionError> {
        let (planned, table) = self.plan_request(caller, request, true, true).await?;
        self.keep_probing();
        let candidates: Vec<Candidate> =
            planned.candidates.into_iter().filter(|c| c.worst_case <= hold.amount).collect();
        if candidates.is_empty() {
            return Err(ExecutionError::Upstream {
                canonical: modelroute_routing::CanonicalError::Overloaded,
                message: "no route of this model fits the execution's hold any more".into(),
                client_status: None,
            });
        }
        Ok(Admitted {
            price_version: table.catalogue.price_version().to_owned(),
            providers: Arc::clone(&table.providers),
            id,
            created_at,
            hold,
            candidates,
            decision: DecisionRecord {
                plan: planned.plan,
                chain: planned.chain,
                fallback_plans: planned.fallback_plans,
                attempts: Vec::new(),
            },
            recording: None,
            _lease: None,
            keep_output: true,
            output: None,
            stream: true,
            deadline: tokio::time::Instant::now() + std::time::Duration::from_millis(self.inner.retry.deadline_ms),
        })
    }

    /// Plans, holds and records. Writes nothing unless the hold succeeds.
    pub(crate) async fn admit(
        &self,
        caller: &Caller,
        request: &ChatRequest,
        admit_as: AdmitAs<'_>,
    ) -> Result<Admitted, ExecutionError> {
        let (stream, queued) = match admit_as {
            AdmitAs::Now { stream } => (stream, None),
            // Queued executions stream when they run (output as it comes).
            AdmitAs::Queued(fields) => (true, Some(fields)),
        };
        let (planned, table) = self.plan_request(caller, request, stream, queued.is_some()).await?;
        let inner = &self.inner;
        inner.budget.deposit();
        let first = planned.candidates.as_slice().first().ok_or(ExecutionError::ProviderMissing)?.clone();
        let id = ExecutionId::new();
        // Hold enough for the first few routes, and the first of each
        // fallback model, when the balance allows, so a fallback never needs
        // more than the hold; else just the first.
        let cover = planned.covered.iter().map(|c| c.worst_case).max().unwrap_or(first.worst_case);
        let hold_for = |amount| HoldRequest {
            org_id: caller.org_id.clone(),
            amount,
            reference: id.to_string(),
            idempotency_key: Some(format!("execution:{id}")),
            expires_in: Some(queued.map_or_else(|| inner.leases.lease(), |q| q.hold_for)),
        };
        let hold = match inner.ledger.hold(hold_for(cover)).await {
            Err(LedgerError::InsufficientBalance { .. }) if cover > first.worst_case => {
                inner.ledger.hold(hold_for(first.worst_case)).await?
            }
            other => other?,
        };
        let lease = if queued.is_some() {
            None
        } else {
            let lease = inner.leases.take(hold.id.clone());
            self.keep_leases();
            Some(lease)
        };
        self.keep_probing();
        failpoint("executions.after_hold");
        let candidates: Vec<Candidate> =
            planned.candidates.into_iter().filter(|c| c.worst_case <= hold.amount).collect();
        let decision = DecisionRecord {
            plan: planned.plan,
            chain: planned.chain,
            fallback_plans: planned.fallback_plans,
            attempts: Vec::new(),
        };
        let now = time::now();
        let row = ExecutionRow {
            id: id.to_string(),
            org_id: caller.org_id.to_string(),
            project_id: caller.project_id.to_string(),
            api_key_id: caller.api_key_id.to_string(),
            model: request.model.clone(),
            route_id: Some(first.route.public_id.clone()),
            status: if queued.is_some() { ExecutionStatus::Queued } else { ExecutionStatus::Running }
                .as_str()
                .to_owned(),
            // A queued execution's answer goes into its record, not to a client.
            stream: stream && queued.is_none(),
            hold_id: Some(hold.id.to_string()),
            hold_amount: hold.amount.units(),
            cost: None,
            input_tokens: None,
            output_tokens: None,
            finish_reason: None,
            error_code: None,
            error_message: None,
            decision: serde_json::to_string(&decision).ok(),
            created_at: now,
            started_at: queued.is_none().then_some(now),
            finished_at: None,
            input_price: None,
            output_price: None,
            price_version: None,
            request_price: None,
            settlement_entry_id: None,
            mode: if queued.is_some() { "async" } else { "sync" }.to_owned(),
        };
        // The record is written while the provider is called: the hold is
        // already placed (the admission decision), and nothing reaches the
        // client, and nothing is settled, before the record exists.
        let pool = inner.pool.clone();
        let extra = queued.map(|q| Box::new(AsyncRow { execution_id: id.to_string(), ..q.row.clone() }));
        let recording =
            tokio::spawn(
                async move { store::write(&pool, Write::Insert { row: Box::new(row), extra }).await.map(drop) },
            );
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
            keep_output: queued.is_some(),
            output: None,
            stream,
            deadline: tokio::time::Instant::now() + std::time::Duration::from_millis(inner.retry.deadline_ms),
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
