//! The queue's rows and the statements over them.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text, Timestamp};
use diesel_async::RunQueryDsl;
use modelroute_db::schema::jobs;
use modelroute_db::{DbPool, PgConn, SqliteConn, db_run};
use modelroute_types::{JobId, time};
use serde::Serialize;
use tokio::sync::Notify;

use crate::JobError;
use crate::lane::{JobsLane, Write, Written};

/// Rows a write changed.
const fn count(w: &Written) -> usize {
    match w {
        Written::Count(n) => *n,
        Written::Claimed(_) => 0,
    }
}

/// The state of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for `run_at` and a worker.
    Pending,
    /// Claimed by a worker, under a lease.
    Running,
    /// Failed its last attempt; kept until an operator retries or cancels it.
    Dead,
    /// Canceled by an operator; kept for the record.
    Canceled,
}

impl JobStatus {
    /// The stored name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Dead => "dead",
            Self::Canceled => "canceled",
        }
    }
}

impl TryFrom<&str> for JobStatus {
    type Error = JobError;

    fn try_from(s: &str) -> Result<Self, JobError> {
        match s {
            "pending" => Ok(Self::Pending),
            "running" => Ok(Self::Running),
            "dead" => Ok(Self::Dead),
            "canceled" => Ok(Self::Canceled),
            other => Err(JobError::UnknownStatus(other.to_owned())),
        }
    }
}

/// A job to enqueue.
#[derive(Clone, Debug)]
pub struct NewJob {
    kind: String,
    queue: String,
    payload: String,
    unique_key: Option<String>,
    priority: i32,
    max_attempts: i32,
    run_at: Option<NaiveDateTime>,
}

/// The attempts a job gets unless its kind says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 8;

impl NewJob {
    /// A job of `kind` with `payload` (any JSON value), on the `default`
    /// queue, to run now, with 8 attempts.
    ///
    /// # Errors
    /// [`JobError::Payload`] when `payload` does not serialise.
    pub fn new(kind: &str, payload: &impl Serialize) -> Result<Self, JobError> {
        Ok(Self {
            kind: kind.to_owned(),
            queue: "default".into(),
            payload: serde_json::to_string(payload).map_err(|e| JobError::Payload(e.to_string()))?,
            unique_key: None,
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            run_at: None,
        })
    }

    /// On queue `queue` (each queue has its own workers).
    #[must_use]
    pub fn queue(self, queue: &str) -> Self {
        Self { queue: queue.to_owned(), ..self }
    }

    /// At most one pending or running job of this kind with `key`: a second
    /// enqueue while one is pending or running is [`Enqueued::Exists`].
    #[must_use]
    pub fn unique(self, key: impl Into<String>) -> Self {
        Self { unique_key: Some(key.into()), ..self }
    }

    /// Claimed before lower priorities of its queue (default 0).
    #[must_use]
    pub fn priority(self, priority: i32) -> Self {
        Self { priority, ..self }
    }

    /// Tried at most `n` times (at least once), then dead.
    #[must_use]
    pub fn max_attempts(self, n: u32) -> Self {
        Self { max_attempts: i32::try_from(n.max(1)).unwrap_or(i32::MAX), ..self }
    }

    /// Not before `at`.
    #[must_use]
    pub fn run_at(self, at: NaiveDateTime) -> Self {
        Self { run_at: Some(at), ..self }
    }

    /// The kind.
    #[must_use]
    pub fn kind(&self) -> &str {
        &self.kind
    }

