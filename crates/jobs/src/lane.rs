//! On SQLite, the queue's hot writes — enqueues on their own, claims,
//! lease renewals, completions and failures — go through the data layer's
//! shared writer ([`modelroute_db::writer`]), so they share transactions
//! with each other and with the ledger's writes instead of each taking
//! SQLite's write lock. The same statements as the pool's path, run on the
//! writer's (blocking) connection.

use chrono::NaiveDateTime;
use diesel::SqliteConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
use modelroute_db::schema::jobs;
use modelroute_db::writer::Lane;

use crate::JobError;
use crate::queue::{CLAIM_SQLITE, ClaimedRow, JobRow, JobStatus};

/// One write of the queue.
pub(crate) enum Write {
    /// Insert a job (nothing when its unique key is taken).
    Enqueue(JobRow),
    /// Claim up to `n` due jobs of `queue` for `worker` until `until`.
    Claim { queue: String, worker: String, n: i64, until: NaiveDateTime, now: NaiveDateTime },
    /// Move the leases of these running attempts to `until`.
    Renew { claims: Vec<(String, i32)>, until: NaiveDateTime },
    /// Delete these succeeded jobs.
    Complete(Vec<String>),
    /// Record a failed attempt: pending again at `run_at`, or dead.
    Fail { id: String, attempt: i32, status: JobStatus, run_at: NaiveDateTime, error: String, now: NaiveDateTime },
}

/// What a write did.
pub(crate) enum Written {
    /// Rows changed (an enqueue: 1 when it was inserted).
    Count(usize),
    /// The claimed jobs.
    Claimed(Vec<ClaimedRow>),
}

/// The queue's writes through the shared writer.
pub(crate) struct JobsLane;

impl Lane for JobsLane {
    type Op = Write;
    type Outcome = Written;
    type Error = JobError;

    fn apply(conn: &mut SqliteConnection, ops: &[&Write]) -> Result<Vec<Written>, JobError> {
        ops.iter().map(|op| apply(conn, op)).collect()
    }
}

fn apply(conn: &mut SqliteConnection, op: &Write) -> Result<Written, JobError> {
    let running = JobStatus::Running.as_str();
    Ok(match op {
        Write::Enqueue(row) => {
            Written::Count(diesel::insert_into(jobs::table).values(row).on_conflict_do_nothing().execute(conn)?)
        }
        Write::Claim { queue, worker, n, until, now } => Written::Claimed(
            diesel::sql_query(CLAIM_SQLITE)
                .bind::<Timestamp, _>(until)
                .bind::<Text, _>(worker)
                .bind::<Timestamp, _>(now)
                .bind::<Text, _>(queue)
                .bind::<BigInt, _>(n)
                .load(conn)?,
        ),
        Write::Renew { claims, until } => {
            let mut renewed = 0;
            for (id, attempt) in claims {
                renewed += diesel::update(
                    jobs::table
                        .filter(jobs::id.eq(id))
                        .filter(jobs::attempts.eq(attempt))
                        .filter(jobs::status.eq(running)),
                )
                .set(jobs::lease_until.eq(Some(until)))
                .execute(conn)?;
            }
            Written::Count(renewed)
        }
        Write::Complete(ids) => Written::Count(
            diesel::delete(jobs::table.filter(jobs::id.eq_any(ids)).filter(jobs::status.eq(running))).execute(conn)?,
        ),
        Write::Fail { id, attempt, status, run_at, error, now } => {
            let changed = diesel::update(
                jobs::table.filter(jobs::id.eq(id)).filter(jobs::attempts.eq(attempt)).filter(jobs::status.eq(running)),
            )
            .set((
                jobs::status.eq(status.as_str()),
                jobs::run_at.eq(run_at),
                jobs::lease_until.eq(None::<NaiveDateTime>),
                jobs::worker.eq(None::<String>),
                jobs::last_error.eq(Some(error)),
                jobs::updated_at.eq(now),
            ))
            .execute(conn)?;
            if changed == 1 && *status == JobStatus::Dead {
                let (kind, key): (String, Option<String>) =
                    jobs::table.find(id).select((jobs::kind, jobs::unique_key)).first(conn)?;
                if let Some(key) = key {
                    diesel::delete(
                        jobs::table
                            .filter(jobs::kind.eq(&kind))
                            .filter(jobs::unique_key.eq(&key))
                            .filter(jobs::status.eq(JobStatus::Dead.as_str()))
                            .filter(jobs::id.ne(id)),
                    )
                    .execute(conn)?;
                }
            }
            Written::Count(changed)
        }
    })
}
