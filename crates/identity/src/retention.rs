//! Retention of identity's data classes (driven by the privacy crate on the
//! schedule of `[privacy]`): each answers what is past a cutoff and deletes
//! it in batches. A batch is one statement over at most `batch` rows, so no
//! sweep holds its locks for long, and one interrupted deletes nothing twice.
//!
//! The audit log is append-only (triggers on both backends refuse updates
//! and deletes); [`Identity::purge_audit_events`] is its one way out, the
//! guarded path: in one transaction it sets the guard to the cutoff, deletes
//! rows older than it, and clears the guard, so the trigger lets exactly
//! those rows go and nothing else.

use chrono::{Duration, NaiveDateTime};
use diesel::dsl::{count_star, min};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{
    audit_events, audit_guard, email_outbox, login_failures, oauth_flows, sessions, user_tokens,
};
use modelroute_db::{db_execute, db_run, db_transaction, due_before, purge_before};
use modelroute_types::retention::Due;

use crate::{Identity, IdentityError};

/// Rows per batch as SQL wants it.
fn limit(batch: usize) -> i64 {
    i64::try_from(batch).unwrap_or(i64::MAX)
}

impl Identity {
    /// The idle limit of a session: one not seen for this long has expired.
    fn session_idle(&self) -> Duration {
        Duration::minutes(i64::from(self.settings().session_idle_minutes))
    }

