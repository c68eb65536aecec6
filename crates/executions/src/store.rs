//! The execution record's writes: the row inserted at admission, and the
//! outcome written when it ends.
//!
//! On SQLite they go through the data layer's shared writer as a lane of
//! their own, so they ride in the same group commits as the ledger's holds
//! and settlements: no second connection takes SQLite's write lock (which
//! would throw away the writer's page cache on every commit), and no
//! request hops to a blocking thread to write. On PostgreSQL each is one
//! statement on a pooled connection, as the writer's module explains.

use chrono::NaiveDateTime;
use diesel::SqliteConnection;
use diesel::prelude::*;
use modelroute_db::schema::{async_executions, executions};
use modelroute_db::writer::Lane;
use modelroute_db::{DbConn, DbError, DbPool};
use modelroute_ledger::{SettledWithin, settle_within};
use modelroute_types::{HoldId, Money};

use crate::ExecutionError;
use crate::record::{AsyncRow, ExecutionRow};

/// What an execution's end writes to its row; a `None` leaves the column as it is.
#[derive(AsChangeset, Clone, Default, Debug)]
#[diesel(table_name = executions)]
pub(crate) struct Outcome {
    pub(crate) status: Option<&'static str>,
    pub(crate) model: Option<String>,
    pub(crate) route_id: Option<String>,
    pub(crate) cost: Option<i64>,
    pub(crate) input_tokens: Option<i64>,
    pub(crate) output_tokens: Option<i64>,
    pub(crate) finish_reason: Option<&'static str>,
    pub(crate) error_code: Option<&'static str>,
    pub(crate) error_message: Option<String>,
    pub(crate) decision: Option<String>,
    pub(crate) finished_at: Option<NaiveDateTime>,
    pub(crate) input_price: Option<i64>,
    pub(crate) output_price: Option<i64>,
    pub(crate) price_version: Option<String>,
    pub(crate) request_price: Option<i64>,
    pub(crate) settlement_entry_id: Option<String>,
}

/// One write of the record.
#[derive(Debug)]
pub(crate) enum Write {
    /// The row, at admission, and an asynchronous execution's own part.
    Insert {
        /// The record.
        row: Box<ExecutionRow>,
        /// An asynchronous execution's part, inserted with it.
        extra: Option<Box<AsyncRow>>,
    },
    /// The outcome, at the end.
    Finish {
        /// The execution.
        id: String,
        /// What to write.
        outcome: Box<Outcome>,
        /// An asynchronous execution's output, written with it.
        output: Option<String>,
    },
    /// The hold settled for `cost` and, in the same commit, the outcome
    /// with what was charged and the settlement's entry (SQLite only:
    /// [`modelroute_ledger::settle_within`]). When the ledger did not settle
    /// it now, nothing is written.
    Settle {
        /// The hold.
        hold: HoldId,
        /// What the execution cost.
        cost: Money,
        /// The execution.
        id: String,
        /// What to write, less the charge and the entry (left `None`).
        outcome: Box<Outcome>,
        /// An asynchronous execution's output, written with it.
        output: Option<String>,
    },
}

/// What a write did.
#[derive(Debug)]
pub(crate) enum Written {
    /// Written.
    Done,
    /// The settlement, and the outcome written when it settled now.
    Settled(SettledWithin),
}

/// The record's writes through the shared SQLite writer.
pub(crate) struct RecordLane;

impl Lane for RecordLane {
    type Op = Write;
    type Outcome = Written;
    type Error = ExecutionError;

