//! Asynchronous executions (`POST /v1/executions`): submitted — planned,
//! held for the worst case until the deadline, recorded `queued` — then run
//! by a job: a chat model streams into the record (its output events come
//! as it goes), an asynchronous provider (`kind = "replicate"`) is given the
//! work with a per-attempt callback URL and finishes it by calling back or
//! by being polled. Canceled while queued: nothing is charged; while
//! running: what the provider did up to the cancel.
//!
//! Every end is a conditional state change, so a job run twice, a callback
//! racing a poll, or a cancel racing the end, ends an execution once with
//! one settlement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use futures_util::future::BoxFuture;
use modelroute_db::schema::{async_executions, execution_idempotency, executions, provider_tasks};
use modelroute_db::{db_execute, db_run};
use modelroute_ledger::{HoldStatus, Ledger};
use modelroute_providers::{ChatRequest, Message, ProviderClient, Role};
use modelroute_types::{ErrorCode as _, ExecutionId, OrgId, ProjectId, time};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::admission::{AdmitAs, Admitted};
use crate::executor::{Caller, Executor, StreamItem};
use crate::preferences::RequestPreferences;
use crate::record::{AsyncRow, ExecutionRow};
use crate::store::Outcome;
use crate::{Execution, ExecutionError, ExecutionStatus};

/// A hold outlives its execution's deadline by this much, so the end can
/// still be settled after the deadline passes.
const HOLD_GRACE: Duration = Duration::from_secs(600);
/// An idempotency claim whose admission never finished (a crash) is taken
/// over after this long.
const STALE_CLAIM: chrono::Duration = chrono::Duration::seconds(60);
/// At most one `execution.output` event per this long.
const OUTPUT_EVERY: Duration = Duration::from_millis(500);
/// How often a running execution looks for a cancel asked of another replica.
const CANCEL_CHECK: Duration = Duration::from_secs(1);

/// What an asynchronous execution runs on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AsyncInput {
    /// Chat messages (the canonical request).
    Chat {
        /// The request.
        request: ChatRequest,
    },
    /// A model's own input object (image generation and other non-chat models).
    Input {
        /// The public model slug.
        model: String,
        /// The input, passed to the provider as it is.
        input: Value,
    },
}

impl AsyncInput {
    /// The model slug.
    #[must_use]
    pub fn model(&self) -> &str {
        match self {
            Self::Chat { request } => &request.model,
            Self::Input { model, .. } => model,
        }
    }

    /// The request routing plans with (an input object counts as its JSON text).
    fn planning_request(&self) -> ChatRequest {
        match self {
            Self::Chat { request } => request.clone(),
            Self::Input { model, input } => {
                ChatRequest::new(model.clone(), vec![Message::text(Role::User, input.to_string())])
            }
        }
    }

    /// What an asynchronous provider is given: the input object, or the
    /// chat as `prompt` (and `system_prompt`, `max_tokens`).
    pub(crate) fn provider_input(&self, max_tokens: u32) -> Value {
        match self {
            Self::Input { input, .. } => input.clone(),
            Self::Chat { request } => {
                let text_of = |role: Role| -> String {
                    request
                        .messages
                        .iter()
                        .filter(|m| m.role == role)
                        .map(Message::text_content)
                        .collect::<Vec<_>>()
                        .join("\n\n")
                };
                let mut input = serde_json::Map::new();
                input.insert("prompt".into(), json!(text_of(Role::User)));
                input.insert("max_tokens".into(), json!(max_tokens));
                let system = text_of(Role::System);
                if !system.is_empty() {
                    input.insert("system_prompt".into(), json!(system));
                }
                Value::Object(input)
            }
        }
    }
}

/// What the record keeps to run the execution later.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) input: AsyncInput,
    #[serde(default)]
    preferences: RequestPreferences,
    #[serde(default)]
    fallback_models: Vec<String>,
}

/// How a queued execution is admitted.
#[derive(Debug)]
pub(crate) struct QueuedFields {
    /// Its hold's lifetime: the deadline and a grace.
    pub(crate) hold_for: Duration,
    /// Its asynchronous part, written with its record (the id is filled in
    /// at admission).
    pub(crate) row: AsyncRow,
}

/// An `Idempotency-Key` and the hash of the request it came with.
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    /// The key.
    pub key: String,
    /// A hash of the request's body (the same body, the same hash).
    pub request_hash: String,
}

