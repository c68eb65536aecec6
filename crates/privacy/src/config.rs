//! The `[privacy]` section: the retention schedule.

use serde::{Deserialize, Serialize};

/// The `[privacy]` section. The defaults are the privacy policy's
/// (section 5); each may be shortened or, where the law allows, lengthened.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// How often the sweep runs (once per interval across replicas: it is
    /// a periodic job of the queue).
    pub sweep_interval_secs: u64,
    /// Rows deleted per statement; each batch is its own short transaction.
    pub batch: usize,
    /// Expired sessions are deleted this many days after they expired
    /// (by their lifetime or by idleness).
    pub expired_sessions_days: u64,
    /// Password-reset, email-verification and sign-in tokens (and OAuth
    /// sign-in flows) are deleted this many hours after use or expiry.
    pub spent_tokens_hours: u64,
    /// Failed logins (counted for the brute-force lock, which looks back
    /// an hour) are deleted this many hours after the attempt.
    pub login_failures_hours: u64,
    /// Emails of the outbox (whose bodies carry sign-in and reset links)
    /// are deleted this many days after they were written.
    pub sent_emails_days: u64,
    /// Authentication and administrative audit events are kept this many
    /// days.
    pub audit_events_days: u64,
    /// An asynchronous execution's request and output are kept this many
    /// hours after it ended (long enough to fetch the result), then
    /// cleared; the record's metadata stays.
    pub execution_content_hours: u64,
    /// Idempotency keys of asynchronous submissions are kept this many hours.
    pub idempotency_keys_hours: u64,
    /// Provider callback records are kept this many days.
    pub provider_callbacks_days: u64,
    /// A user's deletion request is carried out this many days after it
    /// was made (they may cancel until then).
    pub account_deletion_days: u64,
    /// Operator analytics publish a bucket (a model on a day) only when at
    /// least this many orgs contributed to it (at least 2).
    pub analytics_min_orgs: u32,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            sweep_interval_secs: 3_600,
            batch: 1_000,
            expired_sessions_days: 7,
            spent_tokens_hours: 24,
            login_failures_hours: 24,
            sent_emails_days: 7,
            audit_events_days: 90,
            execution_content_hours: 24,
            idempotency_keys_hours: 24,
            provider_callbacks_days: 90,
            analytics_min_orgs: 5,
            account_deletion_days: 30,
        }
    }
}
