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

/// An operation waiting for a batch, and where its answer goes.
struct Job {
    op: Op,
    reply: Reply,
}

enum Reply {
    Hold(oneshot::Sender<Result<HoldDone, LedgerError>>),
    Resolve(oneshot::Sender<Result<ResolveDone, LedgerError>>),
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
        self.tx.send(Job { op: Op::Hold(args), reply: Reply::Hold(reply) }).map_err(|_| LedgerError::Stopped)?;
        answer.await.map_err(|_| LedgerError::Stopped)?
    }

    pub(crate) async fn resolve(&self, args: ResolveArgs) -> Result<ResolveDone, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(Job { op: Op::Resolve(args), reply: Reply::Resolve(reply) }).map_err(|_| LedgerError::Stopped)?;
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
            None => {
                let (ops, replies) = batch.into_iter().map(|j| (j.op, j.reply)).unzip();
                one_by_one(&pool, ops, replies).await;
            }
        }
    }
}

/// Sends an operation's answer (an outcome of the other kind is a bug).
fn answer(reply: Reply, outcome: Result<Outcome, LedgerError>) {
    match reply {
        Reply::Hold(r) => drop(r.send(outcome.and_then(Outcome::into_hold))),
        Reply::Resolve(r) => drop(r.send(outcome.and_then(Outcome::into_resolve))),
    }
}

/// Each operation alone, in its own transaction, with its own answer.
async fn one_by_one(pool: &DbPool, ops: Vec<Op>, replies: Vec<Reply>) {
    for (op, reply) in ops.into_iter().zip(replies) {
        let outcome = match &op {
            Op::Hold(a) => run_hold_alone(pool, a).await.map(Outcome::Hold),
            Op::Resolve(a) => run_resolve_alone(pool, a).await.map(Outcome::Resolve),
        };
        answer(reply, outcome);
    }
}

/// Applies `jobs` as one batch on the writer's connection and answers each;
/// `false` when the batch failed (its operations then ran alone).
async fn run(conn: &mut SqliteConn, pool: &DbPool, jobs: Vec<Job>) -> bool {
    // The operations move to SQLite's thread and come back: nothing is copied.
    let (ops, replies): (Vec<Op>, Vec<Reply>) = jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
    // A refusal or a lost race is an outcome, not an error: any error rolls
    // the whole batch back and its operations run alone.
    match apply_on_sqlite(conn, ops).await {
        Ok((_, Ok(outcomes))) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                answer(reply, Ok(outcome));
            }
            true
        }
        Ok((ops, Err(e))) => {
            tracing::debug!(error = %e, "a group commit failed; its operations run one by one");
            one_by_one(pool, ops, replies).await;
            false
        }
        Err(e) => {
            // SQLite's thread is gone with the operations: their callers are told.
            tracing::warn!(error = %e, "the ledger's writer thread failed");
            false
        }
    }
}
