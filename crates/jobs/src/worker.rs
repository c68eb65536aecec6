//! Workers: claim, run, renew, retry, complete; shut down cleanly.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use modelroute_types::{JobId, time};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::AbortHandle;

use crate::{Job, Periodic, Queue};

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt (after a backoff), if the job has attempts left.
    Retry(String),
    /// No attempt will do better (a malformed payload): dead at once.
    Fatal(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Self::Retry(m) | Self::Fatal(m) => m,
        }
    }
}

/// Runs the jobs of one kind. A second run of the same job must have no
/// second effect: delivery is at least once.
pub type Handler = Arc<dyn Fn(Job) -> Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>> + Send + Sync>;

/// The handlers, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<String, Handler>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("kinds", &self.kinds.keys().collect::<Vec<_>>()).finish()
    }
}

impl Registry {
    /// No handlers yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs jobs of `kind` with `handler`.
    pub fn on<F, Fut>(&mut self, kind: &str, handler: F) -> &mut Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Failure>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |job| Box::pin(handler(job)));
        self.kinds.insert(kind.to_owned(), handler);
        self
    }

    /// The kinds handled.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}

/// How workers run.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// This process's name in claims (`worker` of a running job).
    pub name: String,
    /// The queues to serve and how many of each queue's jobs run at once.
    pub queues: Vec<(String, usize)>,
    /// A claim's lease; renewed every third of it while the job runs.
    pub lease: Duration,
    /// How often to look for work when nothing woke the workers (another
    /// process's enqueue, a retry coming due), reap lapsed leases and tick
    /// the schedules.
    pub poll: Duration,
    /// The first retry's backoff ceiling; doubled each attempt up to `backoff_max`
    /// (each wait is drawn uniformly below the ceiling: full jitter).
    pub backoff_base: Duration,
    /// The backoff ceiling's ceiling.
    pub backoff_max: Duration,
    /// On shutdown, running jobs get this long to finish before their
    /// leases are handed back.
    pub shutdown_timeout: Duration,
    /// Jobs to enqueue once per period (across every process).
    pub periodics: Vec<Periodic>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            name: format!("worker-{}", std::process::id()),
            queues: vec![("default".into(), 8)],
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(3600),
            shutdown_timeout: Duration::from_secs(30),
            periodics: Vec::new(),
        }
    }
}

impl WorkerConfig {
    /// The wait before attempt `attempt + 1`: uniform in
    /// `[0, min(backoff_max, backoff_base × 2^(attempt-1))]`.
    #[must_use]
    pub fn backoff(&self, attempt: i32, random: u64) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 40)).unwrap_or(40);
        let base = u64::try_from(self.backoff_base.as_millis()).unwrap_or(u64::MAX);
        let max = u64::try_from(self.backoff_max.as_millis()).unwrap_or(u64::MAX);
        let ceiling = base.saturating_mul(1_u64 << exp).min(max);
        Duration::from_millis(random % ceiling.saturating_add(1))
    }
}

struct Ctx {
    queue: Queue,
    registry: Registry,
    config: WorkerConfig,
    /// Running attempts: what shutdown hands back.
    running: Mutex<HashMap<JobId, (i32, AbortHandle)>>,
    completed: mpsc::UnboundedSender<JobId>,
}

impl Ctx {
    fn running(&self) -> MutexGuard<'_, HashMap<JobId, (i32, AbortHandle)>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Running workers. [`Workers::shutdown`] stops them.
#[allow(missing_debug_implementations)]
pub struct Workers {
    ctx: Arc<Ctx>,
    stop: watch::Sender<bool>,
    loops: Vec<tokio::task::JoinHandle<()>>,
    completer: tokio::task::JoinHandle<()>,
}

impl Workers {
    /// Starts a claim loop per queue, a reaper and scheduler, and the
    /// completer, on the current runtime.
    #[must_use]
    pub fn start(queue: Queue, registry: Registry, config: WorkerConfig) -> Self {
        let (completed, done_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx { queue, registry, config, running: Mutex::default(), completed });
        let (stop, stopped) = watch::channel(false);
        let mut loops: Vec<_> = ctx
            .config
            .queues
            .iter()
            .map(|(name, slots)| tokio::spawn(serve_queue(Arc::clone(&ctx), name.clone(), *slots, stopped.clone())))
            .collect();
        loops.push(tokio::spawn(listen_for_enqueues(ctx.queue.clone(), stopped.clone())));
        loops.push(tokio::spawn(housekeeping(Arc::clone(&ctx), stopped)));
        let completer = tokio::spawn(complete_in_batches(ctx.queue.clone(), done_rx));
        Self { ctx, stop, loops, completer }
    }

