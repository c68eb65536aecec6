//! The queue across processes, on PostgreSQL: worker processes claiming one
//! table, one killed with SIGKILL mid-job, three replicas sharing a
//! schedule, and an enqueue in one process waking an idle worker in
//! another. The worker processes are this test binary run again with
//! `--exact processes::worker_process --ignored`; what they do is chosen by
//! `MR_JOBS_SCENARIO`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::QueryableByName;
use diesel::sql_types::BigInt;
use diesel_async::{RunQueryDsl as _, SimpleAsyncConnection as _};
use modelroute_db::testing::TestDb;
use modelroute_db::{DatabaseConfig, DatabaseUrl, DbConn, DbPool};
use modelroute_jobs::{Enqueue as _, NewJob, Periodic, Queue, Registry, WorkerConfig, Workers};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::json;

const SCENARIO: &str = "MR_JOBS_SCENARIO";
const DB_URL: &str = "MR_JOBS_DB_URL";

async fn exec(pool: &DbPool, sql: &str) {
    match pool.get().await.expect("connection") {
        DbConn::Postgres(mut c) => c.batch_execute(sql).await.expect(sql),
        DbConn::Sqlite(_) => unreachable!("PostgreSQL only"),
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(pool: &DbPool, sql: &str) -> i64 {
    match pool.get().await.expect("connection") {
        DbConn::Postgres(mut c) => diesel::sql_query(sql).get_result::<Count>(&mut c).await.expect(sql).n,
        DbConn::Sqlite(_) => unreachable!("PostgreSQL only"),
    }
}

async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A worker process; killed (SIGKILL) when dropped unless it was stopped.
struct Worker(Option<Child>);

impl Worker {
    fn start(db: &TestDb, scenario: &str) -> Self {
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "processes::worker_process", "--ignored", "--nocapture", "--test-threads=1"])
            .env(SCENARIO, scenario)
            .env(DB_URL, db.config().url.expose())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker process");
        Self(Some(child))
    }

    fn pid(&self) -> i64 {
        i64::from(self.0.as_ref().map_or(0, Child::id))
    }

    fn signal(&self, signal: Signal) {
        if let Some(child) = &self.0 {
            kill_process(Pid::from_child(child), signal).expect("signal the worker");
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        self.signal(Signal::TERM);
        if let Some(mut child) = self.0.take() {
            let status = child.wait().expect("wait for the worker");
            assert!(status.success(), "a worker stopped by SIGTERM exits cleanly: {status}");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The child's side: runs the scenario's workers until SIGTERM (a clean
/// shutdown) or SIGKILL.
#[test]
#[ignore = "a worker process that the other tests of this module start"]
fn worker_process() {
    let (Ok(scenario), Ok(url)) = (std::env::var(SCENARIO), std::env::var(DB_URL)) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let config = DatabaseConfig { url: DatabaseUrl::new(url), max_connections: 4, ..DatabaseConfig::default() };
        let pool = DbPool::connect(&config).await.expect("connect");
        let pid = i64::from(std::process::id());
        let mut registry = Registry::new();
        let mut worker = WorkerConfig {
            name: format!("{scenario}-{pid}"),
            queues: vec![("default".to_owned(), 8)],
            lease: Duration::from_secs(1),
            poll: Duration::from_millis(200),
            shutdown_timeout: Duration::from_secs(2),
            ..WorkerConfig::default()
        };
        let p = pool.clone();
        match scenario.as_str() {
            // Every run of a job is a row.
            "count" => {
                registry.on("count", move |job| {
                    let p = p.clone();
                    async move {
                        let n = job.payload::<serde_json::Value>().unwrap()["n"].as_i64().unwrap();
                        exec(&p, &format!("INSERT INTO runs (n, pid) VALUES ({n}, {pid})")).await;
                        Ok(())
                    }
                });
            }
            // The effect is idempotent by its key; the first attempt then
            // hangs until its process is killed.
            "crash" => {
                registry.on("charge", move |job| {
                    let p = p.clone();
                    async move {
                        exec(&p, &format!("INSERT INTO starts (attempt, pid) VALUES ({}, {pid})", job.attempt)).await;
                        exec(&p, "INSERT INTO effects (key) VALUES ('charge-1') ON CONFLICT DO NOTHING").await;
                        if job.attempt == 1 {
                            tokio::time::sleep(Duration::from_secs(600)).await;
                        }
                        Ok(())
                    }
                });
            }
            "periodic" => {
                registry.on("tick", move |_| {
                    let p = p.clone();
                    async move {
                        exec(&p, &format!("INSERT INTO runs (n, pid) VALUES (0, {pid})")).await;
                        Ok(())
                    }
                });
                let every = Duration::from_millis(500);
                worker.periodics = vec![Periodic::new("tick", every, NewJob::new("tick", &json!({})).unwrap())];
            }
            // Polling every 30 s: only a notification can start a job sooner.
            "idle" => {
                worker.poll = Duration::from_secs(30);
                registry.on("stamp", move |job| {
                    let p = p.clone();
                    async move {
                        let n = job.payload::<serde_json::Value>().unwrap()["n"].as_i64().unwrap();
                        exec(&p, &format!("INSERT INTO runs (n, pid, at) VALUES ({n}, {pid}, clock_timestamp())"))
                            .await;
                        Ok(())
                    }
                });
            }
            other => panic!("no scenario {other}"),
        }
        exec(&pool, &format!("INSERT INTO ready (pid) VALUES ({pid})")).await;
        let workers = Workers::start(Queue::new(pool.clone()), registry, worker);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM");
        term.recv().await;
        workers.shutdown().await;
    });
}

async fn database() -> TestDb {
    let db = TestDb::postgres().await;
    exec(
        db.pool(),
        "CREATE TABLE runs (n BIGINT NOT NULL, pid BIGINT NOT NULL, at TIMESTAMPTZ);
         CREATE TABLE starts (attempt BIGINT NOT NULL, pid BIGINT NOT NULL);
         CREATE TABLE effects (key TEXT PRIMARY KEY);
         CREATE TABLE ready (pid BIGINT NOT NULL)",
    )
    .await;
    db
}

async fn started(db: &TestDb, n: i64) {
    until("the worker processes to start", Duration::from_secs(60), async || {
        count(db.pool(), "SELECT count(*) AS n FROM ready").await >= n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_worker_processes_complete_ten_thousand_jobs_each_once() {
    let db = database().await;
    let workers: Vec<Worker> = (0..4).map(|_| Worker::start(&db, "count")).collect();
    started(&db, 4).await;
    // Enqueued while the workers run, in transactions of 500.
    for batch in 0..20 {
        async {
            modelroute_db::db_transaction!(db.pool(), |conn| {
                for n in batch * 500..(batch + 1) * 500 {
                    conn.enqueue(&NewJob::new("count", &json!({ "n": n })).unwrap()).await?;
                }
                Ok::<_, modelroute_jobs::JobError>(())
            })
        }
        .await
        .unwrap();
    }
    until("every job to be completed", Duration::from_secs(240), async || {
        count(db.pool(), "SELECT count(*) AS n FROM jobs").await == 0
    })
    .await;
    assert_eq!(count(db.pool(), "SELECT count(*) AS n FROM runs").await, 10_000, "no job ran twice");
    assert_eq!(count(db.pool(), "SELECT count(DISTINCT n) AS n FROM runs").await, 10_000, "every job ran");
    let pids = count(db.pool(), "SELECT count(DISTINCT pid) AS n FROM runs").await;
    assert!(pids >= 2, "the jobs were shared between processes ({pids} took part)");
    for w in workers {
        w.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_killed_mid_job_loses_its_lease_and_the_effect_happens_once() {
    let db = database().await;
    let first = Worker::start(&db, "crash");
    started(&db, 1).await;
    Queue::new(db.pool().clone()).enqueue(&NewJob::new("charge", &json!({})).unwrap()).await.unwrap();
    until("the first attempt to make its effect", Duration::from_secs(30), async || {
        count(db.pool(), "SELECT count(*) AS n FROM effects").await == 1
    })
    .await;
    let killed = first.pid();
    first.signal(Signal::KILL);
    drop(first);
    let second = Worker::start(&db, "crash");
    // Its lease (1 s) lapses, the job is reaped and runs again, then completes.
    until("the job to run again and complete", Duration::from_secs(60), async || {
        count(db.pool(), "SELECT count(*) AS n FROM jobs").await == 0
    })
    .await;
    assert_eq!(count(db.pool(), "SELECT count(*) AS n FROM starts").await, 2, "two attempts");
    let again = format!("SELECT count(*) AS n FROM starts WHERE attempt = 2 AND pid = {}", second.pid());
    assert_eq!(count(db.pool(), &again).await, 1, "the second by the other process (the first was {killed})");
    assert_eq!(count(db.pool(), "SELECT count(*) AS n FROM effects").await, 1, "the effect happened once");
    second.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_job_runs_once_per_period_across_three_replica_processes() {
    let db = database().await;
    let replicas: Vec<Worker> = (0..3).map(|_| Worker::start(&db, "periodic")).collect();
    started(&db, 3).await;
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    for r in replicas {
        r.stop();
    }
    // 3.2 s of a 500 ms period (plus start-up skew): about 7 periods, where a
    // schedule per replica would make about 21 runs.
    let runs = count(db.pool(), "SELECT count(*) AS n FROM runs").await;
    assert!((5..=9).contains(&runs), "{runs} runs over ~7 periods with 3 replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_in_one_process_wakes_an_idle_worker_in_another() {
    let db = database().await;
    let worker = Worker::start(&db, "idle");
    started(&db, 1).await;
    // Let it settle into its 30 s poll sleep, listening.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queue = Queue::new(db.pool().clone());
    for n in 0..5 {
        queue.enqueue(&NewJob::new("stamp", &json!({ "n": n })).unwrap()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    until("the five jobs to run", Duration::from_secs(10), async || {
        count(db.pool(), "SELECT count(*) AS n FROM runs").await == 5
    })
    .await;
    worker.stop();
}
