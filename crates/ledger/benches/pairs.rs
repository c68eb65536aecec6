//! Ledger throughput: strict hold + settle pairs per second, many at once,
//! on SQLite and on PostgreSQL (each in a fresh database). Every pair is a
//! real hold (guarded debit, durable commit) then a settlement of part of it.
//!
//! `cargo bench -p modelroute-ledger --bench pairs` — PostgreSQL runs when
//! `MODELROUTE_TEST_POSTGRES_URL` is set (`.ci/run` sets it); SQLite with and
//! without group commit; `PAIRS_BACKEND=sqlite|postgres` picks one backend,
//! `PAIRS_CONCURRENCY=1,256` the concurrencies (default 1, 16, 64, 256,
//! 1024, 2048), the shared writer at its default batch limit (1024),
//! `PAIRS_GROUP_COMMIT=on|off` one SQLite configuration.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modelroute_db::DbConn;
use modelroute_db::testing::TestDb;
use modelroute_ledger::{CreditSource, HoldRequest, Ledger as _, LedgerConfig, LedgerError, SqlLedger};
use modelroute_types::{EntryId, Money, OrgId};

/// Pairs per measured iteration: at least 2,000, and 8 per concurrent
/// client, so that every client is busy for most of the iteration.
fn pairs_for(concurrency: usize) -> usize {
    (8 * concurrency).max(2_000)
}
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

/// `pairs_for(concurrency)` hold+settle pairs, `concurrency` at a time; the elapsed time.
async fn run(ledger: &SqlLedger, orgs: &[OrgId], concurrency: usize) -> Duration {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (ledger, orgs, next) = (ledger.clone(), orgs.to_vec(), Arc::clone(&next));
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < pairs_for(concurrency) {
                    let org = orgs[w % orgs.len()].clone();
                    let hold = ledger
                        .hold(HoldRequest {
                            org_id: org,
                            amount: Money::from_units(1_000_000),
                            reference: "bench".into(),
                            // As the executor does: one key per execution.
                            idempotency_key: Some(format!("execution:{}", EntryId::new())),
                            expires_in: None,
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

/// L2 at the measured load: while `concurrency` clients run pairs, 2,000
/// holds race for a balance that covers 500 — exactly 500 are admitted.
async fn race_under_load(db: &TestDb, ledger: &SqlLedger, orgs: &[OrgId], concurrency: usize, name: &str) {
    let one = Money::from_units(1_000_000);
    let org = insert_org(db).await;
    ledger.credit(&org, Money::from_units(500 * 1_000_000), CreditSource::Grant, None).await.unwrap();
    let load = {
        let (ledger, orgs) = (ledger.clone(), orgs.to_vec());
        tokio::spawn(async move { run(&ledger, &orgs, concurrency).await })
    };
    let racers: Vec<_> = (0..2_000)
        .map(|_| {
            let (ledger, org) = (ledger.clone(), org.clone());
            tokio::spawn(async move {
                ledger
                    .hold(HoldRequest {
                        org_id: org,
                        amount: one,
                        reference: "race".into(),
                        idempotency_key: None,
                        expires_in: None,
                    })
                    .await
            })
        })
        .collect();
    let mut admitted = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(LedgerError::InsufficientBalance { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    load.await.unwrap();
    assert_eq!(admitted, 500, "overspend or underspend under load");
    let balance = ledger.balance(&org).await.unwrap();
    assert_eq!((balance.available, balance.held), (Money::ZERO, Money::from_units(500 * 1_000_000)));
    println!(
        "race under load ({name}, {concurrency} clients running pairs): {admitted} of 2000 holds admitted for a balance of 500"
    );
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("hold_settle_pairs");
    group.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));
    let mut backends = vec!["sqlite"];
    if std::env::var("MODELROUTE_TEST_POSTGRES_URL").is_ok() {
        backends.push("postgres");
    }
    let only = std::env::var("PAIRS_BACKEND").ok();
    let concurrencies: Vec<usize> = std::env::var("PAIRS_CONCURRENCY").map_or_else(
        |_| vec![1, 16, 64, 256, 1024, 2048],
        |v| v.split(',').map(|n| n.trim().parse().unwrap()).collect(),
    );
    let grouping: Option<bool> = std::env::var("PAIRS_GROUP_COMMIT").ok().map(|v| v == "on");
    // Group commit is SQLite's only (the setting does nothing on PostgreSQL).
    for (backend, grouped) in [("sqlite", false), ("sqlite", true), ("postgres", false)] {
        if !backends.contains(&backend) || only.as_deref().is_some_and(|o| o != backend) {
            continue;
        }
        if backend == "sqlite" && grouping.is_some_and(|g| g != grouped) {
            continue;
        }
        let db = rt
            .block_on(async { if backend == "postgres" { TestDb::postgres().await } else { TestDb::sqlite().await } });
        let (ledger, orgs) = rt.block_on(setup(&db, grouped));
        let name = format!("{backend}/{}", if grouped { "group_commit" } else { "one_per_txn" });
        for &concurrency in &concurrencies {
            group.throughput(Throughput::Elements(u64::try_from(pairs_for(concurrency)).unwrap()));
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
        let most = concurrencies.iter().copied().max().unwrap_or(1);
        rt.block_on(race_under_load(&db, &ledger, &orgs, most, &name));
        let report = rt.block_on(ledger.verify()).unwrap();
        assert!(report.violations.is_empty(), "{:?}", report.violations);
        drop(db);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