    /// How many jobs are running now.
    #[must_use]
    pub fn running(&self) -> usize {
        self.ctx.running().len()
    }

    /// Stops claiming, gives running jobs `shutdown_timeout` to finish,
    /// aborts the rest and hands their leases back (pending again, the
    /// attempt not counted), then records the last completions.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for l in self.loops {
            let _ = l.await;
        }
        let deadline = Instant::now() + self.ctx.config.shutdown_timeout;
        while !self.ctx.running().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<(JobId, i32)> = self
            .ctx
            .running()
            .drain()
            .map(|(id, (attempt, task))| {
                task.abort();
                (id, attempt)
            })
            .collect();
        if !left.is_empty() {
            match self.ctx.queue.hand_back(&left).await {
                Ok(n) => tracing::info!(handed_back = n, "gave back the leases of unfinished jobs"),
                Err(e) => tracing::warn!(error = %e, "handing back leases failed; they lapse instead"),
            }
        }
        let Self { ctx, completer, .. } = self;
        drop(ctx); // the completer drains and ends once the aborted jobs' tasks are gone
        if tokio::time::timeout(Duration::from_secs(5), completer).await.is_err() {
            tracing::warn!("the last completions were not recorded in time; those jobs run again");
        }
    }
}

async fn serve_queue(ctx: Arc<Ctx>, name: String, slots: usize, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(slots.max(1)));
    let freed = Arc::new(Notify::new());
    loop {
        if *stop.borrow() {
            return;
        }
        // Listen before claiming: an enqueue during the claim is not missed.
        let woken = ctx.queue.woken().notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let free = slots.available_permits();
        let claimed = match ctx.queue.claim(&name, &ctx.config.name, free, ctx.config.lease).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(queue = %name, error = %e, "claiming jobs failed");
                Vec::new()
            }
        };
        let got = claimed.len();
        for job in claimed {
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else { break };
            start_job(&ctx, job, permit, &freed);
        }
        if got > 0 && got == free {
            continue; // there may be more
        }
        tokio::select! {
            () = &mut woken, if free > 0 => {}
            () = freed.notified(), if free == 0 => {}
            () = tokio::time::sleep(ctx.config.poll) => {}
            _ = stop.changed() => {}
        }
    }
}

fn start_job(ctx: &Arc<Ctx>, job: Job, permit: OwnedSemaphorePermit, freed: &Arc<Notify>) {
    let (id, attempt) = (job.id.clone(), job.attempt);
    let mut running = ctx.running();
    let task = tokio::spawn(run_job(Arc::clone(ctx), job, permit, Arc::clone(freed)));
    running.insert(id, (attempt, task.abort_handle()));
}

async fn run_job(ctx: Arc<Ctx>, job: Job, permit: OwnedSemaphorePermit, freed: Arc<Notify>) {
    let claim = (job.id.clone(), job.attempt);
    let kind = job.kind.clone();
    let started = Instant::now();
    let renewing = {
        let (queue, lease, claim) = (ctx.queue.clone(), ctx.config.lease, claim.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep((lease / 3).max(Duration::from_millis(10))).await;
                match queue.renew(std::slice::from_ref(&claim), lease).await {
                    Ok(0) => {
                        tracing::warn!(job_id = %claim.0, "the job's lease was lost; another worker may run it");
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(job_id = %claim.0, error = %e, "renewing a job's lease failed"),
                }
            }
        })
    };
    let outcome = match ctx.registry.kinds.get(&kind).cloned() {
        None => Err(Failure::Fatal(format!("no handler for jobs of kind `{kind}`"))),
        // Its own task: a panicking handler fails its attempt, not the worker.
        Some(handler) => tokio::spawn(handler(job.clone()))
            .await
            .unwrap_or_else(|e| Err(Failure::Retry(format!("the handler panicked: {e}")))),
    };
    renewing.abort();
    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!("jobs_run_seconds", "kind" => kind.clone()).record(elapsed);
    match outcome {
        Ok(()) => {
            metrics::counter!("jobs_completed_total", "kind" => kind.clone()).increment(1);
            let _ = ctx.completed.send(claim.0.clone());
        }
        Err(failure) => {
            let retry = matches!(failure, Failure::Retry(_)) && job.attempt < job.max_attempts;
            let retry_at = retry.then(|| {
                let wait = ctx.config.backoff(job.attempt, fastrand::u64(..));
                let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                time::now().checked_add_signed(wait).unwrap_or(chrono::NaiveDateTime::MAX)
            });
            let label = if retry { "jobs_failed_total" } else { "jobs_dead_total" };
            metrics::counter!(label, "kind" => kind.clone()).increment(1);
            tracing::warn!(
                job_id = %claim.0, kind, attempt = job.attempt, max_attempts = job.max_attempts,
                error = failure.message(), dead = !retry, "job attempt failed"
            );
            if let Err(e) = ctx.queue.fail(&claim.0, claim.1, failure.message(), retry_at).await {
                tracing::warn!(job_id = %claim.0, error = %e, "recording a failed attempt failed; its lease will lapse");
            }
        }
    }
    ctx.running().remove(&claim.0);
    drop(permit);
    freed.notify_one();
}