    fn row(&self, now: NaiveDateTime) -> JobRow {
        JobRow {
            id: JobId::new().into_string(),
            kind: self.kind.clone(),
            queue: self.queue.clone(),
            payload: self.payload.clone(),
            unique_key: self.unique_key.clone(),
            status: JobStatus::Pending.as_str().to_owned(),
            priority: self.priority,
            attempts: 0,
            max_attempts: self.max_attempts,
            run_at: self.run_at.unwrap_or(now),
            lease_until: None,
            worker: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }
}

#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = jobs)]
pub(crate) struct JobRow {
    pub(crate) id: String,
    kind: String,
    queue: String,
    payload: String,
    unique_key: Option<String>,
    status: String,
    priority: i32,
    attempts: i32,
    max_attempts: i32,
    run_at: NaiveDateTime,
    lease_until: Option<NaiveDateTime>,
    worker: Option<String>,
    last_error: Option<String>,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

/// What an enqueue did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job.
    New(JobId),
    /// A job of the kind with the same unique key is pending or running;
    /// nothing was added.
    Exists,
}

/// Enqueuing on a connection, inside whatever transaction it is in: the job
/// commits or rolls back with it. Implemented for both backends'
/// connections, so it can be called in a `db_transaction!` body. Call
/// [`Queue::wake`] after the commit so an idle worker of this process starts
/// it at once.
pub trait Enqueue {
    /// Inserts `job`.
    fn enqueue(&mut self, job: &NewJob) -> impl Future<Output = Result<Enqueued, JobError>> + Send;
}

macro_rules! enqueue_on {
    ($conn:ty) => {
        impl Enqueue for $conn {
            async fn enqueue(&mut self, job: &NewJob) -> Result<Enqueued, JobError> {
                let row = job.row(time::now());
                let inserted =
                    diesel::insert_into(jobs::table).values(&row).on_conflict_do_nothing().execute(self).await?;
                Ok(if inserted == 1 { Enqueued::New(JobId::from_trusted(row.id)) } else { Enqueued::Exists })
            }
        }
    };
}
enqueue_on!(PgConn);
enqueue_on!(SqliteConn);

/// A claimed job, as its handler sees it.
#[derive(Clone, Debug)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its kind.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// Its payload, as it was enqueued.
    pub payload: serde_json::Value,
    /// Which attempt this is (1 for the first).
    pub attempt: i32,
    /// How many it gets.
    pub max_attempts: i32,
    /// When it was enqueued.
    pub created_at: NaiveDateTime,
}

impl Job {
    /// The payload as `T`.
    ///
    /// # Errors
    /// [`JobError::Payload`] when it is not a `T`.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.payload.clone()).map_err(|e| JobError::Payload(e.to_string()))
    }
}

#[derive(QueryableByName)]
pub(crate) struct ClaimedRow {
    #[diesel(sql_type = Text)]
    pub(crate) id: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    queue: String,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Integer)]
    max_attempts: i32,
    #[diesel(sql_type = Timestamp)]
    created_at: NaiveDateTime,
}

const CLAIM_PG: &str = "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_until = $1, worker = $2, \
     updated_at = $3 WHERE id IN (SELECT id FROM jobs WHERE status = 'pending' AND queue = $4 AND run_at <= $3 \
     ORDER BY priority DESC, run_at LIMIT $5 FOR UPDATE SKIP LOCKED) \
     RETURNING id, kind, queue, payload, attempts, max_attempts, created_at";

pub(crate) const CLAIM_SQLITE: &str = "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_until = ?1, worker = ?2, \
     updated_at = ?3 WHERE id IN (SELECT id FROM jobs WHERE status = 'pending' AND queue = ?4 AND run_at <= ?3 \
     ORDER BY priority DESC, run_at LIMIT ?5) \
     RETURNING id, kind, queue, payload, attempts, max_attempts, created_at";

/// A job as an operator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct JobInfo {
    /// Its id.
    pub id: JobId,
    /// Its kind.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// Its payload.
    pub payload: serde_json::Value,
    /// Its unique key, if any.
    pub unique_key: Option<String>,
    /// Its state.
    pub status: JobStatus,
    /// Its priority in its queue.
    pub priority: i32,
    /// Attempts made.
    pub attempts: i32,
    /// Attempts it gets.
    pub max_attempts: i32,
    /// Not before.
    pub run_at: NaiveDateTime,
    /// The running attempt's lease.
    pub lease_until: Option<NaiveDateTime>,
    /// The worker running it.
    pub worker: Option<String>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: NaiveDateTime,
    /// When it last changed.
    pub updated_at: NaiveDateTime,
}

impl TryFrom<JobRow> for JobInfo {
    type Error = JobError;

    fn try_from(r: JobRow) -> Result<Self, JobError> {
        Ok(Self {
            status: JobStatus::try_from(r.status.as_str())?,
            id: JobId::from_trusted(r.id),
            kind: r.kind,
            queue: r.queue,
            payload: serde_json::from_str(&r.payload).unwrap_or(serde_json::Value::String(r.payload)),
            unique_key: r.unique_key,
            priority: r.priority,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            run_at: r.run_at,
            lease_until: r.lease_until,
            worker: r.worker,
            last_error: r.last_error,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// Which jobs to list.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// One state only.
    pub status: Option<JobStatus>,
    /// One kind only.
    pub kind: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<i64>,
}

/// How many jobs of a kind are in a state, and the oldest one's enqueue time.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KindStats {
    /// The kind.
    pub kind: String,
    /// The state.
    pub status: JobStatus,
    /// How many.
    pub count: i64,
    /// The oldest one's enqueue time.
    pub oldest: Option<NaiveDateTime>,
}

/// The queue over a database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Queue {
    pool: DbPool,
    wake: Arc<Notify>,
}

fn ids(list: &[JobId]) -> Vec<&str> {
    list.iter().map(JobId::as_str).collect()
}

impl Queue {
    /// The queue in `pool`'s database.
    #[must_use]
    pub fn new(pool: DbPool) -> Self {
        Self { pool, wake: Arc::new(Notify::new()) }
    }

