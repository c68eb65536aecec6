//! Recovery: the records of executions a stopped server left running.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::db_run;
use modelroute_db::schema::executions;
use modelroute_ledger::{HoldStatus, Ledger};
use modelroute_types::time;

use crate::executor::Executor;
use crate::{ExecutionError, ExecutionStatus};

impl<L: Ledger + 'static> Executor<L> {
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
            // Asynchronous executions hold until their deadline and are resumed by their jobs.
            .filter(executions::mode.eq("sync"))
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
}