/// A submission.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Who pays.
    pub caller: Caller,
    /// What to run.
    pub input: AsyncInput,
    /// How long it may take, from now.
    pub deadline: Duration,
    /// The execution's own webhook URL.
    pub webhook_url: Option<String>,
    /// The events it wants (empty: all).
    pub webhook_events: Vec<String>,
    /// Its idempotency key.
    pub idempotency: Option<IdempotencyKey>,
}

/// A submission's answer.
#[derive(Clone, Debug)]
pub struct Submitted {
    /// The execution.
    pub execution: Execution,
    /// It was submitted before under the same idempotency key.
    pub replayed: bool,
}

/// What a job run of an execution left to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// It has ended (or had, or does not exist).
    Ended,
    /// An asynchronous provider has it: poll after this long unless a
    /// callback finishes it first.
    Waiting(Duration),
}

/// A change of an execution that customers are told of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionEvent {
    /// The org.
    pub org_id: OrgId,
    /// The execution.
    pub execution_id: ExecutionId,
    /// `execution.started`, `execution.output`, `execution.succeeded`, …
    pub event_type: &'static str,
}

/// An output file to re-host: the provider's URL, downloaded from its allowed hosts only.
#[derive(Clone, Debug)]
pub struct OutputFile {
    /// The org.
    pub org: OrgId,
    /// Its project.
    pub project: ProjectId,
    /// The execution.
    pub execution: ExecutionId,
    /// The provider's URL (never shown).
    pub url: String,
    /// Where the provider's outputs may come from.
    pub allowed_hosts: Vec<String>,
}

/// What the platform plugs into asynchronous executions: where events go,
/// and how output files are re-hosted (answering the file's id).
#[derive(Clone)]
pub struct AsyncHooks {
    /// Told of every start, output and end.
    pub events: Arc<dyn Fn(ExecutionEvent) + Send + Sync>,
    /// Re-hosts an output file; answers its id, or why it could not.
    pub rehost: Arc<dyn Fn(OutputFile) -> BoxFuture<'static, Result<String, String>> + Send + Sync>,
}

impl std::fmt::Debug for AsyncHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncHooks").finish_non_exhaustive()
    }
}

/// Wake-ups by execution id, in this process.
#[derive(Debug, Default)]
pub(crate) struct Signals(Mutex<HashMap<String, Arc<Notify>>>);

impl Signals {
    fn get(&self, id: &str) -> Arc<Notify> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(id.to_owned()).or_default())
    }

    fn fire(&self, id: &str) {
        let found = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
        if let Some(n) = found {
            n.notify_waiters();
            n.notify_one();
        }
    }

    fn forget(&self, id: &str, mine: &Arc<Notify>) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only when nobody else waits on it (the map and `mine` hold it).
        if map.get(id).is_some_and(|n| Arc::ptr_eq(n, mine) && Arc::strong_count(n) <= 2) {
            map.remove(id);
        }
    }
}

/// The asynchronous side of the executor.
#[derive(Debug, Default)]
pub(crate) struct AsyncState {
    pub(crate) hooks: OnceLock<AsyncHooks>,
    /// The public root of the API (`https://api.example.com`): providers
    /// call back `{callback_base}/v1/callbacks/{provider}/{token}`.
    pub(crate) callback_base: std::sync::RwLock<String>,
    /// Waiters for an execution's end (`Prefer: wait`).
    pub(crate) ended: Signals,
    /// Cancels of executions running in this process.
    pub(crate) cancels: Signals,
}

