use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::StreamExt as _;
use modelroute_db::schema::executions;
use modelroute_db::{DbPool, db_run};
use modelroute_ledger::{Hold, HoldRequest, HoldStatus, Ledger, LedgerError, Resolution};
use modelroute_providers::{
    ChatRequest, ChatResponse, FinishReason, Permit, Provider, ProviderClient, ProviderError, ProviderErrorKind,
    ProviderRegistry, StreamEvent, Usage, UsageEstimate,
};
use modelroute_routing::{
    Candidate, CanonicalError, Catalogue, Classification, ErrorRules, Health, Preferences, RequestProfile, RetryBudget,
    RetryConfig, UpstreamFailure, estimate_input_tokens,
};
use modelroute_types::{ApiKeyId, ErrorCode, ExecutionId, Money, OrgId, ProjectId, failpoint, time};
use tokio::sync::{mpsc, oneshot};

use crate::leases::{KeeperRunning, Lease, Leases};
use crate::preferences::{PreferenceStore, RequestPreferences};
use crate::record::ExecutionRow;
use crate::{Execution, ExecutionError, ExecutionStatus};

/// Applies `changes` to the execution row `id`; evaluates to
/// `Result<usize, ExecutionError>`. A macro so the update is compiled per backend.
macro_rules! update_execution {
    ($pool:expr, $id:expr, $changes:expr) => {{
        let pool = &$pool;
        let (id, changes) = ($id, $changes);
        let result: Result<usize, ExecutionError> = async {
            Ok(db_run!(pool, |conn| diesel::update(executions::table.find(id)).set(changes).execute(conn).await)?)
        }
        .await;
        result
    }};
}

/// Who is paying for an execution.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The tenant whose balance pays.
    pub org_id: OrgId,
    /// The project.
    pub project_id: ProjectId,
    /// The API key used.
    pub api_key_id: ApiKeyId,
    /// What this request asks of routing on top of the org's preferences.
    pub preferences: RequestPreferences,
}

/// A finished non-streamed execution.
#[derive(Clone, Debug)]
pub struct Completed {
    /// The execution's id.
    pub execution_id: ExecutionId,
    /// When it was accepted.
    pub created_at: NaiveDateTime,
    /// The provider's answer.
    pub response: ChatResponse,
    /// What was charged.
    pub cost: Money,
}

/// One event of a streamed execution.
#[derive(Debug)]
pub enum StreamItem {
    /// More text.
    Delta(String),
    /// Part of a tool call (see [`StreamEvent::ToolCallDelta`]).
    ToolCallDelta {
        /// Which call.
        index: u32,
        /// Its id (first delta only).
        id: Option<String>,
        /// The tool (first delta only).
        name: Option<String>,
        /// More argument text.
        arguments: String,
    },
    /// Success: settled.
    Done {
        /// Why generation ended.
        finish_reason: FinishReason,
        /// Token counts.
        usage: Usage,
        /// What was charged.
        cost: Money,
    },
    /// Failure after the stream started; the hold was released.
    Failed(ExecutionError),
}

/// A streamed execution that has been admitted (the hold is placed).
#[derive(Debug)]
pub struct StreamingExecution {
    /// The execution's id.
    pub execution_id: ExecutionId,
    /// When it was accepted.
    pub created_at: NaiveDateTime,
    /// The events, ending with `Done` or `Failed`.
    pub events: mpsc::Receiver<StreamItem>,
}

/// Runs executions. Cheap to clone.
#[derive(Debug)]
pub struct Executor<L> {
    inner: Arc<Inner<L>>,
}

impl<L> Clone for Executor<L> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

#[derive(Debug)]
struct Inner<L> {
    pool: DbPool,
    ledger: L,
    /// Swapped whole on reload; an execution keeps the one it was admitted with.
    table: RwLock<Arc<RouteTable>>,
    health: Arc<Health>,
    rules: Arc<ErrorRules>,
    retry: RetryConfig,
    preferences: PreferenceStore,
    budget: RetryBudget,
    /// The leases of running executions' holds.
    leases: Arc<Leases>,
}

