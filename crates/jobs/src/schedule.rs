//! Periodic jobs: once per period across every replica.
//!
//! Each periodic job has a row in `job_schedules` with the time its next
//! period starts. Every worker process looks at it; the one whose
//! conditional update moves it on (`WHERE next_run_at <= now`) enqueues the
//! period's job in the same transaction. However many replicas ask, one
//! wins each period; a job still pending or running from the last period
//! (same unique key) is not doubled.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use modelroute_db::schema::job_schedules;
use modelroute_db::{db_run, db_transaction};
use modelroute_types::time;

use crate::queue::Enqueue as _;
use crate::{Enqueued, JobError, NewJob, Queue};

/// A job to run every `every`.
#[derive(Clone, Debug)]
pub struct Periodic {
    /// Its name (the schedule's row, and the job's unique key).
    pub name: String,
    /// The period.
    pub every: Duration,
    /// The job each period enqueues.
    pub job: NewJob,
}

impl Periodic {
    /// `job` every `every`, under `name`.
    #[must_use]
    pub fn new(name: &str, every: Duration, job: NewJob) -> Self {
        Self { name: name.to_owned(), every, job: job.unique(format!("periodic:{name}")) }
    }
}

impl Queue {
    /// Enqueues the job of each periodic whose period has come, unless
    /// another replica did; answers how many this call enqueued.
    ///
    /// # Errors
    /// A database failure.
    pub async fn tick_schedules(&self, periodics: &[Periodic], now: NaiveDateTime) -> Result<usize, JobError> {
        let mut enqueued = 0;
        for p in periodics {
            let next = chrono::Duration::from_std(p.every)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .unwrap_or(NaiveDateTime::MAX);
            // A read first: a schedule that is not due costs no write.
            let due: Option<NaiveDateTime> = db_run!(self.pool(), |conn| job_schedules::table
                .find(&p.name)
                .select(job_schedules::next_run_at)
                .first(conn)
                .await
                .optional())?;
            match due {
                Some(at) if at > now => continue,
                Some(_) => {}
                // Seen for the first time: due now.
                None => {
                    db_run!(self.pool(), |conn| diesel::insert_into(job_schedules::table)
                        .values((job_schedules::name.eq(&p.name), job_schedules::next_run_at.eq(now)))
                        .on_conflict_do_nothing()
                        .execute(conn)
                        .await)?;
                }
            }
            let done: Option<Enqueued> = db_transaction!(self.pool(), |conn| {
                let claimed = diesel::update(
                    job_schedules::table
                        .filter(job_schedules::name.eq(&p.name))
                        .filter(job_schedules::next_run_at.le(now)),
                )
                .set(job_schedules::next_run_at.eq(next))
                .execute(conn)
                .await?;
                if claimed == 0 {
                    return Ok::<_, JobError>(None);
                }
                Ok(Some(conn.enqueue(&p.job).await?))
            })?;
            if matches!(done, Some(Enqueued::New(_))) {
                enqueued += 1;
            }
        }
        if enqueued > 0 {
            self.wake();
        }
        Ok(enqueued)
    }

    /// When each schedule's next period starts.
    ///
    /// # Errors
    /// A database failure.
    pub async fn schedules(&self) -> Result<Vec<(String, NaiveDateTime)>, JobError> {
        Ok(db_run!(self.pool(), |conn| job_schedules::table
            .select((job_schedules::name, job_schedules::next_run_at))
            .order(job_schedules::name)
            .load(conn)
            .await)?)
    }

    /// Makes every schedule due now (an operator's "run it now", and tests).
    ///
    /// # Errors
    /// A database failure.
    pub async fn schedules_due_now(&self) -> Result<usize, JobError> {
        let now = time::now();
        Ok(db_run!(self.pool(), |conn| diesel::update(job_schedules::table)
            .set(job_schedules::next_run_at.eq(now))
            .execute(conn)
            .await)?)
    }
}
