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
use modelroute_db::schema::executions;
use modelroute_db::writer::Lane;
use modelroute_db::{DbConn, DbPool};

use crate::ExecutionError;
use crate::record::ExecutionRow;

/// What an execution's end writes to its row; a `None` leaves the column as it is.
#[derive(AsChangeset, Default, Debug)]
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
    /// The row, at admission.
    Insert(Box<ExecutionRow>),
    /// The outcome, at the end.
    Finish {
        /// The execution.
        id: String,
        /// What to write.
        outcome: Box<Outcome>,
    },
}

/// The record's writes through the shared SQLite writer.
pub(crate) struct RecordLane;

impl Lane for RecordLane {
    type Op = Write;
    type Outcome = usize;
    type Error = ExecutionError;

    fn apply(conn: &mut SqliteConnection, ops: &[&Write]) -> Result<Vec<usize>, ExecutionError> {
        // Several rows inserted in one statement would save a little more;
        // one statement per write is what keeps an `INSERT` and its own
        // outcome in the same batch in order.
        let mut done = Vec::with_capacity(ops.len());
        for op in ops {
            let rows = match op {
                Write::Insert(row) => {
                    RunQueryDsl::execute(diesel::insert_into(executions::table).values(&**row), conn)?
                }
                Write::Finish { id, outcome } => {
                    RunQueryDsl::execute(diesel::update(executions::table.find(id)).set(&**outcome), conn)?
                }
            };
            done.push(rows);
        }
        Ok(done)
    }
}

/// Writes `write`: through the writer on SQLite, on a pooled connection on
/// PostgreSQL. Answers the rows it touched.
pub(crate) async fn write(pool: &DbPool, write: Write) -> Result<usize, ExecutionError> {
    if let Some(writer) = pool.writer()? {
        return writer.submit::<RecordLane>(write).await;
    }
    let DbConn::Postgres(mut conn) = pool.get().await? else {
        return Err(ExecutionError::Db(modelroute_db::DbError::Writer("no writer on a SQLite pool")));
    };
    let conn: &mut modelroute_db::PgConn = &mut conn;
    let rows = match write {
        Write::Insert(row) => {
            diesel_async::RunQueryDsl::execute(diesel::insert_into(executions::table).values(&*row), conn).await?
        }
        Write::Finish { id, outcome } => {
            diesel_async::RunQueryDsl::execute(diesel::update(executions::table.find(id)).set(&*outcome), conn).await?
        }
    };
    Ok(rows)
}