/// The catalogue and the providers its routes name: replaced together.
#[derive(Debug)]
struct RouteTable {
    catalogue: Arc<Catalogue>,
    providers: Arc<ProviderRegistry>,
}

/// The lease on an execution's hold unless configured otherwise.
const DEFAULT_HOLD_LEASE: Duration = Duration::from_secs(120);

/// How many ranked routes the hold tries to cover, so that fallbacks can run
/// within it. When the balance cannot cover them, the hold covers the first
/// route only and fallbacks are limited to routes as cheap as it.
const HOLD_COVERS_ROUTES: usize = 3;

/// Prompt tokens the hold reserves per image: above what any provider bills
/// for one (OpenAI ≤ 1,105 at high detail, Anthropic ≤ ~1,600).
const HOLD_TOKENS_PER_IMAGE: u64 = 1_600;

/// What routing needs to know about `request`.
fn profile(request: &ChatRequest, stream: bool, preferences: Preferences) -> RequestProfile {
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
struct Admitted {
    /// The providers as they were at admission (a reload does not pull them away).
    providers: Arc<ProviderRegistry>,
    /// The price table's version the routes were priced from.
    price_version: String,
    id: ExecutionId,
    created_at: NaiveDateTime,
    hold: Hold,
    /// The routes to try, in order; every one's worst case fits the hold.
    candidates: Vec<Candidate>,
    /// The decision record; attempts are appended as they happen.
    decision: serde_json::Value,
    /// The execution record's insert, until it has been awaited.
    recording: Option<tokio::task::JoinHandle<Result<(), ExecutionError>>>,
    /// Keeps the hold from expiring while the execution runs.
    _lease: Lease,
}

/// One try of one route, as recorded in the decision.
#[derive(serde::Serialize)]
struct Attempt<'a> {
    route: &'a str,
    outcome: &'static str,
    error_code: Option<&'static str>,
}

impl Admitted {
    fn record_attempt(&mut self, candidate: &Candidate, failure: Option<CanonicalError>) {
        let outcome = if failure.is_some() { "failed" } else { "succeeded" };
        self.push_attempt(Attempt {
            route: &candidate.route.public_id,
            outcome,
            error_code: failure.map(CanonicalError::as_str),
        });
    }

    /// The error when no route could even be tried (all full or open).
    fn nothing_tried() -> ExecutionError {
        ExecutionError::Upstream {
            canonical: CanonicalError::Overloaded,
            message: "every route of this model is at capacity or failing; retry shortly".into(),
            client_status: None,
        }
    }

    fn record_skip(&mut self, candidate: &Candidate, why: &'static str) {
        self.push_attempt(Attempt { route: &candidate.route.public_id, outcome: "skipped", error_code: Some(why) });
    }

    fn push_attempt(&mut self, attempt: Attempt<'_>) {
        if let (Some(obj), Ok(a)) = (self.decision.as_object_mut(), serde_json::to_value(attempt))
            && let Some(list) = obj.entry("attempts").or_insert_with(|| serde_json::json!([])).as_array_mut()
        {
            list.push(a);
        }
    }
}

/// The client-facing error for a classified failure. The provider's own
/// message is passed on only when the client must change its request.
fn upstream_error(class: Classification, e: &ProviderError) -> ExecutionError {
    let canonical = class.canonical;
    let message = match (canonical.client_needs_upstream_message(), &e.upstream_message) {
        (true, Some(m)) => format!("the model rejected the request: {m}"),
        (true, None) => e.message.clone(),
        (false, _) => match canonical {
            CanonicalError::RateLimited | CanonicalError::Overloaded => "the model is overloaded; retry shortly".into(),
            CanonicalError::Timeout => "the model did not answer in time".into(),
            _ => e.message.clone(),
        },
    };
    ExecutionError::Upstream { canonical, message, client_status: class.client_status }
}

