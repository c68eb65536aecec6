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
