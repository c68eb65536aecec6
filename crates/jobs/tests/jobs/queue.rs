//! The job queue's guarantees, on SQLite and PostgreSQL, each test in a
//! fresh database of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelroute_db::{db_test, db_transaction};
use modelroute_jobs::{
    Enqueue as _, Enqueued, Failure, JobError, JobFilter, JobStatus, NewJob, Periodic, Queue, Registry, WorkerConfig,
    Workers,
};
use modelroute_types::time;
use serde_json::json;

fn config(queues: &[(&str, usize)]) -> WorkerConfig {
    WorkerConfig {
        queues: queues.iter().map(|(q, n)| ((*q).to_owned(), *n)).collect(),
        lease: Duration::from_secs(5),
        poll: Duration::from_millis(50),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        shutdown_timeout: Duration::from_secs(2),
        ..WorkerConfig::default()
    }
}

/// Waits until `done` holds (at most 60 s).
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..6000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn jobs_left(queue: &Queue) -> usize {
    queue.list(&JobFilter { limit: Some(10_000), ..JobFilter::default() }).await.unwrap().len()
}

/// Counts runs per job number.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<u64, usize>>>);

impl Runs {
    fn record(&self, n: u64) {
        *self.0.lock().unwrap().entry(n).or_default() += 1;
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn of(&self, n: u64) -> usize {
        self.0.lock().unwrap().get(&n).copied().unwrap_or_default()
    }
}

fn counting(runs: &Runs, kind: &str) -> Registry {
    let mut registry = Registry::new();
    let runs = runs.clone();
    registry.on(kind, move |job| {
        let runs = runs.clone();
        async move {
            let n: u64 = job.payload::<serde_json::Value>().unwrap()["n"].as_u64().unwrap();
            runs.record(n);
            Ok(())
        }
    });
    registry
}

db_test!(async fn four_workers_complete_ten_thousand_jobs_each_once(db) {
    let queue = Queue::new(db.pool().clone());
    let runs = Runs::default();
    for chunk in (0..10_000_u64).collect::<Vec<_>>().chunks(500) {
        let jobs: Vec<NewJob> = chunk.iter().map(|n| NewJob::new("count", &json!({ "n": n })).unwrap()).collect();
        async {
            db_transaction!(db.pool(), |conn| {
                for job in &jobs {
                    conn.enqueue(job).await?;
                }
                Ok::<_, JobError>(())
            })
        }
        .await
        .unwrap();
    }
    queue.wake();
    let workers: Vec<Workers> = (0..4)
        .map(|i| {
            let config = WorkerConfig { name: format!("w{i}"), ..config(&[("default", 8)]) };
            Workers::start(Queue::new(db.pool().clone()), counting(&runs, "count"), config)
        })
        .collect();
    until("10,000 runs", || runs.total() >= 10_000).await;
    for w in workers {
        w.shutdown().await;
    }
    assert_eq!((runs.total(), runs.distinct()), (10_000, 10_000), "each job ran exactly once");
    assert_eq!(jobs_left(&queue).await, 0, "succeeded jobs are removed");
});

db_test!(async fn a_job_enqueued_in_a_rolled_back_transaction_never_runs(db) {
    let queue = Queue::new(db.pool().clone());
    let runs = Runs::default();
    let failed: Result<(), JobError> = async {
        db_transaction!(db.pool(), |conn| {
            conn.enqueue(&NewJob::new("count", &json!({ "n": 1 })).unwrap()).await?;
            Err::<(), _>(JobError::NotFound) // whatever made the transaction fail
        })
    }
    .await;
    assert!(failed.is_err());
    async {
        db_transaction!(db.pool(), |conn| {
            conn.enqueue(&NewJob::new("count", &json!({ "n": 2 })).unwrap()).await?;
            Ok::<_, JobError>(())
        })
    }
    .await
    .unwrap();
    let workers = Workers::start(queue.clone(), counting(&runs, "count"), config(&[("default", 2)]));
    until("the committed job", || runs.of(2) == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    workers.shutdown().await;
    assert_eq!((runs.of(1), runs.total()), (0, 1), "the rolled-back job never ran");
});

db_test!(async fn a_job_whose_worker_died_runs_again_after_its_lease_and_once(db) {
    let queue = Queue::new(db.pool().clone());
    queue.enqueue(&NewJob::new("count", &json!({ "n": 7 })).unwrap()).await.unwrap();
    // A worker claims it under a short lease and dies (never renews, never finishes).
    let claimed = queue.claim("default", "doomed", 10, Duration::from_millis(300)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt, 1);
    assert!(queue.claim("default", "other", 10, Duration::from_secs(5)).await.unwrap().is_empty(), "claimed once");
    let runs = Runs::default();
    let workers = Workers::start(queue.clone(), counting(&runs, "count"), config(&[("default", 2)]));
    until("the run after the lease", || runs.of(7) == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    workers.shutdown().await;
    assert_eq!(runs.total(), 1);
    // The dead worker's late report of a failure changes nothing: that attempt is over.
    assert!(!queue.fail(&claimed[0].id, 1, "too late", None).await.unwrap());
    assert_eq!(jobs_left(&queue).await, 0);
});

db_test!(async fn a_job_that_always_fails_is_retried_with_backoff_then_dead_and_an_operator_can_retry_it(db) {
    let queue = Queue::new(db.pool().clone());
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let mut registry = Registry::new();
    let seen = Arc::clone(&attempts);
    registry.on("flaky", move |job| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock().unwrap().push((job.attempt, std::time::Instant::now()));
            Err(Failure::Retry(format!("attempt {} failed", job.attempt)))
        }
    });
    let id = match queue.enqueue(&NewJob::new("flaky", &json!({})).unwrap().max_attempts(4)).await.unwrap() {
        Enqueued::New(id) => id,
        Enqueued::Exists => panic!("no unique key"),
    };
    let workers = Workers::start(queue.clone(), registry, config(&[("default", 2)]));
    until("four attempts", || attempts.lock().unwrap().len() == 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(attempts.lock().unwrap().len(), 4, "no fifth attempt");
    let job = queue.get(&id).await.unwrap();
    assert_eq!((job.status, job.attempts), (JobStatus::Dead, 4));
    assert_eq!(job.last_error.as_deref(), Some("attempt 4 failed"));
    let dead = queue.list(&JobFilter { status: Some(JobStatus::Dead), ..JobFilter::default() }).await.unwrap();
    assert_eq!(dead.len(), 1);
    // An operator retries it: four more attempts.
    queue.retry(&id).await.unwrap();
    until("four more attempts", || attempts.lock().unwrap().len() == 8).await;
    workers.shutdown().await;
    let numbers: Vec<i32> = attempts.lock().unwrap().iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 1, 2, 3, 4]);
    assert!(matches!(queue.retry(&id).await, Ok(()) | Err(JobError::WrongState(..))));
});

