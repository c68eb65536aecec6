//! Passwords: one Argon2id hash (m=19 MiB, t=2, p=1) and one verification,
//! and a whole login through SQLite for a known email with a wrong password
//! against an unknown email (the two must take about as long: no account
//! enumeration by timing).
//!
//! `cargo bench -p modelroute-identity --bench password`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use modelroute_db::testing::TestDb;
use modelroute_identity::{Actor, Identity, IdentityConfig, ServerSecret, hash_password, verify_password};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("password");
    group.sample_size(20);
    group.bench_function("argon2id_hash", |b| {
        b.iter(|| rt.block_on(hash_password("correct horse battery staple")).unwrap());
    });
    let hash = rt.block_on(hash_password("correct horse battery staple")).unwrap();
    group.bench_function("argon2id_verify", |b| {
        b.iter(|| assert!(rt.block_on(verify_password("correct horse battery staple", Some(&hash)))));
    });
    let db = rt.block_on(TestDb::sqlite());
    let config = IdentityConfig { max_failed_logins_per_hour: u32::MAX, ..IdentityConfig::default() };
    let id = Identity::new(db.pool().clone(), ServerSecret::from_text(&"s".repeat(32)).unwrap())
        .with_config(&config)
        .unwrap();
    rt.block_on(id.sign_up("ada@example.com", "correct horse battery staple", "Ada", &Actor::default())).unwrap();
    group.bench_function("login_wrong_password", |b| {
        b.iter(|| rt.block_on(id.login("ada@example.com", "not the password", None, &Actor::default())).unwrap_err());
    });
    group.bench_function("login_unknown_email", |b| {
        b.iter(|| {
            rt.block_on(id.login("nobody@example.com", "not the password", None, &Actor::default())).unwrap_err()
        });
    });
    group.finish();
    drop(db);
}

criterion_group!(benches, bench);
criterion_main!(benches);