    /// Sessions that expired (by their lifetime, or by idleness) before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn expired_sessions_due(&self, cutoff: NaiveDateTime) -> Result<Due, IdentityError> {
        let idle_before = cutoff - self.session_idle();
        let oldest: Option<NaiveDateTime> =
            db_run!(self.pool(), |conn| sessions::table.select(min(sessions::created_at)).first(conn).await)?;
        let due: i64 = db_run!(self.pool(), |conn| sessions::table
            .filter(sessions::expires_at.lt(cutoff).or(sessions::last_seen_at.lt(idle_before)))
            .select(count_star())
            .first(conn)
            .await)?;
        Ok(Due::new(due, oldest))
    }

    /// Deletes at most `batch` sessions that expired before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn purge_expired_sessions(&self, cutoff: NaiveDateTime, batch: usize) -> Result<usize, IdentityError> {
        let (idle_before, n) = (cutoff - self.session_idle(), limit(batch));
        let ids: Vec<String> = db_run!(self.pool(), |conn| sessions::table
            .filter(sessions::expires_at.lt(cutoff).or(sessions::last_seen_at.lt(idle_before)))
            .select(sessions::id)
            .limit(n)
            .load(conn)
            .await)?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(db_execute!(self.pool(), diesel::delete(sessions::table.filter(sessions::id.eq_any(ids.clone()))))?)
    }

    /// Single-use tokens (password reset, email verification, sign-in) and
    /// OAuth sign-in flows used or expired before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn spent_tokens_due(&self, cutoff: NaiveDateTime) -> Result<Due, IdentityError> {
        let tokens: i64 = db_run!(self.pool(), |conn| user_tokens::table
            .filter(user_tokens::expires_at.lt(cutoff).or(user_tokens::used_at.lt(cutoff)))
            .select(count_star())
            .first(conn)
            .await)?;
        let flows: i64 = db_run!(self.pool(), |conn| oauth_flows::table
            .filter(oauth_flows::expires_at.lt(cutoff).or(oauth_flows::used_at.lt(cutoff)))
            .select(count_star())
            .first(conn)
            .await)?;
        let oldest_tokens: Option<NaiveDateTime> =
            db_run!(self.pool(), |conn| user_tokens::table.select(min(user_tokens::created_at)).first(conn).await)?;
        let oldest_flows: Option<NaiveDateTime> =
            db_run!(self.pool(), |conn| oauth_flows::table.select(min(oauth_flows::created_at)).first(conn).await)?;
        let oldest = [oldest_tokens, oldest_flows].into_iter().flatten().min();
        Ok(Due::new(tokens.saturating_add(flows), oldest))
    }

    /// Deletes at most `batch` spent tokens, then flows, spent before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn purge_spent_tokens(&self, cutoff: NaiveDateTime, batch: usize) -> Result<usize, IdentityError> {
        let tokens: Vec<String> = db_run!(self.pool(), |conn| user_tokens::table
            .filter(user_tokens::expires_at.lt(cutoff).or(user_tokens::used_at.lt(cutoff)))
            .select(user_tokens::token_hash)
            .limit(limit(batch))
            .load(conn)
            .await)?;
        let tokens = if tokens.is_empty() {
            0
        } else {
            db_execute!(
                self.pool(),
                diesel::delete(user_tokens::table.filter(user_tokens::token_hash.eq_any(tokens.clone())))
            )?
        };
        let Some(left) = batch.checked_sub(tokens).filter(|l| *l > 0) else { return Ok(tokens) };
        let flows: Vec<String> = db_run!(self.pool(), |conn| oauth_flows::table
            .filter(oauth_flows::expires_at.lt(cutoff).or(oauth_flows::used_at.lt(cutoff)))
            .select(oauth_flows::state_hash)
            .limit(limit(left))
            .load(conn)
            .await)?;
        let flows = if flows.is_empty() {
            0
        } else {
            db_execute!(
                self.pool(),
                diesel::delete(oauth_flows::table.filter(oauth_flows::state_hash.eq_any(flows.clone())))
            )?
        };
        Ok(tokens.saturating_add(flows))
    }

    /// Failed logins (kept for the brute-force lock) older than `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn login_failures_due(&self, cutoff: NaiveDateTime) -> Result<Due, IdentityError> {
        let (due, oldest) = due_before!(self.pool(), login_failures, failed_at, cutoff);
        Ok(Due::new(due, oldest))
    }

    /// Deletes at most `batch` failed logins older than `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn purge_login_failures(&self, cutoff: NaiveDateTime, batch: usize) -> Result<usize, IdentityError> {
        Ok(purge_before!(self.pool(), login_failures, id, failed_at, cutoff, batch))
    }

    /// Emails of the outbox (their bodies carry links with tokens) sent, or
    /// given up, before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn sent_emails_due(&self, cutoff: NaiveDateTime) -> Result<Due, IdentityError> {
        let (due, oldest) = due_before!(self.pool(), email_outbox, created_at, cutoff);
        Ok(Due::new(due, oldest))
    }

    /// Deletes at most `batch` emails sent or given up before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn purge_sent_emails(&self, cutoff: NaiveDateTime, batch: usize) -> Result<usize, IdentityError> {
        Ok(purge_before!(self.pool(), email_outbox, id, created_at, cutoff, batch))
    }

    /// Audit events recorded before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn audit_events_due(&self, cutoff: NaiveDateTime) -> Result<Due, IdentityError> {
        let due: i64 = db_run!(self.pool(), |conn| audit_events::table
            .filter(audit_events::created_at.lt(cutoff))
            .select(count_star())
            .first(conn)
            .await)?;
        let oldest: Option<NaiveDateTime> =
            db_run!(self.pool(), |conn| audit_events::table.select(min(audit_events::created_at)).first(conn).await)?;
        Ok(Due::new(due, oldest))
    }

    /// Deletes at most `batch` audit events recorded before `cutoff`,
    /// through the guarded path (the only delete the log's triggers allow).
    ///
    /// # Errors
    /// A database failure.
    pub async fn purge_audit_events(&self, cutoff: NaiveDateTime, batch: usize) -> Result<usize, IdentityError> {
        let n = limit(batch);
        let deleted: Result<usize, IdentityError> = db_transaction!(self.pool(), |conn| {
            diesel::insert_into(audit_guard::table)
                .values((audit_guard::id.eq(1), audit_guard::purge_before.eq(Some(cutoff))))
                .execute(conn)
                .await?;
            let ids: Vec<String> = audit_events::table
                .filter(audit_events::created_at.lt(cutoff))
                .select(audit_events::id)
                .limit(n)
                .load(conn)
                .await?;
            let deleted =
                diesel::delete(audit_events::table.filter(audit_events::id.eq_any(&ids))).execute(conn).await?;
            diesel::delete(audit_guard::table).execute(conn).await?;
            Ok::<_, IdentityError>(deleted)
        });
        deleted
    }

    /// Replaces `actor` with `pseudonym` wherever it acted or was acted on
    /// in the audit log, and clears those events' addresses, user agents and
    /// details: the events keep their shape, time and action (the one
    /// update the log's triggers allow, used by erasure).
    ///
    /// # Errors
    /// A database failure.
    pub async fn pseudonymise_audit_actor(&self, actor: &str, pseudonym: &str) -> Result<usize, IdentityError> {
        let (actor, pseudonym) = (actor.to_owned(), pseudonym.to_owned());
        let changed: Result<usize, IdentityError> = db_transaction!(self.pool(), |conn| {
            diesel::insert_into(audit_guard::table)
                .values((
                    audit_guard::id.eq(1),
                    audit_guard::pseudonymise_actor.eq(Some(&actor)),
                    audit_guard::pseudonym.eq(Some(&pseudonym)),
                ))
                .execute(conn)
                .await?;
            let scrub = (
                audit_events::ip.eq(None::<String>),
                audit_events::user_agent.eq(None::<String>),
                audit_events::details.eq(None::<String>),
            );
            // Both at once where the actor acted on itself: the trigger
            // checks each row's whole change.
            let mut changed = diesel::update(
                audit_events::table.filter(audit_events::actor.eq(&actor)).filter(audit_events::target.eq(&actor)),
            )
            .set((audit_events::actor.eq(&pseudonym), audit_events::target.eq(Some(&pseudonym)), scrub.clone()))
            .execute(conn)
            .await?;
            changed += diesel::update(audit_events::table.filter(audit_events::actor.eq(&actor)))
                .set((audit_events::actor.eq(&pseudonym), scrub.clone()))
                .execute(conn)
                .await?;
            changed += diesel::update(audit_events::table.filter(audit_events::target.eq(&actor)))
                .set((audit_events::target.eq(&pseudonym), scrub))
                .execute(conn)
                .await?;
            diesel::delete(audit_guard::table).execute(conn).await?;
            Ok::<_, IdentityError>(changed)
        });
        changed
    }
}
