//! Asynchronous executions as the platform runs them: a submission checked
//! (deadline, webhook URL under the outbound policy, event filter), handed
//! to the executor and queued as a job; their events turned into webhook
//! deliveries (the org's endpoints and the execution's own URL); their
//! output files re-hosted in the file store; provider callbacks passed on.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use modelroute_executions::{
    AsyncHooks, CallbackError, CallbackOutcome, Execution, ExecutionEvent, ExecutionStatus, Ran, Submission,
    WeakExecutor,
};
use modelroute_files::{Files, Rehost};
use modelroute_jobs::{NewJob, Queue};
use modelroute_ledger::SqlLedger;
use modelroute_types::{ExecutionId, FileId, OrgId, time};
use modelroute_webhooks::{DeliveryStatus, Webhooks};
use serde_json::{Value, json};

use crate::{AppError, Services};

/// Runs a queued execution.
pub const RUN_EXECUTION: &str = "executions.run";
/// Polls an asynchronous provider for an execution no callback finished.
pub const POLL_EXECUTION: &str = "executions.poll";
/// Finds asynchronous executions a stop orphaned.
pub const SWEEP_EXECUTIONS: &str = "executions.orphans";

/// The events an execution's own webhook may ask for.
pub const EXECUTION_EVENTS: &[&str] =
    &["execution.started", "execution.output", "execution.succeeded", "execution.failed", "execution.canceled"];

/// A submission as a client made it.
#[derive(Debug, Clone)]
pub struct NewExecution {
    /// What the executor needs (the deadline not yet checked).
    pub submission: Submission,
    /// The deadline asked for, if any.
    pub deadline_secs: Option<u64>,
}

/// A submission's answer.
#[derive(Debug, Clone)]
pub struct SubmittedExecution {
    /// The execution.
    pub execution: Execution,
    /// It was submitted before under the same idempotency key.
    pub replayed: bool,
    /// The signing secret of the execution's webhook URL, when this
    /// submission is the first to name it (shown once).
    pub webhook_secret: Option<String>,
}

/// An execution as its org sees it: the record, signed links to its output
/// files, and how its webhook deliveries stand.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecutionView {
    /// The record.
    #[serde(flatten)]
    pub execution: Execution,
    /// Signed download links of its output files.
    pub output_links: Vec<Value>,
    /// Its webhook deliveries.
    pub webhook_deliveries: DeliveryStatus,
}

fn invalid(field: &'static str, message: impl Into<String>) -> AppError {
    AppError::Execution(modelroute_executions::ExecutionError::InvalidRequest { param: field, message: message.into() })
}

impl Services {
    /// Plugs the platform into the executor's asynchronous executions:
    /// events become webhook deliveries, output files are re-hosted.
    pub(crate) fn hook_async(&self, callback_base: &str) {
        let executor = self.executor.downgrade();
        let (webhooks, queue, files) = (self.webhooks.clone(), self.queue.clone(), self.files.clone());
        let events = Arc::new(move |event: ExecutionEvent| {
            let (executor, webhooks, queue, files) = (executor.clone(), webhooks.clone(), queue.clone(), files.clone());
            tokio::spawn(async move { deliver_event(&executor, &webhooks, &queue, &files, event).await });
        });
        let files = self.files.clone();
        let rehost = Arc::new(move |file: modelroute_executions::OutputFile| {
            let files = files.clone();
            async move {
                let target = Rehost {
                    org: file.org,
                    project: Some(file.project),
                    execution: file.execution,
                    allowed_hosts: file.allowed_hosts,
                };
                files.rehost(&target, &file.url).await.map(|f| f.id.to_string()).map_err(|e| e.to_string())
            }
            .boxed()
        });
        self.executor.set_async_hooks(AsyncHooks { events, rehost });
        self.executor.set_callback_base(callback_base);
    }

