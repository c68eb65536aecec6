//! Billing alerts, delivered as email to the org's owners and admins
//! through the identity outbox, and as webhook events
//! (`billing.low_balance`, `billing.auto_top_up_failed`).

use modelroute_billing::{Alert, Notifier};
use modelroute_identity::Identity;
use modelroute_jobs::Queue;
use modelroute_types::OrgId;
use modelroute_webhooks::Webhooks;
use serde_json::json;

/// Emails billing alerts to an org's owners and admins.
#[derive(Debug)]
pub(crate) struct EmailNotifier {
    identity: Identity,
    webhooks: Webhooks,
    queue: Queue,
}

impl EmailNotifier {
    pub(crate) const fn new(identity: Identity, webhooks: Webhooks, queue: Queue) -> Self {
        Self { identity, webhooks, queue }
    }
}

impl Notifier for EmailNotifier {
    fn alert(&self, org: &OrgId, alert: &Alert) {
        let (kind, subject, body) = match alert {
            Alert::LowBalance { available, threshold } => (
                "low_balance",
                "Your ModelRoute balance is low".to_owned(),
                format!(
                    "Your organization's available balance is {available}, below your alert threshold of {threshold}.\n\n\
                     Executions stop when it cannot cover a request. Top up, or turn on auto top-up.\n"
                ),
            ),
            Alert::AutoTopUpFailed { reason } => (
                "auto_top_up_failed",
                "Automatic top-up failed and is now off".to_owned(),
                format!(
                    "An automatic top-up of your ModelRoute balance failed ({reason}). Auto top-up has been turned off.\n\n\
                     Update the payment method and turn it on again.\n"
                ),
            ),
        };
        let data = match alert {
            Alert::LowBalance { available, threshold } => {
                json!({ "available_nano_usd": available.units(), "threshold_nano_usd": threshold.units() })
            }
            Alert::AutoTopUpFailed { reason } => json!({ "reason": reason }),
        };
        let (webhooks, queue, event_org) = (self.webhooks.clone(), self.queue.clone(), org.clone());
        let event_type = format!("billing.{kind}");
        tokio::spawn(async move {
            crate::background::emit_event(&webhooks, &queue, &event_org, &event_type, &data).await;
        });
        let (identity, org) = (self.identity.clone(), org.clone());
        tokio::spawn(async move {
            match identity.email_org_admins(&org, kind, &subject, &body).await {
                Ok(n) => tracing::info!(org_id = %org, kind, recipients = n, "billing alert queued"),
                Err(e) => tracing::warn!(org_id = %org, kind, error = %e, "a billing alert could not be queued"),
            }
        });
    }
}
