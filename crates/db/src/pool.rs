use std::path::PathBuf;
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{PoolError, Timeouts};
use diesel::SqliteConnection;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use futures_util::FutureExt;

use crate::{DatabaseConfig, DbError};

/// A PostgreSQL connection.
pub type PgConn = AsyncPgConnection;
/// A SQLite connection (diesel's sync connection run on tokio's blocking pool).
pub type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// Which database a pool talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl Backend {
    /// The backend a URL names, and for SQLite the file path.
    ///
    /// # Errors
    /// [`DbError::UnsupportedUrl`] for any other scheme.
    pub fn from_url(url: &str) -> Result<(Self, Option<PathBuf>), DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok((Self::Postgres, None));
        }
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() || path.contains(":memory:") {
                // Each pooled in-memory connection would be its own database.
                return Err(DbError::UnsupportedUrl(
                    "sqlite in-memory (use a file: pooled connections would not share it)".into(),
                ));
            }
            return Ok((Self::Sqlite, Some(PathBuf::from(path))));
        }
        let scheme = url.split_once("://").map_or("(none)", |(s, _)| s);
        Err(DbError::UnsupportedUrl(scheme.chars().take(20).collect()))
    }
}

/// A pool of connections to one of the two backends.
#[derive(Clone)]
pub enum DbPool {
    /// PostgreSQL.
    Postgres(Pool<PgConn>),
    /// SQLite, and how to open a connection of its own to the same file.
    Sqlite(Pool<SqliteConn>, SqliteFile),
}

/// Where a SQLite pool's file is, how its connections are set up, and its
/// writer thread (started on first use).
#[derive(Clone, Debug)]
pub struct SqliteFile {
    path: std::sync::Arc<str>,
    busy_timeout_ms: u64,
    writer: std::sync::Arc<WriterSlot>,
}

/// A pool's writer, once started.
#[derive(Debug, Default)]
struct WriterSlot {
    max_batch: usize,
    writer: std::sync::OnceLock<Result<crate::writer::Writer, String>>,
}

impl std::fmt::Debug for DbPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self {
            Self::Postgres(p) => p.status(),
            Self::Sqlite(p, _) => p.status(),
        };
        f.debug_struct("DbPool")
            .field("backend", &self.backend())
            .field("size", &status.size)
            .field("available", &status.available)
            .finish()
    }
}

/// A pooled connection; returned to the pool when dropped.
// The PostgreSQL connection is held inline: a `DbConn` lives on the stack for
// one query or transaction, and boxing it would cost an allocation per query.
#[allow(missing_debug_implementations, clippy::large_enum_variant)]
pub enum DbConn {
    /// PostgreSQL.
    Postgres(Object<PgConn>),
    /// SQLite.
    Sqlite(Object<SqliteConn>),
}

