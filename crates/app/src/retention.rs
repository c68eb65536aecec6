//! The retention schedule of `[privacy]`, wired to the crates that own each
//! data class (docs/PRIVACY.md). The periodic `privacy.sweep` job and the
//! `modelroute retention` commands both run it.

use std::time::Duration;

use modelroute_privacy::{Class, PrivacyConfig, Retention};

use crate::Services;

const HOUR: u64 = 3_600;
const DAY: u64 = 24 * HOUR;

/// A [`Class`] named `$name`, kept `$period` `$kept`, over the service
/// `$service`'s `$due` and `$purge`.
macro_rules! class {
    ($name:literal, $kept:literal, $period:expr, $service:expr, $due:ident, $purge:ident) => {{
        let (a, b) = ($service.clone(), $service.clone());
        Class::new(
            $name,
            $kept,
            $period,
            Box::new(move |cutoff| {
                let s = a.clone();
                Box::pin(async move { s.$due(cutoff).await.map_err(|e| e.to_string()) })
            }),
            Box::new(move |cutoff, batch| {
                let s = b.clone();
                Box::pin(async move { s.$purge(cutoff, batch).await.map_err(|e| e.to_string()) })
            }),
        )
    }};
}

fn secs(n: u64, unit: u64) -> Duration {
    Duration::from_secs(n.saturating_mul(unit))
}

impl Services {
    /// Every data class this platform deletes on a schedule, by `config`.
    #[must_use]
    pub fn retention(&self, config: &PrivacyConfig) -> Retention {
        let (identity, executor) = (&self.identity, &self.executor);
        Retention::new(config.batch)
            .with(class!(
                "expired_sessions",
                "after expiry",
                secs(config.expired_sessions_days, DAY),
                identity,
                expired_sessions_due,
                purge_expired_sessions
            ))
            .with(class!(
                "spent_tokens",
                "after use or expiry",
                secs(config.spent_tokens_hours, HOUR),
                identity,
                spent_tokens_due,
                purge_spent_tokens
            ))
            .with(class!(
                "account_deletions",
                "after the request (erased: the row and id stay, the person goes)",
                secs(config.account_deletion_days, DAY),
                identity,
                deletions_due,
                erase_due
            ))
            .with(class!(
                "login_failures",
                "after the attempt",
                secs(config.login_failures_hours, HOUR),
                identity,
                login_failures_due,
                purge_login_failures
            ))
            .with(class!(
                "sent_emails",
                "after it was written",
                secs(config.sent_emails_days, DAY),
                identity,
                sent_emails_due,
                purge_sent_emails
            ))
            .with(class!(
                "audit_events",
                "after the event",
                secs(config.audit_events_days, DAY),
                identity,
                audit_events_due,
                purge_audit_events
            ))
            .with(class!(
                "execution_content",
                "after the execution ended",
                secs(config.execution_content_hours, HOUR),
                executor,
                content_due,
                purge_content
            ))
            .with(class!(
                "idempotency_keys",
                "after the submission",
                secs(config.idempotency_keys_hours, HOUR),
                executor,
                idempotency_keys_due,
                purge_idempotency_keys
            ))
            .with(class!(
                "provider_callbacks",
                "after receipt",
                secs(config.provider_callbacks_days, DAY),
                executor,
                callbacks_due,
                purge_callbacks
            ))
    }
}
