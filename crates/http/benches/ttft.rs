//! Time to first token: a streamed request straight to a local upstream
//! (the OpenAI-speaking stand-in) against the same request through the
//! gateway (auth, routing, hold, execution record, adapter, SSE re-framing).
//! The difference is what the gateway adds before the first byte.
//!
//! `cargo bench -p modelroute-http --bench ttft` (SQLite) or with
//! `MODELROUTE_TEST_POSTGRES_URL` set and `TTFT_BACKEND=postgres`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelroute_app::Settings;
use modelroute_db::testing::TestDb;
use modelroute_http::Application;
use modelroute_providers::{HttpConfig, ProviderConfig};
use modelroute_routing::{ModelConfig, RouteConfig};
use modelroute_testkit::{StandIn, TEST_KEY, Wire};
use modelroute_types::{Money, Secret};
use serde_json::json;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Sends a streamed chat request; returns the time to its first non-empty
/// body frame. The rest of the answer is read afterwards, untimed, so the
/// connection returns to the pool.
async fn time_to_first_frame(client: &HttpClient, url: &str, key: &str, model: &str) -> Duration {
    let body = json!({ "model": model, "stream": true, "messages": [{ "role": "user", "content": "Hello there" }] });
    let req = Request::post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let started = Instant::now();
    let res = client.request(req).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let mut body = res.into_body();
    loop {
        let frame = body.frame().await.expect("a first frame").unwrap();
        if frame.data_ref().is_some_and(|d| !d.is_empty()) {
            break;
        }
    }
    let ttft = started.elapsed();
    while body.frame().await.is_some() {}
    ttft
}

fn measure(rt: &tokio::runtime::Runtime, iters: u64, once: impl AsyncFn() -> Duration) -> Duration {
    rt.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            total += once().await;
        }
        total
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let postgres = std::env::var("TTFT_BACKEND").is_ok_and(|b| b == "postgres");
    let (standin, db, port, key) = rt.block_on(async {
        let standin = StandIn::start(Wire::OpenAi).await;
        let db = if postgres { TestDb::postgres().await } else { TestDb::sqlite().await };
        let mut settings = Settings { database: db.config(), ..Settings::default() };
        settings.server.bind = "127.0.0.1:0".into();
        settings.identity.server_secret = Secret::new("bench-secret-0123456789abcdef-0123456789");
        settings.bootstrap.starting_credit = Money::from_usd(1_000_000);
        // Measure the path, not the rate limiter's refusals.
        settings.identity.rate_limits.per_key_per_minute = 0;
        settings.identity.rate_limits.per_org_per_minute = 0;
        let http = HttpConfig {
            timeout_ms: 5_000,
            stream_idle_timeout_ms: 5_000,
            max_concurrency: 0,
            ..HttpConfig::new(standin.base_url(), Secret::new(TEST_KEY))
        };
        settings.providers.insert("standin".into(), ProviderConfig::OpenaiCompatible(http));
        let route = RouteConfig::new(
            "standin-m",
            "standin",
            "m",
            serde_json::from_value(json!("1")).unwrap(),
            serde_json::from_value(json!("1")).unwrap(),
        );
        settings.catalogue.models = vec![ModelConfig {
            slug: "bench/m".into(),
            description: String::new(),
            context_window: 8192,
            routes: vec![route],
        }];
        let app = Application::build(settings).await.unwrap();
        let key = app.bootstrap.clone().unwrap().token;
        let port = app.port();
        tokio::spawn(app.run_until_stopped());
        (standin, db, port, key)
    });
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let direct = format!("{}/chat/completions", standin.base_url());
    let gateway = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let mut group = c.benchmark_group("ttft");
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("direct_to_upstream", |b| {
        b.iter_custom(|iters| measure(&rt, iters, async || time_to_first_frame(&client, &direct, TEST_KEY, "m").await));
    });
    group.bench_function(if postgres { "through_gateway_postgres" } else { "through_gateway_sqlite" }, |b| {
        b.iter_custom(|iters| {
            measure(&rt, iters, async || time_to_first_frame(&client, &gateway, &key, "bench/m").await)
        });
    });
    group.finish();
    drop(db);
}

criterion_group!(benches, bench);
criterion_main!(benches);