    /// The database.
    #[must_use]
    pub const fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// Tells this process's idle workers there is work (after committing a
    /// transaction that enqueued through [`Enqueue`]).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    pub(crate) fn woken(&self) -> &Notify {
        &self.wake
    }

    /// Enqueues `job` in a transaction of its own and wakes the workers.
    ///
    /// # Errors
    /// A database failure.
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, JobError> {
        let done = if let Some(writer) = self.pool.writer()? {
            let row = job.row(time::now());
            let id = JobId::from_trusted(row.id.clone());
            match writer.submit::<JobsLane>(Write::Enqueue(row)).await? {
                Written::Count(1) => Enqueued::New(id),
                _ => Enqueued::Exists,
            }
        } else {
            db_run!(self.pool, |conn| conn.enqueue(job).await)?
        };
        self.wake();
        Ok(done)
    }

    /// Claims up to `n` pending jobs of `queue` that are due, for `worker`,
    /// under a lease of `lease`; each claim counts an attempt.
    ///
    /// # Errors
    /// A database failure.
    pub async fn claim(&self, queue: &str, worker: &str, n: usize, lease: Duration) -> Result<Vec<Job>, JobError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let now = time::now();
        let until = lease_end(now, lease);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let rows: Vec<ClaimedRow> = if let Some(writer) = self.pool.writer()? {
            let claim = Write::Claim { queue: queue.to_owned(), worker: worker.to_owned(), n, until, now };
            match writer.submit::<JobsLane>(claim).await? {
                Written::Claimed(rows) => rows,
                Written::Count(_) => Vec::new(),
            }
        } else {
            db_run!(self.pool, |conn| diesel::sql_query(CLAIM_PG)
                .bind::<Timestamp, _>(until)
                .bind::<Text, _>(worker)
                .bind::<Timestamp, _>(now)
                .bind::<Text, _>(queue)
                .bind::<BigInt, _>(n)
                .load(conn)
                .await)?
        };
        Ok(rows
            .into_iter()
            .map(|r| Job {
                id: JobId::from_trusted(r.id),
                kind: r.kind,
                queue: r.queue,
                payload: serde_json::from_str(&r.payload).unwrap_or(serde_json::Value::String(r.payload)),
                attempt: r.attempts,
                max_attempts: r.max_attempts,
                created_at: r.created_at,
            })
            .collect())
    }

    /// Moves the lease of each running attempt `(id, attempt)` to `lease`
    /// from now; answers how many were still this attempt's.
    ///
    /// # Errors
    /// A database failure.
    pub async fn renew(&self, claims: &[(JobId, i32)], lease: Duration) -> Result<usize, JobError> {
        let until = lease_end(time::now(), lease);
        if let Some(writer) = self.pool.writer()? {
            let claims = claims.iter().map(|(id, a)| (id.as_str().to_owned(), *a)).collect();
            return Ok(count(&writer.submit::<JobsLane>(Write::Renew { claims, until }).await?));
        }
        let mut renewed = 0;
        for (id, attempt) in claims {
            renewed += db_run!(self.pool, |conn| diesel::update(
                jobs::table
                    .filter(jobs::id.eq(id.as_str()))
                    .filter(jobs::attempts.eq(attempt))
                    .filter(jobs::status.eq(JobStatus::Running.as_str()))
            )
            .set(jobs::lease_until.eq(Some(until)))
            .execute(conn)
            .await)?;
        }
        Ok(renewed)
    }

    /// Removes jobs that succeeded (in one statement); answers how many.
    ///
    /// # Errors
    /// A database failure.
    pub async fn complete(&self, done: &[JobId]) -> Result<usize, JobError> {
        let mut removed = 0;
        for chunk in done.chunks(500) {
            if let Some(writer) = self.pool.writer()? {
                let ids = chunk.iter().map(|j| j.as_str().to_owned()).collect();
                removed += count(&writer.submit::<JobsLane>(Write::Complete(ids)).await?);
                continue;
            }
            let ids = ids(chunk);
            removed += db_run!(self.pool, |conn| diesel::delete(
                jobs::table.filter(jobs::id.eq_any(&ids)).filter(jobs::status.eq(JobStatus::Running.as_str()))
            )
            .execute(conn)
            .await)?;
        }
        Ok(removed)
    }

    /// Records a failed attempt: pending again at `retry_at`, or dead when
    /// `retry_at` is `None`. Only the attempt that is running: a worker that
    /// lost its lease changes nothing. Answers whether it did.
    ///
    /// A keyed job that dies replaces the dead jobs of its kind and key: a
    /// periodic job that keeps failing is one dead row (its latest error),
    /// not one per period.
    ///
    /// # Errors
    /// A database failure.
    pub async fn fail(
        &self,
        job: &JobId,
        attempt: i32,
        error: &str,
        retry_at: Option<NaiveDateTime>,
    ) -> Result<bool, JobError> {
        let now = time::now();
        let (status, run_at) = match retry_at {
            Some(at) => (JobStatus::Pending, at),
            None => (JobStatus::Dead, now),
        };
        let error: String = error.chars().take(2000).collect();
        if let Some(writer) = self.pool.writer()? {
            let fail = Write::Fail { id: job.as_str().to_owned(), attempt, status, run_at, error, now };
            return Ok(count(&writer.submit::<JobsLane>(fail).await?) == 1);
        }
        let dead = JobStatus::Dead.as_str();
        let changed = modelroute_db::db_transaction!(self.pool, |conn| {
            let changed = diesel::update(
                jobs::table
                    .filter(jobs::id.eq(job.as_str()))
                    .filter(jobs::attempts.eq(attempt))
                    .filter(jobs::status.eq(JobStatus::Running.as_str())),
            )
            .set((
                jobs::status.eq(status.as_str()),
                jobs::run_at.eq(run_at),
                jobs::lease_until.eq(None::<NaiveDateTime>),
                jobs::worker.eq(None::<String>),
                jobs::last_error.eq(Some(&error)),
                jobs::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
            if changed == 1 && status == JobStatus::Dead {
                let (kind, key): (String, Option<String>) =
                    jobs::table.find(job.as_str()).select((jobs::kind, jobs::unique_key)).first(conn).await?;
                if let Some(key) = key {
                    diesel::delete(
                        jobs::table
                            .filter(jobs::kind.eq(&kind))
                            .filter(jobs::unique_key.eq(&key))
                            .filter(jobs::status.eq(dead))
                            .filter(jobs::id.ne(job.as_str())),
                    )
                    .execute(conn)
                    .await?;
                }
            }
            Ok::<_, JobError>(changed)
        })?;
        Ok(changed == 1)
    }

    /// Gives back running attempts without counting them (a worker shutting
    /// down): pending again at once.
    ///
    /// # Errors
    /// A database failure.
    pub async fn hand_back(&self, claims: &[(JobId, i32)]) -> Result<usize, JobError> {
        let now = time::now();
        let mut handed = 0;
        for (id, attempt) in claims {
            handed += db_run!(self.pool, |conn| diesel::update(
                jobs::table
                    .filter(jobs::id.eq(id.as_str()))
                    .filter(jobs::attempts.eq(attempt))
                    .filter(jobs::status.eq(JobStatus::Running.as_str()))
            )
            .set((
                jobs::status.eq(JobStatus::Pending.as_str()),
                jobs::attempts.eq(attempt - 1),
                jobs::run_at.eq(now),
                jobs::lease_until.eq(None::<NaiveDateTime>),
                jobs::worker.eq(None::<String>),
                jobs::updated_at.eq(now),
            ))
            .execute(conn)
            .await)?;
        }
        Ok(handed)
    }

    /// Running jobs whose lease lapsed before `now` (their worker died or
    /// lost the database) go back to pending; answers how many.
    ///
    /// # Errors
    /// A database failure.
    pub async fn reap(&self, now: NaiveDateTime) -> Result<usize, JobError> {
        Ok(db_run!(self.pool, |conn| diesel::update(
            jobs::table
                // A literal, so the partial index of running jobs applies.
                .filter(diesel::dsl::sql::<diesel::sql_types::Bool>("status = 'running'"))
                .filter(jobs::lease_until.lt(now))
        )
        .set((
            jobs::status.eq(JobStatus::Pending.as_str()),
            jobs::run_at.eq(now),
            jobs::lease_until.eq(None::<NaiveDateTime>),
            jobs::worker.eq(None::<String>),
            jobs::last_error.eq(Some("the worker's lease lapsed")),
            jobs::updated_at.eq(now),
        ))
        .execute(conn)
        .await)?)
    }

    /// A job by id.
    ///
    /// # Errors
    /// [`JobError::NotFound`] or a database failure.
    pub async fn get(&self, id: &JobId) -> Result<JobInfo, JobError> {
        let row: Option<JobRow> = db_run!(self.pool, |conn| jobs::table
            .find(id.as_str())
            .select(JobRow::as_select())
            .first(conn)
            .await
            .optional())?;
        row.ok_or(JobError::NotFound)?.try_into()
    }

    /// Jobs, newest first. Succeeded jobs are not kept.
    ///
    /// # Errors
    /// A database failure.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobInfo>, JobError> {
        let limit = filter.limit.unwrap_or(100).clamp(1, 10_000);
        let rows: Vec<JobRow> = db_run!(self.pool, |conn| {
            let mut q = jobs::table.select(JobRow::as_select()).order(jobs::id.desc()).limit(limit).into_boxed();
            if let Some(s) = filter.status {
                q = q.filter(jobs::status.eq(s.as_str()));
            }
            if let Some(k) = &filter.kind {
                q = q.filter(jobs::kind.eq(k.as_str()));
            }
            q.load(conn).await
        })?;
        rows.into_iter().map(JobInfo::try_from).collect()
    }

    /// Makes a dead (or canceled) job pending again with its attempts reset.
    ///
    /// # Errors
    /// [`JobError::NotFound`], [`JobError::WrongState`] for a pending or
    /// running job, or a database failure.
    pub async fn retry(&self, id: &JobId) -> Result<(), JobError> {
        let now = time::now();
        let changed = db_run!(self.pool, |conn| diesel::update(
            jobs::table
                .filter(jobs::id.eq(id.as_str()))
                .filter(jobs::status.eq_any([JobStatus::Dead.as_str(), JobStatus::Canceled.as_str()]))
        )
        .set((
            jobs::status.eq(JobStatus::Pending.as_str()),
            jobs::attempts.eq(0),
            jobs::run_at.eq(now),
            jobs::updated_at.eq(now),
        ))
        .execute(conn)
        .await);
        match changed {
            Ok(1) => {
                self.wake();
                Ok(())
            }
            Ok(_) => Err(self.wrong_state(id, "only dead or canceled jobs can be retried").await),
            // Another job with its unique key is pending.
            Err(e) if modelroute_db::is_unique_violation(&e) => {
                Err(JobError::WrongState("a duplicate", "another job with its unique key is pending or running"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Cancels a pending or dead job (a running one finishes its attempt).
    ///
    /// # Errors
    /// [`JobError::NotFound`], [`JobError::WrongState`], or a database failure.
    pub async fn cancel(&self, id: &JobId) -> Result<(), JobError> {
        let now = time::now();
        let changed = db_run!(self.pool, |conn| diesel::update(
            jobs::table
                .filter(jobs::id.eq(id.as_str()))
                .filter(jobs::status.eq_any([JobStatus::Pending.as_str(), JobStatus::Dead.as_str()]))
        )
        .set((jobs::status.eq(JobStatus::Canceled.as_str()), jobs::updated_at.eq(now)))
        .execute(conn)
        .await)?;
        if changed == 1 { Ok(()) } else { Err(self.wrong_state(id, "only pending or dead jobs can be canceled").await) }
    }

    async fn wrong_state(&self, id: &JobId, why: &'static str) -> JobError {
        match self.get(id).await {
            Ok(job) => JobError::WrongState(job.status.as_str(), why),
            Err(e) => e,
        }
    }

    /// Jobs per kind and state, with the oldest one's enqueue time.
    ///
    /// # Errors
    /// A database failure.
    pub async fn stats(&self) -> Result<Vec<KindStats>, JobError> {
        let rows: Vec<(String, String, i64, Option<NaiveDateTime>)> = db_run!(self.pool, |conn| jobs::table
            .group_by((jobs::kind, jobs::status))
            .select((jobs::kind, jobs::status, diesel::dsl::count_star(), diesel::dsl::min(jobs::created_at)))
            .order((jobs::kind, jobs::status))
            .load(conn)
            .await)?;
        rows.into_iter()
            .map(|(kind, status, count, oldest)| {
                Ok(KindStats { kind, status: JobStatus::try_from(status.as_str())?, count, oldest })
            })
            .collect()
    }
}

fn lease_end(now: NaiveDateTime, lease: Duration) -> NaiveDateTime {
    chrono::Duration::from_std(lease).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(NaiveDateTime::MAX)
}
