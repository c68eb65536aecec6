//! Ledger throughput: strict hold + settle pairs per second, many at once,
//! on SQLite and on PostgreSQL (each in a fresh database). Every pair is a
//! real hold (guarded debit, durable commit) then a settlement of part of it.
//!
//! `cargo bench -p modelroute-ledger --bench pairs` — PostgreSQL runs when
//! `MODELROUTE_TEST_POSTGRES_URL` is set (`.ci/run` sets it); SQLite with and
//! without group commit; `PAIRS_BACKEND=sqlite|postgres` picks one backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modelroute_db::DbConn;
use modelroute_db::testing::TestDb;
use modelroute_ledger::{CreditSource, HoldRequest, Ledger as _, LedgerConfig, SqlLedger};
use modelroute_types::{Money, OrgId};

/// Pairs per measured iteration.
const PAIRS: usize = 2_000;
/// Orgs the pairs are spread over (one org's pairs contend on its rows).
const ORGS: usize = 16;

async fn insert_org(db: &TestDb) -> OrgId {
    let org = OrgId::new();
    let sql = format!("INSERT INTO orgs (id, name, created_at) VALUES ('{org}', 'bench', '2026-01-01 00:00:00')");
    match db.pool().get().await.unwrap() {
        DbConn::Postgres(mut c) => diesel_async::SimpleAsyncConnection::batch_execute(&mut *c, &sql).await,
        DbConn::Sqlite(mut c) => diesel_async::SimpleAsyncConnection::batch_execute(&mut *c, &sql).await,
    }
    .unwrap();
    org
}

async fn setup(db: &TestDb, group_commit: bool) -> (SqlLedger, Vec<OrgId>) {
    let config = LedgerConfig { group_commit, ..LedgerConfig::default() };
    let ledger = SqlLedger::open(db.pool().clone(), config).await.unwrap();
    let mut orgs = Vec::new();
    for _ in 0..ORGS {
        let org = insert_org(db).await;
        ledger.credit(&org, Money::from_usd(1_000_000), CreditSource::Grant, None).await.unwrap();
        orgs.push(org);
    }
    (ledger, orgs)
}

/// `PAIRS` hold+settle pairs, `concurrency` at a time; the elapsed time.
async fn run(ledger: &SqlLedger, orgs: &[OrgId], concurrency: usize) -> Duration {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (ledger, orgs, next) = (ledger.clone(), orgs.to_vec(), Arc::clone(&next));
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < PAIRS {
                    let org = orgs[w % orgs.len()].clone();
                    let hold = ledger
                        .hold(HoldRequest {
                            org_id: org,
                            amount: Money::from_units(1_000_000),
                            reference: "bench".into(),
                            idempotency_key: None,
                        })
                        .await
                        .unwrap();
                    ledger.settle(&hold.id, Money::from_units(400_000)).await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("hold_settle_pairs");
    group.throughput(Throughput::Elements(u64::try_from(PAIRS).unwrap()));
    group.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));
    let mut backends = vec!["sqlite"];
    if std::env::var("MODELROUTE_TEST_POSTGRES_URL").is_ok() {
        backends.push("postgres");
    }
    let only = std::env::var("PAIRS_BACKEND").ok();
    // Group commit is SQLite's only (the setting does nothing on PostgreSQL).
    for (backend, grouped) in [("sqlite", false), ("sqlite", true), ("postgres", false)] {
        if !backends.contains(&backend) || only.as_deref().is_some_and(|o| o != backend) {
            continue;
        }
        let db = rt
            .block_on(async { if backend == "postgres" { TestDb::postgres().await } else { TestDb::sqlite().await } });
        let (ledger, orgs) = rt.block_on(setup(&db, grouped));
        let name = format!("{backend}/{}", if grouped { "group_commit" } else { "one_per_txn" });
        for concurrency in [1, 16, 64, 256] {
            group.bench_with_input(BenchmarkId::new(&name, concurrency), &concurrency, |b, &n| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += run(&ledger, &orgs, n).await;
                        }
                        total
                    })
                });
            });
        }
        let report = rt.block_on(ledger.verify()).unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        drop(db);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
