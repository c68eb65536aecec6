//! Embedded migrations, one folder per backend under `migrations/`.

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel::sql_types::Text;
use diesel::sqlite::Sqlite;
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncMigrationHarness, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::{Backend, DbConn, DbError, DbPool};

const POSTGRES: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");
const SQLITE: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// Serialises migrations of server replicas that start together.
const PG_MIGRATION_LOCK: i64 = 0x6d72_6d69_6772; // "mrmigr"

/// Applied and pending migrations of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Versions this binary embeds and the database has applied.
    pub applied: Vec<String>,
    /// Versions this binary embeds that the database lacks.
    pub pending: Vec<String>,
}

/// The migration versions this binary embeds for `backend`, oldest first.
#[must_use]
pub fn expected_versions(backend: Backend) -> Vec<String> {
    let mut versions: Vec<String> = match backend {
        Backend::Postgres => MigrationSource::<Pg>::migrations(&POSTGRES)
            .map(|ms| ms.iter().map(|m| m.name().version().to_string()).collect())
            .unwrap_or_default(),
        Backend::Sqlite => MigrationSource::<Sqlite>::migrations(&SQLITE)
            .map(|ms| ms.iter().map(|m| m.name().version().to_string()).collect())
            .unwrap_or_default(),
    };
    versions.sort();
    versions
}

#[derive(QueryableByName)]
struct VersionRow {
    #[diesel(sql_type = Text)]
    version: String,
}

impl DbPool {
    /// Applies pending migrations and returns the versions it applied.
    ///
    /// Needs tokio's multi-threaded runtime (diesel's migration runner is
    /// synchronous and runs under `block_in_place`).
    ///
    /// # Errors
    /// A connection failure or a failing migration (which is rolled back).
    pub async fn migrate(&self) -> Result<Vec<String>, DbError> {
        let to_strings =
            |vs: Vec<diesel::migration::MigrationVersion<'_>>| vs.iter().map(ToString::to_string).collect::<Vec<_>>();
        match self.get().await? {
            DbConn::Postgres(mut conn) => {
                sql_query(format!("SELECT pg_advisory_lock({PG_MIGRATION_LOCK})")).execute(&mut conn).await?;
                let mut harness = AsyncMigrationHarness::new(conn);
                let result = harness
                    .run_pending_migrations(POSTGRES)
                    .map(to_strings)
                    .map_err(|e| DbError::Migration(e.to_string()));
                let mut conn = harness.into_inner();
                sql_query(format!("SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})")).execute(&mut conn).await?;
                result
            }
            DbConn::Sqlite(conn) => {
                let mut harness = AsyncMigrationHarness::new(conn);
                harness.run_pending_migrations(SQLITE).map(to_strings).map_err(|e| DbError::Migration(e.to_string()))
            }
        }
    }

    /// Which embedded migrations the database has applied. Works on any
    /// runtime (a plain query), so health checks can call it.
    ///
    /// # Errors
    /// A connection failure. A database never migrated reports all pending.
    pub async fn migration_status(&self) -> Result<MigrationStatus, DbError> {
        let expected = expected_versions(self.backend());
        let query = "SELECT version FROM __diesel_schema_migrations";
        let rows: Result<Vec<VersionRow>, diesel::result::Error> = match self.get().await? {
            DbConn::Postgres(mut c) => sql_query(query).load(&mut c).await,
            DbConn::Sqlite(mut c) => sql_query(query).load(&mut c).await,
        };
        let applied_in_db: Vec<String> = match rows {
            Ok(rows) => rows.into_iter().map(|r| r.version).collect(),
            // No bookkeeping table yet: nothing applied.
            Err(diesel::result::Error::DatabaseError(..)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let (applied, pending) = expected.into_iter().partition(|v| applied_in_db.contains(v));
        Ok(MigrationStatus { applied, pending })
    }
}
