//! API-key verification on the request path: with the verified-key cache
//! (a map lookup and one HMAC-SHA256) and without it (an indexed read).
//!
//! `cargo bench -p modelroute-identity --bench authenticate` — PostgreSQL
//! runs too when `MODELROUTE_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use modelroute_db::testing::TestDb;
use modelroute_identity::{Identity, Scopes, ServerSecret};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("authenticate");
    let mut backends = vec!["sqlite"];
    if std::env::var("MODELROUTE_TEST_POSTGRES_URL").is_ok() {
        backends.push("postgres");
    }
    for backend in backends {
        let db = rt
            .block_on(async { if backend == "postgres" { TestDb::postgres().await } else { TestDb::sqlite().await } });
        let secret = ServerSecret::from_text(&"s".repeat(32)).unwrap();
        let (cached, uncached, token) = rt.block_on(async {
            let cached = Identity::new(db.pool().clone(), secret.clone());
            let uncached = Identity::new(db.pool().clone(), secret).with_key_cache_ttl(Duration::ZERO);
            let org = cached.create_org("Bench").await.unwrap();
            let project = cached.create_project(&org.id, "p").await.unwrap();
            let (_, token) = cached.create_api_key(&org.id, &project.id, "k", &Scopes::all(), None).await.unwrap();
            (cached, uncached, token)
        });
        group.bench_function(BenchmarkId::new("cached", backend), |b| {
            b.iter(|| rt.block_on(cached.authenticate(&token)).unwrap());
        });
        group.bench_function(BenchmarkId::new("database", backend), |b| {
            b.iter(|| rt.block_on(uncached.authenticate(&token)).unwrap());
        });
        drop(db);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
