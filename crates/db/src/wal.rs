//! WAL checkpoints off a busy SQLite writer's thread.
//!
//! In WAL mode the connection that commits past `wal_autocheckpoint` pages
//! copies the WAL back into the database file itself and waits for two
//! `fsync`s — on a thread that would rather be writing the next batch
//! (measured on the ledger's writer: ~20% of its time, docs/PERFORMANCE.md).
//! A [`WalCheckpointer`] does that copying on a thread of its own with
//! `PASSIVE` checkpoints, which never block the writer. The writer turns
//! its own autocheckpoint off and only, when the WAL has grown past a cap,
//! finishes a checkpoint itself: by then the checkpointer has copied all but
//! the last few frames, so that is short, and it lets the WAL start again
//! from its beginning at the writer's next transaction (a checkpoint that
//! runs beside a busy writer never catches up on its own).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::time::Duration;

use diesel::sql_types::Integer;
use diesel::{QueryableByName, RunQueryDsl, SqliteConnection};

use crate::{DbError, DbPool};

/// The WAL size, in frames (pages), past which the writer finishes a
/// checkpoint itself by default (~40 MiB of 4 KiB pages; as the pool's
/// `wal_autocheckpoint`).
pub const WAL_CAP_FRAMES: i64 = 10_000;

/// What `PRAGMA wal_checkpoint` reports.
#[derive(Clone, Copy, Debug, QueryableByName)]
pub struct Checkpoint {
    /// 1 when the checkpoint could not run (another one was running).
    #[diesel(sql_type = Integer)]
    pub busy: i32,
    /// Frames in the WAL.
    #[diesel(sql_type = Integer)]
    pub log: i32,
    /// Frames copied back into the database file.
    #[diesel(sql_type = Integer)]
    pub checkpointed: i32,
}

impl Checkpoint {
    /// Whether every frame of the WAL is in the database file (the WAL
    /// starts again from its beginning at the next write transaction).
    #[must_use]
    pub const fn complete(&self) -> bool {
        self.busy == 0 && self.log == self.checkpointed
    }
}

/// Runs a `PASSIVE` checkpoint on `conn`: copies what it can without
/// waiting for readers or writers.
///
/// # Errors
/// The statement failed.
pub fn checkpoint_passive(conn: &mut SqliteConnection) -> Result<Checkpoint, DbError> {
    let mut rows: Vec<Checkpoint> = diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").load(conn)?;
    rows.pop().ok_or_else(|| DbError::Query(diesel::result::Error::NotFound))
}

/// The checkpointing thread's handle, held by the writer. Dropping it ends
/// the thread.
#[derive(Debug)]
pub struct WalCheckpointer {
    wake: SyncSender<()>,
    frames: Arc<AtomicI64>,
    cap: i64,
}

impl WalCheckpointer {
    /// Starts the thread over `pool`'s database; `None` on PostgreSQL or
    /// when the thread cannot start. It checkpoints at most every `every`,
    /// and only after the writer said it committed; past `cap` frames in
    /// the WAL, the writer finishes a checkpoint itself.
    #[must_use]
    pub fn start(pool: &DbPool, every: Duration, cap: i64) -> Option<Self> {
        if pool.backend() != crate::Backend::Sqlite {
            return None;
        }
        let (wake, rx) = mpsc::sync_channel(1);
        let frames = Arc::new(AtomicI64::new(0));
        let (pool, seen) = (pool.clone(), Arc::clone(&frames));
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&pool, &rx, &seen, every))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the WAL checkpoint thread"))
            .ok()?;
        Some(Self { wake, frames, cap })
    }

    /// Leaves the checkpoints of `conn`, the writer's connection, to the
    /// thread: turns its autocheckpoint off.
    ///
    /// # Errors
    /// The statement failed.
    pub fn take_over(&self, conn: &mut SqliteConnection) -> Result<(), DbError> {
        use diesel::connection::SimpleConnection as _;
        Ok(conn.batch_execute("PRAGMA wal_autocheckpoint = 0")?)
    }

    /// Call after each of the writer's commits, between its transactions:
    /// wakes the thread (never blocks) and, when the WAL has grown past its
    /// cap, finishes a checkpoint on the writer's connection (its outcome).
    ///
    /// # Errors
    /// The checkpoint failed.
    pub fn after_commit(&self, conn: &mut SqliteConnection) -> Result<Option<Checkpoint>, DbError> {
        // Full: a wake-up is already pending.
        self.wake.try_send(()).ok();
        if self.frames.load(Ordering::Relaxed) <= self.cap {
            return Ok(None);
        }
        let done = checkpoint_passive(conn)?;
        metrics::counter!("sqlite_wal_checkpoints_total", "by" => "writer").increment(1);
        if done.complete() {
            self.frames.store(0, Ordering::Relaxed);
            metrics::gauge!("sqlite_wal_frames").set(0.0);
        }
        Ok(Some(done))
    }
}

fn run(pool: &DbPool, wake: &Receiver<()>, frames: &AtomicI64, every: Duration) {
    let mut conn: Option<SqliteConnection> = None;
    // Until the writer is gone: wait for a commit, let the WAL gather
    // frames for a while, then copy what it can.
    while wake.recv().is_ok() {
        std::thread::sleep(every);
        let gone = matches!(wake.try_recv(), Err(TryRecvError::Disconnected));
        if conn.is_none() {
            conn = pool
                .open_sqlite_writer()
                .map_err(|e| tracing::warn!(error = %e, "checkpoint connection"))
                .ok()
                .flatten();
        }
        if let Some(c) = conn.as_mut() {
            match checkpoint_passive(c) {
                Ok(done) => {
                    frames.store(i64::from(done.log), Ordering::Relaxed);
                    metrics::counter!("sqlite_wal_checkpoints_total", "by" => "thread").increment(1);
                    metrics::gauge!("sqlite_wal_frames").set(f64::from(done.log));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a WAL checkpoint failed");
                    conn = None;
                }
            }
        }
        if gone {
            return;
        }
    }
}
