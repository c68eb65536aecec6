//! Asynchronous providers (`kind = "replicate"`): an execution given to
//! the provider with a per-attempt callback URL (its token stored hashed),
//! finished by the provider's signed callback or by polling, its output
//! files re-hosted, its end applied once — a task claimed `submitted →
//! done` — with one settlement, whatever the number of callbacks and polls.

use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{async_executions, executions, provider_tasks};
use modelroute_db::{db_execute, db_run, schema};
use modelroute_ledger::Ledger;
use modelroute_providers::{Prediction, PredictionOutput, PredictionStatus, ProviderClient, ReplicateProvider};
use modelroute_routing::CanonicalError;
use modelroute_types::{ErrorCode as _, ExecutionId, OrgId, ProjectId, time};
use serde_json::json;

use crate::admission::Admitted;
use crate::executor::Executor;
use crate::queued::{OutputFile, Ran, Stored};
use crate::record::ExecutionRow;
use crate::store::Outcome;
use crate::{ExecutionError, ExecutionStatus};

/// An asynchronous provider's task row.
#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = provider_tasks)]
pub(crate) struct TaskRow {
    pub(crate) id: String,
    pub(crate) execution_id: String,
    pub(crate) provider: String,
    pub(crate) route_id: String,
    pub(crate) remote_id: Option<String>,
    pub(crate) status: String,
}

/// What a callback did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// It ended the execution.
    Applied,
    /// Believed, but it changed nothing (progress, or an end already applied).
    Ignored,
}