impl DbPool {
    /// Opens a pool for `config.url` and checks that one connection works.
    ///
    /// A connection is handed out again without a `SELECT 1` first
    /// (`RecyclingMethod::Fast`): the check was one more round trip for
    /// every statement a request ran (half of a paid request's statements on
    /// PostgreSQL). A broken connection is still never handed out: the
    /// pool drops one left inside a transaction, or (PostgreSQL) whose
    /// socket its connection task has seen closed.
    ///
    /// # Errors
    /// An unsupported URL, or a database that cannot be reached.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbError> {
        let url = config.url.expose();
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        let timeouts = Timeouts { wait: Some(timeout), create: Some(timeout), recycle: Some(timeout) };
        let (backend, path) = Backend::from_url(url)?;
        let pool = match backend {
            Backend::Postgres => {
                let mut manager_config = ManagerConfig::<PgConn>::default();
                manager_config.recycling_method = RecyclingMethod::Fast;
                let manager = AsyncDieselConnectionManager::<PgConn>::new_with_config(url, manager_config);
                let pool = Pool::builder(manager)
                    .max_size(config.max_connections)
                    .timeouts(timeouts)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| DbError::Connect(e.to_string()))?;
                Self::Postgres(pool)
            }
            Backend::Sqlite => {
                let path = path.unwrap_or_default();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let busy = config.sqlite_busy_timeout_ms;
                let mut manager_config = ManagerConfig::<SqliteConn>::default();
                manager_config.recycling_method = RecyclingMethod::Fast;
                manager_config.custom_setup = Box::new(move |url| {
                    let url = url.to_owned();
                    async move {
                        let mut conn = SqliteConn::establish(&url).await?;
                        conn.batch_execute(&sqlite_pragmas(busy))
                            .await
                            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                        Ok(conn)
                    }
                    .boxed()
                });
                let manager =
                    AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path.to_string_lossy(), manager_config);
                let pool = Pool::builder(manager)
                    .max_size(config.max_connections)
                    .timeouts(timeouts)
                    .runtime(Runtime::Tokio1)
                    .build()
                    .map_err(|e| DbError::Connect(e.to_string()))?;
                let writer = std::sync::Arc::new(WriterSlot {
                    max_batch: config.sqlite_writer_max_batch,
                    writer: std::sync::OnceLock::new(),
                });
                let file = SqliteFile { path: path.to_string_lossy().into(), busy_timeout_ms: busy, writer };
                Self::Sqlite(pool, file)
            }
        };
        drop(pool.get().await?);
        Ok(pool)
    }

    /// Which backend this pool talks to.
    #[must_use]
    pub const fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(..) => Backend::Sqlite,
        }
    }

    /// A connection from the pool.
    ///
    /// # Errors
    /// [`DbError::PoolTimeout`] or [`DbError::Connect`].
    pub async fn get(&self) -> Result<DbConn, DbError> {
        match self {
            Self::Postgres(p) => p.get().await.map(DbConn::Postgres).map_err(pool_error),
            Self::Sqlite(p, _) => p.get().await.map(DbConn::Sqlite).map_err(pool_error),
        }
    }

    /// The SQLite writer every crate's batched writes go through
    /// ([`crate::writer`]), started on first use; `None` on PostgreSQL.
    ///
    /// # Errors
    /// [`DbError::Writer`] when its thread could not be started.
    pub fn writer(&self) -> Result<Option<&crate::writer::Writer>, DbError> {
        let Self::Sqlite(pool, file) = self else { return Ok(None) };
        let started = file.writer.writer.get_or_init(|| {
            // The thread's own pool has an empty slot: it must not keep its
            // own sender alive (it ends when the last user of this pool does).
            let own = SqliteFile { writer: std::sync::Arc::new(WriterSlot::default()), ..file.clone() };
            crate::writer::Writer::start(&Self::Sqlite(pool.clone(), own), file.writer.max_batch)
                .map_err(|e| e.to_string())
        });
        match started {
            Ok(w) => Ok(Some(w)),
            Err(_) => Err(DbError::Writer("cannot start the writer thread")),
        }
    }

    /// A PostgreSQL connection of its own (taken out of the pool for good)
    /// that `LISTEN`s on `channel`, so another process's `NOTIFY` reaches
    /// this one. `None` on SQLite, which is one process.
    ///
    /// # Errors
    /// A channel that is not a plain identifier, or a database failure.
    pub async fn listen(&self, channel: &str) -> Result<Option<Listener>, DbError> {
        use diesel_async::RunQueryDsl as _;
        let Self::Postgres(pool) = self else { return Ok(None) };
        if channel.is_empty() || !channel.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return Err(DbError::Connect(format!("`{channel}` is not a channel name (a-z and _)")));
        }
        let mut conn = Object::take(pool.get().await.map_err(pool_error)?);
        diesel::sql_query(format!("LISTEN {channel}")).execute(&mut conn).await?;
        Ok(Some(Listener { conn }))
    }

    /// A SQLite connection of its own for a long-lived single writer on a
    /// thread of its own (the ledger's group commit): opened outside the
    /// pool, blocking, with the pool's settings and a 64 MiB page cache, so
    /// the hot pages of the tables and indexes it writes stay warm from one
    /// transaction to the next. `None` on PostgreSQL.
    ///
    /// Blocking: call it from the thread that will use the connection.
    ///
    /// # Errors
    /// [`DbError::Connect`] or [`DbError::Query`] (the settings).
    pub fn open_sqlite_writer(&self) -> Result<Option<SqliteConnection>, DbError> {
        use diesel::Connection as _;
        use diesel::connection::SimpleConnection as _;
        match self {
            Self::Postgres(_) => Ok(None),
            Self::Sqlite(_, file) => {
                let mut conn = SqliteConnection::establish(&file.path).map_err(|e| DbError::Connect(e.to_string()))?;
                conn.batch_execute(&sqlite_pragmas(file.busy_timeout_ms))?;
                conn.batch_execute("PRAGMA cache_size = -65536")?;
                Ok(Some(conn))
            }
        }
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), DbError> {
        match self.get().await? {
            DbConn::Postgres(mut c) => c.batch_execute("SELECT 1").await?,
            DbConn::Sqlite(mut c) => c.batch_execute("SELECT 1").await?,
        }
        Ok(())
    }
}

/// PRAGMAs every SQLite connection gets. Without WAL, a busy timeout and
/// `synchronous=NORMAL`, concurrent writers fail most operations.
fn sqlite_pragmas(busy_timeout_ms: u64) -> String {
    format!(
        "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = {busy_timeout_ms}; \
         PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = {};",
        crate::wal::WAL_CAP_FRAMES
    )
}

fn pool_error<E: std::fmt::Display>(e: PoolError<E>) -> DbError {
    match e {
        PoolError::Timeout(_) => DbError::PoolTimeout,
        other => DbError::Connect(other.to_string()),
    }
}

/// A connection listening on a PostgreSQL channel ([`DbPool::listen`]).
#[allow(missing_debug_implementations)]
pub struct Listener {
    conn: PgConn,
}

impl Listener {
    /// The next notification's payload; `None` once the connection is gone
    /// (listen again on a new one).
    pub async fn next(&mut self) -> Option<Result<String, DbError>> {
        use futures_util::StreamExt as _;
        let mut stream = std::pin::pin!(self.conn.notifications_stream());
        stream.next().await.map(|n| n.map(|n| n.payload).map_err(DbError::Query))
    }
}
