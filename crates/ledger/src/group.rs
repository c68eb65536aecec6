//! Group commit on SQLite: holds and resolutions that arrive while others
//! are being written go into the same transaction, so one commit and one
//! acquisition of SQLite's write lock serve many operations. At low load a
//! batch is one operation and nothing waits: the writer takes what is queued
//! the moment it is free. The whole batch runs in one hop to the
//! connection's thread and is applied set-wise (`batch.rs`): a fixed number
//! of statements per batch, whatever its size. A refusal writes nothing; an
//! unexpected error rolls the batch back and its operations run alone.
//!
//! Not on PostgreSQL: each operation there is already one statement, many
//! run at once on separate connections, and PostgreSQL flushes concurrent
//! commits' WAL together. Batching statements into longer transactions made
//! them hold row locks longer and wait on each other: measured 9× slower at
//! concurrency 16 (docs/PERFORMANCE.md).

use modelroute_db::{DbPool, SqliteConn};
use tokio::sync::{mpsc, oneshot};

use crate::LedgerError;
use crate::batch::{Op, Outcome};
use crate::ops::{HoldArgs, HoldDone, ResolveArgs, ResolveDone, apply_on_sqlite, run_hold_alone, run_resolve_alone};

#[expect(
    clippy::large_enum_variant,
    reason = "a job lives in the queue briefly; a Box would cost an allocation per hold"
)]
enum Job {
    Hold(HoldArgs, oneshot::Sender<Result<HoldDone, LedgerError>>),
    Resolve(ResolveArgs, oneshot::Sender<Result<ResolveDone, LedgerError>>),
}

enum Done {
    Hold(Result<HoldDone, LedgerError>),
    Resolve(Result<ResolveDone, LedgerError>),
}

/// The queue of operations waiting for a batch, and its workers.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    tx: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Starts the batch writer over `pool` (a SQLite pool).
    pub(crate) fn start(pool: &DbPool, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(worker(pool.clone(), rx, max_batch.max(1)));
        Self { tx }
    }

    pub(crate) async fn hold(&self, args: HoldArgs) -> Result<HoldDone, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job::Hold(args, reply)).map_err(|_| LedgerError::Stopped)?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }

    pub(crate) async fn resolve(&self, args: ResolveArgs) -> Result<ResolveDone, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job::Resolve(args, reply)).map_err(|_| LedgerError::Stopped)?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }
}

async fn worker(pool: DbPool, mut rx: mpsc::UnboundedReceiver<Job>, max_batch: usize) {
    // The writer's own connection: its page cache stays warm from one batch
    // to the next. Replaced after a failed batch.
    let mut writer: Option<SqliteConn> = None;
    loop {
        let batch = {
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        metrics::histogram!("ledger_group_commit_batch_size").record(u32::try_from(batch.len()).unwrap_or(u32::MAX));
        if writer.is_none() {
            writer = pool.dedicated_sqlite().await.ok().flatten();
        }
        match writer.as_mut() {
            Some(conn) => {
                let ok = run(conn, &pool, batch).await;
                if !ok {
                    writer = None;
                }
            }
            None => one_by_one(&pool, batch).await,
        }
    }
}

fn answer(job: Job, done: Done) {
    match (job, done) {
        (Job::Hold(_, reply), Done::Hold(r)) => drop(reply.send(r)),
        (Job::Resolve(_, reply), Done::Resolve(r)) => drop(reply.send(r)),
        (Job::Hold(_, reply), Done::Resolve(_)) => drop(reply.send(Err(LedgerError::Stopped))),
        (Job::Resolve(_, reply), Done::Hold(_)) => drop(reply.send(Err(LedgerError::Stopped))),
    }
}

/// Each job alone, in its own transaction, with its own answer.
async fn one_by_one(pool: &DbPool, jobs: Vec<Job>) {
    for job in jobs {
        let done = match &job {
            Job::Hold(a, _) => Done::Hold(run_hold_alone(pool, a).await),
            Job::Resolve(a, _) => Done::Resolve(run_resolve_alone(pool, a).await),
        };
        answer(job, done);
    }
}

/// Applies `jobs` as one batch on the writer's connection and answers each;
/// `false` when the batch failed (its operations then ran alone).
async fn run(conn: &mut SqliteConn, pool: &DbPool, jobs: Vec<Job>) -> bool {
    let ops: Vec<Op> = jobs
        .iter()
        .map(|job| match job {
            Job::Hold(a, _) => Op::Hold(a.clone()),
            Job::Resolve(a, _) => Op::Resolve(a.clone()),
        })
        .collect();
    // A refusal or a lost race is an outcome, not an error: any error rolls
    // the whole batch back and its operations run alone.
    match apply_on_sqlite(conn, ops).await {
        Ok(out) => {
            for (job, outcome) in jobs.into_iter().zip(out) {
                answer(
                    job,
                    match outcome {
                        Outcome::Hold(done) => Done::Hold(Ok(done)),
                        Outcome::Resolve(done) => Done::Resolve(Ok(done)),
                    },
                );
            }
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "a group commit failed; its operations run one by one");
            one_by_one(pool, jobs).await;
            false
        }
    }
}