/// Removes succeeded jobs in batches: whatever finished while the last
/// batch was written goes in the next.
async fn complete_in_batches(queue: Queue, mut done: mpsc::UnboundedReceiver<JobId>) {
    let mut batch = Vec::with_capacity(512);
    while done.recv_many(&mut batch, 512).await > 0 {
        if let Err(e) = queue.complete(&batch).await {
            // Their leases lapse and they run again: at least once.
            tracing::warn!(error = %e, jobs = batch.len(), "recording completed jobs failed");
        }
        batch.clear();
    }
}

/// The PostgreSQL channel a new job is announced on (migration 000013's trigger).
pub(crate) const CHANNEL: &str = "modelroute_jobs";

/// On PostgreSQL, wakes this process's workers when any process enqueues
/// (`LISTEN modelroute_jobs` on a connection of its own, reconnecting after
/// a failure); polling stays the fallback. On SQLite there is nothing to
/// do: one process, woken in memory.
async fn listen_for_enqueues(queue: Queue, mut stop: watch::Receiver<bool>) {
    loop {
        let mut listener = tokio::select! {
            listening = queue.pool().listen(CHANNEL) => match listening {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for new jobs; polling until it can");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            },
            _ = stop.changed() => return,
        };
        // Jobs enqueued while no one listened are found by the next claim.
        queue.wake();
        loop {
            tokio::select! {
                n = listener.next() => match n {
                    Some(Ok(_)) => queue.wake(),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "listening for new jobs failed; listening again");
                        break;
                    }
                    None => break,
                },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Reaps lapsed leases, ticks the schedules and updates the depth gauges.
async fn housekeeping(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let mut last_stats = Instant::now().checked_sub(Duration::from_secs(60)).unwrap_or_else(Instant::now);
    loop {
        let now = time::now();
        match ctx.queue.reap(now).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(reaped = n, "jobs whose worker's lease lapsed are pending again");
                ctx.queue.wake();
            }
            Err(e) => tracing::warn!(error = %e, "reaping lapsed leases failed"),
        }
        if !ctx.config.periodics.is_empty()
            && let Err(e) = ctx.queue.tick_schedules(&ctx.config.periodics, now).await
        {
            tracing::warn!(error = %e, "ticking the schedules failed");
        }
        if last_stats.elapsed() >= Duration::from_secs(10) {
            last_stats = Instant::now();
            if let Ok(stats) = ctx.queue.stats().await {
                for s in stats {
                    #[allow(clippy::cast_precision_loss, clippy::as_conversions)]
                    metrics::gauge!("jobs_depth", "kind" => s.kind.clone(), "status" => s.status.as_str())
                        .set(s.count as f64);
                    if s.status == crate::JobStatus::Pending
                        && let Some(oldest) = s.oldest
                    {
                        let age = (now - oldest).num_milliseconds().max(0);
                        #[allow(clippy::cast_precision_loss, clippy::as_conversions)]
                        metrics::gauge!("jobs_oldest_pending_seconds", "kind" => s.kind).set(age as f64 / 1000.0);
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(ctx.config.poll) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let c = WorkerConfig {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            ..WorkerConfig::default()
        };
        assert_eq!(c.backoff(1, u64::MAX - 1000), Duration::from_millis((u64::MAX - 1000) % 1001));
        for attempt in 1..=10 {
            let ceiling = (1000_u64 << (attempt - 1)).min(60_000);
            for r in [0, 1, 999, 123_456_789, u64::MAX] {
                assert!(c.backoff(attempt, r) <= Duration::from_millis(ceiling), "{attempt} {r}");
            }
        }
        assert_eq!(c.backoff(1000, 60_000), Duration::from_millis(60_000));
        assert_eq!(c.backoff(0, 5), Duration::from_millis(5));
    }
}