    fn apply(conn: &mut SqliteConnection, ops: &[&Write]) -> Result<Vec<Written>, ExecutionError> {
        // The batch's settlements first, set-wise, in the ledger's steps;
        // an execution's insert always committed before its settlement.
        let settlements: Vec<(HoldId, Money)> = ops
            .iter()
            .filter_map(|op| match op {
                Write::Settle { hold, cost, .. } => Some((hold.clone(), *cost)),
                Write::Insert { .. } | Write::Finish { .. } => None,
            })
            .collect();
        let mut settled =
            if settlements.is_empty() { Vec::new() } else { settle_within(conn, &settlements)? }.into_iter();
        // Several rows inserted in one statement would save a little more;
        // one statement per write is what keeps an `INSERT` and its own
        // outcome in the same batch in order.
        let mut done = Vec::with_capacity(ops.len());
        for op in ops {
            done.push(match op {
                Write::Insert { row, extra } => {
                    RunQueryDsl::execute(diesel::insert_into(executions::table).values(&**row), conn)?;
                    if let Some(extra) = extra {
                        RunQueryDsl::execute(diesel::insert_into(async_executions::table).values(&**extra), conn)?;
                    }
                    Written::Done
                }
                Write::Finish { id, outcome, output } => {
                    RunQueryDsl::execute(diesel::update(executions::table.find(id)).set(&**outcome), conn)?;
                    if let Some(output) = output {
                        RunQueryDsl::execute(
                            diesel::update(async_executions::table.find(id)).set(async_executions::output.eq(output)),
                            conn,
                        )?;
                    }
                    Written::Done
                }
                Write::Settle { id, outcome, output, .. } => {
                    let Some(result) = settled.next() else {
                        return Err(ExecutionError::Db(DbError::Writer("a settlement without its outcome")));
                    };
                    if let SettledWithin::Now(resolution) = &result {
                        // The outcome leaves these two to the settlement.
                        let charged = (
                            executions::cost.eq(resolution.charged.units()),
                            executions::settlement_entry_id.eq(resolution.entry_id.as_str()),
                        );
                        let changes = (&**outcome, charged);
                        RunQueryDsl::execute(diesel::update(executions::table.find(id)).set(changes), conn)?;
                        if let Some(output) = output {
                            RunQueryDsl::execute(
                                diesel::update(async_executions::table.find(id))
                                    .set(async_executions::output.eq(output)),
                                conn,
                            )?;
                        }
                    }
                    Written::Settled(result)
                }
            });
        }
        Ok(done)
    }
}

/// Writes `write`: through the writer on SQLite, on a pooled connection on
/// PostgreSQL (where a [`Write::Settle`] is refused: settle through the
/// ledger, then write the outcome with [`Write::Finish`]).
pub(crate) async fn write(pool: &DbPool, write: Write) -> Result<Written, ExecutionError> {
    if let Some(writer) = pool.writer()? {
        return writer.submit::<RecordLane>(write).await;
    }
    let DbConn::Postgres(mut conn) = pool.get().await? else {
        return Err(ExecutionError::Db(DbError::Writer("no writer on a SQLite pool")));
    };
    let conn: &mut modelroute_db::PgConn = &mut conn;
    match write {
        Write::Insert { row, extra } => {
            // One transaction: an asynchronous execution never exists without its part.
            let (row, extra) = (*row, extra);
            diesel_async::AsyncConnection::transaction(conn, async |conn| {
                let n = diesel_async::RunQueryDsl::execute(diesel::insert_into(executions::table).values(&row), conn)
                    .await?;
                if let Some(extra) = &extra {
                    diesel_async::RunQueryDsl::execute(
                        diesel::insert_into(async_executions::table).values(&**extra),
                        conn,
                    )
                    .await?;
                }
                Ok::<_, diesel::result::Error>(n)
            })
            .await?
        }
        Write::Finish { id, outcome, output } => {
            // One transaction: a reader that sees the end sees the output.
            diesel_async::AsyncConnection::transaction(conn, async |conn| {
                if let Some(output) = &output {
                    diesel_async::RunQueryDsl::execute(
                        diesel::update(async_executions::table.find(&id)).set(async_executions::output.eq(output)),
                        conn,
                    )
                    .await?;
                }
                diesel_async::RunQueryDsl::execute(diesel::update(executions::table.find(&id)).set(&*outcome), conn)
                    .await
            })
            .await?
        }
        Write::Settle { .. } => {
            return Err(ExecutionError::Db(DbError::Writer("a settlement within the writer, on PostgreSQL")));
        }
    };
    Ok(Written::Done)
}
