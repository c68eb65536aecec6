//! Job queue throughput and wake-up latency, on SQLite and PostgreSQL (each
//! in a fresh database): jobs enqueued per second (in transactions of 500),
//! jobs claimed, run (a handler that does nothing) and completed per second
//! by one process's workers, and the time from an enqueue to its handler's
//! start when the workers are idle.
//!
//! `cargo bench -p modelroute-jobs --bench throughput` — PostgreSQL runs when
//! `MODELROUTE_TEST_POSTGRES_URL` is set; `JOBS_BACKEND=sqlite|postgres`
//! picks one, `JOBS_COUNT` the jobs per run (default 20,000),
//! `JOBS_CONCURRENCY` the queue's concurrency (default 64).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::as_conversions,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use modelroute_db::db_transaction;
use modelroute_db::testing::TestDb;
use modelroute_jobs::{Enqueue as _, JobError, JobFilter, NewJob, Queue, Registry, WorkerConfig, Workers};
use tokio::sync::Notify;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn run(backend: &str) {
    let db = if backend == "postgres" { TestDb::postgres().await } else { TestDb::sqlite().await };
    let count = env_usize("JOBS_COUNT", 20_000);
    let concurrency = env_usize("JOBS_CONCURRENCY", 64);
    let queue = Queue::new(db.pool().clone());

    let started = Instant::now();
    let jobs: Vec<NewJob> = (0..count).map(|n| NewJob::new("noop", &serde_json::json!({ "n": n })).unwrap()).collect();
    for chunk in jobs.chunks(500) {
        async {
            db_transaction!(db.pool(), |conn| {
                for job in chunk {
                    conn.enqueue(job).await?;
                }
                Ok::<_, JobError>(())
            })
        }
        .await
        .unwrap();
    }
    let enqueue = started.elapsed();

    let done = Arc::new(AtomicUsize::new(0));
    let started_one = Arc::new(Notify::new());
    let mut registry = Registry::new();
    let (d, s) = (Arc::clone(&done), Arc::clone(&started_one));
    registry.on("noop", move |_| {
        let (d, s) = (Arc::clone(&d), Arc::clone(&s));
        async move {
            d.fetch_add(1, Ordering::Relaxed);
            s.notify_one();
            Ok(())
        }
    });
    let config = WorkerConfig {
        queues: vec![("default".into(), concurrency)],
        poll: Duration::from_secs(1),
        ..WorkerConfig::default()
    };
    let started = Instant::now();
    let workers = Workers::start(queue.clone(), registry, config);
    while done.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let run = started.elapsed();
    // The completer deletes in batches behind the handlers: wait for the table to empty.
    while !queue.list(&JobFilter { limit: Some(1), ..JobFilter::default() }).await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = started.elapsed();

    // Wake-up latency: idle workers, one enqueue at a time.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = Vec::new();
    for n in 0..50 {
        let t = Instant::now();
        queue.enqueue(&NewJob::new("noop", &serde_json::json!({ "latency": n })).unwrap()).await.unwrap();
        started_one.notified().await;
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers.shutdown().await;
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{backend}: {count} jobs, concurrency {concurrency}: enqueued {:.0}/s; claimed and run {:.0}/s, \
         completed (rows deleted) {:.0}/s; enqueue to start when idle: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        count as f64 / enqueue.as_secs_f64(),
        count as f64 / run.as_secs_f64(),
        count as f64 / drained.as_secs_f64(),
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() * 9 / 10]),
        ms(latencies[latencies.len() - 1]),
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let only = std::env::var("JOBS_BACKEND").ok();
    let mut backends = vec!["sqlite"];
    if std::env::var("MODELROUTE_TEST_POSTGRES_URL").is_ok() {
        backends.push("postgres");
    }
    for backend in backends {
        if only.as_deref().is_some_and(|o| o != backend) {
            continue;
        }
        rt.block_on(run(backend));
    }
}