/// The request as one route's provider receives it.
fn upstream_request(request: &ChatRequest, candidate: &Candidate) -> ChatRequest {
    let mut upstream = request.clone();
    upstream.model.clone_from(&candidate.route.upstream_model);
    upstream.max_tokens = Some(candidate.max_output_tokens);
    upstream
}

impl<L: Ledger + 'static> Executor<L> {
    /// An executor over these parts.
    #[must_use]
    pub fn new(
        pool: DbPool,
        ledger: L,
        catalogue: Arc<Catalogue>,
        providers: Arc<ProviderRegistry>,
        health: Arc<Health>,
        rules: Arc<ErrorRules>,
        retry: RetryConfig,
    ) -> Self {
        let budget = RetryBudget::new(retry.budget_percent, retry.budget_min_per_second);
        Self {
            inner: Arc::new(Inner {
                pool,
                ledger,
                table: RwLock::new(Arc::new(RouteTable { catalogue, providers })),
                health,
                rules,
                retry,
                preferences: PreferenceStore::default(),
                budget,
                leases: Arc::new(Leases::new(DEFAULT_HOLD_LEASE)),
            }),
        }
    }

    /// The same, placing each execution's hold with an expiry `lease` away
    /// and renewing it every third of `lease` while the execution runs
    /// (`[ledger] hold_timeout_secs` on the server).
    #[must_use]
    pub fn with_hold_lease(self, lease: Duration) -> Self {
        self.inner.leases.set_lease(lease);
        self
    }

    /// Starts the task that renews the leases of running executions' holds,
    /// unless it runs. It holds the executor weakly: it ends with it.
    fn keep_leases(&self) {
        let leases = &self.inner.leases;
        if !leases.claim_keeper() {
            return;
        }
        let running = KeeperRunning(Arc::clone(leases));
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let _running = running;
            loop {
                let every = match weak.upgrade() {
                    Some(inner) => inner.leases.renew_every(),
                    None => return,
                };
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                let holds = inner.leases.holds();
                if holds.is_empty() {
                    continue;
                }
                let lease = chrono::Duration::from_std(inner.leases.lease()).unwrap_or(chrono::Duration::MAX);
                let until = time::now().checked_add_signed(lease).unwrap_or(NaiveDateTime::MAX);
                match inner.ledger.renew(&holds, until).await {
                    Ok(n) => {
                        tracing::debug!(renewed = n, running = holds.len(), "renewed the holds of running executions");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, running = holds.len(), "renewing the holds of running executions failed; retrying");
                    }
                }
            }
        });
    }

    /// What a provider failure means, by the error-mapping rules.
    fn classify(&self, candidate: &Candidate, e: &ProviderError) -> Classification {
        let fallback = match e.kind {
            ProviderErrorKind::Timeout | ProviderErrorKind::FirstTokenTimeout => CanonicalError::Timeout,
            ProviderErrorKind::RateLimited => CanonicalError::RateLimited,
            ProviderErrorKind::InvalidRequest => CanonicalError::InvalidRequest,
            ProviderErrorKind::Unavailable | ProviderErrorKind::StreamCut => CanonicalError::UpstreamError,
        };
        self.inner.rules.classify(&UpstreamFailure {
            provider: &candidate.route.provider,
            status: e.status,
            code: e.upstream_code.as_deref(),
            message: e.upstream_message.as_deref().unwrap_or(&e.message),
            fallback,
        })
    }

    /// A place in the route provider's bulkhead and its breaker's leave to
    /// call; a refusal is recorded as a skipped attempt.
    fn enter(&self, admitted: &mut Admitted, candidate: &Candidate) -> Option<Permit> {
        let Some(permit) = admitted.providers.try_enter(&candidate.route.provider) else {
            admitted.record_skip(candidate, "bulkhead_full");
            return None;
        };
        if !self.inner.health.try_acquire(&candidate.route.id, Instant::now()) {
            admitted.record_skip(candidate, "circuit_open");
            return None;
        }
        Some(permit)
    }

    /// Feeds a call's outcome to the route's breaker and returns the
    /// failure's classification. Whether a failure counts against the route
    /// is the error-mapping rules' call (a rejected request does not).
    fn observe(&self, candidate: &Candidate, error: Option<&ProviderError>) -> Option<Classification> {
        let class = error.map(|e| self.classify(candidate, e));
        let healthy = class.is_none_or(|c| !c.counts_against_breaker);
        self.inner.health.record(&candidate.route.id, healthy, Instant::now());
        class
    }

    fn table(&self) -> Arc<RouteTable> {
        Arc::clone(&self.inner.table.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub(crate) fn pool(&self) -> &DbPool {
        &self.inner.pool
    }

    /// The catalogue in use.
    #[must_use]
    pub fn catalogue(&self) -> Arc<Catalogue> {
        Arc::clone(&self.table().catalogue)
    }

    /// Replaces the catalogue and the providers (a configuration reload).
    /// Executions under way finish with what they were admitted with;
    /// breakers and latency averages are kept for routes that stay.
    pub fn reload(&self, catalogue: Arc<Catalogue>, providers: Arc<ProviderRegistry>) {
        let table = Arc::new(RouteTable { catalogue, providers });
        *self.inner.table.write().unwrap_or_else(std::sync::PoisonError::into_inner) = table;
    }

    /// The org's routing preferences (defaults when it set none).
    ///
    /// # Errors
    /// The data layer failed.
    pub async fn preferences(&self, org: &OrgId) -> Result<Preferences, ExecutionError> {
        self.inner.preferences.get(&self.inner.pool, org).await
    }

    /// Replaces the org's routing preferences.
    ///
    /// # Errors
    /// The data layer failed.
    pub async fn set_preferences(&self, org: &OrgId, preferences: Preferences) -> Result<(), ExecutionError> {
        self.inner.preferences.set(&self.inner.pool, org, preferences).await
    }

    /// Runs a chat request to completion. `request.model` is the public slug.
    ///
    /// # Errors
    /// Routing, admission (insufficient balance) and provider failures. A
    /// failure before the hold writes nothing; one after it releases the hold
    /// and records the failed execution.
    pub async fn run(&self, caller: Caller, request: ChatRequest) -> Result<Completed, ExecutionError> {
        let this = self.clone();
        // Spawned: a disconnecting client drops this future, not the work.
        tokio::spawn(async move { this.run_detached(caller, request).await })
            .await
            .map_err(|_| ExecutionError::TaskFailed)?
    }

    async fn run_detached(&self, caller: Caller, request: ChatRequest) -> Result<Completed, ExecutionError> {
        let mut admitted = self.admit(&caller, &request, false).await?;
        failpoint("executions.before_provider");
        let tried = self
            .call_routes(&mut admitted, &request, async |provider: Arc<ProviderClient>, upstream: ChatRequest, _| {
                provider.chat(&upstream).await
            })
            .await;
        self.recorded(&mut admitted).await?;
        failpoint("executions.before_settle");
        let (candidate, response, _permit) = match tried {
            Ok(ok) => ok,
            Err(e) => {
                self.fail(&admitted, &e).await;
                return Err(e);
            }
        };
        self.observe(&candidate, None);
        admitted.record_attempt(&candidate, None);
        let cost = self
            .settle(&admitted, &candidate, response.usage, response.finish_reason, ExecutionStatus::Succeeded)
            .await?;
        Ok(Completed { execution_id: admitted.id, created_at: admitted.created_at, response, cost })
    }

    /// Tries the admitted routes in order until one answers: each route is
    /// retried with backoff (or its `Retry-After`) while the classification
    /// says retryable and the deadline allows, then the next route is tried.
    /// A failure that is not retryable ends the search.
    async fn call_routes<T>(
        &self,
        admitted: &mut Admitted,
        request: &ChatRequest,
        call: impl AsyncFn(Arc<ProviderClient>, ChatRequest, Duration) -> Result<T, ProviderError>,
    ) -> Result<(Candidate, T, Permit), ExecutionError> {
        let retry = &self.inner.retry;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(retry.deadline_ms);
        let mut last_error = None;
        // After a context-length refusal, only routes with a larger window are worth trying.
        let mut needs_context_above: Option<u32> = None;
        'routes: for candidate in admitted.candidates.clone() {
            let Some(provider) = admitted.providers.get(&candidate.route.provider) else { continue };
            if needs_context_above.is_some_and(|w| candidate.route.context_window <= w) {
                admitted.record_skip(&candidate, "context_too_small");
                continue;
            }
            let first_token =
                Duration::from_millis(candidate.route.first_token_timeout_ms.unwrap_or(retry.first_token_timeout_ms));
            for n in 0.. {
                let Some(permit) = self.enter(admitted, &candidate) else { continue 'routes };
                let started = Instant::now();
                let outcome = match tokio::time::timeout_at(
                    deadline,
                    call(Arc::clone(&provider), upstream_request(request, &candidate), first_token),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(ProviderError::new(ProviderErrorKind::Timeout, "the request's deadline passed")),
                };
                let e = match outcome {
                    Ok(value) => {
                        // Time to the answer, or to a stream's first event.
                        self.inner.health.record_latency(&candidate.route.id, started.elapsed());
                        return Ok((candidate, value, permit));
                    }
                    Err(e) => e,
                };
                drop(permit);
                let class = self.observe(&candidate, Some(&e)).unwrap_or_else(|| self.classify(&candidate, &e));
                admitted.record_attempt(&candidate, Some(class.canonical));
                tracing::warn!(
                    execution_id = %admitted.id, route = %candidate.route.id, attempt = n + 1,
                    canonical = class.canonical.as_str(), status = ?e.status, upstream = ?e.upstream_message,
                    "route failed"
                );
                last_error = Some(upstream_error(class, &e));
                if tokio::time::Instant::now() >= deadline {
                    break 'routes;
                }
                if class.canonical == CanonicalError::ContextLengthExceeded {
                    // Never the same route again; a larger window may take it.
                    needs_context_above = Some(candidate.route.context_window);
                    continue 'routes;
                }
                if e.kind == ProviderErrorKind::FirstTokenTimeout && class.retryable {
                    continue 'routes; // a slow route is left, not waited on twice
                }
                if !class.retryable {
                    break 'routes;
                }
                match retry.backoff(n, fastrand::u64(..), e.retry_after) {
                    Some(wait)
                        if tokio::time::Instant::now() + wait < deadline
                            && self.inner.budget.try_withdraw(Instant::now()) =>
                    {
                        tokio::time::sleep(wait).await;
                    }
                    _ => continue 'routes,
                }
            }
        }
        Err(last_error.unwrap_or_else(Admitted::nothing_tried))
    }

    /// Starts a streamed execution. Returns once the hold is placed; the
    /// answer arrives on [`StreamingExecution::events`].
    ///
    /// # Errors
    /// Routing and admission failures (nothing is written), or a provider
    /// that fails before its first byte (the hold is released).
    pub async fn start_stream(
        &self,
        caller: Caller,
        request: ChatRequest,
    ) -> Result<StreamingExecution, ExecutionError> {
        let (admitted_tx, admitted_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move { this.stream_detached(caller, request, admitted_tx, tx).await });
        let (execution_id, created_at) = admitted_rx.await.map_err(|_| ExecutionError::TaskFailed)??;
        Ok(StreamingExecution { execution_id, created_at, events: rx })
    }

    async fn stream_detached(
        &self,
        caller: Caller,
        request: ChatRequest,
        admitted_tx: oneshot::Sender<Result<(ExecutionId, NaiveDateTime), ExecutionError>>,
        tx: mpsc::Sender<StreamItem>,
    ) {
        let mut admitted = match self.admit(&caller, &request, true).await {
            Ok(a) => a,
            Err(e) => {
                let _ = admitted_tx.send(Err(e));
                return;
            }
        };
        // Retry and fall back only until the first event: once output has
        // reached the client, a second route cannot take over. A route
        // whose first token is late is left for the next one.
        let opened = self
            .call_routes(
                &mut admitted,
                &request,
                async |provider: Arc<ProviderClient>, upstream: ChatRequest, first_token: Duration| {
                    let mut stream = provider.chat_stream(&upstream).await?;
                    let first = match tokio::time::timeout(first_token, stream.next()).await {
                        Err(_) => {
                            return Err(ProviderError::new(
                                ProviderErrorKind::FirstTokenTimeout,
                                "the upstream provider sent no first token in time",
                            ));
                        }
                        Ok(None) => {
                            return Err(ProviderError::new(
                                ProviderErrorKind::StreamCut,
                                "the upstream stream ended before its first event",
                            ));
                        }
                        Ok(Some(first)) => first?,
                    };
                    Ok(futures_util::stream::once(async move { Ok(first) }).chain(stream))
                },
            )
            .await;
        if let Err(e) = self.recorded(&mut admitted).await {
            let _ = admitted_tx.send(Err(e));
            return;
        }
        let (candidate, stream, _permit) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                self.fail(&admitted, &e).await;
                let _ = admitted_tx.send(Err(e));
                return;
            }
        };
        if admitted_tx.send(Ok((admitted.id.clone(), admitted.created_at))).is_err() {
            // The client left before the first byte: nothing reached it, nothing is charged.
            self.finish_unpaid(&admitted, &ExecutionError::ClientClosed, ExecutionStatus::Canceled).await;
            return;
        }
        let mut stream = std::pin::pin!(stream);
        let mut produced = UsageEstimate::of(&request);
        loop {
            let item = match stream.next().await {
                Some(Ok(StreamEvent::Delta(d))) => {
                    produced.add_output(&d);
                    StreamItem::Delta(d)
                }
                Some(Ok(StreamEvent::ToolCallDelta { index, id, name, arguments })) => {
                    produced.add_output(&arguments);
                    StreamItem::ToolCallDelta { index, id, name, arguments }
                }
                Some(Ok(StreamEvent::Done { finish_reason, usage })) => {
                    self.observe(&candidate, None);
                    admitted.record_attempt(&candidate, None);
                    let item = match self
                        .settle(&admitted, &candidate, usage, finish_reason, ExecutionStatus::Succeeded)
                        .await
                    {
                        Ok(cost) => StreamItem::Done { finish_reason, usage, cost },
                        Err(e) => StreamItem::Failed(e),
                    };
                    let _ = tx.send(item).await;
                    return;
                }
                Some(Err(e)) => {
                    let class = self.observe(&candidate, Some(&e)).unwrap_or_else(|| self.classify(&candidate, &e));
                    admitted.record_attempt(&candidate, Some(class.canonical));
                    let e = upstream_error(class, &e);
                    self.fail(&admitted, &e).await;
                    let _ = tx.send(StreamItem::Failed(e)).await;
                    return;
                }
                None => {
                    // Ended without its end marker: a truncated answer is
                    // never a success.
                    let cut = ProviderError::new(
                        ProviderErrorKind::StreamCut,
                        "the upstream stream ended before it was complete",
                    );
                    let class = self.observe(&candidate, Some(&cut)).unwrap_or_else(|| self.classify(&candidate, &cut));
                    admitted.record_attempt(&candidate, Some(class.canonical));
                    let e = upstream_error(class, &cut);
                    self.fail(&admitted, &e).await;
                    let _ = tx.send(StreamItem::Failed(e)).await;
                    return;
                }
            };
            if tx.send(item).await.is_err() {
                // The client went away mid-answer. The provider did the work
                // so far: charge the prompt and the output produced, at the
                // built-in tokenizer's estimate.
                admitted.record_attempt(&candidate, None);
                let _ = self
                    .settle(&admitted, &candidate, produced.produced(), FinishReason::Stop, ExecutionStatus::Canceled)
                    .await;
                return;
            }
        }
    }

    /// Plans, holds and records. Writes nothing unless the hold succeeds.
    async fn admit(&self, caller: &Caller, request: &ChatRequest, stream: bool) -> Result<Admitted, ExecutionError> {
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
        let decision = serde_json::to_value(&plan.decision).unwrap_or_default();
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
    async fn recorded(&self, admitted: &mut Admitted) -> Result<(), ExecutionError> {
        let Some(recording) = admitted.recording.take() else { return Ok(()) };
        let result = recording.await.map_err(|_| ExecutionError::TaskFailed).and_then(|r| r);
        if result.is_err()
            && let Err(release) = self.inner.ledger.release(&admitted.hold.id).await
        {
            tracing::error!(hold_id = %admitted.hold.id, error = %release, "releasing the hold of an unrecorded execution failed; the sweeper will");
        }
        result
    }

    /// Settles the hold for `usage` at the route's prices and records the outcome.
    async fn settle(
        &self,
        admitted: &Admitted,
        served_by: &Candidate,
        usage: Usage,
        finish_reason: FinishReason,
        status: ExecutionStatus,
    ) -> Result<Money, ExecutionError> {
        let route = &served_by.route;
        let cost = route
            .input_price
            .cost(usage.input_tokens)
            .zip(route.output_price.cost(usage.output_tokens))
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|c| c.checked_add(route.request_price))
            .unwrap_or(admitted.hold.amount);
        let resolution = match self.inner.ledger.settle(&admitted.hold.id, cost).await {
            // The hold lapsed under a running execution (its renewals failed
            // for longer than a lease): the work was still delivered.
            Err(LedgerError::AlreadyResolved(HoldStatus::Expired)) => self.settle_late(admitted, cost).await?,
            other => other?,
        };
        failpoint("executions.after_settle");
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let update = (
            executions::status.eq(status.as_str()),
            executions::cost.eq(Some(resolution.charged.units())),
            executions::input_tokens.eq(Some(to_i64(usage.input_tokens))),
            executions::output_tokens.eq(Some(to_i64(usage.output_tokens))),
            executions::finish_reason.eq(Some(finish_reason.as_str())),
            executions::finished_at.eq(Some(time::now())),
            executions::route_id.eq(Some(route.public_id.as_str())),
            executions::decision.eq(Some(admitted.decision.to_string())),
            executions::input_price.eq(Some(route.input_price.per_million().units())),
            executions::output_price.eq(Some(route.output_price.per_million().units())),
            executions::price_version.eq(Some(admitted.price_version.as_str())),
            executions::request_price.eq(Some(route.request_price.units())),
            executions::settlement_entry_id.eq(Some(resolution.entry_id.as_str())),
        );
        update_execution!(self.inner.pool, admitted.id.as_str(), update)?;
        Ok(resolution.charged)
    }

    /// Charges `cost` for an execution whose hold expired before it could
    /// settle: a new hold of what it cost (or, when the balance no longer
    /// covers it, of what is left: never an overspend), settled at once,
    /// once (idempotent by the execution). The shortfall, if any, is logged.
    async fn settle_late(&self, admitted: &Admitted, cost: Money) -> Result<Resolution, ExecutionError> {
        let ledger = &self.inner.ledger;
        let request = |amount| HoldRequest {
            org_id: admitted.hold.org_id.clone(),
            amount,
            reference: admitted.id.to_string(),
            idempotency_key: Some(format!("execution:{}:late", admitted.id)),
            expires_in: Some(self.inner.leases.lease()),
        };
        let hold = match ledger.hold(request(cost)).await {
            Err(LedgerError::InsufficientBalance { available, .. }) if available.is_positive() => {
                ledger.hold(request(available)).await?
            }
            other => other?,
        };
        let resolution = ledger.settle(&hold.id, cost).await?;
        let shortfall = cost.units().saturating_sub(resolution.charged.units());
        tracing::warn!(
            execution_id = %admitted.id, hold_id = %admitted.hold.id, charged = resolution.charged.units(), shortfall,
            "the hold expired before the execution settled; charged afterwards"
        );
        Ok(resolution)
    }

    /// Releases the hold and records the failure. Never fails: problems are
    /// logged (the sweeper releases a hold this could not).
    async fn fail(&self, admitted: &Admitted, error: &ExecutionError) {
        self.finish_unpaid(admitted, error, ExecutionStatus::Failed).await;
    }

    /// Releases the hold and records the execution as `status` (failed or
    /// canceled) with `error`. Never fails; problems are logged.
    async fn finish_unpaid(&self, admitted: &Admitted, error: &ExecutionError, status: ExecutionStatus) {
        if let Err(e) = self.inner.ledger.release(&admitted.hold.id).await {
            tracing::error!(execution_id = %admitted.id, error = %e, "releasing an unpaid execution's hold failed; the sweeper will");
        }
        let update = (
            executions::status.eq(status.as_str()),
            executions::cost.eq(Some(0_i64)),
            executions::error_code.eq(Some(error.code().as_str())),
            executions::error_message.eq(Some(error.to_string())),
            executions::finished_at.eq(Some(time::now())),
            executions::decision.eq(Some(admitted.decision.to_string())),
        );
        if let Err(e) = update_execution!(self.inner.pool, admitted.id.as_str(), update) {
            tracing::error!(execution_id = %admitted.id, error = %e, "recording an unpaid execution failed");
        }
    }

    /// Ends the records of executions the server stopped in the middle of
    /// (a crash, a kill): still `running`, started more than `grace` ago,
    /// and their hold no longer held (its lease lapsed and the sweeper
    /// released it, or it was settled just before the stop). A running
    /// execution's hold stays held (its lease is renewed), so it is never
    /// ended here. They become `failed` with the code
    /// `interrupted`, costing what their hold charged (zero when released).
    /// Answers how many were ended.
    ///
    /// # Errors
    /// A database failure.
    pub async fn recover_interrupted(&self, grace: Duration) -> Result<usize, ExecutionError> {
        let before = time::now() - chrono::Duration::from_std(grace).unwrap_or_default();
        let pool = &self.inner.pool;
        let running: Vec<(String, Option<String>)> = db_run!(pool, |conn| executions::table
            .filter(executions::status.eq(ExecutionStatus::Running.as_str()))
            .filter(executions::created_at.lt(before))
            .select((executions::id, executions::hold_id))
            .limit(1000)
            .load(conn)
            .await)?;
        let mut ended = 0;
        for (id, hold) in running {
            let Some(hold) = hold.and_then(|h| h.parse::<modelroute_types::HoldId>().ok()) else { continue };
            let hold = self.inner.ledger.get_hold(&hold).await?;
            if hold.status == HoldStatus::Held {
                continue;
            }
            let charged = hold.settled_amount.unwrap_or_default().units();
            let update = (
                executions::status.eq(ExecutionStatus::Failed.as_str()),
                executions::cost.eq(Some(charged)),
                executions::error_code.eq(Some("interrupted")),
                executions::error_message.eq(Some("the server running this execution stopped before it finished")),
                executions::finished_at.eq(Some(time::now())),
            );
            // Only a record still running: one its execution ended meanwhile keeps its own outcome.
            let ended_now = db_run!(pool, |conn| diesel::update(
                executions::table
                    .filter(executions::id.eq(&id))
                    .filter(executions::status.eq(ExecutionStatus::Running.as_str()))
            )
            .set(update)
            .execute(conn)
            .await)?;
            if ended_now == 0 {
                continue;
            }
            tracing::warn!(execution_id = %id, charged, "ended an execution the server stopped in the middle of");
            ended += 1;
        }
        Ok(ended)
    }

    /// An execution of `org`.
    ///
    /// # Errors
    /// [`ExecutionError::NotFound`] when `org` has no such execution.
    pub async fn get(&self, org: &OrgId, id: &ExecutionId) -> Result<Execution, ExecutionError> {
        let pool = &self.inner.pool;
        let row: Option<ExecutionRow> = db_run!(pool, |conn| executions::table
            .filter(executions::id.eq(id.as_str()))
            .filter(executions::org_id.eq(org.as_str()))
            .select(ExecutionRow::as_select())
            .first(conn)
            .await
            .optional())?;
        Ok(row.ok_or(ExecutionError::NotFound)?.try_into()?)
    }
}
