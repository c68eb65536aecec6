//! The routing decision is on every request's path.
//! `cargo bench -p modelroute-routing --bench plan`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use modelroute_routing::{Catalogue, CatalogueConfig, Health, ModelConfig, RequestProfile, RouteConfig};

fn catalogue(routes: usize) -> Catalogue {
    let routes = (0..routes)
        .map(|i| RouteConfig {
            streaming: i % 3 != 1,
            weight: u32::try_from(i % 5).unwrap(),
            ..RouteConfig::new(
                format!("route-{i}"),
                format!("provider-{}", i % 4),
                "m",
                serde_json::from_value(serde_json::json!(format!("0.{}", 10 + i))).unwrap(),
                serde_json::from_value(serde_json::json!(format!("0.{}", 40 + i))).unwrap(),
            )
        })
        .collect();
    let config = CatalogueConfig {
        margin_bps: 0,
        models: vec![ModelConfig {
            slug: "bench/model".into(),
            description: String::new(),
            context_window: 131_072,
            routes,
        }],
    };
    Catalogue::from_config(&config, |_| true).unwrap()
}

fn bench(c: &mut Criterion) {
    let health = Health::default();
    let profile = RequestProfile::text(1_200, Some(512), true);
    for n in [1, 10] {
        let cat = catalogue(n);
        c.bench_function(&format!("plan, {n} routes"), |b| {
            b.iter(|| cat.plan(black_box("bench/model"), black_box(&profile), &health, Instant::now()).unwrap());
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