fn secs(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl<L: Ledger + 'static> Executor<L> {
    /// Plugs in where events go, how outputs are re-hosted, and the
    /// callback root. Set once; later calls change nothing.
    pub fn set_async_hooks(&self, hooks: AsyncHooks) {
        let _ = self.inner.asynchronous.hooks.set(hooks);
    }

    /// Sets the public root providers call back (`{base}/v1/callbacks/…`).
    pub fn set_callback_base(&self, base: &str) {
        let mut current =
            self.inner.asynchronous.callback_base.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        base.trim_end_matches('/').clone_into(&mut current);
    }

    fn event(&self, org: &str, id: &str, event_type: &'static str) {
        if let Some(hooks) = self.inner.asynchronous.hooks.get() {
            (hooks.events)(ExecutionEvent {
                org_id: OrgId::from_trusted(org.to_owned()),
                execution_id: ExecutionId::from_trusted(id.to_owned()),
                event_type,
            });
        }
    }

    pub(crate) fn ended(&self, org: &str, id: &str, status: ExecutionStatus) {
        let event_type = match status {
            ExecutionStatus::Succeeded => "execution.succeeded",
            ExecutionStatus::Failed => "execution.failed",
            ExecutionStatus::Canceled => "execution.canceled",
            ExecutionStatus::Queued | ExecutionStatus::Running => return,
        };
        self.event(org, id, event_type);
        self.inner.asynchronous.ended.fire(id);
    }

    /// Submits an asynchronous execution: planned, held for its worst case
    /// until its deadline (so admission is exact: what the balance cannot
    /// cover is refused now, before anything runs), and recorded `queued`.
    /// Running it is the caller's job queue's ([`Executor::run_queued`]).
    /// With an idempotency key, the same key and body answer the first
    /// execution; another body is refused, and so is a duplicate while the
    /// first is still being admitted.
    ///
    /// # Errors
    /// Invalid input, unknown model, no route, insufficient balance (402),
    /// an idempotency conflict (422) or a duplicate in progress (409); a
    /// failure writes nothing (the key's claim is withdrawn).
    pub async fn submit(&self, submission: Submission) -> Result<Submitted, ExecutionError> {
        let Submission { caller, input, deadline, webhook_url, webhook_events, idempotency } = submission;
        if let AsyncInput::Input { input: value, .. } = &input
            && !value.is_object()
        {
            return Err(ExecutionError::InvalidRequest { param: "input", message: "input must be an object".into() });
        }
        let org = caller.org_id.clone();
        if let Some(key) = &idempotency
            && let Some(existing) = self.claim_key(&org, key).await?
        {
            return Ok(Submitted { execution: self.get(&org, &existing).await?, replayed: true });
        }
        let admitted = Box::pin(self.admit_queued(&caller, input, deadline, webhook_url, &webhook_events)).await;
        match admitted {
            Ok(id) => {
                if let Some(key) = &idempotency {
                    let (org, key, execution) = (org.to_string(), key.key.clone(), id.to_string());
                    let set = db_execute!(
                        self.pool(),
                        diesel::update(
                            execution_idempotency::table
                                .filter(execution_idempotency::org_id.eq(&org))
                                .filter(execution_idempotency::idempotency_key.eq(&key))
                        )
                        .set(execution_idempotency::execution_id.eq(Some(&execution)))
                    );
                    if let Err(e) = set {
                        tracing::error!(execution_id = %id, error = %e, "recording an idempotency key's execution failed");
                    }
                }
                metrics::counter!("executions_submitted_total").increment(1);
                Ok(Submitted { execution: self.get(&org, &id).await?, replayed: false })
            }
            Err(e) => {
                if let Some(key) = &idempotency {
                    let (org, key) = (org.to_string(), key.key.clone());
                    let _ = db_execute!(
                        self.pool(),
                        diesel::delete(
                            execution_idempotency::table
                                .filter(execution_idempotency::org_id.eq(&org))
                                .filter(execution_idempotency::idempotency_key.eq(&key))
                                .filter(execution_idempotency::execution_id.is_null())
                        )
                    );
                }
                Err(e)
            }
        }
    }

    async fn admit_queued(
        &self,
        caller: &Caller,
        input: AsyncInput,
        deadline: Duration,
        webhook_url: Option<String>,
        webhook_events: &[String],
    ) -> Result<ExecutionId, ExecutionError> {
        let planning = input.planning_request();
        let stored = Stored { input, preferences: caller.preferences, fallback_models: caller.fallback_models.clone() };
        let request = serde_json::to_string(&stored).map_err(|_| ExecutionError::TaskFailed)?;
        let row = AsyncRow {
            execution_id: String::new(),
            request: Some(request),
            deadline_at: time::now().checked_add_signed(secs(deadline)).unwrap_or(NaiveDateTime::MAX),
            output: None,
            webhook_url,
            webhook_events: (!webhook_events.is_empty()).then(|| webhook_events.join(" ")),
            cancel_requested_at: None,
            notified_status: None,
        };
        let fields = QueuedFields { hold_for: deadline.saturating_add(HOLD_GRACE), row };
        // The record and its asynchronous part are one write: when it
        // fails, the hold is released and nothing runs.
        let mut admitted = self.admit(caller, &planning, AdmitAs::Queued(&fields)).await?;
        self.recorded(&mut admitted).await?;
        Ok(admitted.id)
    }

    /// Claims `key` for a new submission; answers the execution it already
    /// names, if any.
    async fn claim_key(&self, org: &OrgId, key: &IdempotencyKey) -> Result<Option<ExecutionId>, ExecutionError> {
        let now = time::now();
        let (org_id, key_text, hash) = (org.to_string(), key.key.clone(), key.request_hash.clone());
        let inserted = db_execute!(
            self.pool(),
            diesel::insert_into(execution_idempotency::table)
                .values((
                    execution_idempotency::org_id.eq(&org_id),
                    execution_idempotency::idempotency_key.eq(&key_text),
                    execution_idempotency::request_hash.eq(&hash),
                    execution_idempotency::created_at.eq(now),
                ))
                .on_conflict_do_nothing()
        )?;
        if inserted == 1 {
            return Ok(None);
        }
        let existing: Option<(String, Option<String>, NaiveDateTime)> = db_run!(self.pool(), |conn| {
            execution_idempotency::table
                .filter(execution_idempotency::org_id.eq(org.as_str()))
                .filter(execution_idempotency::idempotency_key.eq(&key.key))
                .select((
                    execution_idempotency::request_hash,
                    execution_idempotency::execution_id,
                    execution_idempotency::created_at,
                ))
                .first(conn)
                .await
                .optional()
        })?;
        let Some((hash, execution, created_at)) = existing else {
            return Err(ExecutionError::IdempotencyInProgress);
        };
        if hash != key.request_hash {
            return Err(ExecutionError::IdempotencyMismatch);
        }
        if let Some(id) = execution {
            return Ok(Some(ExecutionId::from_trusted(id)));
        }
        // An admission that never finished (its server died): taken over.
        if created_at < now - STALE_CLAIM {
            let (org_id, key_text) = (org.to_string(), key.key.clone());
            let taken = db_execute!(
                self.pool(),
                diesel::update(
                    execution_idempotency::table
                        .filter(execution_idempotency::org_id.eq(&org_id))
                        .filter(execution_idempotency::idempotency_key.eq(&key_text))
                        .filter(execution_idempotency::created_at.eq(created_at))
                        .filter(execution_idempotency::execution_id.is_null())
                )
                .set(execution_idempotency::created_at.eq(now))
            )?;
            if taken == 1 {
                return Ok(None);
            }
        }
        Err(ExecutionError::IdempotencyInProgress)
    }

    pub(crate) async fn row(&self, id: &str) -> Result<Option<ExecutionRow>, ExecutionError> {
        Ok(db_run!(self.pool(), |conn| executions::table
            .find(id)
            .select(ExecutionRow::as_select())
            .first(conn)
            .await
            .optional())?)
    }

    /// An asynchronous execution's record and its asynchronous part.
    pub(crate) async fn full(&self, id: &str) -> Result<Option<(ExecutionRow, AsyncRow)>, ExecutionError> {
        Ok(db_run!(self.pool(), |conn| executions::table
            .inner_join(async_executions::table)
            .filter(executions::id.eq(id))
            .select((ExecutionRow::as_select(), AsyncRow::as_select()))
            .first(conn)
            .await
            .optional())?)
    }

    /// Records a cancel asked of `org`'s execution `id` (the org is in the
    /// write itself: another org's id changes nothing).
    async fn ask_cancel(&self, org: &OrgId, id: &str) -> Result<(), ExecutionError> {
        let (org, id, now) = (org.to_string(), id.to_owned(), time::now());
        db_execute!(
            self.pool(),
            diesel::update(
                async_executions::table
                    .filter(async_executions::execution_id.eq(&id))
                    .filter(
                        async_executions::execution_id.eq_any(
                            executions::table
                                .filter(executions::id.eq(&id))
                                .filter(executions::org_id.eq(&org))
                                .select(executions::id)
                        )
                    )
                    .filter(async_executions::cancel_requested_at.is_null())
            )
            .set(async_executions::cancel_requested_at.eq(Some(now)))
        )?;
        Ok(())
    }

    /// Waits until the execution of `org` ends or `wait` passes; answers it
    /// as it then stands (`Prefer: wait`).
    ///
    /// # Errors
    /// Not found, or the data layer failed.
    pub async fn wait(&self, org: &OrgId, id: &ExecutionId, wait: Duration) -> Result<Execution, ExecutionError> {
        let until = tokio::time::Instant::now() + wait;
        let signal = self.inner.asynchronous.ended.get(id.as_str());
        let result = loop {
            let notified = signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let execution = match self.get(org, id).await {
                Ok(e) => e,
                Err(e) => break Err(e),
            };
            if !matches!(execution.status, ExecutionStatus::Queued | ExecutionStatus::Running)
                || tokio::time::Instant::now() >= until
            {
                break Ok(execution);
            }
            // Woken by an end in this process; another replica's end is
            // seen by looking again every half second.
            let look_again = (tokio::time::Instant::now() + Duration::from_millis(500)).min(until);
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(look_again) => {}
            }
        };
        self.inner.asynchronous.ended.forget(id.as_str(), &signal);
        result
    }

    /// Cancels an execution of `org`. Queued: it ends `canceled` and its
    /// hold is released (nothing charged). Running: the provider is told
    /// (a chat stream is stopped; an asynchronous provider is asked to
    /// cancel), and it ends `canceled`, charged for what the provider did
    /// up to then. Already ended: answered as it is.
    ///
    /// # Errors
    /// Not found (another org's included), or the data layer failed.
    pub async fn cancel(&self, org: &OrgId, id: &ExecutionId) -> Result<Execution, ExecutionError> {
        let execution = self.get(org, id).await?;
        let now = time::now();
        match execution.status {
            ExecutionStatus::Queued => {
                let update = (
                    executions::status.eq(ExecutionStatus::Canceled.as_str()),
                    executions::cost.eq(Some(0_i64)),
                    executions::error_code.eq(Some("canceled")),
                    executions::error_message.eq(Some("canceled before it started")),
                    executions::finished_at.eq(Some(now)),
                );
                let (id_text, org_text) = (id.to_string(), org.to_string());
                let claimed = db_execute!(
                    self.pool(),
                    diesel::update(
                        executions::table
                            .filter(executions::id.eq(&id_text))
                            .filter(executions::org_id.eq(&org_text))
                            .filter(executions::status.eq(ExecutionStatus::Queued.as_str()))
                    )
                    .set(update)
                )?;
                if claimed == 1 {
                    self.ask_cancel(org, id.as_str()).await?;
                    self.release_hold_of(&execution).await;
                    self.ended(org.as_str(), id.as_str(), ExecutionStatus::Canceled);
                    return self.get(org, id).await;
                }
                // It started meanwhile: cancel it running.
                Box::pin(self.cancel_running(org, id)).await
            }
            ExecutionStatus::Running => Box::pin(self.cancel_running(org, id)).await,
            ExecutionStatus::Succeeded | ExecutionStatus::Failed | ExecutionStatus::Canceled => Ok(execution),
        }
    }

    async fn cancel_running(&self, org: &OrgId, id: &ExecutionId) -> Result<Execution, ExecutionError> {
        self.ask_cancel(org, id.as_str()).await?;
        // A chat stream running here stops now (elsewhere: within a second).
        self.inner.asynchronous.cancels.fire(id.as_str());
        if let Some(task) = self.submitted_task(id.as_str()).await?
            && let (Some(provider), Some(remote)) = (self.replicate(&task.provider), task.remote_id.as_deref())
        {
            match provider.cancel(remote).await {
                Ok(prediction) if prediction.status.is_terminal() => {
                    Box::pin(self.apply_prediction(&task, &prediction)).await?;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(execution_id = %id, error = %e, "asking the provider to cancel failed"),
            }
        }
        self.get(org, id).await
    }

    async fn release_hold_of(&self, execution: &Execution) {
        if let Some(hold) = &execution.hold_id
            && let Err(e) = self.inner.ledger.release(hold).await
        {
            tracing::error!(execution_id = %execution.id, error = %e, "releasing a canceled execution's hold failed; the sweeper will");
        }
    }

    /// Runs a queued execution (the job queue's handler; at least once:
    /// running it again is harmless). A deadline already passed ends it
    /// unbilled; a hold no longer held (a stop between settlement and
    /// record) ends it as the ledger says.
    ///
    /// # Errors
    /// The data layer failed (the job retries).
    pub async fn run_queued(&self, id: &ExecutionId) -> Result<Ran, ExecutionError> {
        let Some((row, extra)) = self.full(id.as_str()).await? else { return Ok(Ran::Ended) };
        let status = ExecutionStatus::try_from(row.status.as_str())?;
        let now = time::now();
        match status {
            ExecutionStatus::Queued => {
                if extra.deadline_at <= now {
                    let error = ExecutionError::DeadlineExceeded;
                    self.end_unpaid(&row, &error).await?;
                    return Ok(Ran::Ended);
                }
                let id_text = id.to_string();
                let started = db_execute!(
                    self.pool(),
                    diesel::update(
                        executions::table
                            .filter(executions::id.eq(&id_text))
                            .filter(executions::status.eq(ExecutionStatus::Queued.as_str()))
                    )
                    .set((
                        executions::status.eq(ExecutionStatus::Running.as_str()),
                        executions::started_at.eq(Some(now))
                    ))
                )?;
                if started == 0 {
                    return Box::pin(self.run_queued(id)).await; // canceled or started meanwhile
                }
                self.event(&row.org_id, &row.id, "execution.started");
            }
            ExecutionStatus::Running => {
                // Run again after a stop: an asynchronous provider that has
                // it keeps it; a chat starts over (billed once).
                if self.submitted_task(&row.id).await?.is_some() {
                    return Ok(Ran::Waiting(Duration::ZERO));
                }
            }
            ExecutionStatus::Succeeded | ExecutionStatus::Failed | ExecutionStatus::Canceled => return Ok(Ran::Ended),
        }
        let stored: Stored = serde_json::from_str(extra.request.as_deref().unwrap_or_default()).map_err(|_| {
            ExecutionError::InvalidRequest { param: "request", message: "the stored request is unreadable".into() }
        })?;
        let Some(mut admitted) = self.readmit(&row, &stored).await? else { return Ok(Ran::Ended) };
        let first = admitted.candidates.as_slice().first().cloned();
        let provider = first.as_ref().and_then(|c| admitted.providers.get(&c.route.provider));
        let ran = match provider.as_deref() {
            Some(ProviderClient::Replicate(_)) => Box::pin(self.submit_remote(&mut admitted, &row, &stored)).await?,
            _ => match &stored.input {
                AsyncInput::Chat { request } => {
                    Box::pin(self.run_chat(admitted, &row, extra.deadline_at, request)).await?;
                    Ran::Ended
                }
                AsyncInput::Input { .. } => {
                    let error = ExecutionError::InvalidRequest {
                        param: "input",
                        message: format!("the model `{}` takes messages, not an input object", row.model),
                    };
                    self.fail(&admitted, &error).await;
                    self.ended(&row.org_id, &row.id, ExecutionStatus::Failed);
                    Ran::Ended
                }
            },
        };
        Ok(ran)
    }

    /// The admitted state of a recorded execution: its hold, and a fresh
    /// plan of the routes its hold covers. `None` when it has nothing left
    /// to run (its hold resolved: the record is ended as the ledger says).
    async fn readmit(&self, row: &ExecutionRow, stored: &Stored) -> Result<Option<Admitted>, ExecutionError> {
        let Some(hold_id) = row.hold_id.as_ref().and_then(|h| h.parse::<modelroute_types::HoldId>().ok()) else {
            return Ok(None);
        };
        let hold = self.inner.ledger.get_hold(&hold_id).await?;
        if hold.status != HoldStatus::Held {
            let charged = hold.settled_amount.unwrap_or_default();
            let status = if charged.is_positive() { ExecutionStatus::Succeeded } else { ExecutionStatus::Failed };
            let outcome = Outcome {
                status: Some(status.as_str()),
                cost: Some(charged.units()),
                error_code: (!charged.is_positive()).then_some("interrupted"),
                finished_at: Some(time::now()),
                ..Outcome::default()
            };
            let ended = self.end_open(&row.id, &outcome).await?;
            if ended {
                self.ended(&row.org_id, &row.id, status);
            }
            return Ok(None);
        }
        let caller = Caller {
            org_id: OrgId::from_trusted(row.org_id.clone()),
            project_id: ProjectId::from_trusted(row.project_id.clone()),
            api_key_id: modelroute_types::ApiKeyId::from_trusted(row.api_key_id.clone()),
            preferences: stored.preferences,
            fallback_models: stored.fallback_models.clone(),
        };
        let planning = stored.input.planning_request();
        match self.plan_for(&caller, &planning, hold, ExecutionId::from_trusted(row.id.clone()), row.created_at).await {
            Ok(admitted) => Ok(Some(admitted)),
            Err(e) => {
                // Nothing can serve it now (the route table changed): it ends unbilled.
                self.end_unpaid(row, &e).await?;
                Ok(None)
            }
        }
    }

    /// Ends an execution that produced nothing, unbilled (a deadline that
    /// passed before it started, nothing left to serve it).
    async fn end_unpaid(&self, row: &ExecutionRow, error: &ExecutionError) -> Result<(), ExecutionError> {
        let outcome = Outcome {
            status: Some(ExecutionStatus::Failed.as_str()),
            cost: Some(0),
            error_code: Some(error.code().as_str()),
            error_message: Some(error.to_string()),
            finished_at: Some(time::now()),
            ..Outcome::default()
        };
        let ended = self.end_open(&row.id, &outcome).await?;
        if ended {
            if let Some(hold) = row.hold_id.as_ref().and_then(|h| h.parse::<modelroute_types::HoldId>().ok())
                && let Err(e) = self.inner.ledger.release(&hold).await
            {
                tracing::error!(execution_id = %row.id, error = %e, "releasing an unstarted execution's hold failed; the sweeper will");
            }
            self.ended(&row.org_id, &row.id, ExecutionStatus::Failed);
        }
        Ok(())
    }

    /// A chat execution streamed into its record: output events as it goes
    /// (at most one per [`OUTPUT_EVERY`]), stopped by a cancel (charged for
    /// what was produced) or its deadline.
    async fn run_chat(
        &self,
        admitted: Admitted,
        row: &ExecutionRow,
        deadline: NaiveDateTime,
        request: &ChatRequest,
    ) -> Result<(), ExecutionError> {
        let id = row.id.clone();
        let cancel = self.inner.asynchronous.cancels.get(&id);
        let (opened_tx, opened_rx) = oneshot::channel();
        let (tx, mut rx) = mpsc::channel(64);
        let this = self.clone();
        let request = request.clone();
        let task = tokio::spawn(async move { this.stream_admitted(admitted, &request, opened_tx, tx).await });
        let mut stopped: Option<&'static str> = None;
        if opened_rx.await.is_ok_and(|o| o.is_ok()) {
            let mut last_output = tokio::time::Instant::now();
            let mut pending_output = false;
            let mut check = tokio::time::interval(CANCEL_CHECK);
            loop {
                let cancelled = cancel.notified();
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(StreamItem::Delta(_) | StreamItem::ToolCallDelta(_)) => {
                            pending_output = true;
                            if last_output.elapsed() >= OUTPUT_EVERY {
                                self.event(&row.org_id, &id, "execution.output");
                                last_output = tokio::time::Instant::now();
                                pending_output = false;
                            }
                        }
                        Some(StreamItem::Done { .. } | StreamItem::Failed(_)) | None => break,
                    },
                    () = cancelled => { stopped = Some("canceled"); break; }
                    _ = check.tick() => {
                        if deadline <= time::now() {
                            stopped = Some("deadline_exceeded");
                            break;
                        }
                        if self.cancel_requested(&id).await {
                            stopped = Some("canceled");
                            break;
                        }
                    }
                }
            }
            if pending_output && stopped.is_none() {
                self.event(&row.org_id, &id, "execution.output");
            }
        }
        // Dropping the receiver stops the stream: it is settled for what it produced.
        drop(rx);
        task.await.map_err(|_| ExecutionError::TaskFailed)?;
        if stopped == Some("deadline_exceeded") {
            let error = ExecutionError::DeadlineExceeded;
            let (id, code, message) = (id.clone(), error.code().as_str(), error.to_string());
            db_execute!(
                self.pool(),
                diesel::update(executions::table.find(&id))
                    .set((executions::error_code.eq(Some(code)), executions::error_message.eq(Some(&message))))
            )?;
        }
        self.inner.asynchronous.cancels.forget(&id, &cancel);
        let status = match self.row(&id).await? {
            Some(r) => ExecutionStatus::try_from(r.status.as_str())?,
            None => return Ok(()),
        };
        self.ended(&row.org_id, &id, status);
        Ok(())
    }

    async fn cancel_requested(&self, id: &str) -> bool {
        let asked: Result<Option<NaiveDateTime>, ExecutionError> = async {
            Ok(db_run!(self.pool(), |conn| async_executions::table
                .find(id)
                .select(async_executions::cancel_requested_at)
                .first(conn)
                .await)?)
        }
        .await;
        matches!(asked, Ok(Some(_)))
    }

    /// What the job queue should do for asynchronous executions a stop
    /// may have orphaned: queued ones older than `grace` (run them),
    /// running ones at a provider not heard of for longer than `grace` past
    /// their poll time (poll them), and ends whose event was never marked
    /// sent (send it).
    ///
    /// # Errors
    /// The data layer failed.
    pub async fn orphans(&self, grace: Duration) -> Result<Orphans, ExecutionError> {
        let before = time::now() - secs(grace);
        let queued: Vec<String> = db_run!(self.pool(), |conn| executions::table
            .filter(executions::mode.eq("async"))
            .filter(executions::status.eq(ExecutionStatus::Queued.as_str()))
            .filter(executions::created_at.lt(before))
            .select(executions::id)
            .limit(1000)
            .load(conn)
            .await)?;
        let running: Vec<(String, Option<String>, Option<NaiveDateTime>)> = db_run!(self.pool(), |conn| {
            executions::table
                .left_join(provider_tasks::table.on(provider_tasks::execution_id.eq(executions::id)))
                .filter(executions::mode.eq("async"))
                .filter(executions::status.eq(ExecutionStatus::Running.as_str()))
                .filter(executions::started_at.lt(before))
                .select((executions::id, provider_tasks::status.nullable(), provider_tasks::updated_at.nullable()))
                .limit(1000)
                .load(conn)
                .await
        })?;
        let mut orphans = Orphans { run: queued, ..Orphans::default() };
        let poll_before = before - secs(Duration::from_secs(60));
        let mut by_id: HashMap<String, Vec<TaskState>> = HashMap::new();
        for (id, status, updated) in running {
            by_id.entry(id).or_default().push((status, updated));
        }
        for (id, tasks) in by_id {
            let submitted = tasks.iter().find(|(s, _)| s.as_deref() == Some("submitted"));
            let stuck_done =
                tasks.iter().find(|(s, u)| s.as_deref() == Some("done") && u.is_some_and(|u| u < poll_before));
            match (submitted, stuck_done) {
                (Some((_, updated)), _) => {
                    if updated.is_some_and(|u| u < poll_before) {
                        orphans.poll.push(id);
                    }
                }
                // Claimed but never finished (a stop in between): claimed again by the poll.
                (None, Some(_)) => {
                    let (execution, now) = (id.clone(), time::now());
                    db_execute!(
                        self.pool(),
                        diesel::update(
                            provider_tasks::table
                                .filter(provider_tasks::execution_id.eq(&execution))
                                .filter(provider_tasks::status.eq("done"))
                        )
                        .set((provider_tasks::status.eq("submitted"), provider_tasks::updated_at.eq(now)))
                    )?;
                    orphans.poll.push(id);
                }
                // A chat whose run stopped: run again (its job, if alive, holds the key).
                (None, None) => orphans.run.push(id),
            }
        }
        let unsent: Vec<(String, String, String)> = db_run!(self.pool(), |conn| executions::table
            .inner_join(async_executions::table)
            .filter(executions::status.eq_any([
                ExecutionStatus::Succeeded.as_str(),
                ExecutionStatus::Failed.as_str(),
                ExecutionStatus::Canceled.as_str()
            ]))
            .filter(executions::finished_at.lt(before))
            .filter(async_executions::notified_status.is_null())
            .select((executions::id, executions::org_id, executions::status))
            .limit(1000)
            .load(conn)
            .await)?;
        for (id, org, status) in unsent {
            if let Ok(status) = ExecutionStatus::try_from(status.as_str()) {
                self.ended(&org, &id, status);
            }
        }
        Ok(orphans)
    }

    /// Marks an execution's end event as sent (the orphan sweep then leaves it).
    ///
    /// # Errors
    /// The data layer failed.
    pub async fn mark_notified(&self, id: &ExecutionId, status: ExecutionStatus) -> Result<(), ExecutionError> {
        let id = id.to_string();
        db_execute!(
            self.pool(),
            diesel::update(async_executions::table.find(&id))
                .set(async_executions::notified_status.eq(Some(status.as_str())))
        )?;
        Ok(())
    }
}

/// A provider task's status and last change, as the orphan sweep reads them.
type TaskState = (Option<String>, Option<NaiveDateTime>);

/// Asynchronous executions whose job a stop may have lost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Orphans {
    /// To run.
    pub run: Vec<String>,
    /// To poll at their provider.
    pub poll: Vec<String>,
}
