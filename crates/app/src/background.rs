//! Background work, on the durable job queue: which kinds of job exist,
//! what runs each, and which run once per period across every replica.
//!
//! | kind | queue | what | when |
//! | --- | --- | --- | --- |
//! | `ledger.sweep` | default | releases holds past their expiry, then ends the records of executions a stopped server left running | every `[ledger] sweep_interval_secs` |
//! | `billing.check_balances` | default | auto top-ups and low-balance alerts | every `[billing.stripe] check_interval_secs` |
//! | `mail.deliver` | mail | sends what waits in the email outbox (each email claimed, so never twice) | on every queued email, and every 30 s for retries |
//! | `webhooks.deliver` | webhooks | one attempt of a webhook delivery (claimed, so never sent twice at once); when the schedule runs out the org's owners and admins are emailed once per failing period | at once for every event, and for every retry come due |
//! | `webhooks.retry_due` | default | queues `webhooks.deliver` for deliveries whose retry is due (or whose first job was lost) | every `[webhooks] retry_poll_secs` |
//! | `executions.run` | executions | runs a queued asynchronous execution: a chat streams into its record; an asynchronous provider is given it (then `executions.poll` is queued for when no callback came) | at every submission (one per execution) |
//! | `executions.poll` | executions | polls the asynchronous provider that has an execution; past the deadline, asks it to cancel | when a provider took an execution, then every `poll_every_secs` until it ends |
//! | `executions.orphans` | default | queues the run or poll of asynchronous executions a stop left without a job, and sends end events a stop left unsent | every `[executions] orphan_sweep_secs` |
//! | `privacy.export` | default | writes an org's export into its file store and emails the link (docs/PRIVACY.md) | `POST /v1/orgs/{org}/exports` |
//! | `privacy.sweep` | default | deletes every data class past its retention period (docs/PRIVACY.md), in batches | every `[privacy] sweep_interval_secs` |
//! | `files.sweep` | default | deletes files whose time-to-live lapsed (row, then object; in batches until none is left), then objects a crash left without a row | every `[files] sweep_interval_secs` |
//!
//! Every handler may run twice for one job (delivery is at least once):
//! the sweep resolves each hold once (a conditional claim), balance checks
//! claim their top-up per org, the outbox claims each email, and deleting
//! a file that is already gone deletes nothing.

use std::time::Duration;

use modelroute_identity::Identity;
use modelroute_jobs::{Failure, JobError, NewJob, Periodic, Queue, Registry};
use modelroute_types::{ExecutionId, OrgId, WebhookDeliveryId, time};
use modelroute_webhooks::{Attempted, Webhooks};

use crate::{Services, Settings};

/// The hold sweep and the recovery of interrupted executions.
pub const SWEEP: &str = "ledger.sweep";
/// Auto top-ups and low-balance alerts.
pub const CHECK_BALANCES: &str = "billing.check_balances";
/// Email delivery.
pub const DELIVER_MAIL: &str = "mail.deliver";
/// Expired files and orphaned objects.
pub const SWEEP_FILES: &str = "files.sweep";
/// One attempt of a webhook delivery.
pub const DELIVER_WEBHOOK: &str = "webhooks.deliver";
/// Queues the webhook deliveries whose retry is due.
pub const RETRY_WEBHOOKS: &str = "webhooks.retry_due";
/// The retention sweep of every data class.
pub const SWEEP_PRIVACY: &str = "privacy.sweep";

pub use crate::asynchronous::{POLL_EXECUTION, RUN_EXECUTION, SWEEP_EXECUTIONS};

/// How often the outbox is looked at without a new email (retries).
const MAIL_EVERY: Duration = Duration::from_secs(30);

fn retry(e: &impl std::fmt::Display) -> Failure {
    Failure::Retry(e.to_string())
}