db_test!(async fn a_fatal_failure_is_dead_at_once_and_an_unknown_kind_too(db) {
    let queue = Queue::new(db.pool().clone());
    let mut registry = Registry::new();
    registry.on("broken", |_| async { Err(Failure::Fatal("the payload is not a thing".into())) });
    let broken = queue.enqueue(&NewJob::new("broken", &json!({})).unwrap()).await.unwrap();
    let unknown = queue.enqueue(&NewJob::new("nobody.handles.this", &json!({})).unwrap()).await.unwrap();
    let workers = Workers::start(queue.clone(), registry, config(&[("default", 2)]));
    let dead = || async {
        queue.list(&JobFilter { status: Some(JobStatus::Dead), ..JobFilter::default() }).await.unwrap().len()
    };
    for _ in 0..500 {
        if dead().await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    workers.shutdown().await;
    assert_eq!(dead().await, 2);
    for e in [broken, unknown] {
        let Enqueued::New(id) = e else { panic!() };
        assert_eq!(queue.get(&id).await.unwrap().attempts, 1);
    }
});

db_test!(async fn a_unique_key_keeps_one_pending_job_and_run_at_waits(db) {
    let queue = Queue::new(db.pool().clone());
    let later = time::now() + chrono::Duration::milliseconds(600);
    let job = NewJob::new("count", &json!({ "n": 1 })).unwrap().unique("org_1").run_at(later);
    assert!(matches!(queue.enqueue(&job).await.unwrap(), Enqueued::New(_)));
    assert_eq!(queue.enqueue(&job).await.unwrap(), Enqueued::Exists, "one pending per key");
    let other = NewJob::new("count", &json!({ "n": 2 })).unwrap().unique("org_2");
    assert!(matches!(queue.enqueue(&other).await.unwrap(), Enqueued::New(_)), "another key");
    assert!(queue.claim("default", "w", 10, Duration::from_secs(5)).await.unwrap().iter().all(|j| j.payload["n"] == 2), "not before run_at");
    let runs = Runs::default();
    let workers = Workers::start(queue.clone(), counting(&runs, "count"), config(&[("default", 2)]));
    until("the scheduled job", || runs.of(1) == 1).await;
    workers.shutdown().await;
    // Once it ran, the key is free again.
    assert!(matches!(queue.enqueue(&job).await.unwrap(), Enqueued::New(_)));
});

db_test!(async fn a_periodic_job_runs_once_per_period_across_three_replicas(db) {
    let runs = Arc::new(AtomicUsize::new(0));
    let period = Duration::from_millis(700);
    let replicas: Vec<Workers> = (0..3)
        .map(|i| {
            let mut registry = Registry::new();
            let runs = Arc::clone(&runs);
            registry.on("sweep", move |_| {
                let runs = Arc::clone(&runs);
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            });
            let config = WorkerConfig {
                name: format!("replica-{i}"),
                periodics: vec![Periodic::new("sweep", period, NewJob::new("sweep", &json!({})).unwrap())],
                ..config(&[("default", 2)])
            };
            Workers::start(Queue::new(db.pool().clone()), registry, config)
        })
        .collect();
    // Over 3.2 periods: 4 periods started (at 0, 0.7, 1.4, 2.1 s) — one run each, not three.
    tokio::time::sleep(Duration::from_millis(2_450)).await;
    for r in replicas {
        r.shutdown().await;
    }
    let n = runs.load(Ordering::SeqCst);
    assert!((3..=5).contains(&n), "{n} runs over 3.5 periods with 3 replicas");
});

db_test!(async fn a_periodic_job_that_keeps_failing_is_one_dead_row_with_its_latest_error(db) {
    let queue = Queue::new(db.pool().clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let mut registry = Registry::new();
    let seen = Arc::clone(&runs);
    registry.on("check", move |_| {
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Err(Failure::Retry(format!("run {n} failed"))) }
    });
    let job = NewJob::new("check", &json!({})).unwrap().max_attempts(1);
    let worker = WorkerConfig {
        periodics: vec![Periodic::new("check", Duration::from_millis(150), job)],
        ..config(&[("default", 1)])
    };
    let workers = Workers::start(queue.clone(), registry, worker);
    until("four failed periods", || runs.load(Ordering::SeqCst) >= 4).await;
    workers.shutdown().await;
    let dead = queue.list(&JobFilter { status: Some(JobStatus::Dead), ..JobFilter::default() }).await.unwrap();
    assert_eq!(dead.len(), 1, "one dead row per key, not one per period: {dead:?}");
    let latest = format!("run {} failed", runs.load(Ordering::SeqCst));
    assert_eq!(dead[0].last_error.as_deref(), Some(latest.as_str()));
    // A job without a key keeps every dead row (each is its own work).
    let mut registry = Registry::new();
    registry.on("once", |_| async { Err(Failure::Fatal("no".into())) });
    for _ in 0..2 {
        queue.enqueue(&NewJob::new("once", &json!({})).unwrap()).await.unwrap();
    }
    let workers = Workers::start(queue.clone(), registry, config(&[("default", 1)]));
    let filter = JobFilter { status: Some(JobStatus::Dead), kind: Some("once".into()), ..JobFilter::default() };
    for _ in 0..600 {
        if queue.list(&filter).await.unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    workers.shutdown().await;
    assert_eq!(queue.list(&filter).await.unwrap().len(), 2);
});

db_test!(async fn shutdown_hands_back_the_leases_of_unfinished_jobs(db) {
    let queue = Queue::new(db.pool().clone());
    let mut registry = Registry::new();
    let started = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&started);
    registry.on("slow", move |_| {
        let s = Arc::clone(&s);
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
    });
    let Enqueued::New(id) = queue.enqueue(&NewJob::new("slow", &json!({})).unwrap()).await.unwrap() else { panic!() };
    let workers = Workers::start(
        queue.clone(),
        registry,
        WorkerConfig { shutdown_timeout: Duration::from_millis(200), ..config(&[("default", 1)]) },
    );
    until("the job started", || started.load(Ordering::SeqCst) == 1).await;
    assert_eq!(queue.get(&id).await.unwrap().status, JobStatus::Running);
    workers.shutdown().await;
    let job = queue.get(&id).await.unwrap();
    assert_eq!((job.status, job.attempts, job.worker), (JobStatus::Pending, 0, None), "handed back, the attempt not counted");
});

db_test!(async fn queues_do_not_starve_each_other(db) {
    let queue = Queue::new(db.pool().clone());
    // A flood on "bulk", whose jobs are slow; one job on "mail".
    let mut registry = Registry::new();
    let mail_done = Arc::new(AtomicUsize::new(0));
    let m = Arc::clone(&mail_done);
    registry.on("bulk", |_| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    });
    registry.on("mail", move |_| {
        let m = Arc::clone(&m);
        async move {
            m.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    for _ in 0..200 {
        queue.enqueue(&NewJob::new("bulk", &json!({})).unwrap().queue("bulk")).await.unwrap();
    }
    queue.enqueue(&NewJob::new("mail", &json!({})).unwrap().queue("mail")).await.unwrap();
    let workers = Workers::start(queue.clone(), registry, config(&[("bulk", 2), ("mail", 1)]));
    until("the mail job, while the flood is far from done", || mail_done.load(Ordering::SeqCst) == 1).await;
    let bulk_left = queue.list(&JobFilter { kind: Some("bulk".into()), limit: Some(1000), ..JobFilter::default() }).await.unwrap().len();
    workers.shutdown().await;
    assert!(bulk_left > 150, "{bulk_left} bulk jobs left when mail ran");
});

db_test!(async fn operators_list_show_cancel_and_see_depth(db) {
    let queue = Queue::new(db.pool().clone());
    let Enqueued::New(a) = queue.enqueue(&NewJob::new("a", &json!({ "x": 1 })).unwrap()).await.unwrap() else { panic!() };
    queue.enqueue(&NewJob::new("a", &json!({ "x": 2 })).unwrap()).await.unwrap();
    queue.enqueue(&NewJob::new("b", &json!({})).unwrap()).await.unwrap();
    let shown = queue.get(&a).await.unwrap();
    assert_eq!((shown.kind.as_str(), shown.status, &shown.payload), ("a", JobStatus::Pending, &json!({ "x": 1 })));
    queue.cancel(&a).await.unwrap();
    assert_eq!(queue.get(&a).await.unwrap().status, JobStatus::Canceled);
    assert!(matches!(queue.cancel(&a).await, Err(JobError::WrongState("canceled", _))));
    let stats = queue.stats().await.unwrap();
    let count = |kind: &str, status: JobStatus| stats.iter().find(|s| s.kind == kind && s.status == status).map_or(0, |s| s.count);
    assert_eq!((count("a", JobStatus::Pending), count("a", JobStatus::Canceled), count("b", JobStatus::Pending)), (1, 1, 1));
    assert!(matches!(queue.get(&modelroute_types::JobId::new()).await, Err(JobError::NotFound)));
});
