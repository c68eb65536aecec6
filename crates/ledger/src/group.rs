//! Group commit on SQLite: holds and resolutions that arrive while others
//! are being written go into the same transaction, so one commit and one
//! acquisition of SQLite's write lock serve many operations. At low load a
//! batch is one operation and nothing waits: the writer takes what is queued
//! the moment it is free. Batches are applied set-wise (`batch.rs`): a fixed
//! number of statements per batch, whatever its size. A refusal writes
//! nothing; an unexpected error rolls the batch back and its operations run
//! alone, on a fresh connection.
//!
//! The writer is an OS thread of its own that owns its connection: it takes
//! the next batch the moment it has answered the last, while the callers it
//! answered run on the async runtime's threads. (Running each batch through
//! the connection pool's hop to a blocking thread left the writer idle
//! between batches: measured at ~1 busy core of 2.) It is not a task of any
//! runtime, so no runtime waits for it on shutdown; it ends when the last
//! sender (the last clone of the ledger) is dropped.
//!
//! Not on PostgreSQL: each operation there is already one statement, many
//! run at once on separate connections, and PostgreSQL flushes concurrent
//! commits' WAL together. Batching statements into longer transactions made
//! them hold row locks longer and wait on each other: measured 9× slower at
//! concurrency 16 (docs/PERFORMANCE.md).

use diesel::SqliteConnection;
use modelroute_db::DbPool;
use modelroute_db::wal::{WAL_CAP_FRAMES, WalCheckpointer};
use modelroute_types::time;
use tokio::sync::{mpsc, oneshot};

use crate::LedgerError;
use crate::batch::{self, Op, Outcome};
use crate::ops::{HoldArgs, HoldDone, ResolveArgs, ResolveDone};

/// How often the checkpoint thread copies the WAL back while the writer
/// commits.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// An operation waiting for a batch, and where its answer goes.
struct Job {
    op: Op,
    reply: Reply,
}

enum Reply {
    Hold(oneshot::Sender<Result<HoldDone, LedgerError>>),
    Resolve(oneshot::Sender<Result<ResolveDone, LedgerError>>),
}

/// The queue of operations waiting for a batch, and its writer thread.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    tx: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Starts the writer thread over `pool` (a SQLite pool).
    ///
    /// # Errors
    /// [`LedgerError::Stopped`] when the thread cannot be started.
    pub(crate) fn start(pool: &DbPool, max_batch: usize) -> Result<Self, LedgerError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let pool = pool.clone();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer(&pool, rx, max_batch.max(1)))
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start the ledger's writer thread");
                LedgerError::Stopped
            })?;
        Ok(Self { tx })
    }

    pub(crate) async fn hold(&self, args: HoldArgs) -> Result<HoldDone, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job { op: Op::Hold(args), reply: Reply::Hold(reply) }).map_err(|_| LedgerError::Stopped)?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }

    pub(crate) async fn resolve(&self, args: ResolveArgs) -> Result<ResolveDone, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job { op: Op::Resolve(args), reply: Reply::Resolve(reply) }).map_err(|_| LedgerError::Stopped)?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }
}

/// The writer thread: one batch at a time, until every sender is gone.
fn writer(pool: &DbPool, mut rx: mpsc::UnboundedReceiver<Job>, max_batch: usize) {
    // Its own connection: the page cache stays warm from one batch to the
    // next. Replaced after a failed batch.
    let mut conn: Option<SqliteConnection> = None;
    // WAL checkpoints run on a thread of their own (`modelroute_db::wal`).
    let checkpoints = WalCheckpointer::start(pool, CHECKPOINT_EVERY, WAL_CAP_FRAMES);
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("ledger_group_commit_batch_size").record(u32::try_from(jobs.len()).unwrap_or(u32::MAX));
        let (ops, replies): (Vec<Op>, Vec<Reply>) = jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
        let started = std::time::Instant::now();
        let outcome = connected(pool, &mut conn, checkpoints.as_ref())
            .and_then(|c| c.immediate_transaction(|t| batch::apply(t, &ops, time::now())));
        match outcome {
            Ok(outcomes) => {
                metrics::histogram!("ledger_group_commit_seconds").record(started.elapsed().as_secs_f64());
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    answer(reply, Ok(outcome));
                }
            }
            // A refusal or a lost race is an outcome, not an error: any
            // error rolled the whole batch back. Its operations run alone
            // on a fresh connection, each with its own answer.
            Err(e) => {
                tracing::debug!(error = %e, "a group commit failed; its operations run one by one");
                metrics::counter!("ledger_group_commit_failures_total").increment(1);
                conn = None;
                for (op, reply) in ops.iter().zip(replies) {
                    answer(reply, alone(pool, &mut conn, checkpoints.as_ref(), op));
                }
            }
        }
        // Whichever way the batch went, its commits are the checkpoint
        // thread's to copy back; past the cap the writer finishes one.
        if let (Some(ckpt), Some(c)) = (checkpoints.as_ref(), conn.as_mut())
            && let Err(e) = ckpt.after_commit(c)
        {
            tracing::warn!(error = %e, "the writer's WAL checkpoint failed");
        }
    }
}

/// One operation in its own transaction.
fn alone(
    pool: &DbPool,
    conn: &mut Option<SqliteConnection>,
    checkpoints: Option<&WalCheckpointer>,
    op: &Op,
) -> Result<Outcome, LedgerError> {
    let c = connected(pool, conn, checkpoints)?;
    let mut outcomes = c.immediate_transaction(|t| batch::apply(t, std::slice::from_ref(op), time::now()))?;
    outcomes.pop().ok_or(LedgerError::Inconsistent("an operation had no outcome"))
}

/// The writer's connection, opened when there is none; it leaves WAL
/// checkpoints to the checkpoint thread when there is one.
fn connected<'c>(
    pool: &DbPool,
    conn: &'c mut Option<SqliteConnection>,
    checkpoints: Option<&WalCheckpointer>,
) -> Result<&'c mut SqliteConnection, LedgerError> {
    if conn.is_none() {
        let mut opened = pool.open_sqlite_writer()?;
        if let (Some(c), Some(ckpt)) = (opened.as_mut(), checkpoints) {
            ckpt.take_over(c)?;
        }
        *conn = opened;
    }
    conn.as_mut().ok_or(LedgerError::Inconsistent("group commit runs on SQLite only"))
}

/// Sends an operation's answer (an outcome of the other kind is a bug).
fn answer(reply: Reply, outcome: Result<Outcome, LedgerError>) {
    match reply {
        Reply::Hold(r) => drop(r.send(outcome.and_then(Outcome::into_hold))),
        Reply::Resolve(r) => drop(r.send(outcome.and_then(Outcome::into_resolve))),
    }
}