/// The handlers of every kind.
pub(crate) fn registry(services: &Services, lease: Duration) -> Registry {
    let mut registry = Registry::new();
    let (ledger, executor) = (services.ledger.clone(), services.executor.clone());
    registry.on(SWEEP, move |_| {
        let (ledger, executor) = (ledger.clone(), executor.clone());
        async move {
            let released = ledger.sweep_expired(time::now()).await.map_err(|e| retry(&e))?;
            if released > 0 {
                tracing::info!(released, "released expired holds");
            }
            // Older than a lease: an execution that is alive renews its hold.
            executor.recover_interrupted(lease).await.map_err(|e| retry(&e))?;
            Ok(())
        }
    });
    let billing = services.billing.clone();
    registry.on(CHECK_BALANCES, move |_| {
        let billing = billing.clone();
        async move { Box::pin(billing.check_balances()).await.map(drop).map_err(|e| retry(&e)) }
    });
    let identity = services.identity.clone();
    registry.on(DELIVER_MAIL, move |_| {
        let identity = identity.clone();
        async move { identity.deliver_pending_email().await.map(drop).map_err(|e| retry(&e)) }
    });
    let (webhooks, identity) = (services.webhooks.clone(), services.identity.clone());
    registry.on(DELIVER_WEBHOOK, move |job| {
        let (webhooks, identity) = (webhooks.clone(), identity.clone());
        async move {
            let id: WebhookDeliveryId = job
                .payload
                .get("delivery")
                .and_then(serde_json::Value::as_str)
                .map(|s| WebhookDeliveryId::from_trusted(s.to_owned()))
                .ok_or_else(|| Failure::Fatal("no delivery id".into()))?;
            let outcome = webhooks.attempt(&id, time::now()).await.map_err(|e| retry(&e))?;
            if let Attempted::Failed { alert: true } = outcome {
                alert_failing_endpoint(&webhooks, &identity, &id).await;
            }
            Ok(())
        }
    });
    let (webhooks, queue) = (services.webhooks.clone(), services.queue.clone());
    registry.on(RETRY_WEBHOOKS, move |_| {
        let (webhooks, queue) = (webhooks.clone(), queue.clone());
        async move {
            for id in webhooks.due(time::now(), 1000).await.map_err(|e| retry(&e))? {
                queue_delivery(&queue, &id).await;
            }
            Ok(())
        }
    });
    for kind in [RUN_EXECUTION, POLL_EXECUTION] {
        let (executor, queue) = (services.executor.clone(), services.queue.clone());
        registry.on(kind, move |job| {
            let (executor, queue) = (executor.clone(), queue.clone());
            async move {
                let id: ExecutionId = job
                    .payload
                    .get("execution")
                    .and_then(serde_json::Value::as_str)
                    .map(|s| ExecutionId::from_trusted(s.to_owned()))
                    .ok_or_else(|| Failure::Fatal("no execution id".into()))?;
                let ran = if kind == RUN_EXECUTION {
                    Box::pin(executor.run_queued(&id)).await
                } else {
                    Box::pin(executor.poll_remote(&id)).await
                };
                crate::asynchronous::after_run(&queue, &id, ran.map_err(|e| retry(&e))?).await;
                Ok(())
            }
        });
    }
    let (executor, queue) = (services.executor.clone(), services.queue.clone());
    let orphan_grace = Duration::from_secs(services.executions_config.orphan_sweep_secs.max(1));
    registry.on(SWEEP_EXECUTIONS, move |_| {
        let (executor, queue) = (executor.clone(), queue.clone());
        async move {
            let orphans = executor.orphans(orphan_grace).await.map_err(|e| retry(&e))?;
            for id in orphans.run {
                crate::asynchronous::queue_run(&queue, &ExecutionId::from_trusted(id)).await;
            }
            for id in orphans.poll {
                crate::asynchronous::queue_poll(&queue, &ExecutionId::from_trusted(id), Duration::ZERO).await;
            }
            Ok(())
        }
    });
    let all = services.clone();
    registry.on(crate::EXPORT_JOB, move |job| {
        let services = all.clone();
        async move {
            let request: crate::ExportRequest = serde_json::from_value(job.payload.clone())
                .map_err(|e| Failure::Fatal(format!("an export job without its request: {e}")))?;
            Box::pin(services.export_org(&request)).await.map(drop).map_err(|e| retry(&e))
        }
    });
    let retention = std::sync::Arc::new(services.retention(&services.privacy_config));
    registry.on(SWEEP_PRIVACY, move |_| {
        let retention = std::sync::Arc::clone(&retention);
        async move { retention.sweep(time::now(), None, &mut |_| {}).await.map(drop).map_err(|e| retry(&e)) }
    });
    let files = services.files.clone();
    registry.on(SWEEP_FILES, move |_| {
        let files = files.clone();
        async move {
            let batch = u64::from(files.config().sweep_batch.max(1));
            let mut expired = 0;
            loop {
                let n = files.sweep_expired(time::now()).await.map_err(|e| retry(&e))?;
                expired += n;
                if n < batch {
                    break;
                }
            }
            if expired > 0 {
                tracing::info!(expired, "deleted files whose time-to-live lapsed");
            }
            files.sweep_orphans(time::now()).await.map_err(|e| retry(&e))?;
            Ok(())
        }
    });
    registry
}

