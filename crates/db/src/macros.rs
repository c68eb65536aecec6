/// Runs `body` with `conn` bound to a pooled connection of whichever backend
/// the pool has. The body is written once and compiled once per backend.
///
/// The enclosing function's error type must implement `From<DbError>`.
///
/// ```ignore
/// let n: i64 = db_run!(pool, |conn| orgs::table.count().get_result(conn).await)?;
/// ```
#[macro_export]
macro_rules! db_run {
    ($pool:expr, |$conn:ident| $body:expr) => {{
        match $pool.get().await? {
            $crate::DbConn::Postgres(mut __conn) => {
                let $conn: &mut $crate::PgConn = &mut __conn;
                $body
            }
            $crate::DbConn::Sqlite(mut __conn) => {
                let $conn: &mut $crate::SqliteConn = &mut __conn;
                $body
            }
        }
    }};
}

/// Runs `body` in a transaction: `BEGIN` on PostgreSQL, `BEGIN IMMEDIATE`
/// on SQLite (a read-then-write transaction must take the write lock up
/// front). Commits when the body returns `Ok`, rolls back on `Err`.
///
/// The body is an `async` block's contents evaluating to `Result<T, E>`,
/// with `E: From<diesel::result::Error>`; the enclosing function's error
/// type must implement `From<DbError>`.
///
/// A transaction must not be cancelled half-way (an SQLite connection would
/// keep it open): callers on a request path run it in a spawned task.
#[macro_export]
macro_rules! db_transaction {
    ($pool:expr, |$conn:ident| $body:expr) => {{
        match $pool.get().await? {
            $crate::DbConn::Postgres(mut __conn) => {
                use $crate::__diesel_async::AsyncConnection as _;
                let __c: &mut $crate::PgConn = &mut __conn;
                __c.transaction(async |$conn: &mut $crate::PgConn| $body).await
            }
            $crate::DbConn::Sqlite(mut __conn) => {
                let __c: &mut $crate::SqliteConn = &mut __conn;
                __c.immediate_transaction(async |$conn: &mut $crate::SqliteConn| $body).await
            }
        }
    }};
}

/// Executes one write statement: in the shared writer's next batch on
/// SQLite ([`crate::writer::Writer::execute`]: no pooled connection takes
/// the write lock from it), on a pooled connection on PostgreSQL. Answers
/// the rows changed, as `Result<usize, DbError>`.
///
/// The statement is an expression written once for both backends; the
/// values it uses must be owned (`String`, not `&str`): on SQLite it runs
/// on the writer's thread, so it is a `move` closure.
///
/// ```ignore
/// let id = id.to_owned();
/// let n = db_execute!(pool, diesel::update(jobs::table.find(&id)).set(jobs::done.eq(true)))?;
/// ```
#[macro_export]
macro_rules! db_execute {
    ($pool:expr, $statement:expr) => {{
        let __pool = &$pool;
        match __pool.writer() {
            Err(e) => Err(e),
            Ok(Some(__writer)) => {
                __writer
                    .execute(move |__conn: &mut $crate::__diesel::SqliteConnection| {
                        $crate::__diesel::RunQueryDsl::execute($statement, __conn)
                    })
                    .await
            }
            Ok(None) => match __pool.get().await {
                Err(e) => Err(e),
                Ok($crate::DbConn::Postgres(mut __conn)) => {
                    let __c: &mut $crate::PgConn = &mut __conn;
                    $crate::__diesel_async::RunQueryDsl::execute($statement, __c).await.map_err($crate::DbError::Query)
                }
                Ok($crate::DbConn::Sqlite(_)) => Err($crate::DbError::Writer("no writer on a SQLite pool")),
            },
        }
    }};
}

/// What a retention class kept in one table has due: how many rows of
/// `$table` have `$at` before `$cutoff`, and the table's oldest `$at`, as
/// `(i64, Option<NaiveDateTime>)`. Like [`db_run!`], the caller has
/// diesel's query DSL and `diesel_async::RunQueryDsl` in scope, and its
/// error type implements `From<DbError>`.
#[macro_export]
macro_rules! due_before {
    ($pool:expr, $table:ident, $at:ident, $cutoff:expr) => {{
        let __cutoff = $cutoff;
        let __due: i64 = $crate::db_run!($pool, |conn| $table::table
            .filter($table::$at.lt(__cutoff))
            .select($crate::__diesel::dsl::count_star())
            .first(conn)
            .await)?;
        let __oldest = $crate::db_run!($pool, |conn| $table::table
            .select($crate::__diesel::dsl::min($table::$at))
            .first(conn)
            .await)?;
        (__due, __oldest)
    }};
}

/// Deletes at most `$batch` rows of `$table` (keyed by the text column
/// `$id`) whose `$at` is before `$cutoff`; answers how many. A select of
/// the batch's ids, then one delete by them (through [`db_execute!`]):
/// no statement holds its locks for longer than a batch. Scope as for
/// [`due_before!`].
#[macro_export]
macro_rules! purge_before {
    ($pool:expr, $table:ident, $id:ident, $at:ident, $cutoff:expr, $batch:expr) => {{
        let (__cutoff, __limit) = ($cutoff, i64::try_from($batch).unwrap_or(i64::MAX));
        let __ids: Vec<String> = $crate::db_run!($pool, |conn| $table::table
            .filter($table::$at.lt(__cutoff))
            .select($table::$id)
            .limit(__limit)
            .load(conn)
            .await)?;
        if __ids.is_empty() {
            0
        } else {
            $crate::db_execute!(
                $pool,
                $crate::__diesel::delete($table::table.filter($table::$id.eq_any(__ids.clone())))
            )?
        }
    }};
}
