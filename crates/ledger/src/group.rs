//! Group commit: holds and resolutions that arrive while others are being
//! written are put in the same transaction, so one durable commit (one
//! `fsync` on PostgreSQL; one write lock on SQLite) serves many operations.
//! At low load a batch is one operation and nothing waits: a worker takes
//! what is queued the moment it is free.
//!
//! PostgreSQL: up to `workers` transactions at once, each of up to
//! `max_batch` statements (`ledger_hold()` / `ledger_resolve()`, which never
//! raise for a refused debit or a lost race: they answer it). If a batch's
//! transaction fails (a deadlock with another replica, a unique key raced),
//! every operation in it is run again alone, so each gets its own answer.
//! SQLite: one worker (one writer anyway); each operation runs in a
//! savepoint of the batch's `BEGIN IMMEDIATE` transaction, so a refused
//! debit rolls back only its own writes.

use std::sync::Arc;

use diesel::Connection as _;
use diesel_async::AsyncConnection as _;
use modelroute_db::{DbConn, DbPool, PgConn};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::LedgerError;
use crate::ops::{
    HoldArgs, HoldDone, ResolveArgs, ResolveDone, hold_pg, hold_sqlite, on_sqlite_thread, refused_is_an_outcome,
    resolve_pg, resolve_sqlite, run_hold_alone, run_resolve_alone,
};

enum Job {
    Hold(HoldArgs, oneshot::Sender<Result<HoldDone, LedgerError>>),
    Resolve(ResolveArgs, oneshot::Sender<Result<ResolveDone, LedgerError>>),
}

/// A job's arguments, sent to SQLite's thread.
enum Op {
    Hold(HoldArgs),
    Resolve(ResolveArgs),
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
    /// Starts `workers` batch writers over `pool` (one on SQLite).
    pub(crate) fn start(pool: &DbPool, workers: usize, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let workers = if pool.backend() == modelroute_db::Backend::Sqlite { 1 } else { workers.max(1) };
        for _ in 0..workers {
            tokio::spawn(worker(pool.clone(), Arc::clone(&rx), max_batch.max(1)));
        }
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

async fn worker(pool: DbPool, rx: Arc<Mutex<mpsc::UnboundedReceiver<Job>>>, max_batch: usize) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
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
        run(&pool, batch).await;
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

/// The org a job locks first: batches order their jobs by it, so two
/// batches take org rows in the same order.
fn org_of(job: &Job) -> &str {
    match job {
        Job::Hold(a, _) => &a.row.org_id,
        Job::Resolve(a, _) => a.id.as_str(),
    }
}

async fn run(pool: &DbPool, mut jobs: Vec<Job>) {
    jobs.sort_by(|a, b| org_of(a).cmp(org_of(b)));
    if jobs.len() == 1 {
        return one_by_one(pool, jobs).await;
    }
    let Ok(conn) = pool.get().await else { return one_by_one(pool, jobs).await };
    let results = match conn {
        DbConn::Postgres(mut c) => {
            let c: &mut PgConn = &mut c;
            c.transaction(async |t: &mut PgConn| {
                let mut out = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    out.push(match job {
                        Job::Hold(a, _) => Done::Hold(Ok(hold_pg(t, a).await?)),
                        Job::Resolve(a, _) => Done::Resolve(Ok(resolve_pg(t, a).await?)),
                    });
                }
                Ok::<_, LedgerError>(out)
            })
            .await
        }
        DbConn::Sqlite(mut c) => {
            // The whole batch in one hop to SQLite's thread, one savepoint per operation.
            let ops: Vec<Op> = jobs
                .iter()
                .map(|job| match job {
                    Job::Hold(a, _) => Op::Hold(a.clone()),
                    Job::Resolve(a, _) => Op::Resolve(a.clone()),
                })
                .collect();
            on_sqlite_thread(&mut c, move |conn| {
                conn.immediate_transaction(|t| {
                    Ok::<_, LedgerError>(
                        ops.iter()
                            .map(|op| match op {
                                Op::Hold(a) => {
                                    Done::Hold(refused_is_an_outcome(t.transaction(|sp| hold_sqlite(sp, a))))
                                }
                                Op::Resolve(a) => Done::Resolve(t.transaction(|sp| resolve_sqlite(sp, a))),
                            })
                            .collect::<Vec<_>>(),
                    )
                })
            })
            .await
        }
    };
    match results {
        Ok(out) => {
            for (job, done) in jobs.into_iter().zip(out) {
                answer(job, done);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "a group commit failed; its operations run one by one");
            one_by_one(pool, jobs).await;
        }
    }
}