fn periodic(name: &str, every: Duration, queue: &str) -> Result<Periodic, JobError> {
    Ok(Periodic::new(name, every, NewJob::new(name, &serde_json::json!({}))?.queue(queue).max_attempts(1)))
}

/// The jobs that run once per period.
pub(crate) fn periodics(settings: &Settings, mail: bool) -> Result<Vec<Periodic>, JobError> {
    let mut all = vec![
        periodic(SWEEP, Duration::from_secs(settings.ledger.sweep_interval_secs.max(1)), "default")?,
        periodic(CHECK_BALANCES, Duration::from_secs(settings.billing.stripe.check_interval_secs.max(1)), "default")?,
        periodic(SWEEP_FILES, Duration::from_secs(settings.files.sweep_interval_secs.max(1)), "default")?,
        periodic(RETRY_WEBHOOKS, Duration::from_secs(settings.webhooks.retry_poll_secs.max(1)), "default")?,
        periodic(SWEEP_PRIVACY, Duration::from_secs(settings.privacy.sweep_interval_secs.max(1)), "default")?,
        periodic(SWEEP_EXECUTIONS, Duration::from_secs(settings.executions.orphan_sweep_secs.max(1)), "default")?,
    ];
    if mail {
        all.push(periodic(DELIVER_MAIL, MAIL_EVERY, "mail")?);
    }
    Ok(all)
}

/// Turns every queued email into a delivery job (one pending at a time:
/// a burst of emails is one job), so an email goes out at once.
pub(crate) async fn deliver_mail_when_queued(identity: Identity, queue: Queue) {
    loop {
        identity.email_queued().await;
        let job = NewJob::new(DELIVER_MAIL, &serde_json::json!({})).map(|j| j.queue("mail").unique(DELIVER_MAIL));
        if let Err(e) = async { queue.enqueue(&job?).await }.await {
            tracing::warn!(error = %e, "enqueuing email delivery failed; the periodic delivery sends it");
        }
    }
}

/// Records an event for the org's webhook endpoints and queues each
/// delivery at once. A failure is logged: what caused the event stands.
pub(crate) async fn emit_event(
    webhooks: &Webhooks,
    queue: &Queue,
    org: &OrgId,
    event_type: &str,
    data: &serde_json::Value,
) {
    match webhooks.emit(org, event_type, data).await {
        Ok(ids) => {
            for id in ids {
                queue_delivery(queue, &id).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, event_type, "recording a webhook event failed"),
    }
}

/// Queues an attempt of a delivery now (one pending job per delivery; the
/// periodic retry job finds any this misses).
pub(crate) async fn queue_delivery(queue: &Queue, id: &WebhookDeliveryId) {
    let job = NewJob::new(DELIVER_WEBHOOK, &serde_json::json!({ "delivery": id }))
        .map(|j| j.queue("webhooks").unique(format!("webhook:{id}")).max_attempts(1));
    if let Err(e) = async { queue.enqueue(&job?).await }.await {
        tracing::warn!(error = %e, delivery = %id, "queueing a webhook delivery failed; the retry job will");
    }
}

/// Tells the org's owners and admins that an endpoint keeps failing.
async fn alert_failing_endpoint(webhooks: &Webhooks, identity: &Identity, id: &WebhookDeliveryId) {
    let Ok(Some((org, endpoint))) = webhooks.endpoint_of(id).await else { return };
    let state = if endpoint.enabled { "is failing" } else { "was disabled" };
    let body = format!(
        "Deliveries to your webhook endpoint {} ({}) keep failing, and the endpoint {state}{}.\n\n\
         The deliveries and every attempt's answer are listed at GET /v1/webhook-endpoints/{}/deliveries; \
         fix the receiver, enable the endpoint again if it was disabled, and redeliver what was missed.\n",
        endpoint.id,
        endpoint.url,
        endpoint.disabled_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
        endpoint.id,
    );
    match identity.email_org_admins(&org, "webhook_failing", "A webhook endpoint keeps failing", &body).await {
        Ok(n) => tracing::info!(org_id = %org, endpoint = %endpoint.id, recipients = n, "webhook failure alert queued"),
        Err(e) => tracing::warn!(org_id = %org, error = %e, "a webhook failure alert could not be queued"),
    }
}
