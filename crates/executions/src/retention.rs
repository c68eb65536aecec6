//! Retention of the executions crate's data classes (driven by the
//! privacy crate on the schedule of `[privacy]`): each answers what is past
//! a cutoff and deletes (or clears) it in batches of one statement.

use chrono::NaiveDateTime;
use diesel::dsl::{count_star, min};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::{async_executions, execution_idempotency, executions, provider_callbacks};
use modelroute_db::{db_execute, db_run, due_before, purge_before};
use modelroute_ledger::Ledger;
use modelroute_types::retention::Due;

use crate::{ExecutionError, Executor};

/// Rows per batch as SQL wants it.
fn limit(batch: usize) -> i64 {
    i64::try_from(batch).unwrap_or(i64::MAX)
}

impl<L: Ledger + 'static> Executor<L> {
    /// Asynchronous executions that ended before `cutoff` and still hold
    /// their request or output (the content; the record's metadata stays).
    ///
    /// # Errors
    /// A database failure.
    pub async fn content_due(&self, cutoff: NaiveDateTime) -> Result<Due, ExecutionError> {
        let due: i64 = db_run!(self.pool(), |conn| async_executions::table
            .inner_join(executions::table)
            .filter(async_executions::request.is_not_null().or(async_executions::output.is_not_null()))
            .filter(executions::finished_at.lt(cutoff))
            .select(count_star())
            .first(conn)
            .await)?;
        let oldest: Option<NaiveDateTime> = db_run!(self.pool(), |conn| async_executions::table
            .inner_join(executions::table)
            .filter(async_executions::request.is_not_null().or(async_executions::output.is_not_null()))
            .select(min(executions::created_at))
            .first(conn)
            .await)?;
        Ok(Due::new(due, oldest))
    }

    /// Clears the request and output of at most `batch` asynchronous
    /// executions that ended before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn purge_content(&self, cutoff: NaiveDateTime, batch: usize) -> Result<usize, ExecutionError> {
        let n = limit(batch);
        let ids: Vec<String> = db_run!(self.pool(), |conn| async_executions::table
            .inner_join(executions::table)
            .filter(async_executions::request.is_not_null().or(async_executions::output.is_not_null()))
            .filter(executions::finished_at.lt(cutoff))
            .select(async_executions::execution_id)
            .limit(n)
            .load(conn)
            .await)?;
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(db_execute!(
            self.pool(),
            diesel::update(async_executions::table.filter(async_executions::execution_id.eq_any(ids.clone())))
                .set((async_executions::request.eq(None::<String>), async_executions::output.eq(None::<String>)))
        )?)
    }

    /// Idempotency keys of submissions made before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn idempotency_keys_due(&self, cutoff: NaiveDateTime) -> Result<Due, ExecutionError> {
        let (due, oldest) = due_before!(self.pool(), execution_idempotency, created_at, cutoff);
        Ok(Due::new(due, oldest))
    }

    /// Deletes at most `batch` idempotency keys of submissions made before
    /// `cutoff` (a key reused after that starts a new execution).
    ///
    /// # Errors
    /// A database failure.
    pub async fn purge_idempotency_keys(&self, cutoff: NaiveDateTime, batch: usize) -> Result<usize, ExecutionError> {
        let n = limit(batch);
        // Rows are keyed by (org, key): the batch's keys and orgs, each row
        // still past the cutoff (a pairing outside the batch is due too).
        let rows: Vec<(String, String)> = db_run!(self.pool(), |conn| execution_idempotency::table
            .filter(execution_idempotency::created_at.lt(cutoff))
            .select((execution_idempotency::org_id, execution_idempotency::idempotency_key))
            .limit(n)
            .load(conn)
            .await)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let (orgs, keys): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
        Ok(db_execute!(
            self.pool(),
            diesel::delete(
                execution_idempotency::table
                    .filter(execution_idempotency::created_at.lt(cutoff))
                    .filter(execution_idempotency::org_id.eq_any(orgs.clone()))
                    .filter(execution_idempotency::idempotency_key.eq_any(keys.clone()))
            )
        )?)
    }

    /// Provider callback records received before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn callbacks_due(&self, cutoff: NaiveDateTime) -> Result<Due, ExecutionError> {
        let (due, oldest) = due_before!(self.pool(), provider_callbacks, received_at, cutoff);
        Ok(Due::new(due, oldest))
    }

    /// Deletes at most `batch` provider callback records received before `cutoff`.
    ///
    /// # Errors
    /// A database failure.
    pub async fn purge_callbacks(&self, cutoff: NaiveDateTime, batch: usize) -> Result<usize, ExecutionError> {
        Ok(purge_before!(self.pool(), provider_callbacks, id, received_at, cutoff, batch))
    }
}
