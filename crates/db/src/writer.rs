//! The SQLite writer: one thread of its own, owning one connection, that
//! every crate's writes can go through. Writes that arrive while others are
//! being written share the next transaction (group commit), so one commit
//! and one acquisition of SQLite's write lock serve many operations, of any
//! crate: the ledger's holds and settlements and the job queue's claims and
//! completions ride in the same commits. At low load a batch is one
//! operation and nothing waits: the writer takes what is queued the moment
//! it is free.
//!
//! A crate brings its writes as a [`Lane`]: its operations, applied
//! set-wise in the writer's transaction (a fixed number of statements per
//! batch, whatever its size, is each lane's own business). Within a batch
//! the lanes run in the order their first operation arrived. An error rolls
//! the whole batch back and its operations run again alone, each in its own
//! transaction on a fresh connection, each with its own answer; answers go
//! out only after the commit.
//!
//! The writer is an OS thread, not a task of any runtime: it takes the next
//! batch the moment it has answered the last while the callers it answered
//! run on the runtime's threads (running each batch through the pool's hop
//! to a blocking thread left the writer idle between batches: measured at
//! ~1 busy core of 2, docs/PERFORMANCE.md), and no runtime waits for it on
//! shutdown. It ends when the last clone of its pool is dropped. WAL
//! checkpoints run on a thread of their own ([`crate::wal`]).
//!
//! Not on PostgreSQL: each operation there is its own short transaction,
//! many run at once on separate connections, and PostgreSQL flushes
//! concurrent commits' WAL together; batching there made transactions hold
//! row locks longer and wait on each other (measured 9× slower at
//! concurrency 16).

use std::any::{Any, TypeId};

use diesel::SqliteConnection;
use tokio::sync::{mpsc, oneshot};

use crate::wal::{WAL_CAP_FRAMES, WalCheckpointer};
use crate::{DbError, DbPool};

/// How often the checkpoint thread copies the WAL back while the writer commits.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// One crate's writes through the writer.
pub trait Lane: 'static {
    /// An operation.
    type Op: Send + 'static;
    /// What an operation answers.
    type Outcome: Send + 'static;
    /// What can go wrong; an error rolls the batch back.
    type Error: From<DbError> + From<diesel::result::Error> + Send + 'static;

    /// Applies `ops` in order inside the writer's transaction, one outcome
    /// per operation. A refusal the caller should hear about is an outcome;
    /// an `Err` rolls back the whole batch (every lane's), whose operations
    /// then run alone.
    ///
    /// # Errors
    /// Whatever should undo the batch.
    fn apply(conn: &mut SqliteConnection, ops: &[&Self::Op]) -> Result<Vec<Self::Outcome>, Self::Error>;
}

type Erased = Box<dyn Any + Send>;

/// A lane's error, or the writer's own (opening, committing).
enum Failure {
    Lane(Erased),
    Db(DbError),
}

impl From<diesel::result::Error> for Failure {
    fn from(e: diesel::result::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

/// A lane's batch, type-erased.
type ApplyFn = fn(&mut SqliteConnection, &[&Erased]) -> Result<Vec<Erased>, Failure>;

/// An operation waiting for a batch, with its lane's functions.
struct Job {
    lane: TypeId,
    apply: ApplyFn,
    answer: fn(Erased, Result<Erased, Failure>),
    item: Erased,
}

struct Pending<L: Lane> {
    op: L::Op,
    reply: oneshot::Sender<Result<L::Outcome, L::Error>>,
}

fn apply_erased<L: Lane>(conn: &mut SqliteConnection, items: &[&Erased]) -> Result<Vec<Erased>, Failure> {
    let ops: Vec<&L::Op> = items.iter().filter_map(|i| i.downcast_ref::<Pending<L>>()).map(|p| &p.op).collect();
    let outcomes = L::apply(conn, &ops).map_err(|e| Failure::Lane(Box::new(e)))?;
    if outcomes.len() != ops.len() {
        return Err(Failure::Db(DbError::Writer("a lane answered the wrong number of operations")));
    }
    Ok(outcomes.into_iter().map(erase).collect())
}

fn erase<T: Send + 'static>(value: T) -> Erased {
    Box::new(value)
}

fn answer_erased<L: Lane>(item: Erased, outcome: Result<Erased, Failure>) {
    let Ok(pending) = item.downcast::<Pending<L>>() else { return };
    let result = match outcome {
        Ok(o) => o
            .downcast::<L::Outcome>()
            .map(|o| *o)
            .map_err(|_| L::Error::from(DbError::Writer("an outcome of another lane"))),
        Err(Failure::Lane(e)) => Err(e
            .downcast::<L::Error>()
            .map_or_else(|_| L::Error::from(DbError::Writer("an error of another lane")), |e| *e)),
        Err(Failure::Db(e)) => Err(L::Error::from(e)),
    };
    let _ = pending.reply.send(result);
}

/// The queue of writes waiting for a batch, and its thread.
#[derive(Debug)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Job>,
}

impl Writer {
    /// Starts the writer thread over `pool` (a SQLite pool), taking at most
    /// `max_batch` operations per transaction.
    ///
    /// # Errors
    /// [`DbError::Connect`] when the thread cannot be started.
    pub(crate) fn start(pool: &DbPool, max_batch: usize) -> Result<Self, DbError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let pool = pool.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(&pool, rx, max_batch.max(1)))
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start the SQLite writer thread");
                DbError::Writer("cannot start the writer thread")
            })?;
        Ok(Self { tx })
    }

    /// Writes `op` in the next batch; answers once its batch committed.
    ///
    /// # Errors
    /// The lane's error, or [`DbError::Connect`] when the writer stopped.
    pub async fn submit<L: Lane>(&self, op: L::Op) -> Result<L::Outcome, L::Error> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            lane: TypeId::of::<L>(),
            apply: apply_erased::<L>,
            answer: answer_erased::<L>,
            item: Box::new(Pending::<L> { op, reply }),
        };
        let stopped = || L::Error::from(DbError::Writer("the writer thread stopped"));
        self.tx.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The writer thread: one batch at a time, until every sender is gone.