    /// Submits an asynchronous execution and queues its run. The deadline
    /// defaults to, and may not exceed, `[executions]`'s; a webhook URL
    /// must pass the outbound policy, and its events be execution events.
    ///
    /// # Errors
    /// An invalid submission (naming the field), or the executor's refusals
    /// (unknown model, insufficient balance, idempotency conflicts).
    pub async fn submit_execution(&self, new: NewExecution) -> Result<SubmittedExecution, AppError> {
        let NewExecution { mut submission, deadline_secs } = new;
        let config = &self.executions_config;
        let deadline = deadline_secs.unwrap_or(config.default_deadline_secs);
        if deadline == 0 || deadline > config.max_deadline_secs {
            return Err(invalid("deadline", format!("must be between 1 and {} seconds", config.max_deadline_secs)));
        }
        submission.deadline = Duration::from_secs(deadline);
        if let Some(url) = &submission.webhook_url {
            let checked = self.webhooks.check_execution_url(url).map_err(|e| invalid("webhook", e.to_string()))?;
            submission.webhook_url = Some(checked);
        } else if !submission.webhook_events.is_empty() {
            return Err(invalid("webhook_events_filter", "needs a `webhook`"));
        }
        if let Some(unknown) = submission.webhook_events.iter().find(|e| !EXECUTION_EVENTS.contains(&e.as_str())) {
            return Err(invalid(
                "webhook_events_filter",
                format!("unknown event `{unknown}` (known: {})", EXECUTION_EVENTS.join(", ")),
            ));
        }
        let org = submission.caller.org_id.clone();
        let url = submission.webhook_url.clone();
        let submitted = self.executor.submit(submission).await?;
        let mut webhook_secret = None;
        if !submitted.replayed {
            if let Some(url) = &url {
                match self.webhooks.execution_endpoint(&org, url).await {
                    Ok((_, secret)) => webhook_secret = secret,
                    Err(e) => {
                        tracing::warn!(org_id = %org, error = %e, "the execution's webhook endpoint could not be created");
                    }
                }
            }
            queue_run(&self.queue, &submitted.execution.id).await;
        }
        Ok(SubmittedExecution { execution: submitted.execution, replayed: submitted.replayed, webhook_secret })
    }

    /// An execution of `org` with its output links and delivery status.
    ///
    /// # Errors
    /// Not found (another org's included), or a database failure.
    pub async fn execution(&self, org: &OrgId, id: &ExecutionId) -> Result<ExecutionView, AppError> {
        let execution = self.executor.get(org, id).await?;
        self.view(execution).await
    }

    /// Waits until the execution ends or `wait` passes (`Prefer: wait`).
    ///
    /// # Errors
    /// Not found, or a database failure.
    pub async fn wait_execution(
        &self,
        org: &OrgId,
        id: &ExecutionId,
        wait: Duration,
    ) -> Result<ExecutionView, AppError> {
        let execution = self.executor.wait(org, id, wait).await?;
        self.view(execution).await
    }

    /// Cancels an execution of `org` (see [`modelroute_executions::Executor::cancel`]).
    ///
    /// # Errors
    /// Not found, or a database failure.
    pub async fn cancel_execution(&self, org: &OrgId, id: &ExecutionId) -> Result<ExecutionView, AppError> {
        let execution = self.executor.cancel(org, id).await?;
        self.view(execution).await
    }

    async fn view(&self, execution: Execution) -> Result<ExecutionView, AppError> {
        let output_links = output_links(&self.files, &execution);
        let webhook_deliveries = if execution.mode == "async" {
            self.webhooks.execution_deliveries(&execution.org_id, execution.id.as_str()).await?
        } else {
            DeliveryStatus::default()
        };
        Ok(ExecutionView { execution, output_links, webhook_deliveries })
    }

