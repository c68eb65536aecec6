//! The data layer: one schema over SQLite (the embedded default) and
//! PostgreSQL (production), chosen at run time by the database URL.
//!
//! Domain crates write each query once with [`db_run!`] or
//! [`db_transaction!`]; the macro repeats the body for each backend so each
//! copy is type-checked against its real backend (diesel's `MultiConnection`
//! does not work with diesel-async). Writes on SQLite use `BEGIN IMMEDIATE`,
//! which avoids the lock-upgrade failures deferred transactions hit under
//! contention. On SQLite, [`writer`] is the one thread that batched writes of
//! every crate go through ([`DbPool::writer`]).

mod config;
mod error;
mod macros;
mod migrate;
mod pool;
pub mod schema;
pub mod schema_gen;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wal;
pub mod writer;

pub use config::{DatabaseConfig, DatabaseUrl};
pub use error::DbError;
pub use migrate::{MigrationStatus, expected_versions};
pub use pool::{Backend, DbConn, DbPool, Listener, PgConn, SqliteConn, SqliteFile};

/// Re-exported for the macros; domain crates use their own direct dependency.
#[doc(hidden)]
pub use diesel_async as __diesel_async;

#[doc(hidden)]
pub use diesel as __diesel;

/// Whether a diesel error is a unique-constraint violation (on either backend).
#[must_use]
pub fn is_unique_violation(err: &diesel::result::Error) -> bool {
    matches!(err, diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _))
}