fn run(pool: &DbPool, mut rx: mpsc::UnboundedReceiver<Job>, max_batch: usize) {
    // Its own connection: the page cache stays warm from one batch to the
    // next. Replaced after a failed batch.
    let mut conn: Option<SqliteConnection> = None;
    let checkpoints = WalCheckpointer::start(pool, CHECKPOINT_EVERY, WAL_CAP_FRAMES);
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("sqlite_writer_batch_size").record(u32::try_from(jobs.len()).unwrap_or(u32::MAX));
        let started = std::time::Instant::now();
        // Lanes in the order their first operation arrived; each lane's
        // operations in arrival order.
        let mut lanes: Vec<(TypeId, ApplyFn)> = Vec::new();
        for j in &jobs {
            if !lanes.iter().any(|(id, _)| *id == j.lane) {
                lanes.push((j.lane, j.apply));
            }
        }
        let outcome = connected(pool, &mut conn, checkpoints.as_ref()).and_then(|c| {
            c.immediate_transaction(|t| {
                let mut per_lane = Vec::with_capacity(lanes.len());
                for (id, apply) in &lanes {
                    let items: Vec<&Erased> = jobs.iter().filter(|j| j.lane == *id).map(|j| &j.item).collect();
                    per_lane.push((*id, apply(t, &items)?.into_iter()));
                }
                Ok::<_, Failure>(per_lane)
            })
        });
        match outcome {
            Ok(mut per_lane) => {
                metrics::histogram!("sqlite_writer_seconds").record(started.elapsed().as_secs_f64());
                for job in jobs {
                    let o = per_lane
                        .iter_mut()
                        .find(|(id, _)| *id == job.lane)
                        .and_then(|(_, outcomes)| outcomes.next())
                        .ok_or(Failure::Db(DbError::Writer("an operation had no outcome")));
                    (job.answer)(job.item, o);
                }
            }
            Err(e) => {
                if let Failure::Db(e) = &e {
                    tracing::debug!(error = %e, "a batch failed; its operations run one by one");
                } else {
                    tracing::debug!("a batch failed; its operations run one by one");
                }
                metrics::counter!("sqlite_writer_failures_total").increment(1);
                conn = None;
                for job in jobs {
                    let o = alone(pool, &mut conn, checkpoints.as_ref(), &job);
                    (job.answer)(job.item, o);
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
    job: &Job,
) -> Result<Erased, Failure> {
    let c = connected(pool, conn, checkpoints)?;
    let mut outcomes = c.immediate_transaction(|t| (job.apply)(t, &[&job.item]))?;
    outcomes.pop().ok_or_else(|| Failure::Db(DbError::Writer("an operation had no outcome")))
}

/// The writer's connection, opened when there is none; it leaves WAL
/// checkpoints to the checkpoint thread when there is one.
fn connected<'c>(
    pool: &DbPool,
    conn: &'c mut Option<SqliteConnection>,
    checkpoints: Option<&WalCheckpointer>,
) -> Result<&'c mut SqliteConnection, Failure> {
    if conn.is_none() {
        let mut opened = pool.open_sqlite_writer().map_err(Failure::Db)?;
        if let (Some(c), Some(ckpt)) = (opened.as_mut(), checkpoints) {
            ckpt.take_over(c).map_err(Failure::Db)?;
        }
        *conn = opened;
    }
    conn.as_mut().ok_or_else(|| Failure::Db(DbError::Writer("the writer runs on SQLite only")))
}

/// One statement (or a few) of any crate, written in the writer's next
/// batch: for the writes that are not worth a lane of their own but must
/// not take SQLite's write lock from the writer on a pooled connection (a
/// pooled write waits for the lock in SQLite's busy handler, which sleeps
/// in steps of up to 100 ms while the writer commits batch after batch).
/// It may run twice (once in a batch that rolled back, once alone), so it
/// is a `Fn`; it answers the rows it changed.
pub type Statement = Box<dyn Fn(&mut SqliteConnection) -> diesel::QueryResult<usize> + Send>;

/// The lane of [`Statement`]s ([`Writer::execute`]).
#[derive(Debug)]
pub struct StatementLane;

impl Lane for StatementLane {
    type Op = Statement;
    type Outcome = usize;
    type Error = DbError;

    fn apply(conn: &mut SqliteConnection, ops: &[&Statement]) -> Result<Vec<usize>, DbError> {
        ops.iter().map(|op| op(conn).map_err(DbError::Query)).collect()
    }
}

impl Writer {
    /// Runs `statement` in the next batch; answers the rows it changed,
    /// once its batch committed. Use [`crate::db_execute`], which does the
    /// same on PostgreSQL with a pooled connection.
    ///
    /// # Errors
    /// The statement's error, or [`DbError::Writer`] when the writer stopped.
    pub async fn execute(
        &self,
        statement: impl Fn(&mut SqliteConnection) -> diesel::QueryResult<usize> + Send + 'static,
    ) -> Result<usize, DbError> {
        self.submit::<StatementLane>(Box::new(statement)).await
    }
}
