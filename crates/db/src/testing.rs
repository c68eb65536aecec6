//! Test helpers: every test gets its own database.
//!
//! ```ignore
//! modelroute_db::db_test!(async fn creates_an_org(db) {
//!     let pool = db.pool();
//!     // ... runs once on SQLite and once on PostgreSQL
//! });
//! ```
//!
//! PostgreSQL is reached at `MODELROUTE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432`); each test creates a database named
//! `mr_test_<uuid>` and drops it when the [`TestDb`] is dropped.

#![allow(clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::PathBuf;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

use crate::{Backend, DatabaseConfig, DatabaseUrl, DbPool};

/// A fresh, migrated database that is removed when dropped.
#[derive(Debug)]
pub struct TestDb {
    pool: DbPool,
    config: DatabaseConfig,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Dir(PathBuf),
    PgDatabase { server: String, name: String },
}

/// The PostgreSQL server tests use, without a database path.
#[must_use]
pub fn postgres_server_url() -> String {
    std::env::var("MODELROUTE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

impl TestDb {
    /// A fresh database of `backend`, migrated.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::sqlite().await,
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// A fresh SQLite file in its own temporary folder, migrated.
    pub async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("mr_test_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let url = format!("sqlite://{}", dir.join("test.db").display());
        Self::open(url, Cleanup::Dir(dir)).await
    }

    /// A fresh PostgreSQL database, migrated.
    pub async fn postgres() -> Self {
        let server = postgres_server_url();
        let name = format!("mr_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = AsyncPgConnection::establish(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {server} is needed for tests: {e}"));
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.expect("create database");
        let url = format!("{server}/{name}");
        Self::open(url, Cleanup::PgDatabase { server, name }).await
    }

    async fn open(url: String, cleanup: Cleanup) -> Self {
        let config = DatabaseConfig { url: DatabaseUrl::new(url), max_connections: 8, ..DatabaseConfig::default() };
        let pool = DbPool::connect(&config).await.expect("connect test database");
        pool.migrate().await.expect("migrate test database");
        Self { pool, config, cleanup }
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// The SQLite file, for a SQLite database.
    #[must_use]
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &self.cleanup {
            Cleanup::Dir(dir) => Some(dir.join("test.db")),
            Cleanup::PgDatabase { .. } => None,
        }
    }

    /// A `[database]` section pointing at this database (for a test server).
    #[must_use]
    pub fn config(&self) -> DatabaseConfig {
        self.config.clone()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::PgDatabase { server, name } => {
                let admin_url = format!("{server}/postgres");
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                // Drop runs inside the test's runtime: do the async work on a
                // thread with a runtime of its own.
                let result = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                    rt.block_on(async move {
                        let mut admin =
                            AsyncPgConnection::establish(&admin_url).await.map_err(std::io::Error::other)?;
                        admin.batch_execute(&sql).await.map_err(std::io::Error::other)
                    })
                })
                .join();
                if !matches!(result, Ok(Ok(()))) {
                    eprintln!("warning: could not drop test database {name}");
                }
            }
        }
    }
}

/// Writes a test that runs twice, on SQLite and on PostgreSQL, each time on
/// a fresh migrated database bound to the given name.
///
/// The calling crate needs `tokio` (with `macros`, `rt-multi-thread`) as a
/// dev-dependency.
#[macro_export]
macro_rules! db_test {
    ($(#[$meta:meta])* async fn $name:ident($db:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $db = $crate::testing::TestDb::sqlite().await;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let $db = $crate::testing::TestDb::postgres().await;
                $body
            }
        }
    };
}