/// Why a callback was refused; it changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// No attempt has that token (or provider).
    #[error("no such callback")]
    UnknownToken,
    /// Its signature, headers or timestamp do not verify.
    #[error("{0}")]
    Refused(modelroute_providers::CallbackRefused),
    /// Its `webhook-id` was received before.
    #[error("this webhook-id was already received")]
    Replayed,
    /// It is about another prediction than the attempt's.
    #[error("the callback is about another prediction")]
    Mismatch,
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn new_token() -> Result<String, ExecutionError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ExecutionError::TaskFailed)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// 32 random hex characters.
fn uuid_like() -> Result<String, ExecutionError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ExecutionError::TaskFailed)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl<L: Ledger + 'static> Executor<L> {
    pub(crate) fn replicate(&self, provider: &str) -> Option<Arc<ReplicateProvider>> {
        let client = self.table().providers.get(provider)?;
        match &*client {
            ProviderClient::Replicate(p) => Some(Arc::new((**p).clone())),
            _ => None,
        }
    }

    pub(crate) async fn submitted_task(&self, execution: &str) -> Result<Option<TaskRow>, ExecutionError> {
        Ok(db_run!(self.pool(), |conn| provider_tasks::table
            .filter(provider_tasks::execution_id.eq(execution))
            .filter(provider_tasks::status.eq("submitted"))
            .select(TaskRow::as_select())
            .first(conn)
            .await
            .optional())?)
    }

    /// Gives the execution to an asynchronous provider: the routes in
    /// order, each with a task of its own whose callback token is stored
    /// hashed.
    pub(crate) async fn submit_remote(
        &self,
        admitted: &mut Admitted,
        row: &ExecutionRow,
        stored: &Stored,
    ) -> Result<Ran, ExecutionError> {
        let base =
            self.inner.asynchronous.callback_base.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut last_error = None;
        for candidate in admitted.candidates.clone() {
            let Some(client) = admitted.providers.get(&candidate.route.provider) else { continue };
            let ProviderClient::Replicate(provider) = &*client else {
                admitted.record_skip(&candidate, "not_asynchronous");
                continue;
            };
            let Some(_permit) = self.enter(admitted, &candidate) else { continue };
            let token = new_token()?;
            let task_id = format!("ptk_{}", uuid_like()?);
            let now = time::now();
            let task = (
                provider_tasks::id.eq(task_id.clone()),
                provider_tasks::execution_id.eq(row.id.clone()),
                provider_tasks::provider.eq(candidate.route.provider.clone()),
                provider_tasks::route_id.eq(candidate.route.id.clone()),
                provider_tasks::token_hash.eq(sha256_hex(token.as_bytes())),
                provider_tasks::status.eq("submitting"),
                provider_tasks::created_at.eq(now),
                provider_tasks::updated_at.eq(now),
            );
            db_execute!(self.pool(), diesel::insert_into(provider_tasks::table).values(task.clone()))?;
            let url = format!("{base}/v1/callbacks/{}/{token}", candidate.route.provider);
            let input = stored.input.provider_input(candidate.max_output_tokens);
            let created =
                provider.create(&candidate.route.upstream_model, &input, Some(&url), &["start", "completed"]).await;
            match created {
                Ok(prediction) => {
                    let (task, remote, now) = (task_id.clone(), prediction.id.clone(), time::now());
                    db_execute!(
                        self.pool(),
                        diesel::update(provider_tasks::table.find(&task)).set((
                            provider_tasks::remote_id.eq(Some(&remote)),
                            provider_tasks::status.eq("submitted"),
                            provider_tasks::updated_at.eq(now),
                        ))
                    )?;
                    self.observe(&candidate, None);
                    admitted.record_attempt(&candidate, None);
                    self.write_decision(admitted).await?;
                    if prediction.status.is_terminal() {
                        let task = TaskRow {
                            id: task_id,
                            execution_id: row.id.clone(),
                            provider: candidate.route.provider.clone(),
                            route_id: candidate.route.id.clone(),
                            remote_id: Some(prediction.id.clone()),
                            status: "submitted".into(),
                        };
                        Box::pin(self.apply_prediction(&task, &prediction)).await?;
                        return Ok(Ran::Ended);
                    }
                    return Ok(Ran::Waiting(provider.poll_after()));
                }
                Err(e) => {
                    let class = self.observe(&candidate, Some(&e)).unwrap_or_else(|| self.classify(&candidate, &e));
                    admitted.record_attempt(&candidate, Some(class.canonical));
                    let (task, now) = (task_id.clone(), time::now());
                    db_execute!(
                        self.pool(),
                        diesel::update(provider_tasks::table.find(&task))
                            .set((provider_tasks::status.eq("failed"), provider_tasks::updated_at.eq(now)))
                    )?;
                    let stop = !e.is_retryable();
                    last_error = Some(crate::attempts::upstream_error(class, &e));
                    if stop {
                        break;
                    }
                }
            }
        }
        let error = last_error.unwrap_or_else(Admitted::nothing_tried);
        self.fail(admitted, &error).await;
        self.ended(&row.org_id, &row.id, ExecutionStatus::Failed);
        Ok(Ran::Ended)
    }

    async fn write_decision(&self, admitted: &Admitted) -> Result<(), ExecutionError> {
        let (id, decision) = (admitted.id.to_string(), admitted.decision_json());
        db_execute!(self.pool(), diesel::update(executions::table.find(&id)).set(executions::decision.eq(&decision)))?;
        Ok(())
    }

    /// Polls the asynchronous provider that has the execution (when no
    /// callback came in time); past the deadline, asks it to cancel.
    ///
    /// # Errors
    /// The data layer failed (the job retries).
    pub async fn poll_remote(&self, id: &ExecutionId) -> Result<Ran, ExecutionError> {
        let Some(task) = self.submitted_task(id.as_str()).await? else { return Ok(Ran::Ended) };
        let (Some(provider), Some(remote)) = (self.replicate(&task.provider), task.remote_id.clone()) else {
            return Ok(Ran::Ended);
        };
        let full = self.full(id.as_str()).await?;
        let past_deadline = full.as_ref().is_some_and(|(_, a)| a.deadline_at <= time::now());
        let polled = if past_deadline { provider.cancel(&remote).await } else { provider.get(&remote).await };
        let (task_id, now) = (task.id.clone(), time::now());
        db_execute!(
            self.pool(),
            diesel::update(provider_tasks::table.find(&task_id)).set(provider_tasks::updated_at.eq(now))
        )?;
        match polled {
            Ok(prediction) if prediction.status.is_terminal() => {
                Box::pin(self.apply_prediction(&task, &prediction)).await?;
                Ok(Ran::Ended)
            }
            Ok(_) => Ok(Ran::Waiting(if past_deadline { Duration::from_secs(5) } else { provider.poll_every() })),
            Err(e) => {
                tracing::warn!(execution_id = %id, error = %e, "polling the provider failed; polling again");
                Ok(Ran::Waiting(provider.poll_every()))
            }
        }
    }

    /// A provider's callback: the attempt found by its token's hash, the
    /// signature and timestamp checked, a replayed `webhook-id` refused, and
    /// an end applied once. Every callback is recorded, believed or not.
    ///
    /// # Errors
    /// [`CallbackError`] for a callback that is not believed (nothing
    /// changed); the data layer failing.
    pub async fn callback(
        &self,
        provider: &str,
        token: &str,
        headers: [Option<&str>; 3],
        body: &[u8],
    ) -> Result<Result<CallbackOutcome, CallbackError>, ExecutionError> {
        let [webhook_id, timestamp, signature] = headers;
        let task: Option<TaskRow> = db_run!(self.pool(), |conn| provider_tasks::table
            .filter(provider_tasks::token_hash.eq(sha256_hex(token.as_bytes())))
            .filter(provider_tasks::provider.eq(provider))
            .select(TaskRow::as_select())
            .first(conn)
            .await
            .optional())?;
        let (Some(task), Some(client)) = (task, self.replicate(provider)) else {
            self.record_callback(provider, None, webhook_id, false, "unknown_token", body).await?;
            return Ok(Err(CallbackError::UnknownToken));
        };
        let execution = Some(task.execution_id.as_str());
        let prediction =
            match client.verify_callback(webhook_id, timestamp, signature, body, time::unix_seconds(time::now())) {
                Ok(p) => p,
                Err(refused) => {
                    let outcome = match refused {
                        modelroute_providers::CallbackRefused::Stale => "stale",
                        modelroute_providers::CallbackRefused::Forged
                        | modelroute_providers::CallbackRefused::NoSecret => "forged",
                        modelroute_providers::CallbackRefused::Headers
                        | modelroute_providers::CallbackRefused::Body => "invalid",
                    };
                    self.record_callback(provider, execution, webhook_id, false, outcome, body).await?;
                    return Ok(Err(CallbackError::Refused(refused)));
                }
            };
        let seen: i64 = db_run!(self.pool(), |conn| schema::provider_callbacks::table
            .filter(schema::provider_callbacks::provider.eq(provider))
            .filter(schema::provider_callbacks::webhook_id.eq(webhook_id))
            .filter(schema::provider_callbacks::verified.eq(true))
            .count()
            .get_result(conn)
            .await)?;
        if seen > 0 {
            self.record_callback(provider, execution, webhook_id, true, "replayed", body).await?;
            return Ok(Err(CallbackError::Replayed));
        }
        if task.remote_id.as_deref() != Some(prediction.id.as_str()) {
            self.record_callback(provider, execution, webhook_id, true, "mismatch", body).await?;
            return Ok(Err(CallbackError::Mismatch));
        }
        let applied = if task.status == "submitted" && prediction.status.is_terminal() {
            Box::pin(self.apply_prediction(&task, &prediction)).await?
        } else {
            false
        };
        let outcome = if applied { CallbackOutcome::Applied } else { CallbackOutcome::Ignored };
        self.record_callback(provider, execution, webhook_id, true, if applied { "applied" } else { "ignored" }, body)
            .await?;
        Ok(Ok(outcome))
    }

    async fn record_callback(
        &self,
        provider: &str,
        execution: Option<&str>,
        webhook_id: Option<&str>,
        verified: bool,
        outcome: &'static str,
        body: &[u8],
    ) -> Result<(), ExecutionError> {
        let row = (
            schema::provider_callbacks::id.eq(format!("pcb_{}", uuid_like()?)),
            schema::provider_callbacks::received_at.eq(time::now()),
            schema::provider_callbacks::provider.eq(provider.to_owned()),
            schema::provider_callbacks::execution_id.eq(execution.map(str::to_owned)),
            schema::provider_callbacks::webhook_id.eq(webhook_id.map(|w| w.chars().take(200).collect::<String>())),
            schema::provider_callbacks::verified.eq(verified),
            schema::provider_callbacks::outcome.eq(outcome),
            schema::provider_callbacks::payload_sha256.eq(sha256_hex(body)),
        );
        db_execute!(self.pool(), diesel::insert_into(schema::provider_callbacks::table).values(row.clone()))?;
        metrics::counter!("provider_callbacks_total", "outcome" => outcome).increment(1);
        Ok(())
    }

    /// Applies a prediction's end once: the task is claimed (`submitted →
    /// done`), outputs re-hosted, the hold settled for the usage reported
    /// (succeeded, canceled) or released (failed), and the record ended.
    /// Answers whether this call applied it.
    pub(crate) async fn apply_prediction(
        &self,
        task: &TaskRow,
        prediction: &Prediction,
    ) -> Result<bool, ExecutionError> {
        let (task_id, now) = (task.id.clone(), time::now());
        let claimed = db_execute!(
            self.pool(),
            diesel::update(
                provider_tasks::table
                    .filter(provider_tasks::id.eq(&task_id))
                    .filter(provider_tasks::status.eq("submitted"))
            )
            .set((provider_tasks::status.eq("done"), provider_tasks::updated_at.eq(now)))
        )?;
        if claimed == 0 {
            return Ok(false);
        }
        let Some((row, extra)) = self.full(&task.execution_id).await? else { return Ok(false) };
        let hold = row.hold_id.as_ref().and_then(|h| h.parse::<modelroute_types::HoldId>().ok());
        let route =
            self.catalogue().model(&row.model).and_then(|m| m.routes.iter().find(|r| r.id == task.route_id).cloned());
        let asked_cancel = extra.cancel_requested_at.is_some();
        let past_deadline = extra.deadline_at <= time::now();
        let mut output = None;
        let (mut status, mut error) = match prediction.status {
            PredictionStatus::Succeeded => (ExecutionStatus::Succeeded, None),
            PredictionStatus::Canceled if past_deadline && !asked_cancel => {
                (ExecutionStatus::Failed, Some(ExecutionError::DeadlineExceeded))
            }
            PredictionStatus::Canceled => (ExecutionStatus::Canceled, Some(ExecutionError::Canceled)),
            PredictionStatus::Failed | PredictionStatus::Starting | PredictionStatus::Processing => {
                let message = prediction.error_text().unwrap_or_else(|| "the model failed".into());
                let error = ExecutionError::Upstream {
                    canonical: CanonicalError::UpstreamError,
                    message: format!("the model failed: {}", message.chars().take(300).collect::<String>()),
                    client_status: None,
                };
                (ExecutionStatus::Failed, Some(error))
            }
        };
        if status == ExecutionStatus::Succeeded {
            match prediction.read_output() {
                PredictionOutput::Text(text) => output = Some(json!({ "text": text })),
                PredictionOutput::None => output = Some(json!({ "text": "" })),
                PredictionOutput::Files(urls) => match self.rehost_all(&row, task, urls).await {
                    Ok(ids) => output = Some(json!({ "files": ids })),
                    Err(why) => {
                        status = ExecutionStatus::Failed;
                        error = Some(ExecutionError::Upstream {
                            canonical: CanonicalError::UpstreamError,
                            message: format!("the model's output could not be fetched: {why}"),
                            client_status: None,
                        });
                    }
                },
            }
        }
        // Billed for the work the customer gets or asked to stop; a failure
        // (or an output that could not be fetched) is never billed.
        let usage =
            (prediction.metrics.input_token_count.unwrap_or(0), prediction.metrics.output_token_count.unwrap_or(0));
        let billable = matches!(status, ExecutionStatus::Succeeded | ExecutionStatus::Canceled);
        let cost = route.as_ref().filter(|_| billable).and_then(|r| r.price_of(usage.0, usage.1));
        let resolution = match (hold, cost) {
            (Some(hold), Some(cost)) if cost.is_positive() => Some(self.inner.ledger.settle(&hold, cost).await?),
            (Some(hold), _) => Some(self.inner.ledger.release(&hold).await?),
            (None, _) => None,
        };
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let outcome = Outcome {
            status: Some(status.as_str()),
            cost: Some(resolution.as_ref().map_or(0, |r| r.charged.units())),
            settlement_entry_id: resolution.as_ref().map(|r| r.entry_id.to_string()),
            input_tokens: Some(to_i64(usage.0)),
            output_tokens: Some(to_i64(usage.1)),
            error_code: error.as_ref().map(|e| e.code().as_str()),
            error_message: error.as_ref().map(ToString::to_string),
            finished_at: Some(time::now()),
            route_id: route.as_ref().map(|r| r.public_id.clone()),
            input_price: route.as_ref().map(|r| r.input_price.per_million().units()),
            output_price: route.as_ref().map(|r| r.output_price.per_million().units()),
            request_price: route.as_ref().map(|r| r.request_price.units()),
            ..Outcome::default()
        };
        // The output first, while the execution is still open: a reader that
        // sees it ended sees its output (written after the end, a poll could
        // find `succeeded` with no output yet).
        if let Some(output) = output {
            let (id, output) = (row.id.clone(), output.to_string());
            db_execute!(
                self.pool(),
                diesel::update(
                    async_executions::table.find(&id).filter(
                        async_executions::execution_id.eq_any(
                            executions::table
                                .filter(executions::id.eq(id.clone()))
                                .filter(executions::status.eq_any(["queued", "running"]))
                                .select(executions::id)
                        )
                    )
                )
                .set(async_executions::output.eq(Some(&output)))
            )?;
        }
        let ended = self.end_open(&row.id, &outcome).await?;
        if ended {
            self.ended(&row.org_id, &row.id, status);
        }
        Ok(ended)
    }

    /// Writes `outcome` if the execution is still queued or running (the
    /// conditional end: of two ends racing, one writes); answers whether it did.
    pub(crate) async fn end_open(&self, id: &str, outcome: &Outcome) -> Result<bool, ExecutionError> {
        let open = [ExecutionStatus::Queued.as_str(), ExecutionStatus::Running.as_str()];
        let (id, outcome) = (id.to_owned(), outcome.clone());
        let ended = db_execute!(
            self.pool(),
            diesel::update(executions::table.filter(executions::id.eq(&id)).filter(executions::status.eq_any(open)))
                .set(&outcome)
        )?;
        Ok(ended == 1)
    }

    async fn rehost_all(&self, row: &ExecutionRow, task: &TaskRow, urls: Vec<String>) -> Result<Vec<String>, String> {
        let Some(hooks) = self.inner.asynchronous.hooks.get() else { return Err("no file store".into()) };
        let allowed = self.replicate(&task.provider).map(|p| p.config().output_hosts.clone()).unwrap_or_default();
        let mut ids = Vec::with_capacity(urls.len());
        for url in urls {
            let file = OutputFile {
                org: OrgId::from_trusted(row.org_id.clone()),
                project: ProjectId::from_trusted(row.project_id.clone()),
                execution: ExecutionId::from_trusted(row.id.clone()),
                url,
                allowed_hosts: allowed.clone(),
            };
            ids.push((hooks.rehost)(file).await?);
        }
        Ok(ids)
    }
}