    /// A provider's callback for one attempt (see
    /// [`modelroute_executions::Executor::callback`]).
    ///
    /// # Errors
    /// The database failing; a refused callback is `Ok(Err(_))`.
    pub async fn provider_callback(
        &self,
        provider: &str,
        token: &str,
        headers: [Option<&str>; 3],
        body: &[u8],
    ) -> Result<Result<CallbackOutcome, CallbackError>, AppError> {
        Ok(self.executor.callback(provider, token, headers, body).await?)
    }
}

/// Signed links to an execution's output files.
fn output_links(files: &Files, execution: &Execution) -> Vec<Value> {
    let ids = execution.output.as_ref().and_then(|o| o.get("files")).and_then(Value::as_array);
    ids.into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|id| id.parse::<FileId>().ok())
        .filter_map(|id| {
            let (url, expires_at) = files.link(&id, None).ok()?;
            Some(json!({ "file_id": id, "url": url, "expires_at": time::rfc3339(expires_at) }))
        })
        .collect()
}

/// The thin payload of an execution's event: ids, status, times, links.
fn event_payload(execution: &Execution, links: &[Value]) -> Value {
    json!({
        "id": execution.id,
        "object": "execution",
        "model": execution.model,
        "status": execution.status,
        "created_at": time::rfc3339(execution.created_at),
        "started_at": execution.started_at.map(time::rfc3339),
        "finished_at": execution.finished_at.map(time::rfc3339),
        "cost": execution.cost.map(|c| c.units()),
        "error": execution.error_code.as_ref().map(|code| json!({ "code": code, "message": execution.error_message })),
        "output_files": links,
    })
}

async fn deliver_event(
    executor: &WeakExecutor<SqlLedger>,
    webhooks: &Webhooks,
    queue: &Queue,
    files: &Files,
    event: ExecutionEvent,
) {
    let Some(executor) = executor.upgrade() else { return };
    let Ok(execution) = executor.get(&event.org_id, &event.execution_id).await else { return };
    let data = event_payload(&execution, &output_links(files, &execution));
    let own = execution.webhook_url.as_deref().map(|url| (url, execution.webhook_events.as_slice()));
    match webhooks.emit_for_execution(&event.org_id, execution.id.as_str(), event.event_type, &data, own).await {
        Ok(ids) => {
            for id in ids {
                crate::background::queue_delivery(queue, &id).await;
            }
        }
        Err(e) => {
            tracing::warn!(execution_id = %execution.id, error = %e, "recording an execution's event failed; the sweep sends it again");
            return;
        }
    }
    let terminal = !matches!(execution.status, ExecutionStatus::Queued | ExecutionStatus::Running);
    if terminal && let Err(e) = executor.mark_notified(&execution.id, execution.status).await {
        tracing::warn!(execution_id = %execution.id, error = %e, "marking an execution's event sent failed");
    }
}

/// Queues the run of an execution (one pending or running per execution).
pub(crate) async fn queue_run(queue: &Queue, id: &ExecutionId) {
    let job = NewJob::new(RUN_EXECUTION, &json!({ "execution": id }))
        .map(|j| j.queue("executions").unique(format!("execution:{id}")).max_attempts(20));
    if let Err(e) = async { queue.enqueue(&job?).await }.await {
        tracing::warn!(error = %e, execution_id = %id, "queueing an execution failed; the orphan sweep will");
    }
}

/// Queues a poll of an execution's provider after `after`.
pub(crate) async fn queue_poll(queue: &Queue, id: &ExecutionId, after: Duration) {
    let at = time::now() + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
    let job = NewJob::new(POLL_EXECUTION, &json!({ "execution": id }))
        .map(|j| j.queue("executions").run_at(at).max_attempts(20));
    if let Err(e) = async { queue.enqueue(&job?).await }.await {
        tracing::warn!(error = %e, execution_id = %id, "queueing a poll failed; the orphan sweep will");
    }
}

/// What a run or a poll left to do.
pub(crate) async fn after_run(queue: &Queue, id: &ExecutionId, ran: Ran) {
    if let Ran::Waiting(after) = ran {
        queue_poll(queue, id, after).await;
    }
}
