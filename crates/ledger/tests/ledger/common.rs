//! Helpers shared by the ledger's test binaries.

use modelroute_db::DbConn;
use modelroute_db::testing::TestDb;
use modelroute_types::OrgId;

/// Inserts a bare org row (the ledger's accounts reference orgs; the
/// identity crate is not a dependency of the ledger).
pub(crate) async fn insert_org(db: &TestDb) -> OrgId {
    let org = OrgId::new();
    let sql = format!("INSERT INTO orgs (id, name, created_at) VALUES ('{org}', 'test', '2026-01-01 00:00:00')");
    match db.pool().get().await.expect("connection") {
        DbConn::Postgres(mut c) => diesel_async::SimpleAsyncConnection::batch_execute(&mut *c, &sql).await,
        DbConn::Sqlite(mut c) => diesel_async::SimpleAsyncConnection::batch_execute(&mut *c, &sql).await,
    }
    .expect("insert org");
    org
}

/// Runs one statement, as a broken or newer server might have.
pub(crate) async fn execute(db: &TestDb, sql: &str) {
    match db.pool().get().await.expect("connection") {
        DbConn::Postgres(mut c) => diesel_async::SimpleAsyncConnection::batch_execute(&mut *c, sql).await,
        DbConn::Sqlite(mut c) => diesel_async::SimpleAsyncConnection::batch_execute(&mut *c, sql).await,
    }
    .expect("statement");
}
